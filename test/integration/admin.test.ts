// The admin endpoint of issue 5 against a running postern: metric values after real traffic (a
// served handshake, a strict refusal), /healthz, /readyz following a backend that goes away and
// a listener that stops, backend health checks sending a real PROXY header, 404/405/400.
import { describe, it, expect, beforeAll, onTestFinished } from 'vitest';
import net from 'node:net';
import { X509Certificate } from 'node:crypto';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { scenario } from '../helpers/scenario.ts';
import { startPostern, type RunningPostern } from '../helpers/postern.ts';
import { startBackend } from '../helpers/backend.ts';
import { freePort } from '../helpers/ports.ts';
import { tlsOk, tlsTry, readUntil, readToEnd } from '../helpers/clients.ts';
import { startAdmin, readinessOf, scopeOf, unknownListeners, type Readiness, type ReadinessInput } from '../../src/admin.ts';
import { processState } from '../../src/commands/run.ts';
import { BackendHealth, healthTargets } from '../../src/backend/health.ts';
import { createLogger } from '../../src/log.ts';
import { Metrics } from '../../src/metrics.ts';

let pki: TestPki;
let mail: CertFiles;

beforeAll(async () => {
  pki = await makePki();
  mail = await pki.issue('mail', { names: ['mail.example.org'] });
});

const quiet = createLogger('fatal');

/** The admin endpoint over a running postern, wired as `postern run` wires it. */
async function admin(p: RunningPostern) {
  const d = p.daemon;
  const health = new BackendHealth(() => healthTargets(d.listeners.map((l) => l.env.listener)), { intervalMs: 60_000, timeoutMs: 2000, log: quiet, metrics: d.metrics });
  health.start();
  onTestFinished(() => health.stop());
  await health.first;
  const readiness = (): ReadinessInput => ({ ...processState(d, health), backendChecks: { intervalMs: 60_000 } });
  const server = await startAdmin({ listen: { host: '127.0.0.1', port: 0 }, metrics: d.metrics, readiness, log: quiet });
  onTestFinished(() => server.close());
  const base = `http://127.0.0.1:${server.port}`;
  return { health, base, get: (path: string, init?: RequestInit) => fetch(base + path, init) };
}

/** Parses Prometheus text into samples: name, labels, value. */
function samples(text: string): Array<{ name: string; labels: Record<string, string>; value: number }> {
  const out: Array<{ name: string; labels: Record<string, string>; value: number }> = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`unparsable metrics line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

/** The value of the one sample with exactly these labels, or undefined. */
function value(text: string, name: string, labels: Record<string, string>): number | undefined {
  const want = Object.entries(labels).sort();
  const hits = samples(text).filter((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === JSON.stringify(want));
  expect(hits.length).toBeLessThanOrEqual(1);
  return hits[0]?.value;
}

describe('admin endpoint', () => {
  it('/metrics reports the values of real traffic: a served session and a strict refusal', async () => {
    const s = await scenario(pki, { certs: [mail], listener: { protocol: 'tls', sni: 'strict' } });
    const a = await admin(s.postern);

    // One full session with SNI mail.example.org: 1000 bytes in, echoed back out.
    const socket = await tlsOk(s.port, { servername: 'mail.example.org', ca: pki.ca.certPem });
    const version = socket.getProtocol();
    const payload = Buffer.alloc(1000, 'x');
    const ended = readToEnd(socket);
    socket.write(payload);
    await readUntil(socket, payload.length);
    socket.end();
    await ended;
    await s.postern.summary((l) => l.clientPort === socket.clientPort);

    // One strict refusal: an unknown name gets unrecognized_name before any handshake.
    const refused = await tlsTry(s.port, { servername: 'unknown.example.net', ca: pki.ca.certPem });
    expect(refused.socket).toBeNull();
    expect(refused.error?.message).toContain('SSL alert number 112');
    await s.postern.summary((l) => l.clientPort === refused.localPort);

    const res = await a.get('/metrics');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe(s.postern.daemon.metrics.registry.contentType);
    const text = await res.text();
    expect(value(text, 'postern_sni_decisions_total', { listener: 'l', class: 'exact', decision: 'served' })).toBe(1);
    expect(value(text, 'postern_sni_decisions_total', { listener: 'l', class: 'unknown', decision: 'refused' })).toBe(1);
    expect(value(text, 'postern_alerts_sent_total', { listener: 'l', alert: 'unrecognized_name' })).toBe(1);
    expect(value(text, 'postern_handshakes_total', { listener: 'l', version: version!, result: 'ok' })).toBe(1);
    // The refusal happened before any handshake: no failed handshake is counted for it.
    expect(value(text, 'postern_handshakes_total', { listener: 'l', version: 'none', result: 'failed' })).toBeUndefined();
    expect(value(text, 'postern_connections_total', { listener: 'l', reason: 'done' })).toBe(1);
    expect(value(text, 'postern_connections_total', { listener: 'l', reason: 'sni_refused' })).toBe(1);
    expect(value(text, 'postern_connections_active', { listener: 'l' })).toBe(0);
    expect(value(text, 'postern_bytes_total', { listener: 'l', direction: 'in' })).toBe(1000);
    expect(value(text, 'postern_bytes_total', { listener: 'l', direction: 'out' })).toBe(1000);
    expect(value(text, 'postern_backend_connect_seconds_count', { listener: 'l' })).toBe(1);
    const notAfter = Math.floor(new Date(new X509Certificate(mail.certPem).validTo).getTime() / 1000);
    expect(value(text, 'postern_certificate_not_after_seconds', { file: mail.cert, name: 'mail.example.org' })).toBe(notAfter);
    expect(value(text, 'postern_backend_up', { listener: 'l', address: `127.0.0.1:${s.backend!.port}` })).toBe(1);

    // HEAD: the headers, no body.
    const head = await a.get('/metrics', { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(await head.text()).toBe('');
  });

  it('/healthz is 200; /readyz follows the backend and the listeners', async () => {
    const s = await scenario(pki, { certs: [mail], listener: { protocol: 'tls', sni: 'strict' } });
    const a = await admin(s.postern);
    const address = `127.0.0.1:${s.backend!.port}`;

    const health = await a.get('/healthz');
    expect(health.status).toBe(200);
    expect(health.headers.get('content-type')).toContain('application/json');
    expect(await health.json()).toEqual({ status: 'ok' });

    const ready = await a.get('/readyz');
    expect(ready.status).toBe(200);
    const r1 = (await ready.json()) as Readiness;
    expect(r1).toMatchObject({ ready: true, listeners: [{ name: 'l', bound: true }], certificates: { loaded: 1 }, problems: [] });
    expect(r1.backends).toEqual([{ listener: 'l', address, reachable: true, error: null, checkedAt: expect.any(String) }]);

    // The health check spoke the PROXY header the backend expects, with real addresses.
    const probe = s.backend!.connections[0]!;
    await probe.closed;
    expect(probe.header).toMatchObject({ version: 2, command: 'PROXY', family: 'TCP4', source: { address: '127.0.0.1' }, destination: { address: '127.0.0.1', port: s.backend!.port } });
    expect(probe.data.length).toBe(0);

    // The backend goes away: the next round sees it, /readyz says so, and so does the gauge.
    await s.backend!.close();
    await a.health.check();
    const down = await a.get('/readyz');
    expect(down.status).toBe(503);
    const r2 = (await down.json()) as Readiness;
    expect(r2.ready).toBe(false);
    expect(r2.backends).toEqual([{ listener: 'l', address, reachable: false, error: 'ECONNREFUSED', checkedAt: expect.any(String) }]);
    expect(r2.problems).toEqual([`backend ${address} (listener "l") unreachable: ECONNREFUSED`]);
    expect(value(await (await a.get('/metrics')).text(), 'postern_backend_up', { listener: 'l', address })).toBe(0);
    // /healthz does not care: the process is alive.
    expect((await a.get('/healthz')).status).toBe(200);

    // A listener that is no longer bound is a problem of its own.
    await s.postern.daemon.stop();
    const r3 = (await (await a.get('/readyz')).json()) as Readiness;
    expect(r3.listeners).toEqual([{ name: 'l', bound: false }]);
    expect(r3.problems).toContain('listener "l" is not bound');
  });

  it('checks every distinct backend once per round, routes included, each with its own PROXY version', async () => {
    const main = await startBackend({ mode: 'echo', proxy: true });
    const routed = await startBackend({ mode: 'echo', proxy: true });
    const bare = await startBackend({ mode: 'echo', proxy: false });
    onTestFinished(async () => {
      await main.close();
      await routed.close();
      await bare.close();
    });
    const [p1, p2] = [await freePort(), await freePort()];
    const p = await startPostern(
      pki.dir,
      `log: { level: fatal }
certificates:
  - { cert: ${mail.cert}, key: ${mail.key} }
listeners:
  - name: a
    listen: "127.0.0.1:${p1}"
    protocol: tls
    tls: implicit
    hostname: mail.example.org
    backend: { address: "127.0.0.1:${main.port}", proxyProtocol: v1 }
    routes:
      - serverNames: ["*.example.com"]
        backend: { address: "127.0.0.1:${routed.port}", proxyProtocol: v2 }
      - serverNames: ["*.example.net"]
        backend: { address: "127.0.0.1:${bare.port}", proxyProtocol: none }
  - name: b
    listen: "127.0.0.1:${p2}"
    protocol: tls
    tls: implicit
    hostname: mail.example.org
    backend: { address: "127.0.0.1:${main.port}", proxyProtocol: v1 }
`,
    );
    onTestFinished(() => p.stop());
    const a = await admin(p);
    const r = (await (await a.get('/readyz')).json()) as Readiness;
    expect(r.ready).toBe(true);
    expect(r.backends.map((b) => [b.listener, b.address, b.reachable])).toEqual([
      ['a', `127.0.0.1:${main.port}`, true],
      ['a', `127.0.0.1:${routed.port}`, true],
      ['a', `127.0.0.1:${bare.port}`, true],
      ['b', `127.0.0.1:${main.port}`, true],
    ]);
    // One connection each, though listener b shares a's backend.
    for (const b of [main, routed, bare]) {
      expect(b.connections).toHaveLength(1);
      await b.connections[0]!.closed;
    }
    expect(main.connections[0]!.headerBytes?.toString('latin1')).toMatch(/^PROXY TCP4 127\.0\.0\.1 127\.0\.0\.1 \d+ \d+\r\n$/);
    expect(routed.connections[0]!.header).toMatchObject({ version: 2, command: 'PROXY' });
    expect(bare.connections[0]!.header).toBeNull();
    expect(bare.connections[0]!.data.length).toBe(0);
  });

  it('/readyz?listener=NAME judges one listener: a down IMAP backend leaves the MX listener ready; an unknown name is a 404', async () => {
    const mx = await startBackend({ mode: 'echo', proxy: true });
    const imap = await startBackend({ mode: 'echo', proxy: true });
    onTestFinished(async () => {
      await mx.close();
      await imap.close();
    });
    const [p1, p2] = [await freePort(), await freePort()];
    const p = await startPostern(
      pki.dir,
      `log: { level: fatal }
certificates:
  - { cert: ${mail.cert}, key: ${mail.key} }
listeners:
  - name: mx
    listen: "127.0.0.1:${p1}"
    protocol: tls
    tls: implicit
    hostname: mail.example.org
    backend: { address: "127.0.0.1:${mx.port}", proxyProtocol: v2 }
  - name: imap
    listen: "127.0.0.1:${p2}"
    protocol: tls
    tls: implicit
    hostname: mail.example.org
    backend: { address: "127.0.0.1:${imap.port}", proxyProtocol: v2 }
`,
    );
    onTestFinished(() => p.stop());
    const a = await admin(p);
    expect((await a.get('/readyz?listener=mx')).status).toBe(200);
    expect((await a.get('/readyz?listener=imap')).status).toBe(200);

    await imap.close();
    await a.health.check();
    const all = await a.get('/readyz');
    expect(all.status).toBe(503);
    const one = await a.get('/readyz?listener=mx');
    expect(one.status).toBe(200);
    const r = (await one.json()) as Readiness;
    expect(r).toMatchObject({ ready: true, scope: ['mx'], listeners: [{ name: 'mx', bound: true }], backendChecks: { enabled: true, intervalMs: 60_000 }, problems: [] });
    expect(r.backends.map((b) => [b.listener, b.address, b.reachable])).toEqual([['mx', `127.0.0.1:${mx.port}`, true]]);

    const down = await a.get('/readyz?listener=imap');
    expect(down.status).toBe(503);
    expect(((await down.json()) as Readiness).problems).toEqual([`backend 127.0.0.1:${imap.port} (listener "imap") unreachable: ECONNREFUSED`]);
    // Several listeners: ready only when all of them are.
    expect((await a.get('/readyz?listener=mx&listener=imap')).status).toBe(503);
    expect((await a.get('/readyz?listener=mx,imap')).status).toBe(503);
    expect((await a.get('/readyz?listener=mx&listener=mx')).status).toBe(200);

    const unknown = await a.get('/readyz?listener=pop3&listener=mx');
    expect(unknown.status).toBe(404);
    expect(unknown.headers.get('content-type')).toContain('application/json');
    expect(await unknown.json()).toEqual({ error: 'no listener named "pop3"', unknown: ['pop3'], listeners: ['mx', 'imap'] });
    expect((await a.get('/readyz?listener=')).status).toBe(404);
    expect((await a.get('/readyz?listener=pop3', { method: 'HEAD' })).status).toBe(404);

    // The MX listener itself unbound: its own answer says so.
    await p.daemon.listener('mx').close();
    const unbound = (await (await a.get('/readyz?listener=mx')).json()) as Readiness;
    expect(unbound.problems).toEqual(['listener "mx" is not bound']);
  });

  it('answers 404, 405 and 400 without falling over', async () => {
    const s = await scenario(pki, { certs: [mail], listener: { protocol: 'tls', sni: 'strict' } });
    const a = await admin(s.postern);
    expect((await a.get('/')).status).toBe(404);
    expect((await a.get('/metrics/extra')).status).toBe(404);
    expect((await a.get('/nope?x=1')).status).toBe(404);
    expect((await a.get('/healthz?verbose=1')).status).toBe(200);
    for (const method of ['POST', 'PUT', 'DELETE']) {
      const res = await a.get('/metrics', { method, body: method === 'DELETE' ? undefined : 'x=1' });
      expect(res.status).toBe(405);
      expect(res.headers.get('allow')).toBe('GET, HEAD');
    }
    expect((await a.get('/readyz', { method: 'POST' })).status).toBe(405);
    // Not HTTP at all: node answers 400 and the endpoint keeps serving.
    const raw = await new Promise<string>((resolve, reject) => {
      const c = net.connect({ host: '127.0.0.1', port: Number(new URL(a.base).port) });
      let got = '';
      c.on('data', (d: Buffer) => (got += d.toString('latin1')));
      c.on('close', () => resolve(got));
      c.on('error', reject);
      c.write('\x16\x03\x01 not http\r\n\r\n');
    });
    expect(raw).toMatch(/^HTTP\/1\.1 400 /);
    expect((await a.get('/healthz')).status).toBe(200);
  });
});

describe('admin endpoint connection limits (issue 14, finding 7)', () => {
  const ready = (): ReadinessInput => ({ listeners: [{ name: 'l', bound: true }], certificates: 1, backendChecks: { intervalMs: null }, backends: [] });

  it('pipelined requests on one keep-alive connection are all answered; the connection is closed about 2 s after the last response', async () => {
    const server = await startAdmin({ listen: { host: '127.0.0.1', port: 0 }, metrics: new Metrics(), readiness: ready, log: quiet });
    onTestFinished(() => server.close());
    const c = net.connect({ host: '127.0.0.1', port: server.port });
    let got = '';
    let lastData = 0;
    c.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      lastData = Date.now();
    });
    const closed = new Promise<void>((r) => c.on('close', () => r()));
    c.write('GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /readyz HTTP/1.1\r\nHost: a\r\n\r\nGET /metrics HTTP/1.1\r\nHost: a\r\n\r\n');
    await closed;
    const closedAfter = Date.now() - lastData;
    expect(got.match(/^HTTP\/1\.1 200 OK/gm)).toHaveLength(3);
    expect(got).toMatch(/Keep-Alive: timeout=2/);
    expect(closedAfter).toBeGreaterThan(1500);
    expect(closedAfter).toBeLessThan(3500);
  });

  it('/metrics carries the endpoint\'s own refusal counter, every reason from 0', async () => {
    const server = await startAdmin({ listen: { host: '127.0.0.1', port: 0 }, metrics: new Metrics(), readiness: ready, log: quiet });
    onTestFinished(() => server.close());
    const text = await (await fetch(`http://127.0.0.1:${server.port}/metrics`)).text();
    for (const reason of ['too_many_from_client', 'too_many_connections', 'request_timeout']) expect(value(text, 'postern_admin_connections_refused_total', { reason })).toBe(0);
    // Still one valid exposition: every metric's TYPE line once.
    const types = text.split('\n').filter((l) => l.startsWith('# TYPE '));
    expect(new Set(types).size).toBe(types.length);
  });
});

describe('readinessOf', () => {
  const CHECKS = { intervalMs: 30_000 };
  const backend = (reachable: boolean, checkedAt: string | null, error: string | null = null) => ({ listener: 'smtp', address: '10.0.0.5:25', reachable, error, checkedAt });

  it('is ready when everything is', () => {
    expect(readinessOf({ listeners: [{ name: 'smtp', bound: true }], certificates: 2, backendChecks: CHECKS, backends: [backend(true, 'now')] })).toEqual({
      ready: true,
      scope: null,
      listeners: [{ name: 'smtp', bound: true }],
      certificates: { loaded: 2 },
      backendChecks: { enabled: true, intervalMs: 30_000 },
      backends: [backend(true, 'now')],
      problems: [],
    });
  });

  it('names every problem', () => {
    const r = readinessOf({ listeners: [{ name: 'smtp', bound: false }], certificates: 0, backendChecks: CHECKS, backends: [backend(false, null), { ...backend(false, 'now', 'ETIMEDOUT'), address: '[::1]:143', listener: 'imap' }] });
    expect(r.ready).toBe(false);
    expect(r.problems).toEqual([
      'listener "smtp" is not bound',
      'no certificates loaded',
      'backend 10.0.0.5:25 (listener "smtp") not checked yet',
      'backend [::1]:143 (listener "imap") unreachable: ETIMEDOUT',
    ]);
    expect(readinessOf({ listeners: [], certificates: 1, backendChecks: CHECKS, backends: [] }).problems).toEqual(['no listeners']);
  });

  const two: ReadinessInput = {
    listeners: [{ name: 'smtp', bound: true }, { name: 'imap', bound: true }],
    certificates: 1,
    certificatesMissing: [{ listener: 'imap', hostname: 'imap.example.org' }],
    backendChecks: CHECKS,
    backends: [backend(true, 'now'), { ...backend(false, 'now', 'ECONNREFUSED'), address: '10.0.0.6:143', listener: 'imap' }],
  };

  it('a scope judges only its listeners: their binding, hostname coverage and backends', () => {
    expect(readinessOf(two).ready).toBe(false);
    const smtp = readinessOf(two, ['smtp']);
    expect(smtp).toMatchObject({ ready: true, scope: ['smtp'], listeners: [{ name: 'smtp', bound: true }], backends: [backend(true, 'now')], problems: [] });
    expect(readinessOf(two, ['imap']).problems).toEqual([
      'listener "imap": no loaded certificate covers its hostname "imap.example.org"',
      'backend 10.0.0.6:143 (listener "imap") unreachable: ECONNREFUSED',
    ]);
    expect(readinessOf(two, ['smtp', 'imap']).ready).toBe(false);
    // What concerns the whole process counts for every scope.
    expect(readinessOf({ ...two, certificates: 0 }, ['smtp']).problems).toEqual(['no certificates loaded']);
    expect(readinessOf({ ...two, problems: ['1 of 2 workers running'] }, ['smtp']).problems).toEqual(['1 of 2 workers running']);
  });

  it('with backend checks off, backends do not count and the answer says so', () => {
    const r = readinessOf({ ...two, certificatesMissing: [], backendChecks: { intervalMs: null } });
    expect(r).toMatchObject({ ready: true, backendChecks: { enabled: false, intervalMs: null }, backends: [], problems: [] });
  });

  it('reads the scope from repeated or comma-separated listener parameters, and names the unknown ones', () => {
    expect(scopeOf(new URLSearchParams(''))).toBeNull();
    expect(scopeOf(new URLSearchParams('verbose=1'))).toBeNull();
    expect(scopeOf(new URLSearchParams('listener=smtp&listener=imap'))).toEqual(['smtp', 'imap']);
    expect(scopeOf(new URLSearchParams('listener=smtp,imap&listener=smtp'))).toEqual(['smtp', 'imap']);
    expect(unknownListeners(two, ['smtp', 'pop3', ''])).toEqual(['pop3', '']);
    // The supervisor knows the configured names before any worker has reported.
    expect(unknownListeners({ ...two, listeners: [], names: ['smtp'] }, ['smtp'])).toEqual([]);
  });
});

describe('startAdmin', () => {
  it('serves a summed metrics source, and a readiness that throws becomes a 500', async () => {
    const m = new Metrics();
    m.reloads.inc({ trigger: 'sighup', result: 'ok' }, 3);
    const server = await startAdmin({
      listen: { host: '127.0.0.1', port: 0 },
      metrics: { contentType: 'text/plain; version=0.0.4; charset=utf-8', metrics: () => m.registry.metrics() },
      readiness: () => {
        throw new Error('boom');
      },
      log: quiet,
    });
    onTestFinished(() => server.close());
    const text = await (await fetch(`http://127.0.0.1:${server.port}/metrics`)).text();
    expect(value(text, 'postern_reloads_total', { trigger: 'sighup', result: 'ok' })).toBe(3);
    expect((await fetch(`http://127.0.0.1:${server.port}/readyz`)).status).toBe(500);
  });

  it('rejects when the address is taken', async () => {
    const m = new Metrics();
    const none = (): ReadinessInput => ({ listeners: [], certificates: 0, backendChecks: { intervalMs: null }, backends: [] });
    const first = await startAdmin({ listen: { host: '127.0.0.1', port: 0 }, metrics: m, readiness: none, log: quiet });
    onTestFinished(() => first.close());
    await expect(startAdmin({ listen: { host: '127.0.0.1', port: first.port }, metrics: m, readiness: none, log: quiet })).rejects.toMatchObject({ code: 'EADDRINUSE' });
  });
});
