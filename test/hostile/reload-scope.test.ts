// Issue 14, finding 10, against the compiled daemon: what a reload is checked against.
//   - A certificate renewal (file watch) is checked against the running configuration: an
//     unrelated typo in postern.yaml does not hold it back; the typo is reported on SIGHUP.
//   - SIGHUP checks the new certificates against the listeners that actually run afterwards: a
//     listener whose `listen` changed keeps its old settings (restart-only), so the new store
//     must still cover its old hostname.
//   - A reload that would leave a listener's hostname uncovered is refused loudly (reload_failed
//     naming the listener and hostname, counted), the SMTP listener keeps announcing STARTTLS,
//     and postern_listener_certificate_missing / /readyz say every hostname is covered.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import http from 'node:http';
import { X509Certificate } from 'node:crypto';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { tlsTry } from '../helpers/clients.ts';
import { freePort } from '../helpers/ports.ts';
import { buildOnce, spawnDaemon, stopAll, sleep, connectPlain, GREETING, type SpawnedPostern } from './harness.ts';

let pki: TestPki;
let mail: CertFiles;
let renewed: CertFiles;
let other: CertFiles;

beforeAll(async () => {
  buildOnce();
  pki = await makePki();
  mail = await pki.issue('mail', { names: ['mail.example.org'] });
  renewed = await pki.issue('mail-renewed', { names: ['mail.example.org'] });
  other = await pki.issue('other', { names: ['other.example.net'] });
}, 120_000);

afterAll(stopAll);

/** STARTTLS among the EHLO keywords (RFC 3207 section 4), wherever it is in the list. */
const STARTTLS_LINE = /^250[ -]STARTTLS\r$/m;

const fingerprintOf = (pem: string) => new X509Certificate(pem).fingerprint256;

/** One PEM file with chain and key (a renewal replaces it in one rename: never half-way). */
function writePem(file: string, c: CertFiles) {
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, readFileSync(c.cert, 'utf8') + c.keyPem, { mode: 0o600 });
  renameSync(tmp, file);
}

async function served(d: SpawnedPostern, listener: string, servername: string): Promise<string> {
  const o = await tlsTry(d.port(listener), { servername, ca: pki.ca.certPem, rejectUnauthorized: false, checkServerIdentity: () => undefined, ALPNProtocols: ['imap'] });
  if (!o.socket) return `error: ${o.error?.code ?? o.error?.message}`;
  const fp = o.socket.getPeerCertificate().fingerprint256;
  o.socket.destroy();
  return fp;
}

/** The SMTP listener's own EHLO reply, before STARTTLS. */
async function ehlo(d: SpawnedPostern, listener: string): Promise<string> {
  const c = await connectPlain(d.port(listener));
  try {
    await c.reader.readUntil(GREETING.smtp);
    c.socket.write('EHLO client.example\r\n');
    return await c.reader.readUntil(/^250 [^\r\n]*\r\n/m);
  } finally {
    c.socket.destroy();
  }
}

function get(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
}

async function sample(d: SpawnedPostern, name: string, labels: Record<string, string>): Promise<number | undefined> {
  return (await d.metrics()).find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
}

async function until(what: string, f: () => Promise<boolean>, timeoutMs = 10_000) {
  const end = Date.now() + timeoutMs;
  while (!(await f())) {
    if (Date.now() > end) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(100);
  }
}

async function start(listener: { name: string; protocol: 'imap' | 'smtp'; tls: 'implicit' | 'starttls'; role?: 'mx' }) {
  const dir = mkdtempSync(join(pki.dir, 'scope-'));
  const pem = join(dir, 'mail.pem');
  writePem(pem, mail);
  const d = await spawnDaemon({ dir, certs: [{ pem }], listeners: [listener], level: 'info' });
  return { dir, pem, d };
}

describe('a certificate renewal is checked against the running configuration', () => {
  it('a typo in postern.yaml does not block a renewal picked up by the file watch; the typo is reported on SIGHUP only', async () => {
    const { pem, d } = await start({ name: 'imaps', protocol: 'imap', tls: 'implicit' });
    expect(await served(d, 'imaps', 'mail.example.org')).toBe(fingerprintOf(mail.certPem));
    // The admin is half-way through an edit of postern.yaml when certbot renews.
    writeFileSync(d.file, readFileSync(d.file, 'utf8').replace('protocol: imap', 'protocol: imapz'));
    writePem(pem, renewed);
    await until('the renewed certificate served', async () => (await served(d, 'imaps', 'mail.example.org')) === fingerprintOf(renewed.certPem));
    expect(await d.metric('postern_reloads_total', { trigger: 'watch', result: 'ok' })).toBeGreaterThanOrEqual(1);
    expect(d.logs.filter((l) => l.reason === 'reload_failed')).toEqual([]);

    d.sighup();
    const line = await d.waitLog((l) => l.reason === 'reload_failed' && l.trigger === 'sighup' && l.msg.includes('imapz'), 10_000);
    expect(line).toMatchObject({ level: 'error', path: 'listeners[0].protocol' });
    expect(await d.metric('postern_reloads_total', { trigger: 'sighup', result: 'failed' })).toBe(1);
    expect(await served(d, 'imaps', 'mail.example.org')).toBe(fingerprintOf(renewed.certPem));
  }, 40_000);
});

describe('SIGHUP checks the new certificates against the listeners that keep running', () => {
  it('a new listen address (restart-only) with certificates that no longer cover the running hostname: refused, the old certificate still served', async () => {
    const { dir, pem, d } = await start({ name: 'imaps', protocol: 'imap', tls: 'implicit' });
    const otherPem = join(dir, 'other.pem');
    writePem(otherPem, other);
    const moved = await freePort();
    // On its own the new file is valid: other.example.net is covered by other.pem.
    writeFileSync(
      d.file,
      readFileSync(d.file, 'utf8')
        .replace(`127.0.0.1:${d.port('imaps')}`, `127.0.0.1:${moved}`)
        .replace('hostname: mail.example.org', 'hostname: other.example.net')
        .replace(pem, otherPem),
    );
    d.sighup();
    const line = await d.waitLog((l) => l.reason === 'reload_failed' && l.trigger === 'sighup' && l.listener === 'imaps', 10_000);
    expect(line).toMatchObject({ level: 'error', hostname: 'mail.example.org' });
    expect(line.msg).toContain('restart');
    await d.waitMsg('reload failed; still serving the last good configuration and certificates', { trigger: 'sighup' });
    expect(await d.metric('postern_reloads_total', { trigger: 'sighup', result: 'failed' })).toBe(1);
    expect(await served(d, 'imaps', 'mail.example.org')).toBe(fingerprintOf(mail.certPem));
    expect(await sample(d, 'postern_listener_certificate_missing', { listener: 'imaps' })).toBe(0);
    expect((await get(d.adminPort, '/readyz')).status).toBe(200);
  }, 40_000);

  it('the same on an SMTP STARTTLS listener: refused, and EHLO still announces STARTTLS', async () => {
    const { dir, pem, d } = await start({ name: 'mx', protocol: 'smtp', tls: 'starttls', role: 'mx' });
    expect(await ehlo(d, 'mx')).toMatch(STARTTLS_LINE);
    const otherPem = join(dir, 'other.pem');
    writePem(otherPem, other);
    const moved = await freePort();
    writeFileSync(
      d.file,
      readFileSync(d.file, 'utf8')
        .replace(`127.0.0.1:${d.port('mx')}`, `127.0.0.1:${moved}`)
        .replace('hostname: mail.example.org', 'hostname: other.example.net')
        .replace(pem, otherPem),
    );
    d.sighup();
    // Whatever the reload's outcome: STARTTLS must still be announced on this port-25 listener.
    await d.waitLog((l) => l.trigger === 'sighup' && (l.msg === 'reloaded' || l.msg.startsWith('reload failed')), 10_000);
    expect(await ehlo(d, 'mx')).toMatch(STARTTLS_LINE);
    const line = d.logs.find((l) => l.reason === 'reload_failed' && l.trigger === 'sighup' && l.listener === 'mx');
    expect(line).toMatchObject({ level: 'error', hostname: 'mail.example.org' });
    expect(await sample(d, 'postern_listener_certificate_missing', { listener: 'mx' })).toBe(0);
    expect((await get(d.adminPort, '/readyz')).status).toBe(200);
  }, 40_000);
});

describe('a certificate change that uncovers a listener hostname is refused loudly', () => {
  it('file watch: the renewed file covers another name only -> reload_failed naming the listener and hostname, counted; STARTTLS still announced', async () => {
    const { pem, d } = await start({ name: 'mx', protocol: 'smtp', tls: 'starttls', role: 'mx' });
    expect(await sample(d, 'postern_listener_certificate_missing', { listener: 'mx' })).toBe(0);
    writePem(pem, other);
    const line = await d.waitLog((l) => l.reason === 'reload_failed' && l.trigger === 'watch' && l.listener === 'mx', 15_000);
    expect(line).toMatchObject({ level: 'error', hostname: 'mail.example.org' });
    expect(line.msg).toContain('mail.example.org');
    await d.waitMsg('reload failed; still serving the last good configuration and certificates', { trigger: 'watch' }, 10_000);
    expect(await d.metric('postern_reloads_total', { trigger: 'watch', result: 'failed' })).toBe(1);
    expect(await ehlo(d, 'mx')).toMatch(STARTTLS_LINE);
    expect(await sample(d, 'postern_listener_certificate_missing', { listener: 'mx' })).toBe(0);
    const ready = await get(d.adminPort, '/readyz');
    expect(ready.status).toBe(200);
  }, 40_000);
});
