// DANE-safe key handling (issue 18) end to end, against the real daemon (`node bin/postern.js run
// -c FILE`, a child process, JSON log lines on stdout), real sockets on loopback and, for ACME, a
// real pebble:
//   1. certificates from files: a reload that changes the key of a dane: true MX listener is logged
//      (dane_key_changed, with the old and new TLSA values as openssl computes them) and counted
//      (postern_dane_key_changes_total{listener}); a renewal that keeps the key is not; a listener
//      without dane: true never alarms.
//   2. ACME + dane: renewals keep the key (the served SPKI SHA-256 stays, the serial changes); a
//      planned rollover (`postern acme rollover`) prints the next key's TLSA, `postern records`
//      and `postern check` show both, and after acme.rolloverDelay the next key is served.
//   3. `dane: true` on a submission or an imap listener is refused by `postern check`.
// The TLSA values are computed independently of postern: `openssl x509 -pubkey -noout | openssl
// pkey -pubin -outform der | sha256sum` of the certificate files, and of the certificate that
// `openssl s_client -starttls smtp` is served. Every wait is bounded and fails with the daemon's
// log; nothing asserts how fast anything is. Timings worth knowing are printed with console.log.
// @peculiar/x509 (a certificate for an existing key) resolves its providers through tsyringe.
import 'reflect-metadata';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import { createInterface } from 'node:readline';
import { createHash, createPublicKey, webcrypto, X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import * as x509 from '@peculiar/x509';
import { makePki, type TestPki } from '../helpers/certs.ts';
import type { TestCa } from '../helpers/pki.ts';
import { freePorts } from '../helpers/ports.ts';
import { startPebble, type Pebble } from '../helpers/pebble.ts';
import { BIN, buildOnce, connectPlain, GREETING, parseMetrics, startMailBackend, spawnDaemon, startTls, stopAll, sleep, type LogLine, type Sample } from '../hostile/harness.ts';
import type { RecordingBackend } from '../helpers/backend.ts';

const NAME = 'mail.example.org';
const OTHER = 'other.example.org';
const HEX64 = /^[0-9a-f]{64}$/;

// ---------------------------------------------------------------------------------------------
// Commands

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** A child process to completion without blocking this process (the daemon's log is read here). */
function run(cmd: string, args: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<Ran> {
  const started = Date.now();
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    p.on('error', (err) => (stderr += `spawn: ${err.message}\n`));
    p.stdin.on('error', () => undefined);
    p.stdin.end(opts.input ?? '');
    const timer = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, ms: Date.now() - started });
    });
  });
}

/** `postern <args>` (the compiled CLI, as an admin runs it). */
const postern = (args: string[]) => run(process.execPath, [BIN, ...args]);

/** The DANE 3 1 1 value of a certificate (the first of a PEM chain), as openssl computes it. */
async function opensslTlsaOfCert(pem: string): Promise<string> {
  const r = await run('sh', ['-c', 'openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum'], { input: pem });
  const hex = r.stdout.split(/\s/)[0] ?? '';
  if (r.code !== 0 || !HEX64.test(hex)) throw new Error(`openssl TLSA of a certificate: exit ${r.code}: ${r.stdout} ${r.stderr}`);
  return hex;
}

/** The same from a private key file (a rollover's next key has no certificate yet). */
async function opensslTlsaOfKeyFile(file: string): Promise<string> {
  const r = await run('sh', ['-c', `openssl pkey -in '${file}' -pubout -outform der | sha256sum`]);
  const hex = r.stdout.split(/\s/)[0] ?? '';
  if (r.code !== 0 || !HEX64.test(hex)) throw new Error(`openssl TLSA of ${file}: exit ${r.code}: ${r.stdout} ${r.stderr}`);
  return hex;
}

/**
 * What `openssl s_client -starttls smtp` is served (chain verified against `caFile`, hostname
 * checked), and the TLSA value of that certificate by the openssl pipeline.
 */
async function sClientTlsa(port: number, caFile: string, servername = NAME): Promise<{ tlsa: string; serial: string; out: string }> {
  const r = await run('openssl', ['s_client', '-starttls', 'smtp', '-connect', `127.0.0.1:${port}`, '-servername', servername, '-verify_hostname', servername, '-verify_return_error', '-CAfile', caFile], { timeoutMs: 20_000 });
  const pem = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(r.stdout)?.[0];
  if (r.code !== 0 || !pem) throw new Error(`openssl s_client -starttls smtp: exit ${r.code}\n${r.stdout}\n${r.stderr}`);
  return { tlsa: await opensslTlsaOfCert(pem), serial: new X509Certificate(pem).serialNumber, out: r.stdout + r.stderr };
}

// ---------------------------------------------------------------------------------------------
// Certificates and the STARTTLS client

const spki256 = (cert: X509Certificate) => createHash('sha256').update(cert.publicKey.export({ type: 'spki', format: 'der' })).digest('hex');

interface Served {
  serial: string;
  fingerprint: string;
  /** SPKI SHA-256 (Node's reading; the openssl pipeline is used where a value is asserted). */
  tlsa: string;
}

/** SMTP: greeting, EHLO, STARTTLS, then a TLS handshake verified against `ca` for `servername`. */
async function starttlsServed(port: number, ca: string, servername = NAME): Promise<Served> {
  const c = await connectPlain(port);
  try {
    await c.reader.readUntil(GREETING.smtp, 10_000);
    c.socket.write('EHLO dane-test.example\r\n');
    await c.reader.readUntil(/^250 [^\r\n]*\r\n/m, 10_000);
    c.socket.write('STARTTLS\r\n');
    const reply = await c.reader.readUntil(/^\d{3} [^\r\n]*\r\n/m, 10_000);
    if (!reply.startsWith('220')) throw new Error(`STARTTLS answered ${JSON.stringify(reply)}`);
    c.reader.detach();
    const s = await startTls(c.socket, { servername, ca });
    const cert = new X509Certificate(s.getPeerCertificate().raw);
    s.destroy();
    return { serial: cert.serialNumber, fingerprint: cert.fingerprint256, tlsa: spki256(cert) };
  } finally {
    c.socket.destroy();
  }
}

/** null instead of an error: before the first certificate, or while one is being replaced. */
const tryServed = (port: number, ca: string, servername = NAME) => starttlsServed(port, ca, servername).catch(() => null);

/** A new certificate for an existing key, from the test CA: a renewal that keeps the key. */
async function reissueSameKey(ca: TestCa, keyPem: string, names: string[]): Promise<string> {
  const spki = createPublicKey(keyPem).export({ type: 'spki', format: 'der' });
  const publicKey = await webcrypto.subtle.importKey('spki', spki, { name: 'ECDSA', namedCurve: 'P-256' }, true, ['verify']);
  const cert = await x509.X509CertificateGenerator.create({
    subject: `CN=${names[0]}`,
    issuer: ca.cert.subject,
    publicKey: publicKey as unknown as CryptoKey,
    signingKey: ca.keys.privateKey,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' } as EcdsaParams,
    notBefore: new Date(Date.now() - 86_400_000),
    notAfter: new Date(Date.now() + 90 * 86_400_000),
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(names.map((n) => ({ type: 'dns' as const, value: n }))),
      await x509.AuthorityKeyIdentifierExtension.create(ca.keys.publicKey),
    ],
  });
  return `${cert.toString('pem')}\n${ca.certPem}\n`;
}

/** Replaces a certificate and its key as a deployment tool does: each file written aside, then renamed. */
function replacePair(certFile: string, keyFile: string, chainPem: string, keyPem: string) {
  writeFileSync(`${certFile}.new`, chainPem);
  writeFileSync(`${keyFile}.new`, keyPem, { mode: 0o600 });
  renameSync(`${keyFile}.new`, keyFile);
  renameSync(`${certFile}.new`, certFile);
}

// ---------------------------------------------------------------------------------------------
// The daemon

/** What the tests need of a running `postern run` (the hostile harness's SpawnedPostern is one). */
interface Postern {
  child: ChildProcess;
  file: string;
  logs: LogLine[];
  stderr(): string;
  port(listener: string): number;
  metrics(): Promise<Sample[]>;
  /** Sum of the samples named `name` whose labels include `labels` (0 when there is none). */
  metric(name: string, labels?: Record<string, string>): Promise<number>;
  stop(): Promise<number | null>;
}

/**
 * `node bin/postern.js run -c FILE` with the YAML given (the harness's spawnDaemon always writes
 * a certificates list, which a configuration that only uses ACME must leave out); resolves once
 * every listener and the admin endpoint listen.
 */
async function runYaml(file: string, yaml: string, ports: Record<string, number>, adminPort: number): Promise<Postern> {
  writeFileSync(file, yaml);
  const child = spawn(process.execPath, [BIN, 'run', '-c', file], { cwd: join(file, '..'), stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((r) => child.once('close', (code) => r(code)));
  const logs: LogLine[] = [];
  let stderr = '';
  createInterface({ input: child.stdout! }).on('line', (l) => {
    try {
      logs.push(JSON.parse(l) as LogLine);
    } catch {
      logs.push({ level: 'raw', msg: l });
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (x: string) => (stderr += x));
  const metrics = () =>
    new Promise<Sample[]>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port: adminPort, path: '/metrics', agent: false, timeout: 10_000 }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve(parseMetrics(body)));
        res.on('error', reject);
      }).on('error', reject);
    });
  const p: Postern = {
    child,
    file,
    logs,
    stderr: () => stderr,
    port: (name) => ports[name] ?? Number.NaN,
    metrics,
    metric: async (name, labels = {}) => (await metrics()).filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((a, s) => a + s.value, 0),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const code = await Promise.race([exited, sleep(15_000).then(() => 'timeout' as const)]);
      if (code !== 'timeout') return code;
      child.kill('SIGKILL');
      await exited;
      throw new Error(`postern did not exit within 15 s of SIGTERM\n${tail(p)}`);
    },
  };
  spawned.add(p);
  for (const name of Object.keys(ports)) await until(p, `listener ${name} listening`, () => logs.some((l) => l.msg === 'listening' && l.listener === name), 20_000);
  await until(p, 'the admin endpoint', () => logs.some((l) => l.msg === 'admin endpoint listening'), 20_000);
  return p;
}

const spawned = new Set<Postern>();

// ---------------------------------------------------------------------------------------------
// Waiting on the daemon

function tail(d: Postern, n = 60): string {
  return `--- last ${Math.min(n, d.logs.length)} of ${d.logs.length} log lines ---\n${d.logs.slice(-n).map((l) => JSON.stringify(l)).join('\n')}\n--- stderr ---\n${d.stderr().slice(-3000)}`;
}

/** Polls until `check` gives a value; throws with the log tail after `timeoutMs`. */
async function until<T>(d: Postern, what: string, check: () => T | null | undefined | false | Promise<T | null | undefined | false>, timeoutMs = 30_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (d.child.exitCode !== null || d.child.signalCode !== null) throw new Error(`the daemon exited (${d.child.exitCode ?? d.child.signalCode}) while waiting for ${what}\n${tail(d)}`);
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${tail(d)}`);
    await sleep(everyMs);
  }
}

const since = (d: Postern, from: number, pred: (l: LogLine) => boolean) => d.logs.slice(from).filter(pred);
const isMsg = (msg: string) => (l: LogLine) => l.msg === msg;
const daneChanged = (l: LogLine) => l.reason === 'dane_key_changed';

/** The sample's value, or null when the series does not exist (a labelled counter never incremented). */
async function series(d: Postern, name: string, labels: Record<string, string>): Promise<number | null> {
  return (await d.metrics()).find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value ?? null;
}

let work: string;

beforeAll(() => {
  buildOnce();
  work = mkdtempSync(join(tmpdir(), 'postern-dane-'));
}, 180_000);

afterAll(async () => {
  for (const p of spawned) await p.stop().catch(() => undefined);
  await stopAll();
  if (work) rmSync(work, { recursive: true, force: true });
}, 60_000);

// ---------------------------------------------------------------------------------------------

describe('certificates from files, an MX listener with dane: true', () => {
  let pki: TestPki;
  let d: Postern;
  let dir: string;
  const files = { mailCert: '', mailKey: '', otherCert: '', otherKey: '' };
  /** The current key of each name (PEM). */
  const keys = { mail: '', other: '' };

  beforeAll(async () => {
    pki = await makePki();
    dir = join(work, 'files');
    mkdirSync(dir);
    const mail = await pki.issue('mail', { names: [NAME] });
    const other = await pki.issue('other', { names: [OTHER] });
    Object.assign(files, { mailCert: join(dir, 'mail.pem'), mailKey: join(dir, 'mail.key'), otherCert: join(dir, 'other.pem'), otherKey: join(dir, 'other.key') });
    replacePair(files.mailCert, files.mailKey, readFileSync(mail.cert, 'utf8'), mail.keyPem);
    replacePair(files.otherCert, files.otherKey, readFileSync(other.cert, 'utf8'), other.keyPem);
    keys.mail = mail.keyPem;
    keys.other = other.keyPem;
    d = await spawnDaemon({
      dir,
      level: 'info',
      top: { backendChecks: { interval: 'off' } },
      certs: [
        { cert: files.mailCert, key: files.mailKey },
        { cert: files.otherCert, key: files.otherKey },
      ],
      listeners: [
        { name: 'mx', protocol: 'smtp', role: 'mx', tls: 'starttls', hostname: NAME, extra: { dane: true } },
        // Another MX without dane: its key may change without an alarm.
        { name: 'mx-plain', protocol: 'smtp', role: 'mx', tls: 'starttls', hostname: OTHER },
      ],
    });
  }, 60_000);

  /** A pair written, the reload it causes waited for, and the new certificate served on `listener`. */
  async function deploy(what: 'mail' | 'other', chainPem: string, keyPem: string): Promise<{ from: number; served: Served }> {
    const from = d.logs.length;
    const listener = what === 'mail' ? 'mx' : 'mx-plain';
    const servername = what === 'mail' ? NAME : OTHER;
    const want = new X509Certificate(chainPem).serialNumber;
    replacePair(what === 'mail' ? files.mailCert : files.otherCert, what === 'mail' ? files.mailKey : files.otherKey, chainPem, keyPem);
    keys[what] = keyPem;
    // The file watch (no SIGHUP): one reload after the folder has been quiet for a second.
    await until(d, `a reload after the ${what} files changed`, () => since(d, from, (l) => l.msg === 'reloaded' && l.trigger === 'watch').length > 0, 30_000);
    const served = await until(d, `the new ${what} certificate served after STARTTLS`, async () => {
      const s = await tryServed(d.port(listener), pki.ca.certPem, servername);
      return s?.serial === want ? s : null;
    }, 20_000, 200);
    expect(since(d, from, (l) => l.reason === 'reload_failed'), tail(d)).toEqual([]);
    return { from, served };
  }

  it('serves the configured key; the TLSA value openssl computes is the served one; no alarm at start', async () => {
    const expected = await opensslTlsaOfCert(readFileSync(files.mailCert, 'utf8'));
    const s = await sClientTlsa(d.port('mx'), pki.caFile);
    expect(s.tlsa).toBe(expected);
    expect((await starttlsServed(d.port('mx'), pki.ca.certPem)).tlsa).toBe(expected);
    expect(d.logs.filter(daneChanged)).toEqual([]);
    expect(await series(d, 'postern_dane_key_changes_total', { listener: 'mx' })).toBe(0);
    // Only dane: true listeners have the series.
    expect(await series(d, 'postern_dane_key_changes_total', { listener: 'mx-plain' })).toBeNull();
  });

  it('a renewal that keeps the key: reloaded and served, no dane_key_changed, the counter stays 0', async () => {
    const before = await opensslTlsaOfCert(readFileSync(files.mailCert, 'utf8'));
    const oldSerial = new X509Certificate(readFileSync(files.mailCert, 'utf8')).serialNumber;
    const chain = await reissueSameKey(pki.ca, keys.mail, [NAME]);
    const { from, served } = await deploy('mail', chain, keys.mail);
    expect(served.serial).not.toBe(oldSerial);
    const s = await sClientTlsa(d.port('mx'), pki.caFile);
    expect(s.serial).toBe(served.serial);
    expect(s.tlsa).toBe(before);
    expect(await opensslTlsaOfCert(chain)).toBe(before);
    expect(since(d, from, daneChanged), tail(d)).toEqual([]);
    expect(d.logs.filter(daneChanged)).toEqual([]);
    // The series exists from the start, at 0 (an alert on its increase would miss one born at 1).
    expect(await series(d, 'postern_dane_key_changes_total', { listener: 'mx' })).toBe(0);
  }, 60_000);

  it('a new key for the same name: reloaded and served, dane_key_changed with the old and new TLSA values, counted once', async () => {
    const oldTlsa = await opensslTlsaOfCert(readFileSync(files.mailCert, 'utf8'));
    const next = await pki.issue('mail-newkey', { names: [NAME] });
    const chain = readFileSync(next.cert, 'utf8');
    const newTlsa = await opensslTlsaOfCert(chain);
    expect(newTlsa).not.toBe(oldTlsa);

    const { from, served } = await deploy('mail', chain, next.keyPem);
    const s = await sClientTlsa(d.port('mx'), pki.caFile);
    expect(s.serial).toBe(served.serial);
    expect(s.tlsa).toBe(newTlsa);

    const alarms = since(d, from, daneChanged);
    expect(alarms, tail(d)).toHaveLength(1);
    expect(alarms[0]).toMatchObject({ level: 'error', hostname: NAME, removed: [`3 1 1 ${oldTlsa}`], added: [`3 1 1 ${newTlsa}`] });
    expect(alarms[0]!.msg).toContain(`_25._tcp.${NAME}. TLSA 3 1 1 ${newTlsa}`);
    // The alarm comes with the reload, before the line that says it is done.
    expect(d.logs.indexOf(alarms[0]!)).toBeLessThan(d.logs.indexOf(since(d, from, (l) => l.msg === 'reloaded')[0]!));
    expect(await series(d, 'postern_dane_key_changes_total', { listener: 'mx' })).toBe(1);
    expect(await d.metric('postern_dane_key_changes_total')).toBe(1);
    console.log(`dane_key_changed: ${JSON.stringify(alarms[0])}`);
  }, 60_000);

  it('a key change on the listener without dane: true: reloaded and served, no alarm, not counted', async () => {
    const oldTlsa = await opensslTlsaOfCert(readFileSync(files.otherCert, 'utf8'));
    const next = await pki.issue('other-newkey', { names: [OTHER] });
    const chain = readFileSync(next.cert, 'utf8');
    const { from, served } = await deploy('other', chain, next.keyPem);
    expect(served.tlsa).toBe(await opensslTlsaOfCert(chain));
    expect(served.tlsa).not.toBe(oldTlsa);
    expect(since(d, from, daneChanged), tail(d)).toEqual([]);
    expect(await series(d, 'postern_dane_key_changes_total', { listener: 'mx-plain' })).toBeNull();
    // Only the earlier change of the dane listener, still.
    expect(await d.metric('postern_dane_key_changes_total')).toBe(1);
    expect(d.logs.filter(daneChanged)).toHaveLength(1);
  }, 60_000);
});

// ---------------------------------------------------------------------------------------------

describe('ACME + dane: the key is kept across renewals, and changes only by a planned rollover', () => {
  const VALIDITY = 30;
  let pebble: Pebble;
  let d: Postern;
  let dir: string;
  let file: string;
  let rootsFile: string;
  let roots: string;
  let backend: RecordingBackend;
  let mx: RecordingBackend;
  const live = () => join(dir, 'acme', 'live', NAME);
  /** The TLSA of the key served after the renewals (the one the rollover replaces). */
  let keptTlsa = '';
  /** The TLSA of the key the rollover put in service. */
  let rolledTlsa = '';

  /** The TLSA lines of `records` or `check` output: exactly `current` and `next`, the latter noted as the NEXT key. */
  function expectBoth(out: string, current: string, next: string) {
    const tlsa = [...out.matchAll(/^\s*_25\._tcp\.(\S+)\. IN TLSA 3 1 1 ([0-9a-f]{64})\s+; (.*)$/gm)].map((m) => ({ host: m[1], value: m[2], note: m[3] }));
    expect(tlsa.map((t) => t.value).sort(), out).toEqual([current, next].sort());
    expect(tlsa.every((t) => t.host === NAME), out).toBe(true);
    expect(tlsa.find((t) => t.value === next)!.note, out).toMatch(/NEXT key/);
    expect(tlsa.find((t) => t.value === current)!.note, out).not.toMatch(/NEXT/);
  }

  beforeAll(async () => {
    dir = join(work, 'acme');
    mkdirSync(join(dir, 'pebble'), { recursive: true });
    const [httpPort, tlsPort] = (await freePorts(2)) as [number, number];
    pebble = await startPebble({ dir: join(dir, 'pebble'), httpPort, tlsPort, validitySeconds: VALIDITY });
    backend = await startMailBackend('imap', { proxy: false });
    mx = await startMailBackend('smtp');
    const [mxPort, adminPort] = (await freePorts(2)) as [number, number];
    const yaml = `log: { level: info }
admin: { listen: "127.0.0.1:${adminPort}" }
backendChecks: { interval: off }
shutdown: { drainTimeout: 2s }
acme:
  directory: ${pebble.directoryUrl}
  email: postmaster@example.org
  termsOfServiceAgreed: true
  storage: ${join(dir, 'acme')}
  caCertificates: ${pebble.caCertFile}
  keyTypes: [ecdsa]
  challenge: tls-alpn-01
  retry: { min: 1s, max: 4s }
  rolloverDelay: 3s
listeners:
  # pebble's validation authority connects here (TLS-ALPN-01).
  - name: imaps
    listen: "127.0.0.1:${tlsPort}"
    protocol: imap
    tls: implicit
    hostname: ${NAME}
    backend: { address: "127.0.0.1:${backend.port}", proxyProtocol: none }
  - name: mx
    listen: "127.0.0.1:${mxPort}"
    protocol: smtp
    role: mx
    tls: starttls
    hostname: ${NAME}
    dane: true
    backend: { address: "127.0.0.1:${mx.port}", proxyProtocol: v2 }
`;
    d = await runYaml(join(dir, 'postern.yaml'), yaml, { imaps: tlsPort, mx: mxPort }, adminPort);
    file = d.file;
  }, 60_000);

  afterAll(async () => {
    await d?.stop();
    await pebble?.stop();
    await backend?.close();
    await mx?.close();
  }, 60_000);

  it('first issuance, then 2 renewals at two thirds of a 30 s lifetime: the served key (TLSA) stays, the serial changes, no dane_key_changed', async () => {
    const started = Date.now();
    await until(d, 'acme: certificate issued', () => d.logs.some(isMsg('acme: certificate issued')), 60_000);
    roots = await pebble.issuerRoots();
    rootsFile = join(dir, 'roots.pem');
    writeFileSync(rootsFile, roots);
    const first = await until(d, 'the first certificate served after STARTTLS', () => tryServed(d.port('mx'), roots), 30_000, 200);
    console.log(`acme+dane: first certificate served after STARTTLS ${Date.now() - started} ms after the test started`);
    const keyPem = readFileSync(join(live(), 'privkey.pem'), 'utf8');
    const firstTlsa = await opensslTlsaOfKeyFile(join(live(), 'privkey.pem'));
    expect(first.tlsa).toBe(firstTlsa);
    expect((await sClientTlsa(d.port('mx'), rootsFile)).tlsa).toBe(firstTlsa);

    // Watch the MX listener through both renewals.
    const seen: Served[] = [first];
    const deadline = Date.now() + 3 * VALIDITY * 1000;
    for (;;) {
      const renewed = d.logs.filter(isMsg('acme: certificate renewed')).length;
      if (renewed >= 2 && seen.length >= 3) break;
      if (Date.now() > deadline) throw new Error(`${renewed} renewals logged, serials served ${JSON.stringify(seen.map((s) => s.serial))}\n${tail(d)}`);
      const s = await tryServed(d.port('mx'), roots);
      if (s && s.serial !== seen.at(-1)!.serial) seen.push(s);
      await sleep(300);
    }
    console.log(`acme+dane: ${seen.length} certificates served over ${Date.now() - started} ms: ${seen.map((s) => `${s.serial.slice(0, 8)}/${s.tlsa.slice(0, 12)}`).join(' -> ')}`);
    expect(new Set(seen.map((s) => s.serial)).size).toBe(seen.length);
    expect(seen.map((s) => s.tlsa)).toEqual(seen.map(() => firstTlsa));
    // openssl agrees on the certificate served now (the last renewal's).
    const now = await sClientTlsa(d.port('mx'), rootsFile);
    expect(now.tlsa).toBe(firstTlsa);
    expect(now.serial).toBe(seen.at(-1)!.serial);
    // The same key file, the same key: written again with each renewal, never replaced.
    expect(readFileSync(join(live(), 'privkey.pem'), 'utf8')).toBe(keyPem);
    expect(statSync(join(live(), 'privkey.pem')).mode & 0o777).toBe(0o600);
    // Planned renewals, nothing else: no alarm, no failure, no rollover.
    expect(d.logs.filter(isMsg('acme: renewing')).every((l) => l.reason === 'renewal_due')).toBe(true);
    expect(d.logs.filter(daneChanged), tail(d)).toEqual([]);
    expect(d.logs.filter((l) => l.reason === 'acme_order_failed')).toEqual([]);
    expect(await series(d, 'postern_dane_key_changes_total', { listener: 'mx' })).toBe(0);
    expect(existsSync(join(live(), 'next-privkey.pem'))).toBe(false);
    keptTlsa = firstTlsa;
  }, 120_000);

  it('postern acme rollover prints the next TLSA, postern records shows both, and after rolloverDelay (3 s) the next key is served', async () => {
    expect(keptTlsa, 'needs the renewals test').toMatch(HEX64);
    const from = d.logs.length;
    const ordersBefore = await pebble.orders();

    const rolled = await postern(['acme', 'rollover', '--name', NAME, '-c', file]);
    const rolledAt = Date.now();
    expect(rolled.code, rolled.stdout + rolled.stderr).toBe(0);
    // records right away: the switch is 3 s after the key was made. (check, which prints the same
    // records, is run on a pending rollover without this race in the next test.)
    const records = await postern(['records', '-c', file]);
    const afterCli = Date.now();
    const switchedBeforeCli = since(d, from, (l) => l.reason === 'dane_rollover_done').length > 0;
    console.log(`rollover: postern acme rollover took ${rolled.ms} ms; records ${records.ms} ms after it (switch already done by then: ${switchedBeforeCli})\n${rolled.stdout}`);

    const printed = new RegExp(`^_25\\._tcp\\.${NAME.replace(/\./g, '\\.')}\\. IN TLSA 3 1 1 ([0-9a-f]{64})\\s+; ecdsa, in service from (\\S+)$`, 'm').exec(rolled.stdout);
    expect(printed, rolled.stdout).not.toBeNull();
    const nextTlsa = printed![1]!;
    expect(nextTlsa).not.toBe(keptTlsa);
    expect(Date.parse(printed![2]!)).toBeGreaterThan(rolledAt - 10_000);

    // The planned rollover in the log, with the record that was printed.
    const planned = since(d, from, (l) => l.reason === 'dane_rollover_planned');
    expect(planned).toHaveLength(1);
    expect(planned[0]).toMatchObject({ level: 'warn', name: NAME, keyType: 'ecdsa', tlsa: `_25._tcp.${NAME}. IN TLSA 3 1 1 ${nextTlsa}` });

    // postern records: the key in service and the next one.
    expect(records.code, records.stdout + records.stderr).toBe(0);
    expect(switchedBeforeCli, `the switch came before records had run (${afterCli - rolledAt} ms after the rollover)\n${tail(d)}`).toBe(false);
    expectBoth(records.stdout, keptTlsa, nextTlsa);

    // The next key, beside the current one until the switch: 0600, and its TLSA by openssl.
    // (Read only if still there: the switch may already have taken it.)
    const nextFile = join(live(), 'next-privkey.pem');
    if (!switchedBeforeCli && existsSync(nextFile)) {
      expect(statSync(nextFile).mode & 0o777).toBe(0o600);
      expect(await opensslTlsaOfKeyFile(nextFile)).toBe(nextTlsa);
    }

    // The switch: a renewal with the next key, then the next key served.
    const done = await until(d, 'dane_rollover_done', () => since(d, from, (l) => l.reason === 'dane_rollover_done')[0], 40_000);
    expect(done).toMatchObject({ level: 'warn', name: NAME, keyType: 'ecdsa', tlsa: `_25._tcp.${NAME}. IN TLSA 3 1 1 ${nextTlsa}` });
    const served = await until(d, 'the next key served after STARTTLS', async () => {
      const s = await tryServed(d.port('mx'), roots);
      return s?.tlsa === nextTlsa ? s : null;
    }, 30_000, 200);
    const switchedAfterMs = Date.parse(done.time as string) - rolledAt;
    const s = await sClientTlsa(d.port('mx'), rootsFile);
    expect(s.tlsa).toBe(nextTlsa);
    expect(s.serial).toBe(served.serial);
    expect(existsSync(nextFile)).toBe(false);
    expect(await opensslTlsaOfKeyFile(join(live(), 'privkey.pem'))).toBe(nextTlsa);
    expect(statSync(join(live(), 'privkey.pem')).mode & 0o777).toBe(0o600);

    // The reload that put the next key in service says so, naming both keys: a planned key
    // change (dane_key_rolled, a warning), not the alarm, and it is not counted.
    await until(d, 'the reload after the switch', () => d.logs.slice(d.logs.indexOf(done)).some((l) => l.msg === 'reloaded'), 20_000);
    const alarms = since(d, from, daneChanged);
    const rolledLines = since(d, from, (l) => l.reason === 'dane_key_rolled');
    const renewals = since(d, from, isMsg('acme: renewing'));
    const orders = (await pebble.orders()) - ordersBefore;
    console.log(
      `rollover: switched ${switchedAfterMs} ms after the rollover command returned; ${renewals.length} renewal(s) since the rollover (${renewals.map((l) => l.time).join(', ')}), ${orders} order(s) at pebble; ` +
        `dane_key_rolled ${rolledLines.length}x: ${JSON.stringify(rolledLines)}`,
    );
    expect(alarms, tail(d)).toEqual([]);
    expect(rolledLines, tail(d)).toHaveLength(1);
    expect(rolledLines[0]).toMatchObject({ level: 'warn', hostname: NAME, removed: [`3 1 1 ${keptTlsa}`], added: [`3 1 1 ${nextTlsa}`] });
    // One order for the switch: the renewal at switchAt already uses the next key (before the fix
    // in AcmeManager.rollover(), a key written a few ms after the timer's start cost an order with
    // the old key first; always so with RSA keys).
    expect(renewals.filter((l) => d.logs.indexOf(l) < d.logs.indexOf(done)), tail(d)).toHaveLength(1);
    expect(Date.parse(renewals[0]!.time as string)).toBeGreaterThanOrEqual(Date.parse(printed![2]!) - 1000);
    expect(await series(d, 'postern_dane_key_changes_total', { listener: 'mx' })).toBe(0);
    expect(since(d, from, (l) => l.reason === 'acme_order_failed')).toEqual([]);

    // Afterwards: records shows the key in service only; no next key any more.
    const after = await postern(['records', '-c', file]);
    expect(after.code).toBe(0);
    const values = [...after.stdout.matchAll(/IN TLSA 3 1 1 ([0-9a-f]{64})/g)].map((m) => m[1]);
    expect(values, after.stdout).toEqual([nextTlsa]);
    expect(after.stdout).not.toMatch(/NEXT/);
    rolledTlsa = nextTlsa;
  }, 90_000);

  it('postern check (and records) show a pending rollover: the key in service and the next key', async () => {
    expect(rolledTlsa, 'needs the rollover test').toMatch(HEX64);
    // No daemon, so no switch while the commands run: a next key as the rollover leaves it.
    expect(await d.stop()).toBe(0);
    const nextFile = join(live(), 'next-privkey.pem');
    const gen = await run('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', nextFile]);
    expect(gen.code, gen.stderr).toBe(0);
    const nextTlsa = await opensslTlsaOfKeyFile(nextFile);
    const [check, records] = await Promise.all([postern(['check', '-c', file]), postern(['records', '-c', file])]);
    expect(check.code, check.stdout + check.stderr).toBe(0);
    expect(records.code, records.stdout + records.stderr).toBe(0);
    expect(check.stdout).toMatch(/DNS records to publish/);
    expectBoth(check.stdout, rolledTlsa, nextTlsa);
    expectBoth(records.stdout, rolledTlsa, nextTlsa);
  }, 60_000);
});

// ---------------------------------------------------------------------------------------------

describe('dane: true on a listener that is not role: mx', () => {
  let pki: TestPki;
  let dir: string;
  let cert: { cert: string; key: string };

  beforeAll(async () => {
    pki = await makePki();
    dir = join(work, 'check');
    mkdirSync(dir);
    const c = await pki.issue('mail', { names: [NAME] });
    cert = { cert: c.cert, key: c.key };
  });

  function config(listeners: Array<Record<string, unknown>>): string {
    const f = join(dir, `check-${Math.random().toString(36).slice(2, 8)}.yaml`);
    const backend = { address: '127.0.0.1:10025', proxyProtocol: 'none' };
    writeFileSync(f, stringify({ certificates: [cert], listeners: listeners.map((l, i) => ({ listen: `127.0.0.1:${20025 + i}`, hostname: NAME, backend, ...l })) }));
    return f;
  }

  it('postern check refuses it on a submission and on an imap listener (exit 1, listeners[i].dane); the same on an MX passes', async () => {
    const bad = config([
      { name: 'submission', protocol: 'smtp', role: 'submission', tls: 'starttls', dane: true },
      { name: 'imaps', protocol: 'imap', tls: 'implicit', dane: true },
      { name: 'mx', protocol: 'smtp', role: 'mx', tls: 'starttls', dane: true },
    ]);
    const r = await postern(['check', '-c', bad]);
    const out = r.stdout + r.stderr;
    expect(r.code, out).toBe(1);
    expect(out).toMatch(/listeners\[0\]\.dane: dane applies to role: mx listeners only/);
    expect(out).toMatch(/listeners\[1\]\.dane: dane applies to role: mx listeners only/);
    expect(out).not.toMatch(/listeners\[2\]\.dane/);
    console.log(`check with dane on submission and imap:\n${out}`);

    // Each alone too, and the MX alone is fine.
    for (const [i, l] of [
      [0, { name: 'submission', protocol: 'smtp', role: 'submission', tls: 'implicit', dane: true }],
      [0, { name: 'imap', protocol: 'imap', tls: 'starttls', dane: true }],
    ] as const) {
      const one = await postern(['check', '-c', config([l])]);
      expect(one.code, one.stdout + one.stderr).toBe(1);
      expect(one.stdout + one.stderr).toMatch(new RegExp(`listeners\\[${i}\\]\\.dane: `));
    }
    const ok = await postern(['check', '-c', config([{ name: 'mx', protocol: 'smtp', role: 'mx', tls: 'starttls', dane: true }])]);
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(new RegExp(`_25\\._tcp\\.${NAME.replace(/\./g, '\\.')}\\. IN TLSA 3 1 1 ${await opensslTlsaOfCert(readFileSync(cert.cert, 'utf8'))}`));
  }, 60_000);
});
