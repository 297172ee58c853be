// A small coverage-guided fuzzer (issue 7): V8 precise block coverage (node:inspector,
// Profiler.startPreciseCoverage with detailed: true) decides which mutated inputs are kept; each
// input runs a target of fuzz/targets.ts, which checks the invariants (no exception, a defined
// result, chunking changes nothing). Every input must also finish within --max-ms, and the heap
// must stay bounded. A failure saves the input under fuzz/crashes/ and exits 1.
//
//   node --expose-gc fuzz/run.ts [--target clienthello|starttls|all] [--seconds N] [--seed N]
//                                [--max-ms N] [--save] [--minimize] [--replay FILE]
//
// --seconds is the whole budget (default 60), shared evenly by the targets. --save writes new
// coverage-increasing inputs into fuzz/corpus/<target>/; --minimize rewrites that folder to the
// smallest inputs that keep its coverage; --replay runs one file (a saved crash) and reports.
// Jazzer.js was tried first: its 4.0.0 prebuilt addon needs glibc 2.38 (Debian 12 has 2.36) and
// older versions download their binaries from GitHub, which CI cannot reach.
import { Session } from 'node:inspector';
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { TARGETS, type Target } from './targets.ts';
import { record } from '../test/helpers/hello-builder.ts';

const FUZZ_DIR = import.meta.dirname;
const CORPUS_DIR = join(FUZZ_DIR, 'corpus');
const CRASH_DIR = join(FUZZ_DIR, 'crashes');

const { values: opts } = parseArgs({
  options: {
    target: { type: 'string', default: 'all' },
    seconds: { type: 'string', default: '60' },
    seed: { type: 'string' },
    'max-ms': { type: 'string', default: '250' },
    'max-heap-mb': { type: 'string', default: '256' },
    save: { type: 'boolean', default: false },
    minimize: { type: 'boolean', default: false },
    replay: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});

if (opts.help) {
  console.log(readFileSync(new URL(import.meta.url), 'utf8').split('\n').filter((l) => l.startsWith('//')).map((l) => l.slice(3)).join('\n'));
  process.exit(0);
}

const targets: Target[] = opts.target === 'all' ? Object.values(TARGETS) : [TARGETS[opts.target!] ?? usage(`unknown target ${opts.target}`)];
const seconds = Number(opts.seconds);
if (!(seconds > 0)) usage('--seconds must be a positive number');
const maxMs = Number(opts['max-ms']);
const maxHeapBytes = Number(opts['max-heap-mb']) * 1024 * 1024;
const seed = opts.seed !== undefined ? Number(opts.seed) : (Date.now() & 0x7fffffff);

function usage(msg: string): never {
  console.error(`fuzz: ${msg} (targets: ${Object.keys(TARGETS).join(', ')}, all)`);
  process.exit(2);
}

// ---------------------------------------------------------------------------------------------
// Coverage through the inspector (same thread: post() answers synchronously).

const session = new Session();
session.connect();

function post<T>(method: string, params?: object): T {
  let out: { err: Error | null; res: T } | null = null;
  session.post(method, params ?? {}, (err, res) => (out = { err, res: res as T }));
  if (!out) throw new Error(`inspector ${method} did not answer synchronously`);
  const o = out as { err: Error | null; res: T };
  if (o.err) throw o.err;
  return o.res;
}

interface Range {
  startOffset: number;
  endOffset: number;
  count: number;
}
interface ScriptCoverage {
  url: string;
  functions: Array<{ functionName: string; ranges: Range[] }>;
}

post('Profiler.enable');
post('Profiler.startPreciseCoverage', { callCount: true, detailed: true });

/** Hit-count buckets, as libFuzzer does: a loop running more often is new behaviour too. */
function bucket(n: number): number {
  return n >= 128 ? 7 : n >= 32 ? 6 : n >= 16 ? 5 : n >= 8 ? 4 : n >= 4 ? 3 : n;
}

class Coverage {
  /** Every block V8 reported in the target modules (covered or not). */
  readonly blocks = new Set<string>();
  readonly coveredBlocks = new Set<string>();
  /** block + hit bucket */
  readonly features = new Set<string>();
  private readonly modules: string[];
  constructor(modules: string[]) {
    this.modules = modules;
  }
  /** Takes (and resets) the counters; returns the features of the inputs run since the last take. */
  take(): string[] {
    const { result } = post<{ result: ScriptCoverage[] }>('Profiler.takePreciseCoverage');
    const out: string[] = [];
    for (const script of result) {
      const mod = this.modules.find((m) => script.url.includes(m));
      if (!mod) continue;
      for (const fn of script.functions) {
        for (const r of fn.ranges) {
          const block = `${mod}:${r.startOffset}-${r.endOffset}`;
          this.blocks.add(block);
          if (r.count > 0) {
            this.coveredBlocks.add(block);
            out.push(`${block}#${bucket(r.count)}`);
          }
        }
      }
    }
    return out;
  }
  /** Adds the features; returns how many were new. */
  merge(fs: string[]): number {
    let n = 0;
    for (const f of fs) {
      if (!this.features.has(f)) {
        this.features.add(f);
        n++;
      }
    }
    return n;
  }
}

// ---------------------------------------------------------------------------------------------
// Random numbers and mutations

let rngState = seed || 1;
function rand(n: number): number {
  // xorshift32
  rngState ^= rngState << 13;
  rngState ^= rngState >>> 17;
  rngState ^= rngState << 5;
  return ((rngState >>> 0) % n) | 0;
}

const INTERESTING8 = [0, 1, 2, 0x7f, 0x80, 0xff, 0x16, 0x03, 0x0a, 0x0d, 0x20, 0x2e];
const INTERESTING16 = [0, 1, 2, 0xff, 0x100, 0x3fff, 0x4000, 0x4100, 0x4101, 0x7fff, 0x8000, 0xffff];

function mutateOnce(input: Buffer, corpus: Buffer[], t: Target): Buffer {
  const len = input.length;
  const at = len > 0 ? rand(len) : 0;
  switch (rand(13)) {
    case 0: { // flip a bit
      if (len === 0) return Buffer.from([rand(256)]);
      const b = Buffer.from(input);
      b[at]! ^= 1 << rand(8);
      return b;
    }
    case 1: { // an interesting or random byte
      if (len === 0) return Buffer.from([rand(256)]);
      const b = Buffer.from(input);
      b[at] = rand(2) ? INTERESTING8[rand(INTERESTING8.length)]! : rand(256);
      return b;
    }
    case 2: { // insert random bytes
      const ins = Buffer.alloc(1 + rand(8));
      for (let i = 0; i < ins.length; i++) ins[i] = rand(256);
      return Buffer.concat([input.subarray(0, at), ins, input.subarray(at)]);
    }
    case 3: // delete a range
      return Buffer.concat([input.subarray(0, at), input.subarray(at + 1 + rand(16))]);
    case 4: { // duplicate a range
      const n = 1 + rand(Math.min(64, Math.max(1, len - at)));
      return Buffer.concat([input.subarray(0, at + n), input.subarray(at)]);
    }
    case 5: { // crossover with another corpus input
      const other = corpus[rand(corpus.length)]!;
      if (other.length === 0) return input;
      const from = rand(other.length);
      const piece = other.subarray(from, from + 1 + rand(other.length - from));
      return rand(2) ? Buffer.concat([input.subarray(0, at), piece, input.subarray(at)]) : Buffer.concat([input.subarray(0, at), piece]);
    }
    case 6: { // insert a dictionary token
      const tok = t.dictionary[rand(t.dictionary.length)]!;
      return Buffer.concat([input.subarray(0, at), tok, input.subarray(at)]);
    }
    case 7: { // overwrite with a dictionary token
      const tok = t.dictionary[rand(t.dictionary.length)]!;
      const b = Buffer.from(input);
      tok.copy(b, at);
      return b;
    }
    case 8: { // a 16-bit field: interesting value, or nudged (length fields)
      if (len < 2) return input;
      const b = Buffer.from(input);
      const p = rand(len - 1);
      const cur = b.readUInt16BE(p);
      const v = rand(2) ? INTERESTING16[rand(INTERESTING16.length)]! : (cur + rand(5) - 2) & 0xffff;
      b.writeUInt16BE(v, p);
      return b;
    }
    case 9: // truncate
      return input.subarray(0, at);
    case 10: { // a byte nudged by a little (off-by-one in 8-bit lengths)
      if (len === 0) return input;
      const b = Buffer.from(input);
      b[at] = (b[at]! + rand(5) - 2) & 0xff;
      return b;
    }
    case 11: { // TLS: re-cut the record payloads into records of another size
      const msg = recordPayloads(input);
      if (!msg) return input;
      const size = 1 + rand(rand(2) ? 8 : 2000);
      const parts: Buffer[] = [];
      for (let i = 0; i < msg.length; i += size) parts.push(record(msg.subarray(i, i + size), { version: input.readUInt16BE(1) }));
      return Buffer.concat(parts);
    }
    default: { // swap two bytes
      if (len < 2) return input;
      const b = Buffer.from(input);
      const q = rand(len);
      const x = b[at]!;
      b[at] = b[q]!;
      b[q] = x;
      return b;
    }
  }
}

/** The concatenated payloads when `input` is a sequence of whole handshake records, else null. */
function recordPayloads(input: Buffer): Buffer | null {
  if (input.length < 6 || input[0] !== 0x16) return null;
  const parts: Buffer[] = [];
  let p = 0;
  while (p + 5 <= input.length && input[p] === 0x16) {
    const n = input.readUInt16BE(p + 3);
    if (p + 5 + n > input.length) return null;
    parts.push(input.subarray(p + 5, p + 5 + n));
    p += 5 + n;
  }
  return p === input.length && parts.length > 0 ? Buffer.concat(parts) : null;
}

function mutate(input: Buffer, corpus: Buffer[], t: Target): Buffer {
  let out = input;
  const n = 1 + rand(rand(4) === 0 ? 8 : 3);
  for (let i = 0; i < n; i++) out = mutateOnce(out, corpus, t);
  return out.length > t.maxLen ? out.subarray(0, t.maxLen) : out;
}

// ---------------------------------------------------------------------------------------------
// Running inputs

const sha = (b: Buffer) => createHash('sha1').update(b).digest('hex');

function loadCorpus(t: Target): Array<{ file: string; data: Buffer }> {
  const dir = join(CORPUS_DIR, t.name);
  mkdirSync(dir, { recursive: true });
  return readdirSync(dir)
    .filter((f) => !f.startsWith('.'))
    .sort()
    .map((f) => ({ file: join(dir, f), data: readFileSync(join(dir, f)) }));
}

function crash(t: Target, input: Buffer, why: string): never {
  mkdirSync(CRASH_DIR, { recursive: true });
  const base = join(CRASH_DIR, `${t.name}-${sha(input).slice(0, 12)}`);
  writeFileSync(`${base}.bin`, input);
  writeFileSync(`${base}.txt`, `${why}\n`);
  console.error(`\n${t.name}: INVARIANT FAILED (seed ${seed}): ${why.split('\n')[0]}`);
  console.error(`  input (${input.length} bytes) saved to ${base}.bin, details in ${base}.txt`);
  console.error(`  replay: node --expose-gc fuzz/run.ts --target ${t.name} --replay ${base}.bin`);
  process.exit(1);
}

/** Runs one input; a throw or an input slower than maxMs is a crash. */
function exec(t: Target, input: Buffer): void {
  const t0 = performance.now();
  try {
    t.run(input);
  } catch (err) {
    crash(t, input, (err as Error)?.stack ?? String(err));
  }
  const ms = performance.now() - t0;
  if (ms > maxMs) {
    // Once more, to tell a real slow path from a GC pause or a busy machine.
    const t1 = performance.now();
    t.run(input);
    const again = performance.now() - t1;
    if (again > maxMs) crash(t, input, `took ${ms.toFixed(1)} ms and ${again.toFixed(1)} ms (limit ${maxMs} ms) for ${input.length} bytes`);
  }
}

const gc = (globalThis as { gc?: () => void }).gc;
function heapUsed(): number {
  gc?.();
  return process.memoryUsage().heapUsed;
}

const fmtBytes = (n: number) => (n < 10 * 1024 ? `${n} B` : `${(n / 1024).toFixed(1)} KiB`);

interface Result {
  target: string;
  iterations: number;
  seconds: number;
  corpus: number;
  corpusBytes: number;
  covered: number;
  blocks: number;
  features: number;
}

function fuzz(t: Target, budgetMs: number): Result {
  const cov = new Coverage(t.modules);
  cov.take(); // reset counters
  const seeds = loadCorpus(t);
  const corpus: Buffer[] = [];
  for (const s of seeds) {
    exec(t, s.data);
    cov.merge(cov.take());
    corpus.push(s.data);
  }
  if (corpus.length === 0) corpus.push(Buffer.alloc(0));
  const seedCount = corpus.length;
  const heap0 = heapUsed();
  const started = performance.now();
  const deadline = started + budgetMs;
  let iterations = 0;
  let lastReport = started;
  let now = started;
  console.log(`${t.name}: ${seedCount} seed inputs, ${cov.coveredBlocks.size}/${cov.blocks.size} blocks covered by the seeds, seed ${seed}`);
  while (now < deadline) {
    // Prefer recent and small inputs a little: they are where new coverage was just found.
    const parent = corpus[rand(4) === 0 ? corpus.length - 1 - rand(Math.min(8, corpus.length)) : rand(corpus.length)]!;
    const input = mutate(parent, corpus, t);
    exec(t, input);
    const fresh = cov.merge(cov.take());
    if (fresh > 0) {
      corpus.push(input);
      if (opts.save) writeFileSync(join(CORPUS_DIR, t.name, sha(input)), input);
    }
    iterations++;
    if ((iterations & 1023) === 0) {
      const heap = heapUsed();
      if (heap - heap0 > maxHeapBytes) crash(t, input, `heap grew by ${((heap - heap0) / 1048576).toFixed(0)} MB over ${iterations} iterations (limit ${maxHeapBytes / 1048576} MB)`);
    }
    now = performance.now();
    if (now - lastReport >= 5000) {
      lastReport = now;
      const rate = Math.round(iterations / ((now - started) / 1000));
      console.log(`${t.name}: #${iterations} cov ${cov.coveredBlocks.size}/${cov.blocks.size} ft ${cov.features.size} corpus ${corpus.length} exec/s ${rate} rss ${(process.memoryUsage().rss / 1048576).toFixed(0)} MB`);
    }
  }
  const secs = (performance.now() - started) / 1000;
  return {
    target: t.name,
    iterations,
    seconds: secs,
    corpus: corpus.length,
    corpusBytes: corpus.reduce((a, b) => a + b.length, 0),
    covered: cov.coveredBlocks.size,
    blocks: cov.blocks.size,
    features: cov.features.size,
  };
}

/** Keeps the fewest, smallest corpus files that together have every feature the folder has. */
function minimize(t: Target): void {
  const cov = new Coverage(t.modules);
  cov.take();
  const entries = loadCorpus(t).map((e) => {
    exec(t, e.data);
    return { ...e, features: new Set(cov.take()) };
  });
  const all = new Set(entries.flatMap((e) => [...e.features]));
  const keep = new Set<string>();
  const have = new Set<string>();
  // Greedy set cover, smallest inputs first among equals.
  const pool = [...entries].sort((a, b) => a.data.length - b.data.length);
  while (have.size < all.size) {
    let best: (typeof pool)[number] | null = null;
    let bestGain = 0;
    for (const e of pool) {
      if (keep.has(e.file)) continue;
      let gain = 0;
      for (const f of e.features) if (!have.has(f)) gain++;
      if (gain > bestGain) {
        best = e;
        bestGain = gain;
      }
    }
    if (!best) break;
    keep.add(best.file);
    for (const f of best.features) have.add(f);
  }
  for (const e of entries) if (!keep.has(e.file)) rmSync(e.file);
  const kept = entries.filter((e) => keep.has(e.file));
  console.log(`${t.name}: minimized ${entries.length} -> ${kept.length} inputs (${fmtBytes(kept.reduce((a, e) => a + e.data.length, 0))}), ${all.size} features`);
}

if (opts.replay) {
  const input = readFileSync(opts.replay);
  for (const t of targets) {
    exec(t, input);
    console.log(`${t.name}: ${opts.replay} (${input.length} bytes) passes`);
  }
  process.exit(0);
}

if (opts.minimize) {
  for (const t of targets) minimize(t);
  process.exit(0);
}

if (!gc) console.log('fuzz: run with node --expose-gc for exact heap checks (measuring without a forced GC)');
const results: Result[] = [];
for (const t of targets) results.push(fuzz(t, (seconds * 1000) / targets.length));
for (const r of results) {
  console.log(
    `${r.target}: ${r.iterations} iterations in ${r.seconds.toFixed(1)} s (${Math.round(r.iterations / r.seconds)}/s), ` +
      `corpus ${r.corpus} inputs (${fmtBytes(r.corpusBytes)}), coverage ${r.covered}/${r.blocks} blocks ` +
      `(${((100 * r.covered) / Math.max(1, r.blocks)).toFixed(1)}%), ${r.features} features, 0 failures`,
  );
}
session.disconnect();
