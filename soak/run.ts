// Fault soak (issue 7, part C): the compiled postern runs as one child process, never restarted,
// in front of scripted SMTP and IMAP backends, while for the whole run, all at once:
//   - good SMTP deliveries over STARTTLS (fallback listener, varied SNI or none) and some in
//     plaintext (port 25 allows it), each with a unique id and the SHA-256 of its body; good IMAP
//     sessions over implicit TLS (strict listener);
//   - slow clients (1 byte every 100 ms through the dialogue), a backend that reads slowly during
//     DATA, an IMAP client that reads a 2 MB literal slowly;
//   - hostile connections (garbage, plaintext on the TLS port, STARTTLS injection, oversized lines,
//     truncated ClientHellos, a hello before STARTTLS, unknown SNI on the strict listener, silent
//     clients, resets in the middle of DATA and of a FETCH);
//   - issue 14's attackers ("One client against everyone"), on the SMTP listener and on IMAP and
//     POP3 STARTTLS listeners that only they use: lines with U+2028/U+2029/NEL/BOM/lone bytes in
//     every pre-TLS dialogue and after TLS, clients that never read while they send commands
//     postern answers itself (EHLO/NOOP/CAPABILITY/CAPA before TLS, STARTTLS/STLS/XCLIENT after),
//     clients that write without pause while postern waits for the backend (its greeting, on the
//     plaintext handoff and after TLS; the 354 after DATA: the SMTP backend answers those late for
//     them), XCLIENT/XFORWARD padded past 4096 bytes;
//   - faults: backends killed and restarted every few seconds, certificates rewritten with a
//     freshly issued one every few seconds (SIGHUP now and then).
// Afterwards it checks the invariants (nothing lost, nothing corrupted, nothing delivered twice,
// no 5xx, no hang, every client verified the CA's certificate, hostile bytes and refused commands
// (XCLIENT, XFORWARD, STARTTLS/STLS after TLS) never reach a backend, an attacker that does not read
// never gets more into postern than the kernel's socket buffers hold, 421 /
// BYE while a backend was down, reloads took effect, same pid, descriptors and memory back to the
// after-warmup baseline), prints a table and writes soak/results/latest.json. Exit 1 when any
// invariant fails.
//
//   node soak/run.ts [--seconds N] [--warmup N]      (or SOAK_SECONDS=N; default 60 s + 10 s warmup)
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import http from 'node:http';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { stringify } from 'yaml';
import { createCa, issueCert, type TestCa } from '../test/helpers/pki.ts';
import { buildOnce } from '../test/helpers/build.ts';
import { freePort, freePorts } from '../test/helpers/ports.ts';
import { memoryAfterGc } from '../test/helpers/inspector.ts';
import { imapBackend, pop3Backend, smtpBackend, type HeldMessage, type RestartableServer, type SlowPlan } from './backends.ts';
import { ATTACKER_KINDS, HOSTILE_KINDS, HOSTNAME, attacker, hostile, imapSession, realClientHello, smtpDelivery, type Delivery, type Endpoints, type HostileOutcome, type ImapSession } from './clients.ts';

const SOAK_DIR = import.meta.dirname;
const ROOT = join(SOAK_DIR, '..');
const BIN = join(ROOT, 'bin', 'postern.js');
const RESULTS = join(SOAK_DIR, 'results');

// Tolerances for "back to baseline" (after warmup, everything idle, compared with the end).
const RSS_TOLERANCE_MB = 20;
const FD_TOLERANCE = 2;

// ---- options --------------------------------------------------------------------------------

function option(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0) return process.argv[i + 1];
  const eq = process.argv.find((a) => a.startsWith(`--${name}=`));
  return eq?.slice(name.length + 3);
}
const SECONDS = Number(option('seconds') ?? process.env.SOAK_SECONDS ?? 60);
const WARMUP = Number(option('warmup') ?? process.env.SOAK_WARMUP ?? 10);
/**
 * postern runs with --inspect on a loopback port so that both memory measurements can be taken
 * after a forced full GC (through the DevTools protocol): without it VmRSS mostly shows how far V8
 * let its heap grow under the last burst of load (it does not hand memory back on its own in
 * the seconds the soak waits), which says nothing about leaks. --no-inspect (SOAK_INSPECT=0) runs
 * postern without the inspector; the RSS check then compares plain VmRSS (noisier).
 */
const INSPECT = !process.argv.includes('--no-inspect') && process.env.SOAK_INSPECT !== '0';
const HEAP_TOLERANCE_MB = 10;
/**
 * SOAK_GC_EVERY=N (seconds, long runs): also force a GC every N s during the soak and log RSS and
 * V8 heap after it, to tell a steady leak (a straight climb) from allocator high water (a
 * plateau). Each forced GC pauses postern for a moment.
 */
const GC_EVERY_S = Number(process.env.SOAK_GC_EVERY ?? 0);
if (!(SECONDS > 0) || !(WARMUP >= 0)) {
  console.error('usage: node soak/run.ts [--seconds N] [--warmup N]   (SOAK_SECONDS, SOAK_WARMUP)');
  process.exit(2);
}

const mb = (kb: number) => (kb / 1024).toFixed(1);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const rand = (a: number, b: number) => a + Math.random() * (b - a);
const log = (s: string) => process.stderr.write(`[soak ${new Date().toISOString().slice(11, 19)}] ${s}\n`);

// ---- build ----------------------------------------------------------------------------------

function buildIfStale(): void {
  if (buildOnce({ verbose: true })) log('dist/ was older than src/: built');
}

// ---- the daemon -----------------------------------------------------------------------------

function httpGet(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parseMetrics(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

const sum = (samples: Sample[], name: string, labels: Record<string, string> = {}) =>
  samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((a, s) => a + s.value, 0);

/** postern's process.memoryUsage() after a forced GC, in MB (it runs with --inspect). */
async function heapAfterGc(inspectPort: number): Promise<Record<string, number> | null> {
  try {
    const mu = await memoryAfterGc(inspectPort);
    return Object.fromEntries(Object.entries(mu).map(([k, v]) => [k, Math.round(v / 104857.6) / 10]));
  } catch (err) {
    log(`inspector: ${(err as Error).message}`);
    return null;
  }
}

function procStatus(pid: number): { rssKb: number; fds: number; startTime: string } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
  const fds = readdirSync(`/proc/${pid}/fd`).length;
  const startTime = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[19]!;
  return { rssKb, fds, startTime };
}

// ---- certificates ---------------------------------------------------------------------------

interface CertState {
  ca: TestCa;
  certFile: string;
  keyFile: string;
  /** Fingerprints (as Node's getPeerCertificate() prints them) of every leaf written, in order. */
  written: string[];
  lastWriteAt: number;
}

async function writeCert(c: CertState): Promise<void> {
  const issued = await issueCert(c.ca, { names: [HOSTNAME, 'example.org'] });
  // Two plain writes, one after the other (as `cp` would): postern sees a moment where key and
  // certificate do not match, and must never serve that.
  writeFileSync(c.keyFile, issued.keyPem, { mode: 0o600 });
  writeFileSync(c.certFile, issued.chainPem);
  c.written.push(new X509Certificate(issued.certPem).fingerprint256);
  c.lastWriteAt = Date.now();
}

/** The fingerprint of the certificate postern serves now (no SNI on the strict listener). */
function servedNow(port: number, caPem: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: HOSTNAME, ca: caPem }, () => {
      const fp = s.getPeerCertificate().fingerprint256;
      s.destroy();
      resolve(fp);
    });
    s.on('error', reject);
  });
}

// ---- the run --------------------------------------------------------------------------------

interface Outage {
  backend: string;
  from: number;
  to: number;
}

interface Tally {
  deliveries: Delivery[];
  imap: ImapSession[];
  hostile: HostileOutcome[];
  outages: Outage[];
  restarts: Record<string, number>;
  certWrites: number;
  sighups: number;
}

async function main(): Promise<number> {
  buildIfStale();
  mkdirSync(RESULTS, { recursive: true });
  const work = mkdtempSync(join(tmpdir(), 'postern-soak-'));
  const certDir = join(work, 'certs');
  mkdirSync(certDir);
  const ca = await createCa('postern soak CA');
  const certs: CertState = { ca, certFile: join(certDir, 'fullchain.pem'), keyFile: join(certDir, 'privkey.pem'), written: [], lastWriteAt: 0 };
  await writeCert(certs);

  const held = new Map<string, HeldMessage>();
  const slowPlans = new Map<number, SlowPlan>();
  const backends: Record<'smtp' | 'imap', RestartableServer> = { smtp: smtpBackend(held, slowPlans), imap: imapBackend() };
  await backends.smtp.start();
  await backends.imap.start();
  // Behind the IMAP and POP3 STARTTLS listeners, which only the attackers use: never killed.
  const attackerBackends: Record<'imap' | 'pop3', RestartableServer> = { imap: imapBackend({ starttlsListener: true }), pop3: pop3Backend() };
  await attackerBackends.imap.start();
  await attackerBackends.pop3.start();

  const [smtpPort, imapPort, adminPort, imapStarttlsPort, pop3Port] = (await freePorts(5)) as [number, number, number, number, number];
  const config = {
    log: { level: 'info' },
    admin: { listen: `127.0.0.1:${adminPort}` },
    // All soak clients come from 127.0.0.1: the per-client cap (default 50) would refuse them.
    limits: { maxConnectionsPerClient: 2000 },
    certificates: [{ cert: certs.certFile, key: certs.keyFile }],
    listeners: [
      {
        name: 'smtp',
        listen: `127.0.0.1:${smtpPort}`,
        protocol: 'smtp',
        role: 'mx', // sni fallback, plaintext allowed
        tls: 'starttls',
        hostname: HOSTNAME,
        // backendReply 10 s (default 2 min): a backend killed while postern waits for its reply
        // to an attacker that postern had to pause leaves the session open until this deadline
        // (see test/hostile/daemon-fuzz-findings.test.ts); the end-of-soak check waits 30 s.
        timeouts: { handshake: '5s', connect: '2s', idle: '60s', starttls: '30s', backendReply: '10s' },
        backend: { address: `127.0.0.1:${backends.smtp.port}`, proxyProtocol: 'v2' },
      },
      {
        name: 'imaps',
        listen: `127.0.0.1:${imapPort}`,
        protocol: 'imap',
        tls: 'implicit',
        hostname: HOSTNAME,
        sni: 'strict',
        timeouts: { handshake: '5s', connect: '2s', idle: '60s' },
        backend: { address: `127.0.0.1:${backends.imap.port}`, proxyProtocol: 'v2' },
      },
      {
        name: 'imap',
        listen: `127.0.0.1:${imapStarttlsPort}`,
        protocol: 'imap',
        tls: 'starttls',
        hostname: HOSTNAME,
        timeouts: { handshake: '5s', connect: '2s', idle: '60s', starttls: '30s', backendReply: '10s' },
        backend: { address: `127.0.0.1:${attackerBackends.imap.port}`, proxyProtocol: 'v2' },
      },
      {
        name: 'pop3',
        listen: `127.0.0.1:${pop3Port}`,
        protocol: 'pop3',
        tls: 'starttls',
        hostname: HOSTNAME,
        timeouts: { handshake: '5s', connect: '2s', idle: '60s', starttls: '30s', backendReply: '10s' },
        backend: { address: `127.0.0.1:${attackerBackends.pop3.port}`, proxyProtocol: 'v2' },
      },
    ],
  };
  const configFile = join(work, 'postern.yaml');
  writeFileSync(configFile, stringify(config));
  const logFile = join(RESULTS, 'postern-latest.log');
  const logFd = openSync(logFile, 'w');
  const inspectPort = INSPECT ? await freePort() : 0;
  const child: ChildProcess = spawn(process.execPath, [...(INSPECT ? [`--inspect=127.0.0.1:${inspectPort}`] : []), BIN, 'run', '-c', configFile], { cwd: work, stdio: ['ignore', logFd, logFd] });
  closeSync(logFd);
  let exited: { code: number | null; signal: string | null } | null = null;
  let stopping = false;
  child.once('exit', (code, signal) => {
    exited = { code, signal };
    // postern must never die during the soak: say so at once, with what it printed last (an
    // uncaught error's stack, a native assertion), so that a CI log alone tells why.
    if (!stopping) {
      const tail = readFileSync(logFile, 'utf8').split('\n').slice(-60).join('\n');
      console.error(`\nSOAK FAILED: postern (pid ${child.pid}) exited during the soak: code ${code}, signal ${signal}\nlast lines of ${logFile}:\n${tail}`);
      process.exit(1);
    }
  });
  const pid = child.pid!;
  const killChild = () => {
    if (!exited) child.kill('SIGKILL');
  };
  process.once('exit', killChild);

  // Ready: listeners bound, certificates loaded, backends reached.
  const readyBy = Date.now() + 30_000;
  for (;;) {
    const r = await httpGet(adminPort, '/readyz').catch(() => null);
    if (r?.status === 200) break;
    if (exited || Date.now() > readyBy) {
      console.error(`postern did not become ready (exit ${JSON.stringify(exited)}); log: ${logFile}\n${readFileSync(logFile, 'utf8').slice(-3000)}`);
      return 1;
    }
    await sleep(200);
  }
  const started = procStatus(pid);
  log(`postern pid ${pid} ready: smtp (STARTTLS, fallback) 127.0.0.1:${smtpPort}, imaps (strict) 127.0.0.1:${imapPort}, imap (STARTTLS) ${imapStarttlsPort}, pop3 (STARTTLS) ${pop3Port}, admin ${adminPort}; log ${logFile}`);
  await realClientHello();

  const ep: Endpoints = {
    smtpPort,
    imapPort,
    imapStarttlsPort,
    pop3Port,
    caPem: ca.certPem,
    served: new Map(),
    slowBackend: (clientPort, plan) => {
      slowPlans.set(clientPort, plan);
      // A port is reused sooner or later; the plan is for this connection only.
      setTimeout(() => slowPlans.delete(clientPort), 30_000).unref();
    },
  };
  const tally: Tally = { deliveries: [], imap: [], hostile: [], outages: [], restarts: { smtp: 0, imap: 0 }, certWrites: 0, sighups: 0 };

  /** Runs every client and fault loop until `ms` have passed; resolves when all have finished. */
  const phase = async (ms: number) => {
    const until = Date.now() + ms;
    const running = () => Date.now() < until;
    // Every loop is named; a loop still busy a minute after the phase should have ended is a hang
    // in a client (or in postern): name it and fail, rather than wait for CI's time limit.
    const busy = new Map<number, string>();
    let loopId = 0;
    const loop = async (name: string, body: (note: (what: string) => void) => Promise<void>, pause: [number, number] = [0, 30]) => {
      const id = ++loopId;
      busy.set(id, name);
      const note = (what: string) => busy.set(id, `${name}: ${what}`);
      while (running()) {
        await body(note);
        await sleep(rand(...pause));
      }
      busy.delete(id);
    };
    const track = async (name: string, p: Promise<void>) => {
      const id = ++loopId;
      busy.set(id, name);
      await p;
      busy.delete(id);
    };
    const watchdog = setTimeout(() => {
      console.error(`\nSOAK FAILED: ${busy.size} client loop(s) still busy 60 s after the phase ended (a client or a session hangs):\n  ${[...busy.values()].join('\n  ')}`);
      process.exit(1);
    }, ms + 60_000);
    const loops: Promise<void>[] = [];
    for (let i = 0; i < 6; i++) loops.push(loop('SMTP delivery', async () => void tally.deliveries.push(await smtpDelivery(ep))));
    loops.push(loop('SMTP delivery, slow client', async () => void tally.deliveries.push(await smtpDelivery(ep, { variant: 'slow', size: 2000 + Math.floor(Math.random() * 30_000) }))));
    loops.push(loop('SMTP delivery, slow backend', async () => void tally.deliveries.push(await smtpDelivery(ep, { variant: 'slow-backend' }))));
    loops.push(loop('SMTP delivery, plaintext', async () => void tally.deliveries.push(await smtpDelivery(ep, { variant: 'plaintext' }))));
    for (let i = 0; i < 3; i++) loops.push(loop('IMAP session', async () => void tally.imap.push(await imapSession(ep))));
    loops.push(loop('IMAP session, slow reader', async () => void tally.imap.push(await imapSession(ep, 'slow-reader'))));
    for (let i = 0; i < 3; i++) {
      loops.push(
        loop('hostile client', async (note) => {
          const kind = HOSTILE_KINDS[Math.floor(Math.random() * HOSTILE_KINDS.length)]!;
          note(kind);
          const h = await hostile(ep, kind);
          tally.hostile.push(h);
          if (h.delivery) tally.deliveries.push(h.delivery);
        }),
      );
    }
    // Issue 14's attackers, next to the good mail: Unicode lines, clients that never read, clients
    // that write while postern waits for the backend, padded XCLIENT.
    for (let i = 0; i < 2; i++) {
      loops.push(
        loop('attacker', async (note) => {
          const kind = ATTACKER_KINDS[Math.floor(Math.random() * ATTACKER_KINDS.length)]!;
          note(kind);
          tally.hostile.push(await attacker(ep, kind));
        }, [50, 300]),
      );
    }
    // Backend restarts: every 3-6 s one backend (or both) is killed and comes back 0.5-2 s later.
    loops.push(
      track('backend restarts', (async () => {
        let turn = 0;
        while (running()) {
          await sleep(rand(3000, 6000));
          if (!running()) break;
          const which: Array<'smtp' | 'imap'> = turn % 3 === 2 ? ['smtp', 'imap'] : [turn % 3 === 0 ? 'smtp' : 'imap'];
          turn++;
          const from = Date.now();
          for (const w of which) {
            backends[w].kill();
            tally.restarts[w]!++;
          }
          await sleep(rand(500, 2000));
          for (const w of which) {
            await backends[w].start();
            tally.outages.push({ backend: w, from, to: Date.now() });
          }
        }
      })()),
    );
    // Certificate reloads: a freshly issued certificate every 3-5 s; every third one also SIGHUP.
    loops.push(
      track('certificate writes', (async () => {
        while (running()) {
          await sleep(rand(3000, 5000));
          if (!running()) break;
          await writeCert(certs);
          tally.certWrites++;
          if (tally.certWrites % 3 === 0) {
            await sleep(rand(50, 500));
            child.kill('SIGHUP');
            tally.sighups++;
          }
        }
      })()),
    );
    await Promise.all(loops);
    clearTimeout(watchdog);
  };

  /** Every client finished; waits until postern holds no session, then a quiet moment; measures. */
  const settle = async (): Promise<{ rssKb: number; fds: number; active: number; heap: Record<string, number> | null; rssAfterGcKb: number | null }> => {
    let active = -1;
    const by = Date.now() + 30_000;
    while (Date.now() < by) {
      active = sum(parseMetrics((await httpGet(adminPort, '/metrics')).body), 'postern_connections_active');
      if (active === 0) break;
      await sleep(250);
    }
    // Quiet now: RSS is sampled until it has not gone down for 4 s (at most 20 s), the lowest
    // value kept; the same procedure at the baseline and at the end. Then (with the inspector) a
    // forced full GC and VmRSS again: the figure the memory check compares.
    // The backend health check opens a descriptor for a moment every 10 s: the lowest count over
    // the same window is the descriptor figure.
    let fds = Infinity;
    let rss = Infinity;
    const trace: number[] = [];
    for (let lastDrop = Date.now(), by = Date.now() + 20_000; Date.now() < by && Date.now() - lastDrop < 4000; await sleep(250)) {
      const p = procStatus(pid);
      fds = Math.min(fds, p.fds);
      if (p.rssKb < rss - 1024) lastDrop = Date.now();
      rss = Math.min(rss, p.rssKb);
      trace.push(p.rssKb);
    }
    if (process.env.SOAK_TRACE) log(`RSS while settling (MB): ${trace.filter((_, i) => i % 4 === 0).map((k) => (k / 1024).toFixed(0)).join(' ')}`);
    const heap = INSPECT ? await heapAfterGc(inspectPort) : null;
    await sleep(500);
    const rssAfterGcKb = heap ? procStatus(pid).rssKb : null;
    return { rssKb: rss, fds, active, heap, rssAfterGcKb };
  };

  const t0 = Date.now();
  log(`warmup ${WARMUP} s (everything at once, faults included)`);
  await phase(WARMUP * 1000);
  const base = await settle();
  log(`baseline after warmup: RSS ${mb(base.rssKb)} MB${base.rssAfterGcKb ? ` (${mb(base.rssAfterGcKb)} MB after a forced GC, V8 heap used ${base.heap?.heapUsed} MB)` : ''}, ${base.fds} fds, ${base.active} active`);
  const warm = { deliveries: tally.deliveries.length, imap: tally.imap.length, hostile: tally.hostile.length };

  log(`soak ${SECONDS} s`);
  const t1 = Date.now();
  const progress = setInterval(() => {
    const ok = tally.deliveries.filter((d) => d.result === 'ok').length;
    log(`${Math.round((Date.now() - t1) / 1000)} s: ${tally.deliveries.length} deliveries (${ok} ok), ${tally.imap.length} IMAP, ${tally.hostile.length} hostile, ${tally.restarts.smtp! + tally.restarts.imap!} backend kills, ${tally.certWrites} cert writes; postern RSS ${(procStatus(pid).rssKb / 1024).toFixed(1)} MB, ${procStatus(pid).fds} fds`);
  }, 10_000);
  const gcTrace: Array<{ s: number; rssMb: number; heapUsedMb: number | undefined }> = [];
  // The highest VmRSS while the soak runs (attackers included), every 250 ms.
  let peakRssKb = 0;
  const peakTimer = setInterval(() => {
    if (!exited) peakRssKb = Math.max(peakRssKb, procStatus(pid).rssKb);
  }, 250);
  const gcTimer = INSPECT && GC_EVERY_S > 0
    ? setInterval(() => {
      void heapAfterGc(inspectPort).then((heap) => {
        if (!heap || exited) return;
        const point = { s: Math.round((Date.now() - t1) / 1000), rssMb: Number(mb(procStatus(pid).rssKb)), heapUsedMb: heap.heapUsed };
        gcTrace.push(point);
        log(`${point.s} s: after a forced GC: RSS ${point.rssMb} MB, V8 heap used ${point.heapUsedMb} MB`);
      });
    }, GC_EVERY_S * 1000)
    : null;
  await phase(SECONDS * 1000);
  clearInterval(progress);
  clearInterval(peakTimer);
  if (gcTimer) clearInterval(gcTimer);
  const soakMs = Date.now() - t1;
  log('all clients finished; checking');

  // The end state: both backends up, postern ready again, the last certificate served.
  for (const b of Object.values(backends)) if (!b.up) await b.start();
  let readyAtEnd = false;
  for (const by = Date.now() + 25_000; Date.now() < by; await sleep(500)) {
    const r = await httpGet(adminPort, '/readyz').catch(() => null);
    if (r?.status === 200) {
      readyAtEnd = true;
      break;
    }
  }
  let lastServed = '';
  for (const by = Date.now() + 15_000; Date.now() < by; await sleep(500)) {
    if (Date.now() - certs.lastWriteAt < 1500) continue;
    lastServed = await servedNow(imapPort, ca.certPem).catch(() => '');
    if (lastServed === certs.written.at(-1)) break;
  }
  const end = await settle();
  const after = procStatus(pid);
  const metrics = parseMetrics((await httpGet(adminPort, '/metrics')).body);
  const alive = exited === null && (() => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  })();

  // ---- the invariants -----------------------------------------------------------------------

  const byId = new Map(tally.deliveries.map((d) => [d.id, d]));
  let lost = 0, corrupted = 0, duplicated = 0, heldAfterTemp = 0, dupWindow = 0, phantom = 0, partialHeld = 0;
  const examples: string[] = [];
  const note = (s: string) => examples.length < 20 && examples.push(s);
  for (const d of tally.deliveries) {
    const m = held.get(d.id);
    const complete = m?.complete ?? 0;
    if (d.result === 'ok') {
      if (complete === 0) lost++, note(`lost: ${d.id} (${d.variant}) accepted with 250 but not held`);
      else if (complete > 1) duplicated++, note(`duplicated: ${d.id} held ${complete} times`);
      if (m && m.computed.some((h, i) => h !== m.announced[i] || h !== d.sha256)) corrupted++, note(`corrupted: ${d.id} body hash differs`);
    } else if (complete > 0) {
      if (m!.computed.some((h, i) => h !== m!.announced[i] || h !== d.sha256)) corrupted++, note(`corrupted: ${d.id} held with a wrong hash`);
      if (d.result === 'temp' && m!.killedBeforeAck >= complete) dupWindow++;
      else heldAfterTemp++, note(`held although the client saw ${d.result} ${d.kind}: ${d.id}`);
    }
  }
  for (const [id, m] of held) {
    if (!byId.has(id) && m.complete > 0) phantom++, note(`phantom: backend holds ${id} that no client sent`);
    if (m.partial > 0 && m.complete === 0) partialHeld++;
  }
  const imapCorrupt = tally.imap.filter((s) => s.result === 'corrupt').length;
  const perm = tally.deliveries.filter((d) => d.result === 'perm');
  const hung = [...tally.deliveries.filter((d) => d.result === 'hung'), ...tally.imap.filter((s) => s.result === 'hung')];
  const tlsFail = [...tally.deliveries.filter((d) => d.result === 'tls'), ...tally.imap.filter((s) => s.result === 'tls')];
  const hostileBad = tally.hostile.filter((h) => !h.ok);
  const forbidden = [...backends.smtp.stats.forbidden, ...backends.imap.stats.forbidden, ...attackerBackends.imap.stats.forbidden, ...attackerBackends.pop3.stats.forbidden];
  for (const d of [...perm, ...hung, ...tlsFail]) note(`${d.result}: ${d.kind} ${d.detail}`);
  for (const h of hostileBad) note(`hostile ${h.kind}: ${h.detail}`);
  for (const f of forbidden) note(`reached a backend: ${f}`);

  const count = <T>(xs: T[], key: (x: T) => string) => {
    const out: Record<string, number> = {};
    for (const x of xs) out[key(x)] = (out[key(x)] ?? 0) + 1;
    return Object.fromEntries(Object.entries(out).sort((a, b) => b[1] - a[1]));
  };
  const smtpOk = tally.deliveries.filter((d) => d.result === 'ok' && d.variant !== 'reset');
  const smtpTemp = tally.deliveries.filter((d) => d.result === 'temp');
  const imapOk = tally.imap.filter((s) => s.result === 'ok');
  const imapTemp = tally.imap.filter((s) => s.result === 'temp');
  const smtp421 = smtpTemp.filter((d) => d.kind.startsWith('421 4.3.2')).length;
  const imapBye = imapTemp.filter((s) => s.kind.startsWith('BYE-unavailable')).length;
  const reloadsOk = sum(metrics, 'postern_reloads_total', { result: 'ok' });
  const served = [...ep.served.keys()];
  const writtenServed = certs.written.filter((fp) => ep.served.has(fp)).length;

  const rssDeltaMb = (end.rssKb - base.rssKb) / 1024;
  const gcRssDeltaMb = base.rssAfterGcKb !== null && end.rssAfterGcKb !== null ? (end.rssAfterGcKb - base.rssAfterGcKb) / 1024 : null;
  const heapDeltaMb = base.heap && end.heap ? end.heap.heapUsed! - base.heap.heapUsed! : null;
  const memoryChecks =
    gcRssDeltaMb !== null && heapDeltaMb !== null
      ? [
          { name: `RSS after a forced GC within +${RSS_TOLERANCE_MB} MB of the after-warmup baseline`, ok: gcRssDeltaMb <= RSS_TOLERANCE_MB, detail: `${mb(base.rssAfterGcKb!)} -> ${mb(end.rssAfterGcKb!)} MB (${gcRssDeltaMb >= 0 ? '+' : ''}${gcRssDeltaMb.toFixed(1)}); without the GC ${mb(base.rssKb)} -> ${mb(end.rssKb)} MB` },
          { name: `V8 heap used after a forced GC within +${HEAP_TOLERANCE_MB} MB`, ok: heapDeltaMb <= HEAP_TOLERANCE_MB, detail: `${base.heap!.heapUsed} -> ${end.heap!.heapUsed} MB` },
        ]
      : [{ name: `RSS within +${RSS_TOLERANCE_MB} MB of the after-warmup baseline (no forced GC)`, ok: rssDeltaMb <= RSS_TOLERANCE_MB, detail: `${mb(base.rssKb)} -> ${mb(end.rssKb)} MB (${rssDeltaMb >= 0 ? '+' : ''}${rssDeltaMb.toFixed(1)})` }];
  const checks: Array<{ name: string; ok: boolean; detail: string }> = [
    { name: 'postern never restarted (same pid, same start time, alive)', ok: alive && after.startTime === started.startTime, detail: `pid ${pid}, start ${started.startTime} -> ${after.startTime}, alive ${alive}` },
    { name: 'lost = 0 (250 after DATA, message not held)', ok: lost === 0, detail: String(lost) },
    { name: 'corrupted = 0 (held body hash differs; IMAP literal differs)', ok: corrupted + imapCorrupt === 0, detail: `${corrupted} SMTP, ${imapCorrupt} IMAP` },
    { name: 'duplicated = 0 (one delivery held twice)', ok: duplicated === 0, detail: String(duplicated) },
    { name: 'temporary failure yet held complete = 0', ok: heldAfterTemp === 0, detail: `${heldAfterTemp} (plus ${dupWindow} in SMTP's own duplicate window: backend killed after its 250, before the client read it)` },
    { name: 'phantom messages = 0 (held, sent by nobody)', ok: phantom === 0, detail: String(phantom) },
    { name: 'no 5xx or unexpected reply to a good client', ok: perm.length === 0, detail: JSON.stringify(count(perm, (d) => d.kind)) },
    { name: 'no hung session (every step answered in time)', ok: hung.length === 0, detail: String(hung.length) },
    { name: 'every good client verified the certificate against the CA', ok: tlsFail.length === 0, detail: `${tlsFail.length} TLS failures` },
    { name: 'hostile connections handled as required', ok: hostileBad.length === 0, detail: `${hostileBad.length} of ${tally.hostile.length} not` },
    { name: 'no hostile byte reached a backend (injected lines, plaintext; XCLIENT/XFORWARD/STARTTLS/STLS as commands)', ok: forbidden.length === 0, detail: String(forbidden.length) },
    { name: 'SMTP backend down -> 421 4.3.2 seen', ok: tally.restarts.smtp === 0 || smtp421 > 0, detail: `${smtp421} sessions, ${tally.restarts.smtp} outages` },
    { name: 'IMAP backend down -> * BYE [UNAVAILABLE] seen', ok: tally.restarts.imap === 0 || imapBye > 0, detail: `${imapBye} sessions, ${tally.restarts.imap} outages` },
    { name: 'certificate reloads took effect (several served, the last one at the end)', ok: tally.certWrites === 0 || (reloadsOk > 0 && lastServed === certs.written.at(-1) && writtenServed >= 2), detail: `${certs.written.length} written, ${writtenServed} seen by clients, reloads ok ${reloadsOk}, last served ${lastServed === certs.written.at(-1) ? 'yes' : 'no'}` },
    { name: 'traffic flowed (SMTP and IMAP successes)', ok: smtpOk.length > 0 && imapOk.length > 0, detail: `${smtpOk.length} deliveries, ${imapOk.length} IMAP sessions` },
    { name: '/readyz 200 at the end (backends back)', ok: readyAtEnd, detail: String(readyAtEnd) },
    { name: 'no session left open at the end', ok: end.active === 0, detail: `${end.active} active` },
    { name: `descriptors back to baseline (+-${FD_TOLERANCE})`, ok: Math.abs(end.fds - base.fds) <= FD_TOLERANCE, detail: `${base.fds} -> ${end.fds}` },
    ...memoryChecks,
  ];

  // Graceful stop: SIGTERM, exit 0.
  stopping = true;
  child.kill('SIGTERM');
  for (const by = Date.now() + 40_000; !exited && Date.now() < by; ) await sleep(100);
  const stopped = exited as { code: number | null; signal: string | null } | null;
  checks.push({ name: 'SIGTERM: clean exit 0', ok: stopped?.code === 0, detail: JSON.stringify(stopped) });
  backends.smtp.kill();
  backends.imap.kill();
  attackerBackends.imap.kill();
  attackerBackends.pop3.kill();

  // ---- report -------------------------------------------------------------------------------

  const closed: Record<string, Record<string, number>> = {};
  for (const s of metrics.filter((x) => x.name === 'postern_connections_total')) (closed[s.labels.listener!] ??= {})[s.labels.reason!] = s.value;
  const reloads: Record<string, number> = {};
  for (const s of metrics.filter((x) => x.name === 'postern_reloads_total')) reloads[`${s.labels.trigger}/${s.labels.result}`] = s.value;
  const hostileByKind: Record<string, number> = {};
  for (const k of [...HOSTILE_KINDS, ...ATTACKER_KINDS]) hostileByKind[k] = tally.hostile.filter((h) => h.kind === k).length;

  const summary = {
    when: new Date().toISOString(),
    node: process.version,
    // soak: new sessions start for `requested` seconds; `untilLastEnded` adds the slow clients' tail.
    durationSeconds: { warmup: WARMUP, requested: SECONDS, untilLastEnded: Math.round(soakMs / 100) / 10, total: Math.round((Date.now() - t0) / 100) / 10 },
    countsInclude: 'warmup and soak phases',
    warmupCounts: warm,
    smtp: {
      deliveries: tally.deliveries.filter((d) => d.variant !== 'reset').length,
      ok: smtpOk.length,
      okByVariant: count(smtpOk, (d) => d.variant),
      temporaryFailed: smtpTemp.length,
      temporaryByKind: count(smtpTemp, (d) => d.kind),
      abortedByClient: tally.deliveries.filter((d) => d.result === 'aborted').length,
      lost,
      corrupted,
      duplicated,
      heldAfterTemporaryFailure: heldAfterTemp,
      duplicateWindow: dupWindow,
      partialAtBackend: partialHeld,
      fivexx: perm.length,
      hung: tally.deliveries.filter((d) => d.result === 'hung').length,
      tlsFailures: tally.deliveries.filter((d) => d.result === 'tls').length,
    },
    imap: {
      sessions: tally.imap.filter((s) => s.variant !== 'reset').length,
      ok: imapOk.length,
      okByVariant: count(imapOk, (s) => s.variant),
      failed: tally.imap.filter((s) => s.result !== 'ok' && s.variant !== 'reset').length,
      failedByKind: count(tally.imap.filter((s) => s.result !== 'ok' && s.variant !== 'reset'), (s) => s.kind),
      corrupted: imapCorrupt,
    },
    hostile: {
      total: tally.hostile.length,
      byKind: hostileByKind,
      handledAsRequired: tally.hostile.length - hostileBad.length,
      // Attackers that did not read: the most postern took from one of them, per kind (MB).
      maxUnreadMb: Object.fromEntries(ATTACKER_KINDS.flatMap((k) => {
        const xs = tally.hostile.filter((h) => h.kind === k && h.unread !== undefined).map((h) => h.unread!);
        return xs.length ? [[k, Math.round(Math.max(...xs) / 104857.6) / 10]] : [];
      })),
    },
    faults: {
      backendRestarts: tally.restarts,
      outageSeconds: Math.round(tally.outages.reduce((a, o) => a + (o.to - o.from), 0) / 100) / 10,
      certificateWrites: tally.certWrites,
      sighups: tally.sighups,
      distinctCertificatesServed: served.length,
    },
    postern: {
      pid,
      rssMb: { baseline: Number(mb(base.rssKb)), end: Number(mb(end.rssKb)), tolerance: RSS_TOLERANCE_MB, peakDuringSoak: Number(mb(peakRssKb)) },
      rssAfterForcedGcMb: base.rssAfterGcKb !== null && end.rssAfterGcKb !== null ? { baseline: Number(mb(base.rssAfterGcKb)), end: Number(mb(end.rssAfterGcKb)) } : null,
      v8HeapAfterForcedGcMb: base.heap && end.heap ? { baseline: base.heap, end: end.heap } : null,
      rssAfterForcedGcDuringSoak: gcTrace,
      fds: { baseline: base.fds, end: end.fds, tolerance: FD_TOLERANCE },
      closedByReason: closed,
      reloads,
      starttlsInjections: sum(metrics, 'postern_starttls_injections_total'),
      backendConnectFailures: sum(metrics, 'postern_backend_connect_failures_total'),
      handshakes: { ok: sum(metrics, 'postern_handshakes_total', { result: 'ok' }), failed: sum(metrics, 'postern_handshakes_total', { result: 'failed' }) },
      alerts: Object.fromEntries(metrics.filter((x) => x.name === 'postern_alerts_sent_total').map((s) => [`${s.labels.listener}/${s.labels.alert}`, s.value])),
    },
    checks,
    examples,
    passed: checks.every((c) => c.ok),
  };
  writeFileSync(join(RESULTS, 'latest.json'), `${JSON.stringify(summary, null, 2)}\n`);
  printReport(summary);
  rmSync(work, { recursive: true, force: true });
  return summary.passed ? 0 : 1;
}

function printReport(s: Record<string, any>): void {
  const rows: Array<[string, string]> = [];
  const add = (k: string, v: unknown) => rows.push([k, typeof v === 'string' ? v : JSON.stringify(v)]);
  add('duration', `${s.durationSeconds.requested} s soak (last session ended at ${s.durationSeconds.untilLastEnded} s) after a ${s.durationSeconds.warmup} s warmup; ${s.durationSeconds.total} s in all; counts cover warmup and soak`);
  add('SMTP deliveries', `${s.smtp.deliveries}: ${s.smtp.ok} ok ${JSON.stringify(s.smtp.okByVariant)}, ${s.smtp.temporaryFailed} temporary`);
  for (const [k, v] of Object.entries(s.smtp.temporaryByKind)) add(`  temporary ${k}`, String(v));
  add('SMTP lost / corrupted / duplicated', `${s.smtp.lost} / ${s.smtp.corrupted} / ${s.smtp.duplicated}`);
  add('SMTP 5xx / hung / TLS failures', `${s.smtp.fivexx} / ${s.smtp.hung} / ${s.smtp.tlsFailures}`);
  add('SMTP held after temp failure', `${s.smtp.heldAfterTemporaryFailure} (duplicate window: ${s.smtp.duplicateWindow})`);
  add('SMTP cut mid-DATA, not held', `${s.smtp.abortedByClient} client resets, ${s.smtp.partialAtBackend} partial at backend`);
  add('IMAP sessions', `${s.imap.sessions}: ${s.imap.ok} ok ${JSON.stringify(s.imap.okByVariant)}, ${s.imap.failed} failed`);
  for (const [k, v] of Object.entries(s.imap.failedByKind)) add(`  failed ${k}`, String(v));
  add('hostile connections', `${s.hostile.total} (${s.hostile.handledAsRequired} handled as required)`);
  for (const [k, v] of Object.entries(s.hostile.byKind)) add(`  ${k}`, `${v}${s.hostile.maxUnreadMb[k] !== undefined ? ` (at most ${s.hostile.maxUnreadMb[k]} MB taken from one while it did not read)` : ''}`);
  add('backend restarts', `smtp ${s.faults.backendRestarts.smtp}, imap ${s.faults.backendRestarts.imap} (${s.faults.outageSeconds} s down)`);
  add('certificate rewrites / SIGHUP', `${s.faults.certificateWrites} / ${s.faults.sighups}; ${s.faults.distinctCertificatesServed} distinct certificates served`);
  add('postern reloads', JSON.stringify(s.postern.reloads));
  add('postern RSS (MB)', `${s.postern.rssMb.baseline} -> ${s.postern.rssMb.end} after settling (tolerance +${s.postern.rssMb.tolerance}); peak ${s.postern.rssMb.peakDuringSoak} during the soak`);
  if (s.postern.rssAfterForcedGcMb) add('postern RSS after forced GC (MB)', `${s.postern.rssAfterForcedGcMb.baseline} -> ${s.postern.rssAfterForcedGcMb.end}`);
  if (s.postern.v8HeapAfterForcedGcMb) add('postern V8 heap used after GC (MB)', `${s.postern.v8HeapAfterForcedGcMb.baseline.heapUsed} -> ${s.postern.v8HeapAfterForcedGcMb.end.heapUsed}`);
  add('postern fds', `${s.postern.fds.baseline} -> ${s.postern.fds.end} (tolerance +-${s.postern.fds.tolerance})`);
  add('postern handshakes', `${s.postern.handshakes.ok} ok, ${s.postern.handshakes.failed} failed`);
  add('postern STARTTLS injections', String(s.postern.starttlsInjections));
  add('postern backend connect failures', String(s.postern.backendConnectFailures));
  for (const [l, reasons] of Object.entries(s.postern.closedByReason as Record<string, Record<string, number>>)) {
    add(`closed (${l})`, Object.entries(reasons).sort((a, b) => b[1] - a[1]).map(([r, n]) => `${r} ${n}`).join(', '));
  }
  const w = Math.max(...rows.map((r) => r[0].length));
  console.log('\npostern fault soak');
  console.log('-'.repeat(w + 60));
  for (const [k, v] of rows) console.log(`${k.padEnd(w)}  ${v}`);
  console.log('-'.repeat(w + 60));
  for (const c of s.checks as Array<{ name: string; ok: boolean; detail: string }>) console.log(`${c.ok ? 'PASS' : 'FAIL'}  ${c.name}: ${c.detail}`);
  if ((s.examples as string[]).length) console.log(`\nexamples:\n  ${(s.examples as string[]).join('\n  ')}`);
  console.log(`\n${s.passed ? 'soak passed' : 'SOAK FAILED'}; summary in soak/results/latest.json, postern's log in soak/results/postern-latest.log`);
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
