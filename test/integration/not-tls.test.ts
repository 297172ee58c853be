// Input that is not a usable ClientHello (threats.md "ClientHello parsing", "Resources"):
// plaintext and SSLv2 on a TLS port are closed at once and never forwarded; malformed hellos get
// exactly one fatal alert; silent, slow and vanishing clients are closed at the absolute
// handshake deadline, or as soon as they are gone.
import { describe, it, expect, beforeAll } from 'vitest';
import { readFileSync } from 'node:fs';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { scenario } from '../helpers/scenario.ts';
import { rawExchange, pieces, ALERT } from '../helpers/clients.ts';
import { buildClientHello, buildHandshake, record, serverNameExt, supportedVersionsExt, u8, u24 } from '../helpers/hello-builder.ts';

let pki: TestPki;
let certs: CertFiles[];

beforeAll(async () => {
  pki = await makePki();
  certs = [await pki.issue('mail', { names: ['mail.example.org'] })];
});

const fixture = (name: string) => readFileSync(new URL(`../fixtures/hellos/${name}`, import.meta.url));

/** SSL 2.0 CLIENT-HELLO (RFC 6101 appendix E.2): 2-byte header with the high bit set, msg_type 1. */
function sslv2Hello(): Buffer {
  const specs = Buffer.from([0x01, 0x00, 0x80, 0x07, 0x00, 0xc0, 0x03, 0x00, 0x80]);
  const challenge = Buffer.alloc(16, 0x5a);
  const body = Buffer.concat([Buffer.from([0x01, 0x00, 0x02]), Buffer.from([0, specs.length, 0, 0, 0, challenge.length]), specs, challenge]);
  return Buffer.concat([Buffer.from([0x80 | (body.length >> 8), body.length & 0xff]), body]);
}

describe('not tls', () => {
  const inputs: Array<[string, Buffer, string]> = [
    ['an smtp EHLO', Buffer.from('EHLO x\r\n'), 'plaintext'],
    ['an http GET', Buffer.from('GET / HTTP/1.1\r\n\r\n'), 'plaintext'],
    ['an imap CAPABILITY', Buffer.from('a CAPABILITY\r\n'), 'plaintext'],
    ['an sslv2 hello', sslv2Hello(), 'sslv2'],
    ['a PROXY protocol line', Buffer.from('PROXY TCP4 203.0.113.7 127.0.0.1 40000 465\r\n'), 'plaintext'],
    ['binary junk', Buffer.from([0x00, 0x01, 0x02, 0xff, 0xfe]), 'not-handshake'],
  ];
  for (const [what, bytes, reason] of inputs) {
    it(`${what} on a tls port is closed at once, unanswered and never forwarded`, async () => {
      const s = await scenario(pki, { certs, listener: { timeouts: { handshake: '10s' } } });
      const r = await rawExchange(s.port, bytes);
      expect(r.data.length).toBe(0);
      // Well under the 10 s handshake deadline: decided on the first bytes.
      expect(r.closedAfterMs).toBeLessThan(1000);
      const summary = await s.postern.summary();
      expect(summary).toMatchObject({ closeReason: 'not_tls', side: 'client', detail: reason, sni: null, decision: null });
      expect(s.backend!.connections).toHaveLength(0);
    });
  }
});

describe('malformed hello', () => {
  /** Offset of the extensions length field in a handshake message built with `spec`. */
  const extensionsOffset = buildHandshake({ noExtensions: true }).length;
  const overrun = (() => {
    const hs = buildHandshake({ sni: 'mail.example.org' });
    hs.writeUInt16BE(hs.readUInt16BE(extensionsOffset) + 9, extensionsOffset);
    return record(hs);
  })();

  const cases: Array<[string, Buffer, Buffer, string, string]> = [
    ['a duplicate extension', buildClientHello({ sni: 'mail.example.org', extensions: [supportedVersionsExt([0x0304])] }), ALERT.illegalParameter, 'malformed_hello', 'duplicate_extension'],
    ['two host names in one server_name list', buildClientHello({ extensions: [serverNameExt([{ name: 'mail.example.org' }, { name: 'other.example.org' }])] }), ALERT.illegalParameter, 'malformed_hello', 'bad_server_name'],
    ['an extensions length that overruns the hello', overrun, ALERT.decodeError, 'malformed_hello', 'length_overrun'],
    ['a record longer than 2^14 + 256', record(Buffer.alloc(0), { length: 2 ** 14 + 257 }), ALERT.recordOverflow, 'malformed_hello', 'record_too_long'],
    ['a zero-length handshake record', record(Buffer.alloc(0)), ALERT.decodeError, 'malformed_hello', 'record_empty'],
    ['bytes after the hello in its record', record(Buffer.concat([buildHandshake({ sni: 'mail.example.org' }), Buffer.from('junk')])), ALERT.decodeError, 'malformed_hello', 'trailing_bytes'],
    // A handshake header declaring 70000 bytes: over the 64 KiB peek budget before it arrives.
    ['a hello declared larger than the 64 KiB peek budget', record(Buffer.concat([u8(1), u24(70_000), Buffer.alloc(16_000, 0x41)])), ALERT.recordOverflow, 'hello_too_large', 'too_large'],
  ];
  for (const [what, bytes, alert, closeReason, detail] of cases) {
    it(`${what} is answered with exactly alert ${alert[6]} and closed`, async () => {
      const s = await scenario(pki, { certs, listener: {} });
      const r = await rawExchange(s.port, bytes);
      expect(r.data.toString('hex')).toBe(alert.toString('hex'));
      expect(r.closedAfterMs).toBeLessThan(1000);
      expect(await s.postern.summary()).toMatchObject({ closeReason, detail, side: 'client' });
      expect(s.backend!.connections).toHaveLength(0);
    });
  }
});

describe('handshake deadline', () => {
  it('a silent client is closed at the handshake deadline', async () => {
    const s = await scenario(pki, { certs, listener: { timeouts: { handshake: '500ms' } } });
    const r = await rawExchange(s.port, []);
    expect(r.data.length).toBe(0);
    expect(r.closedAfterMs).toBeGreaterThanOrEqual(450);
    expect(r.closedAfterMs).toBeLessThan(1500);
    expect(await s.postern.summary()).toMatchObject({ closeReason: 'handshake_timeout', side: 'client' });
    expect(s.backend!.connections).toHaveLength(0);
  });

  it('a slowloris sending one byte every 100 ms is closed at the same absolute deadline', async () => {
    const s = await scenario(pki, { certs, listener: { timeouts: { handshake: '500ms' } } });
    // About 100 bytes: at 10 bytes a second the hello would take 10 s to complete.
    const hello = buildClientHello({ sni: 'mail.example.org' });
    expect(hello.length).toBeGreaterThan(50);
    const r = await rawExchange(s.port, pieces(hello), { delayMs: 100 });
    expect(r.data.length).toBe(0);
    expect(r.closedAfterMs).toBeGreaterThanOrEqual(450);
    expect(r.closedAfterMs).toBeLessThan(1500);
    const summary = await s.postern.summary();
    expect(summary).toMatchObject({ closeReason: 'handshake_timeout' });
    expect(summary.durationMs as number).toBeLessThan(1500);
    expect(s.backend!.connections).toHaveLength(0);
  });

  it('a client that stalls after its hello is closed at the handshake deadline', async () => {
    const s = await scenario(pki, { certs, listener: { timeouts: { handshake: '500ms' } } });
    const r = await rawExchange(s.port, fixture('node24-x25519mlkem768.bin'));
    // postern answered the hello (a ServerHello record), then gave up waiting for the client.
    expect(r.data.subarray(0, 3).toString('hex')).toBe('160303');
    expect(r.closedAfterMs).toBeGreaterThanOrEqual(450);
    expect(r.closedAfterMs).toBeLessThan(1500);
    expect(await s.postern.summary()).toMatchObject({ closeReason: 'handshake_timeout', sniClass: 'exact', decision: 'served' });
    expect(s.backend!.connections).toHaveLength(0);
  });

  it('a client that closes its side during the handshake is closed at once, not at the deadline', async () => {
    // The client sends its hello, gets the ServerHello and sends FIN: it can never finish the
    // handshake, so postern must close at once (client_gone), not hold the socket until the
    // deadline and then report a handshake timeout.
    const s = await scenario(pki, { certs, listener: { timeouts: { handshake: '3s' } } });
    const hello = fixture('node24-x25519mlkem768.bin');
    const r = await rawExchange(s.port, [hello, Buffer.alloc(0)], { delayMs: 200, endAfterWrites: true });
    expect(r.data.subarray(0, 3).toString('hex')).toBe('160303');
    expect(r.closedAfterMs).toBeLessThan(1500);
    const summary = await s.postern.summary();
    expect(summary).toMatchObject({ closeReason: 'client_gone', side: 'client' });
    expect(summary.durationMs as number).toBeLessThan(1500);
  });

  it('a client that closes before its hello is complete is closed at once', async () => {
    const s = await scenario(pki, { certs, listener: { timeouts: { handshake: '3s' } } });
    const hello = buildClientHello({ sni: 'mail.example.org' });
    const r = await rawExchange(s.port, hello.subarray(0, 20), { endAfterWrites: true });
    expect(r.data.length).toBe(0);
    expect(r.closedAfterMs).toBeLessThan(1000);
    expect(await s.postern.summary()).toMatchObject({ closeReason: 'client_gone' });
  });
});
