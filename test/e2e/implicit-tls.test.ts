// Issue 15 item 4: implicit TLS listeners (465, 993, 995) in front of a real Postfix that offers
// STARTTLS itself and a real Dovecot behind PROXY v2 (`ssl = required`): the backend's greeting
// reaches the client, but STARTTLS/STLS is neither announced (greeting, CAPABILITY, CAPA, EHLO)
// nor forwarded; postern answers it itself as "TLS already active". Logins, FETCH/RETR and a swaks
// delivery still work. Item 5: on the port-25 listener, STARTTLS after the plaintext handoff gets
// 454 4.7.0 from postern and never reaches Postfix.
import { randomUUID } from 'node:crypto';
import type net from 'node:net';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePorts, requireProgram, requireRoot, run, startDovecot, startPostfix } from './harness/index.ts';
import type { DovecotHandle, PostfixHandle } from './harness/index.ts';
import { HOSTNAME, PROGRAMS, deliverToMaildir, makeStackPki, postfixTls, type StackPki } from './harness/postern-stack.ts';
import { connectFrom, literal, readStream, startTls, type StreamReader } from './harness/streams.ts';
import { startPostern, type RunningPostern } from '../helpers/postern.ts';

const POSTFIX_NAME = 'mx.postern.test';

let certs: StackPki;
let pf: PostfixHandle;
let dc: DovecotHandle;
let postern: RunningPostern;

beforeAll(async () => {
  for (const p of PROGRAMS) requireProgram(p);
  requireRoot();
  certs = await makeStackPki();
  const [smtp, submission, imap, pop3] = await freePorts(4);
  pf = await startPostfix({ smtpPort: smtp!, submissionPort: submission!, proxyProtocol: 'haproxy', ...postfixTls(certs.otherCert, 20_971_520) });
  dc = await startDovecot({ imapPort: imap!, pop3Port: pop3!, haproxy: true, sslRequired: true });
  const ports = await freePorts(4);
  const listener = (name: string, port: number, protocol: string, tls: string, backendPort: number, extra: Record<string, unknown> = {}) => ({
    name, listen: `127.0.0.1:${port}`, protocol, tls, hostname: HOSTNAME, backend: { address: `127.0.0.1:${backendPort}`, proxyProtocol: 'v2' }, ...extra,
  });
  postern = await startPostern(certs.pki.dir, stringify({
    log: { level: 'debug' },
    certificates: [certs.otherCert, certs.hostCert].map((c) => ({ cert: c.cert, key: c.key })),
    listeners: [
      listener('smtps', ports[0]!, 'smtp', 'implicit', pf.submissionPort, { role: 'submission' }),
      listener('imaps', ports[1]!, 'imap', 'implicit', dc.imapPort),
      listener('pop3s', ports[2]!, 'pop3', 'implicit', dc.pop3Port),
      listener('mx', ports[3]!, 'smtp', 'starttls', pf.smtpPort, { role: 'mx' }),
    ],
  }));
}, 60_000);

afterAll(async () => {
  await postern?.stop();
  await pf?.stop();
  await dc?.stop();
});

/** An implicit TLS session from `from`, handshake done (verified against the test CA). */
async function implicit(listener: string, from: string): Promise<{ t: net.Socket; r: StreamReader }> {
  const sock = await connectFrom(postern.port(listener), from);
  const t = await startTls(sock, { servername: HOSTNAME, ca: certs.pki.ca.certPem });
  return { t, r: readStream(t) };
}

async function disconnectLine(client: string, service: string): Promise<string> {
  const m = await pf.waitForLog(new RegExp(`postfix/${service}\\[\\d+\\]: disconnect from unknown\\[${literal(client)}\\]([^\\n]*)`));
  return m[1]!.trim();
}

describe('smtp on an implicit TLS listener (465) before a Postfix that offers STARTTLS', () => {
  it("Postfix's greeting arrives; its EHLO reply lacks STARTTLS; STARTTLS gets 503 from postern and never reaches Postfix", async () => {
    const from = '127.0.0.21';
    const { t, r } = await implicit('smtps', from);
    expect(await r.readUntil(/^220 .*\r\n/m)).toMatch(new RegExp(`^220 ${literal(POSTFIX_NAME)} `));
    t.write('EHLO client.example.net\r\n');
    const ehlo = await r.readUntil(/^250 .*\r\n/m);
    expect(ehlo.split('\r\n')[0]).toBe(`250-${POSTFIX_NAME}`);
    expect(ehlo).toMatch(/^250[- ]PIPELINING\r\n/m);
    expect(ehlo).not.toMatch(/STARTTLS/i);
    t.write('STARTTLS\r\n');
    expect(await r.readUntil(/^\d{3} .*\r\n/m)).toBe('503 5.5.1 TLS already active\r\n');
    t.write('NOOP\r\n');
    expect(await r.readUntil(/^\d{3} .*\r\n/m)).toMatch(/^250 /);
    t.end('QUIT\r\n');
    expect(await r.readToEnd()).toMatch(/^221 /);
    // Postfix counts every command it saw: no starttls=.
    expect(await disconnectLine(from, 'submission/smtpd')).toBe('ehlo=1 noop=1 quit=1 commands=3');
  });

  it('swaks --tlsc (TLS on connect) submits a message that Postfix delivers', async () => {
    const token = `implicit-${randomUUID()}`;
    const r = await run('swaks', [
      '--server', '127.0.0.1', '--port', String(postern.port('smtps')), '--local-interface', '127.0.0.22',
      '--from', 'sender@example.net', '--to', 'rcpt@example.org', '--timeout', '20', '--tlsc', '--tls-verify',
      '--tls-ca-path', certs.pki.caFile, '--tls-sni', HOSTNAME, '--header', `Subject: ${token}`,
    ], 40_000);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).not.toMatch(/STARTTLS/);
    expect(r.stdout).toMatch(/250 2\.0\.0 Ok: queued as/);
    await pf.waitForMailbox('rcpt', new RegExp(literal(token)));
  });
});

describe('imap on an implicit TLS listener (993) before Dovecot', () => {
  it("Dovecot's greeting and CAPABILITY lack STARTTLS; STARTTLS gets BAD from postern; LOGIN, SELECT and FETCH work", async () => {
    const token = `imaps-${randomUUID()}`;
    await deliverToMaildir(dc.dir, 'alice', `${token}.eml`, `Subject: ${token}\r\n\r\nbody ${token}\r\n`);
    const { t, r } = await implicit('imaps', '127.0.0.23');
    const greeting = await r.readUntil(/^\* OK .*\r\n/m);
    expect(greeting).toMatch(/^\* OK /);
    expect(greeting).not.toMatch(/STARTTLS|LOGINDISABLED/i);
    t.write('a CAPABILITY\r\n');
    const caps = await r.readUntil(/^a .*\r\n/m);
    expect(caps).toMatch(/^\* CAPABILITY .*IMAP4rev1/m);
    expect(caps).not.toMatch(/STARTTLS|LOGINDISABLED/i);
    t.write('b STARTTLS\r\n');
    // Had Dovecot seen it, it would have answered in its own words (or waited for a handshake).
    expect(await r.readUntil(/^b .*\r\n/m)).toBe('b BAD TLS already active\r\n');
    t.write('c LOGIN alice secret\r\n');
    expect(await r.readUntil(/^c .*\r\n/m)).toMatch(/^c OK .*Logged in/m);
    t.write('d SELECT INBOX\r\n');
    expect(await r.readUntil(/^d .*\r\n/m)).toMatch(/^d OK /m);
    t.write('e FETCH 1:* BODY.PEEK[]\r\n');
    const fetched = await r.readUntil(/^e .*\r\n/m);
    expect(fetched).toMatch(/^e OK /m);
    expect(fetched).toContain(`body ${token}`);
    t.end('f LOGOUT\r\n');
    await r.readToEnd();
  });
});

describe('too many refusals before Dovecot', () => {
  it('a LOGIN pipelined before 20 STARTTLS: Dovecot logs the user in, postern ends the session with BYE and does not read on', async () => {
    const { t, r } = await implicit('imaps', '127.0.0.27');
    await r.readUntil(/^\* OK .*\r\n/m);
    // One write: the LOGIN (answered OK by Dovecot, after which postern's filter has nothing left to
    // rewrite), 20 STARTTLS that postern refuses, then a command it must never forward.
    t.write('a LOGIN alice secret\r\n' + 'b STARTTLS\r\n'.repeat(20) + 'c SELECT INBOX\r\n');
    const text = await r.readToEnd();
    expect(text).toMatch(/^a OK .*Logged in/m);
    expect(text.match(/^b BAD TLS already active\r$/gm)).toHaveLength(20);
    expect(text).toMatch(/\* BYE Too many errors\r\n$/);
    expect(text).not.toMatch(/^c /m);
  });
});

describe('pop3 on an implicit TLS listener (995) before Dovecot', () => {
  it('CAPA lacks STLS; STLS gets -ERR from postern; USER/PASS and RETR work', async () => {
    const token = `pop3s-${randomUUID()}`;
    await deliverToMaildir(dc.dir, 'alice', `${token}.eml`, `Subject: ${token}\r\n\r\nbody ${token}\r\n`);
    const { t, r } = await implicit('pop3s', '127.0.0.24');
    expect(await r.readUntil(/^\+OK.*\r\n/m)).toMatch(/^\+OK /);
    t.write('CAPA\r\n');
    const capa = await r.readUntil(/^\.\r\n/m);
    expect(capa).toMatch(/^\+OK/);
    expect(capa).toMatch(/^USER\r\n/m);
    expect(capa).not.toMatch(/STLS/i);
    t.write('STLS\r\n');
    expect(await r.readUntil(/\r\n/)).toBe('-ERR TLS already active\r\n');
    t.write('USER alice\r\n');
    expect(await r.readUntil(/\r\n/)).toMatch(/^\+OK/);
    t.write('PASS secret\r\n');
    expect(await r.readUntil(/\r\n/)).toMatch(/^\+OK/);
    t.write('STAT\r\n');
    const stat = /^\+OK (\d+) /.exec(await r.readUntil(/\r\n/));
    expect(stat).not.toBeNull();
    t.write(`RETR ${stat![1]}\r\n`);
    const msg = await r.readUntil(/\r\n\.\r\n/);
    expect(msg).toMatch(/^\+OK/);
    t.end('QUIT\r\n');
    expect(await r.readToEnd()).toMatch(/^\+OK/);
    expect(msg).toContain(`body ${token}`);
    // Dovecot (ssl = required) let the login in: the PROXY v2 header said TLS.
    await dc.waitForLog(/pop3-login: Info: Login: user=<alice>, method=PLAIN, rip=127\.0\.0\.24, .*secured/);
  });
});

describe('port 25 after the plaintext handoff (issue 15 item 5)', () => {
  it('STARTTLS after a plaintext MAIL gets 454 4.7.0 from postern and never reaches Postfix', async () => {
    const from = '127.0.0.25';
    const sock = await connectFrom(postern.port('mx'), from);
    const r = readStream(sock);
    await r.readUntil(/^220 .*\r\n/m);
    sock.write('EHLO client.example.net\r\n');
    await r.readUntil(/^250 .*\r\n/m);
    // MAIL in plaintext: postern hands the session to Postfix (the EHLO replayed).
    sock.write('MAIL FROM:<sender@example.net>\r\n');
    expect(await r.readUntil(/^\d{3} .*\r\n/m)).toMatch(/^250 /);
    sock.write('STARTTLS\r\n');
    expect(await r.readUntil(/^\d{3} .*\r\n/m)).toBe('454 4.7.0 TLS not available due to temporary reason\r\n');
    sock.end('QUIT\r\n');
    expect(await r.readToEnd()).toMatch(/^221 /);
    expect(await disconnectLine(from, 'smtpd')).toBe('ehlo=1 mail=1 quit=1 commands=3');
  });
});
