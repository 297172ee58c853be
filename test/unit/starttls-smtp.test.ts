import { describe, it, expect } from 'vitest';
import { smtpDialogue, smtpWords } from '../../src/starttls/smtp-dialogue.ts';
import { smtpFilter } from '../../src/starttls/smtp-filter.ts';
import type { DialogueOptions } from '../../src/starttls/types.ts';
import { sessionOf, type Step } from '../helpers/filter-script.ts';

const base: DialogueOptions = {
  hostname: 'mx.example.org',
  greeting: 'mx.example.org ESMTP',
  requireTls: false,
  capabilities: ['PIPELINING', 'SIZE 10240000', 'AUTH PLAIN LOGIN', '8BITMIME'],
  tlsAvailable: true,
};
const dialogue = (over: Partial<DialogueOptions> = {}) => smtpDialogue({ ...base, ...over });
const line = (s: string) => Buffer.from(s, 'latin1');

function session(steps: Step[], swallow = 0) {
  return sessionOf(() => smtpFilter({ swallow, tls: swallow === 0 }), steps);
}
const GREETING: Step = ['b', '220 backend.local ESMTP Postfix\r\n'];

describe('smtp dialogue', () => {
  it('greets with 220 and the configured text', () => {
    expect(dialogue().greeting()).toBe('220 mx.example.org ESMTP\r\n');
  });
  it('answers EHLO with the hostname, the probed keywords and STARTTLS in multiline format', () => {
    expect(dialogue().onLine(line('EHLO client.example.net'))).toEqual({
      kind: 'reply',
      text: '250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250 STARTTLS\r\n',
    });
  });
  it('answers EHLO with a single line when there is nothing to list', () => {
    expect(dialogue({ capabilities: [], tlsAvailable: false }).onLine(line('EHLO c'))).toEqual({ kind: 'reply', text: '250 mx.example.org\r\n' });
  });
  it('does not advertise STARTTLS without a certificate', () => {
    expect(dialogue({ tlsAvailable: false }).onLine(line('EHLO c'))).toEqual({
      kind: 'reply',
      text: '250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n',
    });
  });
  it('hides AUTH before TLS when TLS is required', () => {
    const d = dialogue({ requireTls: true, capabilities: ['AUTH PLAIN', 'AUTH=PLAIN', 'SIZE 1'] });
    expect(d.onLine(line('EHLO c'))).toEqual({ kind: 'reply', text: '250-mx.example.org\r\n250-SIZE 1\r\n250 STARTTLS\r\n' });
  });
  it('never lists STARTTLS twice even if the probe returned it', () => {
    expect(dialogue({ capabilities: ['STARTTLS'] }).onLine(line('EHLO c'))).toEqual({ kind: 'reply', text: '250-mx.example.org\r\n250 STARTTLS\r\n' });
  });
  it('answers HELO with 250 and the hostname', () => {
    expect(dialogue().onLine(line('HELO c'))).toEqual({ kind: 'reply', text: '250 mx.example.org\r\n' });
  });
  it('answers EHLO and HELO without a domain with 501', () => {
    expect(dialogue().onLine(line('EHLO'))).toEqual({ kind: 'reply', text: '501 5.5.4 Syntax: EHLO hostname\r\n' });
    expect(dialogue().onLine(line('HELO  '))).toEqual({ kind: 'reply', text: '501 5.5.4 Syntax: HELO hostname\r\n' });
  });
  it('answers NOOP and RSET with 250', () => {
    expect(dialogue().onLine(line('NOOP'))).toEqual({ kind: 'reply', text: '250 2.0.0 OK\r\n' });
    expect(dialogue().onLine(line('NOOP anything'))).toEqual({ kind: 'reply', text: '250 2.0.0 OK\r\n' });
    expect(dialogue().onLine(line('RSET'))).toEqual({ kind: 'reply', text: '250 2.0.0 OK\r\n' });
  });
  it('closes on QUIT with 221', () => {
    expect(dialogue().onLine(line('QUIT'))).toEqual({ kind: 'close', text: '221 2.0.0 Bye\r\n', reason: 'quit' });
  });
  it('starts TLS on STARTTLS', () => {
    const d = dialogue();
    d.onLine(line('EHLO c'));
    expect(d.onLine(line('STARTTLS'))).toEqual({ kind: 'starttls', text: '220 2.0.0 Ready to start TLS\r\n' });
  });
  it('accepts STARTTLS before EHLO', () => {
    expect(dialogue().onLine(line('STARTTLS'))).toEqual({ kind: 'starttls', text: '220 2.0.0 Ready to start TLS\r\n' });
  });
  it('answers STARTTLS with a parameter with 501', () => {
    expect(dialogue().onLine(line('STARTTLS x'))).toEqual({ kind: 'reply', text: '501 5.5.4 Syntax error (no parameters allowed)\r\n' });
  });
  it('answers STARTTLS with 454 without a certificate', () => {
    expect(dialogue({ tlsAvailable: false }).onLine(line('STARTTLS'))).toEqual({ kind: 'reply', text: '454 4.7.0 TLS not available\r\n' });
  });
  it('treats commands case-insensitively', () => {
    expect(dialogue().onLine(line('starttls'))).toEqual({ kind: 'starttls', text: '220 2.0.0 Ready to start TLS\r\n' });
    expect(dialogue().onLine(line('eHlO c'))).toMatchObject({ kind: 'reply', text: expect.stringMatching(/^250-mx/) });
  });
  for (const cmd of ['AUTH PLAIN AGFAYg==', 'MAIL FROM:<a@b>', 'RCPT TO:<a@b>', 'DATA', 'BDAT 10 LAST', 'VRFY a', 'EXPN a', 'ETRN b', 'HELP']) {
    it(`refuses ${cmd.split(' ')[0]} with 530 before STARTTLS when TLS is required`, () => {
      const d = dialogue({ requireTls: true });
      d.onLine(line('EHLO c'));
      expect(d.onLine(line(cmd))).toEqual({ kind: 'reply', text: '530 5.7.0 Must issue a STARTTLS command first\r\n' });
    });
  }
  it('hands a plaintext session to the backend with the client EHLO as replay', () => {
    const d = dialogue();
    d.onLine(line('EHLO  first.example'));
    d.onLine(line('ehlo second.example '));
    expect(d.onLine(line('MAIL FROM:<a@b>'))).toEqual({ kind: 'handoff', replay: 'ehlo second.example \r\n', swallow: 1 });
  });
  it('replays HELO when the client said HELO', () => {
    const d = dialogue();
    d.onLine(line('HELO old.example'));
    expect(d.onLine(line('RCPT TO:<a@b>'))).toEqual({ kind: 'handoff', replay: 'HELO old.example\r\n', swallow: 1 });
  });
  it('does not replay a refused EHLO', () => {
    const d = dialogue();
    d.onLine(line('EHLO good.example'));
    d.onLine(line('EHLO'));
    expect(d.onLine(line('VRFY x'))).toEqual({ kind: 'handoff', replay: 'EHLO good.example\r\n', swallow: 1 });
  });
  it('answers a backend command before EHLO with 503', () => {
    expect(dialogue().onLine(line('MAIL FROM:<a@b>'))).toEqual({ kind: 'reply', text: '503 5.5.1 Send EHLO/HELO first\r\n' });
  });
  it('hands off a MAIL FROM with a UTF-8 address (SMTPUTF8)', () => {
    const d = dialogue();
    d.onLine(line('EHLO c'));
    expect(d.onLine(Buffer.from('MAIL FROM:<jösé@exämple.org> SMTPUTF8', 'utf8'))).toMatchObject({ kind: 'handoff' });
  });
  it('answers an unknown command with 500 without echoing it', () => {
    expect(dialogue().onLine(line('XCLIENT ADDR=1.2.3.4'))).toEqual({ kind: 'reply', text: '500 5.5.2 Command not recognized\r\n' });
  });
  it('answers binary junk and NUL with 500', () => {
    expect(dialogue().onLine(Buffer.from([0x16, 0x03, 0x01, 0x02]))).toEqual({ kind: 'reply', text: '500 5.5.2 Syntax error, binary data\r\n' });
    expect(dialogue().onLine(line('EHLO a\0b'))).toEqual({ kind: 'reply', text: '500 5.5.2 Syntax error, binary data\r\n' });
    expect(dialogue().onLine(Buffer.from([0x45, 0xff, 0xfe]))).toEqual({ kind: 'reply', text: '500 5.5.2 Syntax error, binary data\r\n' });
  });
  it('limits command lines to 512 octets and answers longer ones with 500 5.5.6', () => {
    const d = dialogue();
    expect(d.maxLine).toBe(512);
    expect(d.onOverlong()).toEqual({ kind: 'reply', text: '500 5.5.6 Line too long\r\n' });
  });
  it('closes with 421 at the tenth error', () => {
    const d = dialogue();
    for (let i = 0; i < 9; i++) expect(d.onLine(line('BOGUS'))).toMatchObject({ kind: 'reply' });
    expect(d.onLine(line('BOGUS'))).toEqual({ kind: 'close', text: '421 4.7.0 mx.example.org Too many errors\r\n', reason: 'too_many_errors' });
  });
  it('says 421 4.4.2 on timeout', () => {
    expect(smtpWords(base.hostname).timeout).toBe('421 4.4.2 mx.example.org Timeout, closing connection\r\n');
  });
});

describe('smtp filter', () => {
  it('drops the backend greeting, multiline included', () => {
    const r = session([['b', '220-backend.local ESMTP\r\n220-wait for it\r\n220 go\r\n'], ['c', 'NOOP\r\n'], ['b', '250 2.0.0 Ok\r\n']]);
    expect(r).toEqual({ toClient: '250 2.0.0 Ok\r\n', toBackend: 'NOOP\r\n' });
  });
  it('is greeted and ready only once the whole greeting arrived', () => {
    const f = smtpFilter({ swallow: 0, tls: true });
    f.fromBackend(Buffer.from('220-backend.local\r\n'));
    expect([f.greeted(), f.ready()]).toEqual([false, false]);
    f.fromBackend(Buffer.from('220 go\r\n'));
    expect([f.greeted(), f.ready()]).toEqual([true, true]);
  });
  it('passes a refusing greeting to the client', () => {
    expect(session([['b', '554-backend.local\r\n554 5.7.1 go away\r\n']]).toClient).toBe('554-backend.local\r\n554 5.7.1 go away\r\n');
  });
  it('is ready only after the reply to the replayed EHLO', () => {
    const f = smtpFilter({ swallow: 1, tls: false });
    expect(f.fromBackend(Buffer.from('220 backend.local\r\n'))).toBeNull();
    expect([f.greeted(), f.ready()]).toEqual([true, false]);
    expect(f.fromBackend(Buffer.from('250-backend.local\r\n250-PIPELINING\r\n250 STARTTLS\r\n'))).toBeNull();
    expect(f.ready()).toBe(true);
  });
  it('swallows the reply to the replayed EHLO', () => {
    const r = session([GREETING, ['b', '250-backend.local\r\n250 SIZE 1\r\n'], ['c', 'MAIL FROM:<a@b>\r\n'], ['b', '250 2.1.0 Ok\r\n']], 1);
    expect(r).toEqual({ toClient: '250 2.1.0 Ok\r\n', toBackend: 'MAIL FROM:<a@b>\r\n' });
  });
  it('removes STARTTLS from the EHLO reply, in the middle of the list', () => {
    const r = session([GREETING, ['c', 'EHLO c\r\n'], ['b', '250-backend.local\r\n250-STARTTLS\r\n250 8BITMIME\r\n']]);
    expect(r.toClient).toBe('250-backend.local\r\n250 8BITMIME\r\n');
  });
  it('removes STARTTLS from the EHLO reply as its last line and ends the reply on the line before', () => {
    const r = session([GREETING, ['c', 'EHLO c\r\n'], ['b', '250-backend.local\r\n250-PIPELINING\r\n250 STARTTLS\r\n']]);
    expect(r.toClient).toBe('250-backend.local\r\n250 PIPELINING\r\n');
  });
  it('removes XCLIENT and XFORWARD from the EHLO reply (postern refuses both, so never announces them)', () => {
    const r = session([GREETING, ['c', 'EHLO c\r\n'], ['b', '250-backend.local\r\n250-XCLIENT NAME ADDR PROTO\r\n250-PIPELINING\r\n250 XFORWARD NAME ADDR\r\n']]);
    expect(r.toClient).toBe('250-backend.local\r\n250 PIPELINING\r\n');
    expect(dialogue({ capabilities: ['XCLIENT NAME ADDR', 'XFORWARD NAME', 'SIZE 1'] }).onLine(line('EHLO c'))).toEqual({ kind: 'reply', text: '250-mx.example.org\r\n250-SIZE 1\r\n250 STARTTLS\r\n' });
  });
  it('passes other replies unchanged', () => {
    const r = session([GREETING, ['c', 'HELP\r\n'], ['b', '214-Use STARTTLS\r\n214 2.0.0 see RFC 3207\r\n']]);
    expect(r.toClient).toBe('214-Use STARTTLS\r\n214 2.0.0 see RFC 3207\r\n');
  });
  it('refuses a second STARTTLS itself and does not forward it', () => {
    const r = session([GREETING, ['c', 'STARTTLS\r\n']]);
    expect(r).toEqual({ toClient: '503 5.5.1 TLS already active\r\n', toBackend: '' });
  });
  it('refuses STARTTLS with arguments in any case', () => {
    expect(session([GREETING, ['c', 'starttls now\r\n']])).toEqual({ toClient: '503 5.5.1 TLS already active\r\n', toBackend: '' });
  });
  it('answers a pipelined STARTTLS after the replies to the commands before it', () => {
    const r = session([GREETING, ['c', 'RSET\r\nSTARTTLS\r\nNOOP\r\n'], ['b', '250 2.0.0 reset\r\n'], ['b', '250 2.0.0 noop\r\n']]);
    expect(r).toEqual({ toClient: '250 2.0.0 reset\r\n503 5.5.1 TLS already active\r\n250 2.0.0 noop\r\n', toBackend: 'RSET\r\nNOOP\r\n' });
  });
  it('passes a DATA message with STARTTLS and dot-stuffed lines untouched', () => {
    const body = 'Subject: hi\r\n\r\nSTARTTLS\r\n..leading dot\r\n250-STARTTLS\r\n.\r\n';
    const r = session([GREETING, ['c', 'MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n'], ['b', '250 ok\r\n250 ok\r\n354 go ahead\r\n'], ['c', body], ['b', '250 2.0.0 queued\r\n'], ['c', 'STARTTLS\r\n']]);
    expect(r.toBackend).toBe(`MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n${body}`);
    expect(r.toClient).toBe('250 ok\r\n250 ok\r\n354 go ahead\r\n250 2.0.0 queued\r\n503 5.5.1 TLS already active\r\n');
  });
  it('ends an empty DATA message at the dot right after 354', () => {
    const r = session([GREETING, ['c', 'DATA\r\n'], ['b', '354 go\r\n'], ['c', '.\r\nSTARTTLS\r\n'], ['b', '250 queued\r\n']]);
    expect(r).toEqual({ toClient: '354 go\r\n250 queued\r\n503 5.5.1 TLS already active\r\n', toBackend: 'DATA\r\n.\r\n' });
  });
  it('makes bare LFs in message text CRLF, so a bare-LF dot line ends DATA for postern and for every backend alike (SMTP smuggling, CVE-2023-51764)', () => {
    const r = session([GREETING, ['c', 'DATA\r\n'], ['b', '354 go\r\n'], ['c', 'a\nb\r\n\n.\nXCLIENT ADDR=1.2.3.4\r\nSTARTTLS\r\n'], ['b', '250 queued\r\n']]);
    expect(r.toBackend).toBe('DATA\r\na\r\nb\r\n\r\n.\r\n');
    expect(r.toClient).toBe('354 go\r\n250 queued\r\n550 5.7.0 Command not permitted through postern\r\n503 5.5.1 TLS already active\r\n');
  });
  it('ends DATA at "<LF>.<CR><LF>" and at "<CR><LF>.<LF>" too, and keeps a CRLF message byte for byte', () => {
    for (const body of ['x\n.\r\n', 'x\r\n.\n']) {
      const r = session([GREETING, ['c', 'DATA\r\n'], ['b', '354 go\r\n'], ['c', `${body}STARTTLS\r\n`], ['b', '250 queued\r\n']]);
      expect(r.toBackend).toBe('DATA\r\nx\r\n.\r\n');
      expect(r.toClient.endsWith('503 5.5.1 TLS already active\r\n')).toBe(true);
    }
    const crlf = 'Subject: a\r\n\r\nline\r\n..dot\r\n.\r\n';
    expect(session([GREETING, ['c', 'DATA\r\n'], ['b', '354 go\r\n'], ['c', crlf]]).toBackend).toBe(`DATA\r\n${crlf}`);
  });
  it('returns to command mode when DATA is refused', () => {
    const r = session([GREETING, ['c', 'DATA\r\n'], ['b', '554 5.5.1 no valid recipients\r\n'], ['c', 'STARTTLS\r\n']]);
    expect(r).toEqual({ toClient: '554 5.5.1 no valid recipients\r\n503 5.5.1 TLS already active\r\n', toBackend: 'DATA\r\n' });
  });
  it('holds client bytes between DATA and the answer to it', () => {
    const f = smtpFilter({ swallow: 0, tls: true });
    f.fromBackend(Buffer.from('220 hi\r\n'));
    f.fromClient(Buffer.from('DATA\r\n'));
    expect(f.ready()).toBe(false);
    f.fromBackend(Buffer.from('354 go\r\n'));
    expect(f.ready()).toBe(true);
  });
  it('passes BDAT chunks as raw octets, pipelined', () => {
    const chunk1 = 'STARTTLS\r\n.\r\n';
    const chunk2 = 'QUIT\r\n';
    const r = session([GREETING, ['c', `BDAT ${chunk1.length}\r\n${chunk1}BDAT ${chunk2.length} LAST\r\n${chunk2}STARTTLS\r\n`], ['b', '250 2.0.0 ok\r\n250 2.0.0 queued\r\n']]);
    expect(r.toBackend).toBe(`BDAT ${chunk1.length}\r\n${chunk1}BDAT ${chunk2.length} LAST\r\n${chunk2}`);
    expect(r.toClient).toBe('250 2.0.0 ok\r\n250 2.0.0 queued\r\n503 5.5.1 TLS already active\r\n');
  });
  it('passes AUTH responses without reading them as commands', () => {
    const r = session([GREETING, ['c', 'AUTH LOGIN\r\n'], ['b', '334 VXNlcm5hbWU6\r\n'], ['c', 'STARTTLS\r\n'], ['b', '334 UGFzc3dvcmQ6\r\n'], ['c', 'cGFzcw==\r\n'], ['b', '235 2.7.0 ok\r\n']]);
    expect(r).toEqual({ toClient: '334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 ok\r\n', toBackend: 'AUTH LOGIN\r\nSTARTTLS\r\ncGFzcw==\r\n' });
  });
  it('refuses an overlong command line itself (500 5.5.6) and never forwards any of it', () => {
    const long = `NOOP ${'x'.repeat(5000)}\r\n`;
    const r = session([GREETING, ['c', long], ['c', 'NOOP\r\n'], ['b', '250 2.0.0 Ok\r\n']]);
    expect(r).toEqual({ toClient: '500 5.5.6 Line too long\r\n250 2.0.0 Ok\r\n', toBackend: 'NOOP\r\n' });
  });
  it('forwards an overlong AUTH line (RFC 4954 initial response) as it comes', () => {
    const long = `AUTH XOAUTH2 ${'A'.repeat(6000)}\r\n`;
    const r = session([GREETING, ['c', long], ['b', '235 2.7.0 ok\r\n'], ['c', 'STARTTLS\r\n']]);
    expect(r).toEqual({ toClient: '235 2.7.0 ok\r\n503 5.5.1 TLS already active\r\n', toBackend: long });
  });
  for (const [what, line, reply] of [
    ['XCLIENT padded past the line limit', `XCLIENT ADDR=192.0.2.1${' '.repeat(5000)}\r\n`, '500 5.5.6'],
    ['XFORWARD padded past the line limit', `XFORWARD NAME=x${'x'.repeat(5000)}\r\n`, '500 5.5.6'],
    ['STARTTLS padded past the line limit', `STARTTLS${' '.repeat(5000)}\r\n`, '500 5.5.6'],
    ['XCLIENT after leading blanks', ' \tXCLIENT ADDR=192.0.2.1\r\n', '550 5.7.0'],
    ['XCLIENT with a vertical tab as separator', 'xclient\x0bADDR=192.0.2.1\r\n', '550 5.7.0'],
  ] as const) {
    it(`${what}: refused, not one byte of it forwarded (whole and one byte at a time)`, () => {
      const r = session([GREETING, ['c', line], ['c', 'NOOP\r\n'], ['b', '250 2.0.0 Ok\r\n']]);
      expect(r.toBackend).toBe('NOOP\r\n');
      expect(r.toClient.startsWith(reply)).toBe(true);
      expect(r.toClient.endsWith('250 2.0.0 Ok\r\n')).toBe(true);
    });
  }
  it('on a plaintext session handed to the backend, STARTTLS gets 454 4.7.0 (RFC 3207 section 4), not "already active"', () => {
    const r = session([GREETING, ['b', '250 backend.local\r\n'], ['c', 'STARTTLS\r\n']], 1);
    expect(r).toEqual({ toClient: '454 4.7.0 TLS not available due to temporary reason\r\n', toBackend: '' });
  });
  it('stops reading at DATA until the backend answers: the bytes after it are read as the backend decides', () => {
    const refused = session([GREETING, ['c', 'DATA\r\nXCLIENT ADDR=1.2.3.4\r\n'], ['b', '554 5.5.1 no valid recipients\r\n']]);
    expect(refused).toEqual({ toClient: '554 5.5.1 no valid recipients\r\n550 5.7.0 Command not permitted through postern\r\n', toBackend: 'DATA\r\n' });
    const accepted = session([GREETING, ['c', 'DATA\r\nXCLIENT ADDR=1.2.3.4\r\n.\r\n'], ['b', '354 go\r\n']]);
    expect(accepted.toBackend).toBe('DATA\r\nXCLIENT ADDR=1.2.3.4\r\n.\r\n');
  });
  it('answers a flood of STARTTLS up to MAX_REFUSALS (20) over the session, with a reason code each, and reads no further command', () => {
    const f = smtpFilter({ swallow: 0, tls: true });
    f.fromBackend(Buffer.from('220 hi\r\n'));
    const first = f.fromClient(Buffer.from('STARTTLS\r\n'.repeat(15)));
    expect(first.toClient!.toString()).toBe('503 5.5.1 TLS already active\r\n'.repeat(15));
    expect(first.refused).toEqual(Array(15).fill('starttls_refused'));
    expect(first.rest).toBeNull();
    const r = f.fromClient(Buffer.from('XCLIENT ADDR=1.2.3.4\r\n'.repeat(2) + 'STARTTLS\r\n'.repeat(10_000)));
    expect(r.toClient!.toString()).toBe('550 5.7.0 Command not permitted through postern\r\n'.repeat(2) + '503 5.5.1 TLS already active\r\n'.repeat(3));
    expect(r.refused).toEqual([...Array(2).fill('command_not_permitted'), ...Array(3).fill('starttls_refused')]);
    expect(r.rest!.length).toBe(9_997 * 10);
    expect(r.toBackend).toBeNull();
    expect(f.fromClient(r.rest!)).toMatchObject({ toClient: null, refused: null, toBackend: null });
  });
  it('waits for replies once 1024 commands are outstanding (pipelining without limit would queue without limit)', () => {
    const f = smtpFilter({ swallow: 0, tls: true });
    f.fromBackend(Buffer.from('220 hi\r\n'));
    const r = f.fromClient(Buffer.from('NOOP\r\n'.repeat(2000)));
    expect(r.toBackend!.length).toBe(1024 * 6);
    expect(r.rest!.length).toBe(976 * 6);
    expect(f.ready()).toBe(false);
    f.fromBackend(Buffer.from('250 ok\r\n'));
    expect(f.ready()).toBe(true);
  });
  it('passes a backend line that is not SMTP through unchanged', () => {
    expect(session([['b', 'HTTP/1.1 400 Bad Request\r\n']]).toClient).toBe('HTTP/1.1 400 Bad Request\r\n');
  });
  it('returns a large message chunk without copying it', () => {
    const f = smtpFilter({ swallow: 0, tls: true });
    f.fromBackend(Buffer.from('220 hi\r\n'));
    f.fromClient(Buffer.from('DATA\r\n'));
    f.fromBackend(Buffer.from('354 go\r\n'));
    const big = Buffer.alloc(1 << 20, 0x61);
    const out = f.fromClient(big).toBackend!;
    expect([out.buffer === big.buffer, out.byteOffset, out.length]).toEqual([true, big.byteOffset, big.length]);
  });
});

describe('smtp filter refuses identity-forwarding commands', () => {
  it('XCLIENT and XFORWARD are answered locally with 550 and never forwarded', () => {
    const f = smtpFilter({ swallow: 0, tls: true });
    f.fromBackend(Buffer.from('220 backend ESMTP\r\n'));
    for (const cmd of ['XCLIENT ADDR=192.0.2.1\r\n', 'xforward NAME=spoof.example\r\n']) {
      const r = f.fromClient(Buffer.from(cmd));
      expect(r.toBackend === null || r.toBackend.length === 0).toBe(true);
      expect(r.toClient?.toString()).toBe('550 5.7.0 Command not permitted through postern\r\n');
    }
  });
});

describe('smtp filter on an implicit TLS listener (forwardGreeting)', () => {
  const implicit = (steps: Step[]) => sessionOf(() => smtpFilter({ swallow: 0, tls: true, forwardGreeting: true }), steps);
  it("forwards the backend's greeting (multi-line too), hides STARTTLS in EHLO and answers it with 503", () => {
    const r = implicit([
      ['b', '220-mx.example.org ESMTP\r\n220 mx.example.org ready\r\n'],
      ['c', 'EHLO c\r\n'],
      ['b', '250-mx.example.org\r\n250-PIPELINING\r\n250 STARTTLS\r\n'],
      ['c', 'STARTTLS\r\n'],
    ]);
    expect(r).toEqual({ toBackend: 'EHLO c\r\n', toClient: '220-mx.example.org ESMTP\r\n220 mx.example.org ready\r\n250-mx.example.org\r\n250 PIPELINING\r\n503 5.5.1 TLS already active\r\n' });
  });
  it('without forwardGreeting (after STARTTLS) the 220 is still dropped', () => {
    expect(sessionOf(() => smtpFilter({ swallow: 0, tls: true }), [['b', '220 mx ready\r\n']])).toEqual({ toBackend: '', toClient: '' });
  });
});
