// Issue 14 finding 9 (threats.md "TLS"): against the compiled daemon, with an ECDSA and an RSA
// certificate for one name and an RSA-only certificate for another,
//   - a client-initiated TLS 1.2 renegotiation is refused (openssl s_client's `R`, Node's
//     renegotiate()) on an implicit listener and after STARTTLS, and the daemon carries on;
//   - over TLS 1.2 only ECDHE + AEAD suites are accepted: static RSA (no forward secrecy) and CBC
//     suites are refused even though an RSA certificate is loaded;
//   - the server's order decides, whatever order the client lists its suites in;
//   - TLS 1.3 keeps working with all three of its suites (a cipher string of TLS 1.2 names only
//     must not switch it off).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import tls from 'node:tls';
import { makePki, type TestPki } from '../helpers/certs.ts';
import { tlsTry } from '../helpers/clients.ts';
import { freePort } from '../helpers/ports.ts';
import { spawnInteractive } from '../e2e/harness/interactive.ts';
import { buildOnce, spawnDaemon, stopAll, goodClient, type SpawnedPostern } from './harness.ts';

let pki: TestPki;
let d: SpawnedPostern;

/** ECDSA P-256 and RSA 2048 certificates for this name: one dual-key SecureContext. */
const DUAL = 'mail.example.org';
/** Only an RSA certificate for this name. */
const RSA_ONLY = 'rsa.example.org';

/** What postern must accept over TLS 1.2 (RFC 9325 section 4.2, Mozilla "intermediate"), by key. */
const TLS12_ECDSA = ['ECDHE-ECDSA-AES128-GCM-SHA256', 'ECDHE-ECDSA-AES256-GCM-SHA384', 'ECDHE-ECDSA-CHACHA20-POLY1305'];
const TLS12_RSA = ['ECDHE-RSA-AES128-GCM-SHA256', 'ECDHE-RSA-AES256-GCM-SHA384', 'ECDHE-RSA-CHACHA20-POLY1305'];

beforeAll(async () => {
  buildOnce();
  pki = await makePki();
  const ec = await pki.issue('ec', { names: [DUAL] });
  const rsa = await pki.issue('rsa', { names: [DUAL], kind: 'rsa' });
  const rsaOnly = await pki.issue('rsa-only', { names: [RSA_ONLY], kind: 'rsa' });
  d = await spawnDaemon({
    dir: pki.dir,
    certs: [ec, rsa, rsaOnly].map((c) => ({ cert: c.cert, key: c.key })),
    listeners: [
      { name: 'smtps', protocol: 'smtp', tls: 'implicit' },
      { name: 'mx', protocol: 'smtp', tls: 'starttls', role: 'mx' },
    ],
  });
}, 120_000);

afterAll(stopAll);

/**
 * One TLS 1.2 handshake by openssl s_client offering `ciphers` in that order; resolves with the
 * suite it negotiated, or null when the handshake failed.
 */
async function opensslSuite(servername: string, ciphers: string): Promise<{ suite: string | null; output: string }> {
  const s = spawnInteractive('openssl', [
    's_client', '-connect', `127.0.0.1:${d.port('smtps')}`, '-servername', servername, '-CAfile', pki.caFile,
    '-verify_return_error', '-tls1_2', '-cipher', ciphers, '-brief', '-nocommands',
  ]);
  s.endInput();
  await s.exited();
  const output = s.transcript();
  const m = /^Ciphersuite: (\S+)$/m.exec(output);
  return { suite: output.includes('CONNECTION ESTABLISHED') && m ? m[1]! : null, output };
}

/** Every suite Node's OpenSSL knows that the listener accepts over TLS 1.2 for `servername`. */
async function acceptedTls12(servername: string): Promise<string[]> {
  const accepted: string[] = [];
  for (const name of tls.getCiphers().filter((c) => !c.startsWith('tls_'))) {
    // @SECLEVEL=0 so that the client really offers the weak ones.
    const o = await tlsTry(d.port('smtps'), { servername, ca: pki.ca.certPem, maxVersion: 'TLSv1.2', ciphers: `${name.toUpperCase()}:@SECLEVEL=0` });
    if (o.socket) {
      accepted.push(o.socket.getCipher().name);
      o.socket.destroy();
    }
  }
  return accepted.sort();
}

describe('TLS 1.2 suites: ECDHE with AEAD only', () => {
  it('with ECDSA and RSA certificates loaded, exactly the six ECDHE AEAD suites are accepted', async () => {
    expect(await acceptedTls12(DUAL)).toEqual([...TLS12_ECDSA, ...TLS12_RSA].sort());
  });

  it('with only an RSA certificate, exactly the three ECDHE-RSA AEAD suites are accepted', async () => {
    expect(await acceptedTls12(RSA_ONLY)).toEqual([...TLS12_RSA].sort());
  });

  for (const name of [DUAL, RSA_ONLY]) {
    it(`${name}: openssl offering only static RSA AES128-GCM-SHA256 (no forward secrecy) fails the handshake`, async () => {
      const before = await d.metric('postern_handshakes_total', { listener: 'smtps', result: 'failed' });
      const r = await opensslSuite(name, 'AES128-GCM-SHA256');
      expect(r.suite, r.output).toBeNull();
      expect(r.output).toMatch(/handshake failure/);
      expect(await d.metric('postern_handshakes_total', { listener: 'smtps', result: 'failed' })).toBe(before + 1);
    });

    it(`${name}: openssl offering only static RSA AES256-SHA (CBC, no forward secrecy) fails the handshake`, async () => {
      const r = await opensslSuite(name, 'AES256-SHA');
      expect(r.suite, r.output).toBeNull();
      expect(r.output).toMatch(/handshake failure/);
    });

    it(`${name}: openssl offering ECDHE-RSA-AES128-GCM-SHA256 gets it, with the RSA certificate`, async () => {
      const r = await opensslSuite(name, 'ECDHE-RSA-AES128-GCM-SHA256');
      expect(r.suite, r.output).toBe('ECDHE-RSA-AES128-GCM-SHA256');
      expect(r.output).toMatch(/^Signature type: RSA/m);
    });
  }
});

describe('server cipher order decides', () => {
  it('ECDSA: CHACHA20 listed first or AES-GCM listed first, the client gets the server\'s first, AES128-GCM', async () => {
    const chachaFirst = await opensslSuite(DUAL, 'ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256');
    const aesFirst = await opensslSuite(DUAL, 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305');
    expect(chachaFirst.suite, chachaFirst.output).toBe('ECDHE-ECDSA-AES128-GCM-SHA256');
    expect(aesFirst.suite, aesFirst.output).toBe('ECDHE-ECDSA-AES128-GCM-SHA256');
  });

  it('ECDSA: a client preferring CHACHA20 over AES256-GCM gets AES256-GCM, which the server lists first', async () => {
    const r = await opensslSuite(DUAL, 'ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384');
    expect(r.suite, r.output).toBe('ECDHE-ECDSA-AES256-GCM-SHA384');
  });

  it('RSA only: a client preferring CHACHA20 gets ECDHE-RSA-AES128-GCM-SHA256', async () => {
    const r = await opensslSuite(RSA_ONLY, 'ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256');
    expect(r.suite, r.output).toBe('ECDHE-RSA-AES128-GCM-SHA256');
  });

  it('ECDSA and RSA for one name: a client that can use both gets an ECDSA suite', async () => {
    const r = await opensslSuite(DUAL, 'ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256');
    expect(r.suite, r.output).toBe('ECDHE-ECDSA-AES128-GCM-SHA256');
  });
});

describe('TLS 1.3 still served', () => {
  for (const suite of ['TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256', 'TLS_AES_128_GCM_SHA256']) {
    it(`a TLS 1.3 client offering only ${suite} gets it`, async () => {
      const o = await tlsTry(d.port('smtps'), { servername: DUAL, ca: pki.ca.certPem, minVersion: 'TLSv1.3', ciphers: suite });
      expect(o.error).toBeNull();
      expect(o.socket!.getProtocol()).toBe('TLSv1.3');
      expect(o.socket!.getCipher().standardName).toBe(suite);
      o.socket!.destroy();
    });
  }
});

describe('client-initiated renegotiation is refused', () => {
  /**
   * openssl s_client over TLS 1.2 from a known port; after the handshake `R` asks for a
   * renegotiation. Refused: OpenSSL answers with a no_renegotiation alert, s_client gives up and
   * exits. Accepted (the bug): s_client prints the new handshake and keeps the session open.
   */
  async function renegotiate(listener: string, starttls: boolean) {
    const localPort = await freePort();
    const s = spawnInteractive('openssl', [
      's_client', ...(starttls ? ['-starttls', 'smtp'] : []), '-connect', `127.0.0.1:${d.port(listener)}`, '-bind', `127.0.0.1:${localPort}`,
      '-servername', DUAL, '-CAfile', pki.caFile, '-verify_return_error', '-tls1_2', '-brief', '-crlf',
    ]);
    try {
      await s.readUntil(/CONNECTION ESTABLISHED[\s\S]*Verification: OK\n/);
      s.send('R');
      await s.readUntil(/RENEGOTIATING\n/);
      const code = await s.exited(5000);
      return { code, output: s.transcript(), localPort };
    } finally {
      s.kill();
    }
  }

  it('implicit TLS: openssl s_client -tls1_2 R gets no_renegotiation and the session ends', async () => {
    const r = await renegotiate('smtps', false);
    expect(r.output).toMatch(/no renegotiation/);
    expect(r.code).not.toBe(0);
    expect(await d.summaryFor(r.localPort)).toMatchObject({ listener: 'smtps', tlsVersion: 'TLSv1.2' });
    expect(d.child.exitCode).toBeNull();
    await goodClient(d, 'smtps', pki);
  });

  it('after STARTTLS: openssl s_client -starttls smtp -tls1_2 R gets no_renegotiation and the session ends', async () => {
    const r = await renegotiate('mx', true);
    expect(r.output).toMatch(/no renegotiation/);
    expect(r.code).not.toBe(0);
    expect(await d.summaryFor(r.localPort)).toMatchObject({ listener: 'mx', tlsVersion: 'TLSv1.2' });
    expect(d.child.exitCode).toBeNull();
    await goodClient(d, 'mx', pki, { starttls: 'smtp' });
  });

  it('implicit TLS: Node\'s tlsSocket.renegotiate() fails with ERR_SSL_NO_RENEGOTIATION', async () => {
    const o = await tlsTry(d.port('smtps'), { servername: DUAL, ca: pki.ca.certPem, maxVersion: 'TLSv1.2' });
    expect(o.error).toBeNull();
    const socket = o.socket!;
    try {
      const outcome = await new Promise<string>((resolve) => {
        const timer = setTimeout(() => resolve('no answer within 5 s'), 5000);
        socket.once('error', (err: NodeJS.ErrnoException) => {
          clearTimeout(timer);
          resolve(err.code ?? err.message);
        });
        const started = socket.renegotiate({}, (err) => {
          clearTimeout(timer);
          resolve(err ? ((err as NodeJS.ErrnoException).code ?? err.message) : 'renegotiated');
        });
        if (!started) resolve('renegotiate() returned false');
      });
      expect(outcome).toBe('ERR_SSL_NO_RENEGOTIATION');
    } finally {
      socket.destroy();
    }
    expect(d.child.exitCode).toBeNull();
    await goodClient(d, 'smtps', pki);
  });
});
