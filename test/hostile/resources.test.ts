// threats.md "Resources" against the compiled daemon in a child process: slowloris during the
// STARTTLS dialogue and after STARTTLS (absolute deadlines), connection caps (per listener, per
// client, the SMTP 421 4.7.0), backpressure with a slow client or a slow backend during a large
// transfer (postern's VmRSS stays flat), backend refused / timing out / unreachable (protocol
// goodbye, counter, descriptors back to baseline), half-close both ways, resets passed on as
// resets. The peek and handshake slowloris cases are in clienthello.test.ts ("the handshake
// deadline is absolute"); the 10,000-idle-connection load test is elsewhere.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { rawExchange, tlsTry, pieces, readToEnd } from '../helpers/clients.ts';
import { freePort } from '../helpers/ports.ts';
import { buildClientHello } from '../helpers/hello-builder.ts';
import { decodeProxyHeader, type DecodedProxy } from '../../src/backend/proxy-decode.ts';
import {
  buildOnce, spawnDaemon, stopAll, goodClient, connectPlain, sessionsOf, sleep, GREETING, STARTTLS_CMD, type SpawnedPostern,
} from './harness.ts';

let pki: TestPki;
let mail: CertFiles;
let d: SpawnedPostern;
let controlled: ControlledBackend;
let backlog: { port: number; child: ChildProcess; fill: net.Socket[] };
let refusedPort: number;
let flapping: FlappingBackend;

const MB = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// A backend the test drives by hand: each connection is handed over after its PROXY header.

interface Handed {
  socket: net.Socket;
  header: DecodedProxy;
  /** Bytes received after the header so far. */
  received: Buffer[];
  ended: Promise<void>;
  error: Promise<string>;
}

interface ControlledBackend {
  port: number;
  /** The connection carrying the client whose source port is `clientPort`. */
  forClient(clientPort: number, timeoutMs?: number): Promise<Handed>;
  /** What a new client session's connection does first (set per test); health checks are left alone. */
  onConnect: (h: Handed) => void;
  close(): Promise<void>;
}

async function startControlledBackend(): Promise<ControlledBackend> {
  const handed: Handed[] = [];
  const sockets = new Set<net.Socket>();
  const cb: ControlledBackend = {
    port: 0,
    onConnect: () => {},
    async forClient(clientPort, timeoutMs = 5000) {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const h = handed.find((x) => x.header.source?.port === clientPort);
        if (h) return h;
        if (Date.now() > until) throw new Error(`no backend connection for client port ${clientPort}`);
        await sleep(10);
      }
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    let pre = Buffer.alloc(0);
    let resolveEnd!: () => void;
    let resolveError!: (e: string) => void;
    const ended = new Promise<void>((r) => (resolveEnd = r));
    const error = new Promise<string>((r) => (resolveError = r));
    socket.on('error', (e: NodeJS.ErrnoException) => resolveError(e.code ?? e.message));
    socket.on('end', () => resolveEnd());
    const onData = (chunk: Buffer) => {
      pre = Buffer.concat([pre, chunk]);
      const dec = decodeProxyHeader(pre);
      if (dec.kind === 'need-more') return;
      socket.off('data', onData);
      if (dec.kind !== 'header') return void socket.destroy();
      const h: Handed = { socket, header: dec.header, received: [], ended, error };
      const rest = pre.subarray(dec.header.length);
      if (rest.length > 0) h.received.push(rest);
      socket.on('data', (c: Buffer) => h.received.push(c));
      // postern's health checks (every 10 s) connect too; only TLS sessions carry the SSL TLV.
      if (!dec.header.ssl) return;
      handed.push(h);
      cb.onConnect(h);
    };
    socket.on('data', onData);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cb.port = (server.address() as net.AddressInfo).port;
  return cb;
}

/**
 * A backend that is killed and restarted in a tight loop: its listener closed with connections
 * still in the accept queue (the kernel resets them) and the accepted ones reset. A session's
 * PROXY header can then be written to a connection the backend has just reset.
 */
interface FlappingBackend {
  port: number;
  /**
   * Kills and restarts the backend every few ms until `ms` have passed; every 10th time it stays
   * up for 100 ms, long enough for whole sessions however loaded the machine is.
   */
  flap(ms: number): Promise<number>;
  close(): Promise<void>;
}

async function startFlappingBackend(): Promise<FlappingBackend> {
  const port = await freePort();
  const conns = new Set<net.Socket>();
  let server: net.Server | null = null;
  const start = () =>
    new Promise<void>((resolve) => {
      const srv = net.createServer((c) => {
        conns.add(c);
        c.on('error', () => {});
        c.on('close', () => conns.delete(c));
        // Greets (the implicit smtp listener forwards the greeting, issue 15), answers the
        // session's first line (after the PROXY header) and closes.
        c.write('220 flap.example ESMTP\r\n');
        let got = '';
        c.on('data', (b: Buffer) => {
          got += b.toString('latin1');
          if (got.includes('EHLO flap.example\r\n')) c.end('250 flap.example ok\r\n');
        });
      });
      srv.once('error', () => resolve());
      srv.listen({ port, host: '127.0.0.1', backlog: 511 }, () => resolve());
      server = srv;
    });
  const kill = () => {
    server?.close();
    server = null;
    for (const c of conns) c.resetAndDestroy();
    conns.clear();
  };
  await start();
  return {
    port,
    async flap(ms) {
      let kills = 0;
      for (const until = Date.now() + ms; Date.now() < until; kills++) {
        await sleep(kills % 10 === 9 ? 100 : 3 + Math.random() * 10);
        kill();
        await sleep(Math.random() * 3);
        await start();
      }
      return kills;
    },
    async close() {
      kill();
    },
  };
}

/** A listening socket whose accept queue is full: connects to it hang (a backend that times out). */
async function startFullBacklog(): Promise<{ port: number; child: ChildProcess; fill: net.Socket[] }> {
  const child = spawn('python3', ['-c', 'import socket,time\ns=socket.socket()\ns.bind(("127.0.0.1",0))\ns.listen(0)\nprint(s.getsockname()[1],flush=True)\ntime.sleep(3600)'], { stdio: ['ignore', 'pipe', 'ignore'] });
  const port = await new Promise<number>((r) => child.stdout!.once('data', (b: Buffer) => r(Number(b.toString().trim()))));
  const fill: net.Socket[] = [];
  for (let i = 0; i < 3; i++) fill.push(net.connect(port, '127.0.0.1').on('error', () => {}));
  await sleep(200);
  return { port, child, fill };
}

function vmRssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}

/** A TLS client; `port` is its local port, read at connect (a closed socket no longer has one). */
function connectTls(port: number, opts: tls.ConnectionOptions = {}): Promise<tls.TLSSocket & { port: number }> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'mail.example.org', ca: pki.ca.certPem, ...opts });
    s.once('secureConnect', () => {
      s.off('error', reject);
      resolve(Object.assign(s, { port: s.localPort ?? (opts.socket as net.Socket | undefined)?.localPort ?? 0 }));
    });
    s.once('error', reject);
  });
}

// ---------------------------------------------------------------------------------------------

beforeAll(async () => {
  buildOnce();
  pki = await makePki();
  mail = await pki.issue('mail', { names: ['mail.example.org'] });
  controlled = await startControlledBackend();
  backlog = await startFullBacklog();
  refusedPort = await freePort();
  flapping = await startFlappingBackend();
  const t1s = { handshake: '1s', connect: '500ms' };
  d = await spawnDaemon({
    dir: pki.dir,
    certs: [{ cert: mail.cert, key: mail.key }],
    listeners: [
      { name: 'smtps', protocol: 'smtp', tls: 'implicit', timeouts: t1s },
      { name: 'mx', protocol: 'smtp', tls: 'starttls', role: 'mx', timeouts: t1s, extra: { timeouts: { starttls: '1s' } } },
      { name: 'imap', protocol: 'imap', tls: 'starttls', timeouts: t1s, extra: { timeouts: { starttls: '1s' } } },
      { name: 'pop3', protocol: 'pop3', tls: 'starttls', timeouts: t1s, extra: { timeouts: { starttls: '1s' } } },
      { name: 'capped', protocol: 'smtp', tls: 'implicit', timeouts: { handshake: '10s' }, extra: { limits: { maxConnections: 3, maxConnectionsPerClient: 100 } } },
      { name: 'perclient', protocol: 'smtp', tls: 'implicit', timeouts: { handshake: '10s' }, extra: { limits: { maxConnections: 100, maxConnectionsPerClient: 2 } } },
      { name: 'mxcapped', protocol: 'smtp', tls: 'starttls', role: 'mx', timeouts: { handshake: '10s' }, extra: { limits: { maxConnections: 1 }, timeouts: { starttls: '10s' } } },
      { name: 'down-smtp', protocol: 'smtp', tls: 'implicit', backendPort: refusedPort, timeouts: t1s },
      { name: 'down-imap', protocol: 'imap', tls: 'implicit', backendPort: refusedPort, timeouts: t1s },
      { name: 'down-pop3', protocol: 'pop3', tls: 'implicit', backendPort: refusedPort, timeouts: t1s },
      { name: 'slow-smtp', protocol: 'smtp', tls: 'implicit', backendPort: backlog.port, timeouts: t1s },
      // 100::/64 is the IPv6 discard prefix (RFC 6666): no host answers there.
      { name: 'far-smtp', protocol: 'smtp', tls: 'implicit', backendHost: '[100::1]', backendPort: 25, timeouts: { handshake: '1s', connect: '3s' } },
      { name: 'pipe', protocol: 'tls', tls: 'implicit', backendPort: controlled.port, timeouts: { handshake: '5s', idle: '1m' } },
      { name: 'flap-smtp', protocol: 'smtp', tls: 'implicit', backendPort: flapping.port, timeouts: t1s, extra: { limits: { maxConnections: 1000, maxConnectionsPerClient: 1000 } } },
    ],
  });
  await goodClient(d, 'smtps', pki);
}, 120_000);

afterAll(async () => {
  await stopAll();
  await controlled?.close();
  for (const s of backlog?.fill ?? []) s.destroy();
  backlog?.child.kill();
  await flapping?.close();
});

/** Counters and descriptors before a case; `after()` checks the close was counted and fds returned. */
async function bookkeeping(listener: string, reason: string) {
  const base = await d.settledFds();
  const before = await d.metric('postern_connections_total', { listener, reason });
  return {
    async after(goodListener = 'smtps') {
      expect(await d.metric('postern_connections_total', { listener, reason })).toBe(before + 1);
      await goodClient(d, goodListener, pki, goodListener === 'mx' ? { starttls: 'smtp' } : {});
      expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
    },
  };
}

describe('slowloris: deadlines are absolute', () => {
  const cases = [
    { listener: 'mx', proto: 'smtp' as const, line: 'EHLO slow.example\r\n', words: '421 4.4.2 mail.example.org Timeout, closing connection\r\n' },
    { listener: 'imap', proto: 'imap' as const, line: 'a CAPABILITY\r\n', words: '* BYE mail.example.org Autologout; idle for too long\r\n' },
    { listener: 'pop3', proto: 'pop3' as const, line: 'USER slowloris.example\r\n', words: '-ERR Timeout\r\n' },
  ];
  for (const c of cases) {
    it(`${c.listener}: a command trickled 1 byte every 150 ms during the STARTTLS dialogue is cut off at timeouts.starttls (1 s) with ${JSON.stringify(c.words.trim())}`, async () => {
      const b = await bookkeeping(c.listener, 'starttls_timeout');
      const conn = await connectPlain(d.port(c.listener));
      const t0 = performance.now();
      await conn.reader.readUntil(GREETING[c.proto]);
      conn.reader.detach();
      const end = readToEnd(conn.socket, 5000);
      for (const byte of pieces(Buffer.from(c.line.repeat(20)), 1)) {
        if (conn.socket.destroyed || !conn.socket.writable) break;
        conn.socket.write(byte);
        await sleep(150);
        if (performance.now() - t0 > 3000) break;
      }
      const got = await end;
      const ms = performance.now() - t0;
      expect(got.data.toString('latin1')).toBe(c.words);
      expect(ms).toBeGreaterThan(900);
      expect(ms).toBeLessThan(1800);
      expect(await d.summaryFor(conn.localPort)).toMatchObject({ listener: c.listener, closeReason: 'starttls_timeout', backend: null });
      expect(sessionsOf(d.backend(c.listener), conn.localPort)).toHaveLength(0);
      await b.after();
    });
  }

  it('mx: after STARTTLS the handshake deadline starts again and a hello trickled 1 byte every 150 ms is cut off 1 s after STARTTLS', async () => {
    const b = await bookkeeping('mx', 'handshake_timeout');
    const conn = await connectPlain(d.port('mx'));
    await conn.reader.readUntil(GREETING.smtp);
    await sleep(600); // most of the STARTTLS deadline used up: it must not carry over
    conn.socket.write(STARTTLS_CMD.smtp.command);
    await conn.reader.readUntil(STARTTLS_CMD.smtp.reply);
    const t0 = performance.now();
    conn.reader.detach();
    const end = readToEnd(conn.socket, 5000);
    for (const byte of pieces(buildClientHello({ sni: 'mail.example.org' }), 1)) {
      if (conn.socket.destroyed || !conn.socket.writable || performance.now() - t0 > 3000) break;
      conn.socket.write(byte);
      await sleep(150);
    }
    const got = await end;
    const ms = performance.now() - t0;
    expect(got.data.length).toBe(0);
    expect(ms).toBeGreaterThan(900);
    expect(ms).toBeLessThan(1800);
    expect(await d.summaryFor(conn.localPort)).toMatchObject({ listener: 'mx', closeReason: 'handshake_timeout', backend: null });
    expect(sessionsOf(d.backend('mx'), conn.localPort)).toHaveLength(0);
    await b.after();
  });
});

describe('connection caps hold', () => {
  it('capped (maxConnections 3): a fourth connection is closed at once (too_many_connections); served again once below the cap', async () => {
    const b = await bookkeeping('capped', 'too_many_connections');
    const held = await Promise.all([0, 1, 2].map(() => connectPlain(d.port('capped'))));
    await sleep(200);
    const x = await rawExchange(d.port('capped'), [], { timeoutMs: 3000 });
    expect(x.data.length).toBe(0);
    expect(x.closedAfterMs).toBeLessThan(500);
    expect(await d.summaryFor(x.localPort)).toMatchObject({ closeReason: 'too_many_connections', backend: null });
    expect(await d.waitMsg('connection limit reached', { listener: 'capped', reason: 'too_many_connections' })).toBeTruthy();
    expect(await d.metric('postern_connections_active', { listener: 'capped' })).toBe(3);
    for (const h of held) h.socket.destroy();
    for (const h of held) await d.summaryFor(h.localPort);
    await b.after('capped');
  });

  it('perclient (maxConnectionsPerClient 2): a third from 127.0.0.1 is closed (too_many_from_client), 127.0.0.2 is still served', async () => {
    const b = await bookkeeping('perclient', 'too_many_from_client');
    const held = await Promise.all([0, 1].map(() => connectPlain(d.port('perclient'))));
    await sleep(200);
    const x = await rawExchange(d.port('perclient'), [], { timeoutMs: 3000 });
    expect(x.data.length).toBe(0);
    expect(await d.summaryFor(x.localPort)).toMatchObject({ closeReason: 'too_many_from_client', backend: null });
    const other = await tlsTry(d.port('perclient'), { servername: 'mail.example.org', ca: pki.ca.certPem, localAddress: '127.0.0.2' });
    expect(other.error).toBeNull();
    other.socket!.destroy();
    await d.summaryFor(other.localPort);
    for (const h of held) h.socket.destroy();
    for (const h of held) await d.summaryFor(h.localPort);
    await b.after('perclient');
  });

  it('mxcapped (SMTP STARTTLS, maxConnections 1): the second connection gets "421 4.7.0 ... Too many connections"', async () => {
    const b = await bookkeeping('mxcapped', 'too_many_connections');
    const first = await connectPlain(d.port('mxcapped'));
    await first.reader.readUntil(GREETING.smtp);
    const x = await rawExchange(d.port('mxcapped'), [], { timeoutMs: 3000 });
    expect(x.data.toString('latin1')).toBe('421 4.7.0 mail.example.org Too many connections, try again later\r\n');
    expect(await d.summaryFor(x.localPort)).toMatchObject({ closeReason: 'too_many_connections', backend: null });
    expect(sessionsOf(d.backend('mxcapped'), x.localPort)).toHaveLength(0);
    first.socket.destroy();
    await d.summaryFor(first.localPort);
    await b.after();
    await goodClient(d, 'mxcapped', pki, { starttls: 'smtp' });
  });
});

describe('backpressure: memory stays flat during a large transfer', () => {
  const TOTAL = 128 * MB;

  it(`slow client (openssl s_client writing to a pipe nobody reads): the backend offers ${TOTAL / MB} MB -> it is held back for 2 s, postern's RSS stays flat; then everything arrives`, async () => {
    // A client in another process that really stops reading: s_client blocks on its full stdout
    // pipe, its socket buffer fills, and TCP tells postern to stop.
    let pushed = 0;
    controlled.onConnect = (h) => {
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      const pump = () => {
        while (pushed < TOTAL) {
          pushed += chunk.length;
          if (!h.socket.write(chunk)) return void h.socket.once('drain', pump);
        }
        h.socket.end();
      };
      pump();
    };
    const base = await d.settledFds();
    const rss0 = vmRssBytes(d.pid);
    const client = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${d.port('pipe')}`, '-servername', 'mail.example.org', '-quiet'], { stdio: ['pipe', 'pipe', 'ignore'] });
    const exited = new Promise((r) => client.once('exit', r));
    client.stdout!.pause();
    await sleep(2500);
    const rss1 = vmRssBytes(d.pid);
    const pushedWhilePaused = pushed;
    console.log(`slow client: backend pushed ${(pushedWhilePaused / MB).toFixed(1)} MB of ${TOTAL / MB} MB while the client did not read; postern RSS +${((rss1 - rss0) / MB).toFixed(1)} MB`);
    expect(pushedWhilePaused).toBeGreaterThan(0);
    expect(pushedWhilePaused).toBeLessThan(48 * MB);
    expect(rss1 - rss0).toBeLessThan(48 * MB);
    let got = 0;
    let maxRss = rss1;
    const sampler = setInterval(() => (maxRss = Math.max(maxRss, vmRssBytes(d.pid))), 50);
    client.stdout!.on('data', (c: Buffer) => (got += c.length));
    client.stdout!.resume();
    const summary = await d.waitLog((l) => l.msg === 'connection closed' && l.listener === 'pipe' && l.bytesOut === TOTAL, 30_000);
    clearInterval(sampler);
    client.stdin!.end();
    client.kill();
    await exited;
    expect(got).toBe(TOTAL);
    expect(summary).toMatchObject({ closeReason: 'done' });
    // At full speed the allocator churns (TLS records, Buffers awaiting GC); what matters is that
    // nothing like the transfer itself accumulates.
    console.log(`slow client: postern RSS at most +${((maxRss - rss0) / MB).toFixed(1)} MB during the ${TOTAL / MB} MB transfer`);
    expect(maxRss - rss0).toBeLessThan(TOTAL * 0.75);
    expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
  }, 60_000);

  it(`slow backend: the client sends ${TOTAL / MB} MB, the backend reads nothing for 2 s -> the client is held back, postern's RSS stays flat; then everything arrives`, async () => {
    let backend: Handed | null = null;
    controlled.onConnect = (h) => {
      backend = h;
      h.socket.pause();
    };
    const base = await d.settledFds();
    const rss0 = vmRssBytes(d.pid);
    const s = await connectTls(d.port('pipe'));
    let sent = 0;
    let finished = false;
    const chunk = Buffer.alloc(64 * 1024, 0x62);
    const pump = () => {
      while (sent < TOTAL) {
        sent += chunk.length;
        if (!s.write(chunk)) return void s.once('drain', pump);
      }
      finished = true;
      s.end();
    };
    pump();
    await sleep(2000);
    const rss1 = vmRssBytes(d.pid);
    const sentWhilePaused = sent;
    expect(finished).toBe(false);
    expect(sentWhilePaused).toBeLessThan(48 * MB);
    expect(rss1 - rss0).toBeLessThan(48 * MB);
    const h = backend! as Handed;
    let got = h.received.reduce((a, b) => a + b.length, 0);
    h.socket.on('data', (c: Buffer) => (got += c.length));
    h.received.length = 0;
    h.socket.resume();
    await h.ended;
    h.socket.end();
    expect(got).toBe(TOTAL);
    s.destroy();
    expect(await d.summaryFor(s.port)).toMatchObject({ listener: 'pipe', bytesIn: TOTAL });
    expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
    console.log(`slow backend: client got ${(sentWhilePaused / MB).toFixed(1)} MB out while the backend was paused; postern RSS +${((rss1 - rss0) / MB).toFixed(1)} MB`);
  }, 60_000);
});

describe('backend refused, timing out, unreachable: the protocol\'s goodbye, a counter, descriptors back', () => {
  const cases = [
    { listener: 'down-smtp', words: '421 4.3.2 mail.example.org Service not available\r\n', alpn: ['smtp'] },
    { listener: 'down-imap', words: '* BYE [UNAVAILABLE] mail.example.org backend not available\r\n', alpn: ['imap'] },
    { listener: 'down-pop3', words: '-ERR [SYS/TEMP] mail.example.org backend not available\r\n', alpn: ['pop3'] },
  ];
  for (const c of cases) {
    it(`${c.listener}: connection refused -> ${JSON.stringify(c.words.trim())}, backend_unreachable`, async () => {
      const b = await bookkeeping(c.listener, 'backend_unreachable');
      const failures = await d.metric('postern_backend_connect_failures_total', { listener: c.listener, reason: 'backend_unreachable' });
      const s = await connectTls(d.port(c.listener), { ALPNProtocols: c.alpn });
      const got = await readToEnd(s, 5000);
      expect(got.data.toString('latin1')).toBe(c.words);
      expect(await d.summaryFor(s.port)).toMatchObject({ listener: c.listener, closeReason: 'backend_unreachable', side: 'backend', tlsVersion: 'TLSv1.3' });
      expect(await d.metric('postern_backend_connect_failures_total', { listener: c.listener, reason: 'backend_unreachable' })).toBe(failures + 1);
      expect(await d.waitMsg('backend connect failed', { listener: c.listener, reason: 'backend_unreachable' })).toBeTruthy();
      await b.after();
    });
  }

  it('slow-smtp: a backend that never accepts (full accept queue) -> 421 4.3.2 after timeouts.connect (500 ms), backend_timeout', async () => {
    const b = await bookkeeping('slow-smtp', 'backend_timeout');
    const failures = await d.metric('postern_backend_connect_failures_total', { listener: 'slow-smtp', reason: 'backend_timeout' });
    const s = await connectTls(d.port('slow-smtp'));
    const t0 = performance.now();
    const got = await readToEnd(s, 5000);
    const ms = performance.now() - t0;
    expect(got.data.toString('latin1')).toBe('421 4.3.2 mail.example.org Service not available\r\n');
    expect(ms).toBeGreaterThan(400);
    expect(ms).toBeLessThan(1500);
    expect(await d.summaryFor(s.port)).toMatchObject({ closeReason: 'backend_timeout', side: 'backend' });
    expect(await d.metric('postern_backend_connect_failures_total', { listener: 'slow-smtp', reason: 'backend_timeout' })).toBe(failures + 1);
    await b.after();
  });

  it('far-smtp: an unreachable address (100::1, the IPv6 discard prefix) -> 421 4.3.2, backend_unreachable (or backend_timeout, as the network says)', async () => {
    const base = await d.settledFds();
    const s = await connectTls(d.port('far-smtp'));
    const got = await readToEnd(s, 5000);
    expect(got.data.toString('latin1')).toBe('421 4.3.2 mail.example.org Service not available\r\n');
    const sum = await d.summaryFor(s.port);
    expect(['backend_timeout', 'backend_unreachable']).toContain(sum.closeReason);
    expect(await d.metric('postern_backend_connect_failures_total', { listener: 'far-smtp', reason: String(sum.closeReason) })).toBeGreaterThanOrEqual(1);
    await goodClient(d, 'smtps', pki);
    expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
  });
});

describe('a backend that dies and comes back', () => {
  // Found by the fault soak (CI, 2026-12-02): the backend reset a connection between its accept
  // and postern's PROXY header write; the write failed at once and its 'error' event came before
  // the session's handlers were on, so the process died of an unhandled 'error' event. Without
  // the fix this loop killed postern within 10 s in 3 runs out of 3 (after 53 to 1,831 sessions).
  it('flap-smtp: killed and restarted every few ms for 8 s under 40 clients (PROXY v2): postern stays up, each client gets the answer, 421 4.3.2 or a reset, descriptors return', async () => {
    const base = await d.settledFds();
    const pid = d.pid;
    const until = Date.now() + 8000;
    const outcomes = { answered: 0, goodbye: 0, reset: 0, other: [] as string[] };
    const client = async () => {
      while (Date.now() < until && d.child.exitCode === null) {
        const s = await connectTls(d.port('flap-smtp')).catch((e: Error) => e);
        if (s instanceof Error) {
          outcomes.other.push(`connect: ${s.message}`);
          continue;
        }
        s.write('EHLO flap.example\r\n');
        const r = await readToEnd(s, 5000);
        const got = r.data.toString('latin1');
        // A backend reset in the middle of a session (before or after its greeting) reaches the
        // client as a reset.
        if (got === '220 flap.example ESMTP\r\n250 flap.example ok\r\n' && r.error === null) outcomes.answered++;
        else if (got === '421 4.3.2 mail.example.org Service not available\r\n' && r.error === null) outcomes.goodbye++;
        else if ((got === '' || got === '220 flap.example ESMTP\r\n') && r.error === 'ECONNRESET') outcomes.reset++;
        else outcomes.other.push(`${JSON.stringify(got)} ${r.error}`);
      }
    };
    const [kills] = await Promise.all([flapping.flap(8000), ...Array.from({ length: 40 }, client)]);
    // One summary line per session, taken first, whatever fails below: later tests find their
    // line by client port, and must not meet one of these (thousands of ports were used here).
    let summaries = 0;
    for (;;) {
      const line = await d.waitLog((l) => l.msg === 'connection closed' && l.listener === 'flap-smtp', 1000).catch(() => null);
      if (!line) break;
      summaries++;
    }
    expect(d.child.exitCode, `postern exited: ${d.stderr().slice(-2000)}`).toBeNull();
    expect(d.child.signalCode).toBeNull();
    expect(d.pid).toBe(pid);
    // How many times the backend flapped depends on how loaded the machine is (this process also
    // runs the 40 TLS clients: on 2 busy cores it managed 38-60 kills in 8 s, ~700 when idle), so
    // the count is not the measure; what matters is that every state of the backend was met:
    // sessions answered (up), refused with 421 (down), reset (killed mid-session).
    expect(kills).toBeGreaterThanOrEqual(20);
    expect(outcomes.other).toEqual([]);
    expect(outcomes.answered).toBeGreaterThan(0);
    expect(outcomes.goodbye).toBeGreaterThan(0);
    expect(outcomes.reset).toBeGreaterThan(0);
    // Every session was closed and counted under a stable reason.
    const reasons = (await d.metrics()).filter((m) => m.name === 'postern_connections_total' && m.labels.listener === 'flap-smtp').map((m) => m.labels.reason);
    expect(reasons.length).toBeGreaterThan(0);
    // backend_timeout: on a loaded machine a restarting backend may not accept within
    // timeouts.connect (seen in CI with four other test runs on 2 cores); the client got 421.
    for (const r of reasons) expect(['done', 'backend_unreachable', 'backend_timeout', 'backend_closed', 'backend_error', 'client_error', 'client_gone', 'handshake_failed']).toContain(r);
    expect(summaries).toBe(outcomes.answered + outcomes.goodbye + outcomes.reset);
    await goodClient(d, 'smtps', pki);
    expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
  }, 60_000);
});

describe('half-close and resets', () => {
  it('client FIN after its request -> the backend gets FIN, its late reply still reaches the client, then the client gets FIN', async () => {
    controlled.onConnect = (h) => {
      void h.ended.then(() => {
        h.socket.write('late reply after your FIN\r\n');
        h.socket.end();
      });
    };
    const base = await d.settledFds();
    const s = await connectTls(d.port('pipe'), { allowHalfOpen: true } as tls.ConnectionOptions);
    const got = readToEnd(s, 5000);
    s.end('request\r\n');
    const h = await controlled.forClient(s.port);
    await h.ended;
    expect(Buffer.concat(h.received).toString()).toBe('request\r\n');
    expect((await got).data.toString()).toBe('late reply after your FIN\r\n');
    expect(await d.summaryFor(s.port)).toMatchObject({ listener: 'pipe', closeReason: 'done', bytesIn: 9, bytesOut: 27 });
    expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
  });

  it('backend FIN first -> the client gets the data and its end, and can still send; the backend receives it, then the client\'s FIN', async () => {
    controlled.onConnect = (h) => {
      h.socket.end('server is done talking\r\n');
    };
    const base = await d.settledFds();
    const s = await connectTls(d.port('pipe'), { allowHalfOpen: true } as tls.ConnectionOptions);
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    await new Promise<void>((r) => s.once('end', () => r()));
    expect(Buffer.concat(chunks).toString()).toBe('server is done talking\r\n');
    const h = await controlled.forClient(s.port);
    s.end('client still talking\r\n');
    await h.ended;
    expect(Buffer.concat(h.received).toString()).toBe('client still talking\r\n');
    expect(await d.summaryFor(s.port)).toMatchObject({ listener: 'pipe', closeReason: 'done' });
    s.destroy();
    expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
  });

  it('a client reset (RST) reaches the backend as a reset (ECONNRESET), client_error', async () => {
    controlled.onConnect = () => {};
    const base = await d.settledFds();
    const raw = net.connect(d.port('pipe'), '127.0.0.1');
    raw.on('error', () => {});
    const s = await connectTls(0, { socket: raw });
    s.on('error', () => {});
    const port = raw.localPort!;
    s.write('hello\r\n');
    const h = await controlled.forClient(port);
    while (h.received.length === 0) await sleep(10);
    raw.resetAndDestroy();
    expect(await h.error).toBe('ECONNRESET');
    expect(await d.summaryFor(port)).toMatchObject({ listener: 'pipe', closeReason: 'client_error', side: 'client', detail: 'ECONNRESET' });
    expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
  });

  it('a backend reset (RST) reaches the client as a reset (ECONNRESET), backend_error', async () => {
    controlled.onConnect = (h) => {
      const reset = () => h.socket.resetAndDestroy();
      if (h.received.length > 0) reset();
      else h.socket.once('data', reset);
    };
    const base = await d.settledFds();
    const raw = net.connect(d.port('pipe'), '127.0.0.1');
    let resolveError!: (e: string) => void;
    const clientError = new Promise<string>((r) => (resolveError = r));
    const onError = (e: NodeJS.ErrnoException) => resolveError(e.code ?? e.message);
    raw.on('error', onError);
    const s = await connectTls(0, { socket: raw });
    // The TLS socket reads through the TCP handle: the reset surfaces on whichever of the two.
    s.on('error', onError);
    const port = raw.localPort!;
    s.write('hello\r\n');
    expect(await clientError).toBe('ECONNRESET');
    expect(await d.summaryFor(port)).toMatchObject({ listener: 'pipe', closeReason: 'backend_error', side: 'backend', detail: 'ECONNRESET' });
    expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
  });
});
