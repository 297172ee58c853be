// Reproducers of what the daemon fuzzer (fuzz/daemon.ts) found, each cut down to the fewest
// bytes, against the compiled daemon in front of the harness's recording backends. Each says what
// a backend must never receive as a command, read the way the backend reads it; each was also
// checked by hand against Postfix 3.7.11 and Dovecot 2.3.19.1 behind postern (the real servers'
// answers are quoted per case).
//
// A backend's reading of what postern forwards, for the checks below: lines end at LF (a CR before
// it dropped); DATA ends at a line "." alone, as Postfix before 3.9 reads it by default
// (smtpd_forbid_bare_newline = no; www.postfix.org/smtp-smuggling.html), and as the harness's
// SMTP backend does; leading white space before a verb is skipped (Postfix does).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import net from 'node:net';
import type tls from 'node:tls';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import {
  buildOnce, spawnDaemon, stopAll, goodClient, connectPlain, startTls, readStream, sessionsOf, sleep,
  GREETING, STARTTLS_CMD, type SpawnedPostern, type MailProtocol, type StreamReader,
} from './harness.ts';

let pki: TestPki;
let mail: CertFiles;
let d: SpawnedPostern;

const LISTENER: Record<MailProtocol, string> = { smtp: 'mx', imap: 'imap', pop3: 'pop3' };

beforeAll(async () => {
  buildOnce();
  pki = await makePki();
  mail = await pki.issue('mail', { names: ['mail.example.org'] });
  d = await spawnDaemon({
    dir: pki.dir,
    certs: [{ cert: mail.cert, key: mail.key }],
    listeners: [
      { name: 'mx', protocol: 'smtp', tls: 'starttls', role: 'mx' },
      { name: 'imap', protocol: 'imap', tls: 'starttls' },
      { name: 'pop3', protocol: 'pop3', tls: 'starttls' },
    ],
  });
  for (const p of ['smtp', 'imap', 'pop3'] as const) await goodClient(d, LISTENER[p], pki, { starttls: p });
}, 120_000);

afterAll(stopAll);

/** STARTTLS and the handshake; returns the TLS socket, its reader and the client port. */
async function secured(proto: MailProtocol): Promise<{ secure: tls.TLSSocket; r: StreamReader; localPort: number }> {
  const c = await connectPlain(d.port(LISTENER[proto]));
  await c.reader.readUntil(GREETING[proto]);
  c.socket.write(STARTTLS_CMD[proto].command);
  await c.reader.readUntil(STARTTLS_CMD[proto].reply);
  c.reader.detach();
  const secure = await startTls(c.socket, { servername: 'mail.example.org', ca: pki.ca.certPem });
  return { secure, r: readStream(secure), localPort: c.localPort };
}

/** What reached the backend for this client, as text. */
function received(proto: MailProtocol, localPort: number): string {
  const mine = sessionsOf(d.backend(LISTENER[proto]), localPort);
  return mine.map((c) => c.data.toString('latin1')).join('');
}

/** Waits until the backend has received `marker` (the client's last command) for this client. */
async function backendHas(proto: MailProtocol, localPort: number, marker: string): Promise<string> {
  for (const by = Date.now() + 5000; Date.now() < by; await sleep(20)) {
    const text = received(proto, localPort);
    if (text.includes(marker)) return text;
  }
  return received(proto, localPort);
}

/**
 * The command lines an SMTP backend reads in `text`: LF-ended lines, CR dropped, DATA bodies
 * skipped up to a "." line (read as Postfix before 3.9 does by default).
 */
function smtpCommands(text: string): string[] {
  const out: string[] = [];
  let data = false;
  for (const raw of text.split('\n').slice(0, -1)) {
    const line = raw.replace(/\r$/, '');
    if (data) {
      if (line === '.') data = false;
      continue;
    }
    out.push(line);
    if (/^\s*DATA\s*$/i.test(line)) data = true;
  }
  return out;
}

const REFUSED_SMTP = /^\s*(XCLIENT|XFORWARD|STARTTLS)\b/i;

describe('SMTP smuggling: a bare-LF end of DATA (CVE-2023-51764 class)', () => {
  // Postfix 3.7.11 behind postern, body "hi\n.\nXCLIENT NAME=evil\r\nSTARTTLS\r\n": "250 2.0.0 Ok:
  // queued", "550 5.7.0 Error: insufficient authorization" (it ran XCLIENT), "220 2.0.0 Ready to
  // start TLS" (it ran STARTTLS and waits for a second handshake inside postern's TLS session).
  it('smtp after TLS: XCLIENT and STARTTLS after "\\n.\\n" inside a message never reach the backend as commands', async () => {
    const { secure, r, localPort } = await secured('smtp');
    secure.write('EHLO client.example\r\n');
    await r.readUntil(/^250 [^\r\n]*\r\n/m);
    secure.write('MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n');
    await r.readUntil(/^354 [^\r\n]*\r\n/m);
    secure.write('Subject: x\r\n\r\nhi\n.\nXCLIENT NAME=evil.example\r\nSTARTTLS\r\n\r\n.\r\nQUIT\r\n');
    const text = await backendHas('smtp', localPort, 'QUIT');
    secure.destroy();
    expect(smtpCommands(text).filter((l) => REFUSED_SMTP.test(l))).toEqual([]);
  });

  // Postfix 3.7.11, the same on port 25 without STARTTLS: "250 2.0.0 Ok: queued", then "220 2.0.0
  // Ready to start TLS": the client could now do TLS with Postfix itself, past postern.
  it('smtp plaintext handoff (port 25): STARTTLS after "\\n.\\n" inside a message never reaches the backend as a command', async () => {
    const c = await connectPlain(d.port('mx'));
    await c.reader.readUntil(GREETING.smtp);
    c.socket.write('EHLO client.example\r\n');
    await c.reader.readUntil(/^250 [^\r\n]*\r\n/m);
    c.socket.write('MAIL FROM:<a@example.net>\r\n');
    await c.reader.readUntil(/^250 [^\r\n]*\r\n/m);
    c.socket.write('RCPT TO:<b@example.org>\r\nDATA\r\n');
    await c.reader.readUntil(/^354 [^\r\n]*\r\n/m);
    c.socket.write('Subject: x\r\n\r\nhi\n.\nSTARTTLS\r\nXCLIENT NAME=evil.example\r\n\r\n.\r\nQUIT\r\n');
    const text = await backendHas('smtp', c.localPort, 'QUIT');
    c.socket.destroy();
    expect(smtpCommands(text).filter((l) => REFUSED_SMTP.test(l))).toEqual([]);
  });
});

describe('POP3: lines after a SASL response', () => {
  // Dovecot 2.3.19.1 behind postern: "AUTH PLAIN", "+ ", then "eA==\r\nSTLS\r\n" in one write:
  // "-ERR [AUTH] Authentication failed.", then "+OK Begin TLS negotiation now." and Dovecot's
  // SSL_accept() on the next bytes: a second TLS layer inside postern's.
  it('pop3: STLS sent right after the response to a "+" challenge is answered by postern, never forwarded', async () => {
    const { secure, localPort } = await secured('pop3');
    // The harness backend answers AUTH with -ERR; pipelined, postern has not seen that answer yet
    // when it reads the next lines, as with a backend that sent "+ " and waits for one response line.
    secure.write('AUTH PLAIN\r\neA==\r\nSTLS\r\nNOOP last\r\n');
    const text = await backendHas('pop3', localPort, 'NOOP last');
    secure.destroy();
    expect(text.split('\n').map((l) => l.replace(/\r$/, '')).filter((l) => /^\s*STLS\b/i.test(l))).toEqual([]);
  });

  it('pop3: STLS pipelined after "AUTH PLAIN <initial response>" (RFC 5034: the answer is final) is answered by postern, never forwarded', async () => {
    const { secure, localPort } = await secured('pop3');
    secure.write('AUTH PLAIN AGZ1enoAcHc=\r\nSTLS\r\nNOOP last\r\n');
    const text = await backendHas('pop3', localPort, 'NOOP last');
    secure.destroy();
    expect(text.split('\n').map((l) => l.replace(/\r$/, '')).filter((l) => /^\s*STLS\b/i.test(l))).toEqual([]);
  });
});

describe('IMAP: a non-sync literal on a command the server refuses before reading it', () => {
  // Dovecot 2.3.19.1 behind postern, each followed by "b STARTTLS\r\n" as the 12 literal octets:
  // "* BAD Error in IMAP command received by server." (or "a BAD ...", "a BAD Missing '\"'"), then
  // "b OK Begin TLS negotiation now.": Dovecot did not read the literal (the tag or the command
  // name did not parse, or the marker was inside a quoted string) and ran what postern forwarded
  // as literal data. The same for bad tags "*", "+", "a%", a tab or a leading space.
  for (const [what, first] of [
    ['an invalid tag', 'a{ LOGIN {12+}'],
    ['two spaces after the tag', 'a  LOGIN {12+}'],
    ['no command name', 'a {12+}'],
    ['an unterminated quoted string', 'a LOGIN "x {12+}'],
    ['AUTHENTICATE (its initial response takes no literal)', 'a AUTHENTICATE PLAIN {12+}'],
  ] as const) {
    it(`imap: "b STARTTLS" sent as the literal of a line with ${what} never reaches the backend as a command`, async () => {
      const { secure, localPort } = await secured('imap');
      secure.write(`${first}\r\nb STARTTLS\r\n pass\r\nc NOOP last\r\n`);
      const text = await backendHas('imap', localPort, 'c NOOP last');
      secure.destroy();
      expect(text.split('\n').map((l) => l.replace(/\r$/, '')).filter((l) => /^\S+ +STARTTLS\b/i.test(l))).toEqual([]);
    });
  }
});

describe('a backend that closes while postern waits for its reply', () => {
  // Found by the soak's attackers next to backend restarts: a client that wrote more than
  // HOLD_LIMIT without waiting is paused; the backend then closes (FIN) without the reply postern
  // waits for; nothing can ever be forwarded again, yet the session stays open, both sockets with
  // it, until timeouts.backendReply (default 2 min), or idle (10 min) once the greeting was seen.
  /** A backend that greets (or not) and answers EHLO/MAIL/RCPT, and closes at `closeOn`. */
  async function closingBackend(closeOn: 'greeting' | 'DATA'): Promise<{ server: net.Server; close(): Promise<void> }> {
    const live = new Set<net.Socket>();
    const server = net.createServer((s) => {
      live.add(s);
      s.once('close', () => live.delete(s));
      s.on('error', () => {});
      let header = true;
      let text = '';
      s.on('data', (chunk: Buffer) => {
        if (header) {
          header = false;
          // The PROXY header came first; then the greeting, or a close instead of it.
          if (closeOn === 'greeting') setTimeout(() => s.end(), 300);
          else s.write('220 backend ESMTP\r\n');
          return;
        }
        text += chunk.toString('latin1');
        for (let lf = text.indexOf('\n'); lf >= 0; lf = text.indexOf('\n')) {
          const line = text.slice(0, lf).trim().toUpperCase();
          text = text.slice(lf + 1);
          if (line === 'DATA') setTimeout(() => s.end(), 300);
          else if (line.startsWith('EHLO')) s.write('250-backend\r\n250 PIPELINING\r\n');
          else s.write('250 2.0.0 OK\r\n');
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return {
      server,
      async close() {
        for (const x of live) x.destroy();
        await new Promise((r) => server.close(r));
      },
    };
  }

  for (const closeOn of ['greeting', 'DATA'] as const) {
    it(`smtp handoff: the backend closes instead of its ${closeOn === 'greeting' ? 'greeting' : '354'}, the client has 200 KB pipelined and left: the session ends within 5 s`, async () => {
      const backend = await closingBackend(closeOn);
      try {
        const mx = await spawnDaemon({
          dir: pki.dir,
          certs: [{ cert: mail.cert, key: mail.key }],
          listeners: [{ name: 'mx', protocol: 'smtp', tls: 'starttls', role: 'mx', backendPort: (backend.server.address() as net.AddressInfo).port }],
        });
        const c = await connectPlain(mx.port('mx'));
        await c.reader.readUntil(GREETING.smtp);
        c.socket.write('EHLO client.example\r\n');
        await c.reader.readUntil(/^250 [^\r\n]*\r\n/m);
        const then = closeOn === 'DATA' ? 'RCPT TO:<b@example.org>\r\nDATA\r\n' : '';
        c.socket.write(`MAIL FROM:<a@example.net>\r\n${then}${'x'.repeat(998)}\r\n`.padEnd(200_000, 'NOOP\r\n'));
        c.socket.end();
        const s = await mx.summaryFor(c.localPort, 5000);
        expect(s.durationMs).toBeLessThan(5000);
        c.socket.destroy();
      } finally {
        await backend.close();
      }
    });
  }
});

describe('a refused verb behind more than 64 bytes of white space', () => {
  // Postfix 3.7.11 behind postern: 70 spaces + "XCLIENT NAME=evil" -> "550 5.7.0 Error:
  // insufficient authorization" (run), 70 spaces + "STARTTLS" -> "220 2.0.0 Ready to start TLS".
  // (Dovecot 2.3 answers BAD / "-ERR Unknown command." to the padded IMAP / POP3 forms.)
  const pad = ' '.repeat(70);
  it('smtp: padded XCLIENT, XFORWARD and STARTTLS are answered by postern, never forwarded', async () => {
    const { secure, r, localPort } = await secured('smtp');
    secure.write('EHLO client.example\r\n');
    await r.readUntil(/^250 [^\r\n]*\r\n/m);
    secure.write(`${pad}XCLIENT NAME=evil\r\n${pad}XFORWARD ADDR=192.0.2.1\r\n\t${pad}STARTTLS\r\nNOOP last\r\n`);
    const text = await backendHas('smtp', localPort, 'NOOP last');
    secure.destroy();
    expect(smtpCommands(text).filter((l) => REFUSED_SMTP.test(l))).toEqual([]);
  });

  it('imap: a tag, 70 spaces and STARTTLS is answered by postern, never forwarded', async () => {
    const { secure, localPort } = await secured('imap');
    secure.write(`b${pad}STARTTLS\r\nc NOOP last\r\n`);
    const text = await backendHas('imap', localPort, 'c NOOP last');
    secure.destroy();
    expect(text).not.toMatch(/STARTTLS/i);
  });

  it('pop3: 70 spaces and STLS is answered by postern, never forwarded', async () => {
    const { secure, localPort } = await secured('pop3');
    secure.write(`${pad}STLS\r\nNOOP last\r\n`);
    const text = await backendHas('pop3', localPort, 'NOOP last');
    secure.destroy();
    expect(text).not.toMatch(/STLS/i);
  });
});

describe('a command line longer than the filter keeps, its verb after the first 64 KiB (IMAP) / 4 KiB (POP3)', () => {
  // fuzz:daemon seed 1558786818: "s2 LOGIN {5000000}", the backend refuses the synchronizing
  // literal, the client had already rushed 272 KB of "x" and then "sù STARTTLS": for the backend
  // that is one command line, tag "xxx...sù", command STARTTLS. postern forwarded lines over its
  // limit as they came, deciding on a head that held only part of the tag.
  // Dovecot 2.3.19.1 (imap-login / pop3-login, not behind postern) refuses each of these lines:
  // 272 KB of "x" + "s3 STARTTLS" -> "* BYE Input buffer full, aborting" and a reset; "b" + 70,000
  // spaces + "STARTTLS" -> "b BAD Error in IMAP command received by server." then the same BYE;
  // "s2 LOGIN {5000000}" -> "* BYE Literal size too large"; 5,000 spaces + "STLS" -> "-ERR Input
  // buffer full, aborting". Its pre-login limit lies between 1 and 2 KB, so postern refusing such
  // lines loses nothing a real backend would have accepted.
  const xs = 'x'.repeat(272_000);
  it('imap: STARTTLS after a 272 KB tag, rushed after a refused synchronizing literal, never reaches the backend as a command', async () => {
    const { secure, r, localPort } = await secured('imap');
    secure.write(`s2 LOGIN {5000000}\r\n${xs}s3 STARTTLS\r\nc NOOP last\r\n`);
    await r.readUntil(/\* BAD \[TOOBIG\] Command line too long\r\n/);
    const text = await backendHas('imap', localPort, 'c NOOP last');
    secure.destroy();
    expect(text).toContain('c NOOP last');
    expect(text.split('\n').map((l) => l.replace(/\r$/, '')).filter((l) => /^\S+ +STARTTLS\b/i.test(l))).toEqual([]);
  });

  it('imap: STARTTLS after 70,000 spaces is refused with BAD [TOOBIG] and never forwarded', async () => {
    const { secure, r, localPort } = await secured('imap');
    secure.write(`b${' '.repeat(70_000)}STARTTLS\r\nc NOOP last\r\n`);
    await r.readUntil(/\* BAD \[TOOBIG\] Command line too long\r\n/);
    const text = await backendHas('imap', localPort, 'c NOOP last');
    secure.destroy();
    expect(text).not.toMatch(/STARTTLS/i);
  });

  it('pop3: STLS after 5,000 spaces is refused with -ERR and never forwarded', async () => {
    const { secure, r, localPort } = await secured('pop3');
    secure.write(`${' '.repeat(5000)}STLS\r\nNOOP last\r\n`);
    await r.readUntil(/-ERR Line too long\r\n/);
    const text = await backendHas('pop3', localPort, 'NOOP last');
    secure.destroy();
    expect(text).not.toMatch(/STLS/i);
  });
});
