import { describe, it, expect } from 'vitest';
import { imapDialogue, imapWords } from '../../src/starttls/imap-dialogue.ts';
import { imapFilter } from '../../src/starttls/imap-filter.ts';
import type { DialogueOptions } from '../../src/starttls/types.ts';
import { sessionOf, type Step } from '../helpers/filter-script.ts';

const base: DialogueOptions = {
  hostname: 'imap.example.org',
  greeting: 'ready',
  requireTls: true,
  capabilities: ['IMAP4rev1', 'SASL-IR', 'ID', 'ENABLE', 'LITERAL+', 'AUTH=PLAIN'],
  tlsAvailable: true,
};
const dialogue = (over: Partial<DialogueOptions> = {}) => imapDialogue({ ...base, ...over });
const line = (s: string) => Buffer.from(s, 'latin1');
const reply = (text: string) => ({ kind: 'reply', text });

function session(steps: Step[], swallow = 0) {
  return sessionOf(() => imapFilter({ swallow, tls: swallow === 0 }), steps);
}
const GREETING: Step = ['b', '* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] Dovecot ready.\r\n'];

describe('imap dialogue', () => {
  it('greets with capabilities, STARTTLS and LOGINDISABLED, without AUTH= when TLS is required', () => {
    expect(dialogue().greeting()).toBe('* OK [CAPABILITY IMAP4rev1 SASL-IR ID ENABLE LITERAL+ STARTTLS LOGINDISABLED] ready\r\n');
  });
  it('keeps AUTH= and omits LOGINDISABLED when TLS is not required', () => {
    expect(dialogue({ requireTls: false }).greeting()).toBe('* OK [CAPABILITY IMAP4rev1 SASL-IR ID ENABLE LITERAL+ AUTH=PLAIN STARTTLS] ready\r\n');
  });
  it('does not advertise STARTTLS without a certificate', () => {
    expect(dialogue({ tlsAvailable: false, requireTls: false, capabilities: [] }).greeting()).toBe('* OK [CAPABILITY IMAP4rev1] ready\r\n');
  });
  it('answers CAPABILITY with the list and a tagged OK', () => {
    expect(dialogue().onLine(line('a1 CAPABILITY'))).toEqual(reply('* CAPABILITY IMAP4rev1 SASL-IR ID ENABLE LITERAL+ STARTTLS LOGINDISABLED\r\na1 OK CAPABILITY completed\r\n'));
  });
  it('answers NOOP with a tagged OK', () => {
    expect(dialogue().onLine(line('x.1 noop'))).toEqual(reply('x.1 OK NOOP completed\r\n'));
  });
  it('closes on LOGOUT with BYE and a tagged OK', () => {
    expect(dialogue().onLine(line('z LOGOUT'))).toEqual({ kind: 'close', text: '* BYE imap.example.org logging out\r\nz OK LOGOUT completed\r\n', reason: 'quit' });
  });
  it('starts TLS on STARTTLS', () => {
    expect(dialogue().onLine(line('a STARTTLS'))).toEqual({ kind: 'starttls', text: 'a OK Begin TLS negotiation now\r\n' });
  });
  it('answers STARTTLS with NO without a certificate', () => {
    expect(dialogue({ tlsAvailable: false }).onLine(line('a starttls'))).toEqual(reply('a NO STARTTLS not available\r\n'));
  });
  it('answers STARTTLS with arguments with BAD', () => {
    expect(dialogue().onLine(line('a STARTTLS now'))).toEqual(reply('a BAD STARTTLS takes no arguments\r\n'));
  });
  it('refuses LOGIN and AUTHENTICATE with NO [PRIVACYREQUIRED] when TLS is required', () => {
    expect(dialogue().onLine(line('a LOGIN user pass'))).toEqual(reply('a NO [PRIVACYREQUIRED] Use STARTTLS first\r\n'));
    expect(dialogue().onLine(line('b authenticate PLAIN'))).toEqual(reply('b NO [PRIVACYREQUIRED] Use STARTTLS first\r\n'));
  });
  it('refuses other commands with BAD when TLS is required', () => {
    expect(dialogue().onLine(line('a SELECT INBOX'))).toEqual(reply('a BAD Use STARTTLS first\r\n'));
  });
  it('ignores the LITERAL+ octets of a refused command', () => {
    const d = dialogue();
    expect(d.onLine(line('a LOGIN {4+}'))).toEqual(reply('a NO [PRIVACYREQUIRED] Use STARTTLS first\r\n'));
    expect(d.onLine(line('user {6+}'))).toEqual(reply(''));
    expect(d.onLine(line('x y z'))).toEqual(reply(''));
    expect(d.onLine(line('b NOOP'))).toEqual(reply('b OK NOOP completed\r\n'));
  });
  it('hands LOGIN, AUTHENTICATE, ID and ENABLE to the backend when TLS is not required', () => {
    for (const cmd of ['a LOGIN u p', 'a AUTHENTICATE PLAIN', 'a ID NIL', 'a ENABLE UTF8=ACCEPT', 'a SELECT INBOX']) {
      expect(dialogue({ requireTls: false }).onLine(line(cmd))).toEqual({ kind: 'handoff', replay: '', swallow: 0 });
    }
  });
  it('answers a missing or malformed tag with * BAD', () => {
    expect(dialogue().onLine(line(''))).toEqual(reply('* BAD Invalid tag\r\n'));
    expect(dialogue().onLine(line('a+b NOOP'))).toEqual(reply('* BAD Invalid tag\r\n'));
    expect(dialogue().onLine(line('(a) NOOP'))).toEqual(reply('* BAD Invalid tag\r\n'));
  });
  it('accepts "]" in a tag', () => {
    expect(dialogue().onLine(line('a] NOOP'))).toEqual(reply('a] OK NOOP completed\r\n'));
  });
  it('answers an unknown command with tagged BAD without echoing it', () => {
    expect(dialogue().onLine(line('a XYZZY hello'))).toEqual(reply('a BAD Unknown command\r\n'));
  });
  it('answers a tag without a command with tagged BAD', () => {
    expect(dialogue().onLine(line('a'))).toEqual(reply('a BAD Missing command\r\n'));
  });
  it('answers binary junk with * BAD', () => {
    expect(dialogue().onLine(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05]))).toEqual(reply('* BAD Invalid characters\r\n'));
  });
  it('limits lines to 8192 octets and closes on a longer one', () => {
    const d = dialogue();
    expect(d.maxLine).toBe(8192);
    expect(d.onOverlong()).toEqual({ kind: 'close', text: '* BAD Line too long\r\n', reason: 'line_too_long' });
  });
  it('closes with BYE at the tenth error', () => {
    const d = dialogue();
    for (let i = 0; i < 9; i++) expect(d.onLine(line('a BOGUS'))).toEqual(reply('a BAD Unknown command\r\n'));
    expect(d.onLine(line('a BOGUS'))).toEqual({ kind: 'close', text: '* BYE Too many errors\r\n', reason: 'too_many_errors' });
  });
  it('says BYE on timeout', () => {
    expect(imapWords(base.hostname).timeout).toBe('* BYE imap.example.org Autologout; idle for too long\r\n');
  });
});

describe('imap filter', () => {
  it('drops the backend greeting', () => {
    expect(session([GREETING, ['c', 'a NOOP\r\n'], ['b', 'a OK NOOP completed\r\n']])).toEqual({ toClient: 'a OK NOOP completed\r\n', toBackend: 'a NOOP\r\n' });
  });
  it('passes a BYE greeting to the client', () => {
    expect(session([['b', '* BYE too many connections\r\n']]).toClient).toBe('* BYE too many connections\r\n');
  });
  it('swallows responses up to the tagged completion of each replayed command', () => {
    const r = session([GREETING, ['b', '* CAPABILITY IMAP4rev1\r\np OK done\r\n'], ['b', '* 1 EXISTS\r\n']], 1);
    expect(r.toClient).toBe('* 1 EXISTS\r\n');
  });
  it('removes STARTTLS and LOGINDISABLED from a CAPABILITY response', () => {
    const r = session([GREETING, ['c', 'a CAPABILITY\r\n'], ['b', '* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED AUTH=PLAIN\r\na OK done\r\n']]);
    expect(r.toClient).toBe('* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\na OK done\r\n');
  });
  it('removes STARTTLS from a [CAPABILITY] response code in a tagged OK', () => {
    const r = session([GREETING, ['c', 'a LOGIN u p\r\n'], ['b', 'a OK [CAPABILITY IMAP4rev1 starttls IDLE] Logged in\r\n']]);
    expect(r.toClient).toBe('a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n');
  });
  it('refuses a second STARTTLS itself and does not forward it', () => {
    expect(session([GREETING, ['c', 'b7 StartTLS\r\n']])).toEqual({ toClient: 'b7 BAD TLS already active\r\n', toBackend: '' });
  });
  it('passes a LOGIN literal containing STARTTLS untouched', () => {
    const pass = 'x\r\na STARTTLS\r\n';
    const r = session([GREETING, ['c', `a LOGIN user {${pass.length}}\r\n`], ['b', '+ OK\r\n'], ['c', `${pass}\r\n`], ['b', 'a NO [AUTHENTICATIONFAILED] no\r\n'], ['c', 'b STARTTLS\r\n']]);
    expect(r.toBackend).toBe(`a LOGIN user {${pass.length}}\r\n${pass}\r\n`);
    expect(r.toClient).toBe('+ OK\r\na NO [AUTHENTICATIONFAILED] no\r\nb BAD TLS already active\r\n');
  });
  it('honours a literal only where a backend reads one (LOGIN, ID; a valid tag, one SP, the marker as an argument of its own, outside quotes): elsewhere the next bytes are commands', () => {
    for (const line of ['a APPEND INBOX {12+}', '{12+}', '* LOGIN {12+}', 'a  LOGIN {12+}', 'a LOGIN{12+}', 'a LOGIN "u {12+}', 'a AUTHENTICATE PLAIN {12+}', 'a LOGIN u{12+}']) {
      const r = session([GREETING, ['c', `${line}\r\nb STARTTLS\r\n`]]);
      expect(r).toEqual({ toBackend: `${line}\r\n`, toClient: 'b BAD TLS already active\r\n' });
    }
    const ok = session([GREETING, ['c', 'a ID ("name" {12+}\r\nb STARTTLS\r\n)\r\n']]);
    expect(ok).toEqual({ toBackend: 'a ID ("name" {12+}\r\nb STARTTLS\r\n)\r\n', toClient: '' });
  });
  it('passes a LITERAL+ literal without waiting for a continuation', () => {
    const r = session([GREETING, ['c', 'a LOGIN u {10+}\r\nb STARTTLS\r\nc STARTTLS\r\n']]);
    expect(r).toEqual({ toBackend: 'a LOGIN u {10+}\r\nb STARTTLS\r\n', toClient: 'c BAD TLS already active\r\n' });
  });
  it('continues a command after its literal and sees a second literal on the same command', () => {
    const r = session([GREETING, ['c', 'a LOGIN {4+}\r\nuser {10+}\r\nb STARTTLS\r\nc STARTTLS\r\n']]);
    expect(r).toEqual({ toBackend: 'a LOGIN {4+}\r\nuser {10+}\r\nb STARTTLS\r\n', toClient: 'c BAD TLS already active\r\n' });
  });
  it('cancels a synchronizing literal refused with a tagged NO', () => {
    const r = session([GREETING, ['c', 'a APPEND INBOX {99999999}\r\n'], ['b', 'a NO [TOOBIG] too big\r\n'], ['c', 'b STARTTLS\r\n']]);
    expect(r).toEqual({ toBackend: 'a APPEND INBOX {99999999}\r\n', toClient: 'a NO [TOOBIG] too big\r\nb BAD TLS already active\r\n' });
  });
  it('holds client bytes while a synchronizing literal waits for "+"', () => {
    const f = imapFilter({ swallow: 0, tls: true });
    f.fromBackend(Buffer.from('* OK hi\r\n'));
    f.fromClient(Buffer.from('a LOGIN u {3}\r\n'));
    expect(f.ready()).toBe(false);
    f.fromBackend(Buffer.from('+ go\r\n'));
    expect(f.ready()).toBe(true);
  });
  it('passes a FETCH literal from the server containing a CAPABILITY line untouched', () => {
    const body = '* CAPABILITY IMAP4rev1 STARTTLS\r\n* OK [CAPABILITY STARTTLS] x\r\n';
    const fetch = `* 1 FETCH (BODY[] {${body.length}}\r\n${body} FLAGS (\\Seen))\r\na OK FETCH completed\r\n`;
    const r = session([GREETING, ['c', 'a FETCH 1 (BODY[] FLAGS)\r\n'], ['b', fetch]]);
    expect(r.toClient).toBe(fetch);
  });
  it('treats AUTHENTICATE responses and IDLE DONE as plain lines', () => {
    const r = session([GREETING, ['c', 'a AUTHENTICATE PLAIN\r\n'], ['b', '+ \r\n'], ['c', 'AHUAcA==\r\n'], ['b', 'a OK done\r\n'], ['c', 'b IDLE\r\n'], ['b', '+ idling\r\n'], ['c', 'DONE\r\n'], ['b', 'b OK IDLE done\r\n']]);
    expect(r).toEqual({ toBackend: 'a AUTHENTICATE PLAIN\r\nAHUAcA==\r\nb IDLE\r\nDONE\r\n', toClient: '+ \r\na OK done\r\n+ idling\r\nb OK IDLE done\r\n' });
  });
  it('an untagged BAD ends the wait for "+" (RFC 9051 section 7.1.3): the next bytes are commands again', () => {
    const r = session([GREETING, ['c', 'a LOGIN u {5}\r\nb NOOP\r\nc STARTTLS\r\n'], ['b', '* BAD Error in IMAP command received by server.\r\n'], ['b', 'b OK NOOP done\r\n']]);
    expect(r).toEqual({ toBackend: 'a LOGIN u {5}\r\nb NOOP\r\n', toClient: '* BAD Error in IMAP command received by server.\r\nc BAD TLS already active\r\nb OK NOOP done\r\n' });
  });
  it('"{5}" on a line without a tag announces no literal (Dovecot refuses the line without reading one)', () => {
    const r = session([GREETING, ['c', '{5}\r\nb NOOP\r\n'], ['b', '* BAD Error in IMAP command received by server.\r\n']]);
    expect(r).toEqual({ toBackend: '{5}\r\nb NOOP\r\n', toClient: '* BAD Error in IMAP command received by server.\r\n' });
  });
  it('reads the bytes after a synchronizing literal only once the backend has decided: "+" makes them the literal', () => {
    const accepted = session([GREETING, ['c', 'a LOGIN u {12}\r\nb STARTTLS\r\n\r\n'], ['b', '+ go\r\n']]);
    expect(accepted.toBackend).toBe('a LOGIN u {12}\r\nb STARTTLS\r\n\r\n');
    const refused = session([GREETING, ['c', 'a LOGIN u {12}\r\nb STARTTLS\r\n'], ['b', 'a NO [TOOBIG] no\r\n']]);
    expect(refused).toEqual({ toBackend: 'a LOGIN u {12}\r\n', toClient: 'a NO [TOOBIG] no\r\nb BAD TLS already active\r\n' });
  });
  it('steps aside after a successful LOGIN (STARTTLS is only valid before authentication): the rest is raw both ways', () => {
    const f = imapFilter({ swallow: 0, tls: true });
    f.fromBackend(Buffer.from('* OK hi\r\n'));
    f.fromClient(Buffer.from('a LOGIN u p\r\n'));
    expect(f.passthrough()).toBe(false);
    expect(f.fromBackend(Buffer.from('a OK [CAPABILITY IMAP4rev1 STARTTLS] in\r\n* 1 EXISTS\r\n'))!.toString()).toBe('a OK [CAPABILITY IMAP4rev1] in\r\n* 1 EXISTS\r\n');
    expect(f.passthrough()).toBe(true);
    expect(f.fromClient(Buffer.from('b STARTTLS\r\n')).toBackend!.toString()).toBe('b STARTTLS\r\n');
    expect(f.fromBackend(Buffer.from('* CAPABILITY STARTTLS\r\n'))!.toString()).toBe('* CAPABILITY STARTTLS\r\n');
  });
  it('stays filtering after a failed LOGIN', () => {
    const r = session([GREETING, ['c', 'a LOGIN u p\r\n'], ['b', 'a NO [AUTHENTICATIONFAILED] no\r\n'], ['c', 'b STARTTLS\r\n']]);
    expect(r).toEqual({ toBackend: 'a LOGIN u p\r\n', toClient: 'a NO [AUTHENTICATIONFAILED] no\r\nb BAD TLS already active\r\n' });
  });
  it('COMPRESS DEFLATE (RFC 4978): after its tagged OK every byte either way passes unchanged', () => {
    const f = imapFilter({ swallow: 0, tls: true });
    f.fromBackend(Buffer.from('* PREAUTH hi\r\n'));
    expect(f.passthrough()).toBe(true);
    const g = imapFilter({ swallow: 0, tls: true });
    g.fromBackend(Buffer.from('* OK hi\r\n'));
    g.fromClient(Buffer.from('c COMPRESS DEFLATE\r\n'));
    const deflated = Buffer.from([0x2a, 0x4a, 0x0a, 0x7b, 0x00, 0xff, 0x0d]);
    expect(g.fromBackend(Buffer.concat([Buffer.from('c OK Begin compression\r\n'), deflated]))!.equals(Buffer.concat([Buffer.from('c OK Begin compression\r\n'), deflated]))).toBe(true);
    expect(g.passthrough()).toBe(true);
    expect(g.fromClient(deflated).toBackend!.equals(deflated)).toBe(true);
  });
  it('STARTTLS padded past the line limit is refused from its first bytes and never forwarded', () => {
    const r = session([GREETING, ['c', `a STARTTLS${' '.repeat(70_000)}\r\nb NOOP\r\n`]]);
    expect(r).toEqual({ toBackend: 'b NOOP\r\n', toClient: 'a BAD TLS already active\r\n' });
  });
  it('a tag or padding longer than the line limit hides no STARTTLS: the line is refused with BAD [TOOBIG] and dropped', () => {
    for (const hidden of [`${'x'.repeat(70_000)} STARTTLS`, `a${' '.repeat(70_000)}STARTTLS`, `a ${'x'.repeat(70_000)} STARTTLS`]) {
      const r = session([GREETING, ['c', `${hidden}\r\nb NOOP\r\n`]]);
      expect(r).toEqual({ toBackend: 'b NOOP\r\n', toClient: '* BAD [TOOBIG] Command line too long\r\n' });
    }
  });
  it('octets rushed after a refused synchronizing literal are commands: a long run of them hides no STARTTLS (fuzz:daemon seed 1558786818)', () => {
    const r = session([GREETING, ['c', `s2 LOGIN {5000000}\r\n${'x'.repeat(70_000)}s3 STARTTLS\r\nb NOOP\r\n`], ['b', '* BAD literal refused\r\n']]);
    expect(r).toEqual({ toBackend: 's2 LOGIN {5000000}\r\nb NOOP\r\n', toClient: '* BAD literal refused\r\n* BAD [TOOBIG] Command line too long\r\n' });
  });
  it('a long command line with its tag and name first is forwarded whole', () => {
    const long = `a LOGIN user ${'p'.repeat(70_000)}\r\n`;
    expect(session([GREETING, ['c', long]])).toEqual({ toBackend: long, toClient: '' });
  });
  it('on a plaintext session handed to the backend, STARTTLS gets NO (TLS cannot start any more)', () => {
    expect(session([GREETING, ['c', 'a STARTTLS\r\n']], 1).toClient).toBe('');
    const f = imapFilter({ swallow: 0, tls: false });
    f.fromBackend(Buffer.from('* OK hi\r\n'));
    expect(f.fromClient(Buffer.from('a STARTTLS\r\n')).toClient!.toString()).toBe('a NO STARTTLS not available now\r\n');
  });
  it('answers a flood of STARTTLS up to MAX_REFUSALS (20), a TOOBIG line counting as one, and reads no further command', () => {
    const f = imapFilter({ swallow: 0, tls: true });
    f.fromBackend(Buffer.from('* OK hi\r\n'));
    const tooLong = `${'t'.repeat(70_000)} NOOP\r\n`;
    const r = f.fromClient(Buffer.from(tooLong + 'a STARTTLS\r\n'.repeat(10_000)));
    expect(r.toClient!.toString()).toBe('* BAD [TOOBIG] Command line too long\r\n' + 'a BAD TLS already active\r\n'.repeat(19));
    expect(r.refused).toEqual(['line_too_long', ...Array(19).fill('starttls_refused')]);
    expect(r.rest!.length).toBe(9_981 * 12);
    expect(r.toBackend).toBeNull();
  });
  it('returns a large server literal without copying it', () => {
    const f = imapFilter({ swallow: 0, tls: true });
    f.fromBackend(Buffer.from('* OK hi\r\n* 1 FETCH (BODY[] {1048576}\r\n'));
    const big = Buffer.alloc(1 << 20, 0x61);
    const out = f.fromBackend(big)!;
    expect([out.buffer === big.buffer, out.length]).toEqual([true, big.length]);
  });
});

describe('imap filter on an implicit TLS listener (forwardGreeting)', () => {
  const implicit = (steps: Step[]) => sessionOf(() => imapFilter({ swallow: 0, tls: true, forwardGreeting: true }), steps);
  it("forwards the backend's greeting with STARTTLS and LOGINDISABLED stripped from its [CAPABILITY], answers STARTTLS with BAD", () => {
    const r = implicit([GREETING, ['c', 'a STARTTLS\r\n'], ['c', 'b CAPABILITY\r\n'], ['b', '* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\nb OK done\r\n']]);
    expect(r).toEqual({
      toBackend: 'b CAPABILITY\r\n',
      toClient: '* OK [CAPABILITY IMAP4rev1] Dovecot ready.\r\na BAD TLS already active\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nb OK done\r\n',
    });
  });
  it('a PREAUTH greeting is forwarded and the session is raw from then on', () => {
    const f = imapFilter({ swallow: 0, tls: true, forwardGreeting: true });
    expect(f.fromBackend(Buffer.from('* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n'))!.toString()).toBe('* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n');
    expect(f.passthrough()).toBe(true);
  });
});
