// Built-in ACME with the real daemon (`node bin/postern.js run`) against a real pebble:
//  - workers: 2 with TLS-ALPN-01: only the supervisor talks to the CA (its pid on every ordering
//    and issuance line, exactly one pebble order per certificate), the validations are answered by
//    the workers (the supervisor fans the answer out over cluster IPC and waits for both acks), and
//    the certificate, then a forced renewal, is served by BOTH workers (checked by each verified
//    handshake's summary line pid);
//  - External Account Binding: a CA that requires it refuses postern without one (logged
//    acme_order_failed naming externalAccountBinding, no certificate written), and with the right
//    kid and key postern gets its certificate.
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { buildOnce } from '../helpers/build.ts';
import { startBackend, type RecordingBackend } from '../helpers/backend.ts';
import { freePorts } from '../helpers/ports.ts';
import { startPebble, type Pebble } from '../helpers/pebble.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const BIN = join(ROOT, 'bin', 'postern.js');
const NAME = 'mail.example.org';
const KEY_TYPES = ['ecdsa', 'rsa'] as const;

type Line = Record<string, unknown> & { msg: string; pid: number };

interface Daemon {
  child: ChildProcess;
  lines: Line[];
  stderr(): string;
  waitFor(pred: (lines: Line[]) => boolean, what: string, timeoutMs?: number): Promise<void>;
  stop(): Promise<number | null>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const children = new Set<ChildProcess>();
const cleanups: Array<() => Promise<unknown>> = [];
let dir: string;

function stopChild(c: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
  if (c.exitCode !== null || c.signalCode !== null) return Promise.resolve(c.exitCode);
  return new Promise((resolve) => {
    const hard = setTimeout(() => c.kill('SIGKILL'), 8000);
    c.once('exit', (code) => {
      clearTimeout(hard);
      children.delete(c);
      resolve(code);
    });
    c.kill(signal);
  });
}

function spawnPostern(name: string, yaml: string): Daemon {
  const file = join(dir, `${name}.yaml`);
  writeFileSync(file, yaml);
  const child = spawn(process.execPath, [BIN, 'run', '-c', file], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  const lines: Line[] = [];
  // An assertion that fails shows what the daemon said.
  onTestFailed(() => console.log(`--- ${name}: log ---\n${lines.map((l) => JSON.stringify(l)).join('\n')}\n--- stderr ---\n${err}`));
  let err = '';
  let partial = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => {
    const parts = (partial + d).split('\n');
    partial = parts.pop()!;
    for (const l of parts) {
      if (!l.trim()) continue;
      try {
        lines.push(JSON.parse(l) as Line);
      } catch {
        lines.push({ msg: `raw: ${l}`, pid: 0 });
      }
    }
  });
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => (err += d));
  return {
    child,
    lines,
    stderr: () => err,
    async waitFor(pred, what, timeoutMs = 20_000) {
      const until = Date.now() + timeoutMs;
      while (!pred(lines)) {
        if (Date.now() > until || child.exitCode !== null) {
          throw new Error(`timed out waiting for ${what} (exit ${child.exitCode}); stderr: ${err}\nlog:\n${lines.map((l) => JSON.stringify(l)).join('\n')}`);
        }
        await sleep(50);
      }
    },
    stop: () => stopChild(child),
  };
}

function config(o: { adminPort: number; tlsPort: number; backendPort: number; storage: string; pebble: Pebble; workers?: number; eab?: { kid: string; hmacKey: string } }) {
  return `log: { level: info }
admin: { listen: "127.0.0.1:${o.adminPort}" }
workers: ${o.workers ?? 1}
backendChecks: { interval: off }
acme:
  directory: ${o.pebble.directoryUrl}
  email: postmaster@example.org
  termsOfServiceAgreed: true
  storage: ${o.storage}
  caCertificates: ${o.pebble.caCertFile}
  challenge: tls-alpn-01
  keyTypes: [${KEY_TYPES.join(', ')}]
  retry: { min: 1s, max: 4s }
${o.eab ? `  externalAccountBinding: { kid: ${o.eab.kid}, hmacKey: ${o.eab.hmacKey} }\n` : ''}listeners:
  - name: imaps
    listen: "127.0.0.1:${o.tlsPort}"
    protocol: imap
    tls: implicit
    hostname: ${NAME}
    backend: { address: "127.0.0.1:${o.backendPort}", proxyProtocol: none }
`;
}

interface Shake {
  authorized: boolean;
  error: string | null;
  serial: string | null;
  localPort: number | null;
}

/** A TLS client verifying against `ca` (pebble's roots): the result and the client port, to find the summary line. */
function handshake(port: number, ca: string): Promise<Shake> {
  return new Promise((resolve) => {
    let localPort: number | null = null;
    const s = tls.connect({ port, host: '127.0.0.1', servername: NAME, ca, rejectUnauthorized: false });
    s.once('connect', () => (localPort = s.localPort ?? null));
    s.once('secureConnect', () => {
      const serial = s.getPeerCertificate()?.serialNumber ?? null;
      const r = { authorized: s.authorized, error: s.authorizationError ? String(s.authorizationError) : null, serial, localPort };
      // end(), not destroy(): our Finished must leave before the socket closes.
      s.end();
      resolve(r);
    });
    s.on('error', (e) => resolve({ authorized: false, error: e.message, serial: null, localPort }));
    s.setTimeout(5000, () => {
      s.destroy();
      resolve({ authorized: false, error: 'timeout', serial: null, localPort });
    });
  });
}

/** The pid of the process that served the connection from `localPort` (its summary line), within a bound. */
async function servedBy(d: Daemon, localPort: number): Promise<number> {
  const until = Date.now() + 5000;
  for (;;) {
    const l = d.lines.find((x) => x.msg === 'connection closed' && x.clientPort === localPort);
    if (l) return l.pid;
    if (Date.now() > until) throw new Error(`no summary line for client port ${localPort}`);
    await sleep(25);
  }
}

/**
 * Handshakes until every worker pid has served a verified handshake presenting a serial `accept`s,
 * at most `max`. Returns the serials seen per pid (verified ones only) and the number of attempts.
 */
async function untilServedByAll(d: Daemon, port: number, workerPids: number[], accept: (serial: string) => boolean, max = 60) {
  const ca = await pebble.issuerRoots();
  const seen = new Map<number, Set<string>>();
  const good = () => workerPids.every((p) => [...(seen.get(p) ?? [])].some(accept));
  let attempts = 0;
  const failures: string[] = [];
  while (!good() && attempts < max) {
    attempts++;
    const r = await handshake(port, ca);
    if (!r.authorized || !r.serial || r.localPort === null) {
      failures.push(r.error ?? 'not authorized');
      await sleep(100);
      continue;
    }
    const pid = await servedBy(d, r.localPort);
    if (!seen.has(pid)) seen.set(pid, new Set());
    seen.get(pid)!.add(r.serial);
  }
  return { seen, attempts, failures, good: good() };
}

let pebble: Pebble;
let backend: RecordingBackend;

beforeAll(async () => {
  buildOnce();
  dir = mkdtempSync(join(tmpdir(), 'postern-acme-workers-'));
  // The backend of an implicit imap listener greets first (the session filter reads the greeting).
  backend = await startBackend({ mode: 'smtp-echo', proxy: false, greeting: '* OK backend ready\r\n' });
}, 60_000);

afterAll(async () => {
  await Promise.all([...children].map((c) => stopChild(c)));
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await backend?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
}, 30_000);

describe('acme with workers: 2 (TLS-ALPN-01)', () => {
  it('only the supervisor orders; both workers answer validations and serve the certificate, and a forced renewal', async () => {
    const pdir = join(dir, 'pebble-workers');
    mkdirSync(pdir);
    const [tlsPort, httpPort, adminPort] = (await freePorts(3)) as [number, number, number];
    pebble = await startPebble({ dir: pdir, httpPort, tlsPort });
    cleanups.push(() => pebble.stop());
    const storage = join(dir, 'acme-workers');
    const d = spawnPostern('workers', config({ adminPort, tlsPort, backendPort: backend.port, storage, pebble, workers: 2 }));

    const count = (msg: string) => (ls: Line[]) => ls.filter((l) => l.msg === msg).length;
    await d.waitFor((ls) => count('acme: certificate issued')(ls) >= KEY_TYPES.length, 'both certificates issued', 40_000);
    await d.waitFor((ls) => count('listening')(ls) >= 2, 'two workers listening');

    const supervisor = d.lines.find((l) => l.msg === 'starting workers')!.pid;
    const workerPids = [...new Set(d.lines.filter((l) => l.msg === 'listening').map((l) => l.pid))];
    expect(workerPids).toHaveLength(2);
    expect(workerPids).not.toContain(supervisor);
    // 'worker started' (the supervisor's line) names the forked workers' pids.
    expect(new Set(d.lines.filter((l) => l.msg === 'worker started').map((l) => l.pid))).toEqual(new Set(workerPids));

    // Only the supervisor talks to the CA: every ordering and issuance line is its own.
    const ordering = d.lines.filter((l) => l.msg === 'acme: ordering');
    const issuedLines = d.lines.filter((l) => l.msg === 'acme: certificate issued');
    expect(ordering).toHaveLength(KEY_TYPES.length);
    expect(issuedLines).toHaveLength(KEY_TYPES.length);
    for (const l of [...ordering, ...issuedLines]) expect(l.pid).toBe(supervisor);
    expect(new Set(issuedLines.map((l) => l.keyType))).toEqual(new Set(KEY_TYPES));
    // Exactly one order per certificate (name x key type): no failed fan-out that was ordered again.
    expect(await pebble.orders()).toBe(1 * KEY_TYPES.length);
    expect(await pebble.issued()).toBe(KEY_TYPES.length);
    // One challenge per authorization pebble created: the second key type's order may reuse the
    // first one's valid authorization (1 in 100 even at PEBBLE_AUTHZREUSE=0), the first cannot.
    const authz = await pebble.authorizations();
    expect(authz).toBeGreaterThanOrEqual(1);
    expect(authz).toBeLessThanOrEqual(KEY_TYPES.length);
    expect(await pebble.validationsAtLeast(authz)).toEqual({ valid: authz, invalid: 0 });
    expect(d.lines.filter((l) => l.reason === 'acme_order_failed' || l.reason === 'acme_reload_failed')).toEqual([]);
    for (const t of KEY_TYPES) expect(existsSync(join(storage, 'live', t === 'rsa' ? `${NAME}_rsa` : NAME, 'fullchain.pem'))).toBe(true);

    // The CA's validation connections were answered by workers (either one), never the supervisor.
    const validations = d.lines.filter((l) => l.msg === 'connection closed' && l.closeReason === 'acme_challenge');
    expect(validations.length).toBeGreaterThanOrEqual(authz);
    for (const v of validations) {
      expect(workerPids).toContain(v.pid);
      expect(v).toMatchObject({ sni: NAME, alpn: 'acme-tls/1' });
    }

    // The certificate is served, verified against pebble's root, by both workers.
    const first = await untilServedByAll(d, tlsPort, workerPids, () => true);
    expect(first.good, `verified handshakes by pid: ${JSON.stringify([...first.seen].map(([p, s]) => [p, [...s]]))}; failures: ${first.failures.join('; ')}`).toBe(true);
    const oldSerials = new Set([...first.seen.values()].flatMap((s) => [...s]));

    // The supervisor's /metrics and /acme speak for its manager.
    const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    const okOrders = metrics.split('\n').filter((l) => l.startsWith('postern_acme_orders_total{') && l.includes('result="ok"'));
    expect(okOrders.reduce((a, l) => a + Number(l.slice(l.lastIndexOf(' ') + 1)), 0)).toBe(KEY_TYPES.length);
    const status = (await (await fetch(`http://127.0.0.1:${adminPort}/acme`)).json()) as { certificates: Array<{ name: string; notAfter: string | null; failures: number }> };
    expect(status.certificates).toHaveLength(KEY_TYPES.length);
    for (const c of status.certificates) expect(c).toMatchObject({ name: NAME, failures: 0, notAfter: expect.any(String) });

    // A forced renewal: ordered by the supervisor again, then served by both workers.
    const renew = await fetch(`http://127.0.0.1:${adminPort}/acme/renew?name=${NAME}`, { method: 'POST' });
    expect(renew.status).toBe(202);
    await d.waitFor((ls) => count('acme: certificate renewed')(ls) >= KEY_TYPES.length, 'both certificates renewed', 40_000);
    const renewing = d.lines.filter((l) => l.msg === 'acme: renewing' || l.msg === 'acme: certificate renewed');
    expect(renewing).toHaveLength(2 * KEY_TYPES.length);
    for (const l of renewing) expect(l.pid).toBe(supervisor);
    expect(d.lines.filter((l) => l.msg === 'acme: renewing').every((l) => l.reason === 'manual')).toBe(true);
    expect(await pebble.orders()).toBe(2 * KEY_TYPES.length);
    const authzAll = await pebble.authorizations();
    expect(authzAll).toBeLessThanOrEqual(2 * KEY_TYPES.length);
    expect(await pebble.validationsAtLeast(authzAll)).toEqual({ valid: authzAll, invalid: 0 });

    const renewed = await untilServedByAll(d, tlsPort, workerPids, (s) => !oldSerials.has(s));
    expect(renewed.good, `after renewal, verified handshakes by pid: ${JSON.stringify([...renewed.seen].map(([p, s]) => [p, [...s]]))}; old: ${[...oldSerials]}; failures: ${renewed.failures.join('; ')}`).toBe(true);
    // The validation answers of the renewal also went to workers only.
    for (const v of d.lines.filter((l) => l.msg === 'connection closed' && l.closeReason === 'acme_challenge')) expect(workerPids).toContain(v.pid);
    expect(d.lines.filter((l) => l.reason === 'acme_order_failed' || l.reason === 'acme_reload_failed' || l.level === 'fatal')).toEqual([]);

    expect(await d.stop()).toBe(0);
  }, 60_000);
});

describe('acme with External Account Binding', () => {
  it('without a binding the CA refuses and nothing is written; with the right kid and key the certificate is issued', async () => {
    const pdir = join(dir, 'pebble-eab');
    mkdirSync(pdir);
    const hmacKey = randomBytes(32).toString('base64url');
    const [tlsPort, httpPort, adminPort] = (await freePorts(3)) as [number, number, number];
    const eabPebble = await startPebble({ dir: pdir, httpPort, tlsPort, eab: { 'kid-1': hmacKey } });
    cleanups.push(() => eabPebble.stop());
    const storage = join(dir, 'acme-eab');
    const live = (t: string) => join(storage, 'live', t === 'rsa' ? `${NAME}_rsa` : NAME, 'fullchain.pem');

    const without = spawnPostern('eab-without', config({ adminPort, tlsPort, backendPort: backend.port, storage, pebble: eabPebble }));
    await without.waitFor((ls) => ls.some((l) => l.reason === 'acme_order_failed'), 'the refused order', 20_000);
    const failed = without.lines.find((l) => l.reason === 'acme_order_failed')!;
    expect(failed).toMatchObject({ level: 'error', name: NAME, serving: 'no certificate' });
    expect(String(failed.error)).toMatch(/externalAccountBinding/);
    // Refused at the account: no order reached the CA, no certificate on disk.
    expect(await eabPebble.orders()).toBe(0);
    for (const t of KEY_TYPES) expect(existsSync(live(t))).toBe(false);
    expect(without.lines.some((l) => /acme: certificate (issued|renewed)/.test(l.msg))).toBe(false);
    const st = (await (await fetch(`http://127.0.0.1:${adminPort}/acme`)).json()) as { certificates: Array<{ notAfter: string | null; failures: number; lastError: string | null }> };
    for (const c of st.certificates) expect(c.notAfter).toBeNull();
    expect(st.certificates.some((c) => c.failures >= 1 && /externalAccountBinding/.test(c.lastError ?? ''))).toBe(true);
    expect(await without.stop()).toBe(0);

    const withEab = spawnPostern('eab-with', config({ adminPort, tlsPort, backendPort: backend.port, storage, pebble: eabPebble, eab: { kid: 'kid-1', hmacKey } }));
    await withEab.waitFor((ls) => ls.filter((l) => l.msg === 'acme: certificate issued').length >= KEY_TYPES.length, 'the certificates issued with EAB', 30_000);
    expect(withEab.lines.filter((l) => l.reason === 'acme_order_failed')).toEqual([]);
    for (const t of KEY_TYPES) expect(existsSync(live(t))).toBe(true);
    expect(await eabPebble.count(/Successful newAccount Binding with CA using kid "kid-1"/)).toBe(1);
    expect(await eabPebble.orders()).toBe(KEY_TYPES.length);
    // And it is served, verified against the EAB CA's root.
    const ca = await eabPebble.issuerRoots();
    let shake: Shake = { authorized: false, error: 'not tried', serial: null, localPort: null };
    for (let i = 0; i < 50 && !shake.authorized; i++) {
      shake = await handshake(tlsPort, ca);
      if (!shake.authorized) await sleep(100);
    }
    expect(shake, JSON.stringify(shake)).toMatchObject({ authorized: true });
    expect(await withEab.stop()).toBe(0);
  }, 60_000);
});
