// threats.md "ClientHello parsing" against the compiled daemon in a child process: splits down to
// 1-byte writes and 1-byte records; oversized records and hellos, zero-length records, overrunning
// lengths, trailing garbage; duplicate extensions and two host names; the name rules on strict and
// fallback listeners; SSLv2 and plaintext on a TLS port; the absolute handshake deadline. Every
// case checks the exact bytes postern sends (alert record or nothing), that the backend saw
// nothing, the reason in the summary line and its counter in /metrics, that a good client is
// served afterwards, and that the daemon's descriptors are back to baseline.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readFileSync } from 'node:fs';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { ALERT, rawExchange, pieces, tlsTry } from '../helpers/clients.ts';
import { startRelay } from '../helpers/relay.ts';
import { buildClientHello, buildHandshake, ext, record, serverNameExt, unwrapRecords, wrapRecords, EXT, alpnExt } from '../helpers/hello-builder.ts';
import { lengthFields, setLength, readLength } from '../helpers/fuzz-hello.ts';
import { buildOnce, spawnDaemon, stopAll, goodClient, sessionsOf, sleep, type SpawnedPostern } from './harness.ts';

let pki: TestPki;
let mail: CertFiles;
let d: SpawnedPostern;

const HANDSHAKE_MS = 1000;
const fixture = (name: string) => readFileSync(new URL(`../fixtures/hellos/${name}`, import.meta.url));

beforeAll(async () => {
  buildOnce();
  pki = await makePki();
  mail = await pki.issue('mail', { names: ['mail.example.org'] });
  d = await spawnDaemon({
    dir: pki.dir,
    certs: [{ cert: mail.cert, key: mail.key }],
    listeners: [
      { name: 'strict', protocol: 'smtp', tls: 'implicit', sni: 'strict', timeouts: { handshake: '1s' } },
      { name: 'fallback', protocol: 'smtp', tls: 'implicit', sni: 'fallback', timeouts: { handshake: '1s' } },
    ],
  });
  await goodClient(d, 'strict', pki);
  await goodClient(d, 'fallback', pki);
}, 120_000);

afterAll(stopAll);

const ALERT_BY_NAME: Record<string, Buffer> = {
  record_overflow: ALERT.recordOverflow,
  decode_error: ALERT.decodeError,
  illegal_parameter: ALERT.illegalParameter,
  unrecognized_name: ALERT.unrecognizedName,
};

interface Refusal {
  listener?: string;
  /** The alert postern must send (exact record), or null for a plain close. */
  alert: keyof typeof ALERT_BY_NAME | null;
  reason: string;
  detail?: string;
  /** Further summary fields. */
  summary?: Record<string, unknown>;
  maxMs?: number;
  delayMs?: number;
  /** postern may have answered (its ServerHello flight): do not check the bytes. */
  anyData?: boolean;
  /** The alert, or nothing when a reset overtook it (the client was still sending). */
  alertOrReset?: boolean;
}

/** Sends `chunks`, expects exactly the alert (or nothing) then the close, and the bookkeeping. */
async function refused(chunks: Buffer | Buffer[], r: Refusal) {
  const listener = r.listener ?? 'strict';
  // Earlier tests' backend connections are over; forget them so an ephemeral client port reused
  // by this test cannot match one of them.
  d.backend(listener).connections.splice(0);
  const base = await d.settledFds();
  const alerts = r.alert ? await d.metric('postern_alerts_sent_total', { listener, alert: r.alert }) : 0;
  const closes = await d.metric('postern_connections_total', { listener, reason: r.reason });
  const x = await rawExchange(d.port(listener), chunks, { delayMs: r.delayMs, timeoutMs: 10_000 });
  if (r.alertOrReset) {
    // Decided while the client was still sending: postern writes the alert and closes with the
    // client's bytes unread, so the kernel answers with a reset, which may overtake the alert.
    expect([ALERT_BY_NAME[r.alert!]!.toString('hex'), '']).toContain(x.data.toString('hex'));
  } else if (!r.anyData) expect(x.data).toEqual(r.alert ? ALERT_BY_NAME[r.alert] : Buffer.alloc(0));
  if (r.maxMs !== undefined) expect(x.closedAfterMs).toBeLessThan(r.maxMs);
  const s = await d.summaryFor(x.localPort);
  expect(s).toMatchObject({ listener, closeReason: r.reason, backend: null, tlsVersion: null, ...(r.detail ? { detail: r.detail } : {}), ...r.summary });
  if (r.alert) expect(await d.metric('postern_alerts_sent_total', { listener, alert: r.alert })).toBe(alerts + 1);
  expect(await d.metric('postern_connections_total', { listener, reason: r.reason })).toBe(closes + 1);
  expect(sessionsOf(d.backend(listener), x.localPort)).toHaveLength(0);
  await goodClient(d, listener, pki);
  expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
  return { x, s };
}

/** A full session with a real client through `port`; returns the SAN served and the summary. */
async function servedVia(port: number, listener: string, servername: string, localPortOf: (o: { localPort: number }) => number = (o) => o.localPort) {
  const backendBefore = d.backend(listener).connections.length;
  const o = await tlsTry(port, { servername, ca: pki.ca.certPem, checkServerIdentity: () => undefined });
  expect(o.error).toBeNull();
  const s = o.socket!;
  const san = s.getPeerCertificate().subjectaltname;
  s.write('ping\r\n');
  await new Promise<void>((resolve) => s.once('data', () => resolve()));
  s.destroy();
  expect(d.backend(listener).connections.length).toBe(backendBefore + 1);
  return { san, localPort: localPortOf(o) };
}

function cpuTicks(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return Number(rest[11]) + Number(rest[12]); // utime + stime (fields 14 and 15)
}

describe('splits: same result as unsplit', () => {
  it('a real client through a relay that writes 1 byte at a time: served, the same summary as unsplit', async () => {
    const base = await d.settledFds();
    const relay = await startRelay(d.port('strict'), { byteWrites: true });
    try {
      const r = await servedVia(relay.port, 'strict', 'mail.example.org');
      expect(r.san).toBe('DNS:mail.example.org');
      expect(relay.writes).toBeGreaterThan(1000);
      const s = await d.waitMsg('connection closed', { listener: 'strict', sni: 'mail.example.org' });
      expect(s).toMatchObject({ sniClass: 'exact', decision: 'served', servedName: 'mail.example.org', closeReason: 'done' });
    } finally {
      await relay.close();
    }
    expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
  });

  it('a real client whose hello is re-framed into 1-byte records, written 1 byte at a time: served', async () => {
    const relay = await startRelay(d.port('fallback'), { recordSize: 1, byteWrites: true });
    try {
      const r = await servedVia(relay.port, 'fallback', 'mail.example.org');
      expect(r.san).toBe('DNS:mail.example.org');
      expect(relay.helloRecords).toBeGreaterThan(1000);
    } finally {
      await relay.close();
    }
    await goodClient(d, 'fallback', pki);
  });

  it('a refused hello in 1-byte records, 1 byte per write, gets the same alert 112 as unsplit', async () => {
    const hello = buildClientHello({ sni: 'www.example.net' });
    await refused(hello, { alert: 'unrecognized_name', reason: 'sni_refused', detail: 'unknown' });
    await refused(pieces(wrapRecords(unwrapRecords(hello), { recordSize: 1 }), 1), { alert: 'unrecognized_name', reason: 'sni_refused', detail: 'unknown' });
  });

  it('a 54 KiB hello in 1-byte records sent in 1-byte writes costs little CPU (the peek scan is linear)', async () => {
    const wire = wrapRecords(buildHandshake({ sni: 'www.example.net', extensions: [ext(21, Buffer.alloc(9000))] }), { recordSize: 1 });
    expect(wire.length).toBeGreaterThan(54_000);
    const before = cpuTicks(d.pid);
    // 64 writes of ~850 bytes keep many reads small without taking long on the client side.
    const { x } = await refused(pieces(wire, 850), { alert: 'unrecognized_name', reason: 'sni_refused' });
    const ticks = cpuTicks(d.pid) - before; // 100 per second
    expect(x.closedAfterMs).toBeLessThan(HANDSHAKE_MS);
    expect(ticks).toBeLessThan(150);
  });
});

describe('malformed records and lengths: fatal alert, no exception', () => {
  it('a record length over 2^14 + 256 -> record_overflow (15 03 03 00 02 02 16) at once, without waiting for the bytes', async () => {
    await refused(Buffer.from([0x16, 0x03, 0x01, 0x41, 0x01, 0x01]), { alert: 'record_overflow', reason: 'malformed_hello', detail: 'record_too_long', maxMs: 500 });
  });

  it('a hello declaring more than the 64 KiB peek budget -> record_overflow (hello_too_large) as soon as its length is known', async () => {
    // Record header (16384 bytes to come) and handshake header (a 65536-byte body): nothing more.
    await refused(Buffer.from([0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x01, 0x00, 0x00]), { alert: 'record_overflow', reason: 'hello_too_large', detail: 'too_large', maxMs: 500 });
  });

  it('a 67 KB hello actually sent in full-size records -> record_overflow or a reset, hello_too_large, nothing forwarded', async () => {
    const msg = buildHandshake({ sni: 'mail.example.org', cipherSuites: Array.from({ length: 1000 }, (_, i) => 0x1301 + i), extensions: [ext(21, Buffer.alloc(65_000))] });
    const wire = wrapRecords(msg);
    expect(wire.length).toBeGreaterThan(65_536);
    await refused(wire, { alert: 'record_overflow', reason: 'hello_too_large', detail: 'too_large', alertOrReset: true });
  });

  it('a hello just under the budget (65 KB of padding, 65,124 bytes on the wire) is not refused for size', async () => {
    const msg = buildHandshake({ sni: 'mail.example.org', extensions: [ext(21, Buffer.alloc(65_000))] });
    const wire = wrapRecords(msg);
    expect(wire.length).toBeLessThanOrEqual(65_536);
    // It reaches OpenSSL, which refuses a TLS 1.3 hello without key_share: missing_extension (109).
    const { x } = await refused(wire, { alert: null, reason: 'handshake_failed', anyData: true });
    expect(x.data).toEqual(Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 109]));
  });

  it('a zero-length handshake record -> decode_error (15 03 03 00 02 02 32)', async () => {
    await refused(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x00]), { alert: 'decode_error', reason: 'malformed_hello', detail: 'record_empty' });
  });

  it('a zero-length record in the middle of a fragmented hello -> decode_error', async () => {
    const msg = buildHandshake({ sni: 'mail.example.org' });
    await refused(Buffer.concat([record(msg.subarray(0, 10)), record(Buffer.alloc(0)), record(msg.subarray(10))]), { alert: 'decode_error', reason: 'malformed_hello', detail: 'record_empty' });
  });

  // Every length field of a real capture, one at a time, made to overrun its container by one.
  const capture = fixture('openssl-s_client.bin');
  const inner = lengthFields(capture).filter((f) => f.offset > 8);
  it(`lengths that overrun their container (${inner.length} fields of a captured hello, each +1) -> a fatal alert, never a hello`, async () => {
    const codes = new Set<string>();
    for (const f of inner) {
      const bad = setLength(capture, f, readLength(capture, f) + 1);
      const x = await rawExchange(d.port('strict'), bad, { timeoutMs: 5000 });
      const s = await d.summaryFor(x.localPort);
      expect(s).toMatchObject({ closeReason: 'malformed_hello', backend: null });
      codes.add(String(s.detail));
      // server_name errors are illegal_parameter (RFC 6066 s3 ambiguity), the rest decode_error.
      expect(x.data).toEqual(s.detail === 'bad_server_name' ? ALERT.illegalParameter : ALERT.decodeError);
      expect(sessionsOf(d.backend('strict'), x.localPort)).toHaveLength(0);
    }
    expect([...codes].every((c) => ['length_overrun', 'bad_server_name', 'bad_alpn', 'bad_supported_versions', 'trailing_bytes'].includes(c))).toBe(true);
    await refused(setLength(capture, inner[0]!, 0xff), { alert: 'decode_error', reason: 'malformed_hello', detail: 'length_overrun' });
  });

  it('a handshake length larger than the bytes sent, then FIN -> closed, client_gone, nothing forwarded', async () => {
    const hello = buildClientHello({ sni: 'mail.example.org' });
    const short = Buffer.from(hello);
    short.writeUIntBE(short.readUIntBE(6, 3) + 100, 6, 3);
    const base = await d.settledFds();
    const x = await rawExchange(d.port('strict'), short, { endAfterWrites: true, timeoutMs: 5000 });
    expect(x.data).toEqual(Buffer.alloc(0));
    expect(x.closedAfterMs).toBeLessThan(HANDSHAKE_MS);
    expect(await d.summaryFor(x.localPort)).toMatchObject({ closeReason: 'client_gone', backend: null });
    expect(sessionsOf(d.backend('strict'), x.localPort)).toHaveLength(0);
    expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
  });

  it('trailing garbage in the record that ends the hello -> decode_error (trailing_bytes)', async () => {
    const msg = buildHandshake({ sni: 'mail.example.org' });
    await refused(record(Buffer.concat([msg, Buffer.from('garbage')])), { alert: 'decode_error', reason: 'malformed_hello', detail: 'trailing_bytes' });
  });

  it('trailing garbage after the extensions inside the hello body -> decode_error (trailing_bytes)', async () => {
    const msg = buildHandshake({ sni: 'mail.example.org' });
    const body = Buffer.concat([msg.subarray(4), Buffer.from([0xde, 0xad])]);
    const hs = Buffer.concat([Buffer.from([1, 0, body.length >> 8, body.length & 0xff]), body]);
    await refused(record(hs), { alert: 'decode_error', reason: 'malformed_hello', detail: 'trailing_bytes' });
  });

  it('an alert record where the hello belongs -> decode_error (not_client_hello)', async () => {
    await refused(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00]), { alert: 'decode_error', reason: 'malformed_hello', detail: 'not_client_hello' });
  });
});

describe('ambiguity is refused, never first-wins', () => {
  it('duplicate extensions -> illegal_parameter (15 03 03 00 02 02 2f)', async () => {
    await refused(buildClientHello({ sni: 'mail.example.org', extensions: [alpnExt(['smtp'])], alpn: ['smtp'] }), { alert: 'illegal_parameter', reason: 'malformed_hello', detail: 'duplicate_extension' });
  });

  it('two server_name extensions (a served name and an unknown one) -> illegal_parameter', async () => {
    await refused(buildClientHello({ sni: 'mail.example.org', extensions: [serverNameExt([{ name: 'www.example.net' }])] }), { alert: 'illegal_parameter', reason: 'malformed_hello', detail: 'duplicate_extension' });
  });

  it('two host names in one server_name list -> illegal_parameter (bad_server_name), also on the fallback listener', async () => {
    const hello = buildClientHello({ extensions: [serverNameExt([{ name: 'mail.example.org' }, { name: 'www.example.net' }])] });
    await refused(hello, { alert: 'illegal_parameter', reason: 'malformed_hello', detail: 'bad_server_name' });
    await refused(hello, { listener: 'fallback', alert: 'illegal_parameter', reason: 'malformed_hello', detail: 'bad_server_name' });
  });

  it('the extension type 0 listed twice with identical content is still refused', async () => {
    const sni = serverNameExt([{ name: 'mail.example.org' }]);
    expect(sni.type).toBe(EXT.serverName);
    await refused(buildClientHello({ extensions: [sni, sni] }), { alert: 'illegal_parameter', reason: 'malformed_hello', detail: 'duplicate_extension' });
  });
});

describe('name rules', () => {
  const long254 = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(59)}.org`;
  it('the name used is lowercased: MAIL.EXAMPLE.ORG is served as mail.example.org (strict)', async () => {
    const base = await d.settledFds();
    const r = await servedVia(d.port('strict'), 'strict', 'MAIL.Example.ORG');
    expect(r.san).toBe('DNS:mail.example.org');
    expect(await d.summaryFor(r.localPort)).toMatchObject({ sni: 'mail.example.org', sniClass: 'exact', decision: 'served', closeReason: 'done' });
    expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
  });

  const invalid: Array<[string, string, string]> = [
    ['a trailing dot', 'mail.example.org.', 'trailing_dot'],
    ['an IPv4 literal', '192.0.2.7', 'ip_literal'],
    ['an IPv6 literal', '2001:db8::7', 'ip_literal'],
    [`a name of ${long254.length} bytes (> 253)`, long254, 'too_long'],
  ];
  for (const [what, name, reason] of invalid) {
    it(`strict: ${what} -> alert 112 (15 03 03 00 02 02 70), sni_refused, class invalid`, async () => {
      expect(name.length).toBeLessThanOrEqual(255);
      const before = await d.metric('postern_sni_decisions_total', { listener: 'strict', class: 'invalid', decision: 'refused' });
      await refused(buildClientHello({ sni: name }), { alert: 'unrecognized_name', reason: 'sni_refused', detail: reason, summary: { sniClass: 'invalid', decision: 'refused' } });
      expect(await d.metric('postern_sni_decisions_total', { listener: 'strict', class: 'invalid', decision: 'refused' })).toBe(before + 1);
    });

    it(`fallback: ${what} -> the listener's certificate, logged as a fallback`, async () => {
      const before = await d.metric('postern_sni_decisions_total', { listener: 'fallback', class: 'invalid', decision: 'fallback' });
      const r = await servedVia(d.port('fallback'), 'fallback', name);
      expect(r.san).toBe('DNS:mail.example.org');
      expect(await d.summaryFor(r.localPort)).toMatchObject({ sniClass: 'invalid', decision: 'fallback', servedName: 'mail.example.org', closeReason: 'done' });
      expect(await d.waitMsg('sni fallback', { listener: 'fallback', reason })).toMatchObject({ served: 'mail.example.org' });
      expect(await d.metric('postern_sni_decisions_total', { listener: 'fallback', class: 'invalid', decision: 'fallback' })).toBe(before + 1);
    });
  }

  const illegible: Array<[string, Buffer, string]> = [
    ['a NUL byte', Buffer.from('mail.example.org\x00.evil.example', 'latin1'), 'mail.example.org\\x00.evil.example'],
    ['a control byte', Buffer.from('mail\x01.example.org', 'latin1'), 'mail\\x01.example.org'],
    ['a newline (log injection)', Buffer.from('mail.example.org\n{"level":"fatal"}', 'latin1'), 'mail.example.org\\x0a{"level":"fatal"}'],
    ['8-bit bytes', Buffer.from('m\xe4il.example.org', 'latin1'), 'm\\xe4il.example.org'],
  ];
  for (const [what, name, escaped] of illegible) {
    for (const listener of ['strict', 'fallback']) {
      it(`${listener}: ${what} in the name -> alert 112 on either policy, the raw name logged escaped`, async () => {
        const { s } = await refused(buildClientHello({ sni: name }), { listener, alert: 'unrecognized_name', reason: 'sni_refused', detail: 'illegible', summary: { sniClass: 'invalid', decision: 'refused' } });
        expect(s.sni).toBe(escaped);
      });
    }
  }
});

describe('not TLS on a TLS port: closed within milliseconds, never forwarded, not_tls', () => {
  const cases: Array<[string, Buffer, string]> = [
    ['an SSLv2-style hello', Buffer.from('802e0103010015000000100000390000380000350000160000130000', 'hex'), 'sslv2'],
    ['EHLO', Buffer.from('EHLO client.example\r\n'), 'plaintext'],
    ['GET /', Buffer.from('GET / HTTP/1.1\r\nHost: mail.example.org\r\n\r\n'), 'plaintext'],
    ['a CAPABILITY', Buffer.from('a CAPABILITY\r\n'), 'plaintext'],
    ['binary that is not a handshake', Buffer.from([0x00, 0x01, 0x02, 0x03]), 'not-handshake'],
  ];
  for (const [what, bytes, detail] of cases) {
    it(`${what} -> nothing sent back, closed at once (${detail})`, async () => {
      const { s } = await refused(bytes, { alert: null, reason: 'not_tls', detail, maxMs: 300 });
      expect(s.sniClass).toBeNull();
      expect(await d.waitMsg('not TLS', { id: s.id })).toHaveProperty('head');
    });
  }
});

describe('the handshake deadline is absolute', () => {
  it(`a silent client is closed at the deadline (${HANDSHAKE_MS} ms), handshake_timeout`, async () => {
    const { x } = await refused([], { alert: null, reason: 'handshake_timeout' });
    expect(x.closedAfterMs).toBeGreaterThanOrEqual(HANDSHAKE_MS - 50);
    expect(x.closedAfterMs).toBeLessThan(HANDSHAKE_MS + 600);
  });

  it('a client trickling its hello 1 byte every 150 ms is closed at the same deadline, not later', async () => {
    const { x } = await refused(pieces(buildClientHello({ sni: 'mail.example.org' }), 1), { alert: null, reason: 'handshake_timeout', delayMs: 150 });
    expect(x.closedAfterMs).toBeGreaterThanOrEqual(HANDSHAKE_MS - 50);
    expect(x.closedAfterMs).toBeLessThan(HANDSHAKE_MS + 600);
  });

  it('a complete hello followed by silence (stuck in the handshake) is closed at the same deadline', async () => {
    await sleep(10);
    // postern answers with its ServerHello flight, then waits for the client's Finished.
    const { x } = await refused(fixture('node24-x25519mlkem768.bin'), { alert: null, reason: 'handshake_timeout', anyData: true });
    expect(x.data[0]).toBe(0x16);
    expect(x.closedAfterMs).toBeGreaterThanOrEqual(HANDSHAKE_MS - 50);
  });
});
