// Load (threats.md "Resources": thousands of idle TLS sessions; many connections; garbage floods),
// against the spawned daemon:
//   (a) 10,000 concurrent idle TLS sessions (or as many as the descriptor limit allows: postern
//       holds two descriptors per session, the client's and the backend's), each with a finished
//       handshake and an echo through the backend, held, then released, twice: descriptors back to
//       the baseline each time, postern's V8 heap after a forced GC (inspector) back to where it
//       was, RSS after the second cycle near the first (the allocator keeps freed memory mapped,
//       so RSS never drops to the cold figure); RSS per idle session printed. The descriptor
//       limit is raised with prlimit where the machine allows it; the number held and why are
//       printed.
//   (a') exactly 10,000 with `workers: 2`, each worker within its own descriptor limit: held,
//       counted in /metrics, released, every worker's descriptors back to idle, no worker replaced.
//   (b) 1,000 garbage connections at once (random bytes, plaintext, half ClientHellos) while a good
//       client does handshake + echo in a loop: every good round trip succeeds; its latency during
//       the flood is printed next to the one before (printed, not asserted).
// The clients and the echo backend run in child processes (load-child.ts), so that neither this
// process nor postern holds the other side's descriptors.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { fork, spawnSync, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import net from 'node:net';
import tls from 'node:tls';
import { makePki, type TestPki } from '../helpers/certs.ts';
import { freePort } from '../helpers/ports.ts';
import { memoryAfterGc } from '../helpers/inspector.ts';
import { buildOnce, spawnDaemon, stopAll, sleep, type SpawnedPostern } from './harness.ts';
import type { ChildCommand, ChildReport } from './load-child.ts';

const CHILD = join(import.meta.dirname, 'load-child.ts');
const WANTED_SESSIONS = 10_000;
const WANTED_NOFILE = 40_000;
/** Descriptors postern may need besides the sessions: health checks, /metrics requests, reloads. */
const HEADROOM = 40;

let pki: TestPki;
let d: SpawnedPostern;
let backendChild: ChildProcess;
let clientChild: ChildProcess;
let nofile = 0;
let nofileNote = '';
let inspectPort = 0;
let echoPort = 0;

function startChild(mode: 'backend' | 'clients'): ChildProcess {
  // execArgv: []: not the test runner's loader flags; Node 24 strips the types itself.
  return fork(CHILD, [mode], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
}

function next<T extends ChildReport['type']>(child: ChildProcess, type: T, timeoutMs: number): Promise<Extract<ChildReport, { type: T }>> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      child.off('message', on);
      reject(new Error(`child: no '${type}' report within ${timeoutMs} ms`));
    }, timeoutMs);
    const on = (m: ChildReport) => {
      if (m.type !== type) return;
      clearTimeout(t);
      child.off('message', on);
      resolve(m as Extract<ChildReport, { type: T }>);
    };
    child.on('message', on);
  });
}

function ask(child: ChildProcess, cmd: ChildCommand): void {
  child.send(cmd);
}

function rssKb(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
}

function softNofile(pid: number): number {
  const line = readFileSync(`/proc/${pid}/limits`, 'utf8').split('\n').find((l) => l.startsWith('Max open files'))!;
  return Number(line.split(/\s{2,}/)[1]);
}

/** One good client round trip: TLS handshake with SNI, verified against the CA, and an echo. */
function roundTrip(port: number, i: number): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const token = `good-${i}\n`;
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'mail.example.org', ca: pki.ca.certPem });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`good client ${i}: no echo within 15 s`));
    }, 15_000);
    let got = '';
    s.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    s.once('secureConnect', () => s.write(token));
    s.on('data', (b: Buffer) => {
      got += b.toString('latin1');
      if (got === token) {
        clearTimeout(timer);
        s.destroy();
        resolve(performance.now() - t0);
      }
    });
  });
}

const mb = (kb: number) => (kb / 1024).toFixed(1);

/** RSS once it has stopped going down for 2 s (at most 10 s), in KB. */
async function settledRss(pid: number): Promise<number> {
  let low = rssKb(pid);
  for (let lastDrop = Date.now(), by = Date.now() + 10_000; Date.now() < by && Date.now() - lastDrop < 2000; ) {
    await sleep(250);
    const now = rssKb(pid);
    if (now < low - 512) lastDrop = Date.now();
    low = Math.min(low, now);
  }
  return low;
}

/**
 * postern's V8 heap in use after a forced full GC, in MB, through its inspector (the daemon is
 * started with --inspect on a loopback port: NODE_OPTIONS for that one spawn).
 */
async function heapAfterGc(): Promise<number> {
  return (await memoryAfterGc(inspectPort)).heapUsed / (1024 * 1024);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
const p99 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * 0.99))] ?? NaN;

beforeAll(async () => {
  buildOnce();
  pki = await makePki();
  const cert = await pki.issue('load', { names: ['mail.example.org'] });
  backendChild = startChild('backend');
  const { port: backendPort } = await next(backendChild, 'backend', 10_000);
  echoPort = backendPort;
  clientChild = startChild('clients');
  inspectPort = await freePort();
  const saved = process.env.NODE_OPTIONS;
  process.env.NODE_OPTIONS = `${saved ?? ''} --inspect=127.0.0.1:${inspectPort}`.trim();
  const spawning = spawnDaemon({
    dir: pki.dir,
    certs: [{ cert: cert.cert, key: cert.key }],
    level: 'info',
    top: { limits: { maxConnections: 2 * WANTED_SESSIONS, maxConnectionsPerClient: 2 * WANTED_SESSIONS } },
    listeners: [{ name: 'tls', protocol: 'tls', tls: 'implicit', backendPort, proxyProtocol: 'v2', timeouts: { handshake: '5s' } }],
  });
  try {
    d = await spawning;
  } finally {
    // Only the daemon gets the inspector (nothing else is spawned meanwhile).
    if (saved === undefined) delete process.env.NODE_OPTIONS;
    else process.env.NODE_OPTIONS = saved;
  }
  // The daemon inherits this process's limit; raise it (as `prlimit --nofile=40000` would at spawn)
  // if the machine lets us, and record what it really got.
  const r = spawnSync('prlimit', ['--pid', String(d.pid), `--nofile=${WANTED_NOFILE}:${WANTED_NOFILE}`], { encoding: 'utf8' });
  nofile = softNofile(d.pid);
  nofileNote = r.status === 0 ? `raised to ${nofile}` : `prlimit --nofile=${WANTED_NOFILE} refused (${(r.stderr || r.error?.message || '').trim()}): postern keeps ${nofile}`;
  console.log(`[load] postern pid ${d.pid}, descriptor limit ${nofile} (${nofileNote})`);
}, 60_000);

afterAll(async () => {
  backendChild?.kill();
  clientChild?.kill();
  await stopAll();
});

describe('load', () => {
  it('holds 10,000 idle TLS sessions (or as many as the descriptor limit allows), each handshaken and echoed, twice; descriptors, V8 heap and RSS come back each time', async () => {
    const port = d.port('tls');
    const hold = { cmd: 'hold' as const, port, parallel: 200, caPem: pki.ca.certPem, servername: 'mail.example.org' };
    // Warm up (code paths, TLS contexts, heap) so the baseline is not a cold process.
    ask(clientChild, { ...hold, n: 300, parallel: 50, timeoutMs: 20_000 });
    expect((await next(clientChild, 'held', 30_000)).ok).toBe(300);
    ask(clientChild, { cmd: 'release' });
    await next(clientChild, 'released', 30_000);
    const baseFds = await d.settledFds(10_000);
    expect(await d.fdsBackTo(baseFds, 10_000)).toBeLessThanOrEqual(baseFds);
    const baseHeap = await heapAfterGc();
    const baseRss = await settledRss(d.pid);

    // Two descriptors per session (client + backend) on top of what postern holds idle.
    const fit = Math.floor((nofile - baseFds - HEADROOM) / 2);
    const n = Math.min(WANTED_SESSIONS, fit);
    if (n < WANTED_SESSIONS) {
      console.log(`[load] holding ${n} sessions, not ${WANTED_SESSIONS}: postern's descriptor limit is ${nofile} (${nofileNote}); ${baseFds} descriptors idle + ${HEADROOM} headroom + 2 per session (client and backend) leaves room for ${fit}`);
    }

    const cycle = async (round: number) => {
      ask(clientChild, { ...hold, n, timeoutMs: 30_000 });
      const held = await next(clientChild, 'held', 75_000);
      const heldFds = d.fds();
      const heldRss = rssKb(d.pid);
      const active = await d.metric('postern_connections_active', { listener: 'tls' });
      console.log(`[load] round ${round}: ${held.ok}/${n} sessions handshaken + echoed in ${held.ms} ms (${Math.round((held.ok * 1000) / held.ms)}/s), failed ${held.failed} ${JSON.stringify(held.errors)}; postern holds ${heldFds} fds (baseline ${baseFds}), ${active} active, RSS ${mb(heldRss)} MB`);
      expect(held.failed, JSON.stringify(held.errors)).toBe(0);
      expect(held.ok).toBe(n);
      expect(active).toBe(n);
      expect(heldFds).toBeGreaterThanOrEqual(baseFds + 2 * n);
      const t = Date.now();
      ask(clientChild, { cmd: 'release' });
      await next(clientChild, 'released', 60_000);
      const fds = await d.fdsBackTo(baseFds, 30_000);
      const releaseMs = Date.now() - t;
      expect(fds).toBeLessThanOrEqual(baseFds);
      expect(await d.metric('postern_connections_active', { listener: 'tls' })).toBe(0);
      const heap = await heapAfterGc();
      const rss = await settledRss(d.pid);
      console.log(`[load] round ${round}: released, descriptors back to ${fds} in ${releaseMs} ms; V8 heap used after GC ${heap.toFixed(1)} MB (baseline ${baseHeap.toFixed(1)}), RSS ${mb(rss)} MB`);
      return { heldRss, heap, rss };
    };

    const first = await cycle(1);
    console.log(`[load] RSS per idle TLS session: ${((first.heldRss - baseRss) / n).toFixed(1)} KB (${mb(baseRss)} MB idle -> ${mb(first.heldRss)} MB with ${n} sessions)`);
    const second = await cycle(2);
    // The JS heap comes back to where it was: nothing per session is kept.
    expect(first.heap - baseHeap).toBeLessThan(10);
    expect(second.heap - baseHeap).toBeLessThan(10);
    // RSS does not drop to the cold baseline: glibc keeps the freed OpenSSL buffers mapped for
    // reuse, and a second cycle still adds some fragmentation (a third adds next to nothing; the
    // heap above shows nothing is kept). What must hold: memory freed by a release is reused
    // (after a release RSS is below the peak), and a second identical cycle ends near the first:
    // within a quarter of one cycle's growth, so a native leak of ~15 KB per session would fail.
    const growth = first.heldRss - baseRss;
    const allowed = first.rss + Math.max(30 * 1024, 0.25 * growth);
    console.log(`[load] RSS: idle ${mb(baseRss)} MB, after round 1 ${mb(first.rss)} MB, after round 2 ${mb(second.rss)} MB (allowed up to ${mb(allowed)} MB)`);
    expect(first.rss).toBeLessThan(first.heldRss);
    expect(second.rss).toBeLessThan(second.heldRss);
    expect(second.rss).toBeLessThanOrEqual(allowed);
  }, 150_000);

  it('1,000 garbage connections at once: a good client keeps getting served throughout', async () => {
    const port = d.port('tls');
    const baseFds = await d.settledFds(5000);
    for (let i = 0; i < 10; i++) await roundTrip(port, i); // warm
    const before: number[] = [];
    for (let i = 0; i < 40; i++) before.push(await roundTrip(port, i));

    const hello = await captureHello();
    ask(clientChild, { cmd: 'flood', port, n: 1000, hello: hello.toString('base64'), timeoutMs: 20_000 });
    const flooded = next(clientChild, 'flooded', 40_000);
    let done = false;
    void flooded.then(() => (done = true), () => (done = true));
    const during: number[] = [];
    let i = 1000;
    // At least 20 round trips, and as long as the flood's connections are open.
    while (!done || during.length < 20) during.push(await roundTrip(port, i++));
    const f = await flooded;
    console.log(`[load] flood: ${f.n} connections ${JSON.stringify(f.byKind)}, ${f.closedByPostern} closed by postern within ${f.ms} ms, ${f.stillOpen} still open`);
    console.log(`[load] good client handshake+echo: before the flood median ${median(before).toFixed(1)} ms, p99 ${p99(before).toFixed(1)} ms (${before.length}); during it median ${median(during).toFixed(1)} ms, p99 ${p99(during).toFixed(1)} ms, max ${Math.max(...during).toFixed(1)} ms (${during.length} round trips, all ok)`);
    expect(f.stillOpen).toBe(0);
    expect(f.closedByPostern).toBe(f.n);
    expect(during.length).toBeGreaterThanOrEqual(20);
    expect(await d.fdsBackTo(baseFds, 15_000)).toBeLessThanOrEqual(baseFds);
    expect(d.child.exitCode).toBeNull();
  }, 90_000);

  it('holds exactly 10,000 idle TLS sessions with workers: 2 (each worker needs ~10,000 descriptors, within the per-process limit), and releases them', async () => {
    // One process can hold (limit - idle - headroom) / 2 sessions (2 descriptors each); where the
    // limit cannot be raised (here: hard limit 20000 without CAP_SYS_RESOURCE) the single-process
    // test above holds a few less than 10,000. The all-cores setup an operator would use for that
    // many sessions (workers: 2) holds the full 10,000: node:cluster deals connections out round
    // robin, so each worker holds ~5,000 sessions, ~10,000 descriptors.
    const cert = await pki.issue('load-workers', { names: ['mail.example.org'] });
    const w = await spawnDaemon({
      dir: pki.dir,
      certs: [{ cert: cert.cert, key: cert.key }],
      level: 'info',
      top: { workers: 2, limits: { maxConnections: 2 * WANTED_SESSIONS, maxConnectionsPerClient: 2 * WANTED_SESSIONS } },
      listeners: [{ name: 'tls', protocol: 'tls', tls: 'implicit', backendPort: echoPort, proxyProtocol: 'v2', timeouts: { handshake: '5s' } }],
    });
    const pids: number[] = [];
    for (let i = 0; i < 2; i++) pids.push(Number((await w.waitMsg('worker started', {}, 20_000)).pid));
    await w.waitMsg('listening', { listener: 'tls' }, 20_000); // the second worker (the harness saw the first)
    const fdsOf = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;
    const limits = pids.map(softNofile);
    const base = pids.map(fdsOf);
    console.log(`[load] workers: 2, pids ${pids.join(', ')}, descriptor limit ${limits.join(' / ')}, idle descriptors ${base.join(' / ')}`);

    ask(clientChild, { cmd: 'hold', port: w.port('tls'), parallel: 200, caPem: pki.ca.certPem, servername: 'mail.example.org', n: WANTED_SESSIONS, timeoutMs: 30_000 });
    const held = await next(clientChild, 'held', 90_000);
    const heldFds = pids.map(fdsOf);
    const active = await w.metric('postern_connections_active', { listener: 'tls' });
    console.log(`[load] workers: 2: ${held.ok}/${WANTED_SESSIONS} sessions handshaken + echoed in ${held.ms} ms (${Math.round((held.ok * 1000) / held.ms)}/s), failed ${held.failed} ${JSON.stringify(held.errors)}; descriptors per worker ${heldFds.join(' / ')}, ${active} active (sum over workers)`);
    expect(held.failed, JSON.stringify(held.errors)).toBe(0);
    expect(held.ok).toBe(WANTED_SESSIONS);
    expect(active).toBe(WANTED_SESSIONS);
    // Every session holds a client and a backend descriptor in the worker that took it.
    expect(heldFds.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(base.reduce((a, b) => a + b, 0) + 2 * WANTED_SESSIONS);

    ask(clientChild, { cmd: 'release' });
    await next(clientChild, 'released', 60_000);
    for (let i = 0; i < pids.length; i++) {
      for (const until = Date.now() + 30_000; fdsOf(pids[i]!) > base[i]! && Date.now() < until; ) await sleep(100);
    }
    const after = pids.map(fdsOf);
    console.log(`[load] workers: 2: released, descriptors per worker back to ${after.join(' / ')} (idle ${base.join(' / ')})`);
    after.forEach((n, i) => expect(n).toBeLessThanOrEqual(base[i]!));
    expect(await w.metric('postern_connections_active', { listener: 'tls' })).toBe(0);
    // Same workers throughout: none died and was replaced under the load.
    for (const pid of pids) expect(() => process.kill(pid, 0)).not.toThrow();
    expect(w.logs.some((l) => l.msg === 'worker died; starting a replacement')).toBe(false);
  }, 150_000);
});

/** A real ClientHello for this listener (Node's), to cut in halves for the flood. */
function captureHello(): Promise<Buffer> {
  return new Promise((resolve) => {
    const server = net.createServer((s) => {
      s.once('data', (b: Buffer) => {
        resolve(Buffer.from(b));
        s.destroy();
        server.close();
      });
    });
    server.listen(0, '127.0.0.1', () => {
      const c = tls.connect({ host: '127.0.0.1', port: (server.address() as net.AddressInfo).port, servername: 'mail.example.org', rejectUnauthorized: false });
      c.on('error', () => {});
    });
  });
}
