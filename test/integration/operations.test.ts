// Operating postern: connection limits hit and recovered, SNI routes, PROXY input from a load
// balancer network accepted and from another network refused, drain on shutdown with a transfer
// in flight, and 421 for a client still in the SMTP pre-TLS dialogue.
import { describe, it, expect, beforeAll, onTestFinished } from 'vitest';
import net from 'node:net';
import tls from 'node:tls';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { startBackend, type RecordingBackend } from '../helpers/backend.ts';
import { startPostern, type RunningPostern } from '../helpers/postern.ts';
import { freePort } from '../helpers/ports.ts';
import { encodeProxyV1, encodeProxyV2 } from '../../src/backend/proxy-protocol.ts';
import { readUntil } from '../helpers/clients.ts';

let pki: TestPki;
let cert: CertFiles;
let wild: CertFiles;

beforeAll(async () => {
  pki = await makePki();
  cert = await pki.issue('mail', { names: ['mail.example.org'] });
  wild = await pki.issue('wild', { names: ['*.example.com'] });
});

async function backend(): Promise<RecordingBackend> {
  const b = await startBackend({ mode: 'echo' });
  onTestFinished(() => b.close());
  return b;
}

async function postern(listener: string, extra = ''): Promise<{ p: RunningPostern; port: number }> {
  const port = await freePort();
  const p = await startPostern(pki.dir, `log: { level: info }
${extra}certificates:
  - { cert: ${cert.cert}, key: ${cert.key} }
  - { cert: ${wild.cert}, key: ${wild.key} }
listeners:
  - name: l
    listen: "127.0.0.1:${port}"
    hostname: mail.example.org
${listener}`);
  onTestFinished(() => p.stop());
  return { p, port };
}

function connectTls(port: number, opts: tls.ConnectionOptions & { localAddress?: string } = {}): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ port, host: '127.0.0.1', servername: 'mail.example.org', ca: pki.ca.certPem, ...opts }, () => resolve(s));
    s.once('error', reject);
  });
}

describe('limits', () => {
  it('maxConnectionsPerClient refuses the extra connection from one address, not from another, and recovers', async () => {
    const b = await backend();
    const { p, port } = await postern(`    protocol: tls
    tls: implicit
    limits: { maxConnectionsPerClient: 2 }
    backend: { address: "127.0.0.1:${b.port}", proxyProtocol: none }
`);
    const a1 = await connectTls(port, { localAddress: '127.0.0.2' });
    const a2 = await connectTls(port, { localAddress: '127.0.0.2' });
    await expect(connectTls(port, { localAddress: '127.0.0.2' })).rejects.toThrow();
    expect(await p.summary((s) => s.closeReason === 'too_many_from_client')).toMatchObject({ client: '127.0.0.2' });
    const other = await connectTls(port, { localAddress: '127.0.0.3' });
    other.destroy();
    a1.destroy();
    await p.summary((s) => s.client === '127.0.0.2' && s.closeReason !== 'too_many_from_client');
    const again = await connectTls(port, { localAddress: '127.0.0.2' });
    again.destroy();
    a2.destroy();
  });

  it('maxConnections on an SMTP STARTTLS listener answers 421 4.7.0 to the extra client', async () => {
    const b = await startBackend({ mode: 'smtp-echo' });
    onTestFinished(() => b.close());
    const { p, port } = await postern(`    protocol: smtp
    role: submission
    tls: starttls
    timeouts: { connect: 300ms }   # the echo backend does not answer EHLO: keep its probe short
    limits: { maxConnections: 1 }
    backend: { address: "127.0.0.1:${b.port}", proxyProtocol: v2 }
`);
    const first = net.connect(port, '127.0.0.1');
    expect((await readUntil(first, '\r\n')).toString()).toMatch(/^220 mail\.example\.org ESMTP/);
    const second = net.connect(port, '127.0.0.1');
    expect((await readUntil(second, '\r\n')).toString()).toBe('421 4.7.0 mail.example.org Too many connections, try again later\r\n');
    expect(await p.summary((s) => s.closeReason === 'too_many_connections')).toBeTruthy();
    first.destroy();
    second.destroy();
  });
});

describe('routes', () => {
  it('the first route whose names cover the SNI chooses the backend; others use the listener backend', async () => {
    const main = await backend();
    const www = await backend();
    const { port } = await postern(`    protocol: tls
    tls: implicit
    backend: { address: "127.0.0.1:${main.port}", proxyProtocol: none }
    routes:
      - serverNames: ["*.example.com"]
        backend: { address: "127.0.0.1:${www.port}", proxyProtocol: none }
`);
    const s1 = await connectTls(port, { servername: 'www.example.com' });
    s1.write('to www');
    await www.waitForData(6);
    const s2 = await connectTls(port, { servername: 'mail.example.org' });
    s2.write('to main');
    await main.waitForData(7);
    expect(www.connections[0]!.data.toString()).toBe('to www');
    expect(main.connections[0]!.data.toString()).toBe('to main');
    s1.destroy();
    s2.destroy();
  });
});

describe('PROXY input from a load balancer', () => {
  const lb = (b: RecordingBackend) => `    protocol: tls
    tls: implicit
    acceptProxyProtocol: { from: ["127.0.0.2/32"] }
    backend: { address: "127.0.0.1:${b.port}", proxyProtocol: v2 }
`;

  it('a v2 header from an allowed address names the client in the summary and in the PROXY header sent onwards', async () => {
    const b = await backend();
    const { p, port } = await postern(lb(b));
    const raw = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.2' });
    await new Promise((r) => raw.once('connect', r));
    raw.write(encodeProxyV2({ clientAddress: '198.51.100.7', clientPort: 40001, localAddress: '203.0.113.1', localPort: 465 }, null));
    const s = await connectTls(port, { socket: raw });
    s.write('hello');
    const c = await b.waitForData(5);
    expect(c.header).toMatchObject({ source: { address: '198.51.100.7', port: 40001 }, destination: { address: '203.0.113.1', port: 465 } });
    s.destroy();
    expect(await p.summary()).toMatchObject({ client: '198.51.100.7', clientPort: 40001 });
  });

  it('a v1 header works too', async () => {
    const b = await backend();
    const { port } = await postern(lb(b));
    const raw = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.2' });
    await new Promise((r) => raw.once('connect', r));
    raw.write(encodeProxyV1({ clientAddress: '198.51.100.8', clientPort: 40002, localAddress: '203.0.113.1', localPort: 465 }));
    const s = await connectTls(port, { socket: raw });
    s.write('x');
    expect((await b.waitForData(1)).header?.source).toEqual({ address: '198.51.100.8', port: 40002 });
    s.destroy();
  });

  it('an allowed address without a header is closed and counted', async () => {
    const b = await backend();
    const { p, port } = await postern(lb(b));
    await expect(connectTls(port, { localAddress: '127.0.0.2' })).rejects.toThrow();
    expect(await p.summary()).toMatchObject({ closeReason: 'proxy_header_invalid', client: '127.0.0.2' });
    expect(b.connections).toHaveLength(0);
  });

  it('a header from any other address is not trusted: it is not TLS, so it is closed', async () => {
    const b = await backend();
    const { p, port } = await postern(lb(b));
    const raw = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.3' });
    await new Promise((r) => raw.once('connect', r));
    raw.write(encodeProxyV1({ clientAddress: '198.51.100.9', clientPort: 1, localAddress: '203.0.113.1', localPort: 465 }));
    await new Promise((r) => raw.once('close', r));
    expect(await p.summary()).toMatchObject({ closeReason: 'not_tls', client: '127.0.0.3' });
    expect(b.connections).toHaveLength(0);
  });
});

describe('drain', () => {
  it('a transfer in flight completes before the daemon stops; new connections are refused at once', async () => {
    const b = await backend();
    const { p, port } = await postern(`    protocol: tls
    tls: implicit
    backend: { address: "127.0.0.1:${b.port}", proxyProtocol: none }
`);
    const s = await connectTls(port);
    let got = 0;
    s.on('data', (d: Buffer) => (got += d.length));
    const drained = p.daemon.drain(5000);
    await new Promise((r) => setTimeout(r, 50));
    await expect(connectTls(port)).rejects.toThrow(/ECONNREFUSED/);
    const chunk = Buffer.alloc(64 * 1024, 1);
    for (let i = 0; i < 32; i++) if (!s.write(chunk)) await new Promise((r) => s.once('drain', r));
    while (got < 32 * chunk.length) await new Promise((r) => setTimeout(r, 10));
    s.end();
    expect(await drained).toEqual({ drained: 1, closed: 0 });
  });

  it('at the drain timeout a client still in the SMTP pre-TLS dialogue gets 421 4.3.2', async () => {
    const b = await startBackend({ mode: 'smtp-echo' });
    onTestFinished(() => b.close());
    const { p, port } = await postern(`    protocol: smtp
    role: submission
    tls: starttls
    timeouts: { connect: 300ms }   # the echo backend does not answer EHLO: keep its probe short
    backend: { address: "127.0.0.1:${b.port}", proxyProtocol: v2 }
`);
    const c = net.connect(port, '127.0.0.1');
    await readUntil(c, '\r\n');
    const rest = readUntil(c, 'shutting down\r\n', 5000);
    expect(await p.daemon.drain(200)).toEqual({ drained: 0, closed: 1 });
    expect((await rest).toString()).toBe('421 4.3.2 mail.example.org Service shutting down\r\n');
    expect(await p.summary()).toMatchObject({ closeReason: 'shutdown' });
  });
});
