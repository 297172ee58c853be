// The backend side: a protocol-aware goodbye inside TLS when the backend cannot be reached, the
// PROXY header that tells the backend who the client is (haproxy proxy-protocol.txt), and the
// backend never dialled for a handshake that fails.
import { describe, it, expect, beforeAll, onTestFinished } from 'vitest';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { scenario } from '../helpers/scenario.ts';
import { tlsTry, tlsOk, readUntil, readToEnd } from '../helpers/clients.ts';
import { freePort } from '../helpers/ports.ts';

let pki: TestPki;
let certs: CertFiles[];

beforeAll(async () => {
  pki = await makePki();
  certs = [await pki.issue('mail', { names: ['mail.example.org'] }), await pki.issue('wild-com', { names: ['*.example.com'] })];
});

/** Connects, completes the handshake and reads until postern closes. */
async function goodbyeFrom(port: number, alpn?: string) {
  const socket = await tlsOk(port, { ca: pki.ca.certPem, servername: 'mail.example.org', ALPNProtocols: alpn ? [alpn] : undefined });
  return readToEnd(socket);
}

/**
 * A loopback port whose listen queue is full: a child process listens with backlog 1 (0 would mean Node's default) and never
 * accepts (its event loop is blocked), and fillers take the queue, so a further SYN is dropped
 * and a connect hangs until the caller's own deadline. Nothing leaves the loopback interface.
 */
async function neverAccepting(): Promise<number> {
  const child = spawn(process.execPath, ['-e', `
    const s = require('node:net').createServer();
    s.listen({ host: '127.0.0.1', port: 0, backlog: 1 }, () => {
      process.stdout.write(String(s.address().port) + '\\n');
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
    });`], { stdio: ['ignore', 'pipe', 'inherit'] });
  onTestFinished(() => {
    child.kill('SIGKILL');
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
    child.once('exit', (code) => reject(new Error(`blocked listener exited with ${code}`)));
  });
  const fillers: net.Socket[] = [];
  onTestFinished(() => {
    for (const f of fillers) f.destroy();
  });
  for (let i = 0; i < 8; i++) {
    const f = net.connect({ host: '127.0.0.1', port });
    f.on('error', () => {});
    fillers.push(f);
    const connected = await new Promise<boolean>((r) => {
      const t = setTimeout(() => r(false), 300);
      f.once('connect', () => {
        clearTimeout(t);
        r(true);
      });
    });
    if (!connected) return port;
  }
  throw new Error('could not fill the listen queue of the blocked listener');
}

describe('backend down', () => {
  it('smtp listener answers 421 4.3.2 inside tls when the backend refuses, then closes', async () => {
    const s = await scenario(pki, { certs, listener: { protocol: 'smtp', backendPort: await freePort() } });
    const r = await goodbyeFrom(s.port, 'smtp');
    expect(r.data.toString('latin1')).toBe('421 4.3.2 mail.example.org Service not available\r\n');
    expect(await s.postern.summary()).toMatchObject({ closeReason: 'backend_unreachable', side: 'backend', detail: 'ECONNREFUSED', decision: 'served' });
    expect(s.postern.logs.find((l) => l.msg === 'backend connect failed')).toMatchObject({ level: 'warn', reason: 'backend_unreachable' });
  });

  it('imap listener answers * BYE inside tls when the backend refuses, then closes', async () => {
    const s = await scenario(pki, { certs, listener: { protocol: 'imap', backendPort: await freePort() } });
    const r = await goodbyeFrom(s.port, 'imap');
    expect(r.data.toString('latin1')).toMatch(/^\* BYE [^\r\n]*\r\n$/);
    expect(await s.postern.summary()).toMatchObject({ closeReason: 'backend_unreachable', side: 'backend' });
  });

  it('pop3 listener answers -ERR inside tls when the backend refuses, then closes', async () => {
    const s = await scenario(pki, { certs, listener: { protocol: 'pop3', backendPort: await freePort() } });
    const r = await goodbyeFrom(s.port, 'pop3');
    expect(r.data.toString('latin1')).toMatch(/^-ERR [^\r\n]*\r\n$/);
    expect(await s.postern.summary()).toMatchObject({ closeReason: 'backend_unreachable', side: 'backend' });
  });

  it('tls listener closes without a word when the backend refuses', async () => {
    const s = await scenario(pki, { certs, listener: { protocol: 'tls', backendPort: await freePort() } });
    const r = await goodbyeFrom(s.port);
    expect(r.data.length).toBe(0);
    expect(await s.postern.summary()).toMatchObject({ closeReason: 'backend_unreachable', side: 'backend' });
  });

  it('smtp listener answers 421 4.3.2 when the backend does not accept within the connect timeout', async () => {
    const backendPort = await neverAccepting();
    const s = await scenario(pki, { certs, listener: { protocol: 'smtp', backendPort, timeouts: { connect: '300ms' } } });
    const started = performance.now();
    const r = await goodbyeFrom(s.port, 'smtp');
    const ms = performance.now() - started;
    expect(r.data.toString('latin1')).toBe('421 4.3.2 mail.example.org Service not available\r\n');
    expect(ms).toBeGreaterThanOrEqual(250);
    expect(ms).toBeLessThan(2000);
    expect(await s.postern.summary()).toMatchObject({ closeReason: 'backend_timeout', side: 'backend' });
  });

  it('a failed handshake never reaches the backend', async () => {
    const s = await scenario(pki, { certs, listener: {} });
    // RSA key exchange only, against ECDSA certificates: no shared cipher, OpenSSL refuses.
    const o = await tlsTry(s.port, { ca: pki.ca.certPem, servername: 'mail.example.org', maxVersion: 'TLSv1.2', ciphers: 'AES128-GCM-SHA256' });
    expect(o.socket).toBeNull();
    expect(await s.postern.summary()).toMatchObject({ closeReason: 'handshake_failed', tlsVersion: null, backend: null });
    expect(s.backend!.connections).toHaveLength(0);
  });
});

describe('proxy protocol', () => {
  /** One line through postern from 127.0.0.2; returns the backend's view and the client's. */
  async function through(port: number, servername: string, s: Awaited<ReturnType<typeof scenario>>, extra: object = {}) {
    const socket = await tlsOk(port, { ca: pki.ca.certPem, servername, localAddress: '127.0.0.2', ALPNProtocols: ['smtp'], checkServerIdentity: () => undefined, ...extra });
    const ended = readToEnd(socket);
    socket.write('EHLO client.example\r\n');
    await readUntil(socket, 'EHLO client.example\r\n');
    const conn = await s.backend!.waitForData(21);
    const cipher = socket.getCipher();
    const protocol = socket.getProtocol();
    socket.end();
    await ended;
    return { conn, cipher, protocol, clientPort: socket.clientPort };
  }

  it('v1 header is the exact PROXY TCP4 line with the client address and both ports', async () => {
    const s = await scenario(pki, { certs, listener: { proxyProtocol: 'v1' } });
    const { conn, clientPort } = await through(s.port, 'mail.example.org', s);
    expect(conn.headerBytes?.toString('latin1')).toBe(`PROXY TCP4 127.0.0.2 127.0.0.1 ${clientPort} ${s.port}\r\n`);
    expect(conn.data.toString('latin1')).toBe('EHLO client.example\r\n');
  });

  it('v2 header carries the client address, AUTHORITY = sni, ALPN and the SSL TLV with version and cipher', async () => {
    const s = await scenario(pki, { certs, listener: { proxyProtocol: 'v2' } });
    const { conn, cipher, protocol, clientPort } = await through(s.port, 'mail.example.org', s);
    const h = conn.header!;
    expect(h).toMatchObject({
      version: 2,
      command: 'PROXY',
      family: 'TCP4',
      source: { address: '127.0.0.2', port: clientPort },
      destination: { address: '127.0.0.1', port: s.port },
      authority: 'mail.example.org',
      alpn: 'smtp',
    });
    expect(protocol).toBe('TLSv1.3');
    expect(h.ssl!.client & 0x01).toBe(1);
    expect(h.ssl!.version).toBe('TLSv1.3');
    expect(h.ssl!.cipher).toBe(cipher.name);
    expect(conn.data.toString('latin1')).toBe('EHLO client.example\r\n');
  });

  it('v2 SSL TLV says TLSv1.2 for a TLS 1.2 session', async () => {
    const s = await scenario(pki, { certs, listener: { proxyProtocol: 'v2' } });
    const { conn, cipher } = await through(s.port, 'mail.example.org', s, { maxVersion: 'TLSv1.2' });
    expect(conn.header!.ssl).toMatchObject({ version: 'TLSv1.2', cipher: cipher.name });
    expect(conn.header!.ssl!.client & 0x01).toBe(1);
  });

  it('v2 AUTHORITY is the lowercased sni of a wildcard match', async () => {
    const s = await scenario(pki, { certs, listener: { proxyProtocol: 'v2' } });
    const { conn } = await through(s.port, 'WWW.Example.COM', s);
    expect(conn.header!.authority).toBe('www.example.com');
  });

  it('v2 carries no AUTHORITY when a fallback served a name the certificate does not cover', async () => {
    const s = await scenario(pki, { certs, listener: { proxyProtocol: 'v2', sni: 'fallback' } });
    const { conn } = await through(s.port, 'unknown.example.net', s);
    expect(conn.header!.authority).toBeNull();
    expect(conn.header!.tlvs.some((t) => t.type === 0x02)).toBe(false);
    expect(conn.header!.ssl!.client & 0x01).toBe(1);
  });

  it('proxyProtocol none sends no header: the backend sees the client bytes first', async () => {
    const s = await scenario(pki, { certs, listener: { proxyProtocol: 'none' } });
    const { conn } = await through(s.port, 'mail.example.org', s);
    expect(conn.header).toBeNull();
    expect(conn.data.toString('latin1')).toBe('EHLO client.example\r\n');
  });
});
