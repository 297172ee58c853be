// A socket-level fuzz target against the running daemon (issue 14, "Done when"). The compiled
// postern runs as one child process in front of scripted backends (fuzz/daemon-backends.ts)
// with five listeners: SMTP STARTTLS on a port-25 style listener (requireTls: false, so the
// plaintext handoff is reachable) and on a submission listener, IMAP and POP3 STARTTLS, and
// implicit TLS. C clients run structure-aware sessions generated from seeds
// (fuzz/daemon-sessions.ts) for N seconds, while it checks:
//   - the daemon keeps its pid and never logs internal_error or a fatal line;
//   - every connection the fuzzer made gets exactly one "connection closed" line whose
//     closeReason is one of src/errors.ts;
//   - nothing postern refuses reaches a backend (XCLIENT/XFORWARD, STARTTLS/STLS after TLS), as
//     the backends read it (they know when they are in DATA, a BDAT chunk, SASL, a literal);
//   - VmRSS, sampled every 200 ms, stays under baseline + the documented per-session bound
//     (256 KiB of buffers + 50 KB of TLS state) x the most sessions open at once + slack;
//   - a session ends within 1.5 s once its client and its backend connection are both gone;
//   - descriptors return to the baseline once every client is gone.
// A failure saves the run's seed, the offending sessions (their scripts, transcripts, summary
// lines and backend findings) and the daemon's last log lines under fuzz/crashes/daemon-<seed>.json
// and exits 1; --replay runs those sessions again against a fresh daemon.
//
//   node fuzz/daemon.ts [--seconds N] [--seed S] [--clients C] [--slack-mb M]
//                       [--data-end rfc|lf|both] [--level debug|info] [--replay FILE] [--bin PATH]
//
// --seconds: how long new sessions start (default 60; the last ones then finish, ~15 s at most).
// FUZZ_TRACE=1 prints each session as it starts and ends (to find one that hangs or kills the
// fuzzer itself); FUZZ_SLOWEST=1 lists the slowest sessions at the end.
// --clients: sessions at once (default 8). --data-end: how the SMTP backends read the end of
// DATA (default both: half RFC-strict, half like Postfix before 3.9; see daemon-backends.ts).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import http from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { stringify } from 'yaml';
import { CloseReason } from '../src/errors.ts';
import { buildOnce } from '../test/helpers/build.ts';
import { makePki } from '../test/helpers/certs.ts';
import { memoryAfterGc } from '../test/helpers/inspector.ts';
import { freePort, freePorts } from '../test/helpers/ports.ts';
import { startScriptedBackend, type ScriptedBackend, type Violation } from './daemon-backends.ts';
import { generate, runScript, sessionSeed, HOSTNAME, LISTENERS, type GenOptions, type ListenerName, type SessionRun, type SessionScript, type Step } from './daemon-sessions.ts';

const ROOT = join(import.meta.dirname, '..');
const CRASH_DIR = join(import.meta.dirname, 'crashes');

/** The documented per-session bound (README, issue 14): buffers, plus what OpenSSL and Node keep per TLS session. */
const SESSION_BUFFERS = 256 * 1024;
const SESSION_TLS = 50 * 1000;
const FD_TOLERANCE = 2;
/** How long a session may outlive both its client and its backend connection (log lines are batched up to 200 ms; LAST_WORDS is 2 s, but a gone client fails that write at once). */
const LINGER_MS = 1500;
/** Finished sessions that keep their transcripts (see Run.release). */
const RECENT = 400;

const { values: opts } = parseArgs({
  options: {
    seconds: { type: 'string', default: '60' },
    seed: { type: 'string' },
    clients: { type: 'string', default: '8' },
    'slack-mb': { type: 'string', default: '48' },
    'data-end': { type: 'string', default: 'both' },
    level: { type: 'string', default: 'debug' },
    replay: { type: 'string' },
    bin: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (opts.help) {
  console.log(readFileSync(new URL(import.meta.url), 'utf8').split('\n').filter((l) => l.startsWith('//')).map((l) => l.slice(3)).join('\n'));
  process.exit(0);
}
const SECONDS = Number(opts.seconds);
const CLIENTS = Number(opts.clients);
const SLACK = Number(opts['slack-mb']) * 1024 * 1024;
const SEED = opts.seed !== undefined ? Number(opts.seed) >>> 0 : (Date.now() ^ (process.pid << 16)) >>> 0;
const DATA_END = opts['data-end'] as GenOptions['dataEnd'];
/** --bin: another build's bin/postern.js (e.g. an older commit, to see what the fuzzer finds there). */
const BIN = opts.bin ? resolve(opts.bin) : join(ROOT, 'bin', 'postern.js');
if (!(SECONDS > 0) || !(CLIENTS >= 1) || !(SLACK >= 0) || !['rfc', 'lf', 'both'].includes(DATA_END) || !['debug', 'info'].includes(opts.level!)) {
  console.error('usage: node fuzz/daemon.ts [--seconds N] [--seed S] [--clients C] [--slack-mb M] [--data-end rfc|lf|both] [--level debug|info] [--replay FILE]');
  process.exit(2);
}

const REASONS = new Set<string>(Object.values(CloseReason));
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const say = (s: string) => process.stderr.write(`[fuzz:daemon ${new Date().toISOString().slice(11, 19)}] ${s}\n`);
const mb = (b: number) => (b / 1048576).toFixed(1);

// ---- the daemon -------------------------------------------------------------------------------

interface LogLine {
  level: string;
  msg: string;
  [k: string]: unknown;
}

interface Daemon {
  child: ChildProcess;
  pid: number;
  yaml: string;
  adminPort: number;
  inspectPort: number;
  ports: Record<ListenerName, number>;
  backends: Record<ListenerName, ScriptedBackend>;
  caPem: string;
  /** The last log lines (bounded). */
  tail: LogLine[];
  stderr: string[];
  exited: { code: number | null; signal: string | null } | null;
  onLine(fn: (l: LogLine) => void): void;
}

const PROTOCOL: Record<ListenerName, 'smtp' | 'imap' | 'pop3'> = { mx: 'smtp', submission: 'smtp', imap: 'imap', pop3: 'pop3', smtps: 'smtp' };

async function startDaemon(): Promise<Daemon> {
  if (!opts.bin) buildOnce();
  // A build from before timeouts.backendReply existed refuses the key.
  const schemaJs = readFileSync(join(dirname(BIN), '..', 'dist', 'config', 'schema.js'), 'utf8');
  const hasBackendReply = schemaJs.includes('backendReply');
  const hasRole = schemaJs.includes("'submission'");
  const pki = await makePki();
  const cert = await pki.issue('mail', { names: [HOSTNAME, 'example.org'] });
  const backends = {} as Record<ListenerName, ScriptedBackend>;
  const ports = {} as Record<ListenerName, number>;
  const picked = await freePorts(LISTENERS.length + 1);
  for (const [i, l] of LISTENERS.entries()) {
    // Behind implicit TLS postern pipes raw and refuses nothing: its backend does not check.
    backends[l] = await startScriptedBackend(l, PROTOCOL[l], l !== 'smtps');
    ports[l] = picked[i]!;
  }
  const adminPort = picked[LISTENERS.length]!;
  const timeouts = { starttls: '5s', handshake: '3s', idle: '10s', connect: '2s', ...(hasBackendReply ? { backendReply: '3s' } : {}) };
  const listener = (name: ListenerName, extra: Record<string, unknown>) => ({
    name,
    listen: `127.0.0.1:${ports[name]}`,
    protocol: PROTOCOL[name],
    hostname: HOSTNAME,
    timeouts,
    backend: { address: `127.0.0.1:${backends[name].port}`, proxyProtocol: 'v2' },
    ...extra,
  });
  const yaml = stringify({
    log: { level: opts.level },
    admin: { listen: `127.0.0.1:${adminPort}` },
    // Every fuzzer client comes from 127.0.0.1.
    limits: { maxConnectionsPerClient: 5000 },
    certificates: [{ cert: cert.cert, key: cert.key }],
    listeners: [
      // Builds from before the listener role refuse the key; both forms give what these
      // listeners have always had (sni fallback on both; plaintext allowed on mx only).
      listener('mx', hasRole ? { role: 'mx', tls: 'starttls' } : { tls: 'starttls', requireTls: false }),
      listener('submission', hasRole ? { role: 'submission', tls: 'starttls', sni: 'fallback' } : { tls: 'starttls', requireTls: true }),
      listener('imap', { tls: 'starttls' }),
      listener('pop3', { tls: 'starttls' }),
      listener('smtps', hasRole ? { role: 'submission', tls: 'implicit' } : { tls: 'implicit' }),
    ],
  });
  const file = join(pki.dir, 'postern.yaml');
  writeFileSync(file, yaml);
  // The inspector (loopback) lets the fuzzer force a full GC before it calls RSS over the bound.
  const inspectPort = await freePort();
  const child = spawn(process.execPath, [`--inspect=127.0.0.1:${inspectPort}`, BIN, 'run', '-c', file], { cwd: pki.dir, stdio: ['ignore', 'pipe', 'pipe'] });
  const d: Daemon = { child, pid: child.pid!, yaml, adminPort, inspectPort, ports, backends, caPem: pki.ca.certPem, tail: [], stderr: [], exited: null, onLine: () => {} };
  const listeners: Array<(l: LogLine) => void> = [];
  d.onLine = (fn) => void listeners.push(fn);
  let partial = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    partial += chunk.toString('utf8');
    let nl: number;
    while ((nl = partial.indexOf('\n')) >= 0) {
      const text = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      if (!text.trim()) continue;
      let l: LogLine;
      try {
        l = JSON.parse(text) as LogLine;
      } catch {
        l = { level: 'raw', msg: text };
      }
      d.tail.push(l);
      if (d.tail.length > 400) d.tail.splice(0, 100);
      for (const fn of listeners) fn(l);
    }
  });
  child.stderr!.on('data', (chunk: Buffer) => {
    d.stderr.push(chunk.toString('utf8'));
    if (d.stderr.length > 200) d.stderr.splice(0, 50);
  });
  child.once('exit', (code, signal) => (d.exited = { code, signal }));
  process.once('exit', () => {
    if (!d.exited) child.kill('SIGKILL');
  });
  // Ready: every listener and the admin endpoint have said so.
  const want = new Set<string>([...LISTENERS, 'admin']);
  d.onLine((l) => {
    if (l.msg === 'listening') want.delete(String(l.listener));
    if (l.msg === 'admin endpoint listening') want.delete('admin');
  });
  for (const by = Date.now() + 30_000; want.size > 0; await sleep(50)) {
    if (d.exited || Date.now() > by) throw new Error(`postern did not start (${JSON.stringify(d.exited)}); stderr:\n${d.stderr.join('')}\nlog:\n${d.tail.map((x) => JSON.stringify(x)).join('\n')}`);
  }
  return d;
}

/** The sampler thread: VmRSS and the descriptor count of `pid` every `everyMs`. */
const SAMPLER = `
const { parentPort, workerData } = require('node:worker_threads');
const { readFileSync, readdirSync } = require('node:fs');
setInterval(() => {
  try {
    const status = readFileSync('/proc/' + workerData.pid + '/status', 'utf8');
    const rss = Number(/VmRSS:\\s+(\\d+)/.exec(status)[1]) * 1024;
    parentPort.postMessage({ rss, fds: readdirSync('/proc/' + workerData.pid + '/fd').length });
  } catch {}
}, workerData.everyMs);
`;

function proc(pid: number): { rss: number; fds: number } | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    return { rss: Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN) * 1024, fds: readdirSync(`/proc/${pid}/fd`).length };
  } catch {
    return null;
  }
}

function activeSessions(adminPort: number): Promise<number | null> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port: adminPort, path: '/metrics', agent: false, timeout: 2000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => {
        let n = 0;
        for (const m of body.matchAll(/^postern_connections_active(?:\{[^}]*\})? (\S+)$/gm)) n += Number(m[1]);
        resolve(n);
      });
      res.on('error', () => resolve(null));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(null));
  });
}

/** A real ClientHello (Node's), captured once from a local socket. */
function captureHello(): Promise<Buffer> {
  return new Promise((resolve) => {
    const server = net.createServer((s) => {
      s.once('data', (d: Buffer) => {
        resolve(Buffer.from(d));
        s.destroy();
        server.close();
      });
    });
    server.listen(0, '127.0.0.1', () => {
      const c = tls.connect({ host: '127.0.0.1', port: (server.address() as net.AddressInfo).port, servername: HOSTNAME, rejectUnauthorized: false });
      c.on('error', () => {});
    });
  });
}

// ---- one run's bookkeeping --------------------------------------------------------------------

interface Tracked {
  script: SessionScript;
  run: SessionRun | null;
  /** "connection closed" lines matched to this connection. */
  summaries: LogLine[];
  /** The client's script has ended (its sockets are closed). */
  done: boolean;
  lingerChecked?: boolean;
}

interface Finding {
  invariant: string;
  /** Findings with the same signature are one bug found again (the report groups them). */
  signature: string;
  detail: string;
  sessions: number[];
}

class Run {
  readonly d: Daemon;
  readonly tracked = new Map<number, Tracked>();
  /** Connections waiting for their summary, by "listener:clientPort", oldest first. */
  private readonly waiting = new Map<string, Tracked[]>();
  readonly findings: Finding[] = [];
  readonly reasons = new Map<string, number>();
  readonly errorLines: LogLine[] = [];
  /** Daemon session id -> its log lines (kept for sessions with findings). */
  private readonly linesById = new Map<number, LogLine[]>();
  readonly inFlight = new Set<number>();
  unmatched: LogLine[] = [];
  rss = {
    base: 0,
    baseAfterGc: 0,
    max: 0,
    maxAt: 0,
    bound: 0,
    maxActive: 0,
    samples: 0,
    /** Samples over the bound that a forced GC brought back under it (heap garbage, not session memory). */
    overBeforeGc: 0,
    maxAfterGc: 0,
    endAfterGc: 0,
    over: null as null | { rss: number; afterGc: number; bound: number; sessions: number[] },
  };
  fds = { base: 0, end: 0, max: 0 };

  constructor(d: Daemon) {
    this.d = d;
    d.onLine((l) => this.line(l));
  }

  private line(l: LogLine) {
    const id = typeof l.id === 'number' ? l.id : null;
    if (id !== null) {
      const xs = this.linesById.get(id) ?? [];
      if (xs.length < 40) xs.push(l);
      this.linesById.set(id, xs);
    }
    if (l.level === 'fatal') this.find('no fatal log line', `${l.msg}: ${String(l.error ?? '').slice(0, 2000)}`, [...this.inFlight]);
    else if (l.reason === CloseReason.internalError && l.msg !== 'connection closed') {
      this.errorLines.push(l);
      // The summary line of this id names the connection; attributed there.
    } else if (l.level === 'error') this.errorLines.push(l);
    if (l.msg !== 'connection closed') return;
    const reason = String(l.closeReason);
    this.reasons.set(reason, (this.reasons.get(reason) ?? 0) + 1);
    const key = `${l.listener}:${l.clientPort}`;
    const q = this.waiting.get(key);
    const t = q?.shift();
    if (q && q.length === 0) this.waiting.delete(key);
    if (!t) {
      this.unmatched.push(l);
      return;
    }
    t.summaries.push(l);
    this.lingering(t);
    if (!REASONS.has(reason)) this.find('every session ends with a known reason', `closeReason ${JSON.stringify(reason)} is not in src/errors.ts`, [t.script.id]);
    if (reason === CloseReason.internalError) {
      const err = (id !== null ? this.linesById.get(id) : [])?.find((x) => x.msg !== 'connection closed' && x.reason === CloseReason.internalError);
      this.find('no session ends with internal_error', `${String(l.detail ?? '')}\n${String(err?.error ?? '')}`.slice(0, 4000), [t.script.id]);
    }
    this.release(t);
  }

  /**
   * Once its client and its backend connection are both gone, a session has nothing left to wait
   * for: its summary must follow within LINGER_MS. (Checked when the later of the summary and
   * the client's end arrives.)
   */
  lingering(t: Tracked) {
    const l = t.summaries[0];
    if (!l || !t.run || t.lingerChecked) return;
    const backendGone = this.d.backends[t.script.listener].stats.closedAt.get(t.script.id);
    if (backendGone === undefined) return;
    t.lingerChecked = true;
    const bothGone = Math.max(t.run.endedAt, backendGone);
    const late = Date.parse(String(l.time)) - bothGone;
    if (late > LINGER_MS) this.find('a session ends once its client and backend are gone', `${t.script.listener}: "connection closed" (${String(l.closeReason)}) ${(late / 1000).toFixed(1)} s after the client and the backend had both closed`, [t.script.id], `lingering: ${t.script.listener} ${String(l.closeReason)}`);
  }

  /**
   * Finished sessions keep their transcript and log lines a while (a backend finding or a late
   * log line may still name them); past the last RECENT, a clean one keeps only its script.
   */
  private readonly recent: Tracked[] = [];
  private release(t: Tracked) {
    if (!t.done || t.summaries.length === 0 || this.recent.includes(t)) return;
    this.recent.push(t);
    while (this.recent.length > RECENT) {
      const old = this.recent.shift()!;
      if (this.findings.some((f) => f.sessions.includes(old.script.id))) continue;
      old.run = old.run ? { ...old.run, transcript: [] } : null;
      const id = old.summaries[0]?.id;
      if (typeof id === 'number') this.linesById.delete(id);
    }
  }

  find(invariant: string, detail: string, sessions: number[], signature = `${invariant}: ${detail.split('\n')[0]!.replace(/\d+/g, 'N').slice(0, 120)}`) {
    const again = this.findings.filter((f) => f.signature === signature).length;
    this.signatures.set(signature, (this.signatures.get(signature) ?? 0) + 1);
    // Each kind is kept a few times (its sessions go into the crash file), then only counted.
    if (again < 3 && this.findings.length < 60) this.findings.push({ invariant, signature, detail, sessions });
    if (again === 0) say(`FINDING: ${invariant}: ${detail.split('\n')[0]} (session ${sessions.slice(0, 5).join(', ')})`);
  }
  /** How often each kind of finding came up. */
  readonly signatures = new Map<string, number>();

  async session(script: SessionScript): Promise<SessionRun> {
    const t: Tracked = { script, run: null, summaries: [], done: false };
    this.tracked.set(script.id, t);
    this.inFlight.add(script.id);
    const backend = this.d.backends[script.listener];
    const run = await runScript(script, {
      port: this.d.ports[script.listener],
      caPem: this.d.caPem,
      onConnect: (localPort) => {
        backend.plans.set(localPort, { ...script.backend, session: script.id });
        const key = `${script.listener}:${localPort}`;
        const q = this.waiting.get(key) ?? [];
        q.push(t);
        this.waiting.set(key, q);
      },
    });
    this.inFlight.delete(script.id);
    t.run = run;
    t.done = true;
    this.lingering(t);
    if (run.error && run.connected) say(`session ${script.id}: client error ${run.error.split('\n')[0]}`);
    if (!run.connected) this.tracked.delete(script.id);
    this.release(t);
    return run;
  }

  /** Backend findings since the last call. */
  private readonly seen = new Map<ScriptedBackend, number>();
  collectViolations() {
    for (const b of Object.values(this.d.backends)) {
      const vs: Violation[] = b.stats.violations;
      for (const v of vs.slice(this.seen.get(b) ?? 0)) this.find('nothing postern refuses reaches a backend', `${v.listener}: ${v.why}: ${v.line}`, [v.session], `backend ${v.listener}: ${v.why}`);
      this.seen.set(b, vs.length);
    }
  }

  /** Connections still without a summary line. */
  missing(): Tracked[] {
    return [...this.tracked.values()].filter((t) => t.run?.connected && t.summaries.length === 0);
  }

  sessionsOf(ids: number[]) {
    return ids.map((id) => {
      const t = this.tracked.get(id);
      if (!t) return { id, missing: true };
      const sid = t.summaries[0]?.id;
      return {
        id,
        script: t.script,
        run: t.run ? { localPort: t.run.localPort, bytesOut: t.run.bytesOut, bytesIn: t.run.bytesIn, closedByPeer: t.run.closedByPeer, tlsOk: t.run.tlsOk, ms: t.run.endedAt - t.run.startedAt, error: t.run.error, transcript: t.run.transcript } : null,
        summaries: t.summaries,
        log: typeof sid === 'number' ? (this.linesById.get(sid) ?? []) : [],
      };
    });
  }
}

// ---- the run ----------------------------------------------------------------------------------

/** A plain good session per listener (warmup, and proof that the setup works). */
function goodScript(id: number, l: ListenerName): SessionScript {
  const smtp = '(?:^|\\n)\\d{3} [^\\n]*\\n';
  const pop = '(?:^|\\n)[+-][^\\n]*\\n';
  const tag = (t: string) => `(?:^|\\n)${t} [^\\n]*\\n`;
  const tlsStep: Step = { op: 'tls', sni: HOSTNAME, ms: 4000 };
  const mail: Step[] = [
    { op: 'send', data: ['MAIL FROM:<a@fuzz.test>\r\nRCPT TO:<b@example.org>\r\n'] }, { op: 'wait', re: smtp, ms: 3000 }, { op: 'wait', re: smtp, ms: 3000 },
    { op: 'send', data: ['DATA\r\n'] }, { op: 'wait', re: smtp, ms: 3000 },
    { op: 'send', data: ['Subject: good\r\n\r\n..a dot\r\nhello\r\n.\r\n'] }, { op: 'wait', re: smtp, ms: 3000 },
    { op: 'send', data: ['QUIT\r\n'] }, { op: 'wait', re: smtp, ms: 3000 },
  ];
  const steps: Record<ListenerName, Step[]> = {
    mx: [{ op: 'wait', re: smtp, ms: 3000 }, { op: 'send', data: ['EHLO good.fuzz\r\n'] }, { op: 'wait', re: smtp, ms: 3000 }, ...mail],
    submission: [{ op: 'wait', re: smtp, ms: 3000 }, { op: 'send', data: ['EHLO good.fuzz\r\n'] }, { op: 'wait', re: smtp, ms: 3000 }, { op: 'send', data: ['STARTTLS\r\n'] }, { op: 'wait', re: smtp, ms: 3000 }, tlsStep, { op: 'send', data: ['EHLO good.fuzz\r\n'] }, { op: 'wait', re: smtp, ms: 3000 }, ...mail],
    imap: [{ op: 'wait', re: '^\\* OK[^\\n]*\\n', ms: 3000 }, { op: 'send', data: ['a STARTTLS\r\n'] }, { op: 'wait', re: tag('a'), ms: 3000 }, tlsStep, { op: 'send', data: ['b LOGIN {4}\r\n'] }, { op: 'wait', re: '^\\+[^\\n]*\\n', ms: 3000 }, { op: 'send', data: ['fuzz secret\r\n'] }, { op: 'wait', re: tag('b'), ms: 3000 }, { op: 'send', data: ['c LOGOUT\r\n'] }, { op: 'wait', re: tag('c'), ms: 3000 }],
    pop3: [{ op: 'wait', re: pop, ms: 3000 }, { op: 'send', data: ['STLS\r\n'] }, { op: 'wait', re: pop, ms: 3000 }, tlsStep, { op: 'send', data: ['USER fuzz\r\nPASS secret\r\n'] }, { op: 'wait', re: pop, ms: 3000 }, { op: 'wait', re: pop, ms: 3000 }, { op: 'send', data: ['RETR 1\r\nQUIT\r\n'] }, { op: 'wait', re: '(?:^|\\n)\\+OK Logging out[^\\n]*\\n', ms: 3000 }],
    smtps: [tlsStep, { op: 'wait', re: smtp, ms: 3000 }, { op: 'send', data: ['EHLO good.fuzz\r\n'] }, { op: 'wait', re: smtp, ms: 3000 }, ...mail],
  };
  const backend = { greetDelayMs: 0, greeting: 'plain' as const, replyDelayMs: 0, stallAfter: null, stallMs: 0, closeAfter: null, closeReset: false, dataReply: '354' as const, dataEnd: 'rfc' as const, literalReply: '+' as const, loginOk: true };
  return { id, seed: 0, listener: l, kind: 'good', backend, steps: steps[l] };
}

/** A good session must end with the goodbye it asked for; anything else means the setup is broken. */
function goodEnded(run: SessionRun): boolean {
  const last = run.transcript.filter((e) => e[1] === 'in').map((e) => e[2]).join('');
  return run.connected && run.tlsOk !== false && /(221 2\.0\.0|OK Logout|\+OK Logging out)/.test(last);
}

/** VmRSS right after three forced full GCs (through the inspector), or null when that failed. */
async function rssAfterGc(d: Daemon): Promise<number | null> {
  try {
    await memoryAfterGc(d.inspectPort);
    return proc(d.pid)?.rss ?? null;
  } catch {
    return null;
  }
}

/** Waits until postern holds no session, then takes the lowest RSS and descriptor count over a quiet moment. */
async function settle(d: Daemon, ms = 2500): Promise<{ rss: number; fds: number; active: number | null }> {
  let active: number | null = null;
  for (const by = Date.now() + 30_000; Date.now() < by; await sleep(200)) {
    active = await activeSessions(d.adminPort);
    if (active === 0) break;
  }
  let rss = Infinity;
  let fds = Infinity;
  for (const by = Date.now() + ms; Date.now() < by; await sleep(100)) {
    const p = proc(d.pid);
    if (!p) break;
    rss = Math.min(rss, p.rss);
    fds = Math.min(fds, p.fds);
  }
  return { rss, fds, active };
}

function saveCrash(r: Run, seed: number, extra: Record<string, unknown>): string {
  mkdirSync(CRASH_DIR, { recursive: true });
  // A replay never overwrites the file it replays.
  const file = join(CRASH_DIR, `daemon-${seed}${opts.replay ? '-replay' : ''}.json`);
  const ids = [...new Set(r.findings.flatMap((f) => f.sessions))].slice(0, 40);
  const body = {
    seed,
    when: new Date().toISOString(),
    replay: `npm run fuzz:daemon -- --replay ${file}`,
    findings: r.findings,
    counts: Object.fromEntries(r.signatures),
    ...extra,
    config: r.d.yaml,
    sessions: r.sessionsOf(ids),
    daemon: { pid: r.d.pid, exited: r.d.exited, stderr: r.d.stderr.join('').slice(-8000), logTail: r.d.tail.slice(-80) },
  };
  writeFileSync(file, `${JSON.stringify(body, null, 1)}\n`);
  return file;
}

/** Nothing here may hold CI: the whole run ends by this long after the sessions stop starting. */
const WATCHDOG_MS = 150_000;

async function main(): Promise<number> {
  const replay = opts.replay ? (JSON.parse(readFileSync(opts.replay, 'utf8')) as { seed: number; sessions: Array<{ script?: SessionScript }> }) : null;
  const seed = replay ? replay.seed : SEED;
  const started = Date.now();
  const d = await startDaemon();
  const r = new Run(d);
  const hello = await captureHello();
  const genOpts: GenOptions = { dataEnd: DATA_END, hello };
  say(`postern pid ${d.pid}: ${LISTENERS.map((l) => `${l} ${d.ports[l]}`).join(', ')}, admin ${d.adminPort}; seed ${seed}${replay ? ` (replaying ${opts.replay})` : ''}`);

  // Warmup: good sessions on every path, so that the baseline is a warm process.
  let id = 1_000_000;
  for (let round = 0; round < 3; round++) {
    const runs = await Promise.all(LISTENERS.map((l) => r.session(goodScript(id++, l))));
    const bad = runs.filter((x) => !goodEnded(x));
    if (bad.length > 0) {
      console.error(`fuzz:daemon: a good session failed, the setup is broken:\n${bad.map((b) => `${b.script.listener}: ${JSON.stringify(b.transcript).slice(0, 2000)}`).join('\n')}`);
      return 2;
    }
  }
  const base = await settle(d);
  r.rss.base = base.rss;
  r.rss.baseAfterGc = (await rssAfterGc(d)) ?? 0;
  r.fds.base = base.fds;
  say(`baseline: RSS ${mb(base.rss)} MB (${mb(r.rss.baseAfterGc)} MB after a forced GC), ${base.fds} descriptors`);

  // Monitors: RSS and descriptors every 200 ms, read in a worker thread so that a busy fuzzer
  // (megabytes of answers to a flood) never delays a sample; open sessions every 500 ms.
  let active = 0;
  const perSession = SESSION_BUFFERS + SESSION_TLS;
  const sampler = new Worker(SAMPLER, { eval: true, workerData: { pid: d.pid, everyMs: 200 } });
  sampler.unref();
  sampler.on('message', (p: { rss: number; fds: number }) => {
    if (d.exited) return;
    r.rss.samples++;
    r.fds.max = Math.max(r.fds.max, p.fds);
    // Sessions open at once: postern's own gauge, and never fewer than the fuzzer's clients in flight.
    r.rss.maxActive = Math.max(r.rss.maxActive, active, r.inFlight.size);
    r.rss.bound = base.rss + r.rss.maxActive * perSession + SLACK;
    if (p.rss > r.rss.max) {
      r.rss.max = p.rss;
      r.rss.maxAt = Date.now() - started;
    }
    if (p.rss > r.rss.bound && !r.rss.over && !confirming) {
      // Over the bound: a forced full GC first (V8 lets its heap grow under load); still over
      // after it, the memory is held by sessions.
      confirming = true;
      const sessionsNow = [...r.inFlight];
      const bound = r.rss.bound;
      void rssAfterGc(d).then((after) => {
        confirming = false;
        if (after === null) return;
        r.rss.maxAfterGc = Math.max(r.rss.maxAfterGc, after);
        if (after <= bound) {
          r.rss.overBeforeGc++;
          return;
        }
        r.rss.over = { rss: p.rss, afterGc: after, bound, sessions: sessionsNow };
        r.find('RSS stays bounded', `VmRSS ${mb(p.rss)} MB, ${mb(after)} MB after a forced GC, over the bound ${mb(bound)} MB (baseline ${mb(base.rss)} + ${r.rss.maxActive} sessions x ${(perSession / 1024).toFixed(0)} KiB + ${mb(SLACK)} slack)`, sessionsNow);
      });
    }
  });
  let confirming = false;
  const gauge = setInterval(() => {
    void activeSessions(d.adminPort).then((n) => {
      if (n !== null) active = n;
    });
  }, 500);
  let died = false;
  d.child.once('exit', (code, signal) => {
    died = true;
    r.find('the daemon stays up (same pid)', `postern exited: code ${code}, signal ${signal}\n${d.stderr.join('').slice(-4000)}`, [...r.inFlight]);
  });

  // The sessions.
  let index = 0;
  let sessions = 0;
  const scripts: SessionScript[] = replay ? replay.sessions.flatMap((s) => (s.script ? [s.script] : [])) : [];
  const until = started + SECONDS * 1000;
  const watchdog = setTimeout(() => {
    console.error(`fuzz:daemon: still running ${WATCHDOG_MS / 1000} s after the last session should have started (sessions in flight: ${[...r.inFlight].join(', ')}); giving up`);
    saveCrash(r, seed, { watchdog: true });
    d.child.kill('SIGKILL');
    process.exit(1);
  }, SECONDS * 1000 + WATCHDOG_MS);
  watchdog.unref();
  const progress = setInterval(() => {
    const p = proc(d.pid);
    say(`${Math.round((Date.now() - started) / 1000)} s: ${sessions} sessions, ${r.findings.length} findings; postern RSS ${p ? mb(p.rss) : '?'} MB, ${p?.fds ?? '?'} fds, ${active} open`);
  }, 10_000);
  const violations = setInterval(() => r.collectViolations(), 250);
  if (replay) {
    await Promise.all(scripts.map(async (s) => {
      await r.session(s);
      sessions++;
    }));
  } else {
    const loop = async () => {
      while (Date.now() < until && !died) {
        const i = index++;
        const s = generate(i, sessionSeed(seed, i), genOpts);
        if (process.env.FUZZ_TRACE) writeSync(2, `start ${s.id} ${s.listener} ${s.kind}\n`);
        await r.session(s);
        if (process.env.FUZZ_TRACE) writeSync(2, `end ${s.id}\n`);
        sessions++;
      }
    };
    await Promise.all(Array.from({ length: CLIENTS }, loop));
  }
  clearInterval(progress);
  const fuzzMs = Date.now() - started;
  say(`${sessions} sessions done in ${(fuzzMs / 1000).toFixed(1)} s; waiting for the last summaries`);

  // Every connection's summary line, then the daemon idle and its descriptors back.
  if (!died) {
    for (const by = Date.now() + 20_000; Date.now() < by && r.missing().length > 0; ) await sleep(200);
  }
  const end = died ? { rss: 0, fds: 0, active: null } : await settle(d);
  await sampler.terminate();
  clearInterval(gauge);
  clearInterval(violations);
  r.collectViolations();
  r.fds.end = end.fds;
  if (!died) r.rss.endAfterGc = (await rssAfterGc(d)) ?? 0;
  if (!died) {
    for (const t of r.missing()) r.find('every session ends with a reason', `no "connection closed" line for ${t.script.listener} client port ${t.run!.localPort}`, [t.script.id]);
    for (const t of r.tracked.values()) {
      if (t.summaries.length > 1) r.find('exactly one summary per connection', `${t.summaries.length} summary lines`, [t.script.id]);
    }
    if (r.unmatched.length > 0) r.find('exactly one summary per connection', `${r.unmatched.length} summary line(s) for no connection of the fuzzer: ${JSON.stringify(r.unmatched.slice(0, 3))}`, []);
    if (end.fds > base.fds + FD_TOLERANCE) {
      // Slow closes (last words to a client that does not read) get a little longer.
      let now = end.fds;
      for (const by = Date.now() + 10_000; Date.now() < by && now > base.fds + FD_TOLERANCE; await sleep(250)) now = proc(d.pid)?.fds ?? now;
      r.fds.end = now;
      if (now > base.fds + FD_TOLERANCE) r.find('descriptors return to the baseline', `${base.fds} -> ${now} with no client connected (${end.active} sessions open)`, []);
    }
    for (const l of r.errorLines) {
      if (l.reason !== CloseReason.internalError) r.find('no error log line', JSON.stringify(l).slice(0, 1000), []);
    }
  }

  // The report.
  const byListener: Record<string, number> = {};
  for (const t of r.tracked.values()) if (t.script.kind !== 'good') byListener[t.script.listener] = (byListener[t.script.listener] ?? 0) + 1;
  const reasons = [...r.reasons.entries()].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ');
  const backendStats = LISTENERS.map((l) => `${l} ${d.backends[l].stats.proxied}/${d.backends[l].stats.commands}`).join(', ');
  console.log(`\nfuzz:daemon seed ${seed}: ${sessions} sessions in ${(fuzzMs / 1000).toFixed(1)} s (${replay ? 'replayed together' : `${CLIENTS} at once`}; ${JSON.stringify(byListener)})`);
  const runs = [...r.tracked.values()].flatMap((t) => (t.run && t.script.kind !== 'good' ? [t.run] : []));
  const durations = runs.map((x) => x.endedAt - x.startedAt).sort((a, b) => a - b);
  const q = (p: number) => ((durations[Math.min(durations.length - 1, Math.floor(p * durations.length))] ?? 0) / 1000).toFixed(1);
  const missed = runs.reduce((a, x) => a + x.waitMsMissed, 0);
  console.log(`  session length: median ${q(0.5)} s, p90 ${q(0.9)} s, max ${q(1)} s; ${(missed / 1000).toFixed(0)} s waiting for replies that did not come; TLS handshakes ${runs.filter((x) => x.tlsOk).length} ok, ${runs.filter((x) => x.tlsOk === false).length} failed`);
  console.log(`  closed by reason: ${reasons}`);
  if (process.env.FUZZ_SLOWEST) for (const x of runs.sort((a, b) => b.endedAt - b.startedAt - (a.endedAt - a.startedAt)).slice(0, 8)) console.log(`    slow: ${((x.endedAt - x.startedAt) / 1000).toFixed(1)} s ${x.script.listener} ${x.script.kind} missed ${x.waitMsMissed} ms: ${JSON.stringify(x.transcript.filter((e) => e[1] === 'ev')).slice(0, 400)}`);
  console.log(`  backends (proxied connections/commands): ${backendStats}`);
  console.log(`  postern RSS: baseline ${mb(r.rss.base)} MB, max ${mb(r.rss.max)} MB at ${(r.rss.maxAt / 1000).toFixed(1)} s (bound ${mb(r.rss.bound)} MB: ${r.rss.maxActive} sessions at most x ${(perSession / 1024).toFixed(0)} KiB + ${mb(SLACK)} MB slack), end ${mb(end.rss)} MB; ${r.rss.samples} samples`);
  console.log(`  postern RSS after a forced GC: baseline ${mb(r.rss.baseAfterGc)} MB, end ${mb(r.rss.endAfterGc)} MB${r.rss.overBeforeGc > 0 ? `; ${r.rss.overBeforeGc} time(s) over the bound before a GC, max ${mb(r.rss.maxAfterGc)} MB after it` : ''}`);
  console.log(`  postern descriptors: baseline ${r.fds.base}, max ${r.fds.max}, end ${r.fds.end}`);
  const took = ((Date.now() - started) / 1000).toFixed(1);
  if (r.findings.length === 0) {
    console.log(`  0 findings; ${took} s in all`);
    d.child.kill('SIGTERM');
    await Promise.all(Object.values(d.backends).map((b) => b.close()));
    return 0;
  }
  const file = saveCrash(r, seed, { rss: r.rss, fds: r.fds });
  console.log(`  FINDINGS (${took} s): ${r.signatures.size} kind(s)`);
  for (const [sig, n] of r.signatures) {
    const f = r.findings.find((x) => x.signature === sig)!;
    console.log(`   - ${n}x ${f.invariant}: ${f.detail.split('\n')[0]?.slice(0, 300)} [session ${f.sessions.slice(0, 6).join(', ')}${f.sessions.length > 6 ? ', ...' : ''}]`);
    // The first session's script, so that a CI log alone is enough to replay it.
    const t = f.sessions.length === 1 ? r.tracked.get(f.sessions[0]!) : undefined;
    if (t) console.log(`     script: ${JSON.stringify(t.script).slice(0, 1500)}`);
  }
  console.log(`  saved to ${file}\n  replay: npm run fuzz:daemon -- --replay ${file}`);
  d.child.kill('SIGKILL');
  await Promise.all(Object.values(d.backends).map((b) => b.close()));
  return 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(2);
  },
);

