// The SNI policy table of issue 2, row by row, for strict and fallback listeners, against a
// running postern on loopback: which certificate a real client receives, which alert it gets
// instead, what the summary line says, and that a refused client never reaches the backend.
import { describe, it, expect, beforeAll } from 'vitest';
import type tls from 'node:tls';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { scenario, type Scenario, type ScenarioOptions } from '../helpers/scenario.ts';
import { tlsTry, tlsOk, readUntil, readToEnd, rawExchange, ALERT } from '../helpers/clients.ts';
import { buildClientHello } from '../helpers/hello-builder.ts';

let pki: TestPki;
let certs: CertFiles[];

beforeAll(async () => {
  pki = await makePki();
  // Listed wildcard first, so "exact beats wildcard" cannot be an accident of config order.
  const wildOrg = await pki.issue('wild-org', { names: ['*.example.org'] });
  const mail = await pki.issue('mail', { names: ['mail.example.org'] });
  const wildCom = await pki.issue('wild-com', { names: ['*.example.com'] });
  const mx = await pki.issue('mx', { names: ['mx.example.net'] });
  certs = [wildOrg, mail, wildCom, mx];
});

const noIdentityCheck = { checkServerIdentity: () => undefined };

function start(listener: ScenarioOptions['listener']): Promise<Scenario> {
  return scenario(pki, { certs, listener });
}

interface Served {
  san: string;
  authorized: boolean;
  alpn: string | false | null;
  summary: Record<string, unknown>;
}

/**
 * A full session: handshake (chain verified against the test CA), one line echoed by the backend
 * through postern, orderly close; returns the served certificate's names and the summary line.
 */
async function served(s: Scenario, opts: tls.ConnectionOptions): Promise<Served> {
  const socket = await tlsOk(s.port, { ca: pki.ca.certPem, rejectUnauthorized: true, ...opts });
  const san = socket.getPeerCertificate().subjectaltname ?? '';
  const authorized = socket.authorized;
  const alpn = socket.alpnProtocol;
  const ended = readToEnd(socket);
  socket.write('ping\r\n');
  await readUntil(socket, 'ping\r\n');
  socket.end();
  await ended;
  const summary = await s.postern.summary((l) => l.clientPort === socket.clientPort);
  return { san, authorized, alpn, summary };
}

/** A Node client that must be refused with the given alert; returns its summary line. */
async function refusedByNode(s: Scenario, opts: tls.ConnectionOptions, code: string, alert: number) {
  const o = await tlsTry(s.port, { ca: pki.ca.certPem, ...opts });
  expect(o.socket).toBeNull();
  expect(o.error?.code).toBe(code);
  expect(o.error?.message).toContain(`SSL alert number ${alert}`);
  const summary = await s.postern.summary((l) => l.clientPort === o.localPort);
  expect(s.backend!.connections).toHaveLength(0);
  return summary;
}

/** A raw ClientHello that must be answered with exactly one alert record, then a close. */
async function refusedRaw(s: Scenario, hello: Buffer, alert: Buffer) {
  const r = await rawExchange(s.port, hello);
  expect(r.data.toString('hex')).toBe(alert.toString('hex'));
  const summary = await s.postern.summary((l) => l.clientPort === r.localPort);
  expect(s.backend!.connections).toHaveLength(0);
  return summary;
}

function fallbackLine(s: Scenario) {
  return s.postern.logs.find((l) => l.msg === 'sni fallback');
}

for (const sni of ['strict', 'fallback'] as const) {
  describe(`${sni} listener`, () => {
    it(`${sni} listener serves the hostname certificate when no sni is sent`, async () => {
      const s = await start({ sni });
      // An IP literal as host: Node sends no server_name at all.
      const r = await served(s, { ...noIdentityCheck });
      expect(r.san).toBe('DNS:mail.example.org');
      expect(r.authorized).toBe(true);
      expect(r.summary).toMatchObject({ sni: null, sniClass: 'none', decision: 'served', servedName: 'mail.example.org', closeReason: 'done' });
      expect(fallbackLine(s)).toBeUndefined();
      expect(s.backend!.connections).toHaveLength(1);
    });

    it(`${sni} listener serves the exact certificate for a covered name`, async () => {
      const s = await start({ sni });
      const r = await served(s, { servername: 'mx.example.net' });
      expect(r.san).toBe('DNS:mx.example.net');
      expect(r.authorized).toBe(true);
      expect(r.summary).toMatchObject({ sni: 'mx.example.net', sniClass: 'exact', decision: 'served', servedName: 'mx.example.net', closeReason: 'done' });
    });

    it(`${sni} listener matches sni case-insensitively`, async () => {
      const s = await start({ sni });
      const r = await served(s, { servername: 'MX.Example.NET' });
      expect(r.san).toBe('DNS:mx.example.net');
      expect(r.summary).toMatchObject({ sni: 'mx.example.net', sniClass: 'exact', decision: 'served' });
    });

    it(`${sni} listener serves a wildcard certificate for one leftmost label`, async () => {
      const s = await start({ sni });
      const r = await served(s, { servername: 'www.example.com' });
      expect(r.san).toBe('DNS:*.example.com');
      expect(r.authorized).toBe(true);
      expect(r.summary).toMatchObject({ sni: 'www.example.com', sniClass: 'wildcard', decision: 'served', servedName: 'www.example.com' });
    });

    it(`${sni} listener prefers the exact certificate over a wildcard that also covers the name`, async () => {
      const s = await start({ sni });
      const exact = await served(s, { servername: 'mail.example.org' });
      expect(exact.san).toBe('DNS:mail.example.org');
      expect(exact.summary).toMatchObject({ sniClass: 'exact', decision: 'served' });
      const wild = await served(s, { servername: 'imap.example.org' });
      expect(wild.san).toBe('DNS:*.example.org');
      expect(wild.summary).toMatchObject({ sniClass: 'wildcard', decision: 'served' });
    });

    it(`${sni} listener refuses illegible sni bytes (NUL) with alert 112`, async () => {
      const s = await start({ sni });
      const summary = await refusedRaw(s, buildClientHello({ sni: Buffer.from('mail\0.example.org', 'latin1') }), ALERT.unrecognizedName);
      expect(summary).toMatchObject({ sniClass: 'invalid', decision: 'refused', closeReason: 'sni_refused', detail: 'illegible' });
      expect(summary.sni).toBe('mail\\x00.example.org');
    });

    it(`${sni} listener refuses alpn with no acceptable protocol with alert 120 (node client)`, async () => {
      const s = await start({ sni });
      const summary = await refusedByNode(s, { servername: 'mail.example.org', ALPNProtocols: ['h2', 'http/1.1'] }, 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL', 120);
      expect(summary).toMatchObject({ sniClass: null, decision: 'refused', closeReason: 'alpn_refused', detail: 'no_common_alpn' });
    });

    it(`${sni} listener answers unacceptable alpn with exactly the alert 120 record, before looking at the sni`, async () => {
      const s = await start({ sni });
      // An unknown name too: on a fallback listener ALPN must still win (ALPACA).
      const summary = await refusedRaw(s, buildClientHello({ sni: 'unknown.example.net', alpn: ['h2', 'http/1.1'] }), ALERT.noApplicationProtocol);
      expect(summary).toMatchObject({ sniClass: null, decision: 'refused', closeReason: 'alpn_refused', servedName: null });
    });

    it(`${sni} listener selects an offered alpn protocol it accepts`, async () => {
      const s = await start({ sni });
      const r = await served(s, { servername: 'mail.example.org', ALPNProtocols: ['h2', 'smtp'] });
      expect(r.alpn).toBe('smtp');
      expect(r.summary).toMatchObject({ alpn: 'smtp', decision: 'served' });
    });

    it(`${sni} listener accepts a client that offers no alpn`, async () => {
      const s = await start({ sni });
      const r = await served(s, { servername: 'mail.example.org' });
      expect(r.alpn).toBe(false);
      expect(r.summary).toMatchObject({ alpn: null, decision: 'served', sniClass: 'exact' });
    });

    it(`${sni} listener with alpn false accepts a client offering h2 and selects nothing`, async () => {
      const s = await start({ sni, alpn: false });
      const r = await served(s, { servername: 'mail.example.org', ALPNProtocols: ['h2'] });
      expect(r.alpn).toBe(false);
      expect(r.summary).toMatchObject({ alpn: null, decision: 'served' });
    });
  });
}

describe('strict listener refusals', () => {
  it('strict listener refuses an unknown sni with alert 112', async () => {
    const s = await start({ sni: 'strict' });
    const summary = await refusedByNode(s, { servername: 'unknown.example.net' }, 'ERR_SSL_TLSV1_UNRECOGNIZED_NAME', 112);
    expect(summary).toMatchObject({ sni: 'unknown.example.net', sniClass: 'unknown', decision: 'refused', closeReason: 'sni_refused', servedName: null, detail: 'unknown' });
  });

  it('strict listener refuses a name two labels below a wildcard with alert 112', async () => {
    const s = await start({ sni: 'strict' });
    const summary = await refusedByNode(s, { servername: 'a.b.example.org' }, 'ERR_SSL_TLSV1_UNRECOGNIZED_NAME', 112);
    expect(summary).toMatchObject({ sniClass: 'unknown', decision: 'refused', closeReason: 'sni_refused' });
  });

  it('strict listener refuses the bare parent of a wildcard with alert 112', async () => {
    const s = await start({ sni: 'strict' });
    const summary = await refusedByNode(s, { servername: 'example.com' }, 'ERR_SSL_TLSV1_UNRECOGNIZED_NAME', 112);
    expect(summary).toMatchObject({ sni: 'example.com', sniClass: 'unknown', decision: 'refused' });
  });

  const invalid: Array<[string, string, string]> = [
    ['an ip literal', '192.0.2.1', 'ip_literal'],
    ['an ipv6 literal', '2001:db8::1', 'ip_literal'],
    ['a name without a dot', 'localhost', 'no_dot'],
    ['a name with a trailing dot', 'mail.example.org.', 'trailing_dot'],
    ['a name with an underscore', 'mail_1.example.org', 'bad_chars'],
    ['a name over 253 bytes', `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(60)}.org`, 'too_long'],
  ];
  for (const [what, name, reason] of invalid) {
    it(`strict listener answers ${what} as sni with exactly the alert 112 record`, async () => {
      const s = await start({ sni: 'strict' });
      const summary = await refusedRaw(s, buildClientHello({ sni: name }), ALERT.unrecognizedName);
      expect(summary).toMatchObject({ sniClass: 'invalid', decision: 'refused', closeReason: 'sni_refused', detail: reason });
    });
  }

  it('strict listener refuses a covered name that serverNames does not allow with alert 112', async () => {
    const s = await start({ sni: 'strict', serverNames: ['mail.example.org', '*.example.org'] });
    const summary = await refusedByNode(s, { servername: 'www.example.com' }, 'ERR_SSL_TLSV1_UNRECOGNIZED_NAME', 112);
    expect(summary).toMatchObject({ sni: 'www.example.com', sniClass: 'unknown', decision: 'refused', closeReason: 'sni_refused', detail: 'not_allowed' });
  });

  it('strict listener serves a name that serverNames allows', async () => {
    const s = await start({ sni: 'strict', serverNames: ['mail.example.org', '*.example.org'] });
    const r = await served(s, { servername: 'imap.example.org' });
    expect(r.san).toBe('DNS:*.example.org');
    expect(r.summary).toMatchObject({ sniClass: 'wildcard', decision: 'served' });
  });
});

describe('fallback listener', () => {
  /** The hostname certificate, verified against the CA (the name check cannot pass: it is a fallback). */
  async function fallsBack(s: Scenario, servername: string) {
    const r = await served(s, { servername, ...noIdentityCheck });
    expect(r.san).toBe('DNS:mail.example.org');
    expect(r.authorized).toBe(true);
    return r.summary;
  }

  it('fallback listener serves the hostname certificate for an unknown sni and logs the fallback', async () => {
    const s = await start({ sni: 'fallback' });
    const summary = await fallsBack(s, 'unknown.example.net');
    expect(summary).toMatchObject({ sni: 'unknown.example.net', sniClass: 'unknown', decision: 'fallback', servedName: 'mail.example.org', closeReason: 'done' });
    expect(fallbackLine(s)).toMatchObject({ level: 'debug', requested: 'unknown.example.net', served: 'mail.example.org', reason: 'unknown' });
    expect(s.backend!.connections).toHaveLength(1);
  });

  it('fallback listener serves the hostname certificate for the bare domain a sender may use', async () => {
    const s = await start({ sni: 'fallback' });
    const summary = await fallsBack(s, 'example.org');
    expect(summary).toMatchObject({ sni: 'example.org', sniClass: 'unknown', decision: 'fallback' });
  });

  const invalid: Array<[string, string, string]> = [
    ['an ip literal', '192.0.2.1', 'ip_literal'],
    ['a name without a dot', 'localhost', 'no_dot'],
    ['a name with a trailing dot', 'mail.example.org.', 'trailing_dot'],
  ];
  for (const [what, name, reason] of invalid) {
    it(`fallback listener serves the hostname certificate for ${what} as sni`, async () => {
      const s = await start({ sni: 'fallback' });
      const summary = await fallsBack(s, name);
      expect(summary).toMatchObject({ sniClass: 'invalid', decision: 'fallback', servedName: 'mail.example.org' });
      expect(fallbackLine(s)).toMatchObject({ requested: name, served: 'mail.example.org', reason });
    });
  }

  it('fallback listener serves the hostname certificate for a covered name that serverNames does not allow', async () => {
    const s = await start({ sni: 'fallback', serverNames: ['mail.example.org'] });
    const summary = await fallsBack(s, 'www.example.com');
    expect(summary).toMatchObject({ sni: 'www.example.com', sniClass: 'unknown', decision: 'fallback' });
    expect(fallbackLine(s)).toMatchObject({ requested: 'www.example.com', served: 'mail.example.org', reason: 'not_allowed' });
  });
});

describe('alpn preference', () => {
  it('accepted alpn follows the listener preference order, not the client order', async () => {
    const s = await start({ sni: 'strict', alpn: ['smtp', 'x-postern'] });
    const r = await served(s, { servername: 'mail.example.org', ALPNProtocols: ['x-postern', 'smtp'] });
    expect(r.alpn).toBe('smtp');
  });
});
