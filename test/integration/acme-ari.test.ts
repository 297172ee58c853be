// ARI (RFC 9773) end to end. Debian's pebble (2.4.0) has no renewalInfo, so a thin HTTPS shim
// in front of it serves the directory with a `renewalInfo` URL added and answers the renewal
// information requests itself; every other ACME request goes to pebble as the directory says.
// The real daemon obtains a certificate (pebble: 5-year lifetime, so two thirds is years away),
// asks the shim with the certificate's CertID, is told "renew now", and renews within seconds;
// the new certificate gets a window a day out and is left alone.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePorts } from '../helpers/ports.ts';
import { startPebble, type Pebble } from '../helpers/pebble.ts';
import { startBackend, type RecordingBackend } from '../helpers/backend.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const NAME = 'mail.example.org';

let dir: string;
let pebble: Pebble;
let shim: https.Server;
let shimPort: number;
let backend: RecordingBackend;
let daemon: ChildProcess | null = null;
const logs: Array<Record<string, unknown>> = [];
/** CertIDs the daemon asked about, in order. */
const asked: string[] = [];
/** The first CertID asked about gets "renew now"; later ones a window a day out. */
let first: string | null = null;

function get(url: string, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    https.get(url, { ca }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

async function until<T>(what: string, f: () => T | undefined | null | false, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; daemon log tail:\n${logs.slice(-15).map((l) => JSON.stringify(l)).join('\n')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-ari-'));
  const [httpPort, tlsPort, port, admin] = (await freePorts(4)) as [number, number, number, number];
  pebble = await startPebble({ dir, httpPort, tlsPort });
  shimPort = port;
  shim = https.createServer({ cert: readFileSync(join(dir, 'pebble-https.pem')), key: readFileSync(join(dir, 'pebble-https.key')) }, (req, res) => {
    void (async () => {
      if (req.url === '/dir') {
        const d = JSON.parse(await get(pebble.directoryUrl, pebble.caCertPem)) as Record<string, unknown>;
        d.renewalInfo = `https://127.0.0.1:${shimPort}/renewalInfo`;
        res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify(d));
        return;
      }
      const m = /^\/renewalInfo\/([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)$/.exec(req.url ?? '');
      if (!m) return void res.writeHead(404).end();
      asked.push(m[1]!);
      first ??= m[1]!;
      const now = Date.now();
      const window = m[1] === first ? { start: new Date(now - 1000), end: new Date(now + 2000) } : { start: new Date(now + 86_400_000), end: new Date(now + 2 * 86_400_000) };
      res.writeHead(200, { 'Content-Type': 'application/json', 'Retry-After': '21600' }).end(JSON.stringify({ suggestedWindow: { start: window.start.toISOString(), end: window.end.toISOString() } }));
    })().catch(() => res.destroy());
  });
  await new Promise<void>((r) => shim.listen(shimPort, '127.0.0.1', r));
  backend = await startBackend({ proxy: false });
  execFileSync('npm', ['run', 'build', '--silent'], { cwd: ROOT });
  const file = join(dir, 'postern.yaml');
  writeFileSync(file, `log: { level: info }
admin: { listen: "127.0.0.1:${admin}" }
acme:
  directory: https://127.0.0.1:${shimPort}/dir
  email: postmaster@example.org
  termsOfServiceAgreed: true
  storage: ${join(dir, 'acme')}
  caCertificates: ${pebble.caCertFile}
  retry: { min: 1s, max: 4s }
listeners:
  - name: imaps
    listen: "127.0.0.1:${tlsPort}"
    protocol: imap
    tls: implicit
    hostname: ${NAME}
    backend: { address: "127.0.0.1:${backend.port}", proxyProtocol: none }
`);
  daemon = spawn(process.execPath, [join(ROOT, 'bin', 'postern.js'), 'run', '-c', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let partial = '';
  daemon.stdout!.setEncoding('utf8');
  daemon.stdout!.on('data', (d: string) => {
    const parts = (partial + d).split('\n');
    partial = parts.pop()!;
    for (const l of parts) if (l.startsWith('{')) logs.push(JSON.parse(l));
  });
}, 60_000);

afterAll(async () => {
  if (daemon && daemon.exitCode === null) {
    const gone = new Promise((r) => daemon!.once('exit', r));
    daemon.kill('SIGTERM');
    await Promise.race([gone, new Promise((r) => setTimeout(r, 5000))]);
    daemon.kill('SIGKILL');
  }
  await new Promise((r) => shim?.close(r));
  await backend?.close();
  await pebble?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('ACME renewal information (RFC 9773)', () => {
  it('a window that says "now" renews a certificate years before two thirds of its lifetime; the CertID is the one openssl computes', async () => {
    const issued = await until('the first certificate', () => logs.find((l) => l.msg === 'acme: certificate issued'));
    const firstPem = readFileSync(join(dir, 'acme', 'live', NAME, 'fullchain.pem'), 'utf8');
    await until('the ARI-driven renewal', () => logs.find((l) => l.msg === 'acme: certificate renewed'));
    // The CertID asked about is base64url(AKI keyIdentifier) "." base64url(DER serial), as
    // openssl reads them from the first certificate.
    const pemFile = join(dir, 'first.pem');
    writeFileSync(pemFile, firstPem);
    const aki = /([0-9A-F]{2}(?::[0-9A-F]{2})+)/.exec(execFileSync('openssl', ['x509', '-in', pemFile, '-noout', '-ext', 'authorityKeyIdentifier']).toString())![1]!.replace(/:/g, '');
    let serial = execFileSync('openssl', ['x509', '-in', pemFile, '-noout', '-serial']).toString().trim().replace(/^serial=/, '');
    if (serial.length % 2) serial = `0${serial}`;
    if (parseInt(serial.slice(0, 2), 16) & 0x80) serial = `00${serial}`;
    expect(first).toBe(`${Buffer.from(aki, 'hex').toString('base64url')}.${Buffer.from(serial, 'hex').toString('base64url')}`);
    // Pebble's 5-year certificate was due at two thirds of its lifetime, years away.
    const planned = Date.parse(String(issued.nextRenewal));
    expect(planned - Date.parse(String(issued.notAfter))).toBeLessThan(0);
    expect(planned - Date.now()).toBeLessThan(10_000);
    // The renewed certificate is a different one, and its window (a day out) is the plan now.
    const renewedPem = readFileSync(join(dir, 'acme', 'live', NAME, 'fullchain.pem'), 'utf8');
    expect(renewedPem).not.toBe(firstPem);
    await until('the second CertID asked about', () => asked.some((a) => a !== first));
    const status = await until('the renewal window in state.json', () => {
      const s = JSON.parse(readFileSync(join(dir, 'acme', 'state.json'), 'utf8')) as { certificates: Array<{ renewalWindow: { start: string } | null; nextRenewal: string }> };
      return s.certificates[0]?.renewalWindow ? s.certificates[0] : null;
    });
    expect(Date.parse(status.nextRenewal) - Date.now()).toBeGreaterThan(20 * 3_600_000);
    // Exactly one renewal: the new window is respected.
    await new Promise((r) => setTimeout(r, 1500));
    expect(logs.filter((l) => l.msg === 'acme: certificate renewed')).toHaveLength(1);
    expect(await pebble.issued()).toBe(2);
  }, 60_000);
});
