// Harness for the hostile tests (threats.md, issue 7): the real compiled daemon in a child process
// (`node bin/postern.js run -c <yaml>`), as an admin runs it, with
//   - its JSON log lines (stdout) and stderr collected, and waits for a line by msg/closeReason;
//   - its /metrics read from the admin endpoint and parsed (counter value by name + labels);
//   - its open descriptors counted from /proc/<pid>/fd, so a test can say "back to baseline";
//   - recording backends (test/helpers/backend.ts for implicit TLS, a small SMTP/IMAP/POP3 speaker
//     with the same RecordingBackend interface for STARTTLS listeners) so a test can say exactly
//     what reached the backend, and that nothing did;
//   - goodClient(): a full TLS session with SNI and a round trip through postern, to prove it still
//     serves after each hostile case.
//
// Typical use:
//   beforeAll(() => { buildOnce(); pki = await makePki(); ... });
//   afterAll(stopAll);
//   const d = await spawnDaemon({ dir: pki.dir, certs: [mail], listeners: [{ name: 'smtp', protocol: 'smtp', tls: 'starttls' }] });
//   const base = await d.settledFds();
//   ... hostile client ...
//   expect(await d.summaryFor(localPort)).toMatchObject({ closeReason: 'starttls_injection' });
//   expect(await d.metric('postern_starttls_injections_total', { listener: 'smtp' })).toBe(1);
//   await goodClient(d, 'smtp', pki);
//   expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import http from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import { randomUUID } from 'node:crypto';
import { onTestFinished } from 'vitest';
import { stringify } from 'yaml';
import { startBackend, type BackendConnection, type RecordingBackend } from '../helpers/backend.ts';
import { listenerObject, type ListenerSpec } from '../helpers/config-yaml.ts';
import { freePort } from '../helpers/ports.ts';
import { decodeProxyHeader } from '../../src/backend/proxy-decode.ts';
import type { TestPki } from '../helpers/certs.ts';
import { readStream, startTls, type StreamReader } from '../e2e/harness/streams.ts';

export const ROOT = join(import.meta.dirname, '..', '..');
export const BIN = join(ROOT, 'bin', 'postern.js');

export { readStream, startTls, type StreamReader };

// ---------------------------------------------------------------------------------------------
// Build

export { buildOnce } from '../helpers/build.ts';

/** `postern <args>` to completion (startup failures, `check`): exit status, stdout, stderr. */
export function runCli(args: string[], cwd: string, opts: { timeoutMs?: number; wrapper?: string[] } = {}): { status: number | null; stdout: string; stderr: string } {
  const [cmd, ...pre] = opts.wrapper ?? [];
  const r = cmd
    ? spawnSync(cmd, [...pre, process.execPath, BIN, ...args], { cwd, encoding: 'utf8', timeout: opts.timeoutMs ?? 20_000 })
    : spawnSync(process.execPath, [BIN, ...args], { cwd, encoding: 'utf8', timeout: opts.timeoutMs ?? 20_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

// ---------------------------------------------------------------------------------------------
// Recording backends

export type MailProtocol = 'smtp' | 'imap' | 'pop3';

/**
 * A recording backend that speaks just enough SMTP, IMAP or POP3 for postern's capability probe
 * and after-TLS filters: greets, announces STARTTLS and AUTH (so tests can see postern remove
 * them), answers `NOOP <token>` with the token, and records every byte like startBackend does.
 *   SMTP: EHLO -> 250-backend.test / 250-PIPELINING / 250-STARTTLS / 250-AUTH PLAIN / 250 8BITMIME;
 *         MAIL before EHLO/HELO on this connection -> "503 5.5.1 EHLO first";
 *         NOOP x -> "250 2.0.0 OK x"; MAIL/RCPT/RSET/HELO -> 250; DATA -> 354 ... "250 2.0.0 queued"; QUIT -> 221.
 *   IMAP: "* OK backend ready"; t CAPABILITY -> "* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN" + "t OK";
 *         t NOOP x -> "t OK x"; t LOGOUT -> "* BYE" + "t OK"; else "t BAD".
 *   POP3: "+OK backend ready"; CAPA -> +OK / STLS / USER / SASL PLAIN / .; NOOP x -> "+OK x"; QUIT -> "+OK bye".
 */
export async function startMailBackend(protocol: MailProtocol, opts: { proxy?: boolean } = {}): Promise<RecordingBackend> {
  const expectHeader = opts.proxy ?? true;
  const connections: BackendConnection[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    let resolveClosed!: () => void;
    const conn: BackendConnection = { socket, header: null, headerBytes: null, data: Buffer.alloc(0), ended: false, closed: new Promise((r) => (resolveClosed = r)) };
    connections.push(conn);
    let pre = Buffer.alloc(0);
    let headerDone = !expectHeader;
    let pending = '';
    let inData = false;
    let helo = false; // SMTP: MAIL needs an EHLO/HELO on this connection (RFC 5321 section 4.1.4)
    const say = (s: string) => {
      if (!socket.destroyed && socket.writable) socket.write(s);
    };
    const greet = () => say(protocol === 'smtp' ? '220 backend.test ESMTP\r\n' : protocol === 'imap' ? '* OK backend ready\r\n' : '+OK backend ready\r\n');
    const answer = (line: string) => {
      if (protocol === 'smtp') {
        if (inData) {
          if (line === '.') {
            inData = false;
            say('250 2.0.0 queued\r\n');
          }
          return;
        }
        const [verb = '', ...rest] = line.split(' ');
        switch (verb.toUpperCase()) {
          case 'EHLO':
            helo = true;
            return say('250-backend.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n');
          case 'HELO':
            helo = true;
            return say('250 backend.test\r\n');
          case 'NOOP':
            return say(`250 2.0.0 OK ${rest.join(' ')}\r\n`);
          case 'MAIL':
            return say(helo ? '250 2.0.0 OK\r\n' : '503 5.5.1 EHLO first\r\n');
          case 'RCPT':
          case 'RSET':
            return say('250 2.0.0 OK\r\n');
          case 'DATA':
            inData = true;
            return say('354 go ahead\r\n');
          case 'QUIT':
            say('221 2.0.0 bye\r\n');
            return void socket.end();
          default:
            return say('500 5.5.2 unknown\r\n');
        }
      }
      if (protocol === 'imap') {
        const [tag = '*', verb = '', ...rest] = line.split(' ');
        switch (verb.toUpperCase()) {
          case 'CAPABILITY':
            return say(`* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\n${tag} OK done\r\n`);
          case 'NOOP':
            return say(`${tag} OK ${rest.join(' ')}\r\n`);
          case 'LOGOUT':
            say(`* BYE bye\r\n${tag} OK done\r\n`);
            return void socket.end();
          default:
            return say(`${tag} BAD unknown\r\n`);
        }
      }
      const [verb = '', ...rest] = line.split(' ');
      switch (verb.toUpperCase()) {
        case 'CAPA':
          return say('+OK\r\nSTLS\r\nUSER\r\nSASL PLAIN\r\n.\r\n');
        case 'NOOP':
          return say(`+OK ${rest.join(' ')}\r\n`);
        case 'USER':
        case 'PASS':
          return say('+OK\r\n');
        case 'QUIT':
          say('+OK bye\r\n');
          return void socket.end();
        default:
          return say('-ERR unknown\r\n');
      }
    };
    const feed = (chunk: Buffer) => {
      conn.data = Buffer.concat([conn.data, chunk]);
      pending += chunk.toString('latin1');
      for (let lf = pending.indexOf('\n'); lf >= 0; lf = pending.indexOf('\n')) {
        const line = pending.slice(0, lf).replace(/\r$/, '');
        pending = pending.slice(lf + 1);
        answer(line);
      }
    };
    if (headerDone) greet();
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => {
      if (!headerDone) {
        pre = Buffer.concat([pre, chunk]);
        const d = decodeProxyHeader(pre);
        if (d.kind === 'need-more') return;
        headerDone = true;
        if (d.kind === 'header') {
          conn.header = d.header;
          conn.headerBytes = Buffer.from(pre.subarray(0, d.header.length));
          chunk = pre.subarray(d.header.length);
        } else chunk = pre;
        greet();
      }
      if (chunk.length > 0) feed(chunk);
    });
    socket.on('end', () => {
      conn.ended = true;
      socket.end();
    });
    socket.on('close', () => resolveClosed());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    connections,
    async waitForData(bytes, index = 0, timeoutMs = 5000) {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const c = connections[index];
        if (c && c.data.length >= bytes) return c;
        if (Date.now() > until) throw new Error(`backend connection ${index} did not receive ${bytes} bytes`);
        await sleep(10);
      }
    },
    async close() {
      for (const c of connections) c.socket.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

/**
 * The backend connections that carry this client: the PROXY header names the client's port.
 * (Capability probes and health checks also connect, with postern's own port in their header.)
 */
export function sessionsOf(backend: RecordingBackend, clientPort: number): BackendConnection[] {
  return backend.connections.filter((c) => c.header?.source?.port === clientPort);
}

/** Every byte any connection delivered to the backend after its header (probes included). */
export function allBackendBytes(backend: RecordingBackend): string {
  return Buffer.concat(backend.connections.map((c) => c.data)).toString('latin1');
}

// ---------------------------------------------------------------------------------------------
// The daemon

export interface LogLine {
  level: string;
  msg: string;
  [k: string]: unknown;
}

/** What an echo backend behind an implicit mail listener says first. */
export const BACKEND_GREETING: Record<MailProtocol, string> = {
  smtp: '220 backend.test ESMTP\r\n',
  imap: '* OK backend ready\r\n',
  pop3: '+OK backend ready\r\n',
};

export type BackendKind = 'echo' | 'sink' | 'smtp-echo' | MailProtocol;

/** One listener: config-yaml's ListenerSpec, with the port and backend filled in when absent. */
export type HostileListener = Omit<ListenerSpec, 'port' | 'backendPort'> & {
  name: string;
  port?: number;
  /** An existing backend port; otherwise a recording backend of `backendKind` is started. */
  backendPort?: number;
  /**
   * Default: the protocol's mail backend for STARTTLS listeners, 'echo' for implicit TLS (which
   * first sends BACKEND_GREETING on an smtp/imap/pop3 listener).
   */
  backendKind?: BackendKind;
  /** Further listener keys as YAML (requireTls, acceptProxyProtocol, limits, timeouts.starttls...). */
  extra?: Record<string, unknown>;
};

export interface DaemonOptions {
  /** Folder for the YAML file; certificate paths are absolute or relative to it. */
  dir: string;
  certs: Array<Record<string, string>>;
  listeners: HostileListener[];
  /** Further top-level keys (limits, shutdown...). */
  top?: Record<string, unknown>;
  level?: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';
  /** Ms to wait for every listener and the admin endpoint to be up. */
  startTimeoutMs?: number;
}

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface SpawnedPostern {
  child: ChildProcess;
  pid: number;
  file: string;
  yaml: string;
  adminPort: number;
  logs: LogLine[];
  stderr(): string;
  /** The bound port of a listener. */
  port(listener: string): number;
  /** The recording backend started for a listener (throws when the test supplied a port). */
  backend(listener: string): RecordingBackend;
  /** The next log line (not returned before) matching `pred`. */
  waitLog(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** The next unseen line with this msg (and, when given, reason/closeReason). */
  waitMsg(msg: string | RegExp, extra?: Record<string, unknown>, timeoutMs?: number): Promise<LogLine>;
  /** The summary line ("connection closed") of the connection from this client port. */
  summaryFor(clientPort: number, timeoutMs?: number): Promise<LogLine>;
  metrics(): Promise<Sample[]>;
  /** Sum of the samples named `name` whose labels include `labels` (0 when there is none). */
  metric(name: string, labels?: Record<string, string>): Promise<number>;
  /** Open descriptors of the daemon now. */
  fds(): number;
  /** Waits (bounded) until the descriptor count has stopped dropping, returns it: the baseline. */
  settledFds(timeoutMs?: number): Promise<number>;
  /** Waits (bounded) until the count is at most `baseline`; returns the last count seen. */
  fdsBackTo(baseline: number, timeoutMs?: number): Promise<number>;
  sighup(): void;
  /** SIGTERM (or `signal`) and wait for the exit; resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

const children = new Set<ChildProcess>();

/** Kills every daemon still running (call from afterAll). */
export async function stopAll(): Promise<void> {
  await Promise.all([...children].map((c) => killChild(c)));
}

process.once('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

function killChild(c: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
  return new Promise((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null) {
      children.delete(c);
      return resolve(c.exitCode);
    }
    const hard = setTimeout(() => c.kill('SIGKILL'), 10_000);
    c.once('exit', (code) => {
      clearTimeout(hard);
      children.delete(c);
      resolve(code);
    });
    c.kill(signal);
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Writes the YAML (with an admin endpoint), spawns `node bin/postern.js run -c <yaml>`, and
 * resolves once every listener and the admin endpoint have logged that they listen. Called inside
 * a test, the daemon and its backends are stopped when that test finishes; called in beforeAll,
 * they are stopped by stopAll() (and by process exit at the latest).
 */
/**
 * spawnDaemonOnce, again with new ports when a port this harness picked was taken between its
 * pick and the daemon's bind (freePort's window; seen in CI with pebble and other daemons
 * starting on the same machine). Ports the test chose itself are never changed.
 */
export async function spawnDaemon(opts: DaemonOptions): Promise<SpawnedPostern> {
  const picked = opts.listeners.every((l) => l.port === undefined);
  for (let attempt = 1; ; attempt++) {
    try {
      return await spawnDaemonOnce(opts);
    } catch (err) {
      if (!picked || attempt >= 3 || !/EADDRINUSE/.test((err as Error).message)) throw err;
    }
  }
}

async function spawnDaemonOnce(opts: DaemonOptions): Promise<SpawnedPostern> {
  const backends = new Map<string, RecordingBackend>();
  const listeners: Record<string, unknown>[] = [];
  const ports = new Map<string, number>();
  for (const [i, l] of opts.listeners.entries()) {
    let backendPort = l.backendPort;
    if (backendPort === undefined) {
      const mail = l.protocol === 'smtp' || l.protocol === 'imap' || l.protocol === 'pop3' ? l.protocol : null;
      const kind = l.backendKind ?? (l.tls === 'starttls' ? mail ?? 'smtp' : 'echo');
      const proxy = (l.proxyProtocol ?? 'v2') !== 'none';
      // An implicit smtp/imap/pop3 listener filters its sessions, which start with the backend's
      // greeting (issue 15): its echo backend greets in the protocol's words first.
      const greeting = l.tls !== 'starttls' && mail && kind === 'echo' ? BACKEND_GREETING[mail] : null;
      const b = kind === 'smtp' || kind === 'imap' || kind === 'pop3' ? await startMailBackend(kind, { proxy })
        : greeting ? await startBackend({ mode: 'smtp-echo', proxy, greeting })
        : await startBackend({ mode: kind, proxy });
      backends.set(l.name, b);
      backendPort = b.port;
    }
    const port = l.port ?? (await freePort(l.host && l.host.includes(':') ? '::1' : (l.host ?? '127.0.0.1')));
    ports.set(l.name, port);
    const { extra, backendKind: _k, ...spec } = l;
    const obj = listenerObject({ ...spec, port, backendPort }, i);
    if (l.host?.includes(':')) obj.listen = `[${l.host}]:${port}`;
    if (extra) {
      for (const [k, v] of Object.entries(extra)) {
        if (k === 'timeouts' && typeof v === 'object' && v) obj.timeouts = { ...(obj.timeouts as object | undefined), ...(v as object) };
        else obj[k] = v;
      }
    }
    listeners.push(obj);
  }
  const adminPort = await freePort();
  const yaml = stringify({
    log: { level: opts.level ?? 'debug' },
    admin: { listen: `127.0.0.1:${adminPort}` },
    ...opts.top,
    certificates: opts.certs,
    listeners,
  });
  const file = join(opts.dir, `hostile-${randomUUID().slice(0, 8)}.yaml`);
  writeFileSync(file, yaml);

  const child = spawn(process.execPath, [BIN, 'run', '-c', file], { cwd: opts.dir, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  const logs: LogLine[] = [];
  const seen = new Set<LogLine>();
  let stderr = '';
  let partial = '';
  let wake: Array<() => void> = [];
  const notify = () => {
    const w = wake;
    wake = [];
    for (const f of w) f();
  };
  child.stdout!.on('data', (d: Buffer) => {
    partial += d.toString('utf8');
    let nl: number;
    while ((nl = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      if (!line.trim()) continue;
      try {
        logs.push(JSON.parse(line) as LogLine);
      } catch {
        logs.push({ level: 'raw', msg: line });
      }
    }
    notify();
  });
  child.stderr!.on('data', (d: Buffer) => {
    stderr += d.toString('utf8');
    notify();
  });
  child.once('exit', notify);

  const waitLog = async (pred: (l: LogLine) => boolean, timeoutMs = 5000, what = 'a matching log line'): Promise<LogLine> => {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const hit = logs.find((l) => !seen.has(l) && pred(l));
      if (hit) {
        seen.add(hit);
        return hit;
      }
      if (Date.now() > until || child.exitCode !== null) {
        throw new Error(`${what} not logged within ${timeoutMs} ms (exit ${child.exitCode}); stderr: ${stderr}\nlogs:\n${logs.map((l) => JSON.stringify(l)).join('\n')}`);
      }
      await new Promise<void>((r) => {
        wake.push(r);
        setTimeout(r, 100);
      });
    }
  };

  // No keep-alive (fetch would hold an idle connection, i.e. a descriptor in the daemon, for
  // seconds and spoil descriptor counts): one request per connection.
  const metrics = (): Promise<Sample[]> =>
    new Promise((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port: adminPort, path: '/metrics', agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve(parseMetrics(body)));
        res.on('error', reject);
      });
      req.on('error', reject);
    });

  const d: SpawnedPostern = {
    child,
    pid: child.pid!,
    file,
    yaml,
    adminPort,
    logs,
    stderr: () => stderr,
    port: (name) => {
      const p = ports.get(name);
      if (p === undefined) throw new Error(`no listener ${name}`);
      return p;
    },
    backend: (name) => {
      const b = backends.get(name);
      if (!b) throw new Error(`listener ${name} has no recording backend of the harness`);
      return b;
    },
    waitLog: (pred, timeoutMs) => waitLog(pred, timeoutMs),
    waitMsg: (msg, extra = {}, timeoutMs) =>
      waitLog((l) => (typeof msg === 'string' ? l.msg === msg : msg.test(l.msg)) && Object.entries(extra).every(([k, v]) => l[k] === v), timeoutMs, `log line ${String(msg)} ${JSON.stringify(extra)}`),
    summaryFor: (clientPort, timeoutMs = 5000) => waitLog((l) => l.msg === 'connection closed' && l.clientPort === clientPort, timeoutMs, `summary line for client port ${clientPort}`),
    metrics,
    metric: async (name, labels = {}) => {
      const all = await metrics();
      return all.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((a, s) => a + s.value, 0);
    },
    fds: () => readdirSync(`/proc/${child.pid}/fd`).length,
    settledFds: async (timeoutMs = 5000) => {
      const until = Date.now() + timeoutMs;
      let last = d.fds();
      let stableSince = Date.now();
      while (Date.now() < until) {
        await sleep(100);
        const now = d.fds();
        if (now < last) stableSince = Date.now();
        last = Math.min(last, now);
        if (Date.now() - stableSince >= 500) break;
      }
      return last;
    },
    fdsBackTo: async (baseline, timeoutMs = 5000) => {
      const until = Date.now() + timeoutMs;
      let now = d.fds();
      while (now > baseline && Date.now() < until) {
        await sleep(100);
        now = d.fds();
      }
      return now;
    },
    sighup: () => {
      child.kill('SIGHUP');
    },
    stop: (signal = 'SIGTERM') => killChild(child, signal),
  };

  const cleanup = async () => {
    await killChild(child);
    await Promise.all([...backends.values()].map((b) => b.close()));
  };
  try {
    onTestFinished(cleanup);
  } catch {
    // Outside a test (beforeAll): stopAll() or process exit takes care of the child.
    child.once('exit', () => void Promise.all([...backends.values()].map((b) => b.close())));
  }

  const startMs = opts.startTimeoutMs ?? 20_000;
  for (const l of opts.listeners) await waitLog((x) => x.msg === 'listening' && x.listener === l.name, startMs, `listener ${l.name} listening`);
  await waitLog((x) => x.msg === 'admin endpoint listening', startMs, 'admin endpoint listening');
  return d;
}

/** Prometheus text -> samples. */
export function parseMetrics(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Clients

/** A plain TCP connection to a listener, with a line reader over it (before STARTTLS). */
export async function connectPlain(port: number, host = '127.0.0.1', localAddress?: string): Promise<{ socket: net.Socket; reader: StreamReader; localPort: number }> {
  const socket = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ host, port, localAddress, noDelay: true });
    s.once('connect', () => {
      s.off('error', reject);
      s.on('error', () => {});
      resolve(s);
    });
    s.once('error', reject);
  });
  return { socket, reader: readStream(socket), localPort: socket.localPort! };
}

export const GREETING: Record<MailProtocol, RegExp> = { smtp: /^220 [^\r\n]*\r\n/m, imap: /^\* OK [^\r\n]*\r\n/m, pop3: /^\+OK[^\r\n]*\r\n/m };
export const STARTTLS_CMD: Record<MailProtocol, { command: string; reply: RegExp }> = {
  smtp: { command: 'STARTTLS\r\n', reply: /220 2\.0\.0 [^\r\n]*\r\n/ },
  imap: { command: 'a STARTTLS\r\n', reply: /a OK [^\r\n]*\r\n/ },
  pop3: { command: 'STLS\r\n', reply: /\+OK [^\r\n]*\r\n/ },
};

export interface GoodClientOptions {
  /** Default: the listener's protocol is taken from `protocol`; implicit TLS when undefined. */
  starttls?: MailProtocol;
  servername?: string;
  alpn?: string[];
  host?: string;
}

/**
 * Proves postern still serves: TLS (implicit, or after STARTTLS) with SNI, verified against the
 * test CA, then a round trip through postern to the listener's recording backend, which must
 * have received the token under a PROXY header naming this client. Resolves with the client port.
 * Implicit listeners need an echoing backend ('echo' or 'smtp-echo'; on a mail protocol it greets
 * first, and the token line goes through the filter); STARTTLS listeners the mail backend (the default).
 */
export async function goodClient(d: SpawnedPostern, listener: string, pki: TestPki, opts: GoodClientOptions = {}): Promise<number> {
  const port = d.port(listener);
  const servername = opts.servername ?? 'mail.example.org';
  const token = `tok${randomUUID().slice(0, 8)}`;
  let secure: tls.TLSSocket;
  let localPort: number;
  if (opts.starttls) {
    const p = opts.starttls;
    const c = await connectPlain(port, opts.host);
    localPort = c.localPort;
    await c.reader.readUntil(GREETING[p]);
    if (p === 'smtp') {
      c.socket.write('EHLO good.example\r\n');
      await c.reader.readUntil(/^250 [^\r\n]*\r\n/m);
    }
    c.socket.write(STARTTLS_CMD[p].command);
    await c.reader.readUntil(STARTTLS_CMD[p].reply);
    c.reader.detach();
    secure = await startTls(c.socket, { servername, ca: pki.ca.certPem });
  } else {
    secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ host: opts.host ?? '127.0.0.1', port, servername, ca: pki.ca.certPem, ALPNProtocols: opts.alpn });
      s.once('secureConnect', () => {
        s.off('error', reject);
        s.on('error', () => {});
        resolve(s);
      });
      s.once('error', reject);
    });
    localPort = secure.localPort!;
  }
  const r = readStream(secure);
  try {
    switch (opts.starttls) {
      case 'smtp':
        secure.write('EHLO good.example\r\n');
        await r.readUntil(/^250 [^\r\n]*\r\n/m);
        secure.write(`NOOP ${token}\r\n`);
        await r.readUntil(new RegExp(`250 2\\.0\\.0 OK ${token}\r\n`));
        break;
      case 'imap':
        secure.write(`b NOOP ${token}\r\n`);
        await r.readUntil(new RegExp(`b OK ${token}\r\n`));
        break;
      case 'pop3':
        secure.write(`NOOP ${token}\r\n`);
        await r.readUntil(new RegExp(`\\+OK ${token}\r\n`));
        break;
      default:
        secure.write(`${token}\r\n`);
        await r.readUntil(new RegExp(token));
    }
  } finally {
    secure.destroy();
  }
  const b = d.backend(listener);
  const mine = sessionsOf(b, localPort);
  if (mine.length !== 1 || !mine[0]!.data.toString('latin1').includes(token)) {
    throw new Error(`good client: backend did not get the token under this client's header (${mine.length} connections)`);
  }
  await d.summaryFor(localPort, 5000);
  return localPort;
}

// ---------------------------------------------------------------------------------------------
// Memory and CPU of the daemon, read from /proc (issue 14: measured during the attack)

/** The daemon's resident set size now, in bytes (VmRSS of /proc/<pid>/status). */
export function vmRss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}

let clockTicks = 0;

/** CPU seconds the process has used so far (utime + stime of /proc/<pid>/stat). */
export function cpuSeconds(pid: number): number {
  if (clockTicks === 0) clockTicks = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces: count fields from the ")" that ends it.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / clockTicks;
}

export interface RssReport {
  /** VmRSS just before the attack started. */
  baseline: number;
  /** The highest VmRSS sampled while the attack ran. */
  max: number;
  /** VmRSS `settleMs` after the attack ended. */
  after: number;
  samples: number;
  /** True when the growth passed `tripBytes` and the attack was told to stop early. */
  tripped: boolean;
}

/**
 * Runs `attack` while sampling the daemon's VmRSS every `intervalMs` (100). The attack gets an
 * AbortSignal that fires once the growth passes `tripBytes` (default 1.5 GiB): an attack that
 * blows up postern stops itself before it hurts the machine, and the test's own bound, far lower,
 * fails with the number measured. The attack must yield to the event loop (await its writes),
 * or no sample is taken.
 */
export async function rssDuring<T>(pid: number, attack: (signal: AbortSignal) => Promise<T>, opts: { intervalMs?: number; tripBytes?: number; settleMs?: number } = {}): Promise<{ rss: RssReport; result: T }> {
  const tripBytes = opts.tripBytes ?? 1.5 * 1024 ** 3;
  const ac = new AbortController();
  const baseline = vmRss(pid);
  let max = baseline;
  let samples = 0;
  const sample = () => {
    try {
      max = Math.max(max, vmRss(pid));
      samples++;
    } catch {
      // The process is gone: the test says so on its own.
      ac.abort();
    }
    if (max - baseline > tripBytes) ac.abort();
  };
  const timer = setInterval(sample, opts.intervalMs ?? 100);
  let result: T;
  try {
    result = await attack(ac.signal);
  } finally {
    clearInterval(timer);
  }
  sample();
  await sleep(opts.settleMs ?? 500);
  let after = max;
  try {
    after = vmRss(pid);
  } catch {
    // gone
  }
  return { rss: { baseline, max, after, samples, tripped: max - baseline > tripBytes }, result };
}

/** "+12.3 MB": a growth in bytes, for messages and the measurement log. */
export function mb(bytes: number): string {
  return `${bytes >= 0 ? '+' : ''}${(bytes / 1024 / 1024).toFixed(1)} MB`;
}
