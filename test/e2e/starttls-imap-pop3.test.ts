// IMAP and POP3 STARTTLS through postern in front of a real Dovecot (issue 3, "Proof with real
// software"): openssl s_client, curl and raw Node dialogues as clients; PROXY v2 to Dovecot
// listeners with `haproxy = yes` under `ssl = required`. Dovecot lets a user log in only when the
// v2 header's SSL TLV says the client used TLS, and then logs the login as "secured". Clients
// connect from 127.0.0.2 and up, so Dovecot's rip= is the address postern saw, not its own.
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import type net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeProxyV2 } from '../../src/backend/proxy-protocol.ts';
import { connectLineClient, freePorts, requireProgram, requireRoot, run, startDovecot } from './harness/index.ts';
import type { DovecotHandle } from './harness/index.ts';
import { spawnInteractive } from './harness/interactive.ts';
import {
  HOSTNAME, PROGRAMS, deliverToMaildir, makeStackPki, startStarttlsPostern, summaryFor, type PosternStack, type StackPki,
} from './harness/postern-stack.ts';
import { connectFrom, literal, readStream, startTls, type StreamReader } from './harness/streams.ts';

const CLIENT = '127.0.0.2';

let certs: StackPki;
let dc: DovecotHandle;
let stack: PosternStack;

beforeAll(async () => {
  for (const p of PROGRAMS) requireProgram(p);
  requireRoot();
  certs = await makeStackPki();
  const [imap, pop3] = await freePorts(2);
  dc = await startDovecot({ imapPort: imap!, pop3Port: pop3!, haproxy: true, sslRequired: true });
  stack = await startStarttlsPostern(certs, [
    // IMAP on 143 and POP3 on 110: requireTls defaults to true away from port 25.
    { name: 'imap', protocol: 'imap', backendPort: dc.imapPort, sni: 'strict', fallbackCapabilities: ['X-POSTERN-FALLBACK-ONLY'] },
    { name: 'pop3', protocol: 'pop3', backendPort: dc.pop3Port, sni: 'strict', fallbackCapabilities: ['X-POSTERN-FALLBACK-ONLY'] },
  ]);
}, 60_000);

afterAll(async () => {
  await stack?.postern.stop();
  await dc?.stop();
});

const ca = () => certs.pki.ca.certPem;

function sClient(protocol: 'imap' | 'pop3', from: string, servername = HOSTNAME, extra: string[] = []) {
  return spawnInteractive('openssl', [
    's_client', '-starttls', protocol, '-connect', `127.0.0.1:${stack.port(protocol)}`, '-bind', `${from}:0`,
    '-servername', servername, '-CAfile', certs.pki.caFile, '-verify_return_error', '-crlf', ...extra,
  ]);
}

/** Dovecot's own answer to a client behind a PROXY v2 header without TLS (what postern's probe sees). */
async function dovecotDirect(port: number, greeting: RegExp, command: string, answer: RegExp): Promise<string> {
  const c = await connectLineClient({
    port, localAddress: '127.0.0.1',
    first: encodeProxyV2({ clientAddress: '127.0.0.99', clientPort: 1, localAddress: '127.0.0.1', localPort: 143 }, null),
  });
  await c.readUntil(greeting);
  c.send(command);
  const reply = await c.readUntil(answer);
  c.close();
  return reply;
}

/** A raw client from `from` that has read the greeting (postern's). */
async function connect(protocol: 'imap' | 'pop3', from: string): Promise<{ sock: net.Socket; r: StreamReader; greeting: string }> {
  const sock = await connectFrom(stack.port(protocol), from);
  const r = readStream(sock);
  const greeting = await r.readUntil(protocol === 'imap' ? /^\* OK .*\r\n/m : /^\+OK.*\r\n/m);
  return { sock, r, greeting };
}

async function upgrade(c: { sock: net.Socket; r: StreamReader }, command: string, expected: string) {
  c.sock.write(`${command}\r\n`);
  expect(await c.r.readUntil(/\r\n/)).toBe(expected);
  expect(c.r.detach()).toBe('');
  const t = await startTls(c.sock, { servername: HOSTNAME, ca: ca() });
  return { t, tr: readStream(t) };
}

const loginLine = (service: 'imap' | 'pop3', from: string) =>
  new RegExp(`${service}-login: Info: Login: user=<alice>, method=PLAIN, rip=${literal(from)}, lip=127\\.0\\.0\\.1, mpid=\\d+, secured, session=<[^>]+>`);

/** True when Dovecot logged anything about a connection from `from`. */
async function dovecotSaw(from: string): Promise<boolean> {
  return (await dc.readLog()).includes(`rip=${from},`);
}

it('a missing program fails the suite instead of skipping it', () => {
  expect(() => requireProgram('postern-no-such-program')).toThrow(/required program "postern-no-such-program" not found/);
});

describe('IMAP STARTTLS to Dovecot', () => {
  it('openssl s_client -starttls imap logs in (a OK) and Dovecot logs the login as secured from 127.0.0.2', async () => {
    const s = sClient('imap', CLIENT, HOSTNAME, ['-verify_hostname', HOSTNAME, '-quiet', '-nocommands']);
    try {
      await s.readUntil(/depth=0 CN = mail\.example\.org\nverify return:1\n/);
      s.send('a LOGIN alice secret');
      expect(await s.readUntil(/^a [^\n]*\n/m)).toMatch(/^a OK .*Logged in/m);
      s.send('b LOGOUT');
      expect(await s.readUntil(/^b [^\n]*\n/m)).toMatch(/^\* BYE [^\n]*\n[\s\S]*^b OK /m);
      expect(await s.exited()).toBe(0);
    } finally {
      s.kill();
    }
    await dc.waitForLog(loginLine('imap', CLIENT));
    expect(await summaryFor(stack.postern, 'imap', CLIENT)).toMatchObject({ sni: HOSTNAME, sniClass: 'exact', tlsVersion: 'TLSv1.3', backend: `127.0.0.1:${dc.imapPort}` });
  });

  it("the greeting and CAPABILITY before TLS list Dovecot's own capabilities (probed) with STARTTLS and LOGINDISABLED", async () => {
    const direct = await dovecotDirect(dc.imapPort, /^\* OK .*\r\n/m, 'p CAPABILITY\r\n', /^p OK .*\r\n/m);
    const own = /^\* CAPABILITY (.*)\r\n/m.exec(direct)![1]!.split(' ');
    expect(own).toEqual(expect.arrayContaining(['IMAP4rev1', 'STARTTLS', 'LOGINDISABLED']));
    const c = await connect('imap', '127.0.0.3');
    const inGreeting = /^\* OK \[CAPABILITY ([^\]]*)\] /.exec(c.greeting)![1]!.split(' ');
    c.sock.write('a CAPABILITY\r\n');
    const reply = await c.r.readUntil(/^a .*\r\n/m);
    expect(reply).toMatch(/^a OK /m);
    const listed = /^\* CAPABILITY (.*)\r\n/m.exec(reply)![1]!.split(' ');
    expect([...listed].sort()).toEqual([...inGreeting].sort());
    expect([...listed].sort()).toEqual([...own].sort());
    expect(listed).not.toContain('X-POSTERN-FALLBACK-ONLY');
    expect(listed.filter((a) => /^AUTH=/i.test(a))).toEqual([]);
    c.sock.destroy();
  });

  it('LOGIN before STARTTLS gets NO [PRIVACYREQUIRED] from postern and Dovecot is never dialled', async () => {
    const from = '127.0.0.4';
    const c = await connect('imap', from);
    c.sock.write('a LOGIN alice secret\r\n');
    expect(await c.r.readUntil(/^a .*\r\n/m)).toBe('a NO [PRIVACYREQUIRED] Use STARTTLS first\r\n');
    c.sock.write('b LOGOUT\r\n');
    expect(await c.r.readToEnd()).toMatch(/^\* BYE .*\r\nb OK .*\r\n$/);
    expect(await summaryFor(stack.postern, 'imap', from)).toMatchObject({ backend: null, tlsVersion: null });
    expect(await dovecotSaw(from)).toBe(false);
  });

  it("after TLS CAPABILITY is Dovecot's secured list (AUTH=PLAIN) without STARTTLS or LOGINDISABLED", async () => {
    const c = await connect('imap', '127.0.0.5');
    const { t, tr } = await upgrade(c, 'a STARTTLS', 'a OK Begin TLS negotiation now\r\n');
    t.write('b CAPABILITY\r\n');
    const reply = await tr.readUntil(/^b .*\r\n/m);
    expect(reply).toMatch(/^b OK /m);
    const caps = /^\* CAPABILITY (.*)\r\n/m.exec(reply)![1]!.split(' ');
    expect(caps).toContain('AUTH=PLAIN'); // Dovecot's view of a session it counts as secured
    expect(caps).not.toContain('STARTTLS'); // Dovecot lists it even then; postern strips it
    expect(caps).not.toContain('LOGINDISABLED');
    t.end('c LOGOUT\r\n');
    await tr.readToEnd();
  });

  it('a second STARTTLS inside TLS gets BAD from postern; Dovecot never sees it and LOGIN still works', async () => {
    const from = '127.0.0.6';
    const c = await connect('imap', from);
    const { t, tr } = await upgrade(c, 'a STARTTLS', 'a OK Begin TLS negotiation now\r\n');
    t.write('b STARTTLS\r\n');
    expect(await tr.readUntil(/^b .*\r\n/m)).toBe('b BAD TLS already active\r\n');
    // Had Dovecot seen it, it would have answered OK and waited for a second TLS handshake.
    t.write('c LOGIN alice secret\r\n');
    expect(await tr.readUntil(/^c .*\r\n/m)).toMatch(/^c OK .*Logged in/);
    t.end('d LOGOUT\r\n');
    expect(await tr.readToEnd()).toMatch(/^\* BYE .*\r\nd OK .*\r\n$/);
    await dc.waitForLog(loginLine('imap', from));
  });

  it('curl --ssl-reqd lists the IMAP mailboxes with certificate verification; Dovecot logs it secured', async () => {
    const port = stack.port('imap');
    const r = await run('curl', [
      '--silent', '--show-error', '--ssl-reqd', '--cacert', certs.pki.caFile, '--interface', CLIENT,
      '--resolve', `${HOSTNAME}:${port}:127.0.0.1`, '-u', 'alice:secret', `imap://${HOSTNAME}:${port}/`,
    ]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^\* LIST \([^)]*\) "[./]" INBOX\r?$/m);
    await dc.waitForLog(loginLine('imap', CLIENT));
  });

  it('curl --ssl-reqd appends a message (a literal through postern) and fetches it back', async () => {
    const port = stack.port('imap');
    const token = `imap-${randomUUID()}`;
    const box = `box-${token.slice(5, 13)}`;
    const url = `imap://${HOSTNAME}:${port}`;
    const curl = (args: string[]) => run('curl', [
      '--silent', '--show-error', '--ssl-reqd', '--cacert', certs.pki.caFile, '--interface', CLIENT,
      '--resolve', `${HOSTNAME}:${port}:127.0.0.1`, '-u', 'alice:secret', ...args,
    ]);
    const created = await curl([`${url}/`, '-X', `CREATE ${box}`]);
    expect(created.code, created.stderr).toBe(0);
    const file = path.join(certs.pki.dir, `${token}.eml`);
    const message = `From: s@example.net\r\nTo: alice@example.org\r\nSubject: ${token}\r\n\r\nappended by curl through postern\r\n`;
    writeFileSync(file, message);
    const appended = await curl(['-T', file, `${url}/${box}`]);
    expect(appended.code, appended.stderr).toBe(0);
    const fetched = await curl([`${url}/${box};UID=1`]);
    expect(fetched.code, fetched.stderr).toBe(0);
    expect(fetched.stdout).toBe(message);
  });

  it('a message holding IMAP command and capability text round-trips byte for byte through APPEND and FETCH literals', async () => {
    const c = await connect('imap', '127.0.0.11');
    const { t, tr } = await upgrade(c, 'a STARTTLS', 'a OK Begin TLS negotiation now\r\n');
    t.write('b LOGIN alice secret\r\n');
    expect(await tr.readUntil(/^b .*\r\n/m)).toMatch(/^b OK /m);
    const token = `literal-${randomUUID()}`;
    // Text postern would rewrite or answer if it took it for protocol lines: STARTTLS commands,
    // a CAPABILITY response listing STARTTLS, a tagged STARTTLS, a literal marker at a line end.
    const message = Buffer.from([
      `Subject: ${token}`, '', 'x STARTTLS', '* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED',
      '* OK [CAPABILITY IMAP4rev1 STARTTLS] hello', 'y LOGOUT', 'a line ending like a literal {5}', 'end', '',
    ].join('\r\n'));
    // A synchronizing literal: the client sends the octets only after Dovecot's "+".
    t.write(`c APPEND INBOX {${message.length}}\r\n`);
    expect(await tr.readUntil(/\r\n/)).toMatch(/^\+ /);
    t.write(Buffer.concat([message, Buffer.from('\r\n')]));
    const appended = await tr.readUntil(/^c .*\r\n/m);
    const uid = /^c OK \[APPENDUID \d+ (\d+)\]/m.exec(appended)?.[1];
    expect(uid, appended).toBeDefined();
    t.write('s SELECT INBOX\r\n');
    expect(await tr.readUntil(/^s .*\r\n/m)).toMatch(/^s OK /m);
    t.write(`d UID FETCH ${uid} BODY.PEEK[]\r\n`);
    const fetched = await tr.readUntil(/^d .*\r\n/m);
    expect(fetched).toMatch(/^d OK /m);
    const head = /^\* \d+ FETCH \(UID \d+ BODY\[\] \{(\d+)\}\r\n/m.exec(fetched);
    expect(head, fetched).not.toBeNull();
    expect(Number(head![1])).toBe(message.length);
    const start = head!.index + head![0].length;
    expect(fetched.slice(start, start + message.length)).toBe(message.toString('latin1'));
    t.end('e LOGOUT\r\n');
    await tr.readToEnd();
  });

  it('the strict listener refuses an unknown SNI with alert 112 (openssl s_client) and never dials Dovecot', async () => {
    const from = '127.0.0.7';
    const s = sClient('imap', from, 'unknown.example.net');
    const code = await s.exited();
    const out = s.transcript();
    expect(code, out).not.toBe(0);
    expect(out).toMatch(/alert unrecognized name[^\n]*SSL alert number 112|alert number 112/);
    expect(await summaryFor(stack.postern, 'imap', from)).toMatchObject({ sni: 'unknown.example.net', sniClass: 'unknown', decision: 'refused', backend: null });
    expect(await dovecotSaw(from)).toBe(false);
  });
});

describe('IMAP STARTTLS certificate choice without SNI', () => {
  it('the strict listener serves its hostname certificate to a client that sends no SNI', async () => {
    const from = '127.0.0.12';
    const c = await connect('imap', from);
    c.sock.write('a STARTTLS\r\n');
    expect(await c.r.readUntil(/\r\n/)).toBe('a OK Begin TLS negotiation now\r\n');
    c.r.detach();
    // No servername: Node sends no server_name extension; the chain is still verified.
    const t = await startTls(c.sock, { ca: ca(), anyName: true });
    expect(t.getPeerCertificate().subjectaltname).toBe(`DNS:${HOSTNAME}`);
    t.end('b LOGOUT\r\n');
    await readStream(t).readToEnd();
    expect(await summaryFor(stack.postern, 'imap', from)).toMatchObject({ sni: null, sniClass: 'none', decision: 'served', servedName: HOSTNAME });
  });
});

describe('POP3 STARTTLS (STLS) to Dovecot', () => {
  it('openssl s_client -starttls pop3 logs in with USER/PASS (+OK) and Dovecot logs it as secured from 127.0.0.2', async () => {
    const s = sClient('pop3', CLIENT, HOSTNAME, ['-verify_hostname', HOSTNAME, '-quiet', '-nocommands']);
    try {
      await s.readUntil(/depth=0 CN = mail\.example\.org\nverify return:1\n/);
      // s_client 3.0 prints its buffer of the pre-TLS dialogue (greeting text, then NUL bytes up
      // to the length of the STLS reply) before the session's output: so no ^ anchors here, and
      // each pattern names the one answer it waits for.
      s.send('USER alice');
      expect(await s.readUntil(/[+-](OK|ERR)\r\n|-ERR [^\n]*\n/)).toMatch(/\+OK\r\n$/);
      s.send('PASS secret');
      expect(await s.readUntil(/[+-](OK|ERR) [^\n]*\n/)).toMatch(/\+OK Logged in\.\r\n$/);
      s.send('QUIT');
      expect(await s.readUntil(/[+-](OK|ERR) [^\n]*\n/)).toMatch(/\+OK Logging out\.?\r\n$/);
      expect(await s.exited()).toBe(0);
    } finally {
      s.kill();
    }
    await dc.waitForLog(loginLine('pop3', CLIENT));
    expect(await summaryFor(stack.postern, 'pop3', CLIENT)).toMatchObject({ sni: HOSTNAME, tlsVersion: 'TLSv1.3', backend: `127.0.0.1:${dc.pop3Port}` });
  });

  it("CAPA before STLS lists Dovecot's own capabilities (probed) with STLS", async () => {
    const direct = await dovecotDirect(dc.pop3Port, /^\+OK.*\r\n/m, 'CAPA\r\n', /^\.\r\n/m);
    const own = direct.split('\r\n').slice(1, -2);
    expect(own).toContain('STLS');
    const c = await connect('pop3', '127.0.0.8');
    c.sock.write('CAPA\r\n');
    const reply = await c.r.readUntil(/^\.\r\n/m);
    expect(reply).toMatch(/^\+OK/);
    const listed = reply.split('\r\n').slice(1, -2);
    expect(listed).not.toContain('X-POSTERN-FALLBACK-ONLY');
    // requireTls: postern hides USER and SASL before STLS (RFC 2595 section 4).
    expect([...listed].sort()).toEqual(own.filter((l) => !/^(USER|SASL)\b/.test(l)).sort());
    c.sock.destroy();
  });

  it('USER before STLS gets -ERR [AUTH] from postern and Dovecot is never dialled', async () => {
    const from = '127.0.0.9';
    const c = await connect('pop3', from);
    c.sock.write('USER alice\r\n');
    expect(await c.r.readUntil(/\r\n/)).toBe('-ERR [AUTH] Use STLS first\r\n');
    c.sock.write('QUIT\r\n');
    expect(await c.r.readToEnd()).toBe('+OK Bye\r\n');
    expect(await summaryFor(stack.postern, 'pop3', from)).toMatchObject({ backend: null, tlsVersion: null });
    expect(await dovecotSaw(from)).toBe(false);
  });

  it('a second STLS inside TLS gets -ERR from postern; Dovecot never sees it and USER/PASS still log in', async () => {
    const from = '127.0.0.10';
    const c = await connect('pop3', from);
    const { t, tr } = await upgrade(c, 'STLS', '+OK Begin TLS negotiation\r\n');
    t.write('STLS\r\n');
    expect(await tr.readUntil(/\r\n/)).toBe('-ERR TLS already active\r\n');
    t.write('CAPA\r\n');
    const capa = await tr.readUntil(/^\.\r\n/m);
    expect(capa).toMatch(/^\+OK/);
    expect(capa).not.toMatch(/^STLS\r$/m);
    expect(capa).toMatch(/^USER\r$/m); // Dovecot's list for a secured session
    t.write('USER alice\r\n');
    expect(await tr.readUntil(/\r\n/)).toMatch(/^\+OK/);
    t.write('PASS secret\r\n');
    expect(await tr.readUntil(/\r\n/)).toMatch(/^\+OK Logged in/);
    t.end('QUIT\r\n');
    expect(await tr.readToEnd()).toMatch(/^\+OK/);
    await dc.waitForLog(loginLine('pop3', from));
  });

  it('curl --ssl-reqd lists and retrieves a message over POP3 (body lines that look like CAPA and its end intact)', async () => {
    const token = `pop3-${randomUUID()}`;
    // Lines postern would strip or answer if it took them for protocol lines (STLS in a CAPA list,
    // a "." line that would end a multi-line response) must come back as they are.
    const message = `From: s@example.net\r\nTo: alice@example.org\r\nSubject: ${token}\r\n\r\n.a line that starts with a dot\r\nSTLS\r\n+OK Capability list follows\r\nSTLS\r\n.\r\nretrieved through postern\r\n`;
    await deliverToMaildir(dc.dir, 'alice', `${Date.now()}.${token}.postern`, message);
    const port = stack.port('pop3');
    const curl = (url: string) => run('curl', [
      '--silent', '--show-error', '--ssl-reqd', '--cacert', certs.pki.caFile, '--interface', CLIENT,
      '--resolve', `${HOSTNAME}:${port}:127.0.0.1`, '-u', 'alice:secret', url,
    ]);
    const list = await curl(`pop3://${HOSTNAME}:${port}/`);
    expect(list.code, list.stderr).toBe(0);
    const numbers = [...list.stdout.matchAll(/^(\d+) \d+\r?$/gm)].map((m) => m[1]!);
    expect(numbers.length).toBeGreaterThan(0);
    let found = '';
    for (const n of numbers) {
      const retr = await curl(`pop3://${HOSTNAME}:${port}/${n}`);
      expect(retr.code, retr.stderr).toBe(0);
      if (retr.stdout.includes(token)) found = retr.stdout;
    }
    expect(found).toBe(message);
    await dc.waitForLog(loginLine('pop3', CLIENT));
  });
});
