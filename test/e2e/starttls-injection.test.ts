// STARTTLS command injection (CVE-2011-0411; threats.md "STARTTLS") against postern in front of a
// real Postfix and Dovecot: a command pipelined after STARTTLS / STLS, in the same write or a
// moment later, must never be answered (inside or outside TLS) and must never reach the backend.
// Each test connects from its own 127.0.0.x address, so the backends' log lines for that one
// connection can be told apart: Postfix counts every command it saw in its "disconnect from"
// line, Dovecot says "no auth attempts" for a session in which nobody tried to log in.
import { randomUUID } from 'node:crypto';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePorts, requireProgram, requireRoot, startDovecot, startPostfix } from './harness/index.ts';
import type { DovecotHandle, PostfixHandle } from './harness/index.ts';
import {
  HOSTNAME, PROGRAMS, injectionCount, injectionWarnings, makeStackPki, startStarttlsPostern, summaryFor,
  type PosternStack, type StackPki,
} from './harness/postern-stack.ts';
import { connectFrom, literal, readStream, sleep, startTls, type StreamReader } from './harness/streams.ts';

/** timeouts.handshake of every listener here (accept -> handshake done, pre-TLS dialogue included). */
const HANDSHAKE_MS = 3000;

let certs: StackPki;
let pf: PostfixHandle;
let dc: DovecotHandle;
let stack: PosternStack;

let lastHost = 20;
/** A client address of its own for each test. */
const nextClient = () => `127.0.0.${++lastHost}`;

beforeAll(async () => {
  for (const p of PROGRAMS) requireProgram(p);
  requireRoot();
  certs = await makeStackPki();
  const [smtp, submission, imap, pop3] = await freePorts(4);
  [pf, dc] = await Promise.all([
    startPostfix({ smtpPort: smtp!, submissionPort: submission!, proxyProtocol: 'haproxy' }),
    startDovecot({ imapPort: imap!, pop3Port: pop3!, haproxy: true, sslRequired: true }),
  ]);
  const handshake = `${HANDSHAKE_MS}ms`;
  stack = await startStarttlsPostern(certs, [
    { name: 'smtp', protocol: 'smtp', role: 'mx', backendPort: pf.smtpPort, handshake },
    { name: 'imap', protocol: 'imap', backendPort: dc.imapPort, handshake },
    { name: 'pop3', protocol: 'pop3', backendPort: dc.pop3Port, handshake },
  ]);
}, 60_000);

afterAll(async () => {
  await stack?.postern.stop();
  await Promise.all([pf?.stop(), dc?.stop()]);
});

type Proto = 'smtp' | 'imap' | 'pop3';

const GREETING: Record<Proto, RegExp> = { smtp: /^220 .*\r\n/m, imap: /^\* OK .*\r\n/m, pop3: /^\+OK.*\r\n/m };
const STARTTLS: Record<Proto, { command: string; reply: string }> = {
  smtp: { command: 'STARTTLS', reply: '220 2.0.0 Ready to start TLS\r\n' },
  imap: { command: 'a STARTTLS', reply: 'a OK Begin TLS negotiation now\r\n' },
  pop3: { command: 'STLS', reply: '+OK Begin TLS negotiation\r\n' },
};

/** Connects from `from` and reads postern's greeting (SMTP: and has EHLO answered by postern). */
async function connect(proto: Proto, from: string): Promise<{ sock: net.Socket; r: StreamReader }> {
  const sock = await connectFrom(stack.port(proto), from);
  const r = readStream(sock);
  await r.readUntil(GREETING[proto]);
  if (proto === 'smtp') {
    sock.write('EHLO client.example.net\r\n');
    await r.readUntil(/^250 .*\r\n/m);
  }
  return { sock, r };
}

/**
 * STARTTLS with `injected` in the same write: the STARTTLS reply and nothing else arrives in
 * plaintext, and the handshake that follows succeeds. Returns the TLS session.
 */
async function injectSameWrite(proto: Proto, from: string, injected: string) {
  const c = await connect(proto, from);
  c.sock.write(`${STARTTLS[proto].command}\r\n${injected}`);
  expect(await c.r.readUntil(/\r\n/)).toBe(STARTTLS[proto].reply);
  // Not one more plaintext byte: the injected command was not answered before TLS either.
  expect(c.r.detach()).toBe('');
  const t = await startTls(c.sock, { servername: HOSTNAME, ca: certs.pki.ca.certPem });
  return { t, tr: readStream(t), raw: c.r };
}

/** The warn line and the counter postern keeps for bytes discarded after STARTTLS. */
async function expectInjectionLogged(proto: Proto, from: string, bytes: number, countBefore: number) {
  const warnings = injectionWarnings(stack.postern, from);
  expect(warnings).toHaveLength(1);
  expect(warnings[0]).toMatchObject({ listener: proto, bytes });
  expect(await injectionCount(stack.postern, proto)).toBe(countBefore + 1);
}

/**
 * STARTTLS, then `injected` 1 ms later in a second write, before any ClientHello: the STARTTLS
 * reply is all the client ever gets, postern closes, and the backend is never dialled.
 */
async function injectLater(proto: Proto, injected: string) {
  const from = nextClient();
  const before = await injectionCount(stack.postern, proto);
  const c = await connect(proto, from);
  const started = Date.now();
  c.sock.write(`${STARTTLS[proto].command}\r\n`);
  await sleep(1);
  c.sock.write(injected);
  expect(await c.r.readToEnd(HANDSHAKE_MS + 5000)).toBe(STARTTLS[proto].reply);
  const s = await summaryFor(stack.postern, proto, from);
  expect(s).toMatchObject({ backend: null, tlsVersion: null });
  // Normally the injected bytes arrive on their own, where the ClientHello belongs: closed at once
  // as an injection. Should the two writes reach postern as one read (a loaded machine), the
  // bytes are discarded like a same-write injection and the session ends at the handshake
  // deadline; either way nothing was answered and nothing was forwarded.
  expect(['starttls_injection', 'handshake_timeout']).toContain(s.closeReason);
  if (s.closeReason === 'starttls_injection') expect(Date.now() - started).toBeLessThan(HANDSHAKE_MS);
  const warnings = injectionWarnings(stack.postern, from);
  expect(warnings).toHaveLength(1);
  expect(await injectionCount(stack.postern, proto)).toBe(before + 1);
  return from;
}

it('a missing program fails the suite instead of skipping it', () => {
  expect(() => requireProgram('postern-no-such-program')).toThrow(/required program "postern-no-such-program" not found/);
});

describe('SMTP: commands pipelined after STARTTLS never reach Postfix', () => {
  const cases = [
    { label: 'RSET', line: () => 'RSET' },
    { label: 'EHLO injected', line: () => 'EHLO injected.example.net' },
    { label: 'VRFY (which Postfix logs)', line: () => `VRFY injected-${randomUUID().slice(0, 8)}@example.org` },
    { label: 'HELP', line: () => 'HELP' },
    { label: 'a whole transaction', line: () => 'MAIL FROM:<injected@example.net>\r\nRCPT TO:<rcpt@example.org>\r\nDATA' },
  ];
  for (const c of cases) {
    it(`STARTTLS and ${c.label} in one write: 220 only, the injected line is never answered nor forwarded`, async () => {
      const from = nextClient();
      const injected = `${c.line()}\r\n`;
      const before = await injectionCount(stack.postern, 'smtp');
      const { t, tr } = await injectSameWrite('smtp', from, injected);
      // The first reply inside TLS answers the client's own EHLO, and comes from Postfix.
      t.write('EHLO client.example.net\r\n');
      const ehlo = await tr.readUntil(/^250 .*\r\n/m);
      expect(ehlo.startsWith('250-mx.postern.test\r\n'), ehlo).toBe(true);
      // A command Postfix logs, sent inside TLS: once its line is in the log, anything that came
      // before it in the session would be there too.
      const control = `control-${randomUUID().slice(0, 8)}@example.org`;
      t.write(`VRFY ${control}\r\n`);
      expect(await tr.readUntil(/^\d{3} .*\r\n/m)).toMatch(/^550 5\.1\.1 /);
      t.write('QUIT\r\n');
      expect(await tr.readToEnd()).toMatch(/^221 [^\r\n]*\r\n$/);
      await pf.waitForLog(new RegExp(`reject: VRFY from unknown\\[${literal(from)}\\]: 550 5\\.1\\.1 <${literal(control)}>`));
      const counters = await pf.waitForLog(new RegExp(`disconnect from unknown\\[${literal(from)}\\] ([^\\n]*)`));
      expect(counters[1]).toBe('ehlo=1 vrfy=0/1 quit=1 commands=2/3');
      const log = await pf.readLog();
      expect(log).not.toMatch(/injected/);
      await expectInjectionLogged('smtp', from, Buffer.byteLength(injected), before);
      expect(await summaryFor(stack.postern, 'smtp', from)).toMatchObject({ tlsVersion: 'TLSv1.3', backend: `127.0.0.1:${pf.smtpPort}` });
    });
  }

  it('STARTTLS, then RSET 1 ms later before the ClientHello: closed, never answered, Postfix never dialled', async () => {
    const from = await injectLater('smtp', 'RSET\r\n');
    expect(await pf.readLog()).not.toContain(`[${from}]`);
  });

  it('STARTTLS, then EHLO after the 220 but before the ClientHello: the handshake never happens, Postfix never dialled', async () => {
    const from = nextClient();
    const c = await connect('smtp', from);
    c.sock.write('STARTTLS\r\n');
    expect(await c.r.readUntil(/\r\n/)).toBe('220 2.0.0 Ready to start TLS\r\n');
    c.sock.write('EHLO injected.example.net\r\n');
    c.r.detach();
    // A man in the middle injected the line; the real client now starts its handshake.
    await expect(startTls(c.sock, { servername: HOSTNAME, ca: certs.pki.ca.certPem })).rejects.toThrow();
    const s = await summaryFor(stack.postern, 'smtp', from);
    expect(s).toMatchObject({ closeReason: 'starttls_injection', backend: null, tlsVersion: null });
    expect(injectionWarnings(stack.postern, from)).toHaveLength(1);
    expect(await pf.readLog()).not.toContain(`[${from}]`);
  });
});

describe('IMAP: commands pipelined after STARTTLS never reach Dovecot', () => {
  for (const line of ['b CAPABILITY', 'b LOGIN alice secret', 'b NOOP']) {
    it(`a STARTTLS and ${line} in one write: OK only, b is never answered nor forwarded`, async () => {
      const from = nextClient();
      const injected = `${line}\r\n`;
      const before = await injectionCount(stack.postern, 'imap');
      const { t, tr } = await injectSameWrite('imap', from, injected);
      t.write('c NOOP\r\n');
      // Nothing before the answer to c: no "* CAPABILITY", no "b OK".
      expect(await tr.readUntil(/^c .*\r\n/m)).toMatch(/^c OK [^\r\n]*\r\n$/);
      t.write('d LOGOUT\r\n');
      expect(await tr.readToEnd()).toMatch(/^\* BYE [^\r\n]*\r\nd OK [^\r\n]*\r\n$/);
      expect(tr.transcript()).not.toMatch(/^b /m);
      // Dovecot saw the session (secured, from the client's address) and no login attempt in it.
      await dc.waitForLog(new RegExp(`imap-login: Info: [^\\n]*\\(no auth attempts[^\\n]*rip=${literal(from)}, [^\\n]*secured`));
      expect(await dc.readLog()).not.toMatch(new RegExp(`Login: [^\\n]*rip=${literal(from)},`));
      await expectInjectionLogged('imap', from, Buffer.byteLength(injected), before);
    });
  }

  it('a STARTTLS, then b LOGIN 1 ms later before the ClientHello: closed, never answered, Dovecot never dialled', async () => {
    const from = await injectLater('imap', 'b LOGIN alice secret\r\n');
    expect(await dc.readLog()).not.toContain(`rip=${from},`);
  });
});

describe('POP3: commands pipelined after STLS never reach Dovecot', () => {
  for (const line of ['CAPA', 'USER alice', 'USER alice\r\nPASS secret']) {
    it(`STLS and ${line.replace('\r\n', ' + ')} in one write: +OK only, never answered nor forwarded`, async () => {
      const from = nextClient();
      const injected = `${line}\r\n`;
      const before = await injectionCount(stack.postern, 'pop3');
      const { t, tr } = await injectSameWrite('pop3', from, injected);
      // The only thing the client gets inside TLS is the answer to its own QUIT.
      t.write('QUIT\r\n');
      expect(await tr.readToEnd()).toMatch(/^\+OK [^\r\n]*\r\n$/);
      await dc.waitForLog(new RegExp(`pop3-login: Info: [^\\n]*\\(no auth attempts[^\\n]*rip=${literal(from)}, [^\\n]*secured`));
      expect(await dc.readLog()).not.toMatch(new RegExp(`Login: [^\\n]*rip=${literal(from)},`));
      await expectInjectionLogged('pop3', from, Buffer.byteLength(injected), before);
    });
  }

  it('STLS, then USER 1 ms later before the ClientHello: closed, never answered, Dovecot never dialled', async () => {
    const from = await injectLater('pop3', 'USER alice\r\n');
    expect(await dc.readLog()).not.toContain(`rip=${from},`);
  });
});
