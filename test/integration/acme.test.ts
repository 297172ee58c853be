// Built-in ACME end to end: the real daemon (`node bin/postern.js run`, a child process, JSON log
// lines on stdout) obtains, serves, keeps and renews certificates from pebble on loopback. No
// mocks: pebble's validation authority connects to the daemon's listener (TLS-ALPN-01) or to its
// acme.http listener (HTTP-01), and every certificate is checked by a TLS client that trusts only
// pebble's roots.
//
// One pebble (default 5-year validity) serves every test but the renewal loop, which has its own
// with 30 s certificates. The TLS-ALPN-01 tests share one storage (and one daemon) on purpose, in
// order: first issuance, restart from the storage, 1,000 unknown SNIs, then the CA outage (last
// of them: pebble comes back with a new root and no accounts; issuerRoots() keeps the old roots,
// so the later tests verify either). Every wait is bounded and fails with the daemon's log tail;
// nothing asserts how fast anything is, only upper bounds on how often (the retry backoff).
// The numbers worth knowing (issuance time, handshakes during the renewals, retry gaps) are
// printed with console.log.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import { buildOnce } from '../helpers/build.ts';
import { freePort, freePorts } from '../helpers/ports.ts';
import { startBackend, type RecordingBackend } from '../helpers/backend.ts';
import { startPebble, type Pebble } from '../helpers/pebble.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const NAME = 'mail.example.org';
const OTHER = 'other.example.org';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// The daemon as a child process

interface LogLine {
  level: string;
  msg: string;
  time: string;
  [k: string]: unknown;
}

class Daemon {
  readonly lines: LogLine[] = [];
  private stderr = '';
  private readonly proc: ChildProcess;
  private readonly exited: Promise<number | null>;
  readonly label: string;
  readonly adminPort: number;

  constructor(label: string, file: string, adminPort: number) {
    this.label = label;
    this.adminPort = adminPort;
    this.proc = spawn(process.execPath, [join(ROOT, 'bin', 'postern.js'), 'run', '-c', file], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((r) => this.proc.once('close', (code) => r(code)));
    this.proc.on('error', (err) => (this.stderr += `spawn: ${err.message}\n`));
    createInterface({ input: this.proc.stdout! }).on('line', (l) => {
      try {
        this.lines.push(JSON.parse(l) as LogLine);
      } catch {
        this.lines.push({ level: 'raw', msg: l, time: new Date().toISOString() });
      }
    });
    this.proc.stderr!.setEncoding('utf8');
    this.proc.stderr!.on('data', (d: string) => (this.stderr += d));
  }

  get running() {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** The last log lines (and stderr), for failure messages. */
  tail(n = 60): string {
    const lines = this.lines.slice(-n).map((l) => JSON.stringify(l));
    return `--- ${this.label}: last ${lines.length} of ${this.lines.length} log lines ---\n${lines.join('\n')}${this.stderr ? `\n--- stderr ---\n${this.stderr.slice(-4000)}` : ''}`;
  }

  count(pred: (l: LogLine) => boolean, from = 0): number {
    return this.lines.slice(from).filter(pred).length;
  }

  /** Polls `check` (a log line or anything else) until it holds; throws with the log tail. */
  async until<T>(what: string, check: () => T | null | undefined | false | Promise<T | null | undefined | false>, timeoutMs = 30_000, everyMs = 50): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await check();
      if (v) return v;
      if (!this.running) throw new Error(`${this.label} exited (${this.proc.exitCode ?? this.proc.signalCode}) while waiting for ${what}\n${this.tail()}`);
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${this.tail()}`);
      await sleep(everyMs);
    }
  }

  waitLog(what: string, pred: (l: LogLine) => boolean, from = 0, timeoutMs = 30_000): Promise<LogLine> {
    return this.until(what, () => this.lines.slice(from).find(pred), timeoutMs);
  }

  async admin(path: string, init?: RequestInit): Promise<Response> {
    return fetch(`http://127.0.0.1:${this.adminPort}${path}`, { ...init, signal: AbortSignal.timeout(10_000) });
  }

  /** A sample of /metrics: the sum of the series whose labels include `labels`; undefined when none. */
  async metric(name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
    const text = await (await this.admin('/metrics')).text();
    let sum: number | undefined;
    for (const line of text.split('\n')) {
      const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
      if (!m || m[1] !== name) continue;
      const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
      if (Object.entries(labels).every(([k, v]) => have[k] === v)) sum = (sum ?? 0) + Number(m[3]);
    }
    return sum;
  }

  /** SIGTERM, wait for the exit (SIGKILL after 15 s); the exit code. */
  async stop(): Promise<number | null> {
    if (this.running) this.proc.kill('SIGTERM');
    const code = await Promise.race([this.exited, sleep(15_000).then(() => 'timeout' as const)]);
    if (code !== 'timeout') return code;
    this.proc.kill('SIGKILL');
    await this.exited;
    throw new Error(`${this.label} did not exit within 15 s of SIGTERM\n${this.tail()}`);
  }
}

const daemons = new Set<Daemon>();

async function startDaemon(label: string, file: string, adminPort: number): Promise<Daemon> {
  const d = new Daemon(label, file, adminPort);
  daemons.add(d);
  await d.waitLog('the listener to be listening', (l) => l.msg === 'listening', 0, 20_000);
  await d.until('the admin endpoint', () => d.admin('/healthz').then((r) => r.ok, () => false), 20_000, 100);
  return d;
}

async function stopDaemon(d: Daemon) {
  daemons.delete(d);
  return d.stop();
}

interface ConfigOptions {
  storage: string;
  listenPort: number;
  adminPort: number;
  backendPort: number;
  pebble: Pebble;
  keyTypes?: Array<'ecdsa' | 'rsa'>;
  challenge?: 'tls-alpn-01' | 'http-01';
  httpPort?: number;
  hosts?: string[];
}

function writeConfig(file: string, o: ConfigOptions): string {
  writeFileSync(
    file,
    `log: { level: info }
admin: { listen: "127.0.0.1:${o.adminPort}" }
# The recording backend must see only what the tests send, not health checks.
backendChecks: { interval: off }
shutdown: { drainTimeout: 2s }
acme:
  directory: ${o.pebble.directoryUrl}
  email: postmaster@example.org
  termsOfServiceAgreed: true
  storage: ${o.storage}
  caCertificates: ${o.pebble.caCertFile}
  keyTypes: [${(o.keyTypes ?? ['ecdsa']).join(', ')}]
  challenge: ${o.challenge ?? 'tls-alpn-01'}
${o.httpPort ? `  http: { listen: "127.0.0.1:${o.httpPort}" }\n` : ''}${o.hosts ? `  hosts: [${o.hosts.join(', ')}]\n` : ''}  retry: { min: 1s, max: 4s }
listeners:
  - name: imaps
    listen: "127.0.0.1:${o.listenPort}"
    protocol: imap
    tls: implicit
    hostname: ${NAME}
    backend: { address: "127.0.0.1:${o.backendPort}", proxyProtocol: none }
`,
  );
  return file;
}

// ---------------------------------------------------------------------------------------------
// Clients

interface Shake {
  ok: boolean;
  authorized: boolean;
  authorizationError: string | null;
  /** The client-side error (an alert from postern shows as its OpenSSL code). */
  code: string | null;
  error: string | null;
  serial: string | null;
  san: string | null;
  keyType: 'ec' | 'rsa' | null;
  protocol: string | null;
  /** What arrived from the backend through TLS before the client closed (readGreeting only). */
  greeting: string;
}

/**
 * One TLS handshake to the listener, verifying against `ca` (the result says whether it was
 * authorized rather than throwing, so a failure can be reported). `readGreeting`: wait for the
 * backend's first bytes through the tunnel before closing.
 */
function handshake(port: number, opts: tls.ConnectionOptions & { readGreeting?: boolean; timeoutMs?: number } = {}): Promise<Shake> {
  const { readGreeting, timeoutMs = 8000, ...tlsOpts } = opts;
  return new Promise((resolve) => {
    const r: Shake = { ok: false, authorized: false, authorizationError: null, code: null, error: null, serial: null, san: null, keyType: null, protocol: null, greeting: '' };
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve(r);
    };
    const s = tls.connect({ host: '127.0.0.1', port, servername: NAME, rejectUnauthorized: false, ...tlsOpts }, () => {
      r.ok = true;
      r.authorized = s.authorized;
      r.authorizationError = s.authorizationError ? String(s.authorizationError) : null;
      const c = s.getPeerCertificate();
      r.serial = c.serialNumber ?? null;
      r.san = c.subjectaltname ?? null;
      r.keyType = (c as { modulus?: string }).modulus ? 'rsa' : (c as { asn1Curve?: string }).asn1Curve ? 'ec' : null;
      r.protocol = s.getProtocol();
      if (!readGreeting) {
        // end(), not destroy(): the client's Finished must leave before the socket closes.
        s.end();
        finish();
      }
    });
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      r.greeting += d;
      if (readGreeting && r.greeting.includes('\n')) {
        s.end();
        finish();
      }
    });
    s.on('error', (err: NodeJS.ErrnoException) => {
      r.code ??= err.code ?? null;
      r.error ??= err.message;
      finish();
    });
    s.on('close', finish);
    const timer = setTimeout(() => {
      r.error ??= `no outcome within ${timeoutMs} ms`;
      r.code ??= 'TEST_TIMEOUT';
      finish();
    }, timeoutMs);
  });
}

const describeShake = (r: Shake) => JSON.stringify({ ok: r.ok, authorized: r.authorized, authorizationError: r.authorizationError, code: r.code, error: r.error, serial: r.serial, san: r.san, keyType: r.keyType });

/** Handshakes until one verifies (the certificate is issued and loaded), within `timeoutMs`. */
async function waitServed(d: Daemon, port: number, ca: () => Promise<string>, opts: tls.ConnectionOptions = {}, timeoutMs = 60_000): Promise<Shake> {
  let last: Shake | null = null;
  return d.until(
    `a handshake that verifies (${JSON.stringify({ servername: opts.servername ?? NAME, ...opts, ca: undefined })}); last: ${last ? describeShake(last) : 'none yet'}`,
    async () => {
      last = await handshake(port, { ca: await ca(), ...opts });
      return last.ok && last.authorized ? last : null;
    },
    timeoutMs,
    200,
  );
}

/** `openssl s_client` with verification errors fatal; its exit code and output. */
function sClient(port: number, rootsFile: string, extra: string[] = []): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', NAME, '-verify_hostname', NAME, '-verify_return_error', '-CAfile', rootsFile, ...extra], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => p.kill('SIGKILL'), 15_000);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

/** Runs `fn` over `items` with at most `n` at a time. */
async function pool<T, R>(items: T[], n: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!);
      }
    }),
  );
  return out;
}

const isMsg = (msg: string) => (l: LogLine) => l.msg === msg;

// ---------------------------------------------------------------------------------------------

let work: string;
let pebble: Pebble;
let httpPort: number;
let tlsPort: number;
let backend: RecordingBackend;

beforeAll(async () => {
  buildOnce();
  work = mkdtempSync(join(tmpdir(), 'postern-acme-'));
  mkdirSync(join(work, 'pebble'));
  [httpPort, tlsPort] = (await freePorts(2)) as [number, number];
  pebble = await startPebble({ dir: join(work, 'pebble'), httpPort, tlsPort });
  backend = await startBackend({ proxy: false, mode: 'smtp-echo', greeting: '* OK backend ready\r\n' });
}, 120_000);

afterAll(async () => {
  for (const d of [...daemons]) await d.stop().catch(() => undefined);
  daemons.clear();
  await pebble?.stop();
  await backend?.close();
  if (work) rmSync(work, { recursive: true, force: true });
}, 60_000);

describe('acme with tls-alpn-01, one storage', () => {
  const storage = () => join(work, 'alpn', 'acme');
  let file: string;
  let daemon: Daemon;
  let firstSerial: string;
  let adminPort: number;

  afterAll(async () => {
    if (daemon && daemons.has(daemon)) await stopDaemon(daemon).catch(() => undefined);
  }, 30_000);

  it('obtains the first certificate by TLS-ALPN-01 on the listener; the validations never reach the backend', async () => {
    mkdirSync(join(work, 'alpn'));
    adminPort = await freePort();
    file = writeConfig(join(work, 'alpn', 'postern.yaml'), { storage: storage(), listenPort: tlsPort, adminPort, backendPort: backend.port, pebble });
    const ordersBefore = await pebble.orders();
    const validBefore = (await pebble.validations()).valid;
    const backendBefore = backend.connections.length;
    const started = Date.now();
    daemon = await startDaemon('tls-alpn-01 daemon', file, adminPort);
    // Log lines arrive in batches (up to 200 ms late): every line is waited for, never assumed.
    expect(await daemon.waitLog('the plan at start', isMsg('acme: no certificate yet; ordering'))).toMatchObject({ name: NAME, keyType: 'ecdsa', notAfter: null });

    const issued = await daemon.waitLog('acme: certificate issued', isMsg('acme: certificate issued'), 0, 60_000);
    const served = await waitServed(daemon, tlsPort, () => pebble.issuerRoots());
    console.log(`tls-alpn-01: first certificate served ${Date.now() - started} ms after the daemon was started`);
    firstSerial = served.serial!;
    expect(served.san).toContain(`DNS:${NAME}`);
    expect(served.keyType).toBe('ec');
    expect(issued).toMatchObject({ name: NAME, keyType: 'ecdsa', folder: join(storage(), 'live', NAME) });
    expect(daemon.lines.find(isMsg('acme: ordering')), daemon.tail()).toMatchObject({ name: NAME, keyType: 'ecdsa', reason: 'no_certificate' });
    await daemon.waitLog('the reload after the issuance', isMsg('reloaded'), 0, 10_000);

    // pebble's VA validated over TLS-ALPN-01 against this listener; postern answered each
    // validation itself (closeReason acme_challenge, no backend) and nothing reached the backend.
    expect(await pebble.orders()).toBe(ordersBefore + 1);
    expect((await pebble.validationsAtLeast(validBefore + 1)).valid).toBe(validBefore + 1);
    const validations = await daemon.metric('postern_acme_tls_alpn_validations_total', { listener: 'imaps', result: 'answered' });
    expect(validations, daemon.tail()).toBeGreaterThanOrEqual(1);
    const answered = await daemon.until(
      `a summary line (closeReason acme_challenge) for each of the ${validations} validations answered`,
      () => {
        const a = daemon.lines.filter((l) => l.msg === 'connection closed' && l.closeReason === 'acme_challenge');
        return a.length >= validations! && a;
      },
      10_000,
    );
    for (const a of answered) expect(a).toMatchObject({ sni: NAME, alpn: 'acme-tls/1', backend: null, bytesIn: 0, bytesOut: 0 });
    expect(backend.connections.length - backendBefore, 'the backend saw a connection before any client did').toBe(0);

    // A real client gets through to the backend (so the check above could have failed).
    const through = await handshake(tlsPort, { ca: await pebble.issuerRoots(), readGreeting: true });
    expect(through.authorized, describeShake(through)).toBe(true);
    expect(through.greeting).toMatch(/^\* OK/);
    expect(backend.connections.length - backendBefore).toBe(1);

    // openssl agrees: chain and name verify against pebble's root alone.
    const rootsFile = join(work, 'alpn', 'roots.pem');
    writeFileSync(rootsFile, await pebble.issuerRoots());
    const s = await sClient(tlsPort, rootsFile);
    expect(s.code, s.out).toBe(0);
    expect(s.out).toMatch(/Verify return code: 0 \(ok\)/);

    // The certbot layout, the key private to its owner.
    const live = join(storage(), 'live', NAME);
    expect(statSync(join(live, 'fullchain.pem')).isFile()).toBe(true);
    expect(statSync(join(live, 'privkey.pem')).mode & 0o777).toBe(0o600);
    expect(existsSync(join(storage(), 'state.json'))).toBe(true);
    expect(readdirSync(join(storage(), 'accounts'))).toHaveLength(1);

    const status = (await (await daemon.admin('/acme')).json()) as { certificates: Array<Record<string, unknown>> };
    expect(status.certificates).toHaveLength(1);
    expect(status.certificates[0]).toMatchObject({ name: NAME, keyType: 'ecdsa', failures: 0, lastError: null });
    expect(status.certificates[0]!.notAfter).toBe(new Date(issued.notAfter as string).toISOString());
    expect(await daemon.metric('postern_acme_orders_total', { key_type: 'ecdsa', result: 'ok' })).toBe(1);
    expect(await daemon.metric('postern_acme_orders_total', { result: 'failed' })).toBeUndefined();
    expect(await daemon.metric('postern_acme_consecutive_failures', { name: NAME, key_type: 'ecdsa' })).toBe(0);
    expect(await daemon.metric('postern_acme_certificate_not_after_seconds', { name: NAME, key_type: 'ecdsa' })).toBe(Math.floor(new Date(issued.notAfter as string).getTime() / 1000));
    expect(await daemon.metric('postern_acme_next_attempt_seconds', { name: NAME, key_type: 'ecdsa' })).toBeGreaterThan(Date.now() / 1000);
  }, 90_000);

  it('a restart with the same configuration serves the stored certificate and orders nothing', async () => {
    expect(daemon, 'needs the first test').toBeDefined();
    expect(await stopDaemon(daemon)).toBe(0);
    const ordersBefore = await pebble.orders();
    daemon = await startDaemon('tls-alpn-01 daemon (restarted)', file, adminPort);
    expect(await daemon.waitLog('the plan at start', isMsg('acme: certificate in storage'))).toMatchObject({ name: NAME, keyType: 'ecdsa' });
    const served = await waitServed(daemon, tlsPort, () => pebble.issuerRoots(), {}, 20_000);
    expect(served.serial).toBe(firstSerial);
    // Give a wrongly planned order time to show: the manager plans at start.
    await sleep(1000);
    expect(await pebble.orders()).toBe(ordersBefore);
    expect(daemon.count((l) => /^acme: (ordering|renewing)$/.test(l.msg)), daemon.tail()).toBe(0);
    expect(await daemon.metric('postern_acme_orders_total') ?? 0).toBe(0);
  }, 60_000);

  it('1,000 unknown SNIs (some with ALPN acme-tls/1) are refused and order nothing', async () => {
    expect(daemon, 'needs the first test').toBeDefined();
    const ordersBefore = await pebble.orders();
    const metricBefore = (await daemon.metric('postern_acme_orders_total')) ?? 0;
    const backendBefore = backend.connections.length;
    const from = daemon.lines.length;
    const names = Array.from({ length: 1000 }, (_, i) => `${randomBytes(6).toString('hex')}-${i}.${i % 2 ? 'example.org' : 'example.net'}`);
    const alpnOf = (i: number) => (i % 4 === 0 ? ['acme-tls/1'] : i % 4 === 1 ? ['acme-tls/1', 'imap'] : i % 4 === 2 ? ['imap'] : undefined);
    const outcomes = await pool(
      names.map((n, i) => ({ n, i })),
      16,
      async ({ n, i }) => {
        const r = await handshake(tlsPort, { servername: n, ALPNProtocols: alpnOf(i), ca: undefined });
        return { name: n, alpn: alpnOf(i), r };
      },
    );
    const tally = new Map<string, number>();
    for (const o of outcomes) {
      const key = o.r.ok ? 'served' : (o.r.code ?? 'unknown');
      tally.set(key, (tally.get(key) ?? 0) + 1);
    }
    console.log(`1,000 unknown SNIs: ${JSON.stringify(Object.fromEntries(tally))}`);
    // strict (imap): unrecognized_name; acme-tls/1 alone is no protocol this listener speaks
    // (no_application_protocol, ALPN is decided first). Nothing else: no reset, no timeout.
    const unexpected = outcomes.filter((o) => !(o.r.code === 'ERR_SSL_TLSV1_UNRECOGNIZED_NAME' || (o.r.code === 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL' && o.alpn?.length === 1) || o.r.ok));
    expect(unexpected.slice(0, 5).map((o) => ({ name: o.name, alpn: o.alpn, r: describeShake(o.r) })), daemon.tail()).toEqual([]);
    expect(outcomes.filter((o) => o.r.ok)).toHaveLength(0);

    await daemon.until('the 1,000 summary lines', () => daemon.count(isMsg('connection closed'), from) >= 1000, 20_000);
    const summaries = daemon.lines.slice(from).filter(isMsg('connection closed'));
    expect(summaries.filter((l) => l.closeReason === 'acme_challenge')).toHaveLength(0);
    expect(summaries.filter((l) => l.backend !== null)).toHaveLength(0);
    expect(backend.connections.length).toBe(backendBefore);

    await sleep(500);
    expect(await pebble.orders()).toBe(ordersBefore);
    expect((await daemon.metric('postern_acme_orders_total')) ?? 0).toBe(metricBefore);
    expect(daemon.count((l) => /^acme: (ordering|renewing)$/.test(l.msg), from), daemon.tail()).toBe(0);
    expect(readdirSync(join(storage(), 'live')).sort()).toEqual([NAME]);
    // Still serving the configured name.
    const ok = await handshake(tlsPort, { ca: await pebble.issuerRoots() });
    expect(ok.authorized, describeShake(ok)).toBe(true);
  }, 90_000);

  it('a CA that fails: the old certificate stays in service, retries back off, the CA back means a new certificate', async () => {
    expect(daemon, 'needs the first test').toBeDefined();
    const before = await handshake(tlsPort, { ca: await pebble.issuerRoots() });
    expect(before.authorized, describeShake(before)).toBe(true);
    const failedBefore = (await daemon.metric('postern_acme_orders_total', { result: 'failed' })) ?? 0;
    const okBefore = (await daemon.metric('postern_acme_orders_total', { result: 'ok' })) ?? 0;

    await pebble.stopCa();
    const from = daemon.lines.length;
    const renew = await daemon.admin(`/acme/renew?name=${NAME}`, { method: 'POST' });
    expect(renew.status).toBe(202);

    const failed = await daemon.waitLog('a failed renewal', (l) => l.reason === 'acme_order_failed', from, 30_000);
    expect(failed).toMatchObject({ name: NAME, keyType: 'ecdsa', failures: 1, level: 'warn', msg: 'acme: renewal failed; still serving the current certificate' });
    expect(daemon.lines.slice(from).find(isMsg('acme: renewing'))).toMatchObject({ name: NAME, reason: 'manual' });
    expect(await daemon.metric('postern_acme_orders_total', { result: 'failed' })).toBeGreaterThan(failedBefore);

    // Served all along: the current certificate, verified.
    const during = await handshake(tlsPort, { ca: await pebble.issuerRoots() });
    expect(during.authorized, describeShake(during)).toBe(true);
    expect(during.serial).toBe(before.serial);

    // Retries are spaced by the backoff: 1 s, 2 s, 4 s, 4 s... (+ up to 10%), never a loop.
    const watchMs = 6000;
    await sleep(watchMs);
    const attempts = daemon.lines.slice(from).filter(isMsg('acme: renewing'));
    const failures = daemon.lines.slice(from).filter((l) => l.reason === 'acme_order_failed');
    console.log(`CA down: ${attempts.length} attempts, ${failures.length} failures in the first ~${watchMs / 1000} s; gaps ${attempts.slice(1).map((a, i) => Date.parse(a.time) - Date.parse(attempts[i]!.time)).join(', ')} ms; error: ${failed.error}`);
    // The most attempts the backoff allows since the first: the n-th comes at least
    // 1 + 2 + 4 + 4 + ... s after it (retry.min 1 s doubling to retry.max 4 s).
    const elapsed = Date.now() - Date.parse(attempts[0]!.time);
    let allowed = 1;
    for (let at = 1000; at <= elapsed; at += Math.min(4000, 1000 * 2 ** (allowed - 1))) allowed++;
    expect(attempts.length, daemon.tail()).toBeGreaterThanOrEqual(2);
    expect(attempts.length, `${attempts.length} attempts in ${elapsed} ms, the backoff allows ${allowed}\n${daemon.tail()}`).toBeLessThanOrEqual(allowed);
    for (let i = 1; i < attempts.length; i++) {
      const gap = Date.parse(attempts[i]!.time) - Date.parse(attempts[i - 1]!.time);
      expect(gap, `gap before attempt ${i + 1}\n${daemon.tail()}`).toBeGreaterThanOrEqual(Math.min(4000, 1000 * 2 ** (i - 1)) - 20);
    }
    for (const [i, f] of failures.entries()) {
      expect(f.failures).toBe(i + 1);
      const next = attempts[i + 1];
      if (next) expect(Date.parse(next.time), daemon.tail()).toBeGreaterThanOrEqual(Date.parse(f.retryAt as string) - 20);
    }
    // The CA's real error (not acme-client's TypeError), everywhere it is shown. Counts are
    // compared loosely: another attempt may fail between two reads.
    expect(failed.error).toMatch(/ECONNREFUSED/);
    expect(await daemon.metric('postern_acme_consecutive_failures', { name: NAME, key_type: 'ecdsa' })).toBeGreaterThanOrEqual(2);
    const status = (await (await daemon.admin('/acme')).json()) as { certificates: Array<Record<string, unknown>> };
    expect(status.certificates[0]).toMatchObject({ name: NAME, keyType: 'ecdsa' });
    expect(status.certificates[0]!.failures).toBeGreaterThanOrEqual(2);
    expect(String(status.certificates[0]!.lastError)).toMatch(/ECONNREFUSED/);
    const still = await handshake(tlsPort, { ca: await pebble.issuerRoots() });
    expect(still.authorized, describeShake(still)).toBe(true);
    expect(still.serial).toBe(before.serial);

    // The CA returns (new root, no accounts): the next retry registers again and renews.
    await pebble.startCa();
    const renewed = await daemon.waitLog('the renewal once the CA is back', isMsg('acme: certificate renewed'), from, 30_000);
    expect(renewed).toMatchObject({ name: NAME, keyType: 'ecdsa' });
    const after = await daemon.until(
      'the renewed certificate in service',
      async () => {
        const r = await handshake(tlsPort, { ca: await pebble.issuerRoots() });
        return r.authorized && r.serial !== before.serial ? r : null;
      },
      20_000,
      200,
    );
    expect(after.san).toContain(`DNS:${NAME}`);
    expect(await daemon.metric('postern_acme_orders_total', { result: 'ok' })).toBe(okBefore + 1);
    expect(await daemon.metric('postern_acme_consecutive_failures', { name: NAME, key_type: 'ecdsa' })).toBe(0);
    const rootsFile = join(work, 'alpn', 'roots-after.pem');
    writeFileSync(rootsFile, await pebble.issuerRoots());
    const s = await sClient(tlsPort, rootsFile);
    expect(s.code, s.out).toBe(0);
    expect(await stopDaemon(daemon)).toBe(0);
  }, 90_000);
});

describe('acme with http-01', () => {
  it('obtains certificates through the acme.http listener, which answers 404 to anything else', async () => {
    const dir = join(work, 'http01');
    mkdirSync(dir);
    const storage = join(dir, 'acme');
    const adminPort = await freePort();
    const file = writeConfig(join(dir, 'postern.yaml'), { storage, listenPort: tlsPort, adminPort, backendPort: backend.port, pebble, challenge: 'http-01', httpPort, hosts: [OTHER] });
    const backendBefore = backend.connections.length;
    const started = Date.now();
    const d = await startDaemon('http-01 daemon', file, adminPort);
    try {
      expect(await d.waitLog('the http-01 listener', isMsg('acme http-01 listener listening'))).toMatchObject({ listen: `127.0.0.1:${httpPort}` });
      await d.until('both certificates issued', () => d.count(isMsg('acme: certificate issued')) >= 2, 60_000);
      const served = await waitServed(d, tlsPort, () => pebble.issuerRoots());
      const other = await waitServed(d, tlsPort, () => pebble.issuerRoots(), { servername: OTHER });
      console.log(`http-01: two certificates served ${Date.now() - started} ms after the daemon was started`);
      expect(served.san).toContain(`DNS:${NAME}`);
      expect(other.san).toContain(`DNS:${OTHER}`);
      expect(backend.connections.length - backendBefore).toBe(0);

      // pebble's VA fetched the tokens from the acme.http listener; no TLS-ALPN-01 validation.
      const answered = d.count(isMsg('acme http-01 validation answered'));
      expect(answered, d.tail()).toBeGreaterThanOrEqual(2);
      expect(await d.metric('postern_acme_http_requests_total', { result: 'answered' })).toBe(answered);
      expect(d.count((l) => l.closeReason === 'acme_challenge')).toBe(0);
      expect((await d.metric('postern_acme_tls_alpn_validations_total')) ?? 0).toBe(0);

      const rootsFile = join(dir, 'roots.pem');
      writeFileSync(rootsFile, await pebble.issuerRoots());
      const s = await sClient(tlsPort, rootsFile);
      expect(s.code, s.out).toBe(0);
      expect(statSync(join(storage, 'live', NAME, 'privkey.pem')).mode & 0o777).toBe(0o600);
      expect(statSync(join(storage, 'live', OTHER, 'privkey.pem')).mode & 0o777).toBe(0o600);
      expect(readdirSync(join(storage, 'live')).sort()).toEqual([NAME, OTHER].sort());

      // Nothing else on the HTTP listener: / and a token of no open order are 404.
      const curl = (path: string) =>
        new Promise<string>((resolve) => {
          const p = spawn('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '10', `http://127.0.0.1:${httpPort}${path}`], { stdio: ['ignore', 'pipe', 'pipe'] });
          let out = '';
          p.stdout.on('data', (x) => (out += x));
          p.on('close', () => resolve(out));
        });
      const requests = async () => ({
        notFound: (await d.metric('postern_acme_http_requests_total', { result: 'not_found' })) ?? 0,
        unknownToken: (await d.metric('postern_acme_http_requests_total', { result: 'unknown_token' })) ?? 0,
      });
      const before = await requests();
      expect(await curl('/')).toBe('404');
      expect(await curl('/.well-known/acme-challenge/2j4ZbU3Hc-unknown-token_qq9x8F0aYwT')).toBe('404');
      expect(await requests()).toEqual({ notFound: before.notFound + 1, unknownToken: before.unknownToken + 1 });
    } finally {
      expect(await stopDaemon(d)).toBe(0);
    }
  }, 90_000);
});

describe('acme with two key types', () => {
  it('serves the ECDSA certificate to an ECDSA-only client and the RSA one to an RSA-only client', async () => {
    const dir = join(work, 'dual');
    mkdirSync(dir);
    const storage = join(dir, 'acme');
    const adminPort = await freePort();
    const file = writeConfig(join(dir, 'postern.yaml'), { storage, listenPort: tlsPort, adminPort, backendPort: backend.port, pebble, keyTypes: ['ecdsa', 'rsa'] });
    const d = await startDaemon('ecdsa+rsa daemon', file, adminPort);
    try {
      await d.until('two certificates issued', () => d.count(isMsg('acme: certificate issued')) >= 2, 60_000);
      const issued = d.lines.filter(isMsg('acme: certificate issued'));
      expect(issued.map((l) => l.keyType).sort()).toEqual(['ecdsa', 'rsa']);
      const ca = () => pebble.issuerRoots();
      // TLS 1.2: the cipher suite names the key type. TLS 1.3: the signature algorithms do.
      const ecdsa12 = await waitServed(d, tlsPort, ca, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256' });
      const rsa12 = await waitServed(d, tlsPort, ca, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-RSA-AES128-GCM-SHA256' });
      const ecdsa13 = await waitServed(d, tlsPort, ca, { minVersion: 'TLSv1.3', sigalgs: 'ecdsa_secp256r1_sha256' });
      const rsa13 = await waitServed(d, tlsPort, ca, { minVersion: 'TLSv1.3', sigalgs: 'rsa_pss_rsae_sha256' });
      expect([ecdsa12.keyType, ecdsa13.keyType]).toEqual(['ec', 'ec']);
      expect([rsa12.keyType, rsa13.keyType]).toEqual(['rsa', 'rsa']);
      expect(ecdsa13.serial).toBe(ecdsa12.serial);
      expect(rsa13.serial).toBe(rsa12.serial);
      expect(rsa12.serial).not.toBe(ecdsa12.serial);
      for (const r of [ecdsa12, rsa12, ecdsa13, rsa13]) expect(r.san).toContain(`DNS:${NAME}`);

      // openssl, restricted the same way.
      const rootsFile = join(dir, 'roots.pem');
      writeFileSync(rootsFile, await ca());
      const e = await sClient(tlsPort, rootsFile, ['-sigalgs', 'ECDSA+SHA256']);
      const r = await sClient(tlsPort, rootsFile, ['-sigalgs', 'RSA-PSS+SHA256']);
      expect(e.code, e.out).toBe(0);
      expect(r.code, r.out).toBe(0);
      expect(e.out).toMatch(/Peer signature type: ECDSA/);
      expect(r.out).toMatch(/Peer signature type: RSA-PSS/);

      expect(statSync(join(storage, 'live', NAME, 'privkey.pem')).mode & 0o777).toBe(0o600);
      expect(statSync(join(storage, 'live', `${NAME}_rsa`, 'privkey.pem')).mode & 0o777).toBe(0o600);
      expect(await d.metric('postern_acme_orders_total', { key_type: 'ecdsa', result: 'ok' })).toBe(1);
      expect(await d.metric('postern_acme_orders_total', { key_type: 'rsa', result: 'ok' })).toBe(1);
    } finally {
      expect(await stopDaemon(d)).toBe(0);
    }
  }, 90_000);
});

describe('acme renewal under traffic', () => {
  const VALIDITY = 30;
  let dir: string;
  let shortPebble: Pebble;
  let ports: { http: number; tls: number };

  beforeAll(async () => {
    dir = join(work, 'renewal');
    mkdirSync(join(dir, 'pebble'), { recursive: true });
    const [h, t] = (await freePorts(2)) as [number, number];
    ports = { http: h, tls: t };
    shortPebble = await startPebble({ dir: join(dir, 'pebble'), httpPort: h, tlsPort: t, validitySeconds: VALIDITY });
  }, 60_000);

  afterAll(async () => {
    await shortPebble?.stop();
  }, 30_000);

  it('renews twice at two thirds of a 30 s lifetime while handshakes run, none failing', async () => {
    const adminPort = await freePort();
    const file = writeConfig(join(dir, 'postern.yaml'), { storage: join(dir, 'acme'), listenPort: ports.tls, adminPort, backendPort: backend.port, pebble: shortPebble });
    const d = await startDaemon('renewal daemon', file, adminPort);
    try {
      const ca = await shortPebble.issuerRoots();
      const first = await waitServed(d, ports.tls, async () => ca);
      const serials = [first.serial!];
      let handshakes = 0;
      const failures: string[] = [];
      const started = Date.now();
      const deadline = started + 3 * VALIDITY * 1000;
      for (;;) {
        const renewed = d.count(isMsg('acme: certificate renewed'));
        if (renewed >= 2 && serials.length >= 3) break;
        if (Date.now() > deadline || !d.running) throw new Error(`after ${Date.now() - started} ms: ${renewed} renewals logged, serials served ${JSON.stringify(serials)}, ${handshakes} handshakes, failures ${JSON.stringify(failures.slice(0, 5))}\n${d.tail()}`);
        const r = await handshake(ports.tls, { ca });
        handshakes++;
        if (!r.ok || !r.authorized) failures.push(describeShake(r));
        else if (r.serial !== serials.at(-1)) serials.push(r.serial!);
        await sleep(50);
      }
      const renewals = d.lines.filter(isMsg('acme: certificate renewed'));
      console.log(`renewal under traffic: ${handshakes} handshakes over ${Date.now() - started} ms, ${failures.length} failed, ${renewals.length} renewals, serials ${serials.join(' -> ')}`);
      expect(failures, d.tail()).toEqual([]);
      expect(new Set(serials).size).toBe(serials.length);
      expect(renewals.every((l) => l.name === NAME && l.keyType === 'ecdsa')).toBe(true);
      // Planned renewals (renewal_due), at two thirds of the lifetime or a little before.
      const renewing = d.lines.filter(isMsg('acme: renewing'));
      expect(renewing.length).toBeGreaterThanOrEqual(2);
      for (const l of renewing) expect(l.reason).toBe('renewal_due');
      expect(d.count((l) => l.reason === 'acme_order_failed')).toBe(0);
      expect(await d.metric('postern_acme_orders_total', { result: 'ok' })).toBeGreaterThanOrEqual(3);
    } finally {
      expect(await stopDaemon(d)).toBe(0);
    }
  }, 150_000);
});
