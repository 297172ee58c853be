// SMTP STARTTLS through postern in front of a real Postfix (issue 3, "Proof with real software"):
// swaks, openssl s_client, curl and raw Node dialogues as clients; PROXY v2 to a Postfix smtpd
// with smtpd_upstream_proxy_protocol = haproxy. This Postfix offers STARTTLS itself (as a real MX
// does), so postern has to hide and refuse it after TLS. Clients connect from 127.0.0.2 and up,
// never from 127.0.0.1, so the address Postfix logs is the one postern saw, not postern's own.
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeProxyV2 } from '../../src/backend/proxy-protocol.ts';
import { connectLineClient, freePorts, requireProgram, requireRoot, run, startPostfix } from './harness/index.ts';
import type { PostfixHandle } from './harness/index.ts';
import { spawnInteractive } from './harness/interactive.ts';
import {
  HOSTNAME, PROGRAMS, makeStackPki, postfixTls, startStarttlsPostern, summaryFor, type PosternStack, type StackPki,
} from './harness/postern-stack.ts';
import { connectFrom, literal, readStream, startTls, type StreamReader } from './harness/streams.ts';

/** The address swaks, curl and openssl connect from: what Postfix must log. */
const CLIENT = '127.0.0.2';
/** Postfix's own name (mx.postern.test, the harness default): tells its replies from postern's. */
const POSTFIX_NAME = 'mx.postern.test';
/** message_size_limit of this Postfix: not the default, so only a real probe can know it. */
const SIZE_LIMIT = 31_457_280;
/** What postern would announce if its probe of Postfix had failed. */
const FALLBACK = ['X-POSTERN-FALLBACK-ONLY'];

let certs: StackPki;
let pf: PostfixHandle;
let stack: PosternStack;

beforeAll(async () => {
  for (const p of PROGRAMS) requireProgram(p);
  requireRoot();
  certs = await makeStackPki();
  const [smtp, submission] = await freePorts(2);
  pf = await startPostfix({
    smtpPort: smtp!,
    submissionPort: submission!,
    proxyProtocol: 'haproxy',
    ...postfixTls(certs.otherCert, SIZE_LIMIT),
  });
  stack = await startStarttlsPostern(certs, [
    // role: mx on a high port (as behind `-p 25:2525`): sni fallback and plaintext allowed, by
    // the role alone (no sni or requireTls key), whatever the port number.
    { name: 'smtp', protocol: 'smtp', role: 'mx', backendPort: pf.smtpPort, fallbackCapabilities: FALLBACK },
    // role: submission: sni strict, STARTTLS required before MAIL/RCPT/DATA/AUTH.
    { name: 'submission', protocol: 'smtp', role: 'submission', backendPort: pf.submissionPort },
  ]);
}, 60_000);

afterAll(async () => {
  await stack?.postern.stop();
  await pf?.stop();
});

const ca = () => certs.pki.ca.certPem;

function swaks(port: number, args: string[], from = CLIENT) {
  return run('swaks', [
    '--server', '127.0.0.1', '--port', String(port), '--local-interface', from,
    '--from', 'sender@example.net', '--to', 'rcpt@example.org', '--timeout', '20', ...args,
  ], 40_000);
}

/** swaks' TLS options with chain verification against the test CA. */
function swaksTls(sni: string | null): string[] {
  return ['--tls', '--tls-verify', '--tls-ca-path', certs.pki.caFile, ...(sni ? ['--tls-sni', sni] : [])];
}

function queueId(output: string): string {
  const m = /250 2\.0\.0 Ok: (?:\d+ bytes )?queued as ([0-9A-Za-z]+)/.exec(output);
  if (!m) throw new Error(`no queue id in:\n${output}`);
  return m[1]!;
}

/** The one message in rcpt's mbox that carries `token`. */
async function deliveredMessage(token: string): Promise<string> {
  await pf.waitForMailbox('rcpt', new RegExp(literal(token)));
  const box = await pf.mailboxText('rcpt');
  const messages = box.split(/^(?=From )/m).filter((m) => m.includes(token));
  expect(messages).toHaveLength(1);
  return messages[0]!;
}

/** Postfix's "disconnect from" line for a client address (its per-command counters). */
async function disconnectLine(client: string, service = 'smtpd'): Promise<string> {
  const m = await pf.waitForLog(new RegExp(`postfix/${service}\\[\\d+\\]: disconnect from unknown\\[${literal(client)}\\]([^\\n]*)`));
  return m[1]!.trim();
}

/** A raw SMTP client from `from`: greeting read, EHLO answered by postern; ready for STARTTLS. */
async function preTls(port: number, from: string): Promise<{ sock: net.Socket; r: StreamReader; ehlo: string }> {
  const sock = await connectFrom(port, from);
  const r = readStream(sock);
  await r.readUntil(/^220 .*\r\n/m);
  sock.write('EHLO client.example.net\r\n');
  const ehlo = await r.readUntil(/^250 .*\r\n/m);
  return { sock, r, ehlo };
}

/** STARTTLS on a raw client: 220 read, reader detached, handshake done. */
async function upgrade(c: { sock: net.Socket; r: StreamReader }, servername: string | undefined = HOSTNAME) {
  c.sock.write('STARTTLS\r\n');
  expect(await c.r.readUntil(/^\d{3} .*\r\n/m)).toBe('220 2.0.0 Ready to start TLS\r\n');
  expect(c.r.detach()).toBe('');
  const t = await startTls(c.sock, { servername, ca: ca(), anyName: servername !== HOSTNAME });
  return { t, tr: readStream(t) };
}

/** EHLO keywords of a 250 reply (its first line, the server's name, left out). */
function keywords(reply: string): string[] {
  return reply.split('\r\n').filter(Boolean).slice(1).map((l) => l.slice(4));
}

it('a missing program fails the suite instead of skipping it', () => {
  expect(() => requireProgram('postern-no-such-program')).toThrow(/required program "postern-no-such-program" not found/);
});

describe('swaks through the port-25 listener (sni fallback, requireTls false)', () => {
  const cases = [
    { label: 'SNI = the listener hostname', sni: HOSTNAME, sniClass: 'exact', decision: 'served' },
    { label: 'SNI = the bare domain example.org (as MDaemon sends it)', sni: 'example.org', sniClass: 'unknown', decision: 'fallback' },
    { label: 'no SNI', sni: null, sniClass: 'none', decision: 'served' },
  ] as const;
  for (const c of cases) {
    it(`delivers over STARTTLS with ${c.label}; Postfix logs the client address 127.0.0.2`, async () => {
      const token = `starttls-${randomUUID()}`;
      const r = await swaks(stack.port('smtp'), ['--header', `Subject: ${token}`, ...swaksTls(c.sni)]);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toMatch(/<- {2}220 2\.0\.0 Ready to start TLS/);
      expect(r.stdout).toMatch(/=== TLS started with cipher TLSv1\.3/);
      const id = queueId(r.stdout);
      // The queue id ties the log line to this very message.
      await pf.waitForLog(new RegExp(`postfix/smtpd\\[\\d+\\]: ${id}: client=unknown\\[${literal(CLIENT)}\\]`));
      const msg = await deliveredMessage(token);
      expect(msg).toMatch(new RegExp(`\\(unknown \\[${literal(CLIENT)}\\]\\)\\s+by ${literal(POSTFIX_NAME)} \\(Postfix\\) with ESMTP id ${id}`));
      const s = await stack.postern.summary((l) => l.listener === 'smtp' && l.client === CLIENT && l.sni === c.sni && l.tlsVersion !== null);
      // (No closeReason check: swaks often closes with unread TLS records, a reset.)
      expect(s).toMatchObject({ sniClass: c.sniClass, decision: c.decision, servedName: HOSTNAME, tlsVersion: 'TLSv1.3', backend: `127.0.0.1:${pf.smtpPort}` });
    });
  }

  it('delivers in plaintext (RFC 3207: a public MX must not require STARTTLS); Postfix logs 127.0.0.2', async () => {
    const token = `plain-${randomUUID()}`;
    const r = await swaks(stack.port('smtp'), ['--header', `Subject: ${token}`]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).not.toMatch(/-> STARTTLS|TLS started/);
    const id = queueId(r.stdout);
    await pf.waitForLog(new RegExp(`postfix/smtpd\\[\\d+\\]: ${id}: client=unknown\\[${literal(CLIENT)}\\]`));
    const msg = await deliveredMessage(token);
    expect(msg).toContain(`(unknown [${CLIENT}])`);
    const s = await stack.postern.summary((l) => l.listener === 'smtp' && l.client === CLIENT && l.tlsVersion === null && l.backend !== null);
    expect(s).toMatchObject({ sni: null, cipher: null, backend: `127.0.0.1:${pf.smtpPort}` });
  });
});

describe('swaks variants on the port-25 listener', () => {
  it('PIPELINING over STARTTLS (swaks --pipeline): delivered', async () => {
    const token = `pipelined-tls-${randomUUID()}`;
    const r = await swaks(stack.port('smtp'), ['--pipeline', '--header', `Subject: ${token}`, ...swaksTls(HOSTNAME)]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/=== TLS started/);
    await pf.waitForLog(new RegExp(`postfix/smtpd\\[\\d+\\]: ${queueId(r.stdout)}: client=unknown\\[${literal(CLIENT)}\\]`));
    await deliveredMessage(token);
  });

  it('PIPELINING in plaintext (swaks --pipeline): the pipelined MAIL/RCPT/DATA are handed to Postfix after the replayed EHLO', async () => {
    const token = `pipelined-plain-${randomUUID()}`;
    const r = await swaks(stack.port('smtp'), ['--pipeline', '--header', `Subject: ${token}`]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    await pf.waitForLog(new RegExp(`postfix/smtpd\\[\\d+\\]: ${queueId(r.stdout)}: client=unknown\\[${literal(CLIENT)}\\]`));
    await deliveredMessage(token);
  });

  it('HELO (swaks --protocol SMTP) in plaintext: Postfix gets the HELO replayed and delivers', async () => {
    const token = `helo-${randomUUID()}`;
    const r = await swaks(stack.port('smtp'), ['--protocol', 'SMTP', '--helo', 'helo-client.example.net', '--header', `Subject: ${token}`]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/-> HELO helo-client\.example\.net/);
    const msg = await deliveredMessage(token);
    expect(msg).toMatch(new RegExp(`Received: from helo-client\\.example\\.net \\(unknown \\[${literal(CLIENT)}\\]\\)\\s+by ${literal(POSTFIX_NAME)} \\(Postfix\\) with SMTP id`));
  });
});

describe('the submission listener (role: submission: requireTls true, sni strict, on a port that is not 587)', () => {
  it('refuses MAIL FROM before STARTTLS with 530 5.7.0 and never dials Postfix', async () => {
    const from = '127.0.0.3';
    const r = await swaks(stack.port('submission'), ['--quit-after', 'MAIL'], from);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toMatch(/^<\*\* +530 5\.7\.0 Must issue a STARTTLS command first$/m);
    const s = await summaryFor(stack.postern, 'submission', from);
    expect(s).toMatchObject({ backend: null, tlsVersion: null, closeReason: 'client_quit' });
    expect(await pf.readLog()).not.toContain(`[${from}]`);
  });

  it('role: submission without an sni key is strict: openssl s_client -starttls smtp with an unknown SNI gets alert unrecognized_name (112), Postfix is never dialled', async () => {
    const from = '127.0.0.18';
    const s = spawnInteractive('openssl', [
      's_client', '-starttls', 'smtp', '-connect', `127.0.0.1:${stack.port('submission')}`, '-bind', `${from}:0`,
      '-servername', 'unknown.example.net', '-CAfile', certs.pki.caFile, '-brief',
    ]);
    const code = await s.exited();
    expect(code, s.transcript()).not.toBe(0);
    expect(s.transcript()).toMatch(/alert number 112|unrecognized name/);
    expect(await summaryFor(stack.postern, 'submission', from)).toMatchObject({ sni: 'unknown.example.net', decision: 'refused', closeReason: 'sni_refused', backend: null, tlsVersion: null });
    expect(await pf.readLog()).not.toContain(`[${from}]`);
  });

  it('answers MAIL, RCPT, DATA and AUTH before STARTTLS with 530 5.7.0 on a raw socket', async () => {
    const from = '127.0.0.4';
    const c = await preTls(stack.port('submission'), from);
    for (const cmd of ['MAIL FROM:<s@example.net>', 'RCPT TO:<rcpt@example.org>', 'DATA', 'AUTH PLAIN AGFsaWNlAHNlY3JldA==']) {
      c.sock.write(`${cmd}\r\n`);
      expect(await c.r.readUntil(/^\d{3} .*\r\n/m), cmd).toBe('530 5.7.0 Must issue a STARTTLS command first\r\n');
    }
    c.sock.write('QUIT\r\n');
    expect(await c.r.readToEnd()).toBe('221 2.0.0 Bye\r\n');
    expect(await summaryFor(stack.postern, 'submission', from)).toMatchObject({ backend: null });
    expect(await pf.readLog()).not.toContain(`[${from}]`);
  });

  it('delivers after STARTTLS (swaks), logged by the submission smtpd with 127.0.0.2', async () => {
    const token = `submission-${randomUUID()}`;
    const r = await swaks(stack.port('submission'), ['--header', `Subject: ${token}`, ...swaksTls(HOSTNAME)]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const id = queueId(r.stdout);
    await pf.waitForLog(new RegExp(`postfix/submission/smtpd\\[\\d+\\]: ${id}: client=unknown\\[${literal(CLIENT)}\\]`));
    await deliveredMessage(token);
    const s = await stack.postern.summary((l) => l.listener === 'submission' && l.client === CLIENT && l.tlsVersion !== null);
    expect(s).toMatchObject({ sni: HOSTNAME, sniClass: 'exact', backend: `127.0.0.1:${pf.submissionPort}` });
  });
});

describe('openssl s_client and curl', () => {
  it('openssl s_client -starttls smtp (verifying mail.example.org) sends a message to Postfix', async () => {
    const token = `openssl-${randomUUID()}`;
    const s = spawnInteractive('openssl', [
      's_client', '-starttls', 'smtp', '-connect', `127.0.0.1:${stack.port('smtp')}`, '-bind', `${CLIENT}:0`,
      '-servername', HOSTNAME, '-verify_hostname', HOSTNAME, '-CAfile', certs.pki.caFile, '-verify_return_error',
      '-quiet', '-nocommands', '-crlf',
    ]);
    try {
      // The handshake is done (and the chain and name verified) once depth 0 is reported.
      await s.readUntil(/depth=0 CN = mail\.example\.org\nverify return:1\n/);
      s.send('EHLO client.example.net');
      // (s_client also prints the last line of the pre-TLS EHLO reply: skipped by the pattern.)
      await s.readUntil(new RegExp(`^250-${literal(POSTFIX_NAME)}\r?\n[\\s\\S]*?^250 [^\n]*\n`, 'm'));
      s.send('MAIL FROM:<s@example.net>');
      expect(await s.readUntil(/^\d{3} [^\n]*\n/m)).toMatch(/^250 /m);
      s.send('RCPT TO:<rcpt@example.org>');
      expect(await s.readUntil(/^\d{3} [^\n]*\n/m)).toMatch(/^250 /m);
      s.send('DATA');
      expect(await s.readUntil(/^\d{3} [^\n]*\n/m)).toMatch(/^354 /m);
      for (const line of [`Subject: ${token}`, 'From: s@example.net', 'To: rcpt@example.org', '', 'sent by openssl s_client', '.']) s.send(line);
      const id = queueId(await s.readUntil(/^\d{3} [^\n]*\n/m));
      s.send('QUIT');
      expect(await s.readUntil(/^\d{3} [^\n]*\n/m)).toMatch(/^221 /m);
      expect(await s.exited()).toBe(0);
      await pf.waitForLog(new RegExp(`postfix/smtpd\\[\\d+\\]: ${id}: client=unknown\\[${literal(CLIENT)}\\]`));
      await deliveredMessage(token);
    } finally {
      s.kill();
    }
  });

  it('curl --ssl-reqd sends a message through the submission listener (certificate verified)', async () => {
    const token = `curl-${randomUUID()}`;
    const file = path.join(certs.pki.dir, `${token}.eml`);
    writeFileSync(file, `From: s@example.net\r\nTo: rcpt@example.org\r\nSubject: ${token}\r\n\r\nsent by curl\r\n`);
    const port = stack.port('submission');
    const r = await run('curl', [
      '--silent', '--show-error', '--ssl-reqd', '--cacert', certs.pki.caFile, '--interface', CLIENT,
      '--resolve', `${HOSTNAME}:${port}:127.0.0.1`, `smtp://${HOSTNAME}:${port}/client.example.net`,
      '--mail-from', 's@example.net', '--mail-rcpt', 'rcpt@example.org', '-T', file,
    ]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const msg = await deliveredMessage(token);
    const id = /with ESMTP id ([0-9A-Za-z]+)/.exec(msg)?.[1];
    await pf.waitForLog(new RegExp(`postfix/submission/smtpd\\[\\d+\\]: ${id}: client=unknown\\[${literal(CLIENT)}\\]`));
    expect(await stack.postern.summary((l) => l.listener === 'submission' && l.client === CLIENT && l.sni === HOSTNAME)).toMatchObject({ sniClass: 'exact', tlsVersion: 'TLSv1.3' });
  });

  it('openssl s_client -starttls smtp -servername example.org -brief shows the hostname certificate (fallback)', async () => {
    const fallbacks = () => stack.postern.logs.filter((l) => l.msg === 'sni fallback' && l.listener === 'smtp');
    const before = fallbacks().length;
    const s = spawnInteractive('openssl', [
      's_client', '-starttls', 'smtp', '-connect', `127.0.0.1:${stack.port('smtp')}`, '-bind', '127.0.0.5:0',
      '-servername', 'example.org', '-CAfile', certs.pki.caFile, '-verify_return_error', '-brief', '-nocommands', '-crlf',
    ]);
    try {
      const out = await s.readUntil(/CONNECTION ESTABLISHED[\s\S]*Verification: [^\n]*\n/);
      expect(out).toMatch(/^Peer certificate: CN = mail\.example\.org$/m);
      // The chain verifies; no host name was asked for (-verify_hostname), so none is checked.
      expect(out).toMatch(/^Verification: OK$/m);
      s.send('QUIT');
      expect(await s.readUntil(/^221 [^\n]*\n/m)).toMatch(/^221 /m);
      await s.exited();
    } finally {
      s.kill();
    }
    // postern's decision, logged when it was made (debug): requested example.org, served the hostname.
    expect(fallbacks().slice(before)).toEqual([expect.objectContaining({ requested: 'example.org', served: HOSTNAME, reason: 'unknown' })]);
  });
});

describe('SNI fallback on the port-25 listener (Node client)', () => {
  it('serves the certificate of mail.example.org for SNI example.org, not the first loaded one', async () => {
    const from = '127.0.0.6';
    const c = await preTls(stack.port('smtp'), from);
    const { t } = await upgrade(c, 'example.org');
    const cert = t.getPeerCertificate();
    expect(cert.subject.CN).toBe(HOSTNAME);
    expect(cert.subjectaltname).toBe(`DNS:${HOSTNAME}`);
    // The chain verified against the test CA; only the name differs (checkServerIdentity says so).
    expect(t.authorized).toBe(true);
    expect(tls.checkServerIdentity('example.org', cert)).toBeInstanceOf(Error);
    t.destroy();
    expect(await summaryFor(stack.postern, 'smtp', from)).toMatchObject({ sni: 'example.org', sniClass: 'unknown', decision: 'fallback', servedName: HOSTNAME });
  });
});

describe('ALPN on the fallback listener (ALPACA)', () => {
  it('refuses a client offering only h2 with alert 120 before any fallback, and never dials Postfix', async () => {
    const from = '127.0.0.17';
    const s = spawnInteractive('openssl', [
      's_client', '-starttls', 'smtp', '-connect', `127.0.0.1:${stack.port('smtp')}`, '-bind', `${from}:0`,
      '-servername', 'example.org', '-alpn', 'h2,http/1.1', '-CAfile', certs.pki.caFile, '-brief',
    ]);
    const code = await s.exited();
    expect(code, s.transcript()).not.toBe(0);
    expect(s.transcript()).toMatch(/alert number 120/);
    expect(await summaryFor(stack.postern, 'smtp', from)).toMatchObject({ backend: null, tlsVersion: null, servedName: null });
    expect(await pf.readLog()).not.toContain(`[${from}]`);
  });
});

describe('EHLO before and after TLS (raw Node client)', () => {
  /** Postfix's own EHLO answer to a client behind a PROXY v2 header. */
  async function postfixEhlo(): Promise<string> {
    const c = await connectLineClient({
      port: pf.smtpPort, localAddress: '127.0.0.1',
      first: encodeProxyV2({ clientAddress: '127.0.0.99', clientPort: 1, localAddress: '127.0.0.1', localPort: 25 }, null),
    });
    await c.readUntil(/^220 .*\r\n/m);
    c.send('EHLO probe.example.net\r\n');
    const reply = await c.readUntil(/^250 .*\r\n/m);
    c.send('QUIT\r\n');
    await c.readToEnd();
    return reply;
  }

  it("before TLS lists Postfix's own extensions learned by the probe, plus STARTTLS", async () => {
    const own = keywords(await postfixEhlo());
    expect(own).toContain(`SIZE ${SIZE_LIMIT}`);
    expect(own).toContain('STARTTLS'); // this Postfix offers TLS itself
    const c = await preTls(stack.port('smtp'), '127.0.0.7');
    expect(c.ehlo.split('\r\n')[0]).toBe(`250-${HOSTNAME}`);
    const announced = keywords(c.ehlo);
    expect(announced).toEqual(expect.arrayContaining(['PIPELINING', `SIZE ${SIZE_LIMIT}`, '8BITMIME', 'STARTTLS']));
    expect(announced).not.toContain(FALLBACK[0]);
    expect([...announced].sort()).toEqual([...own].sort());
    expect(announced.filter((k) => k === 'STARTTLS')).toHaveLength(1);
    c.sock.destroy();
  });

  it('after TLS the EHLO reply comes from Postfix and does not list STARTTLS', async () => {
    const own = keywords(await postfixEhlo());
    const c = await preTls(stack.port('smtp'), '127.0.0.8');
    const { t, tr } = await upgrade(c);
    t.write('EHLO client.example.net\r\n');
    const after = await tr.readUntil(/^250 .*\r\n/m);
    expect(after.split('\r\n')[0]).toBe(`250-${POSTFIX_NAME}`);
    expect(after).not.toMatch(/STARTTLS/i);
    expect(keywords(after).sort()).toEqual(own.filter((k) => k !== 'STARTTLS').sort());
    // Still a well-formed reply: every line but the last has "250-".
    const lines = after.split('\r\n').filter(Boolean);
    expect(lines.slice(0, -1).every((l) => l.startsWith('250-'))).toBe(true);
    expect(lines.at(-1)).toMatch(/^250 /);
    t.end('QUIT\r\n');
    expect(await tr.readToEnd()).toMatch(/^221 /);
  });

  it('after TLS the client must EHLO again: MAIL without a new EHLO is refused by Postfix', async () => {
    const from = '127.0.0.9';
    const c = await preTls(stack.port('smtp'), from);
    const { t, tr } = await upgrade(c);
    t.write('MAIL FROM:<s@example.net>\r\n');
    expect(await tr.readUntil(/^\d{3} .*\r\n/m)).toMatch(/^503 5\.5\.1 Error: send HELO\/EHLO first\r\n$/);
    t.end('QUIT\r\n');
    await tr.readToEnd();
    expect(await disconnectLine(from)).toBe('mail=0/1 quit=1 commands=1/2');
  });

  it('a second STARTTLS inside TLS gets 503 from postern and never reaches Postfix', async () => {
    const from = '127.0.0.10';
    const c = await preTls(stack.port('smtp'), from);
    const { t, tr } = await upgrade(c);
    t.write('EHLO client.example.net\r\n');
    await tr.readUntil(/^250 .*\r\n/m);
    t.write('STARTTLS\r\n');
    expect(await tr.readUntil(/^\d{3} .*\r\n/m)).toBe('503 5.5.1 TLS already active\r\n');
    // The session goes on with Postfix, still inside the one TLS layer.
    t.write('NOOP\r\n');
    expect(await tr.readUntil(/^\d{3} .*\r\n/m)).toMatch(/^250 /);
    t.end('QUIT\r\n');
    expect(await tr.readToEnd()).toMatch(/^221 /);
    // Postfix counts every command it saw; a STARTTLS would show as starttls=.
    expect(await disconnectLine(from)).toBe('ehlo=1 noop=1 quit=1 commands=3');
  });
});

describe('the session inside TLS (raw Node client)', () => {
  it('STARTTLS with a parameter is refused with 501 before TLS', async () => {
    const c = await preTls(stack.port('smtp'), '127.0.0.13');
    c.sock.write('STARTTLS now\r\n');
    expect(await c.r.readUntil(/^\d{3} .*\r\n/m)).toBe('501 5.5.4 Syntax error (no parameters allowed)\r\n');
    c.sock.write('QUIT\r\n');
    expect(await c.r.readToEnd()).toBe('221 2.0.0 Bye\r\n');
  });

  it('EHLO, STARTTLS and NOOP pipelined inside TLS: the replies come in command order, the 503 in its place', async () => {
    const from = '127.0.0.14';
    const c = await preTls(stack.port('smtp'), from);
    const { t, tr } = await upgrade(c);
    t.write('EHLO client.example.net\r\nSTARTTLS\r\nNOOP\r\n');
    const ehlo = await tr.readUntil(/^250 .*\r\n/m);
    expect(ehlo.startsWith(`250-${POSTFIX_NAME}\r\n`)).toBe(true);
    expect(await tr.readUntil(/^\d{3} .*\r\n/m)).toBe('503 5.5.1 TLS already active\r\n');
    expect(await tr.readUntil(/^\d{3} .*\r\n/m)).toMatch(/^250 2\.0\.0 Ok\r\n$/);
    t.end('QUIT\r\n');
    expect(await tr.readToEnd()).toMatch(/^221 [^\r\n]*\r\n$/);
    expect(await disconnectLine(from)).toBe('ehlo=1 noop=1 quit=1 commands=3');
  });

  it('twenty refused commands end the session: Postfix answers what was pipelined before them, gets a FIN, and the client gets 421', async () => {
    const from = '127.0.0.19';
    const c = await preTls(stack.port('smtp'), from);
    const { t, tr } = await upgrade(c);
    t.write('EHLO client.example.net\r\n');
    await tr.readUntil(/^250 .*\r\n/m);
    // One write: a command for Postfix, then 25 that postern refuses; it reads up to the 20th.
    t.write('NOOP\r\n' + 'XCLIENT ADDR=192.0.2.1\r\n'.repeat(5) + 'STARTTLS\r\n'.repeat(20));
    const lines = (await tr.readToEnd()).split('\r\n').filter((l) => l !== '');
    expect(lines[0]).toMatch(/^250 2\.0\.0 Ok$/);
    expect(lines.slice(1, 6)).toEqual(Array(5).fill('550 5.7.0 Command not permitted through postern'));
    expect(lines.slice(6, 21)).toEqual(Array(15).fill('503 5.5.1 TLS already active'));
    expect(lines.slice(21)).toEqual([expect.stringMatching(/^421 4\.7\.0 \S+ Too many errors$/)]);
    // Postfix saw EHLO and NOOP, then the FIN: no XCLIENT, no STARTTLS.
    expect(await disconnectLine(from)).toBe('ehlo=1 noop=1 commands=2');
  });

  /** A message whose text looks like SMTP commands and dot-stuffing: the filter must pass it as it is. */
  const trickyBody = (token: string) => [
    `Subject: ${token}`, 'From: s@example.net', 'To: rcpt@example.org', '',
    'STARTTLS', 'QUIT', 'XCLIENT ADDR=192.0.2.1', '250 STARTTLS', '..a dot-stuffed line', 'end of text',
  ];

  it('DATA: message text with STARTTLS, QUIT and dot-stuffed lines reaches the mailbox unchanged', async () => {
    const token = `data-${randomUUID()}`;
    const c = await preTls(stack.port('smtp'), '127.0.0.15');
    const { t, tr } = await upgrade(c);
    t.write('EHLO client.example.net\r\n');
    await tr.readUntil(/^250 .*\r\n/m);
    t.write('MAIL FROM:<s@example.net>\r\n');
    expect(await tr.readUntil(/^\d{3} .*\r\n/m)).toMatch(/^250 /);
    t.write('RCPT TO:<rcpt@example.org>\r\n');
    expect(await tr.readUntil(/^\d{3} .*\r\n/m)).toMatch(/^250 /);
    t.write('DATA\r\n');
    expect(await tr.readUntil(/^\d{3} .*\r\n/m)).toMatch(/^354 /);
    t.write(`${trickyBody(token).join('\r\n')}\r\n.\r\n`);
    queueId(await tr.readUntil(/^\d{3} .*\r\n/m));
    t.end('QUIT\r\n');
    expect(await tr.readToEnd()).toMatch(/^221 /);
    const msg = await deliveredMessage(token);
    // Postfix removed the dot-stuffing; every other line is as sent.
    expect(msg).toContain(['', 'STARTTLS', 'QUIT', 'XCLIENT ADDR=192.0.2.1', '250 STARTTLS', '.a dot-stuffed line', 'end of text', ''].join('\n'));
  });

  it('BDAT (CHUNKING): a chunk holding command text and a lone "." line reaches the mailbox unchanged', async () => {
    const token = `bdat-${randomUUID()}`;
    const c = await preTls(stack.port('smtp'), '127.0.0.16');
    const { t, tr } = await upgrade(c);
    t.write('EHLO client.example.net\r\n');
    expect(await tr.readUntil(/^250 .*\r\n/m)).toMatch(/^250-CHUNKING\r$|^250 CHUNKING\r$/m);
    t.write('MAIL FROM:<s@example.net>\r\n');
    expect(await tr.readUntil(/^\d{3} .*\r\n/m)).toMatch(/^250 /);
    t.write('RCPT TO:<rcpt@example.org>\r\n');
    expect(await tr.readUntil(/^\d{3} .*\r\n/m)).toMatch(/^250 /);
    // In BDAT nothing is dot-stuffed and "." alone is just a line of the message.
    const first = Buffer.from(`Subject: ${token}\r\nFrom: s@example.net\r\n\r\nSTARTTLS\r\n.\r\nQUIT\r\n`);
    const second = Buffer.from('BDAT 5\r\nRSET\r\nend\r\n');
    t.write(Buffer.concat([Buffer.from(`BDAT ${first.length}\r\n`), first]));
    expect(await tr.readUntil(/^\d{3} .*\r\n/m)).toMatch(/^250 /);
    t.write(Buffer.concat([Buffer.from(`BDAT ${second.length} LAST\r\n`), second]));
    queueId(await tr.readUntil(/^\d{3} .*\r\n/m));
    t.end('QUIT\r\n');
    expect(await tr.readToEnd()).toMatch(/^221 /);
    const msg = await deliveredMessage(token);
    expect(msg).toContain('\nSTARTTLS\n.\nQUIT\nBDAT 5\nRSET\nend\n');
  });
});

describe('half-close right after the STARTTLS handshake', () => {
  // threats.md "Resources": client FIN after sending -> backend gets FIN, the response still flows
  // back. A client may send its last command and its FIN at once, right after the handshake
  // (while postern is still dialling Postfix).
  it('NOOP and FIN at once after the handshake: the reply arrives, then Postfix and postern close', async () => {
    const from = '127.0.0.11';
    const c = await preTls(stack.port('smtp'), from);
    const { t, tr } = await upgrade(c);
    t.end('NOOP\r\n');
    expect(await tr.readToEnd(5000)).toBe('250 2.0.0 Ok\r\n');
    expect(await disconnectLine(from)).toBe('noop=1 commands=1');
    expect(await summaryFor(stack.postern, 'smtp', from, 2000)).toMatchObject({ tlsVersion: 'TLSv1.3', closeReason: 'done' });
  });

  // A FIN with no data before it, arriving while postern dials the backend, must still end the
  // session and its Postfix connection (`openssl s_client` does this when its stdin ends).
  it('FIN at once after the handshake: the session closes and releases its Postfix connection', async () => {
    const from = '127.0.0.12';
    const c = await preTls(stack.port('smtp'), from);
    const { t, tr } = await upgrade(c);
    t.end();
    expect(await tr.readToEnd(5000)).toBe('');
    expect(await summaryFor(stack.postern, 'smtp', from, 5000)).toMatchObject({ tlsVersion: 'TLSv1.3' });
    expect(await disconnectLine(from)).toBe('commands=0/0'); // Postfix's form when no command came
  });
});
