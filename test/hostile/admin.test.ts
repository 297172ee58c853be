// threats.md "The admin endpoint: many idle connections never block /healthz or /readyz", against
// the compiled daemon (issue 14, finding 7). A Kubernetes liveness probe that times out restarts
// the pod and drops every mail session, so the probes must be answered while one client holds
// hundreds of idle connections, and while many clients (distinct 127.x.y.z addresses) each hold
// a few; idle sockets are closed within a few seconds; refusals are counted and logged without
// one line per socket; the daemon's descriptors come back to baseline.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import http from 'node:http';
import net from 'node:net';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { buildOnce, spawnDaemon, stopAll, sleep, type SpawnedPostern } from './harness.ts';

let pki: TestPki;
let mail: CertFiles;

beforeAll(async () => {
  buildOnce();
  pki = await makePki();
  mail = await pki.issue('mail', { names: ['mail.example.org'] });
}, 120_000);

afterAll(stopAll);

/** One GET on its own connection (no keep-alive), from `localAddress`; rejects after `timeoutMs`. */
function probe(port: number, path: string, localAddress: string, timeoutMs = 1500): Promise<{ status: number; ms: number }> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, localAddress, agent: false, timeout: timeoutMs }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: Date.now() - t0 }));
    });
    req.on('timeout', () => req.destroy(new Error(`${path} from ${localAddress}: no answer within ${timeoutMs} ms`)));
    req.on('error', (e) => reject(new Error(`${path} from ${localAddress}: ${e.message}`)));
  });
}

interface Idle {
  sockets: net.Socket[];
  /** Milliseconds from connect to the server's close, per socket that the server closed. */
  closedAfter: number[];
  /** Sockets the server refused or reset before they connected, or closed at once. */
  refused: number;
  /** Reopens every socket the server closes, until stop(). */
  stop(): void;
  destroy(): void;
}

/** `count` connections from `localAddress` that connect and never send a byte. */
async function holdIdle(port: number, localAddress: string, count: number, opts: { reopen?: boolean } = {}): Promise<Idle> {
  const idle: Idle = {
    sockets: [],
    closedAfter: [],
    refused: 0,
    stop: () => (stopped = true),
    destroy: () => {
      stopped = true;
      for (const s of idle.sockets) s.destroy();
    },
  };
  let stopped = false;
  const open = (): Promise<void> =>
    new Promise((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port, localAddress });
      idle.sockets.push(s);
      let connectedAt = 0;
      s.on('error', () => {});
      s.once('connect', () => {
        connectedAt = Date.now();
        resolve();
      });
      s.once('close', () => {
        if (connectedAt === 0) {
          idle.refused++;
          resolve();
        } else idle.closedAfter.push(Date.now() - connectedAt);
        if (opts.reopen && !stopped) void open();
      });
    });
  const batch = 32;
  for (let i = 0; i < count; i += batch) await Promise.all(Array.from({ length: Math.min(batch, count - i) }, open));
  return idle;
}

async function waitReady(d: SpawnedPostern) {
  const until = Date.now() + 5000;
  for (;;) {
    const r = await probe(d.adminPort, '/readyz', '127.0.0.1').catch(() => null);
    if (r?.status === 200) return;
    if (Date.now() > until) throw new Error('/readyz never 200');
    await sleep(100);
  }
}

const refusalLines = (d: SpawnedPostern) => d.logs.filter((l) => l.msg.startsWith('admin connections refused'));

describe('the admin endpoint under idle connections', () => {
  it('one client holding 300 idle connections (reopening each one the server closes) does not block /healthz or /readyz from another address', async () => {
    const d = await spawnDaemon({ dir: pki.dir, certs: [{ cert: mail.cert, key: mail.key }], listeners: [{ name: 'imaps', protocol: 'imap' }], level: 'info' });
    await waitReady(d);
    const base = await d.settledFds();
    const flood = await holdIdle(d.adminPort, '127.0.0.1', 300, { reopen: true });
    try {
      for (let i = 0; i < 5; i++) {
        expect((await probe(d.adminPort, '/healthz', '127.0.0.2')).status).toBe(200);
        expect((await probe(d.adminPort, '/readyz', '127.0.0.3')).status).toBe(200);
        await sleep(300);
      }
    } finally {
      flood.destroy();
    }
    // Counted, by reason; logged a few times, never once per refused socket.
    expect(await d.metric('postern_admin_connections_refused_total', { reason: 'too_many_from_client' })).toBeGreaterThanOrEqual(250);
    expect(refusalLines(d).length).toBeGreaterThanOrEqual(1);
    expect(refusalLines(d).length).toBeLessThanOrEqual(4);
    expect(refusalLines(d)[0]).toMatchObject({ level: 'warn', reason: 'too_many_from_client', client: '127.0.0.1' });
    expect(await d.fdsBackTo(base, 6000)).toBeLessThanOrEqual(base);
  }, 60_000);

  it('60 clients holding 4 idle connections each do not block /healthz or /readyz', async () => {
    const d = await spawnDaemon({ dir: pki.dir, certs: [{ cert: mail.cert, key: mail.key }], listeners: [{ name: 'imaps', protocol: 'imap' }], level: 'info' });
    await waitReady(d);
    const base = await d.settledFds();
    const floods: Idle[] = [];
    try {
      for (let i = 1; i <= 60; i++) floods.push(await holdIdle(d.adminPort, `127.0.1.${i}`, 4, { reopen: true }));
      for (let i = 0; i < 5; i++) {
        expect((await probe(d.adminPort, '/healthz', '127.0.0.2')).status).toBe(200);
        expect((await probe(d.adminPort, '/readyz', '127.0.0.3')).status).toBe(200);
        await sleep(300);
      }
    } finally {
      for (const f of floods) f.destroy();
    }
    expect(await d.metric('postern_admin_connections_refused_total', { reason: 'too_many_connections' })).toBeGreaterThan(0);
    expect(refusalLines(d).length).toBeLessThanOrEqual(4);
    expect(await d.fdsBackTo(base, 6000)).toBeLessThanOrEqual(base);
  }, 60_000);

  it('closes a connection that sends no complete request within about 2 s, and an idle keep-alive connection as fast', async () => {
    const d = await spawnDaemon({ dir: pki.dir, certs: [{ cert: mail.cert, key: mail.key }], listeners: [{ name: 'imaps', protocol: 'imap' }], level: 'info' });
    await waitReady(d);
    const base = await d.settledFds();
    // Silent sockets, and one that sends half a request head (slowloris).
    const silent = await holdIdle(d.adminPort, '127.0.0.4', 5);
    const partial = await holdIdle(d.adminPort, '127.0.0.5', 1);
    partial.sockets[0]!.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
    const until = Date.now() + 5000;
    while (silent.closedAfter.length + partial.closedAfter.length < 6 && Date.now() < until) await sleep(50);
    expect(silent.closedAfter).toHaveLength(5);
    expect(partial.closedAfter).toHaveLength(1);
    for (const ms of [...silent.closedAfter, ...partial.closedAfter]) {
      expect(ms).toBeGreaterThanOrEqual(1500);
      expect(ms).toBeLessThan(3500);
    }
    expect(await d.metric('postern_admin_connections_refused_total', { reason: 'request_timeout' })).toBe(6);

    // A keep-alive client (a Prometheus scraper): answered, then its idle connection is closed
    // by the server within a few seconds.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const socketClosed = new Promise<number>((resolve) => {
      const req = http.get({ host: '127.0.0.1', port: d.adminPort, path: '/metrics', agent }, (res) => {
        res.resume();
        res.on('end', () => {
          const t = Date.now();
          req.socket!.once('close', () => resolve(Date.now() - t));
        });
      });
    });
    const idleMs = await socketClosed;
    agent.destroy();
    expect(idleMs).toBeLessThan(3500);
    expect(await d.fdsBackTo(base, 6000)).toBeLessThanOrEqual(base);
  }, 30_000);
});
