// threats.md "Cross-protocol (ALPACA)" against the compiled daemon in a child process: a client
// offering only HTTP protocols to a mail listener (strict and fallback, implicit TLS and after
// STARTTLS) gets alert no_application_protocol (120) before any certificate is chosen: even with
// an SNI that the strict policy would refuse with 112, or that the fallback policy would answer
// with its own certificate. Accepted ALPN is selected, echoed, logged and passed on in the PROXY
// v2 ALPN TLV; no ALPN is accepted.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import tls from 'node:tls';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { ALERT, rawExchange, readToEnd, tlsTry } from '../helpers/clients.ts';
import { buildClientHello } from '../helpers/hello-builder.ts';
import {
  buildOnce, spawnDaemon, stopAll, goodClient, connectPlain, sessionsOf, GREETING, STARTTLS_CMD, type SpawnedPostern,
} from './harness.ts';

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
      { name: 'smtps', protocol: 'smtp', tls: 'implicit', sni: 'strict' },
      { name: 'smtpsfb', protocol: 'smtp', tls: 'implicit', sni: 'fallback' },
      { name: 'imaps', protocol: 'imap', tls: 'implicit' },
      { name: 'pop3s', protocol: 'pop3', tls: 'implicit' },
      { name: 'mx', protocol: 'smtp', tls: 'starttls', role: 'mx' },
      { name: 'https', protocol: 'tls', tls: 'implicit', alpn: ['h2', 'http/1.1'] },
    ],
  });
  for (const l of ['smtps', 'smtpsfb', 'imaps', 'pop3s', 'https']) await goodClient(d, l, pki);
  await goodClient(d, 'mx', pki, { starttls: 'smtp' });
}, 120_000);

afterAll(stopAll);

const IMPLICIT_MAIL = ['smtps', 'smtpsfb', 'imaps', 'pop3s'] as const;
const HTTP_ONLY: string[][] = [['h2'], ['http/1.1'], ['h2', 'http/1.1']];

async function refusedWith120(listener: string, alpn: string[], sni: string | null) {
  const base = await d.settledFds();
  const alerts = await d.metric('postern_alerts_sent_total', { listener, alert: 'no_application_protocol' });
  const refused = await d.metric('postern_connections_total', { listener, reason: 'alpn_refused' });
  const chosen = async () => (await d.metric('postern_sni_decisions_total', { listener, decision: 'served' })) + (await d.metric('postern_sni_decisions_total', { listener, decision: 'fallback' }));
  const chosenBefore = await chosen();
  const x = await rawExchange(d.port(listener), buildClientHello({ sni, alpn }));
  // Exactly the plaintext alert record, then the close: no ServerHello, no certificate.
  expect(x.data).toEqual(ALERT.noApplicationProtocol);
  const s = await d.summaryFor(x.localPort);
  expect(s).toMatchObject({ listener, closeReason: 'alpn_refused', decision: 'refused', servedName: null, tlsVersion: null, backend: null, detail: 'no_common_alpn' });
  expect(await d.metric('postern_alerts_sent_total', { listener, alert: 'no_application_protocol' })).toBe(alerts + 1);
  expect(await d.metric('postern_connections_total', { listener, reason: 'alpn_refused' })).toBe(refused + 1);
  // No certificate was chosen for this connection (neither served nor fallback was counted).
  expect(await chosen()).toBe(chosenBefore);
  expect(sessionsOf(d.backend(listener), x.localPort)).toHaveLength(0);
  await goodClient(d, listener, pki);
  expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
}

describe('HTTP ALPN on mail listeners: alert 120 before a certificate is chosen', () => {
  for (const listener of IMPLICIT_MAIL) {
    for (const alpn of HTTP_ONLY) {
      it(`${listener}: ALPN ${alpn.join(',')} with SNI mail.example.org -> 15 03 03 00 02 02 78`, () => refusedWith120(listener, alpn, 'mail.example.org'));
    }
  }

  it('strict listener: an unknown SNI with HTTP ALPN still gets 120, not 112 (ALPN is decided first)', () => refusedWith120('smtps', ['h2'], 'www.example.net'));

  it('fallback listener: an unknown SNI with HTTP ALPN gets 120, not the fallback certificate', () => refusedWith120('smtpsfb', ['http/1.1'], 'www.example.net'));

  it('no SNI at all with HTTP ALPN gets 120', () => refusedWith120('imaps', ['h2', 'http/1.1'], null));

  it('a real TLS client (Node) offering h2 and http/1.1 fails with no_application_protocol', async () => {
    const o = await tlsTry(d.port('smtps'), { servername: 'mail.example.org', ca: pki.ca.certPem, ALPNProtocols: ['h2', 'http/1.1'] });
    expect(o.socket).toBeNull();
    expect(`${o.error?.code} ${o.error?.message}`).toMatch(/no application protocol|NO_APPLICATION_PROTOCOL/i);
    expect(await d.summaryFor(o.localPort)).toMatchObject({ closeReason: 'alpn_refused' });
  });

  it('STARTTLS fallback listener (port 25): after STARTTLS an h2-only ClientHello gets 220, then 120 and the close', async () => {
    const base = await d.settledFds();
    const c = await connectPlain(d.port('mx'));
    await c.reader.readUntil(GREETING.smtp);
    c.socket.write('EHLO client.example\r\n');
    await c.reader.readUntil(/^250 [^\r\n]*\r\n/m);
    c.socket.write(STARTTLS_CMD.smtp.command);
    expect(await c.reader.readUntil(STARTTLS_CMD.smtp.reply)).toBe('220 2.0.0 Ready to start TLS\r\n');
    c.reader.detach();
    const end = readToEnd(c.socket, 5000);
    c.socket.write(buildClientHello({ sni: 'www.example.net', alpn: ['h2', 'http/1.1'] }));
    expect((await end).data).toEqual(ALERT.noApplicationProtocol);
    expect(await d.summaryFor(c.localPort)).toMatchObject({ listener: 'mx', closeReason: 'alpn_refused', servedName: null });
    expect(sessionsOf(d.backend('mx'), c.localPort)).toHaveLength(0);
    await goodClient(d, 'mx', pki, { starttls: 'smtp' });
    expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
  });

  it('the reverse: a mail protocol offered to an HTTPS listener (alpn h2, http/1.1) gets 120', () => refusedWith120('https', ['smtp', 'imap'], 'mail.example.org'));
});

describe('accepted ALPN and no ALPN', () => {
  const accepted: Array<{ listener: string; offer: string[]; selected: string }> = [
    { listener: 'smtps', offer: ['h2', 'smtp'], selected: 'smtp' },
    { listener: 'smtpsfb', offer: ['smtp'], selected: 'smtp' },
    { listener: 'imaps', offer: ['http/1.1', 'imap'], selected: 'imap' },
    { listener: 'pop3s', offer: ['pop3'], selected: 'pop3' },
    { listener: 'https', offer: ['http/1.1', 'h2'], selected: 'h2' },
  ];
  for (const { listener, offer, selected } of accepted) {
    it(`${listener}: offer ${offer.join(',')} -> ${selected} selected, echoed, logged and sent in the PROXY v2 ALPN TLV`, async () => {
      const base = await d.settledFds();
      const o = await tlsTry(d.port(listener), { servername: 'mail.example.org', ca: pki.ca.certPem, ALPNProtocols: offer });
      expect(o.error).toBeNull();
      const s = o.socket!;
      expect(s.alpnProtocol).toBe(selected);
      s.write('ping\r\n');
      await new Promise<void>((resolve) => s.once('data', () => resolve()));
      s.destroy();
      expect(await d.summaryFor(o.localPort)).toMatchObject({ listener, alpn: selected, closeReason: 'done' });
      const [conn] = sessionsOf(d.backend(listener), o.localPort);
      expect(conn!.header).toMatchObject({ version: 2, alpn: selected, authority: 'mail.example.org' });
      expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
    });
  }

  for (const listener of [...IMPLICIT_MAIL, 'https']) {
    it(`${listener}: no ALPN offered -> accepted, nothing selected, no ALPN TLV`, async () => {
      const o = await tlsTry(d.port(listener), { servername: 'mail.example.org', ca: pki.ca.certPem });
      expect(o.error).toBeNull();
      const s = o.socket as tls.TLSSocket;
      expect(s.alpnProtocol).toBe(false);
      s.write('ping\r\n');
      await new Promise<void>((resolve) => s.once('data', () => resolve()));
      s.destroy();
      expect(await d.summaryFor(o.localPort)).toMatchObject({ listener, alpn: null, closeReason: 'done' });
      const [conn] = sessionsOf(d.backend(listener), o.localPort);
      expect(conn!.header).toMatchObject({ version: 2, alpn: null });
    });
  }
});
