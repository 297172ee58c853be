// threats.md "STARTTLS", item by item, against the compiled daemon in a child process: SMTP
// (port-25 style MX and submission), IMAP and POP3 STARTTLS listeners in front of recording
// backends that speak just enough of each protocol. Every case checks the exact replies, what
// reached the backend (and that nothing did), the close reason in the summary line and its
// counter in /metrics; afterwards a good client is served and the descriptors are back.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { readToEnd } from '../helpers/clients.ts';
import { buildClientHello } from '../helpers/hello-builder.ts';
import { freePort } from '../helpers/ports.ts';
import {
  buildOnce, spawnDaemon, stopAll, goodClient, connectPlain, startTls, readStream, runCli, sessionsOf, sleep,
  GREETING, STARTTLS_CMD, type SpawnedPostern, type MailProtocol,
} from './harness.ts';

let pki: TestPki;
let mail: CertFiles;
let d: SpawnedPostern;

/** Listener per protocol: `mx` is SMTP with plaintext allowed (port 25), `sub` requires TLS. */
const LISTENER: Record<MailProtocol, string> = { smtp: 'mx', imap: 'imap', pop3: 'pop3' };

beforeAll(async () => {
  buildOnce();
  pki = await makePki();
  mail = await pki.issue('mail', { names: ['mail.example.org'] });
  const timeouts = { handshake: '3s' };
  d = await spawnDaemon({
    dir: pki.dir,
    certs: [{ cert: mail.cert, key: mail.key }],
    listeners: [
      { name: 'mx', protocol: 'smtp', tls: 'starttls', role: 'mx', timeouts },
      { name: 'sub', protocol: 'smtp', tls: 'starttls', role: 'submission', timeouts },
      { name: 'imap', protocol: 'imap', tls: 'starttls', timeouts },
      { name: 'pop3', protocol: 'pop3', tls: 'starttls', timeouts },
    ],
  });
  // Warm up every listener once, so lazily opened descriptors are in the baseline.
  for (const p of ['smtp', 'imap', 'pop3'] as const) await goodClient(d, LISTENER[p], pki, { starttls: p });
  await goodClient(d, 'sub', pki, { starttls: 'smtp' });
}, 120_000);

afterAll(stopAll);

const counter = (reason: string, listener: string) => d.metric('postern_connections_total', { listener, reason });

/** The end of every case: postern still serves this listener, and no descriptor was left behind. */
async function stillServes(listener: string, proto: MailProtocol, baseline: number) {
  await goodClient(d, listener, pki, { starttls: proto });
  expect(await d.fdsBackTo(baseline)).toBeLessThanOrEqual(baseline);
}

/** Connects, reads the greeting (and for SMTP says EHLO); returns the socket and its reader. */
async function open(proto: MailProtocol, listener = LISTENER[proto]) {
  const c = await connectPlain(d.port(listener));
  await c.reader.readUntil(GREETING[proto]);
  if (proto === 'smtp') {
    c.socket.write('EHLO client.example\r\n');
    await c.reader.readUntil(/^250 [^\r\n]*\r\n/m);
  }
  return c;
}

/** Connects, says STARTTLS and completes the handshake: the plain connection, the TLS socket and its reader. */
async function secured(proto: MailProtocol) {
  const c = await open(proto);
  c.socket.write(STARTTLS_CMD[proto].command);
  await c.reader.readUntil(STARTTLS_CMD[proto].reply);
  c.reader.detach();
  const secure = await startTls(c.socket, { servername: 'mail.example.org', ca: pki.ca.certPem });
  return { c, secure, r: readStream(secure) };
}

const INJECT: Record<MailProtocol, { command: string; injected: string; marker: string }> = {
  smtp: { command: 'STARTTLS\r\n', injected: 'EHLO injected\r\n', marker: 'injected' },
  imap: { command: 'a STARTTLS\r\n', injected: 'b LOGIN injected secret\r\n', marker: 'injected' },
  pop3: { command: 'STLS\r\n', injected: 'USER injected\r\n', marker: 'injected' },
};

/** After TLS: one request that the backend answers (proof the session works), per protocol. */
async function roundTrip(proto: MailProtocol, secure: import('node:tls').TLSSocket, r: ReturnType<typeof readStream>) {
  if (proto === 'smtp') {
    secure.write('EHLO client.example\r\n');
    return r.readUntil(/^250 [^\r\n]*\r\n/m);
  }
  if (proto === 'imap') {
    secure.write('c NOOP after\r\n');
    return r.readUntil(/c OK after\r\n/);
  }
  secure.write('NOOP after\r\n');
  return r.readUntil(/\+OK after\r\n/);
}

describe('STARTTLS command injection (CVE-2011-0411)', () => {
  for (const proto of ['smtp', 'imap', 'pop3'] as const) {
    it(`${proto}: bytes pipelined after STARTTLS in the same write are discarded, never answered, never forwarded`, async () => {
      const listener = LISTENER[proto];
      const base = await d.settledFds();
      const injections = await d.metric('postern_starttls_injections_total', { listener });
      const c = await open(proto);
      const { command, injected, marker } = INJECT[proto];
      c.socket.write(command + injected);
      const reply = await c.reader.readUntil(STARTTLS_CMD[proto].reply);
      expect(reply).toMatch(new RegExp(`^${STARTTLS_CMD[proto].reply.source}$`));
      expect(c.reader.detach()).toBe('');
      const secure = await startTls(c.socket, { servername: 'mail.example.org', ca: pki.ca.certPem });
      const r = readStream(secure);
      // The injected command is not answered inside TLS either.
      await sleep(300);
      expect(r.unread()).toBe('');
      const answer = await roundTrip(proto, secure, r);
      expect(answer).not.toContain(marker);
      secure.end();
      await r.readToEnd(5000).catch(() => '');
      const s = await d.summaryFor(c.localPort);
      expect(s).toMatchObject({ listener, closeReason: 'done', sniClass: 'exact' });
      const warn = await d.waitMsg('discarded bytes sent after STARTTLS (CVE-2011-0411)', { listener, id: s.id });
      expect(warn).toMatchObject({ level: 'warn', bytes: injected.length });
      expect(await d.metric('postern_starttls_injections_total', { listener })).toBe(injections + 1);
      const mine = sessionsOf(d.backend(listener), c.localPort);
      expect(mine).toHaveLength(1);
      expect(mine[0]!.data.toString('latin1')).not.toContain(marker);
      await stillServes(listener, proto, base);
    });

    it(`${proto}: bytes arriving 1 ms after STARTTLS, before the handshake, are never answered nor forwarded`, async () => {
      const listener = LISTENER[proto];
      const base = await d.settledFds();
      const injections = await d.metric('postern_starttls_injections_total', { listener });
      const c = await open(proto);
      const { command, injected } = INJECT[proto];
      c.socket.write(command);
      await sleep(1);
      c.socket.write(injected);
      const rest = await c.reader.readToEnd(8000);
      // The STARTTLS reply, and nothing after it: the injected command is never answered.
      expect(rest).toMatch(new RegExp(`^${STARTTLS_CMD[proto].reply.source}$`));
      const s = await d.summaryFor(c.localPort, 8000);
      // Normally the late bytes are read where the ClientHello belongs: starttls_injection at
      // once. On a loaded machine both writes can be read together; then they are discarded as
      // pipelined bytes and the session ends at the handshake deadline. Never anything else.
      expect(['starttls_injection', 'handshake_timeout']).toContain(s.closeReason);
      expect(s).toMatchObject({ listener, tlsVersion: null, backend: null });
      expect(await d.metric('postern_starttls_injections_total', { listener })).toBe(injections + 1);
      expect(sessionsOf(d.backend(listener), c.localPort)).toHaveLength(0);
      await stillServes(listener, proto, base);
    });

    it(`${proto}: bytes sent after the STARTTLS reply instead of a ClientHello close the session as starttls_injection`, async () => {
      const listener = LISTENER[proto];
      const base = await d.settledFds();
      const injections = await d.metric('postern_starttls_injections_total', { listener });
      const before = await counter('starttls_injection', listener);
      const c = await open(proto);
      const { command, injected } = INJECT[proto];
      c.socket.write(command);
      await c.reader.readUntil(STARTTLS_CMD[proto].reply);
      c.socket.write(injected);
      expect(await c.reader.readToEnd(5000)).toBe('');
      const s = await d.summaryFor(c.localPort);
      expect(s).toMatchObject({ listener, closeReason: 'starttls_injection', tlsVersion: null, backend: null });
      expect(await counter('starttls_injection', listener)).toBe(before + 1);
      expect(await d.metric('postern_starttls_injections_total', { listener })).toBe(injections + 1);
      const warn = await d.waitMsg('discarded bytes sent after STARTTLS (CVE-2011-0411)', { listener, id: s.id });
      expect(warn).toMatchObject({ level: 'warn', bytes: injected.length });
      expect(sessionsOf(d.backend(listener), c.localPort)).toHaveLength(0);
      await stillServes(listener, proto, base);
    });
  }
});

describe('after TLS everything learned before it is forgotten', () => {
  it('smtp: the pre-TLS EHLO is not replayed (MAIL without a new EHLO gets the backend\'s 503); STARTTLS not advertised; a second STARTTLS gets 503 from postern', async () => {
    const base = await d.settledFds();
    const c = await open('smtp');
    c.socket.write('STARTTLS\r\n');
    await c.reader.readUntil(STARTTLS_CMD.smtp.reply);
    c.reader.detach();
    const secure = await startTls(c.socket, { servername: 'mail.example.org', ca: pki.ca.certPem });
    const r = readStream(secure);
    secure.write('MAIL FROM:<a@example.net>\r\n');
    expect(await r.readUntil(/\r\n/)).toBe('503 5.5.1 EHLO first\r\n');
    secure.write('EHLO again.example\r\n');
    const ehlo = await r.readUntil(/^250 [^\r\n]*\r\n/m);
    expect(ehlo).toBe('250-backend.test\r\n250-PIPELINING\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n');
    secure.write('STARTTLS\r\n');
    expect(await r.readUntil(/\r\n/)).toBe('503 5.5.1 TLS already active\r\n');
    secure.write('QUIT\r\n');
    expect(await r.readUntil(/\r\n/)).toBe('221 2.0.0 bye\r\n');
    await r.readToEnd(5000).catch(() => '');
    expect(await d.summaryFor(c.localPort)).toMatchObject({ closeReason: 'done', tlsVersion: expect.stringMatching(/^TLSv1\.[23]$/) });
    const mine = sessionsOf(d.backend('mx'), c.localPort);
    expect(mine).toHaveLength(1);
    // Exactly what the client sent after TLS, minus the refused STARTTLS: no replayed EHLO.
    expect(mine[0]!.data.toString('latin1')).toBe('MAIL FROM:<a@example.net>\r\nEHLO again.example\r\nQUIT\r\n');
    expect(mine[0]!.header).toMatchObject({ version: 2, authority: 'mail.example.org', ssl: { client: 1 } });
    await stillServes('mx', 'smtp', base);
  });

  it('imap: CAPABILITY after TLS has no STARTTLS; a second STARTTLS gets BAD from postern', async () => {
    const base = await d.settledFds();
    const c = await open('imap');
    c.socket.write('a STARTTLS\r\n');
    await c.reader.readUntil(STARTTLS_CMD.imap.reply);
    c.reader.detach();
    const secure = await startTls(c.socket, { servername: 'mail.example.org', ca: pki.ca.certPem });
    const r = readStream(secure);
    secure.write('b CAPABILITY\r\n');
    expect(await r.readUntil(/b OK [^\r\n]*\r\n/)).toBe('* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nb OK done\r\n');
    secure.write('c STARTTLS\r\n');
    expect(await r.readUntil(/\r\n/)).toBe('c BAD TLS already active\r\n');
    secure.write('d LOGOUT\r\n');
    await r.readUntil(/d OK [^\r\n]*\r\n/);
    await r.readToEnd(5000).catch(() => '');
    expect(await d.summaryFor(c.localPort)).toMatchObject({ closeReason: 'done' });
    expect(sessionsOf(d.backend('imap'), c.localPort)[0]!.data.toString('latin1')).toBe('b CAPABILITY\r\nd LOGOUT\r\n');
    await stillServes('imap', 'imap', base);
  });

  it('pop3: CAPA after TLS has no STLS; a second STLS gets -ERR from postern', async () => {
    const base = await d.settledFds();
    const c = await open('pop3');
    c.socket.write('STLS\r\n');
    await c.reader.readUntil(STARTTLS_CMD.pop3.reply);
    c.reader.detach();
    const secure = await startTls(c.socket, { servername: 'mail.example.org', ca: pki.ca.certPem });
    const r = readStream(secure);
    secure.write('CAPA\r\n');
    expect(await r.readUntil(/^\.\r\n/m)).toBe('+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n');
    secure.write('STLS\r\n');
    expect(await r.readUntil(/\r\n/)).toBe('-ERR TLS already active\r\n');
    secure.write('QUIT\r\n');
    await r.readUntil(/\+OK bye\r\n/);
    await r.readToEnd(5000).catch(() => '');
    expect(await d.summaryFor(c.localPort)).toMatchObject({ closeReason: 'done' });
    expect(sessionsOf(d.backend('pop3'), c.localPort)[0]!.data.toString('latin1')).toBe('CAPA\r\nQUIT\r\n');
    await stillServes('pop3', 'pop3', base);
  });
});

/**
 * Commands postern refuses itself after TLS: what the client sends, the reply it hears, the reason
 * code. A reason comes twice in each list: the second is counted but not logged again.
 */
const REFUSALS: Record<MailProtocol, Array<{ send: string; reply: string; reason: string }>> = {
  smtp: [
    { send: 'STARTTLS\r\n', reply: '503 5.5.1 TLS already active\r\n', reason: 'starttls_refused' },
    { send: 'XCLIENT ADDR=192.0.2.1\r\n', reply: '550 5.7.0 Command not permitted through postern\r\n', reason: 'command_not_permitted' },
    { send: `NOOP ${'x'.repeat(5000)}\r\n`, reply: '500 5.5.6 Line too long\r\n', reason: 'line_too_long' },
    { send: 'XFORWARD ADDR=192.0.2.1\r\n', reply: '550 5.7.0 Command not permitted through postern\r\n', reason: 'command_not_permitted' },
    { send: 'STARTTLS\r\n', reply: '503 5.5.1 TLS already active\r\n', reason: 'starttls_refused' },
  ],
  imap: [
    { send: 'c STARTTLS\r\n', reply: 'c BAD TLS already active\r\n', reason: 'starttls_refused' },
    // A tag longer than any a backend would read: refused whole (RFC 9051 section 7.1, TOOBIG).
    { send: `${'t'.repeat(70_000)} NOOP\r\n`, reply: '* BAD [TOOBIG] Command line too long\r\n', reason: 'line_too_long' },
    { send: 'e STARTTLS\r\n', reply: 'e BAD TLS already active\r\n', reason: 'starttls_refused' },
  ],
  pop3: [
    { send: 'STLS\r\n', reply: '-ERR TLS already active\r\n', reason: 'starttls_refused' },
    { send: `${'A'.repeat(5000)}\r\n`, reply: '-ERR Line too long\r\n', reason: 'line_too_long' },
    { send: 'STLS\r\n', reply: '-ERR TLS already active\r\n', reason: 'starttls_refused' },
  ],
};

describe('commands postern refuses itself after TLS: a reply, a reason code, a counter, one log line per reason', () => {
  for (const proto of ['smtp', 'imap', 'pop3'] as const) {
    it(`${proto}: ${[...new Set(REFUSALS[proto].map((x) => x.reason))].join(', ')}; the session goes on and the backend sees none of them`, async () => {
      const listener = LISTENER[proto];
      const base = await d.settledFds();
      const cases = REFUSALS[proto];
      const reasons = [...new Set(cases.map((x) => x.reason))];
      const before = new Map<string, number>();
      for (const reason of reasons) before.set(reason, await d.metric('postern_commands_refused_total', { listener, reason }));
      const { c, secure, r } = await secured(proto);
      for (const x of cases) {
        secure.write(x.send);
        expect(await r.readUntil(/\r\n/)).toBe(x.reply);
      }
      // Still a working session: the backend answers the next command.
      await roundTrip(proto, secure, r);
      secure.end();
      await r.readToEnd(5000).catch(() => '');
      const s = await d.summaryFor(c.localPort);
      expect(s).toMatchObject({ listener, closeReason: 'done', refused: cases.length });
      for (const reason of reasons) {
        const n = cases.filter((x) => x.reason === reason).length;
        expect(await d.metric('postern_commands_refused_total', { listener, reason }), reason).toBe(before.get(reason)! + n);
        expect(await d.waitMsg('command refused', { listener, id: s.id, reason })).toMatchObject({ level: 'warn', client: '127.0.0.1' });
      }
      // One line per reason, however often the client repeated it.
      await sleep(300);
      const lines = d.logs.filter((l) => l.msg === 'command refused' && l.id === s.id);
      expect(lines.map((l) => l.reason).sort()).toEqual([...reasons].sort());
      const seen = sessionsOf(d.backend(listener), c.localPort)[0]!.data.toString('latin1');
      expect(seen).not.toMatch(/STARTTLS|STLS|XCLIENT|XFORWARD|xxxxxxxx|tttttttt|AAAAAAAA/);
      await stillServes(listener, proto, base);
    });
  }
});

/** Per protocol: a command the backend answers, sent first in the same write, then the refused one. */
const TOO_MANY: Record<MailProtocol, { first: string; firstReply: RegExp; refused: string; reply: string; last: RegExp }> = {
  smtp: { first: 'NOOP first\r\n', firstReply: /^250 /, refused: 'STARTTLS\r\n', reply: '503 5.5.1 TLS already active', last: /^421 4\.7\.0 \S+ Too many errors$/ },
  imap: { first: 'b NOOP first\r\n', firstReply: /^b OK /, refused: 'c STARTTLS\r\n', reply: 'c BAD TLS already active', last: /^\* BYE Too many errors$/ },
  pop3: { first: 'NOOP first\r\n', firstReply: /^\+OK /, refused: 'STLS\r\n', reply: '-ERR TLS already active', last: /^-ERR Too many errors$/ },
};

describe('too many refusals after TLS end the session (20, like Postfix\'s smtpd_hard_error_limit)', () => {
  for (const proto of ['smtp', 'imap', 'pop3'] as const) {
    it(`${proto}: a pipelined command's reply, 20 refusals, then "too many errors" and a close (too_many_errors); nothing refused reaches the backend`, async () => {
      const listener = LISTENER[proto];
      const base = await d.settledFds();
      const closedBefore = await counter('too_many_errors', listener);
      const t = TOO_MANY[proto];
      const { c, secure, r } = await secured(proto);
      if (proto === 'smtp') await roundTrip(proto, secure, r);
      // One write: a command for the backend, then 30 refusals; postern stops reading at the 20th.
      secure.write(t.first + t.refused.repeat(30));
      const lines = (await r.readToEnd(10_000)).split('\r\n').filter((l) => l !== '');
      // The backend's reply (SMTP and POP3 keep command order; IMAP tags may come in any order).
      expect(lines.filter((l) => t.firstReply.test(l)), lines.join(' | ')).toHaveLength(1);
      expect(lines.filter((l) => l === t.reply)).toHaveLength(20);
      expect(lines.at(-1)).toMatch(t.last);
      expect(lines).toHaveLength(22);
      if (proto !== 'imap') expect(lines[0]).toMatch(t.firstReply);
      const s = await d.summaryFor(c.localPort);
      expect(s).toMatchObject({ listener, closeReason: 'too_many_errors', side: 'client', refused: 20 });
      expect(await counter('too_many_errors', listener)).toBe(closedBefore + 1);
      const seen = sessionsOf(d.backend(listener), c.localPort)[0]!.data.toString('latin1');
      expect(seen).toContain(t.first);
      expect(seen).not.toMatch(/STARTTLS|STLS/);
      await stillServes(listener, proto, base);
    });
  }
});

describe('STARTTLS with an argument; STARTTLS without a certificate', () => {
  const cases: Array<{ proto: MailProtocol; bad: string; reply: string }> = [
    { proto: 'smtp', bad: 'STARTTLS x\r\n', reply: '501 5.5.4 Syntax error (no parameters allowed)\r\n' },
    { proto: 'imap', bad: 'a STARTTLS x\r\n', reply: 'a BAD STARTTLS takes no arguments\r\n' },
    { proto: 'pop3', bad: 'STLS x\r\n', reply: '-ERR STLS takes no arguments\r\n' },
  ];
  for (const { proto, bad, reply } of cases) {
    it(`${proto}: ${JSON.stringify(bad.trim())} -> ${JSON.stringify(reply.trim())}, no TLS, the dialogue goes on`, async () => {
      const base = await d.settledFds();
      const c = await open(proto);
      c.socket.write(bad);
      expect(await c.reader.readUntil(/\r\n/)).toBe(reply);
      // Still in plaintext: the proper command works afterwards.
      c.socket.write(STARTTLS_CMD[proto].command);
      await c.reader.readUntil(STARTTLS_CMD[proto].reply);
      c.reader.detach();
      const secure = await startTls(c.socket, { servername: 'mail.example.org', ca: pki.ca.certPem });
      secure.destroy();
      await d.summaryFor(c.localPort);
      await stillServes(LISTENER[proto], proto, base);
    });
  }

  it('a STARTTLS listener whose hostname no certificate covers is refused at startup (so the 454 path cannot be reached)', async () => {
    const other = await pki.issue('other', { names: ['other.example.net'] });
    const file = join(pki.dir, 'uncovered.yaml');
    const port = await freePort();
    writeFileSync(file, `certificates:
  - cert: ${other.cert}
    key: ${other.key}
listeners:
  - name: mx
    listen: "127.0.0.1:${port}"
    protocol: smtp
    role: mx
    tls: starttls
    hostname: mail.example.org
    backend: { address: "127.0.0.1:9", proxyProtocol: v2 }
`);
    const r = runCli(['run', '-c', file], pki.dir);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('listeners[0].hostname: no loaded certificate covers "mail.example.org" (loaded names: other.example.net)');
    expect(r.stderr).toContain('nothing was started');
  });
});

describe('submission (requireTls) and role: mx (plaintext allowed)', () => {
  it('submission: AUTH is not advertised before TLS; AUTH, MAIL, RCPT, DATA get 530 5.7.0; nothing reaches the backend', async () => {
    const base = await d.settledFds();
    const c = await connectPlain(d.port('sub'));
    expect(await c.reader.readUntil(GREETING.smtp)).toBe('220 mail.example.org ESMTP\r\n');
    c.socket.write('EHLO client.example\r\n');
    const ehlo = await c.reader.readUntil(/^250 [^\r\n]*\r\n/m);
    expect(ehlo).toBe('250-mail.example.org\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 STARTTLS\r\n');
    for (const cmd of ['AUTH PLAIN AGFsaWNlAHNlY3JldA==', 'MAIL FROM:<a@example.net>', 'RCPT TO:<b@example.org>', 'DATA']) {
      c.socket.write(`${cmd}\r\n`);
      expect(await c.reader.readUntil(/\r\n/)).toBe('530 5.7.0 Must issue a STARTTLS command first\r\n');
    }
    c.socket.write('QUIT\r\n');
    expect(await c.reader.readToEnd(5000)).toBe('221 2.0.0 Bye\r\n');
    expect(await d.summaryFor(c.localPort)).toMatchObject({ listener: 'sub', closeReason: 'client_quit', backend: null });
    expect(sessionsOf(d.backend('sub'), c.localPort)).toHaveLength(0);
    await stillServes('sub', 'smtp', base);
  });

  it('submission: after STARTTLS the backend\'s AUTH is announced and AUTH reaches the backend', async () => {
    const c = await open('smtp', 'sub');
    c.socket.write('STARTTLS\r\n');
    await c.reader.readUntil(STARTTLS_CMD.smtp.reply);
    c.reader.detach();
    const secure = await startTls(c.socket, { servername: 'mail.example.org', ca: pki.ca.certPem });
    const r = readStream(secure);
    secure.write('EHLO client.example\r\n');
    expect(await r.readUntil(/^250 [^\r\n]*\r\n/m)).toContain('250-AUTH PLAIN\r\n');
    secure.destroy();
    await d.summaryFor(c.localPort);
  });

  it('imap and pop3 refuse LOGIN / USER before TLS; nothing reaches the backend', async () => {
    const base = await d.settledFds();
    const i = await connectPlain(d.port('imap'));
    const greeting = await i.reader.readUntil(GREETING.imap);
    expect(greeting).toContain('LOGINDISABLED');
    expect(greeting).not.toContain('AUTH=');
    i.socket.write('a LOGIN alice secret\r\n');
    expect(await i.reader.readUntil(/\r\n/)).toBe('a NO [PRIVACYREQUIRED] Use STARTTLS first\r\n');
    i.socket.destroy();
    const p = await connectPlain(d.port('pop3'));
    await p.reader.readUntil(GREETING.pop3);
    p.socket.write('USER alice\r\n');
    expect(await p.reader.readUntil(/\r\n/)).toBe('-ERR [AUTH] Use STLS first\r\n');
    p.socket.destroy();
    await d.summaryFor(i.localPort);
    await d.summaryFor(p.localPort);
    expect(sessionsOf(d.backend('imap'), i.localPort)).toHaveLength(0);
    expect(sessionsOf(d.backend('pop3'), p.localPort)).toHaveLength(0);
    await stillServes('imap', 'imap', base);
  });

  it('port 25: a plaintext delivery is accepted and reaches the backend with the client\'s EHLO and a PROXY header', async () => {
    const base = await d.settledFds();
    const c = await open('smtp', 'mx');
    const dialogue = ['MAIL FROM:<a@example.net>', 'RCPT TO:<b@example.org>', 'DATA'];
    const replies: string[] = [];
    for (const cmd of dialogue) {
      c.socket.write(`${cmd}\r\n`);
      replies.push(await c.reader.readUntil(/\r\n/));
    }
    c.socket.write('Subject: plain\r\n\r\nhello\r\n.\r\n');
    replies.push(await c.reader.readUntil(/\r\n/));
    c.socket.write('QUIT\r\n');
    replies.push(await c.reader.readUntil(/\r\n/));
    expect(replies).toEqual(['250 2.0.0 OK\r\n', '250 2.0.0 OK\r\n', '354 go ahead\r\n', '250 2.0.0 queued\r\n', '221 2.0.0 bye\r\n']);
    await c.reader.readToEnd(5000).catch(() => '');
    expect(await d.summaryFor(c.localPort)).toMatchObject({ listener: 'mx', closeReason: 'done', tlsVersion: null });
    const mine = sessionsOf(d.backend('mx'), c.localPort);
    expect(mine).toHaveLength(1);
    expect(mine[0]!.data.toString('latin1')).toBe('EHLO client.example\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: plain\r\n\r\nhello\r\n.\r\nQUIT\r\n');
    // No SSL TLV: the backend is told the session was not TLS.
    expect(mine[0]!.header).toMatchObject({ version: 2, source: { address: '127.0.0.1', port: c.localPort }, ssl: null, authority: null });
    await stillServes('mx', 'smtp', base);
  });
});

describe('a failed handshake after STARTTLS', () => {
  for (const proto of ['smtp', 'imap', 'pop3'] as const) {
    it(`${proto}: never falls back to plaintext and never reaches the backend`, async () => {
      const listener = LISTENER[proto];
      const base = await d.settledFds();
      const before = await counter('handshake_failed', listener);
      const failed = await d.metric('postern_handshakes_total', { listener, result: 'failed' });
      const c = await open(proto);
      c.socket.write(STARTTLS_CMD[proto].command);
      await c.reader.readUntil(STARTTLS_CMD[proto].reply);
      c.reader.detach();
      // A ClientHello offering only RC4-MD5 over TLS 1.2: no cipher in common.
      const hello = buildClientHello({ sni: 'mail.example.org', alpn: [proto], versions: [0x0303], cipherSuites: [0x0004] });
      const end = readToEnd(c.socket, 8000);
      c.socket.write(hello);
      await sleep(200);
      // A client that ignores the failure and goes on in plaintext: never answered.
      if (c.socket.writable) c.socket.write(proto === 'imap' ? 'b LOGIN alice secret\r\n' : proto === 'pop3' ? 'USER alice\r\n' : 'MAIL FROM:<a@example.net>\r\n');
      const { data } = await end;
      // Only a TLS alert record came back (OpenSSL's handshake_failure), no plaintext reply.
      expect(data.length).toBeGreaterThan(0);
      expect([...data.subarray(0, 5)]).toEqual([0x15, 0x03, 0x03, 0x00, 0x02]);
      expect(data.length).toBe(7);
      expect(data[5]).toBe(2);
      expect(await d.summaryFor(c.localPort)).toMatchObject({ listener, closeReason: 'handshake_failed', tlsVersion: null, backend: null });
      expect(await counter('handshake_failed', listener)).toBe(before + 1);
      expect(await d.metric('postern_handshakes_total', { listener, result: 'failed' })).toBe(failed + 1);
      expect(sessionsOf(d.backend(listener), c.localPort)).toHaveLength(0);
      await stillServes(listener, proto, base);
    });
  }
});

describe('abuse of the pre-TLS dialogue: nothing echoed', () => {
  it('smtp: a command over 512 octets gets 500 5.5.6 and is not echoed; the dialogue goes on', async () => {
    const base = await d.settledFds();
    const c = await open('smtp');
    c.socket.write(`MAIL FROM:<${'XYZZY'.repeat(120)}@example.net>\r\n`);
    expect(await c.reader.readUntil(/\r\n/)).toBe('500 5.5.6 Line too long\r\n');
    c.socket.write('NOOP\r\n');
    expect(await c.reader.readUntil(/\r\n/)).toBe('250 2.0.0 OK\r\n');
    c.socket.write('QUIT\r\n');
    expect(await c.reader.readToEnd(5000)).toBe('221 2.0.0 Bye\r\n');
    expect(c.reader.transcript()).not.toContain('XYZZY');
    expect(await d.summaryFor(c.localPort)).toMatchObject({ closeReason: 'client_quit' });
    expect(sessionsOf(d.backend('mx'), c.localPort)).toHaveLength(0);
    await stillServes('mx', 'smtp', base);
  });

  it('imap: a line over 8192 octets gets "* BAD Line too long" and a close (line_too_long)', async () => {
    const base = await d.settledFds();
    const before = await counter('line_too_long', 'imap');
    const c = await open('imap');
    c.socket.write(`a LOGIN ${'XYZZY'.repeat(2000)} secret\r\n`);
    expect(await c.reader.readToEnd(5000)).toBe('* BAD Line too long\r\n');
    expect(await d.summaryFor(c.localPort)).toMatchObject({ closeReason: 'line_too_long' });
    expect(await counter('line_too_long', 'imap')).toBe(before + 1);
    expect(sessionsOf(d.backend('imap'), c.localPort)).toHaveLength(0);
    await stillServes('imap', 'imap', base);
  });

  it('pop3: a line over 255 octets gets "-ERR Line too long", not echoed', async () => {
    const base = await d.settledFds();
    const c = await open('pop3');
    c.socket.write(`USER ${'XYZZY'.repeat(60)}\r\n`);
    expect(await c.reader.readUntil(/\r\n/)).toBe('-ERR Line too long\r\n');
    c.socket.write('QUIT\r\n');
    expect(await c.reader.readToEnd(5000)).toBe('+OK Bye\r\n');
    expect(c.reader.transcript()).not.toContain('XYZZY');
    await d.summaryFor(c.localPort);
    await stillServes('pop3', 'pop3', base);
  });

  it('binary junk gets a fixed error reply per line, never an echo; ten errors close with 421 (too_many_errors)', async () => {
    const base = await d.settledFds();
    const before = await counter('too_many_errors', 'mx');
    const c = await open('smtp');
    const junk = Buffer.concat([Buffer.from([0x00, 0x01, 0xff, 0xfe, 0x1b]), Buffer.from('XYZZY\r\n')]);
    const replies: string[] = [];
    for (let i = 0; i < 9; i++) {
      c.socket.write(junk);
      replies.push(await c.reader.readUntil(/\r\n/));
    }
    expect(new Set(replies)).toEqual(new Set(['500 5.5.2 Syntax error, binary data\r\n']));
    c.socket.write(junk);
    expect(await c.reader.readToEnd(5000)).toBe('421 4.7.0 mail.example.org Too many errors\r\n');
    expect(c.reader.transcript()).not.toContain('XYZZY');
    expect(await d.summaryFor(c.localPort)).toMatchObject({ closeReason: 'too_many_errors' });
    expect(await counter('too_many_errors', 'mx')).toBe(before + 1);
    expect(sessionsOf(d.backend('mx'), c.localPort)).toHaveLength(0);
    await stillServes('mx', 'smtp', base);
  });

  for (const proto of ['smtp', 'imap', 'pop3'] as const) {
    it(`${proto}: a client that reads the greeting and sends FIN is closed at once (client_gone), not at the STARTTLS deadline`, async () => {
      const listener = LISTENER[proto];
      const base = await d.settledFds();
      const before = await counter('client_gone', listener);
      const c = await connectPlain(d.port(listener));
      await c.reader.readUntil(GREETING[proto]);
      c.socket.write(proto === 'imap' ? 'a NOOP' : 'NOOP'); // a partial line, then FIN
      c.socket.end();
      expect(await c.reader.readToEnd(3000)).toBe('');
      const s = await d.summaryFor(c.localPort, 3000);
      expect(s).toMatchObject({ listener, closeReason: 'client_gone', backend: null });
      expect(s.durationMs as number).toBeLessThan(1000);
      expect(await counter('client_gone', listener)).toBe(before + 1);
      expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
      await stillServes(listener, proto, base);
    });
  }

  for (const proto of ['smtp', 'imap', 'pop3'] as const) {
    it(`${proto}: a ClientHello before STARTTLS is closed at once (tls_before_starttls), after the greeting only`, async () => {
      const listener = LISTENER[proto];
      const base = await d.settledFds();
      const before = await counter('tls_before_starttls', listener);
      const c = await connectPlain(d.port(listener));
      await c.reader.readUntil(GREETING[proto]);
      c.socket.write(buildClientHello({ sni: 'mail.example.org', alpn: [proto] }));
      expect(await c.reader.readToEnd(5000)).toBe('');
      expect(await d.summaryFor(c.localPort)).toMatchObject({ listener, closeReason: 'tls_before_starttls', tlsVersion: null });
      expect(await counter('tls_before_starttls', listener)).toBe(before + 1);
      expect(sessionsOf(d.backend(listener), c.localPort)).toHaveLength(0);
      await stillServes(listener, proto, base);
    });
  }
});
