// Property tests (fast-check) for the pre-TLS STARTTLS line handling: the real prelude
// (src/starttls/prelude.ts) with the real SMTP, IMAP and POP3 dialogues, over a fake socket.
// Random bytes and random command lines, cut into random chunks: never throws, no line over the
// protocol's limit reaches a dialogue (and every such line is answered as overlong), replies
// never echo client bytes, and the transcript is the same however the stream was chunked.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { checkEvents, MAX_LINE, PROTOS, runPrelude, type Proto, type Setup } from '../helpers/fuzz-starttls.ts';

export const RUNS = {
  randomBytes: 4000,
  commandLines: 4000,
  longLines: 600,
  unicodeLines: 3000,
} as const;

const setup: fc.Arbitrary<Setup> = fc.record({
  proto: fc.constantFrom<Proto>(...PROTOS),
  requireTls: fc.boolean(),
  tlsAvailable: fc.boolean(),
  capabilities: fc.subarray(['PIPELINING', 'SIZE 10240000', 'AUTH PLAIN LOGIN', 'AUTH=PLAIN', '8BITMIME', 'STARTTLS', 'IDLE', 'LITERAL+', 'USER', 'SASL PLAIN', 'UIDL', 'STLS', '.dot', '']),
});

/** Command-ish lines across the three protocols, with the odd case, arguments and junk. */
const word = fc.constantFrom(
  'EHLO', 'HELO', 'ehlo', 'MAIL', 'RCPT', 'DATA', 'AUTH', 'NOOP', 'RSET', 'QUIT', 'STARTTLS', 'starttls', 'VRFY', 'BDAT',
  'CAPA', 'STLS', 'USER', 'PASS', 'APOP', 'UTF8', 'a CAPABILITY', 'a NOOP', 'a LOGIN', 'a STARTTLS', 'a LOGOUT',
  'a AUTHENTICATE', 'a SELECT', '* OK', '+', 'a', '', 'GET /', 'PROXY TCP4',
);
const arg = fc.oneof(
  fc.constant(''),
  fc.constantFrom(' x', ' client.example', ' FROM:<a@b>', ' {5+}', ' {0+}', ' {99999999999999999999+}', ' "q"', ' \t '),
  fc.string({ maxLength: 30 }).map((s) => ` ${s}`),
  fc.uint8Array({ maxLength: 20 }).map((a) => ` ${Buffer.from(a).toString('latin1')}`),
);
const eol = fc.constantFrom('\r\n', '\n', '\r\n', '\r', '');
const line = fc.tuple(word, arg, eol).map(([w, a, e]) => w + a + e);
const script = fc.array(line, { maxLength: 25 }).map((ls) => Buffer.from(ls.join(''), 'latin1'));

function cutsFor(len: number): fc.Arbitrary<number[]> {
  return fc.oneof(
    fc.array(fc.integer({ min: 1, max: Math.max(1, len - 1) }), { maxLength: 30 }),
    fc.constant(Array.from({ length: len }, (_, i) => i + 1)),
  );
}

/** The property: no throw (runPrelude turns a throw into a failure), the line model holds, chunking changes nothing. */
function sameUnderChunking(s: Setup, input: Buffer, cuts: number[]) {
  const whole = runPrelude(s, input, []);
  checkEvents(s.proto, input, whole);
  const split = runPrelude(s, input, cuts);
  checkEvents(s.proto, input, split);
  expect(split).toEqual(whole);
  const bytewise = runPrelude(s, input, Array.from({ length: input.length }, (_, i) => i + 1));
  expect(bytewise).toEqual(whole);
  // A client that keeps its window full: answering pauses and resumes, the transcript is the same.
  expect(runPrelude(s, input, cuts, 2)).toEqual(whole);
}

describe('STARTTLS prelude line handling (SMTP, IMAP, POP3)', () => {
  it(`random bytes in random chunks (${RUNS.randomBytes} runs)`, () => {
    const input = fc.oneof(
      fc.uint8Array({ maxLength: 1200 }).map((a) => Buffer.from(a)),
      // Mostly text with scattered line ends, so lines actually complete.
      fc.array(fc.oneof(fc.constantFrom(0x0a, 0x0d, 0x20, 0x00, 0x7f, 0xff, 0xc3), fc.integer({ min: 0x21, max: 0x7e })), { maxLength: 1200 }).map((a) => Buffer.from(a)),
    );
    fc.assert(
      fc.property(setup, input.chain((b) => fc.tuple(fc.constant(b), cutsFor(b.length))), (s, [b, cuts]) => sameUnderChunking(s, b, cuts)),
      { numRuns: RUNS.randomBytes },
    );
  });

  it(`command scripts in random chunks (${RUNS.commandLines} runs)`, () => {
    fc.assert(
      fc.property(setup, script.chain((b) => fc.tuple(fc.constant(b), cutsFor(b.length))), (s, [b, cuts]) => sameUnderChunking(s, b, cuts)),
      { numRuns: RUNS.commandLines },
    );
  });

  it(`command lines with any Unicode text and raw bytes (U+2028, U+2029, NEL, BOM, lone and overlong UTF-8) in random chunks (${RUNS.unicodeLines} runs)`, () => {
    // Full Unicode in the verb and the arguments, and the byte sequences that break naive parsers.
    const odd = fc.constantFrom('\u2028', '\u2029', '\u0085', '\ufeff', '\u00a0', '\u200b', '\ud800', '\udfff', '\u{1f600}', 'ß', 'ﬀ', 'İ');
    const text = fc.array(fc.oneof(fc.string({ unit: 'binary', maxLength: 12 }), odd, fc.constantFrom(' ', '\t', 'NOOP', 'EHLO', 'a NOOP', 'CAPA', 'STLS', 'STARTTLS', 'USER')), { maxLength: 8 }).map((parts) => Buffer.from(parts.join(''), 'utf8'));
    const rawBytes = fc.constantFrom(Buffer.from([0x80]), Buffer.from([0xc0, 0xaf]), Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from([0xc2, 0x85]), Buffer.from([0xff, 0xfe]), Buffer.from([0xed, 0xa0, 0x80]));
    const lineBytes = fc.tuple(fc.oneof(text, rawBytes), fc.oneof(text, rawBytes, fc.constant(Buffer.alloc(0))), fc.constantFrom('\r\n', '\n', '\u2028\r\n')).map(([a, b, e]) => Buffer.concat([a, b, Buffer.from(e, 'utf8')]));
    const stream = fc.array(lineBytes, { maxLength: 20 }).map((ls) => Buffer.concat(ls));
    fc.assert(
      fc.property(setup, stream.chain((b) => fc.tuple(fc.constant(b), cutsFor(b.length))), (s, [b, cuts]) => sameUnderChunking(s, b, cuts)),
      { numRuns: RUNS.unicodeLines },
    );
  });

  it(`lines around the protocol limit (SMTP 512, IMAP 8192, POP3 255, CRLF included) are refused as overlong exactly when over it (${RUNS.longLines} runs)`, () => {
    fc.assert(
      fc.property(
        setup,
        fc.integer({ min: -3, max: 3 }),
        fc.constantFrom('\r\n', '\n'),
        fc.array(fc.integer({ min: 1, max: 700 }), { maxLength: 8 }),
        (s, delta, end, cuts) => {
          const max = MAX_LINE[s.proto];
          const len = max + delta - end.length; // the line's length without its end
          const body = s.proto === 'imap' ? `a NOOP ${'x'.repeat(len - 7)}` : `NOOP ${'x'.repeat(len - 5)}`;
          const input = Buffer.from(`${body}${end}${s.proto === 'imap' ? 'b NOOP' : 'NOOP'}\r\n`, 'latin1');
          const t = runPrelude(s, input, cuts);
          checkEvents(s.proto, input, t);
          expect(t.events[0]).toEqual(delta > 0 ? { kind: 'overlong' } : { kind: 'line', length: len });
          const overlongReply = { smtp: '500 5.5.6 Line too long\r\n', imap: '* BAD Line too long\r\n', pop3: '-ERR Line too long\r\n' }[s.proto];
          // IMAP closes with it (the close's last words); SMTP and POP3 answer and read on.
          const said = t.written + (t.end.kind === 'abort' ? (t.end.lastWords ?? '') : '');
          expect(said.includes(overlongReply)).toBe(delta > 0);
          if (s.proto === 'imap' && delta > 0) expect(t.end).toMatchObject({ kind: 'abort', reason: 'line_too_long', lastWords: overlongReply });
          expect(runPrelude(s, input, [])).toEqual(t);
        },
      ),
      { numRuns: RUNS.longLines },
    );
  });

  it('a 1 MiB line without LF, 1 byte at a time and in one piece: one overlong reply, nothing buffered past the limit', () => {
    for (const proto of PROTOS) {
      const s: Setup = { proto, requireTls: true, tlsAvailable: true, capabilities: [] };
      const input = Buffer.alloc(1 << 20, 0x41);
      const t0 = performance.now();
      const a = runPrelude(s, input, []);
      const b = runPrelude(s, input.subarray(0, 64 * 1024), Array.from({ length: 64 * 1024 }, (_, i) => i + 1));
      expect(performance.now() - t0).toBeLessThan(5000);
      expect(a.events).toEqual([{ kind: 'overlong' }]);
      expect(b.events).toEqual([{ kind: 'overlong' }]);
    }
  });
});
