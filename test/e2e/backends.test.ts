// Proves the private Postfix/Dovecot harness and the PROXY encoders against the real daemons,
// without postern: plain sockets from 127.0.0.2 write encodeProxyV1/V2 headers that claim another
// client address, then speak the protocol. Missing programs fail the suite (never skip).
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeProxyV1, encodeProxyV2 } from '../../src/backend/proxy-protocol.ts';
import type { ProxyEndpoints, ProxyTlsInfo } from '../../src/backend/proxy-protocol.ts';
import {
  connectLineClient, freePorts, requireProgram, requireRoot, run, startDovecot, startPostfix,
} from './harness/index.ts';
import type { DovecotHandle, LineClient, PostfixHandle } from './harness/index.ts';

const SOURCE = '127.0.0.2'; // the socket's real address; never the one the daemons should log
const tls = (alpn: string): ProxyTlsInfo => ({ sni: 'mail.example.org', alpn, version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384' });

function claim(client: string, localPort: number): ProxyEndpoints {
  return { clientAddress: client, clientPort: 40_000, localAddress: '127.0.0.1', localPort };
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** One SMTP transaction; returns the queue id. */
async function smtpSend(c: LineClient, token: string): Promise<string> {
  await c.readUntil(/^220 .*\r\n/m);
  c.send('EHLO client.example\r\n');
  await c.readUntil(/^250 .*\r\n/m);
  c.send('MAIL FROM:<s@example.net>\r\n');
  await c.readUntil(/^250 .*\r\n/m);
  c.send('RCPT TO:<rcpt@example.org>\r\n');
  await c.readUntil(/^250 .*\r\n/m);
  c.send('DATA\r\n');
  await c.readUntil(/^354 .*\r\n/m);
  c.send(`Subject: ${token}\r\nFrom: s@example.net\r\nTo: rcpt@example.org\r\n\r\nbody ${token}\r\n.\r\n`);
  const queued = await c.readUntil(/^250 .*queued as ([0-9A-Za-z]+)\r\n/m);
  c.send('QUIT\r\n');
  await c.readUntil(/^221 .*\r\n/m);
  c.close();
  const id = /queued as ([0-9A-Za-z]+)/.exec(queued)?.[1];
  if (!id) throw new Error(`no queue id in ${queued}`);
  return id;
}

beforeAll(() => {
  for (const program of ['postfix', 'dovecot', 'doveadm', 'swaks', 'openssl']) requireProgram(program);
  requireRoot();
});

it('a missing program fails the suite instead of skipping it', () => {
  expect(() => requireProgram('postern-no-such-program')).toThrow(/required program "postern-no-such-program" not found/);
});

describe('Postfix with smtpd_upstream_proxy_protocol = haproxy', () => {
  let pf: PostfixHandle;
  let plain: PostfixHandle;

  beforeAll(async () => {
    const [a, b, c, d] = await freePorts(4);
    // Two instances at once: they must not collide (queues, pid files, logs, ports).
    [pf, plain] = await Promise.all([
      startPostfix({ smtpPort: a!, submissionPort: b!, proxyProtocol: 'haproxy' }),
      startPostfix({ smtpPort: c!, submissionPort: d!, proxyProtocol: null }),
    ]);
  });

  afterAll(async () => {
    await Promise.all([pf?.stop(), plain?.stop()]);
  });

  it('v1 header on the port-25 smtpd: logs the claimed client and delivers', async () => {
    const token = randomUUID();
    const c = await connectLineClient({ port: pf.smtpPort, localAddress: SOURCE, first: encodeProxyV1(claim('127.0.0.9', 25)) });
    const id = await smtpSend(c, token);
    await pf.waitForLog(new RegExp(`smtpd\\[\\d+\\]: ${id}: client=unknown\\[127\\.0\\.0\\.9\\]`));
    const box = await pf.waitForMailbox('rcpt', new RegExp(`body ${token}`));
    expect(box[0]).toContain(token);
    const text = await pf.mailboxText('rcpt');
    expect(text).toMatch(new RegExp(`Received: from client\\.example \\(unknown \\[127\\.0\\.0\\.9\\]\\)\\s+by mx\\.postern\\.test \\(Postfix\\) with ESMTP id ${id}`));
    expect(await pf.readLog()).toMatch(/connect from unknown\[127\.0\.0\.9\]/);
  });

  it('v2 header with TLS TLVs on the submission smtpd: TLVs ignored, claimed client logged', async () => {
    const token = randomUUID();
    const header = encodeProxyV2(claim('127.0.0.10', 587), tls('smtp'));
    const c = await connectLineClient({ port: pf.submissionPort, localAddress: SOURCE, first: header });
    const id = await smtpSend(c, token);
    await pf.waitForLog(new RegExp(`postfix/submission/smtpd\\[\\d+\\]: ${id}: client=unknown\\[127\\.0\\.0\\.10\\]`));
    await pf.waitForMailbox('rcpt', new RegExp(`body ${token}`));
  });

  it('TCP6 headers (v1 and v2) are accepted and logged with the IPv6 client', async () => {
    const ep: ProxyEndpoints = { clientAddress: '2001:db8::9', clientPort: 40_000, localAddress: '2001:db8::1', localPort: 25 };
    for (const header of [encodeProxyV1(ep), encodeProxyV2(ep, tls('smtp'))]) {
      const c = await connectLineClient({ port: pf.smtpPort, localAddress: SOURCE, first: header });
      await smtpSend(c, randomUUID());
    }
    const log = await pf.readLog();
    expect(log.match(/: connect from unknown\[2001:db8::9\]/g)?.length).toBe(2);
  });

  it('pins Postfix 3.7 behaviour: PROXY UNKNOWN and v2 UNSPEC are refused with 421', async () => {
    const mixed: ProxyEndpoints = { clientAddress: '192.0.2.1', clientPort: 1, localAddress: '2001:db8::1', localPort: 25 };
    for (const header of [encodeProxyV1(mixed), encodeProxyV2(mixed, null)]) {
      const c = await connectLineClient({ port: pf.smtpPort, localAddress: SOURCE, first: header });
      expect(await c.readToEnd()).toMatch(/^421 /);
    }
    await pf.waitForLog(/haproxy read: bad or missing protocol type: PROXY UNKNOWN/);
    await pf.waitForLog(/haproxy read: unsupported network protocol/);
  });

  it('never logs the socket address of a connection that came with a header', async () => {
    const connects = (await pf.readLog()).match(/: connect from unknown\[[^\]]+\]/g) ?? [];
    // Only the two refused headers fall back to the socket address.
    expect(connects.filter((l) => l.includes(`[${SOURCE}]`))).toHaveLength(2);
  });

  it('swaks delivers straight to an instance without PROXY protocol', async () => {
    const token = randomUUID();
    const r = await run('swaks', [
      '--server', '127.0.0.1', '--port', String(plain.smtpPort),
      '--to', 'rcpt@example.org', '--from', 's@example.net', '--header', `Subject: ${token}`,
    ]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    await plain.waitForMailbox('rcpt', new RegExp(`Subject: ${escape(token)}`));
    expect(await plain.readLog()).toMatch(/connect from unknown\[127\.0\.0\.1\]/);
    // The other instance saw none of it: separate queues, logs and mailboxes.
    expect(await pf.mailboxText('rcpt')).not.toContain(token);
  });
});

describe('Dovecot with ssl = required and haproxy = yes', () => {
  let dc: DovecotHandle;

  beforeAll(async () => {
    const [imap, pop3] = await freePorts(2);
    dc = await startDovecot({ imapPort: imap!, pop3Port: pop3!, haproxy: true, sslRequired: true });
  });

  afterAll(async () => {
    await dc?.stop();
  });

  const imap = (header: Buffer) => connectLineClient({ port: dc.imapPort, localAddress: SOURCE, first: header });
  const pop3 = (header: Buffer) => connectLineClient({ port: dc.pop3Port, localAddress: SOURCE, first: header });

  it('IMAP: a v2 header with the SSL TLV makes the session secured, LOGIN succeeds', async () => {
    const c = await imap(encodeProxyV2(claim('127.0.0.11', 143), tls('imap')));
    const greeting = await c.readUntil(/^\* OK .*\r\n/m);
    expect(greeting).not.toContain('LOGINDISABLED');
    c.send('a LOGIN alice secret\r\n');
    expect(await c.readUntil(/^a .*\r\n/m)).toMatch(/^a OK /m);
    c.send('b SELECT INBOX\r\n');
    expect(await c.readUntil(/^b .*\r\n/m)).toMatch(/^b OK /m);
    c.send('c LOGOUT\r\n');
    await c.readUntil(/^c OK .*\r\n/m);
    c.close();
    await dc.waitForLog(/imap-login: Info: Login: user=<alice>, method=PLAIN, rip=127\.0\.0\.11, lip=127\.0\.0\.1, mpid=\d+, secured,/);
  });

  it('IMAP: a v1 header is not secured: LOGINDISABLED and NO [PRIVACYREQUIRED]', async () => {
    const c = await imap(encodeProxyV1(claim('127.0.0.12', 143)));
    expect(await c.readUntil(/^\* OK .*\r\n/m)).toContain('LOGINDISABLED');
    c.send('a LOGIN alice secret\r\n');
    expect(await c.readUntil(/^a .*\r\n/m)).toMatch(/^a NO \[PRIVACYREQUIRED\]/m);
    c.close();
    await dc.waitForLog(/imap-login: Info: [^\n]*Plaintext authentication disabled[^\n]*rip=127\.0\.0\.12,/);
  });

  it('IMAP: a v2 header without TLS info is not secured either (the SSL TLV is what counts)', async () => {
    const c = await imap(encodeProxyV2(claim('127.0.0.13', 143), null));
    expect(await c.readUntil(/^\* OK .*\r\n/m)).toContain('LOGINDISABLED');
    c.send('a LOGIN alice secret\r\n');
    expect(await c.readUntil(/^a .*\r\n/m)).toMatch(/^a NO \[PRIVACYREQUIRED\]/m);
    c.close();
  });

  it('POP3: a v2 header with the SSL TLV lets USER/PASS log in, logged as secured', async () => {
    const c = await pop3(encodeProxyV2(claim('127.0.0.14', 110), tls('pop3')));
    await c.readUntil(/^\+OK .*\r\n/m);
    c.send('USER alice\r\n');
    expect(await c.readUntil(/^[+-].*\r\n/m)).toMatch(/^\+OK/);
    c.send('PASS secret\r\n');
    expect(await c.readUntil(/^[+-].*\r\n/m)).toMatch(/^\+OK Logged in/);
    c.send('QUIT\r\n');
    await c.readUntil(/^\+OK .*\r\n/m);
    c.close();
    await dc.waitForLog(/pop3-login: Info: Login: user=<alice>, method=PLAIN, rip=127\.0\.0\.14, lip=127\.0\.0\.1, mpid=\d+, secured,/);
  });

  it('POP3: a v1 header gets -ERR [AUTH]', async () => {
    const c = await pop3(encodeProxyV1(claim('127.0.0.15', 110)));
    await c.readUntil(/^\+OK .*\r\n/m);
    c.send('USER alice\r\n');
    expect(await c.readUntil(/^[+-].*\r\n/m)).toMatch(/^-ERR \[AUTH\]/);
    c.close();
  });
});
