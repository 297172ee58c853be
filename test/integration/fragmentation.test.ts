// A ClientHello cut into pieces must be reassembled and decided exactly as if it came whole
// (threats.md "ClientHello parsing"): TCP writes of one byte, TLS records of one byte or of 100
// bytes, and the bytes replayed to OpenSSL unchanged so the handshake still completes.
import { describe, it, expect, beforeAll, onTestFinished } from 'vitest';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import type tls from 'node:tls';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { scenario, type Scenario } from '../helpers/scenario.ts';
import { tlsTry, tlsOk, readUntil, readToEnd, rawExchange, pieces, ALERT } from '../helpers/clients.ts';
import { startRelay, type RelayOptions } from '../helpers/relay.ts';
import { buildClientHello, unwrapRecords, wrapRecords } from '../helpers/hello-builder.ts';

let pki: TestPki;
let certs: CertFiles[];

beforeAll(async () => {
  pki = await makePki();
  certs = [await pki.issue('mail', { names: ['mail.example.org'] }), await pki.issue('wild-com', { names: ['*.example.com'] })];
});

const fixture = (name: string) => readFileSync(new URL(`../fixtures/hellos/${name}`, import.meta.url));

function pick(summary: Record<string, unknown>) {
  const { sni, sniClass, decision, servedName, alpn, tlsVersion, closeReason } = summary;
  return { sni, sniClass, decision, servedName, alpn, tlsVersion, closeReason };
}

/** A full session through `port` (postern itself or a relay in front of it); returns what it saw. */
async function session(s: Scenario, port: number, opts: tls.ConnectionOptions) {
  const socket = await tlsOk(port, { ca: pki.ca.certPem, ...opts });
  const san = socket.getPeerCertificate().subjectaltname;
  const ended = readToEnd(socket);
  const payload = Buffer.from('data after a fragmented hello\r\n'.repeat(50));
  socket.write(payload);
  const echoed = await readUntil(socket, payload.length);
  socket.end();
  await ended;
  const summary = await s.postern.summary();
  return { san, echoed: echoed.equals(payload), summary: pick(summary) };
}

async function relayed(s: Scenario, opts: RelayOptions) {
  const relay = await startRelay(s.port, opts);
  onTestFinished(() => relay.close());
  return relay;
}

const cuts: Array<[string, RelayOptions, (records: number, writes: number) => void]> = [
  ['written one byte per tcp write', { byteWrites: true }, (_r, writes) => expect(writes).toBeGreaterThan(1000)],
  ['re-framed into 1-byte tls records', { recordSize: 1 }, (records) => expect(records).toBeGreaterThan(1000)],
  ['re-framed into 100-byte tls records', { recordSize: 100 }, (records) => expect(records).toBeGreaterThan(10)],
  ['re-framed into 1-byte records and written one byte at a time', { recordSize: 1, byteWrites: true }, (records, writes) => {
    expect(records).toBeGreaterThan(1000);
    expect(writes).toBeGreaterThan(6 * 1000);
  }],
];

describe('fragmented hello from a real client', () => {
  for (const [how, opts, check] of cuts) {
    it(`hello ${how} completes the handshake with the same sni decision and data flows`, async () => {
      const s = await scenario(pki, { certs, listener: { sni: 'strict' } });
      const opts2 = { servername: 'www.example.com', ALPNProtocols: ['smtp'] };
      const direct = await session(s, s.port, opts2);
      const relay = await relayed(s, opts);
      const cut = await session(s, relay.port, opts2);
      check(relay.helloRecords, relay.writes);
      expect(direct).toEqual({ san: 'DNS:*.example.com', echoed: true, summary: expect.objectContaining({ sniClass: 'wildcard', decision: 'served', alpn: 'smtp', closeReason: 'done' }) });
      expect(cut).toEqual(direct);
    });

    it(`hello ${how} with an unknown sni is refused with alert 112 like an unsplit one`, async () => {
      const s = await scenario(pki, { certs, listener: { sni: 'strict' } });
      const relay = await relayed(s, opts);
      const o = await tlsTry(relay.port, { ca: pki.ca.certPem, servername: 'unknown.example.net' });
      expect(o.error?.code).toBe('ERR_SSL_TLSV1_UNRECOGNIZED_NAME');
      expect(await s.postern.summary()).toMatchObject({ sniClass: 'unknown', decision: 'refused', closeReason: 'sni_refused' });
      expect(s.backend!.connections).toHaveLength(0);
    });
  }

  it('hello cut on a fallback listener falls back exactly as an unsplit one', async () => {
    const s = await scenario(pki, { certs, listener: { sni: 'fallback' } });
    const opts = { servername: 'unknown.example.net', checkServerIdentity: () => undefined };
    const direct = await session(s, s.port, opts);
    const relay = await relayed(s, { recordSize: 1, byteWrites: true });
    const cut = await session(s, relay.port, opts);
    expect(direct.summary).toMatchObject({ sniClass: 'unknown', decision: 'fallback', servedName: 'mail.example.org' });
    expect(cut).toEqual(direct);
  });
});

describe('fragmented raw hello', () => {
  it('raw hello split into 1-byte writes with small delays gets the same alert 112 as unsplit', async () => {
    const s = await scenario(pki, { certs, listener: { sni: 'strict' } });
    const hello = buildClientHello({ sni: 'unknown.example.net', alpn: ['smtp'] });
    const whole = await rawExchange(s.port, hello);
    const split = await rawExchange(s.port, pieces(hello), { delayMs: 2 });
    expect(whole.data.toString('hex')).toBe(ALERT.unrecognizedName.toString('hex'));
    expect(split.data.toString('hex')).toBe(whole.data.toString('hex'));
    const a = await s.postern.summary((l) => l.clientPort === whole.localPort);
    const b = await s.postern.summary((l) => l.clientPort === split.localPort);
    expect(pick(b)).toEqual(pick(a));
    expect(s.backend!.connections).toHaveLength(0);
  });

  it('captured curl hello in 1-byte records and 1-byte writes gets alert 120 on a mail listener', async () => {
    const s = await scenario(pki, { certs, listener: { sni: 'fallback' } });
    const hello = wrapRecords(unwrapRecords(fixture('curl.bin')), { recordSize: 1 });
    const r = await rawExchange(s.port, pieces(hello, 1), { delayMs: 0 });
    expect(r.data.toString('hex')).toBe(ALERT.noApplicationProtocol.toString('hex'));
    expect(await s.postern.summary()).toMatchObject({ closeReason: 'alpn_refused', decision: 'refused' });
  });

  it('captured post-quantum node hello in 1-byte records is answered with a server hello', async () => {
    const s = await scenario(pki, { certs, listener: { sni: 'strict' } });
    const hello = wrapRecords(unwrapRecords(fixture('node24-x25519mlkem768.bin')), { recordSize: 1 });
    const socket = net.connect({ host: '127.0.0.1', port: s.port, noDelay: true });
    onTestFinished(() => {
      socket.destroy();
    });
    socket.on('error', () => {});
    await new Promise((r) => socket.once('connect', r));
    for (const p of pieces(hello, 7)) socket.write(p);
    // A handshake record (22), TLS 1.2 record version: postern replayed the hello to OpenSSL.
    const head = await readUntil(socket, 5);
    expect(head.subarray(0, 3).toString('hex')).toBe('160303');
    // A reset (not a FIN): this test is about the replay, not about how a FIN mid-handshake ends.
    socket.resetAndDestroy();
    expect(await s.postern.summary()).toMatchObject({ sni: 'mail.example.org', sniClass: 'exact', decision: 'served', alpn: 'smtp', closeReason: 'client_gone' });
    expect(s.backend!.connections).toHaveLength(0);
  });
});
