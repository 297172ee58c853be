// threats.md "PROXY protocol" against the compiled daemon in a child process: the headers postern
// writes to its backends, compared byte for byte with headers built here from haproxy's
// proxy-protocol.txt (v1 TCP4/TCP6, IPv4-mapped IPv6 written as TCP4; v2 signature, version and
// command, family, exact length, TLVs ALPN, AUTHORITY = the validated lowercase SNI, SSL with
// client/verify and VERSION/CIPHER sub-TLVs); a PROXY header from a client on a public listener
// is bad input, never trusted; and HAProxy's `accept-proxy` parses what postern sends.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import net from 'node:net';
import tls from 'node:tls';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { rawExchange, tlsOk } from '../helpers/clients.ts';
import { buildClientHello } from '../helpers/hello-builder.ts';
import { startBackend, type RecordingBackend } from '../helpers/backend.ts';
import { freePort } from '../helpers/ports.ts';
import {
  buildOnce, spawnDaemon, stopAll, goodClient, connectPlain, readStream, sessionsOf, sleep, GREETING, type SpawnedPostern,
} from './harness.ts';

const HAPROXY = '/usr/sbin/haproxy';

let pki: TestPki;
let mail: CertFiles;
let d: SpawnedPostern;

beforeAll(async () => {
  buildOnce();
  pki = await makePki();
  mail = await pki.issue('mail', { names: ['mail.example.org'] });
  d = await spawnDaemon({
    dir: pki.dir,
    certs: [{ cert: mail.cert, key: mail.key }],
    listeners: [
      { name: 'v1', protocol: 'smtp', proxyProtocol: 'v1' },
      { name: 'v1six', host: '::1', protocol: 'smtp', proxyProtocol: 'v1' },
      { name: 'v1mapped', host: '::', protocol: 'smtp', proxyProtocol: 'v1' },
      { name: 'v2', protocol: 'smtp', proxyProtocol: 'v2' },
      { name: 'v2six', host: '::1', protocol: 'smtp', proxyProtocol: 'v2' },
      { name: 'v2mapped', host: '::', protocol: 'smtp', proxyProtocol: 'v2' },
      { name: 'v2fb', protocol: 'smtp', sni: 'fallback', proxyProtocol: 'v2' },
      // Trusts PROXY headers only from 10.0.0.0/8: a loopback client is "the public".
      { name: 'lb', protocol: 'smtp', proxyProtocol: 'v2', extra: { acceptProxyProtocol: { from: ['10.0.0.0/8'] } } },
      { name: 'mx', protocol: 'smtp', tls: 'starttls', role: 'mx' },
    ],
  });
  for (const l of ['v1', 'v2', 'v2fb', 'lb', 'v1mapped', 'v2mapped']) await goodClient(d, l, pki);
  for (const l of ['v1six', 'v2six']) await goodClient(d, l, pki, { host: '::1' });
  await goodClient(d, 'mx', pki, { starttls: 'smtp' });
}, 120_000);

afterAll(stopAll);

// ---- expected headers, written from the spec (not from postern's encoder)

const SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

function tlv(type: number, value: Buffer): Buffer {
  return Buffer.concat([Buffer.from([type, value.length >> 8, value.length & 0xff]), value]);
}

function port16(p: number): Buffer {
  return Buffer.from([p >> 8, p & 0xff]);
}

/** PROXY v2, command PROXY (0x21); family 0x11 (TCP4, 4-byte addresses) or 0x21 (TCP6, 16-byte). */
function v2(family: 0x11 | 0x21, src: Buffer, dst: Buffer, sport: number, dport: number, tlvs: Buffer[]): Buffer {
  const body = Buffer.concat([src, dst, port16(sport), port16(dport), ...tlvs]);
  return Buffer.concat([SIGNATURE, Buffer.from([0x21, family, body.length >> 8, body.length & 0xff]), body]);
}

const LOOPBACK4 = Buffer.from([127, 0, 0, 1]);
const LOOPBACK6 = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

/** ALPN (0x01), AUTHORITY (0x02), SSL (0x20: client=0x01, verify=1, VERSION 0x21, CIPHER 0x23). */
function tlsTlvs(opts: { alpn: string | null; authority: string | null; version: string; cipher: string }): Buffer[] {
  const out: Buffer[] = [];
  if (opts.alpn) out.push(tlv(0x01, Buffer.from(opts.alpn)));
  if (opts.authority) out.push(tlv(0x02, Buffer.from(opts.authority)));
  out.push(tlv(0x20, Buffer.concat([Buffer.from([0x01, 0, 0, 0, 1]), tlv(0x21, Buffer.from(opts.version)), tlv(0x23, Buffer.from(opts.cipher))])));
  return out;
}

/** A TLS session through `listener`, one echo; returns the client socket facts and what the backend got. */
async function session(listener: string, opts: tls.ConnectionOptions & { host?: string } = {}) {
  const base = await d.settledFds();
  const s = await tlsOk(d.port(listener), { servername: 'mail.example.org', ca: pki.ca.certPem, ALPNProtocols: ['smtp'], ...opts });
  const facts = { clientPort: s.localPort!, listenPort: s.remotePort!, version: s.getProtocol()!, cipher: s.getCipher().name };
  const r = readStream(s);
  s.write('hello\r\n');
  await r.readUntil(/hello\r\n/);
  s.destroy();
  expect(await d.summaryFor(facts.clientPort)).toMatchObject({ listener, closeReason: 'done' });
  const mine = sessionsOf(d.backend(listener), facts.clientPort);
  expect(mine).toHaveLength(1);
  expect(mine[0]!.data.toString()).toBe('hello\r\n');
  await goodClient(d, listener, pki, { host: opts.host });
  expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
  return { ...facts, header: mine[0]!.headerBytes!, decoded: mine[0]!.header! };
}

describe('PROXY v1', () => {
  it('TCP4: "PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n"', async () => {
    const s = await session('v1');
    expect(s.header.toString('latin1')).toBe(`PROXY TCP4 127.0.0.1 127.0.0.1 ${s.clientPort} ${s.listenPort}\r\n`);
  });

  it('TCP6: "PROXY TCP6 ::1 ::1 ..." for an IPv6 client', async () => {
    const s = await session('v1six', { host: '::1' });
    expect(s.header.toString('latin1')).toBe(`PROXY TCP6 ::1 ::1 ${s.clientPort} ${s.listenPort}\r\n`);
  });

  it('an IPv4 client on a [::] listener (IPv4-mapped ::ffff:127.0.0.1) is written as TCP4', async () => {
    const s = await session('v1mapped');
    expect(s.header.toString('latin1')).toBe(`PROXY TCP4 127.0.0.1 127.0.0.1 ${s.clientPort} ${s.listenPort}\r\n`);
  });
});

describe('PROXY v2', () => {
  it('TCP4 with ALPN, AUTHORITY (the SNI, validated and lowercased) and SSL sub-TLVs, byte for byte', async () => {
    const s = await session('v2', { servername: 'MAIL.Example.ORG', checkServerIdentity: () => undefined });
    const want = v2(0x11, LOOPBACK4, LOOPBACK4, s.clientPort, s.listenPort, tlsTlvs({ alpn: 'smtp', authority: 'mail.example.org', version: s.version, cipher: s.cipher }));
    expect(s.header.toString('hex')).toBe(want.toString('hex'));
    expect(s.decoded).toMatchObject({ version: 2, command: 'PROXY', family: 'TCP4', authority: 'mail.example.org', alpn: 'smtp', ssl: { client: 1, verify: 1, version: s.version, cipher: s.cipher } });
  });

  it('TCP6: family 0x21, 16-byte addresses, length 36 + TLVs', async () => {
    const s = await session('v2six', { host: '::1' });
    const want = v2(0x21, LOOPBACK6, LOOPBACK6, s.clientPort, s.listenPort, tlsTlvs({ alpn: 'smtp', authority: 'mail.example.org', version: s.version, cipher: s.cipher }));
    expect(s.header.toString('hex')).toBe(want.toString('hex'));
    expect(s.header.readUInt16BE(14)).toBe(want.length - 16);
  });

  it('IPv4-mapped client on a [::] listener: family 0x11 (TCP4)', async () => {
    const s = await session('v2mapped');
    expect(s.header.toString('hex')).toBe(v2(0x11, LOOPBACK4, LOOPBACK4, s.clientPort, s.listenPort, tlsTlvs({ alpn: 'smtp', authority: 'mail.example.org', version: s.version, cipher: s.cipher })).toString('hex'));
  });

  it('TLS 1.2: VERSION "TLSv1.2" and the OpenSSL cipher name', async () => {
    const s = await session('v2', { maxVersion: 'TLSv1.2' });
    expect(s.version).toBe('TLSv1.2');
    expect(s.header.toString('hex')).toBe(v2(0x11, LOOPBACK4, LOOPBACK4, s.clientPort, s.listenPort, tlsTlvs({ alpn: 'smtp', authority: 'mail.example.org', version: 'TLSv1.2', cipher: s.cipher })).toString('hex'));
  });

  it('no AUTHORITY for an SNI the certificate does not cover (fallback), nor without SNI, nor without ALPN', async () => {
    const unknown = await session('v2fb', { servername: 'other.example.net', checkServerIdentity: () => undefined });
    expect(unknown.header.toString('hex')).toBe(v2(0x11, LOOPBACK4, LOOPBACK4, unknown.clientPort, unknown.listenPort, tlsTlvs({ alpn: 'smtp', authority: null, version: unknown.version, cipher: unknown.cipher })).toString('hex'));
    const none = await session('v2', { servername: '', checkServerIdentity: () => undefined, ALPNProtocols: undefined });
    expect(none.header.toString('hex')).toBe(v2(0x11, LOOPBACK4, LOOPBACK4, none.clientPort, none.listenPort, tlsTlvs({ alpn: null, authority: null, version: none.version, cipher: none.cipher })).toString('hex'));
  });
});

describe('a PROXY header from a client on a public listener is just bad input', () => {
  const FORGED_V1 = Buffer.from('PROXY TCP4 203.0.113.9 127.0.0.1 1234 465\r\n');
  const FORGED_V2 = v2(0x11, Buffer.from([203, 0, 113, 9]), LOOPBACK4, 1234, 465, []);

  for (const [name, forged] of [['v1', FORGED_V1], ['v2', FORGED_V2]] as const) {
    for (const listener of ['v2', 'lb']) {
      it(`${name} header + ClientHello on "${listener}" -> closed as not_tls, nothing sent back, the real address logged`, async () => {
        const base = await d.settledFds();
        const before = await d.metric('postern_connections_total', { listener, reason: 'not_tls' });
        const x = await rawExchange(d.port(listener), Buffer.concat([forged, buildClientHello({ sni: 'mail.example.org', alpn: ['smtp'] })]));
        expect(x.data.length).toBe(0);
        expect(x.closedAfterMs).toBeLessThan(1000);
        const s = await d.summaryFor(x.localPort);
        expect(s).toMatchObject({ listener, closeReason: 'not_tls', client: '127.0.0.1', clientPort: x.localPort, backend: null });
        // The forged address appears at most in the escaped debug dump of the bytes ("not TLS"),
        // never as a client.
        expect(d.logs.filter((l) => l.client === '203.0.113.9' || (l.msg !== 'not TLS' && JSON.stringify(l).includes('203.0.113.9')))).toEqual([]);
        expect(await d.metric('postern_connections_total', { listener, reason: 'not_tls' })).toBe(before + 1);
        expect(sessionsOf(d.backend(listener), x.localPort)).toHaveLength(0);
        expect(sessionsOf(d.backend(listener), 1234)).toHaveLength(0);
        await goodClient(d, listener, pki);
        expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
      });
    }
  }

  it('STARTTLS listener: a PROXY line is an unknown command (500); the plaintext session that follows carries the real address', async () => {
    const base = await d.settledFds();
    const c = await connectPlain(d.port('mx'));
    await c.reader.readUntil(GREETING.smtp);
    c.socket.write(FORGED_V1);
    expect(await c.reader.readUntil(/\r\n/)).toBe('500 5.5.2 Command not recognized\r\n');
    c.socket.write('EHLO client.example\r\n');
    await c.reader.readUntil(/^250 [^\r\n]*\r\n/m);
    c.socket.write('MAIL FROM:<a@example.net>\r\n');
    expect(await c.reader.readUntil(/\r\n/)).toBe('250 2.0.0 OK\r\n');
    c.socket.write('QUIT\r\n');
    await c.reader.readUntil(/221 [^\r\n]*\r\n/);
    c.socket.destroy();
    expect(await d.summaryFor(c.localPort)).toMatchObject({ client: '127.0.0.1', clientPort: c.localPort });
    const [conn] = sessionsOf(d.backend('mx'), c.localPort);
    expect(conn!.header).toMatchObject({ source: { address: '127.0.0.1', port: c.localPort } });
    expect(conn!.data.toString('latin1')).not.toContain('PROXY');
    expect(sessionsOf(d.backend('mx'), 1234)).toHaveLength(0);
    await goodClient(d, 'mx', pki, { starttls: 'smtp' });
    expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
  });
});

// ---- PROXY input from a trusted load balancer (acceptProxyProtocol; issue 14 finding 5,
// threats.md "One client against everyone"): the header's client is the client everywhere (limits,
// logs, the header sent onwards), IPv4-mapped IPv6 is the IPv4 client, malformed headers are
// refused as proxy_header_invalid and cost one connection, never the process.

describe('PROXY input from a trusted load balancer', () => {
  const LIMIT = 3;
  let pd: SpawnedPostern;
  let pid: number;
  /**
   * Claimed client ports: unique, so each summary line is found by its port. They sit below
   * Linux's ephemeral range (32768-60999): the HAProxy tests below look sessions up by the real
   * client's kernel-chosen port, and a claimed 42007 once matched a real 42007 in CI.
   */
  let nextPort = 12_000;

  beforeAll(async () => {
    pd = await spawnDaemon({
      dir: pki.dir,
      certs: [{ cert: mail.cert, key: mail.key }],
      listeners: [
        {
          name: 'lb',
          protocol: 'smtp',
          proxyProtocol: 'v2',
          // The deadline is far from the "at once" the half-close tests expect.
          timeouts: { handshake: '5s' },
          extra: { acceptProxyProtocol: { from: ['127.0.0.0/8'] }, limits: { maxConnectionsPerClient: LIMIT } },
        },
      ],
    });
    pid = pd.pid;
    await lbClient(v2(0x11, Buffer.from([192, 0, 2, 1]), Buffer.from([203, 0, 113, 25]), nextPort++, 465, []));
  }, 60_000);

  /** 16 bytes of ::ffff:a.b.c.d (RFC 4291 section 2.5.5.2), as a TCP6 block carries it. */
  const mapped = (v4: string) => Buffer.concat([Buffer.alloc(10), Buffer.from([0xff, 0xff]), Buffer.from(v4.split('.').map(Number))]);
  /** The v2 header HAProxy sends from `bind :::port v4v6` for an IPv4 client: family TCP6, mapped addresses. */
  const tcp6Mapped = (src: string, sport: number) => v2(0x21, mapped(src), mapped('203.0.113.25'), sport, 465, []);

  /** Connects from 127.0.0.1 (trusted), sends `header`, then a TLS handshake; never rejects. */
  function lbTry(header: Buffer): Promise<{ socket: tls.TLSSocket | null; error: string | null }> {
    return new Promise((resolve) => {
      const raw = net.connect({ host: '127.0.0.1', port: pd.port('lb'), noDelay: true });
      raw.on('error', () => {});
      raw.once('connect', () => {
        raw.write(header);
        const s = tls.connect({ socket: raw, servername: 'mail.example.org', ca: pki.ca.certPem, ALPNProtocols: ['smtp'] });
        let settled = false;
        const done = (socket: tls.TLSSocket | null, error: string | null) => {
          if (settled) return;
          settled = true;
          if (!socket) s.destroy();
          resolve({ socket, error });
        };
        s.once('secureConnect', () => {
          s.on('error', () => {});
          done(s, null);
        });
        s.once('error', (e: NodeJS.ErrnoException) => done(null, e.code ?? e.message));
        s.once('close', () => done(null, 'closed'));
      });
    });
  }

  /** A session through the load balancer that must be served: a round trip to the backend. */
  async function lbClient(header: Buffer): Promise<tls.TLSSocket> {
    const { socket, error } = await lbTry(header);
    if (!socket) throw new Error(`not served: ${error}`);
    const token = `tok${nextPort}x${Math.random().toString(36).slice(2, 8)}`;
    const r = readStream(socket);
    socket.write(`${token}\r\n`);
    await r.readUntil(new RegExp(token));
    r.detach();
    return socket;
  }

  /** The process that started is the process that answers, and it still serves a good client. */
  async function stillUp() {
    expect(pd.child.exitCode, pd.stderr()).toBeNull();
    expect(pd.child.pid).toBe(pid);
    const port = nextPort++;
    const s = await lbClient(v2(0x11, Buffer.from([192, 0, 2, 7]), Buffer.from([203, 0, 113, 25]), port, 465, []));
    s.destroy();
    expect(await pd.summaryFor(port)).toMatchObject({ closeReason: 'done', client: '192.0.2.7', clientPort: port });
  }

  it('a PROXY v2 TCP6 header with a v4-mapped source (as HAProxy `bind :::port v4v6` sends) counts the client as its IPv4 address', async () => {
    const base = await pd.settledFds();
    const ports = Array.from({ length: LIMIT }, () => nextPort++);
    const open: tls.TLSSocket[] = [];
    for (const p of ports) open.push(await lbClient(tcp6Mapped('198.51.100.1', p)));

    // 198.51.100.1 holds its LIMIT sessions; another IPv4 client behind the same load balancer
    // is a different client (not one shared "::ffff:0:0/64" bucket) and is served.
    const other = nextPort++;
    const s = await lbClient(tcp6Mapped('198.51.100.2', other));
    s.destroy();
    expect(await pd.summaryFor(other)).toMatchObject({ closeReason: 'done', client: '198.51.100.2', clientPort: other });
    const [conn] = sessionsOf(pd.backend('lb'), other);
    // Onwards the client is IPv4: family TCP4 (0x11), 4-byte addresses.
    expect(conn!.headerBytes![13]).toBe(0x11);
    expect(conn!.header).toMatchObject({ version: 2, family: 'TCP4', source: { address: '198.51.100.2', port: other }, destination: { address: '203.0.113.25', port: 465 } });

    // The same client spelled as plain IPv4 (a TCP4 header) is the same client: one too many.
    const again = nextPort++;
    const refused = await lbTry(v2(0x11, Buffer.from([198, 51, 100, 1]), Buffer.from([203, 0, 113, 25]), again, 465, []));
    expect(refused.socket).toBeNull();
    expect(await pd.summaryFor(again)).toMatchObject({ closeReason: 'too_many_from_client', client: '198.51.100.1' });

    for (const o of open) o.destroy();
    for (const p of ports) expect(await pd.summaryFor(p)).toMatchObject({ closeReason: 'done', client: '198.51.100.1', clientPort: p });
    expect(pd.logs.filter((l) => JSON.stringify(l).includes('::ffff:'))).toEqual([]);
    await stillUp();
    expect(await pd.fdsBackTo(base)).toBeLessThanOrEqual(base);
  });

  it('a PROXY v2 TCP6 header with a plain IPv6 source is logged in RFC 5952 form (longest zero run compressed)', async () => {
    const base = await pd.settledFds();
    const port = nextPort++;
    // 2001:db8:0:0:1:0:0:0 -> "2001:db8:0:0:1::" (the later, longer run), not "2001:db8::1:0:0:0".
    const src = Buffer.from('20010db8000000000001000000000000', 'hex');
    const dst = Buffer.from('20010db8000000000000000000000025', 'hex');
    const s = await lbClient(v2(0x21, src, dst, port, 465, []));
    s.destroy();
    expect(await pd.summaryFor(port)).toMatchObject({ closeReason: 'done', client: '2001:db8:0:0:1::', clientPort: port });
    const [conn] = sessionsOf(pd.backend('lb'), port);
    expect(conn!.header).toMatchObject({ family: 'TCP6', source: { address: '2001:db8:0:0:1::' }, destination: { address: '2001:db8::25' } });
    expect(await pd.fdsBackTo(base)).toBeLessThanOrEqual(base);
  });

  const partial: Array<[string, Buffer]> = [
    ['a half-sent PROXY v1 header', Buffer.from('PROXY TCP4 198.51.100.1 ')],
    ['a half-sent PROXY v2 header', v2(0x11, Buffer.from([198, 51, 100, 1]), Buffer.from([203, 0, 113, 25]), 1234, 465, []).subarray(0, 20)],
  ];
  for (const [name, bytes] of partial) {
    it(`${name} then FIN is closed at once as proxy_header_invalid (not at the deadline)`, async () => {
      const base = await pd.settledFds();
      const before = await pd.metric('postern_connections_total', { listener: 'lb', reason: 'proxy_header_invalid' });
      const x = await rawExchange(pd.port('lb'), bytes, { endAfterWrites: true, timeoutMs: 8000 });
      expect(x.data.length).toBe(0);
      expect(x.closedAfterMs).toBeLessThan(1000);
      expect(await pd.summaryFor(x.localPort)).toMatchObject({ listener: 'lb', closeReason: 'proxy_header_invalid', client: '127.0.0.1' });
      expect(await pd.metric('postern_connections_total', { listener: 'lb', reason: 'proxy_header_invalid' })).toBe(before + 1);
      await stillUp();
      expect(await pd.fdsBackTo(base)).toBeLessThanOrEqual(base);
    });
  }

  it('a FIN before any byte of the PROXY header is closed at once as client_gone', async () => {
    const x = await rawExchange(pd.port('lb'), Buffer.alloc(0), { endAfterWrites: true, timeoutMs: 8000 });
    expect(x.closedAfterMs).toBeLessThan(1000);
    expect(await pd.summaryFor(x.localPort)).toMatchObject({ listener: 'lb', closeReason: 'client_gone' });
  });

  // HAProxy listening on an IPv6 socket that also takes IPv4 (`bind :::port v4v6`; here bound to
  // ::ffff:127.0.0.1 to stay on loopback) sees IPv4 clients as ::ffff:a.b.c.d and says so in its
  // header: v2 family TCP6 with 16-byte mapped addresses, v1 "PROXY TCP6 ::ffff:a.b.c.d ...".
  describe('HAProxy in front with `bind [::ffff:127.0.0.1]:port v4v6`', () => {
    let haproxy: ChildProcess;
    let hlog = '';
    let feV2 = 0;
    let feV1 = 0;

    beforeAll(async () => {
      if (!existsSync(HAPROXY)) throw new Error(`${HAPROXY} not found: apt-get install haproxy (see .ci/run)`);
      [feV2, feV1] = [await freePort(), await freePort()];
      const cfg = join(pki.dir, 'haproxy-v4v6.cfg');
      writeFileSync(cfg, `global
  log stdout format raw local0 info
defaults
  mode tcp
  log global
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe_v2
  bind [::ffff:127.0.0.1]:${feV2} v4v6
  log-format "haproxy fe=%ft client=%ci:%cp"
  option logasap
  default_backend be_v2
frontend fe_v1
  bind [::ffff:127.0.0.1]:${feV1} v4v6
  log-format "haproxy fe=%ft client=%ci:%cp"
  option logasap
  default_backend be_v1
backend be_v2
  server postern 127.0.0.1:${pd.port('lb')} send-proxy-v2
backend be_v1
  server postern 127.0.0.1:${pd.port('lb')} send-proxy
`);
      haproxy = spawn(HAPROXY, ['-db', '-f', cfg], { stdio: ['ignore', 'pipe', 'pipe'] });
      haproxy.stdout!.on('data', (b: Buffer) => (hlog += b.toString()));
      haproxy.stderr!.on('data', (b: Buffer) => (hlog += b.toString()));
      for (let i = 0; i < 50 && !((await listening(feV2)) && (await listening(feV1))); i++) await sleep(100);
    }, 30_000);

    afterAll(() => {
      haproxy?.kill('SIGTERM');
    });

    /** TLS from `from` through HAProxy to postern, one round trip; the client's own port. */
    async function viaHaproxy(fe: number, from: string): Promise<tls.TLSSocket> {
      const s = await tlsOk(fe, { localAddress: from, servername: 'mail.example.org', ca: pki.ca.certPem, ALPNProtocols: ['smtp'] });
      const r = readStream(s);
      s.write('through haproxy\r\n');
      await r.readUntil(/through haproxy\r\n/);
      r.detach();
      return s;
    }

    it('send-proxy-v2 (TCP6, ::ffff:127.0.0.2): LIMIT sessions from 127.0.0.2 do not lock out 127.0.0.3, which is logged and forwarded as IPv4', async () => {
      const base = await pd.settledFds();
      const open: tls.TLSSocket[] = [];
      for (let i = 0; i < LIMIT; i++) open.push(await viaHaproxy(feV2, '127.0.0.2'));
      const s = await viaHaproxy(feV2, '127.0.0.3');
      const port = s.localPort!;
      s.destroy();
      expect(await pd.summaryFor(port)).toMatchObject({ closeReason: 'done', client: '127.0.0.3', clientPort: port });
      const [conn] = sessionsOf(pd.backend('lb'), port);
      expect(conn!.header).toMatchObject({ version: 2, family: 'TCP4', source: { address: '127.0.0.3', port } });
      // HAProxy itself saw the mapped address: the header it sent was TCP6.
      for (let i = 0; i < 20 && !hlog.includes(`client=::ffff:127.0.0.3:${port}`); i++) await sleep(100);
      expect(hlog).toContain(`fe=fe_v2 client=::ffff:127.0.0.3:${port}`);
      const ports = open.map((o) => o.localPort!);
      for (const o of open) o.destroy();
      for (const p of ports) expect(await pd.summaryFor(p)).toMatchObject({ closeReason: 'done', client: '127.0.0.2' });
      expect(await pd.fdsBackTo(base)).toBeLessThanOrEqual(base);
    });

    it('send-proxy (v1 "PROXY TCP6 ::ffff:127.0.0.3 ..."): the client is logged and forwarded as 127.0.0.3', async () => {
      const base = await pd.settledFds();
      const s = await viaHaproxy(feV1, '127.0.0.3');
      const port = s.localPort!;
      s.destroy();
      expect(await pd.summaryFor(port)).toMatchObject({ closeReason: 'done', client: '127.0.0.3', clientPort: port });
      const [conn] = sessionsOf(pd.backend('lb'), port);
      expect(conn!.header).toMatchObject({ version: 2, family: 'TCP4', source: { address: '127.0.0.3', port } });
      for (let i = 0; i < 20 && !hlog.includes(`client=::ffff:127.0.0.3:${port}`); i++) await sleep(100);
      expect(hlog).toContain(`fe=fe_v1 client=::ffff:127.0.0.3:${port}`);
      expect(await pd.fdsBackTo(base)).toBeLessThanOrEqual(base);
    });
  });

  // haproxy proxy-protocol.txt section 2.1: TCP4 carries two dotted quads ("exactly 4 integers in
  // the range [0..255] ... Heading zeroes are not permitted"), TCP6 two IPv6 addresses, ports are
  // decimal [0..65535] without heading zeroes; "Any sequence which does not exactly match the
  // protocol must be discarded and cause the receiver to abort the connection."
  // The zone-id case last: on 3279d1c it ends the process (RangeError in the per-client key).
  const malformed: Array<[string, string]> = [
    ['a zone id (TCP6 fe80::1%eth0)', 'PROXY TCP6 fe80::1%eth0 ::1 1234 465\r\n'],
    ['9 groups (TCP6 1:2:3:4:5:6:7:8:9)', 'PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1234 465\r\n'],
    ['an IPv4 address in TCP6', 'PROXY TCP6 198.51.100.1 ::1 1234 465\r\n'],
    ['an IPv6 address in TCP4', 'PROXY TCP4 2001:db8::1 127.0.0.1 1234 465\r\n'],
    ['a bad IPv4 (an octet over 255)', 'PROXY TCP4 198.51.100.256 127.0.0.1 1234 465\r\n'],
    ['a bad IPv4 (three octets)', 'PROXY TCP4 198.51.100 127.0.0.1 1234 465\r\n'],
    ['a bad IPv4 (a heading zero)', 'PROXY TCP4 198.051.100.1 127.0.0.1 1234 465\r\n'],
    ['a port with a heading zero', 'PROXY TCP4 198.51.100.1 127.0.0.1 01234 465\r\n'],
    ['U+2028 after the address', 'PROXY TCP6 2001:db8::1\u2028 ::1 1234 465\r\n'],
    ['a zone id that runs to 9 groups (TCP6 fe80::1%1:2:3:4:5:6:7:8:9)', 'PROXY TCP6 fe80::1%1:2:3:4:5:6:7:8:9 ::1 1234 465\r\n'],
  ];
  for (const [name, line] of malformed) {
    it(`a PROXY v1 header with ${name} is refused as proxy_header_invalid; the process stays up`, async () => {
      const base = await pd.settledFds();
      const before = await pd.metric('postern_connections_total', { listener: 'lb', reason: 'proxy_header_invalid' });
      const x = await rawExchange(pd.port('lb'), Buffer.concat([Buffer.from(line, 'utf8'), buildClientHello({ sni: 'mail.example.org', alpn: ['smtp'] })]), { timeoutMs: 8000 });
      expect(x.data.length).toBe(0);
      expect(x.closedAfterMs).toBeLessThan(1000);
      expect(await pd.summaryFor(x.localPort)).toMatchObject({ listener: 'lb', closeReason: 'proxy_header_invalid', client: '127.0.0.1', clientPort: x.localPort, backend: null });
      expect(await pd.metric('postern_connections_total', { listener: 'lb', reason: 'proxy_header_invalid' })).toBe(before + 1);
      expect(sessionsOf(pd.backend('lb'), 1234)).toHaveLength(0);
      await stillUp();
      expect(await pd.fdsBackTo(base)).toBeLessThanOrEqual(base);
    });
  }
});

// ---- HAProxy as postern's backend: `bind ... accept-proxy` must parse postern's v1 and v2 headers.

// .ci/run installs haproxy (Debian package); without it this suite fails rather than skips.
describe('HAProxy accept-proxy parses postern\'s headers', () => {
  let haproxy: ChildProcess;
  let hlog = '';
  let recorder: RecordingBackend;
  let hd: SpawnedPostern;

  beforeAll(async () => {
    if (!existsSync(HAPROXY)) throw new Error(`${HAPROXY} not found: apt-get install haproxy (see .ci/run)`);
    recorder = await startBackend({ mode: 'echo', proxy: true });
    const [fe1, fe2] = [await freePort(), await freePort()];
    const cfg = join(pki.dir, 'haproxy.cfg');
    // Each frontend reads postern's header (accept-proxy) and sends its own v2 header, naming
    // the client it parsed, to the recording backend; the log line names it too.
    writeFileSync(cfg, `global
  log stdout format raw local0 info
defaults
  mode tcp
  log global
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe_v1
  bind 127.0.0.1:${fe1} accept-proxy
  log-format "haproxy fe=%ft client=%ci:%cp dst=%fi:%fp"
  option logasap
  default_backend be
frontend fe_v2
  bind 127.0.0.1:${fe2} accept-proxy
  log-format "haproxy fe=%ft client=%ci:%cp dst=%fi:%fp authority=%[fc_pp_authority]"
  option logasap
  default_backend be
backend be
  server rec 127.0.0.1:${recorder.port} send-proxy-v2 proxy-v2-options authority
`);
    haproxy = spawn(HAPROXY, ['-db', '-f', cfg], { stdio: ['ignore', 'pipe', 'pipe'] });
    haproxy.stdout!.on('data', (b: Buffer) => (hlog += b.toString()));
    haproxy.stderr!.on('data', (b: Buffer) => (hlog += b.toString()));
    for (let i = 0; i < 50 && !(await listening(fe2)); i++) await sleep(100);
    hd = await spawnDaemon({
      dir: pki.dir,
      certs: [{ cert: mail.cert, key: mail.key }],
      listeners: [
        // Raw TLS (ALPN smtp): the recorder behind HAProxy echoes, it is not a mail server.
        { name: 'hv1', proxyProtocol: 'v1', backendPort: fe1 },
        { name: 'hv2', proxyProtocol: 'v2', backendPort: fe2 },
      ],
    });
  }, 60_000);

  afterAll(async () => {
    await hd?.stop();
    haproxy?.kill('SIGTERM');
    await recorder?.close();
  });

  for (const name of ['hv1', 'hv2'] as const) {
    it(`${name}: HAProxy forwards the original client address it parsed from postern's ${name === 'hv1' ? 'v1' : 'v2'} header`, async () => {
      const s = await tlsOk(hd.port(name), { servername: 'mail.example.org', ca: pki.ca.certPem, ALPNProtocols: ['smtp'] });
      const clientPort = s.localPort!;
      const r = readStream(s);
      s.write('through haproxy\r\n');
      await r.readUntil(/through haproxy\r\n/);
      s.destroy();
      expect(await hd.summaryFor(clientPort)).toMatchObject({ closeReason: 'done' });
      const [conn] = sessionsOf(recorder, clientPort);
      expect(conn, `haproxy log:\n${hlog}`).toBeDefined();
      // HAProxy's own v2 header names the client and the address it connected to (postern's listener).
      expect(conn!.header).toMatchObject({ version: 2, family: 'TCP4', source: { address: '127.0.0.1', port: clientPort }, destination: { address: '127.0.0.1', port: hd.port(name) } });
      expect(conn!.data.toString()).toBe('through haproxy\r\n');
      if (name === 'hv2') expect(conn!.header!.authority).toBe('mail.example.org');
      for (let i = 0; i < 20 && !hlog.includes(`client=127.0.0.1:${clientPort}`); i++) await sleep(100);
      expect(hlog).toContain(`client=127.0.0.1:${clientPort} dst=127.0.0.1:${hd.port(name)}`);
      if (name === 'hv2') expect(hlog).toMatch(new RegExp(`client=127\\.0\\.0\\.1:${clientPort} dst=\\S+ authority=mail\\.example\\.org`));
    });
  }
});

async function listening(port: number): Promise<boolean> {
  const net = await import('node:net');
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}
