// Property tests (fast-check) for the after-TLS filters (src/starttls/*-filter.ts), over command
// lines of any Unicode text and raw bytes, lines past every limit, and random chunking:
//   - a filter never throws (a throw would end the session with internal_error);
//   - the result is the same whether the bytes come whole or one at a time;
//   - with a backend that never lets bytes pass unread (no 354, no "+", no 334, no successful
//     login), no command postern refuses ever reaches the backend: SMTP STARTTLS / XCLIENT /
//     XFORWARD, IMAP STARTTLS, POP3 STLS, however padded, split or oddly spaced.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { smtpFilter } from '../../src/starttls/smtp-filter.ts';
import { imapFilter } from '../../src/starttls/imap-filter.ts';
import { pop3Filter } from '../../src/starttls/pop3-filter.ts';
import { leadingWord } from '../../src/starttls/lines.ts';
import type { SessionFilter } from '../../src/starttls/types.ts';
import { runScript, sessionOf, type Step } from '../helpers/filter-script.ts';

const RUNS = 1500;

/** Text that breaks naive parsers: line separators a regex "." does not match, BOM, NEL, surrogate halves, wide and case-changing letters. */
const oddText = fc.constantFrom('\u2028', '\u2029', '\u0085', '\ufeff', '\u00a0', '\u200b', '\ud800', '\u{1f600}', 'ß', 'ﬀ', 'İ', '\x0b', '\x0c', '\r', '\x00');
const rawBytes = fc.constantFrom('\x80', '\xc0\xaf', '\xef\xbb\xbf', '\xc2\x85', '\xff\xfe', '\xed\xa0\x80');
/** Any Unicode text as UTF-8 bytes, carried in a latin1 string (the scripts' byte form). */
const unicode = fc.string({ unit: 'binary', maxLength: 10 }).map((t) => Buffer.from(t, 'utf8').toString('latin1'));
const junk = fc.array(fc.oneof(unicode, oddText.map((t) => Buffer.from(t, 'utf8').toString('latin1')), rawBytes, fc.constantFrom(' ', '\t', 'x')), { maxLength: 6 }).map((p) => p.join(''));
/** Padding around the line limits: SMTP and POP3 filters hold 4096 bytes of a line, IMAP 65536. */
const padding = fc.oneof(
  { weight: 6, arbitrary: fc.constant('') },
  { weight: 3, arbitrary: fc.integer({ min: 1, max: 300 }).map((n) => ' '.repeat(n)) },
  { weight: 2, arbitrary: fc.integer({ min: 4070, max: 4130 }).map((n) => (n % 2 ? ' ' : 'x').repeat(n)) },
  { weight: 1, arbitrary: fc.integer({ min: 65_500, max: 65_600 }).map((n) => 'x'.repeat(n)) },
);
const eol = fc.constantFrom('\r\n', '\n', '\r\n', '\r\n');
const lead = fc.constantFrom('', '', '', ' ', '\t', ' \t');

function line(words: fc.Arbitrary<string>): fc.Arbitrary<string> {
  return fc.tuple(lead, words, fc.constantFrom(' ', '', '\t', '\x0b'), junk, padding, junk, eol).map((p) => p.join(''));
}

/** A script of client lines and backend replies; the filter sees it whole and byte by byte. */
function script(greeting: string, client: fc.Arbitrary<string>, backend: fc.Arbitrary<string>): fc.Arbitrary<Step[]> {
  const step = fc.oneof({ weight: 3, arbitrary: client.map((c): Step => ['c', c]) }, { weight: 1, arbitrary: backend.map((b): Step => ['b', b]) });
  return fc.array(step, { maxLength: 12 }).map((steps) => [['b', greeting] as Step, ...steps]);
}

/** The command words of the complete lines the backend received. */
function forwardedWords(toBackend: string): string[] {
  return toBackend.split('\n').map((l) => leadingWord(Buffer.from(l, 'latin1'), 1 << 20));
}

function check(make: () => SessionFilter, steps: Step[], refused: string[]) {
  // Never throws; the same whole and byte by byte (in 64-byte pieces for long scripts, to keep it quick).
  const size = steps.reduce((n, [, d]) => n + d.length, 0);
  const r = size < 20_000 ? sessionOf(make, steps) : chunked(make, steps);
  for (const w of forwardedWords(r.toBackend)) expect(refused).not.toContain(w);
  return r;
}

/** The script whole and cut into 61-byte pieces must agree. */
function chunked(make: () => SessionFilter, steps: Step[]) {
  const whole = runScript(make, steps, false);
  const pieces: Step[] = steps.flatMap(([side, d]) => Array.from({ length: Math.ceil(d.length / 61) }, (_, i): Step => [side, d.slice(i * 61, i * 61 + 61)]));
  expect(runScript(make, pieces, false)).toEqual(whole);
  return whole;
}

describe('after-TLS filters over any Unicode and raw bytes', () => {
  it(`SMTP: no STARTTLS, XCLIENT or XFORWARD reaches the backend (${RUNS} runs)`, () => {
    const verbs = fc.constantFrom('EHLO', 'NOOP', 'RSET', 'MAIL FROM:<a@b>', 'RCPT TO:<c@d>', 'DATA', 'HELP', 'STARTTLS', 'starttls', 'XCLIENT', 'xclient', 'XFORWARD', 'Xforward', 'AUTH', 'BDAT 0', '');
    // Replies that never hand the next client bytes to the backend unread: no 354, no 334.
    const replies = fc.constantFrom('250 ok\r\n', '250-a\r\n250 STARTTLS\r\n', '554 5.5.1 no\r\n', '500 5.5.2 what\r\n', '421 4.3.0 bye\r\n');
    for (const [swallow, tls] of [[0, true], [1, false]] as const) {
      fc.assert(
        fc.property(script('220 backend ESMTP\r\n', line(verbs), replies), (steps) => void check(() => smtpFilter({ swallow, tls }), steps, ['STARTTLS', 'XCLIENT', 'XFORWARD'])),
        { numRuns: RUNS },
      );
    }
  });

  it(`IMAP: no STARTTLS reaches the backend (${RUNS} runs)`, () => {
    const tagged = fc.tuple(fc.constantFrom('a', 'b1', 'x.y', '{5}', '*', '+', ''), fc.constantFrom(' ', ' ', '  ', '\t'), fc.constantFrom('NOOP', 'CAPABILITY', 'STARTTLS', 'StartTLS', 'LOGIN u p', 'LOGIN {3}', 'APPEND x {5}', 'SELECT x', 'COMPRESS DEFLATE', ''))
      .map(([t, sep, c]) => `${t}${sep}${c}`);
    // No "+" (a literal's octets would pass unread) and no tagged OK (a login would end the filtering).
    const replies = fc.constantFrom('a NO no\r\n', 'b1 BAD what\r\n', '* BAD Error in IMAP command received by server.\r\n', '* CAPABILITY IMAP4rev1 STARTTLS\r\n', '* 1 EXISTS\r\n', '{5} BAD x\r\n');
    fc.assert(
      fc.property(script('* OK backend ready\r\n', line(tagged), replies), (steps) => {
        const r = check(() => imapFilter({ swallow: 0, tls: true }), steps, []);
        // STARTTLS as the command word after the tag.
        for (const l of r.toBackend.split('\n')) {
          const sp = l.indexOf(' ');
          if (sp >= 0) expect(leadingWord(Buffer.from(l.slice(sp + 1), 'latin1'), 1 << 20)).not.toBe('STARTTLS');
        }
      }),
      { numRuns: RUNS },
    );
  });

  it(`POP3: no STLS reaches the backend (${RUNS} runs)`, () => {
    const verbs = fc.constantFrom('CAPA', 'NOOP', 'USER u', 'PASS p', 'STAT', 'RETR 1', 'STLS', 'stls', 'AUTH', 'QUIT', '');
    // Status lines only: no multi-line body, no successful login.
    const replies = fc.constantFrom('-ERR no\r\n', '-ERR [AUTH] no\r\n', '-ERR unknown command\r\n');
    for (const [swallow, tls] of [[0, true], [1, false]] as const) {
      fc.assert(
        fc.property(script('+OK backend ready\r\n', line(verbs), replies), (steps) => void check(() => pop3Filter({ swallow, tls }), steps, ['STLS'])),
        { numRuns: RUNS },
      );
    }
  });
});
