import { describe, it, expect } from 'vitest';
import { pop3Dialogue, pop3Words } from '../../src/starttls/pop3-dialogue.ts';
import { pop3Filter } from '../../src/starttls/pop3-filter.ts';
import type { DialogueOptions } from '../../src/starttls/types.ts';
import { sessionOf, type Step } from '../helpers/filter-script.ts';

const base: DialogueOptions = {
  hostname: 'pop.example.org',
  greeting: 'ready',
  requireTls: true,
  capabilities: ['TOP', 'UIDL', 'RESP-CODES', 'PIPELINING', 'USER', 'SASL PLAIN LOGIN'],
  tlsAvailable: true,
};
const dialogue = (over: Partial<DialogueOptions> = {}) => pop3Dialogue({ ...base, ...over });
const line = (s: string) => Buffer.from(s, 'latin1');
const reply = (text: string) => ({ kind: 'reply', text });

function session(steps: Step[], swallow = 0) {
  return sessionOf(() => pop3Filter({ swallow, tls: swallow === 0 }), steps);
}
const GREETING: Step = ['b', '+OK Dovecot ready.\r\n'];

describe('pop3 dialogue', () => {
  it('greets with +OK and the configured text', () => {
    expect(dialogue().greeting()).toBe('+OK ready\r\n');
  });
  it('answers CAPA with the list and STLS, without USER and SASL when TLS is required', () => {
    expect(dialogue().onLine(line('CAPA'))).toEqual(reply('+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nSTLS\r\n.\r\n'));
  });
  it('keeps USER and SASL when TLS is not required', () => {
    expect(dialogue({ requireTls: false }).onLine(line('capa'))).toEqual(reply('+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nUSER\r\nSASL PLAIN LOGIN\r\nSTLS\r\n.\r\n'));
  });
  it('does not advertise STLS without a certificate', () => {
    expect(dialogue({ tlsAvailable: false, capabilities: ['TOP'] }).onLine(line('CAPA'))).toEqual(reply('+OK Capability list follows\r\nTOP\r\n.\r\n'));
  });
  it('starts TLS on STLS', () => {
    expect(dialogue().onLine(line('STLS'))).toEqual({ kind: 'starttls', text: '+OK Begin TLS negotiation\r\n' });
  });
  it('answers STLS with -ERR without a certificate', () => {
    expect(dialogue({ tlsAvailable: false }).onLine(line('stls'))).toEqual(reply('-ERR STLS not available\r\n'));
  });
  it('answers STLS with an argument with -ERR', () => {
    expect(dialogue().onLine(line('STLS now'))).toEqual(reply('-ERR STLS takes no arguments\r\n'));
  });
  it('closes on QUIT with +OK', () => {
    expect(dialogue().onLine(line('QUIT'))).toEqual({ kind: 'close', text: '+OK Bye\r\n', reason: 'quit' });
  });
  it('refuses USER, PASS, APOP and AUTH with -ERR [AUTH] when TLS is required', () => {
    for (const cmd of ['USER bob', 'PASS secret', 'APOP bob c4c9334bac560ecc979e58001b3e22fb', 'AUTH PLAIN']) {
      expect(dialogue().onLine(line(cmd))).toEqual(reply('-ERR [AUTH] Use STLS first\r\n'));
    }
  });
  it('hands USER, PASS, APOP and AUTH to the backend when TLS is not required', () => {
    for (const cmd of ['USER bob', 'PASS secret', 'APOP bob x', 'AUTH PLAIN']) {
      expect(dialogue({ requireTls: false }).onLine(line(cmd))).toEqual({ kind: 'handoff', replay: '', swallow: 0 });
    }
  });
  it('answers an unknown command with -ERR without echoing it', () => {
    expect(dialogue().onLine(line('RETR 1'))).toEqual(reply('-ERR Unknown command\r\n'));
  });
  it('answers binary junk with -ERR', () => {
    expect(dialogue().onLine(Buffer.from([0x16, 0x03, 0x01]))).toEqual(reply('-ERR Invalid characters\r\n'));
  });
  it('limits lines to 255 octets and answers longer ones with -ERR', () => {
    const d = dialogue();
    expect(d.maxLine).toBe(255);
    expect(d.onOverlong()).toEqual(reply('-ERR Line too long\r\n'));
  });
  it('closes at the tenth error', () => {
    const d = dialogue();
    for (let i = 0; i < 9; i++) expect(d.onLine(line('BOGUS'))).toEqual(reply('-ERR Unknown command\r\n'));
    expect(d.onLine(line('BOGUS'))).toEqual({ kind: 'close', text: '-ERR Too many errors\r\n', reason: 'too_many_errors' });
  });
  it('says -ERR on timeout', () => {
    expect(pop3Words(base.hostname).timeout).toBe('-ERR Timeout\r\n');
  });
});

describe('pop3 filter', () => {
  it('drops the backend greeting', () => {
    expect(session([GREETING, ['c', 'STAT\r\n'], ['b', '+OK 2 320\r\n']])).toEqual({ toClient: '+OK 2 320\r\n', toBackend: 'STAT\r\n' });
  });
  it('passes a -ERR greeting to the client', () => {
    expect(session([['b', '-ERR [SYS/TEMP] busy\r\n']]).toClient).toBe('-ERR [SYS/TEMP] busy\r\n');
  });
  it('swallows status lines after the greeting', () => {
    expect(session([GREETING, ['b', '+OK replayed\r\n'], ['c', 'NOOP\r\n'], ['b', '+OK\r\n']], 1).toClient).toBe('+OK\r\n');
  });
  it('removes STLS from the CAPA response', () => {
    const r = session([GREETING, ['c', 'CAPA\r\n'], ['b', '+OK\r\nTOP\r\nSTLS\r\nUSER\r\n.\r\n']]);
    expect(r.toClient).toBe('+OK\r\nTOP\r\nUSER\r\n.\r\n');
  });
  it('answers STLS up to MAX_REFUSALS (20) over the session, an overlong line counting as one, and reads no further command', () => {
    const f = pop3Filter({ swallow: 0, tls: true });
    f.fromBackend(Buffer.from('+OK hi\r\n'));
    const first = f.fromClient(Buffer.from(`${'A'.repeat(5000)}\r\n`));
    expect(first).toMatchObject({ refused: ['line_too_long'], rest: null });
    expect(first.toClient!.toString()).toBe('-ERR Line too long\r\n');
    const r = f.fromClient(Buffer.from('STLS\r\n'.repeat(100)));
    expect(r.toClient!.toString()).toBe('-ERR TLS already active\r\n'.repeat(19));
    expect(r.refused).toEqual(Array(19).fill('starttls_refused'));
    expect(r.rest!.length).toBe(81 * 6);
  });
  it('refuses a second STLS itself and does not forward it', () => {
    expect(session([GREETING, ['c', 'stls\r\n']])).toEqual({ toClient: '-ERR TLS already active\r\n', toBackend: '' });
  });
  it('answers a pipelined STLS after the responses to the commands before it', () => {
    const r = session([GREETING, ['c', 'LIST\r\nSTLS\r\nNOOP\r\n'], ['b', '+OK 1 messages\r\n1 120\r\n.\r\n+OK\r\n']]);
    expect(r).toEqual({ toClient: '+OK 1 messages\r\n1 120\r\n.\r\n-ERR TLS already active\r\n+OK\r\n', toBackend: 'LIST\r\nNOOP\r\n' });
  });
  it('passes a RETR message containing STLS and dot-stuffed lines untouched', () => {
    const msg = '+OK 60 octets\r\nSubject: x\r\n\r\nSTLS\r\n..dot\r\n+OK\r\n.\r\n';
    const r = session([GREETING, ['c', 'RETR 1\r\n'], ['b', msg], ['c', 'CAPA\r\n'], ['b', '+OK\r\nSTLS\r\n.\r\n']]);
    expect(r.toClient).toBe(`${msg}+OK\r\n.\r\n`);
  });
  it('treats LIST with an argument as a single-line response', () => {
    const r = session([GREETING, ['c', 'LIST 1\r\nCAPA\r\n'], ['b', '+OK 1 120\r\n+OK\r\nSTLS\r\n.\r\n']]);
    expect(r.toClient).toBe('+OK 1 120\r\n+OK\r\n.\r\n');
  });
  it('ends a multi-line command at -ERR', () => {
    const r = session([GREETING, ['c', 'RETR 9\r\nCAPA\r\n'], ['b', '-ERR no such message\r\n+OK\r\nSTLS\r\n.\r\n']]);
    expect(r.toClient).toBe('-ERR no such message\r\n+OK\r\n.\r\n');
  });
  it('passes an AUTH exchange without reading the client lines as commands', () => {
    const r = session([GREETING, ['c', 'AUTH PLAIN\r\n'], ['b', '+ \r\n'], ['c', 'STLS\r\n'], ['b', '-ERR [AUTH] failed\r\n'], ['c', 'STLS\r\n']]);
    expect(r).toEqual({ toBackend: 'AUTH PLAIN\r\nSTLS\r\n', toClient: '+ \r\n-ERR [AUTH] failed\r\n-ERR TLS already active\r\n' });
  });
  it('treats AUTH without a mechanism as a multi-line response', () => {
    const r = session([GREETING, ['c', 'AUTH\r\nCAPA\r\n'], ['b', '+OK\r\nPLAIN\r\n.\r\n+OK\r\nSTLS\r\n.\r\n']]);
    expect(r.toClient).toBe('+OK\r\nPLAIN\r\n.\r\n+OK\r\n.\r\n');
  });
  it('steps aside after PASS is accepted (TRANSACTION state: STLS is no longer valid): the rest is raw', () => {
    const f = pop3Filter({ swallow: 0, tls: true });
    f.fromBackend(Buffer.from('+OK hi\r\n'));
    f.fromClient(Buffer.from('USER u\r\nPASS p\r\n'));
    f.fromBackend(Buffer.from('+OK\r\n'));
    expect(f.passthrough()).toBe(false);
    expect(f.fromBackend(Buffer.from('+OK logged in\r\n+OK 2 messages\r\n'))!.toString()).toBe('+OK logged in\r\n+OK 2 messages\r\n');
    expect(f.passthrough()).toBe(true);
    expect(f.fromClient(Buffer.from('STLS\r\n')).toBackend!.toString()).toBe('STLS\r\n');
  });
  it('steps aside after a successful AUTH exchange, stays after a failed one', () => {
    const ok = pop3Filter({ swallow: 0, tls: true });
    ok.fromBackend(Buffer.from('+OK hi\r\n'));
    ok.fromClient(Buffer.from('AUTH PLAIN\r\n'));
    ok.fromBackend(Buffer.from('+ \r\n'));
    ok.fromClient(Buffer.from('AHUAcA==\r\n'));
    ok.fromBackend(Buffer.from('+OK logged in\r\n'));
    expect(ok.passthrough()).toBe(true);
    const r = session([GREETING, ['c', 'PASS p\r\n'], ['b', '-ERR [AUTH] no\r\n'], ['c', 'STLS\r\n']]);
    expect(r).toEqual({ toBackend: 'PASS p\r\n', toClient: '-ERR [AUTH] no\r\n-ERR TLS already active\r\n' });
  });
  it('a command with U+2028 and NEL goes to the backend, and STLS after it is still refused (the filter does not degrade)', () => {
    const line = Buffer.from('NOOP x\u2028y\u0085z\r\n', 'utf8').toString('latin1');
    const r = session([GREETING, ['c', line], ['b', '+OK\r\n'], ['c', 'STLS\r\n']]);
    expect(r).toEqual({ toBackend: line, toClient: '+OK\r\n-ERR TLS already active\r\n' });
  });
  it('STLS padded past the line limit is refused from its first bytes and never forwarded', () => {
    const r = session([GREETING, ['c', `STLS${' '.repeat(5000)}\r\nNOOP\r\n`], ['b', '+OK\r\n']]);
    expect(r).toEqual({ toBackend: 'NOOP\r\n', toClient: '-ERR TLS already active\r\n+OK\r\n' });
  });
  it('white space longer than the line limit before STLS is refused whole: the command a backend reads after it never reaches it', () => {
    const r = session([GREETING, ['c', `${' '.repeat(5000)}STLS\r\nNOOP\r\n`], ['b', '+OK\r\n']]);
    expect(r).toEqual({ toBackend: 'NOOP\r\n', toClient: '-ERR Line too long\r\n+OK\r\n' });
  });
  it('a long command whose verb comes first is forwarded whole', () => {
    const long = `USER ${'u'.repeat(5000)}\r\n`;
    const r = session([GREETING, ['c', long], ['b', '+OK\r\n']]);
    expect(r).toEqual({ toBackend: long, toClient: '+OK\r\n' });
  });
  it('on a plaintext session handed to the backend, STLS gets -ERR [SYS/TEMP]', () => {
    const f = pop3Filter({ swallow: 0, tls: false });
    f.fromBackend(Buffer.from('+OK hi\r\n'));
    expect(f.fromClient(Buffer.from('STLS\r\n')).toClient!.toString()).toBe('-ERR [SYS/TEMP] STLS not available now\r\n');
  });
  it('returns a large message chunk without copying it', () => {
    const f = pop3Filter({ swallow: 0, tls: true });
    f.fromBackend(Buffer.from('+OK hi\r\n'));
    f.fromClient(Buffer.from('RETR 1\r\n'));
    f.fromBackend(Buffer.from('+OK\r\n'));
    const big = Buffer.alloc(1 << 20, 0x61);
    const out = f.fromBackend(big)!;
    expect([out.buffer === big.buffer, out.length]).toEqual([true, big.length]);
  });
});

describe('pop3 filter on an implicit TLS listener (forwardGreeting)', () => {
  const implicit = (steps: Step[]) => sessionOf(() => pop3Filter({ swallow: 0, tls: true, forwardGreeting: true }), steps);
  it("forwards the backend's greeting (its APOP timestamp too), hides STLS in CAPA and answers it with -ERR", () => {
    const r = implicit([
      ['b', '+OK ready <1896.697170952@dbc.mtview.ca.us>\r\n'],
      ['c', 'CAPA\r\n'],
      ['b', '+OK\r\nUSER\r\nSTLS\r\n.\r\n'],
      ['c', 'STLS\r\n'],
    ]);
    expect(r).toEqual({ toBackend: 'CAPA\r\n', toClient: '+OK ready <1896.697170952@dbc.mtview.ca.us>\r\n+OK\r\nUSER\r\n.\r\n-ERR TLS already active\r\n' });
  });
});
