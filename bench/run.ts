// The side-by-side benchmark of issue 6: postern, a bare Node.js terminator and the peers users
// compare it with (HAProxy, nginx stream, hitch, stunnel), each on one core in front of the same
// plaintext backend, with the same certificate and TLS 1.3 only. See bench/NOTES.md. Issue 17 added
// resumed handshakes (`resumption`) and postern with two workers against one (`postern-w2`,
// `workers`: CPU per handshake of the whole process tree at a paced load).
//
//   node bench/run.ts [--quick] [--only postern,haproxy] [--runs N] [--postern-dir DIR] [--keep]
//   node bench/run.ts --only postern,node --tests paced --runs 12   (paired: postern / node, 95% interval)
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { CpuMeter, runCapture, sleep, spawnPinned, stopProc, treeRss, waitPort, which, round, type CpuUse, type Proc } from './lib/proc.ts';
import { TARGETS, posternB, type BenchContext, type Target } from './lib/targets.ts';
import { bulk, closeAll, negotiatedGroup, openIdleSessions, sanityCheck, ResumingClients, type Endpoint, type ResumeResult, type SanityResult } from './lib/clients.ts';
import { MAIL_KINDS, holdMailSessions, mailSessionLoop, type MailKind } from './lib/mail-sessions.ts';
import { runWrk, wrkErrorCount, type WrkResult } from './lib/wrk.ts';
import {
  METRICS, absoluteTable, checkAgainstNode, checkTargets, checksTable, ratioTable, summarize, benchChart,
  resumptionTable, workersTable, checkIssue17, mailTable, MAIL_METRICS, pairedRows, pairedTable,
  type Limit, type Measurement, type MetricKey, type RunRecord, type TargetSummary,
} from './lib/report.ts';

const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
const REPO_DIR = path.dirname(BENCH_DIR);
const HOST = '127.0.0.1';
const SNI = 'bench.postern.test';
const PORTS = { backend: 18400, smtpBackend: 18425, imapBackend: 18426, proxy: 18443, smtpProxy: 18587, smtpsProxy: 18465, imapProxy: 18143, imapsProxy: 18993, selfCheck: 18444 };
const PROXY_CORE = 0;
const CLIENT_CORE = 1;
const NOFILE = 100_000;

// ---- options --------------------------------------------------------------------------------

const TESTS = ['memory', 'handshakes', 'keepalive', 'bulk', 'starttls', 'resumption', 'workers', 'paced'] as const;
/** Not part of a plain `npm run bench` (asked for by name, `--tests paced`, for paired runs); --quick runs it too, to prove it works. */
const ON_REQUEST: readonly Test[] = ['paced'];
type Test = (typeof TESTS)[number];

const USAGE = `usage: node bench/run.ts [--quick] [--only NAME,...] [--tests NAME,...] [--runs N] [--postern-dir DIR] [--postern-b DIR] [--pair A,B] [--keep]
  --quick            every measurement for ~2 s, one run, 500 idle sessions (CI: proves the harness works)
  --only a,b         measure only these targets: ${TARGETS.map((t) => t.name).join(', ')}
  --tests a,b        run only these measurements: ${TESTS.join(', ')}
  --runs N           repetitions (default 3; quick 1); the median is reported
  --postern-dir DIR  the postern checkout to run (default: this repository; dist/ must be built)
  --postern-b DIR    adds the target postern-b: the same as postern, from another checkout (e.g. a
                     git worktree of the commit before a change; dist/ built), for before/after pairs
  --pair A,B         report A / B run by run with a 95% interval of the median ratio (default
                     postern,node when both are measured; use --runs 12 or more)
  --side-by-side A,B instead of the tests: A and B run at the same time, both on the proxy core, each
                     at half the paced loads; --runs windows (default 12) of paced handshakes, then
                     paced keep-alive requests; A / B of CPU per 1,000 per window, with the interval.
                     Both see the same machine in the same seconds: far less scatter than runs
                     one after the other. Halfway the two swap places (ports, start order), which
                     are not alike (bench/NOTES.md)
  --keep             keep the scratch folder (configs, logs) and print its path
  --kex GROUPS       key exchange the idle sessions of the memory test and the resumption clients
                     offer (default X25519: what wrk and every peer on Debian 12's OpenSSL 3.0
                     negotiate; X25519MLKEM768 is what a Node 24 or OpenSSL 3.5 client gets from
                     postern, ~15 KB more a session)
  --paced-rate N     the workers test's offered load, full handshakes per second (default 400;
                     wrk with a delay before each request, so below what one core can do)
tests (all but paced by default; --quick runs paced too):
      resumption    a pool of Node clients that keep their last session and reconnect with it
                    (resumed handshakes per core-s, reuse ratio), then the same clients doing
                    full handshakes; workers: the paced load, CPU s per 1,000 handshakes of the
                    whole process tree (postern, postern-w2 and postern-w2-all only)
      paced         every TLS target at the same offered load, so CPU per unit of work compares
                    without saturating anything: full handshakes (--paced-rate, default 400/s) and
                    keep-alive requests (--paced-requests, default 5,000/s); CPU s per 1,000
  --paced-requests N the paced test's offered keep-alive requests per second (default 5000)
environment: BENCH_LOG=warn runs postern without its per-connection log line (what logging costs);
             BENCH_POSTERN_NODE_ARGS="--cpu-prof --cpu-prof-dir DIR" passes node options to postern`;

interface Options {
  quick: boolean; only: string[] | null; tests: Set<Test>; runs: number; posternDir: string; keep: boolean;
  seconds: number; warmupSeconds: number; idleSessions: number; bulkBytes: number; bulkTransfers: number;
  wrkConnections: number; smtpClients: number; handshakeParallel: number;
  quietWindowMs: number; quietMaxWaitMs: number; retries: number; kex: string;
  resumeClients: number; mailIdleSessions: number; singleUseProbe: number; pacedRate: number; pacedDelayMs: number;
  pacedRequests: number; pacedRequestDelayMs: number; posternB: string | null; pair: [string, string] | null;
  sideBySide: [string, string] | null;
}

function parseArgs(argv: string[]): Options {
  let quick = false, keep = false, only: string[] | null = null, runs: number | null = null, kex = 'X25519', pacedRate = 400, pacedRequests = 5000;
  let posternDir = REPO_DIR, posternB: string | null = null, pair: [string, string] | null = null, sideBySide: [string, string] | null = null;
  let tests: Set<Test> | null = null;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) { console.error(`${a} needs a value\n${USAGE}`); process.exit(2); }
      return v;
    };
    if (a === '--quick') quick = true;
    else if (a === '--keep') keep = true;
    else if (a === '--only') only = val().split(',').map((s) => s.trim()).filter(Boolean);
    else if (a.startsWith('--only=')) only = a.slice(7).split(',').map((s) => s.trim()).filter(Boolean);
    else if (a === '--tests') {
      const list = val().split(',').map((x) => x.trim()).filter(Boolean);
      const bad = list.filter((x) => !(TESTS as readonly string[]).includes(x));
      if (bad.length) { console.error(`unknown test(s): ${bad.join(', ')}\n${USAGE}`); process.exit(2); }
      tests = new Set(list as Test[]);
    }
    else if (a === '--runs') runs = Number(val());
    else if (a === '--kex') kex = val();
    else if (a === '--paced-rate') pacedRate = Number(val());
    else if (a === '--paced-requests') pacedRequests = Number(val());
    else if (a === '--postern-dir') posternDir = path.resolve(val());
    else if (a === '--postern-b') posternB = path.resolve(val());
    else if (a === '--pair' || a === '--side-by-side') {
      const p = val().split(',').map((x) => x.trim());
      if (p.length !== 2 || !p[0] || !p[1] || p[0] === p[1]) { console.error(`${a} needs two different targets, A,B\n${USAGE}`); process.exit(2); }
      if (a === '--pair') pair = [p[0], p[1]];
      else sideBySide = [p[0], p[1]];
    }
    else if (a === '--help' || a === '-h') { console.log(USAGE); process.exit(0); }
    else { console.error(`unknown argument ${a}\n${USAGE}`); process.exit(2); }
  }
  const known = (n: string): boolean => TARGETS.some((t) => t.name === n) || (n === 'postern-b' && posternB !== null);
  if (only) {
    const unknown = only.filter((n) => !known(n));
    if (unknown.length) { console.error(`unknown target(s): ${unknown.join(', ')}\n${USAGE}`); process.exit(2); }
  }
  if (runs !== null && !(Number.isInteger(runs) && runs >= 1)) { console.error('--runs needs a whole number >= 1'); process.exit(2); }
  if (!(pacedRate > 0)) { console.error('--paced-rate needs a number > 0'); process.exit(2); }
  if (!(pacedRequests > 0)) { console.error('--paced-requests needs a number > 0'); process.exit(2); }
  if (pair && !pair.every(known)) { console.error(`--pair: unknown target(s) in ${pair.join(',')}\n${USAGE}`); process.exit(2); }
  if (sideBySide && !sideBySide.every(known)) { console.error(`--side-by-side: unknown target(s) in ${sideBySide.join(',')}\n${USAGE}`); process.exit(2); }
  if (sideBySide && sideBySide.some((n) => TARGETS.find((t) => t.name === n)?.kind === 'ceiling')) { console.error('--side-by-side compares two TLS targets'); process.exit(2); }
  if (posternB !== null && only && !only.includes('postern-b')) only.push('postern-b');
  if (sideBySide) only = [...sideBySide];
  return {
    quick, only, keep, posternDir,
    tests: tests ?? new Set(TESTS.filter((x) => quick || !ON_REQUEST.includes(x))),
    runs: runs ?? (quick ? 1 : sideBySide ? 12 : 3),
    seconds: quick ? 2 : 10,
    warmupSeconds: quick ? 0 : 2,
    idleSessions: quick ? 500 : 5000,
    bulkBytes: 100 * 1e6,
    bulkTransfers: quick ? 2 : 5,
    wrkConnections: 50,
    smtpClients: 32,
    handshakeParallel: 50,
    quietWindowMs: quick ? 200 : 500,
    quietMaxWaitMs: quick ? 1000 : 60_000,
    retries: quick ? 0 : 2,
    kex,
    resumeClients: 50,
    mailIdleSessions: quick ? 200 : 2000,
    singleUseProbe: quick ? 20 : 40,
    pacedRate,
    pacedDelayMs: 100,
    pacedRequests,
    // 10 ms between a connection's requests: 5,000/s offered is 50 connections, as the keep-alive test.
    pacedRequestDelayMs: 10,
    posternB, pair, sideBySide,
  };
}

// ---- process bookkeeping --------------------------------------------------------------------

const live = new Set<Proc>();
let scratch: string | null = null;
let keepScratch = false;

async function cleanup(): Promise<void> {
  await Promise.all([...live].map((p) => stopProc(p, 2000)));
  live.clear();
  if (scratch && !keepScratch) fs.rmSync(scratch, { recursive: true, force: true });
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    console.error(`\n${sig}: stopping`);
    void cleanup().finally(() => process.exit(130));
  });
}

function logTail(file: string, lines = 15): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).map((l) => `    | ${l}`).join('\n');
  } catch { return '    | (no log)'; }
}

// ---- environment ----------------------------------------------------------------------------

interface Environment {
  cpus: number; cpuModel: string; kernel: string; memoryGB: number; loadavgStart: number[];
  pinned: boolean; nofile: number; tools: Record<string, string | null>; sysctl: Record<string, string>;
  notes: string[];
}

async function prepareEnvironment(): Promise<Environment> {
  const notes: string[] = [];
  const cpus = os.availableParallelism();
  let pinned = false;
  if (cpus >= 2) {
    // The harness (and so the backend, wrk and the Node clients it starts) on the client core.
    const r = await runCapture('taskset', ['-a', '-cp', String(CLIENT_CORE), String(process.pid)]);
    pinned = r.code === 0;
    if (!pinned) notes.push(`could not pin the harness to core ${CLIENT_CORE}: ${r.stderr.trim()}`);
  } else {
    notes.push('only one CPU: the proxy and the load generator share it; figures are not comparable to the baseline');
  }
  // Raise the descriptor limit (children inherit it): to NOFILE if allowed, else to the hard limit.
  const limit = async (which: 'SOFT' | 'HARD'): Promise<number> =>
    Number((await runCapture('prlimit', ['--pid', String(process.pid), '--nofile', '--noheadings', '--output', which])).stdout.trim()) || 1024;
  let lim = await runCapture('prlimit', ['--pid', String(process.pid), `--nofile=${NOFILE}:${NOFILE}`]);
  if (lim.code !== 0) {
    const hard = await limit('HARD');
    lim = await runCapture('prlimit', ['--pid', String(process.pid), `--nofile=${hard}:${hard}`]);
  }
  const nofile = await limit('SOFT');
  if (nofile < NOFILE) notes.push(`descriptor limit ${nofile} (could not raise it to ${NOFILE}: no CAP_SYS_RESOURCE?)`);
  const version = async (cmd: string, args: string[], re: RegExp): Promise<string | null> => {
    if (!which(cmd)) return null;
    const r = await runCapture(cmd, args);
    return re.exec(`${r.stdout}\n${r.stderr}`)?.[1] ?? '?';
  };
  const tools = {
    node: process.version,
    openssl: await version('openssl', ['version'], /OpenSSL (\S+)/),
    wrk: await version('wrk', ['-v'], /wrk (\S+)/),
    cc: await version('cc', ['--version'], /^(.*)$/m),
  };
  const sysctl: Record<string, string> = {};
  for (const k of ['net/ipv4/tcp_tw_reuse', 'net/ipv4/ip_local_port_range', 'net/core/somaxconn']) {
    try { sysctl[k.replace(/\//g, '.')] = fs.readFileSync(`/proc/sys/${k}`, 'utf8').trim().replace(/\s+/g, ' '); } catch { /* n/a */ }
  }
  return {
    cpus, cpuModel: os.cpus()[0]?.model ?? '?', kernel: os.release(), memoryGB: round(os.totalmem() / 2 ** 30, 1),
    loadavgStart: os.loadavg().map((x) => round(x, 2)), pinned, nofile, tools, sysctl, notes,
  };
}

async function makeCertificate(dir: string): Promise<{ cert: string; key: string; pem: string }> {
  const cert = path.join(dir, 'cert.pem'), key = path.join(dir, 'key.pem'), pem = path.join(dir, 'bench.pem');
  const r = await runCapture('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '7',
    '-keyout', key, '-out', cert, '-subj', `/CN=${SNI}`, '-addext', `subjectAltName=DNS:${SNI}`,
  ]);
  if (r.code !== 0) throw new Error(`openssl req failed: ${r.stderr}`);
  fs.writeFileSync(pem, fs.readFileSync(key, 'utf8') + fs.readFileSync(cert, 'utf8'));
  return { cert, key, pem };
}

/**
 * Builds the wrk shim (full handshakes, SNI) and proves it: wrk against a Node TLS server that
 * counts resumed sessions and the SNI it receives. Returns the shim path, or null with a reason.
 */
async function prepareShim(dir: string, cert: string, key: string): Promise<{ shim: string | null; note: string }> {
  if (!which('cc')) return { shim: null, note: 'no C compiler (apt-get install gcc libc6-dev): cannot build the wrk shim' };
  const shim = path.join(dir, 'wrk-shim.so');
  const cc = await runCapture('cc', ['-O2', '-shared', '-fPIC', '-o', shim, path.join(BENCH_DIR, 'lib', 'wrk-shim.c')]);
  if (cc.code !== 0) return { shim: null, note: `cannot build the wrk shim: ${cc.stderr.trim().slice(0, 300)}` };
  let full = 0, resumed = 0;
  const names = new Set<string>();
  const server = tls.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key), minVersion: 'TLSv1.3' }, (s) => {
    if (s.isSessionReused()) resumed++; else full++;
    names.add(String((s as tls.TLSSocket & { servername?: string | false }).servername));
    s.on('error', () => {});
    s.on('data', () => s.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok'));
  });
  await new Promise<void>((resolve) => server.listen(PORTS.selfCheck, HOST, resolve));
  try {
    await runWrk('wrk', { url: `https://${HOST}:${PORTS.selfCheck}/`, connections: 4, seconds: 1, close: true, shim, sni: SNI });
  } finally {
    server.close();
  }
  const sni = [...names].join(',');
  if (resumed > 0 || full === 0 || sni !== SNI) {
    return { shim: null, note: `the wrk shim does not work here (full ${full}, resumed ${resumed}, SNI ${sni})` };
  }
  return { shim, note: `wrk shim checked: ${full} full handshakes, 0 resumed, SNI ${sni}` };
}

// ---- measurements ---------------------------------------------------------------------------

/** Other processes using more than this many cores make a measurement "disturbed". */
const FOREIGN_LIMIT = 0.1;

function limitOf(cpu: CpuUse, kind: Target['kind']): Limit {
  if (kind === 'ceiling') return 'neither'; // the ceiling runs on the client core by design
  if (cpu.proxyCores !== null && cpu.proxyCores >= 0.9) return 'proxy';
  if (cpu.core1Busy !== null && cpu.core1Busy >= 0.9) return 'client';
  return 'neither';
}

/** Waits (bounded) until processes this harness did not start leave the CPUs alone. */
async function waitQuiet(o: Options): Promise<{ waitedMs: number; foreignCores: number }> {
  const t0 = Date.now();
  for (;;) {
    const m = new CpuMeter(null);
    await sleep(o.quietWindowMs);
    const c = m.stop();
    const waitedMs = Date.now() - t0;
    if (c.foreignCores < FOREIGN_LIMIT || waitedMs >= o.quietMaxWaitMs) return { waitedMs, foreignCores: c.foreignCores };
  }
}

interface Outcome { value: number; perCore?: { key: MetricKey; amount: number; scale?: number }; detail: Record<string, unknown> }

/**
 * One measurement: wait for a quiet machine, run it while metering CPU, and repeat it (full mode)
 * when other processes were busy meanwhile. Returns the measurement and, when asked, the
 * per-proxy-CPU-second figure derived from the same run.
 */
async function measure(o: Options, pid: number | null, kind: Target['kind'], fn: () => Promise<Outcome>): Promise<{ m: Measurement; perCore: [MetricKey, Measurement] | null }> {
  for (let attempt = 1; ; attempt++) {
    const quiet = await waitQuiet(o);
    const meter = new CpuMeter(pid);
    const r = await fn();
    const cpu = meter.stop();
    const disturbed = cpu.foreignCores >= FOREIGN_LIMIT;
    if (disturbed && attempt <= o.retries) {
      say(`(busy machine: ${cpu.foreignCores} cores used by others, again) `);
      continue;
    }
    const limitedBy = limitOf(cpu, kind);
    const m: Measurement = { value: r.value, cpu, limitedBy, disturbed, attempts: attempt, detail: { ...r.detail, quietWaitMs: quiet.waitedMs } };
    let perCore: [MetricKey, Measurement] | null = null;
    if (r.perCore && cpu.proxySeconds) {
      perCore = [r.perCore.key, { value: r.perCore.amount / cpu.proxySeconds, cpu, limitedBy, disturbed, attempts: attempt }];
    }
    return { m, perCore };
  }
}

function wrkDetail(r: WrkResult): Record<string, unknown> {
  return { requests: r.requests, seconds: r.seconds, errors: r.errors, p50Ms: r.p50Ms, p99Ms: r.p99Ms };
}

/** RSS of a process tree while it holds sessions: the median of three samples 100 ms apart. */
async function steadyRss(pid: number): Promise<number> {
  const samples: number[] = [];
  for (let i = 0; i < 3; i++) { samples.push(treeRss(pid)); await sleep(100); }
  samples.sort((a, b) => a - b);
  return samples[1]!;
}

function say(text: string): void {
  process.stdout.write(text);
}

function perCoreText(r: { perCore: [MetricKey, Measurement] | null }, unit: string): string {
  return r.perCore ? ` [${Math.round(r.perCore[1].value)} ${unit}/core-s]` : '';
}

function mark(m: Measurement): string {
  return (m.limitedBy === 'client' ? '*' : '') + (m.disturbed ? '~' : '');
}

/** Below this share of resumed handshakes the resumed rate is reported as not applicable. */
const MIN_REUSE = 0.5;

/**
 * Issue 17, resumption: a pool of Node clients (on the load generator's core, in this process)
 * that each keep their last session and reconnect with it, one request per connection as in the
 * full-handshake test; only handshakes where isSessionReused() is true count. Then the same
 * clients without sessions (full handshakes, the like-for-like base), and a short probe with a
 * client that offers each ticket once (RFC 8446 appendix C.4).
 */
async function measureResumption(ep: Endpoint, o: Options, pid: number | null, kind: Target['kind'], rec: RunRecord): Promise<void> {
  const kex = { ecdhCurve: o.kex };
  const pool = new ResumingClients(ep, o.resumeClients, kex);
  const warmed = await pool.warm(10_000);
  if (warmed === 0) {
    const na = { value: NaN, cpu: null, limitedBy: 'neither' as const, disturbed: false, detail: { notApplicable: 'no session (ticket) received' } };
    rec.measurements.resumedPerSec = na;
    rec.measurements.resumedPerCoreSec = na;
    say('resumed n/a (no ticket)  ');
    return;
  }
  if (o.warmupSeconds > 0) await pool.run('resume', o.warmupSeconds * 1000);
  let res: ResumeResult | null = null;
  const r = await measure(o, pid, kind, async () => {
    const x = await pool.run('resume', o.seconds * 1000);
    res = x;
    return { value: x.resumed / x.seconds, perCore: { key: 'resumedPerCoreSec', amount: x.resumed }, detail: { ...x, clients: o.resumeClients, sessionsAfterWarmUp: warmed } };
  });
  const x = res as unknown as ResumeResult;
  const ratio = x.connections ? x.resumed / x.connections : 0;
  const same = { cpu: r.m.cpu, limitedBy: r.m.limitedBy, disturbed: r.m.disturbed, attempts: r.m.attempts };
  rec.measurements.reuseRatio = { value: ratio, ...same };
  if (x.resumed > 0) rec.measurements.ticketsPerResumed = { value: x.ticketsOnResumed / x.resumed, ...same };
  if (ratio < MIN_REUSE) {
    const why = `resumed ${x.resumed} of ${x.connections} connections`;
    rec.measurements.resumedPerSec = { value: NaN, ...same, detail: { ...r.m.detail, notApplicable: why } };
    rec.measurements.resumedPerCoreSec = { value: NaN, ...same, detail: { notApplicable: why } };
  } else {
    rec.measurements.resumedPerSec = r.m;
    if (r.perCore) rec.measurements.resumedPerCoreSec = r.perCore[1];
  }
  if (x.errors > 0) rec.errors.push(`resumption: ${x.errors} failed connections, last: ${x.lastError}`);
  say(`resumed ${ratio >= MIN_REUSE ? Math.round(r.m.value) : 'n/a'}/s${mark(r.m)}${ratio >= MIN_REUSE ? perCoreText(r, '') : ''} reuse ${ratio.toFixed(3)} tickets/resumed ${x.resumed ? (x.ticketsOnResumed / x.resumed).toFixed(2) : '-'}${x.errors ? ` (${x.errors} errors: ${x.lastError})` : ''}  `);

  // The same clients, full handshakes.
  const f = await measure(o, pid, kind, async () => {
    const y = await pool.run('full', o.seconds * 1000);
    return { value: y.full / y.seconds, perCore: { key: 'clientFullPerCoreSec', amount: y.full }, detail: { ...y, clients: o.resumeClients } };
  });
  rec.measurements.clientFullPerSec = f.m;
  if (f.perCore) rec.measurements.clientFullPerCoreSec = f.perCore[1];
  const fe = (f.m.detail as { errors?: number } | undefined)?.errors ?? 0;
  if (fe > 0) rec.errors.push(`resumption (full): ${fe} failed connections`);
  say(`full (node client) ${Math.round(f.m.value)}/s${mark(f.m)}${perCoreText(f, '')}  `);

  // A client that uses each ticket once: resumes every time only if the server sends a new
  // ticket on a resumed handshake.
  const single = new ResumingClients(ep, 1, kex);
  await single.warm(10_000);
  const p = await single.sequence('single-use', o.singleUseProbe);
  if (p.connections > 0) {
    rec.measurements.singleUseReuseRatio = { value: p.resumed / p.connections, cpu: null, limitedBy: 'neither', disturbed: false, detail: { ...p } };
    say(`single-use reuse ${(p.resumed / p.connections).toFixed(2)}  `);
  }
}

/** wrk's script for a paced load: wait delayMs before each request (written once per scratch folder). */
function pacedScript(dir: string, delayMs: number): string {
  const script = path.join(dir, `paced-${delayMs}ms.lua`);
  if (!fs.existsSync(script)) fs.writeFileSync(script, `-- generated by bench/run.ts: wait before each request\nfunction delay()\n  return ${delayMs}\nend\n`);
  return script;
}

/** --side-by-side: the second target's proxy-side ports (the backends are shared). */
const SIDE_B_OFFSET = 1000;

function shiftedPorts(p: BenchContext['ports']): BenchContext['ports'] {
  return { ...p, proxy: p.proxy + SIDE_B_OFFSET, smtpProxy: p.smtpProxy + SIDE_B_OFFSET, smtpsProxy: p.smtpsProxy + SIDE_B_OFFSET,
    imapProxy: p.imapProxy + SIDE_B_OFFSET, imapsProxy: p.imapsProxy + SIDE_B_OFFSET };
}

/**
 * Starts a TLS target on ctx.ports.proxy (which must be free first), waits until it listens and
 * proves it serves TLS 1.3 only. On failure its process is stopped before the error is thrown.
 */
async function startTlsTarget(t: Target, ctx: BenchContext, logFile: string): Promise<{ proc: Proc | null; sanity: SanityResult }> {
  const port = ctx.ports.proxy;
  if (!(await waitPort(HOST, port, 3000, 'closed'))) throw new Error(`port ${port} is still in use`);
  const proc = t.start(ctx, logFile);
  try {
    if (proc) {
      live.add(proc);
      if (!(await waitPort(HOST, port, 15_000))) throw new Error(`did not listen on ${HOST}:${port} within 15 s (exit: ${proc.exitedEarly() ?? 'still running'})\n${logTail(logFile)}`);
    }
    const sanity = await sanityCheck({ host: HOST, port, sni: SNI });
    if (sanity.protocol !== 'TLSv1.3') throw new Error(`negotiated ${sanity.protocol}, not TLSv1.3`);
    if (sanity.tls12Refused !== true) throw new Error('accepted a TLS 1.2 client: not TLS 1.3 only');
    return { proc, sanity };
  } catch (err) {
    if (proc) { await stopProc(proc); live.delete(proc); }
    throw err;
  }
}

/**
 * --side-by-side A,B: both targets at once, both on the proxy core, each offered half the paced
 * loads, for o.runs windows of paced full handshakes and then paced keep-alive requests (the
 * two swap places halfway). A window's A / B of CPU per 1,000 compares the two under the same
 * machine in the same seconds; measured one after the other, the same two differed by up to 1.7x
 * from run to run on this VM (bench/NOTES.md). Each window becomes a run record of each target,
 * so the paired report reads them as pairs.
 */
async function measureSideBySide(pair: [Target, Target], ctx: BenchContext, o: Options, shim: string, runs: Map<string, RunRecord[]>): Promise<void> {
  const places = [ctx, { ...ctx, ports: shiftedPorts(ctx.ports) }];
  const sides = pair.map((t, i) => ({ t, ctx: places[i]!, proc: null as Proc | null }));
  const url = (c: BenchContext): string => `https://${HOST}:${c.ports.proxy}/`;
  const stopSides = async (): Promise<void> => {
    for (const side of sides) if (side.proc) { await stopProc(side.proc); live.delete(side.proc); side.proc = null; }
  };
  /**
   * The two places are not alike: two builds of the same commit measured 0.96-0.98x, the one
   * started first on the first ports the cheaper (bench/NOTES.md). Halfway, both stop and start
   * again in each other's place, so that the place favours each target for half the windows.
   */
  const place = async (swapped: boolean, label: string): Promise<void> => {
    sides.forEach((x, i) => { x.ctx = places[swapped ? 1 - i : i]!; });
    const order = swapped ? [...sides].reverse() : sides;
    for (const side of order) {
      const { proc } = await startTlsTarget(side.t, side.ctx, path.join(ctx.dir, 'logs', `${side.t.name}-side-by-side-${label}.log`));
      if (!proc) throw new Error(`${side.t.name} runs no process`);
      side.proc = proc;
    }
    console.log(`side by side${swapped ? ', places swapped' : ''}: ${order.map((x) => `${x.t.name} on ${x.ctx.ports.proxy}`).join(', ')} (started in this order); both on core ${ctx.proxyCore}, wrk on core ${CLIENT_CORE}`);
    if (o.warmupSeconds > 0) {
      await Promise.all(sides.map((x) => runWrk('wrk', { url: url(x.ctx), connections: o.wrkConnections / 2, seconds: o.warmupSeconds, close: true, shim, sni: SNI })));
    }
  };
  const half = Math.ceil(o.runs / 2);
  try {
    await place(false, 'first');
    const loads = [
      { close: true, rate: o.pacedRate / 2, delayMs: o.pacedDelayMs, rateKey: 'pacedPerSec', cpuKey: 'pacedCpuPer1000', label: 'handshakes' },
      { close: false, rate: o.pacedRequests / 2, delayMs: o.pacedRequestDelayMs, rateKey: 'pacedKeepAlivePerSec', cpuKey: 'pacedKeepAliveCpuPer1000', label: 'keep-alive' },
    ] as const;
    for (let w = 1; w <= o.runs; w++) {
      if (w === half + 1) {
        await stopSides();
        await place(true, 'swapped');
      }
      const recs: RunRecord[] = sides.map((_, i) => ({ run: w, position: w > half ? 2 - i : i + 1, startedAt: new Date().toISOString(), sanity: null, measurements: {}, errors: [] }));
      say(`window ${w}/${o.runs}  `);
      for (const load of loads) {
        const connections = Math.max(1, Math.round((load.rate * load.delayMs) / 1000));
        const script = pacedScript(ctx.dir, load.delayMs);
        const quiet = await waitQuiet(o);
        // Which load generator starts first alternates from window to window.
        const first = w % 2 === 1 ? [0, 1] : [1, 0];
        const meters = sides.map((x) => new CpuMeter(x.proc!.pid));
        const started = first.map((i) => runWrk('wrk', { url: url(sides[i]!.ctx), connections, seconds: o.seconds, close: load.close, shim, sni: SNI, script }));
        const done = await Promise.all(started);
        const results = sides.map((_, i) => done[first.indexOf(i)]!);
        const cpus = meters.map((m) => m.stop());
        const per1000: number[] = [];
        sides.forEach((_, i) => {
          const r = results[i]!, cpu = cpus[i]!, rec = recs[i]!;
          const disturbed = cpu.foreignCores >= FOREIGN_LIMIT;
          const common = { cpu, limitedBy: limitOf(cpu, 'proxy'), disturbed, attempts: 1 };
          rec.measurements[load.rateKey] = { value: r.reqPerSec, ...common, detail: { ...wrkDetail(r), offeredPerSec: load.rate, connections, delayMs: load.delayMs, quietWaitMs: quiet.waitedMs } };
          const v = cpu.proxySeconds != null && r.requests > 0 ? (cpu.proxySeconds / r.requests) * 1000 : NaN;
          rec.measurements[load.cpuKey] = { value: v, ...common };
          per1000.push(v);
          const errs = wrkErrorCount(r);
          if (errs) rec.errors.push(`window ${w} ${load.label}: ${errs} wrk errors`);
        });
        const [a, b] = per1000 as [number, number];
        say(`${load.label} ${a.toFixed(load.close ? 3 : 4)} / ${b.toFixed(load.close ? 3 : 4)} = ${(a / b).toFixed(3)}${cpus.some((c) => c.foreignCores >= FOREIGN_LIMIT) ? '~' : ''}  `);
      }
      say('\n');
      sides.forEach((x, i) => runs.get(x.t.name)!.push(recs[i]!));
    }
  } finally {
    await stopSides();
  }
}

async function measureTarget(t: Target, ctx: BenchContext, o: Options, shim: string | null, run: number, position: number): Promise<RunRecord> {
  const rec: RunRecord = { run, position, startedAt: new Date().toISOString(), sanity: null, measurements: {}, errors: [] };
  let logFile = path.join(ctx.dir, 'logs', `${t.name}-run${run}.log`);
  const isTls = t.kind === 'proxy';
  const ep: Endpoint = isTls ? { host: HOST, port: PORTS.proxy, sni: SNI } : { host: HOST, port: PORTS.backend, sni: null };
  const url = isTls ? `https://${HOST}:${PORTS.proxy}/` : `http://${HOST}:${PORTS.backend}/`;
  say(`  ${t.name.padEnd(10)} `);
  let proc: Proc | null = null;
  const fail = (what: string, err: unknown): void => {
    const msg = `${what}: ${(err as Error).message ?? String(err)}`;
    rec.errors.push(msg);
    say(`\n    ERROR ${msg}\n    `);
  };
  try {
    if (isTls) ({ proc, sanity: rec.sanity } = await startTlsTarget(t, ctx, logFile));
    // The ceiling (plaintext, straight to the backend) runs no process of its own.
    else rec.sanity = await sanityCheck(ep);
  } catch (err) {
    fail('start', err);
    if (proc) { await stopProc(proc); live.delete(proc); }
    say('\n');
    return rec;
  }
  let pid = proc?.pid ?? null;
  const keep = (key: MetricKey, r: { m: Measurement; perCore: [MetricKey, Measurement] | null }): Measurement => {
    rec.measurements[key] = r.m;
    if (r.perCore) rec.measurements[r.perCore[0]] = r.perCore[1];
    return r.m;
  };
  /** Asked for, and measured for this target (postern-w2 runs only some tests). */
  const has = (test: Test): boolean => o.tests.has(test) && (!t.tests || t.tests.includes(test));
  /** CPU seconds of the proxy's process tree per 1,000 of `count`, from a measurement's meter. */
  const cpuPer1000 = (m: Measurement, count: number): Measurement | null =>
    m.cpu?.proxySeconds != null && count > 0
      ? { value: (m.cpu.proxySeconds / count) * 1000, cpu: m.cpu, limitedBy: m.limitedBy, disturbed: m.disturbed, attempts: m.attempts }
      : null;

  // Memory first, on the fresh process: RSS of the proxy's process tree before and while holding
  // N idle sessions (each has sent one request, so the backend connection exists too).
  if (pid !== null && has('memory')) {
    try {
      // The same key exchange for every target: a Node 24 client offers X25519MLKEM768 first, which
      // postern and bare Node (OpenSSL 3.5) accept and the peers (OpenSSL 3.0) cannot; a hybrid
      // session holds ~15 KB more (bench/NOTES.md), so defaults would compare unlike things.
      const kex = { ecdhCurve: o.kex };
      const warm = await openIdleSessions(ep, 20, 10, 10_000, kex);
      await closeAll(warm.sockets);
      await sleep(o.quick ? 300 : 1000);
      const rss0 = treeRss(pid);
      const held = await openIdleSessions(ep, o.idleSessions, o.handshakeParallel, o.quick ? 30_000 : 120_000, kex);
      try {
        if (held.failed > 0) throw new Error(`${held.failed} of ${o.idleSessions} sessions failed (${held.lastError})`);
        await sleep(o.quick ? 300 : 1000);
        const rss1 = await steadyRss(pid);
        const kb = (rss1 - rss0) / 1024 / held.sockets.length;
        const group = negotiatedGroup(held.sockets[0]);
        rec.measurements.idleSessionKB = { value: kb, cpu: null, limitedBy: 'neither', disturbed: false,
          detail: { sessions: held.sockets.length, rssBeforeBytes: rss0, rssHoldingBytes: rss1, kex: group } };
        say(`mem ${kb.toFixed(1)} KB (${group ?? 'tcp'})  `);
      } finally {
        await closeAll(held.sockets);
      }
      await sleep(300);
    } catch (err) { fail('memory', err); }
    // Everything else on a fresh process: what the memory test's 5,000 sessions leave behind is
    // not what a handshake costs, and after it the per-core figures of postern and bare Node alike
    // were lower and scattered (bench/NOTES.md, 2026-12-06).
    if (proc && [...o.tests].some((x) => x !== 'memory' && has(x))) {
      try {
        await stopProc(proc);
        live.delete(proc);
        proc = null;
        if (!(await waitPort(HOST, PORTS.proxy, 3000, 'closed'))) throw new Error(`port ${PORTS.proxy} is still in use`);
        logFile = path.join(ctx.dir, 'logs', `${t.name}-run${run}-after-memory.log`);
        proc = t.start(ctx, logFile);
        if (proc) {
          live.add(proc);
          if (!(await waitPort(HOST, PORTS.proxy, 15_000))) throw new Error(`did not listen on ${HOST}:${PORTS.proxy} within 15 s (exit: ${proc.exitedEarly() ?? 'still running'})\n${logTail(logFile)}`);
        }
        pid = proc?.pid ?? null;
      } catch (err) {
        fail('restart after the memory test', err);
        if (proc) { await stopProc(proc); live.delete(proc); }
        say('\n');
        return rec;
      }
    }
  }

  const wantWrk = has('handshakes') || has('keepalive') || (has('workers') && t.workers !== undefined) || (has('paced') && isTls);
  if (o.warmupSeconds > 0 && wantWrk && which('wrk') && (shim || !isTls)) {
    try { await runWrk('wrk', { url, connections: o.wrkConnections, seconds: o.warmupSeconds, close: true, shim: isTls ? shim : null, sni: SNI }); }
    catch (err) { fail('warm-up', err); }
  }

  if (!wantWrk) {
    // not asked for
  } else if (!which('wrk')) {
    rec.errors.push('wrk not installed: no handshake and keep-alive figures');
  } else if (isTls && !shim) {
    rec.errors.push('no wrk shim: no handshake and keep-alive figures');
  } else {
    if (has('handshakes')) try {
      const r = await measure(o, pid, t.kind, async () => {
        const w = await runWrk('wrk', { url, connections: o.wrkConnections, seconds: o.seconds, close: true, shim: isTls ? shim : null, sni: SNI });
        return { value: w.reqPerSec, perCore: { key: 'handshakesPerCoreSec', amount: w.requests }, detail: wrkDetail(w) };
      });
      const m = keep('handshakesPerSec', r);
      const per1000 = isTls ? cpuPer1000(m, (m.detail as { requests: number }).requests) : null;
      if (per1000) rec.measurements.cpuPer1000Full = per1000;
      const errs = wrkErrorCount(m.detail as unknown as WrkResult);
      say(`${isTls ? 'handshakes' : 'connections'} ${Math.round(m.value)}/s${mark(m)}${perCoreText(r, '')}${errs ? ` (${errs} errors)` : ''}  `);
    } catch (err) { fail('handshakes', err); }
    if (has('keepalive')) try {
      let p50: number | null = null, p99: number | null = null;
      const r = await measure(o, pid, t.kind, async () => {
        const w = await runWrk('wrk', { url, connections: o.wrkConnections, seconds: o.seconds, close: false, shim: isTls ? shim : null, sni: SNI });
        p50 = w.p50Ms; p99 = w.p99Ms;
        return { value: w.reqPerSec, perCore: { key: 'keepAlivePerCoreSec', amount: w.requests }, detail: wrkDetail(w) };
      });
      const m = keep('keepAliveReqPerSec', r);
      const same = { cpu: m.cpu, limitedBy: m.limitedBy, disturbed: m.disturbed, attempts: m.attempts };
      if (p50 !== null) rec.measurements.keepAliveP50Ms = { value: p50, ...same };
      if (p99 !== null) rec.measurements.keepAliveP99Ms = { value: p99, ...same };
      const errs = wrkErrorCount(m.detail as unknown as WrkResult);
      say(`keep-alive ${Math.round(m.value)}/s${mark(m)}${perCoreText(r, '')} p50 ${(p50 as number | null)?.toFixed(2)} p99 ${(p99 as number | null)?.toFixed(2)} ms${errs ? ` (${errs} errors)` : ''}  `);
    } catch (err) { fail('keep-alive', err); }
    // Issue 17, workers: the same full handshakes at a paced load (wrk waits pacedDelayMs before
    // each request; with Connection: close that is once per connection), so that postern with
    // one worker and with two do the same work per second; CPU of the whole process tree
    // (supervisor and workers) per 1,000 handshakes. The paced test does the same for every TLS
    // target, and keep-alive requests too, so that CPU per unit of work compares between targets
    // without saturating either core (issue 17, target 1; bench/NOTES.md).
    const paced = async (what: 'handshakes' | 'keepalive'): Promise<void> => {
      const close = what === 'handshakes';
      const [rate, delayMs, rateKey, cpuKey] = close
        ? [o.pacedRate, o.pacedDelayMs, 'pacedPerSec', 'pacedCpuPer1000'] as const
        : [o.pacedRequests, o.pacedRequestDelayMs, 'pacedKeepAlivePerSec', 'pacedKeepAliveCpuPer1000'] as const;
      const script = pacedScript(ctx.dir, delayMs);
      const connections = Math.max(1, Math.round((rate * delayMs) / 1000));
      const r = await measure(o, pid, t.kind, async () => {
        const w = await runWrk('wrk', { url, connections, seconds: o.seconds, close, shim, sni: SNI, script });
        return { value: w.reqPerSec, detail: { ...wrkDetail(w), offeredPerSec: rate, connections, delayMs } };
      });
      const m = keep(rateKey, r);
      const per1000 = cpuPer1000(m, (m.detail as { requests: number }).requests);
      if (per1000) rec.measurements[cpuKey] = per1000;
      const errs = wrkErrorCount(m.detail as unknown as WrkResult);
      say(`paced ${close ? '' : 'keep-alive '}${Math.round(m.value)}/s of ${rate}${m.disturbed ? '~' : ''} [${per1000 ? per1000.value.toFixed(close ? 3 : 4) : '-'} CPU s/1000]${errs ? ` (${errs} errors)` : ''}  `);
    };
    if (isTls && ((has('workers') && t.workers !== undefined) || has('paced'))) {
      try { await paced('handshakes'); } catch (err) { fail(has('paced') ? 'paced' : 'workers', err); }
    }
    if (isTls && has('paced')) {
      try { await paced('keepalive'); } catch (err) { fail('paced keep-alive', err); }
    }
  }

  if (has('resumption') && isTls) {
    try { await measureResumption(ep, o, pid, t.kind, rec); }
    catch (err) { fail('resumption', err); }
  }

  for (const dir of has('bulk') ? (['upload', 'download'] as const) : []) {
    try {
      const r = await measure(o, pid, t.kind, async () => {
        // Several transfers of bulkBytes, one connection each, so that the proxy's CPU time
        // (counted in 10 ms ticks) is long enough to be exact to a few per cent.
        const rates: number[] = [];
        let bytes = 0, seconds = 0;
        for (let i = 0; i < o.bulkTransfers; i++) {
          const b = await bulk(ep, dir, o.bulkBytes, 120_000);
          rates.push(round(b.mbPerSec, 1));
          bytes += b.bytes;
          seconds += b.seconds;
        }
        return { value: bytes / 1e6 / seconds, perCore: { key: dir === 'upload' ? 'uploadMBPerCoreSec' : 'downloadMBPerCoreSec', amount: bytes / 1e6 },
          detail: { transfers: o.bulkTransfers, bytesEach: o.bulkBytes, seconds: round(seconds, 3), mbPerSecEach: rates } };
      });
      const m = keep(dir === 'upload' ? 'uploadMBps' : 'downloadMBps', r);
      say(`${dir === 'upload' ? 'up' : 'down'} ${Math.round(m.value)} MB/s${mark(m)}${perCoreText(r, 'MB')}  `);
    } catch (err) { fail(dir, err); }
  }

  // Issue 17, target 2: the same SMTP and IMAP session over STARTTLS and over implicit TLS
  // (bench/lib/mail-sessions.ts), sessions per proxy CPU-second (KB per idle session: mailIdleMemory).
  if (t.starttls && has('starttls')) {
    const kex = { ecdhCurve: o.kex };
    for (const kind of MAIL_KINDS) {
      const keys = MAIL_METRICS[kind];
      const ep = { host: HOST, port: MAIL_PORT[kind], sni: SNI };
      try {
        let failed = 0, lastError: string | null = null;
        const r = await measure(o, pid, t.kind, async () => {
          const l = await mailSessionLoop(kind, ep, o.smtpClients, o.seconds * 1000, kex);
          failed = l.errors; lastError = l.lastError;
          return { value: l.perSec, perCore: { key: keys.perCore, amount: l.count }, detail: { ...l } };
        });
        const m = keep(keys.perSec, r);
        if (failed > 0) rec.errors.push(`${kind}: ${failed} failed sessions, last: ${lastError}`);
        say(`${kind} ${Math.round(m.value)}/s${mark(m)}${perCoreText(r, '')}${failed ? ` (${failed} errors: ${lastError})` : ''}  `);
      } catch (err) { fail(kind, err); }
    }
  }

  if (proc) {
    if (proc.exitedEarly() !== null) rec.errors.push(`exited during the run (${proc.exitedEarly()})\n${logTail(logFile)}`);
    await stopProc(proc);
    live.delete(proc);
  }
  if (t.starttls && has('starttls') && pid !== null) await mailIdleMemory(t, ctx, o, run, rec, fail);
  say('\n');
  return rec;
}

const MAIL_PORT: Record<MailKind, number> = {
  'smtp-starttls': PORTS.smtpProxy, 'smtp-implicit': PORTS.smtpsProxy, 'imap-starttls': PORTS.imapProxy, 'imap-implicit': PORTS.imapsProxy,
};

/**
 * Issue 17, target 2, memory: KB per idle session of each mail kind, each on a fresh process
 * (like the memory test): RSS that one kind's sessions left behind would be reused by the next
 * kind's and hide its cost. Sessions are held after the post-TLS EHLO / CAPABILITY.
 */
async function mailIdleMemory(t: Target, ctx: BenchContext, o: Options, run: number, rec: RunRecord, fail: (what: string, err: unknown) => void): Promise<void> {
  const kex = { ecdhCurve: o.kex };
  for (const kind of MAIL_KINDS) {
    const ep = { host: HOST, port: MAIL_PORT[kind], sni: SNI };
    const logFile = path.join(ctx.dir, 'logs', `${t.name}-run${run}-idle-${kind}.log`);
    let proc: Proc | null = null;
    let sessions: { socket: tls.TLSSocket }[] = [];
    try {
      if (!(await waitPort(HOST, ep.port, 3000, 'closed'))) throw new Error(`port ${ep.port} is still in use`);
      proc = t.start(ctx, logFile);
      if (!proc) return;
      live.add(proc);
      if (!(await waitPort(HOST, ep.port, 15_000))) throw new Error(`did not listen on ${HOST}:${ep.port} within 15 s\n${logTail(logFile)}`);
      const warm = await holdMailSessions(kind, ep, 20, 10, 10_000, kex);
      await closeAll(warm.sessions.map((x) => x.socket));
      await sleep(o.quick ? 300 : 1000);
      const rss0 = treeRss(proc.pid);
      const held = await holdMailSessions(kind, ep, o.mailIdleSessions, o.handshakeParallel, o.quick ? 30_000 : 120_000, kex);
      sessions = held.sessions;
      if (held.failed > 0) throw new Error(`${held.failed} of ${o.mailIdleSessions} sessions failed (${held.lastError})`);
      await sleep(o.quick ? 300 : 1000);
      const rss1 = await steadyRss(proc.pid);
      const kb = (rss1 - rss0) / 1024 / held.sessions.length;
      rec.measurements[MAIL_METRICS[kind].idle] = { value: kb, cpu: null, limitedBy: 'neither', disturbed: false,
        detail: { sessions: held.sessions.length, rssBeforeBytes: rss0, rssHoldingBytes: rss1, kex: negotiatedGroup(held.sessions[0]?.socket) } };
      say(`${kind} idle ${kb.toFixed(1)} KB  `);
    } catch (err) {
      fail(`${kind} idle`, err);
    } finally {
      await closeAll(sessions.map((x) => x.socket));
      if (proc) { await stopProc(proc); live.delete(proc); }
    }
  }
}

// ---- main -----------------------------------------------------------------------------------

async function startBackend(dir: string): Promise<Proc> {
  const logFile = path.join(dir, 'logs', 'backend.log');
  for (const port of Object.values(PORTS)) {
    if (await waitPort(HOST, port, 200)) throw new Error(`${HOST}:${port} is already in use (another benchmark running?)`);
  }
  const p = spawnPinned('backend', CLIENT_CORE, process.execPath, [
    path.join(BENCH_DIR, 'lib', 'backend.ts'), '--host', HOST, '--http', String(PORTS.backend), '--smtp', String(PORTS.smtpBackend),
    '--imap', String(PORTS.imapBackend),
  ], { logFile });
  live.add(p);
  if (!(await waitPort(HOST, PORTS.backend, 10_000)) || !(await waitPort(HOST, PORTS.smtpBackend, 2000)) || !(await waitPort(HOST, PORTS.imapBackend, 2000))) {
    throw new Error(`the backend did not start\n${logTail(logFile)}`);
  }
  return p;
}

function timestamp(d: Date): string {
  return d.toISOString().replace(/\.\d+Z$/, 'Z').replace(/:/g, '-');
}

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  keepScratch = o.keep;
  const t0 = Date.now();
  const started = new Date();
  if (o.sideBySide) console.log(`postern benchmark, side by side: ${o.sideBySide.join(' and ')}, ${o.runs} window(s) of ${o.seconds} s per load, ` +
    `${o.pacedRate / 2} handshakes/s and ${o.pacedRequests / 2} keep-alive requests/s offered to each`);
  else console.log(`postern benchmark (${o.quick ? 'quick' : 'full'} mode): ${o.runs} run(s), ${o.seconds} s per load test, ` +
    `${o.idleSessions} idle sessions, ${o.bulkTransfers} x ${o.bulkBytes / 1e6} MB each way`);
  if (!which('openssl')) { console.error('openssl is required (apt-get install openssl)'); return 1; }

  const env = await prepareEnvironment();
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'postern-bench-'));
  fs.mkdirSync(path.join(scratch, 'logs'));
  const certs = await makeCertificate(scratch);
  const ctx: BenchContext = {
    dir: scratch, host: HOST, sni: SNI, ...certs, ports: PORTS, node: process.execPath,
    posternDir: o.posternDir, benchDir: BENCH_DIR, proxyCore: env.cpus >= 2 ? PROXY_CORE : 0,
    // Two descriptors per proxied session, plus some for the process itself.
    maxConnections: Math.floor((env.nofile - 500) / 2),
  };
  if (ctx.maxConnections < o.idleSessions + 100) {
    console.error(`the descriptor limit (${env.nofile}) is too low for ${o.idleSessions} idle sessions; run as root or raise ulimit -n`);
    return 1;
  }

  // Which targets exist here.
  const all = o.posternB ? [...TARGETS.slice(0, 2), posternB(o.posternB), ...TARGETS.slice(2)] : TARGETS;
  const chosen = all.filter((t) => !o.only || o.only.includes(t.name));
  const available: { t: Target; version: string }[] = [];
  const missing: { name: string; reason: string }[] = [];
  for (const t of chosen) {
    const d = await t.detect(ctx);
    if (d.ok) available.push({ t, version: d.version });
    else missing.push({ name: t.name, reason: d.reason });
  }
  for (const a of available) console.log(`  found   ${a.t.name.padEnd(10)} ${a.version}`);
  for (const m of missing) console.log(`  MISSING ${m.name.padEnd(10)} ${m.reason}`);
  if (!which('wrk')) console.log('  MISSING wrk        no handshake or keep-alive figures (Debian: apt-get install wrk)');

  let shim: string | null = null;
  if (which('wrk')) {
    const s = await prepareShim(scratch, certs.cert, certs.key);
    shim = s.shim;
    env.notes.push(s.note);
    console.log(`  ${s.note}`);
  }
  if (env.notes.length) for (const n of env.notes.filter((x) => !x.startsWith('wrk shim checked'))) console.log(`  note: ${n}`);

  const backend = await startBackend(scratch);
  const runs = new Map<string, RunRecord[]>(available.map((a) => [a.t.name, []]));
  try {
    if (o.sideBySide) {
      const pick = (n: string): Target => available.find((a) => a.t.name === n)!.t;
      if (!shim) throw new Error('--side-by-side needs wrk and its shim (see the notes above)');
      if (!o.sideBySide.every((n) => available.some((a) => a.t.name === n))) throw new Error(`--side-by-side: ${o.sideBySide.join(', ')} not both available here`);
      await measureSideBySide([pick(o.sideBySide[0]), pick(o.sideBySide[1])], ctx, o, shim, runs);
    }
    else for (let r = 0; r < o.runs; r++) {
      // Interleave: every run measures every target once, starting one further along each time,
      // so that slow drift of the machine does not favour whoever comes first.
      const order = available.map((_, i) => available[(i + r) % available.length]!);
      console.log(`run ${r + 1}/${o.runs} (${Math.round((Date.now() - t0) / 1000)} s)`);
      for (let i = 0; i < order.length; i++) {
        const { t } = order[i]!;
        runs.get(t.name)!.push(await measureTarget(t, ctx, o, shim, r + 1, i + 1));
      }
    }
  } finally {
    await stopProc(backend);
    live.delete(backend);
  }

  // Report.
  const summaries: TargetSummary[] = available.map((a) => ({ name: a.t.name, summary: summarize(runs.get(a.t.name)!) }));
  const haproxy = summaries.find((s) => s.name === 'haproxy');
  const seconds = Math.round((Date.now() - t0) / 1000);
  const out: string[] = [];
  // Side by side measures only the paced loads: their pairs below are the whole report.
  if (!o.sideBySide) out.push('', `Medians of ${o.runs} run(s). * = the load generator core was saturated, not the proxy (a lower bound);`,
    '~ = other processes on the machine were busy meanwhile. handshakes/s: full TLS 1.3 handshakes, a new connection',
    'per request (direct: plaintext connections).',
    '', 'Measured:', '', absoluteTable(summaries, 'measured'),
    '', 'Per CPU-second used by the proxy process tree (what one saturated core would do):', '', absoluteTable(summaries.filter((x) => x.name !== 'direct'), 'perCore'));
  if (haproxy && !o.sideBySide) {
    out.push('', 'Ratios to HAProxy, measured (higher is better for rates, lower for latency and memory):', '', ratioTable(summaries, haproxy, 'measured'));
    out.push('', 'Ratios to HAProxy, per proxy CPU-second:', '', ratioTable(summaries.filter((x) => x.name !== 'direct'), haproxy, 'perCore'));
  }
  const checks: Record<string, unknown> = {};
  const postern = summaries.find((s) => s.name === 'postern');
  if (postern) {
    const c = checkTargets(postern, haproxy);
    checks.posternVsTargets = c;
    if (c.some((x) => x.met !== null)) out.push('', 'postern against the targets of issue 6:', '', checksTable(c));
  }
  const node = summaries.find((s) => s.name === 'node');
  for (const name of ['postern-v2', 'postern']) {
    const p = summaries.find((s) => s.name === name);
    if (!p || !node) continue;
    const c = checkAgainstNode(p, node);
    checks[`${name}VsNode`] = c;
    if (c.length) out.push('', `${name} against the bare Node.js terminator (the features must cost < 5%):`, '', checksTable(c));
    break;
  }
  // Issue 17: resumption and workers.
  const resumption = summaries.filter((x) => x.name !== 'direct' && (x.summary.resumedPerSec || x.summary.reuseRatio));
  if (resumption.length) {
    out.push('', 'Session resumption (issue 17), per proxy CPU-second: Node clients that keep their last session and',
      'reconnect with it (one request per connection, as wrk); "reuse ratio" = resumed / connections; "new tickets',
      'per resumption" = NewSessionTickets the server sent on a resumed handshake; "reuse, single-use tickets" = what',
      'a client that offers each ticket once (RFC 8446 C.4) gets. Ticket setup per target:',
      ...resumption.map((x) => `  ${x.name}: ${available.find((a) => a.t.name === x.name)?.t.tickets ?? '?'}`),
      '', resumptionTable(resumption));
  }
  const workerTargets = available.filter((a) => a.t.workers !== undefined).map((a) => summaries.find((x) => x.name === a.t.name)!)
    .filter((x) => x.summary.cpuPer1000Full || x.summary.pacedCpuPer1000);
  if (workerTargets.length && !o.sideBySide) {
    out.push('', `postern workers: 1 against 2 (issue 17): every process on core ${PROXY_CORE} (postern-w2-all: on every core), wrk on core ${CLIENT_CORE}; CPU s per 1,000 full handshakes`,
      `of the whole process tree (supervisor + workers), saturated (the handshakes test) and paced (${o.pacedRate}/s offered):`,
      '', workersTable(workerTargets));
  }
  if (postern && (postern.summary.smtpsPerSec || postern.summary.imapsPerSec)) {
    out.push('', `postern's mail sessions (issue 17, target 2), ${o.smtpClients} clients at a time; idle: ${o.mailIdleSessions} sessions held after`,
      'the post-TLS EHLO / CAPABILITY (RSS of the process tree):', '', mailTable(postern));
  }
  const w2 = summaries.find((x) => x.name === 'postern-w2');
  const w2all = summaries.find((x) => x.name === 'postern-w2-all');
  if (postern && (postern.summary.resumedPerCoreSec || w2 || w2all || postern.summary.smtpsPerCoreSec)) {
    const c = checkIssue17(postern, w2, w2all);
    checks.issue17 = c;
    out.push('', 'postern against the targets of issue 17:', '', checksTable(c));
  }
  // Paired runs: A / B within each run (the two measured back to back, the order alternating).
  const pair = o.sideBySide ?? o.pair ?? (runs.has('postern') && runs.has('node') ? ['postern', 'node'] as [string, string] : null);
  if (pair && runs.has(pair[0]) && runs.has(pair[1])) {
    const rows = pairedRows(runs.get(pair[0])!, runs.get(pair[1])!);
    if (rows.length) {
      checks.paired = { a: pair[0], b: pair[1], rows };
      out.push('', `${pair[0]} / ${pair[1]}, paired by ${o.sideBySide ? 'window (both at the same time, each at half the paced loads)' : 'run (each run measures both back to back, the order alternating)'}: the median`,
        'ratio, a distribution-free interval for it (sign test; 6 runs or more), and the verdict against "within 5%"',
        '(met or not met only when the whole interval is on one side):', '', pairedTable(rows));
    }
  }
  const failures = [...runs.entries()].flatMap(([name, rs]) => rs.flatMap((r) => r.errors.map((e) => `${name} run ${r.run}: ${e}`)));
  if (missing.length) out.push('', `Not measured (missing): ${missing.map((m) => `${m.name} (${m.reason})`).join('; ')}`);
  if (failures.length) out.push('', 'Errors:', ...failures.map((f) => `  ${f}`));
  out.push('', `Took ${seconds} s.`);
  console.log(out.join('\n'));

  const resultsDir = path.join(BENCH_DIR, 'results');
  fs.mkdirSync(resultsDir, { recursive: true });
  const suffix = o.quick ? '-quick' : '';
  const jsonFile = path.join(resultsDir, `${timestamp(started)}${suffix}.json`);
  const result = {
    date: started.toISOString(), mode: o.quick ? 'quick' : 'full', durationSeconds: seconds,
    settings: {
      tests: o.sideBySide ? ['paced'] : [...o.tests], sideBySide: o.sideBySide, pair: o.pair, runs: o.runs, loadSeconds: o.seconds, warmupSeconds: o.warmupSeconds, idleSessions: o.idleSessions,
      bulkBytes: o.bulkBytes, bulkTransfers: o.bulkTransfers, wrkConnections: o.wrkConnections, smtpClients: o.smtpClients,
      quietWindowMs: o.quietWindowMs, quietMaxWaitMs: o.quietMaxWaitMs, retriesWhenDisturbed: o.retries, foreignLimitCores: FOREIGN_LIMIT,
      proxyCore: PROXY_CORE, clientCore: CLIENT_CORE, sni: SNI, certificate: 'ECDSA P-256, self-signed', tls: 'TLSv1.3 only',
      kex: o.kex, resumeClients: o.resumeClients, mailIdleSessions: o.mailIdleSessions, singleUseProbe: o.singleUseProbe, pacedRate: o.pacedRate, pacedDelayMs: o.pacedDelayMs,
      pacedRequests: o.pacedRequests, pacedRequestDelayMs: o.pacedRequestDelayMs, posternB: o.posternB,
      tickets: Object.fromEntries(available.map((a) => [a.t.name, a.t.tickets])),
    },
    environment: { ...env, loadavgEnd: os.loadavg().map((x) => round(x, 2)) },
    versions: Object.fromEntries(available.map((a) => [a.t.name, a.version])),
    descriptions: Object.fromEntries(available.map((a) => [a.t.name, a.t.description])),
    missing,
    metrics: METRICS,
    summary: Object.fromEntries(summaries.map((s) => [s.name, s.summary])),
    checks,
    runs: Object.fromEntries(runs),
    errors: failures,
  };
  fs.writeFileSync(jsonFile, JSON.stringify(result, null, 1) + '\n');
  // The chart is the README's picture of the last whole run: a side-by-side pair leaves it alone.
  if (o.sideBySide) console.log(`Wrote ${path.relative(process.cwd(), jsonFile)}`);
  else {
    const svgFile = path.join(resultsDir, `latest${suffix}.svg`);
    fs.writeFileSync(svgFile, benchChart(summaries, {
      date: result.date, mode: result.mode, runs: o.runs, cpuModel: env.cpuModel, cpus: env.cpus, kernel: env.kernel,
      proxyCore: PROXY_CORE, clientCore: CLIENT_CORE, versions: result.versions, dataFile: path.relative(REPO_DIR, jsonFile),
    }));
    console.log(`Wrote ${path.relative(process.cwd(), jsonFile)} and ${path.relative(process.cwd(), svgFile)}`);
  }
  if (o.keep) console.log(`Scratch folder kept: ${scratch}`);
  await cleanup();
  return failures.length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  async (err: Error) => {
    console.error(`benchmark failed: ${err.stack ?? err.message}`);
    await cleanup();
    process.exit(1);
  },
);
