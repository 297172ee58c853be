// Bulk data and the ends of a session: 50 MB each way at once with checksums, half-close in both
// directions (threats.md "Resources"), byte counts in the summary line, and resets passed on.
import { describe, it, expect, beforeAll, onTestFinished } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { scenario } from '../helpers/scenario.ts';
import { tlsOk, readToEnd } from '../helpers/clients.ts';

let pki: TestPki;
let certs: CertFiles[];

beforeAll(async () => {
  pki = await makePki();
  certs = [await pki.issue('mail', { names: ['mail.example.org'] })];
});

/** A plain backend (no PROXY header) whose per-connection behaviour the test writes. */
async function customBackend(onConnection: (socket: net.Socket) => void): Promise<number> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    onConnection(socket);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  onTestFinished(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
  });
  return (server.address() as net.AddressInfo).port;
}

/** Writes `total` random bytes with backpressure, then ends; resolves with their SHA-256. */
async function sendRandom(socket: net.Socket, total: number): Promise<string> {
  const hash = createHash('sha256');
  const chunk = 64 * 1024;
  for (let sent = 0; sent < total; sent += chunk) {
    const piece = randomBytes(Math.min(chunk, total - sent));
    hash.update(piece);
    if (!socket.write(piece)) {
      await new Promise<void>((resolve, reject) => {
        const onClose = () => reject(new Error(`closed after ${sent} of ${total} bytes were written`));
        socket.once('close', onClose);
        socket.once('drain', () => {
          socket.off('close', onClose);
          resolve();
        });
      });
    }
  }
  socket.end();
  return hash.digest('hex');
}

/** SHA-256 and length of everything read until the stream ends. */
function receiveHash(socket: net.Socket): Promise<{ sha: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    socket.on('data', (c: Buffer) => {
      hash.update(c);
      bytes += c.length;
    });
    socket.once('end', () => resolve({ sha: hash.digest('hex'), bytes }));
    socket.once('error', reject);
  });
}

describe('transfer', () => {
  it('50 MB each way at the same time arrive intact and are counted in the summary', async () => {
    const size = 50 * 1024 * 1024;
    let backendSide!: Promise<[string, { sha: string; bytes: number }]>;
    const backendPort = await customBackend((socket) => {
      backendSide = Promise.all([sendRandom(socket, size), receiveHash(socket)]);
    });
    const s = await scenario(pki, { certs, level: 'info', listener: { proxyProtocol: 'none', backendPort } });
    // Half-open: the client's read side must outlive the backend's FIN while it still sends.
    const socket = await tlsOk(s.port, { ca: pki.ca.certPem, servername: 'mail.example.org', allowHalfOpen: true });
    const [sentByClient, receivedByClient] = await Promise.all([sendRandom(socket, size), receiveHash(socket)]);
    const [sentByBackend, receivedByBackend] = await backendSide;
    expect(receivedByBackend).toEqual({ sha: sentByClient, bytes: size });
    expect(receivedByClient).toEqual({ sha: sentByBackend, bytes: size });
    const summary = await s.postern.summary(() => true, 10_000);
    expect(summary).toMatchObject({ bytesIn: size, bytesOut: size, closeReason: 'done' });
  }, 120_000);

  it('client half-close reaches the backend and the reply still flows back', async () => {
    let backendSawEnd = false;
    const backendPort = await customBackend((socket) => {
      const got: Buffer[] = [];
      socket.on('data', (c: Buffer) => got.push(c));
      // The reply is written only after the client's FIN arrived: it can only reach the
      // client if postern kept the other direction open.
      socket.on('end', () => {
        backendSawEnd = true;
        socket.end(`reply to ${Buffer.concat(got).toString()}`);
      });
    });
    const s = await scenario(pki, { certs, listener: { proxyProtocol: 'none', backendPort } });
    const socket = await tlsOk(s.port, { ca: pki.ca.certPem, servername: 'mail.example.org', allowHalfOpen: true });
    const all = readToEnd(socket);
    socket.end('request');
    const r = await all;
    expect(backendSawEnd).toBe(true);
    expect(r.data.toString()).toBe('reply to request');
    expect(await s.postern.summary()).toMatchObject({ closeReason: 'done', bytesIn: 'request'.length, bytesOut: 'reply to request'.length });
  });

  it('backend half-close reaches the client and the client can still send to the backend', async () => {
    let lateData!: Promise<string>;
    const backendPort = await customBackend((socket) => {
      // Says its piece and sends FIN at once, but keeps reading.
      socket.end('greeting and goodbye\r\n');
      lateData = new Promise((resolve) => {
        const got: Buffer[] = [];
        socket.on('data', (c: Buffer) => got.push(c));
        socket.on('end', () => resolve(Buffer.concat(got).toString()));
      });
    });
    const s = await scenario(pki, { certs, listener: { proxyProtocol: 'none', backendPort } });
    const socket = await tlsOk(s.port, { ca: pki.ca.certPem, servername: 'mail.example.org', allowHalfOpen: true });
    const all = await readToEnd(socket);
    expect(all.data.toString()).toBe('greeting and goodbye\r\n');
    expect(socket.writable).toBe(true);
    socket.end('sent after the backend closed its side\r\n');
    expect(await lateData).toBe('sent after the backend closed its side\r\n');
    expect(await s.postern.summary()).toMatchObject({ closeReason: 'done', bytesOut: 'greeting and goodbye\r\n'.length, bytesIn: 'sent after the backend closed its side\r\n'.length });
  });

  it('a backend reset is passed on to the client as a reset', async () => {
    const backendPort = await customBackend((socket) => {
      socket.once('data', () => socket.resetAndDestroy());
    });
    const s = await scenario(pki, { certs, listener: { proxyProtocol: 'none', backendPort } });
    const socket = await tlsOk(s.port, { ca: pki.ca.certPem, servername: 'mail.example.org' });
    const all = readToEnd(socket);
    socket.write('trigger\r\n');
    const r = await all;
    expect(r.error).toBe('ECONNRESET');
    expect(await s.postern.summary()).toMatchObject({ closeReason: 'backend_error', side: 'backend', detail: 'ECONNRESET' });
  });

  it('a client reset is passed on to the backend as a reset', async () => {
    let backendSaw!: Promise<string>;
    let gotLine!: () => void;
    const lineArrived = new Promise<void>((r) => (gotLine = r));
    const backendPort = await customBackend((socket) => {
      backendSaw = new Promise((resolve) => {
        socket.on('data', () => gotLine());
        socket.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
        socket.on('end', () => resolve('end'));
      });
    });
    const s = await scenario(pki, { certs, listener: { proxyProtocol: 'none', backendPort } });
    // TLS over a TCP socket of our own, so the test can reset the TCP connection itself.
    const tcp = net.connect({ host: '127.0.0.1', port: s.port });
    tcp.on('error', () => {});
    await new Promise((r) => tcp.once('connect', r));
    const socket = await tlsOk(s.port, { socket: tcp, ca: pki.ca.certPem, servername: 'mail.example.org' });
    socket.write('hello\r\n');
    await lineArrived;
    tcp.resetAndDestroy();
    expect(await backendSaw).toBe('ECONNRESET');
    expect(await s.postern.summary()).toMatchObject({ closeReason: 'client_error', side: 'client', detail: 'ECONNRESET' });
  });
});
