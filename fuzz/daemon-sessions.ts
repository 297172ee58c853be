// Structure-aware sessions for the daemon fuzzer (fuzz/daemon.ts). A session is a script of steps
// (send, wait for a reply, STARTTLS handshake, stop reading, flood, FIN, RST, linger) generated
// from a seed, so that a failing one can be saved as JSON and replayed as it was. The generators
// follow each protocol's grammar (SMTP, IMAP, POP3, before and after TLS, the port-25 plaintext
// handoff, implicit TLS) and mutate lines the way threats.md's "One client against everyone"
// describes: full Unicode (U+2028, U+2029, NEL, BOM, surrogate halves as raw bytes, emoji), raw
// bytes (lone 0x80, overlong C0 AF, 0xFF), lines over every limit with and without their LF,
// bare CR and LF, NUL, chunking down to one byte, pauses, clients that stop reading, write
// without pause, FIN half-way, RST.
import net from 'node:net';
import tls from 'node:tls';
import type { BackendPlan } from './daemon-backends.ts';

export type ListenerName = 'mx' | 'submission' | 'imap' | 'pop3' | 'smtps';
export const LISTENERS: readonly ListenerName[] = ['mx', 'submission', 'imap', 'pop3', 'smtps'];
export const HOSTNAME = 'mail.example.org';

/** Bytes as latin1 text (one char per byte), or [text, n]: the text n times. */
export type Piece = string | [string, number];

export type Step =
  /** One write, cut into `chunk`-byte writes `gapMs` apart (0: back to back). */
  | { op: 'send'; data: Piece[]; chunk?: number; gapMs?: number }
  | { op: 'pause'; ms: number }
  /** Waits (at most `ms`) for received text matching `re` (multiline), from where the last wait stopped. */
  | { op: 'wait'; re: string; ms: number }
  /** A TLS handshake on the connection (after STARTTLS, or implicit TLS); a failure ends the script. */
  | { op: 'tls'; sni: string | null; ms: number }
  /** Stop (false) or resume (true) reading. */
  | { op: 'read'; on: boolean }
  /** Writes `data` again and again, without waiting for answers, up to `bytes` or `ms`. */
  | { op: 'flood'; data: Piece[]; bytes: number; ms: number }
  | { op: 'fin' }
  | { op: 'rst' }
  /** Waits (at most `ms`) for postern to close, then closes. */
  | { op: 'linger'; ms: number };

export interface SessionScript {
  id: number;
  seed: number;
  listener: ListenerName;
  /** What the generator chose, in words (for the report). */
  kind: string;
  backend: Omit<BackendPlan, 'session'>;
  steps: Step[];
}

export function pieceBytes(p: Piece[]): Buffer {
  return Buffer.concat(p.map((x) => (typeof x === 'string' ? Buffer.from(x, 'latin1') : Buffer.from(x[0].repeat(x[1]), 'latin1'))));
}

// ---------------------------------------------------------------------------------------------
// Random numbers (mulberry32: small, seedable, good enough)

export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  int(n: number): number {
    return n <= 1 ? 0 : this.u32() % n;
  }
  range(a: number, b: number): number {
    return a + this.int(b - a + 1);
  }
  chance(p: number): boolean {
    return this.u32() / 4294967296 < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  /** Picks by weight: [[weight, value], ...]. */
  weighted<T>(xs: ReadonlyArray<readonly [number, T]>): T {
    let total = 0;
    for (const [w] of xs) total += w;
    let r = this.int(total);
    for (const [w, v] of xs) {
      if (r < w) return v;
      r -= w;
    }
    return xs[xs.length - 1]![1];
  }
}

/** The seed of session `index` of a run: a mix of the run's seed and the index. */
export function sessionSeed(runSeed: number, index: number): number {
  let h = (runSeed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

// ---------------------------------------------------------------------------------------------
// Mutations

/** Bytes that break regexes, UTF-8 decoders and line splitters (UTF-8 as latin1 text). */
export const ODD = {
  ls: '\xe2\x80\xa8', // U+2028 LINE SEPARATOR: a regex "." does not match it
  ps: '\xe2\x80\xa9', // U+2029 PARAGRAPH SEPARATOR
  nel: '\xc2\x85', // U+0085 NEXT LINE
  bom: '\xef\xbb\xbf', // U+FEFF
  emoji: '\xf0\x9f\x92\xa9', // U+1F4A9, a surrogate pair in UTF-16
  hiSurrogate: '\xed\xa0\x80', // U+D800 encoded as if it were a character (invalid UTF-8)
  loSurrogate: '\xed\xb0\x80', // U+DC00
  lone80: '\x80', // a lone continuation byte
  overlong: '\xc0\xaf', // "/" overlong
  ff: '\xff',
  fe: '\xfe',
  truncated: '\xe2\x80', // a sequence cut short
  beyond: '\xf4\x90\x80\x80', // above U+10FFFF
  nul: '\x00',
  cr: '\r',
  lf: '\n',
  tab: '\t',
  vt: '\x0b',
  formfeed: '\x0c',
  del: '\x7f',
  esc: '\x1b',
  zwsp: '\xe2\x80\x8b', // U+200B ZERO WIDTH SPACE
  rlo: '\xe2\x80\xae', // U+202E RIGHT-TO-LEFT OVERRIDE
  nbsp: '\xc2\xa0',
  ideographicSpace: '\xe3\x80\x80',
  fullwidthS: '\xef\xbc\xb3', // U+FF33, upper-cases to itself, looks like S
  longS: '\xc5\xbf', // U+017F, "ſ".toUpperCase() === "S"
  dotlessI: '\xc4\xb1', // U+0131, "ı".toUpperCase() === "I"
  combining: '\xcc\x81',
  cp1252Quote: '\x93',
} as const;
const ODD_VALUES: readonly string[] = Object.values(ODD);

/** Line limits of every layer: SMTP 512, Postfix 2048, POP3 255 / filter 4096, IMAP 8192, filters 64 KiB. */
const LIMITS = [255, 256, 511, 512, 513, 2047, 2048, 2049, 4095, 4096, 4097, 8191, 8192, 8193, 65535, 65536, 65537];
const EOLS: ReadonlyArray<readonly [number, string]> = [[70, '\r\n'], [8, '\n'], [5, '\r'], [5, ''], [3, '\r\r\n'], [3, '\n\r'], [3, '\r\n\r\n'], [3, ' \r\n']];

/** A command line (text without its end), mutated sometimes, with a line end. */
export function line(g: Rng, text: string, p = 0.3): Piece[] {
  let t = text;
  let eol = '\r\n';
  let long: Piece[] | null = null;
  if (g.chance(p)) {
    const n = g.range(1, 3);
    for (let i = 0; i < n; i++) {
      switch (g.int(10)) {
        case 0:
        case 1: { // an odd token somewhere: at the start, after the verb, inside, at the end
          const tok = g.chance(0.3) ? g.pick(ODD_VALUES).repeat(g.range(1, 40)) : g.pick(ODD_VALUES);
          const sp = t.indexOf(' ');
          const at = g.pick([0, sp < 0 ? t.length : sp, sp < 0 ? t.length : sp + 1, g.int(t.length + 1), t.length]);
          t = t.slice(0, at) + tok + t.slice(at);
          break;
        }
        case 2: // random case
          t = [...t].map((c) => (g.chance(0.5) ? c.toLowerCase() : c.toUpperCase())).join('');
          break;
        case 3: { // white space: before the verb, between words, at the end
          const ws = () => g.pick([' ', '\t', '  ', ' \t ', '\x0b', '\x0c', ODD.nbsp, ' '.repeat(g.range(2, 300))]);
          const where = g.int(3);
          if (where === 0) t = ws() + t;
          else if (where === 1) t = t.replace(' ', ws() as string);
          else t += ws();
          break;
        }
        case 4: // cut short
          t = t.slice(0, g.int(t.length + 1));
          break;
        case 5: { // a few bytes overwritten
          const b = [...t];
          for (let k = g.range(1, 3); k > 0 && b.length > 0; k--) b[g.int(b.length)] = String.fromCharCode(g.int(256));
          t = b.join('');
          break;
        }
        case 6: // another line end
          eol = g.weighted(EOLS);
          break;
        case 7: { // over a limit, with or without its LF
          const limit = g.pick(LIMITS) + g.range(-2, 2);
          const fill = g.pick(['x', ' ', 'A', '\t', ODD.ls, ODD.lone80, 'x ']);
          const n = Math.max(0, Math.ceil((limit - t.length - 2) / fill.length));
          long = [t, [fill, n]];
          if (g.chance(0.4)) eol = g.pick(['', '', '\n', '\r']);
          break;
        }
        case 8: // padded at the end to a limit with an argument that looks like a command
          long = [t, [' ', g.pick(LIMITS)], g.pick(['XCLIENT NAME=x', 'STARTTLS', 'a STARTTLS', 'STLS'])];
          break;
        default: // a NUL or a lone byte in the middle
          {
            const at = g.int(t.length + 1);
            t = t.slice(0, at) + g.pick(['\x00', '\x80', '\xff', '\r', '\n']) + t.slice(at);
          }
      }
    }
  }
  return long ? [...long, eol] : [t + eol];
}

/** How a write is cut: mostly whole, sometimes in small pieces, sometimes byte by byte. */
function cut(g: Rng): { chunk?: number; gapMs?: number } {
  return g.weighted<{ chunk?: number; gapMs?: number }>([
    [70, {}],
    [8, { chunk: 1, gapMs: 0 }],
    [4, { chunk: 1, gapMs: g.pick([1, 5, 20]) }],
    [8, { chunk: g.pick([2, 3, 7, 13]), gapMs: g.pick([0, 1, 10]) }],
    [10, { chunk: g.pick([64, 511, 1400, 4096]), gapMs: g.pick([0, 0, 5, 50]) }],
  ]);
}

// ---------------------------------------------------------------------------------------------
// The session builder

const SMTP_REPLY = '(?:^|\\n)\\d{3}(?: [^\\n]*)?\\n';
const POP3_REPLY = '(?:^|\\n)[+-][^\\n]*\\n';
const imapTagged = (tag: string) => `(?:^|\\n)${tag.replace(/[^A-Za-z0-9]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`)} [^\\n]*\\n`;
const IMAP_CONT = '(?:^|\\n)\\+[^\\n]*\\n';

class Builder {
  readonly g: Rng;
  readonly steps: Step[] = [];
  readonly kind: string[] = [];
  /** A rough budget: waits and pauses stop being generated past it. */
  private ms = 0;
  private readonly budgetMs: number;

  /** The backend answers at once (no delays, no stalls): a reply that has not come in 1.5 s will not come. */
  private readonly quick: boolean;

  /** A real ClientHello (latin1), for clients that expected implicit TLS. */
  readonly hello: string;

  constructor(g: Rng, budgetMs: number, quick: boolean, hello: Buffer) {
    this.g = g;
    this.budgetMs = budgetMs;
    this.quick = quick;
    this.hello = hello.toString('latin1');
  }
  /** A ClientHello where the STARTTLS dialogue is (a client that expected implicit TLS), whole or in pieces. */
  helloInDialogue() {
    this.send([this.g.chance(0.7) ? this.hello : this.hello.slice(0, this.g.range(1, this.hello.length - 1))], cut(this.g));
    this.step({ op: 'linger', ms: 2000 });
  }
  note(k: string) {
    this.kind.push(k);
  }
  send(data: Piece[], how: { chunk?: number; gapMs?: number } = cut(this.g)) {
    const s: Step = { op: 'send', data };
    if (how.chunk !== undefined) s.chunk = how.chunk;
    if (how.gapMs !== undefined) s.gapMs = how.gapMs;
    this.steps.push(s);
    if (how.chunk && how.gapMs) this.ms += Math.min(4000, (pieceBytes(data).length / how.chunk) * how.gapMs);
  }
  wait(re: string, ms: number) {
    if (this.quick) ms = Math.min(ms, 1500);
    if (this.ms > this.budgetMs) ms = Math.min(ms, 500);
    this.steps.push({ op: 'wait', re, ms });
    this.ms += ms / 3;
  }
  pause(ms: number) {
    if (this.ms > this.budgetMs) return;
    this.steps.push({ op: 'pause', ms });
    this.ms += ms;
  }
  /** Now and then a pause between commands. */
  maybePause() {
    if (this.g.chance(0.1)) this.pause(this.g.pick([1, 10, 50, 200, 600]));
  }
  step(s: Step) {
    this.steps.push(s);
    if (s.op === 'flood') this.ms += s.ms;
    if (s.op === 'linger') this.ms += s.ms;
  }
  get spent() {
    return this.ms;
  }
}

/** How a session ends: QUIT and wait, FIN, RST, just close, or wait for postern's own deadline. */
function ending(b: Builder, quit: Piece[] | null) {
  const g = b.g;
  const how = g.weighted([[35, 'quit'], [20, 'fin'], [15, 'rst'], [15, 'close'], [10, 'linger'], [5, 'idle']] as const);
  b.note(`end:${how}`);
  switch (how) {
    case 'quit':
      if (quit) b.send(quit, {});
      b.step({ op: 'linger', ms: 2000 });
      return;
    case 'fin':
      b.step({ op: 'fin' });
      b.step({ op: 'linger', ms: 3000 });
      return;
    case 'rst':
      b.step({ op: 'rst' });
      return;
    case 'close':
      return;
    case 'linger':
      b.step({ op: 'linger', ms: g.range(200, 2500) });
      return;
    case 'idle':
      // Silent until postern's deadline (starttls 5 s, handshake 3 s, idle 10 s, backendReply 3 s) ends it.
      b.step({ op: 'linger', ms: b.spent > 4000 ? 4000 : 11_500 });
      return;
  }
}

/** A client that stops reading and sends commands postern answers itself, then comes back or leaves. */
function flood(b: Builder, cmd: Piece[], what: string) {
  const g = b.g;
  b.note(`flood:${what}`);
  b.step({ op: 'read', on: false });
  b.step({ op: 'flood', data: cmd, bytes: g.pick([64 * 1024, 512 * 1024, 2 * 1024 * 1024]), ms: g.range(500, 2500) });
  if (g.chance(0.5)) b.step({ op: 'read', on: true });
}

// ---- SMTP -------------------------------------------------------------------------------------

const MAIL_FROMS = ['MAIL FROM:<a@fuzz.test>', 'MAIL FROM:<>', 'MAIL FROM:<a@fuzz.test> BODY=8BITMIME SMTPUTF8', `MAIL FROM:<\xc3\xa9@fuzz.test> SMTPUTF8`, 'MAIL FROM: <a@fuzz.test>'];
const RCPTS = ['RCPT TO:<b@example.org>', 'RCPT TO:<postmaster>', `RCPT TO:<${ODD.ls}@example.org>`];

function smtpPreTls(b: Builder, requireTls: boolean) {
  const g = b.g;
  const words = ['EHLO client.fuzz', 'HELO client.fuzz', 'EHLO', 'NOOP', 'NOOP x', 'RSET', 'VRFY postmaster', 'HELP', 'AUTH PLAIN', 'AUTH PLAIN AGEAYg==', 'MAIL FROM:<a@fuzz.test>', 'RCPT TO:<b@example.org>', 'DATA', 'BDAT 5 LAST', 'STARTTLS x', 'XCLIENT NAME=evil', 'ETRN x', `NOOP x${ODD.ls}`, `EHLO x${ODD.nel}y`, `${ODD.bom}EHLO x`, 'QUIT'];
  const n = g.weighted([[30, 0], [40, 1], [20, 3], [10, 8]] as const);
  for (let i = 0; i < n; i++) {
    const w = g.pick(words);
    if (w === 'QUIT' && g.chance(0.7)) continue;
    if (!requireTls && /^(MAIL|RCPT|DATA|BDAT|AUTH)/.test(w) && g.chance(0.7)) continue; // would hand off: that is another path
    b.send(line(g, w));
    if (g.chance(0.6)) b.wait(SMTP_REPLY, 3000);
    b.maybePause();
  }
}

/** DATA with a body: dot-stuffed lines, command look-alikes, sometimes bytes before the 354, sometimes a bare-LF end. */
function smtpData(b: Builder) {
  const g = b.g;
  const early = g.chance(0.35);
  b.note(early ? 'data-early' : 'data');
  const lines: string[] = ['Subject: fuzz', ''];
  for (let i = g.range(0, 12); i > 0; i--) {
    lines.push(g.pick(['XCLIENT NAME=inbody', 'STARTTLS', '.XCLIENT ADDR=192.0.2.1', '..', '. ', '.', `x${ODD.ls}y`, 'MAIL FROM:<x@y>', 'a STARTTLS', 'x'.repeat(g.pick([10, 998, 1000, 5000]))]));
  }
  // A "." alone is dot-stuffed by a real client; sometimes the client does not (it ends early).
  const stuffed = lines.map((l) => (l.startsWith('.') && g.chance(0.9) ? `.${l}` : l));
  const sep = g.chance(0.9) ? '\r\n' : g.pick(['\n', '\r']);
  let body = stuffed.join(sep);
  const end = g.weighted([[80, '\r\n.\r\n'], [5, '\n.\r\n'], [5, '\n.\n'], [4, '\r\n.\n'], [3, '\r.\r\n'], [3, '\n..\n.\r\n']] as const);
  if (end !== '\r\n.\r\n') {
    // A smuggling attempt (SMTP smuggling, CVE-2023-51764 class): after a non-standard end, more
    // commands, then the real end of the message.
    b.note('smuggle');
    body += `${end}${g.pick(['XCLIENT NAME=smuggled', 'STARTTLS', 'XFORWARD ADDR=192.0.2.9', 'MAIL FROM:<s@fuzz.test>'])}\r\nRCPT TO:<b@example.org>\r\nDATA\r\n.\r\n.\r\n`;
  } else body += end;
  if (early) {
    b.send(['DATA\r\n', body, ...(g.chance(0.5) ? [line(g, g.pick(['QUIT', 'NOOP', 'XCLIENT NAME=after', 'STARTTLS'])).join('')] : [])]);
    b.wait(SMTP_REPLY, 3500);
    b.wait(SMTP_REPLY, 3500);
  } else {
    b.send(['DATA\r\n'], {});
    b.wait(SMTP_REPLY, 3500);
    b.send([body]);
    b.wait(SMTP_REPLY, 3500);
  }
}

function smtpBdat(b: Builder) {
  const g = b.g;
  b.note('bdat');
  const content = g.pick(['hello', 'XCLIENT NAME=inchunk\r\n', 'STARTTLS\r\nXFORWARD ADDR=1.2.3.4\r\n', `${ODD.ls}x\r\n.\r\n`, 'x'.repeat(g.pick([1, 100, 5000]))]);
  const n = content.length + g.weighted([[80, 0], [10, -3], [10, 4]] as const);
  const verb = g.weighted([[70, `BDAT ${Math.max(0, n)}${g.chance(0.5) ? ' LAST' : ''}`], [10, `BDAT 000${Math.max(0, n)} last`], [10, `BDAT\t${Math.max(0, n)}`], [10, `BDAT ${Math.max(0, n)} LAST x`]] as const);
  b.send([`${verb}\r\n`, content], g.chance(0.5) ? {} : cut(g));
  b.wait(SMTP_REPLY, 3000);
}

function xclient(b: Builder) {
  const g = b.g;
  const verb = g.pick(['XCLIENT', 'XFORWARD', 'xclient', 'XClient']);
  const args = g.pick(['NAME=evil.example ADDR=192.0.2.1', 'ADDR=127.0.0.1', 'LOGIN=admin', 'NAME=x']);
  const style = g.int(7);
  b.note(`xclient:${style}`);
  switch (style) {
    case 0:
      return b.send(line(g, `${verb} ${args}`));
    case 1: // odd white space before and after the verb
      return b.send([`${g.pick([' ', '\t', '\x0b', '\x0c', '  \t'])}${verb}${g.pick(['\t', '\x0b', '  ', '\x0c'])}${args}\r\n`]);
    case 2: // padded past 4096 (the filter's command limit) with its LF
      return b.send([`${verb} ${args}`, [' ', g.pick([2048, 4096, 5000, 9000])], '\r\n']);
    case 3: // padded past 4096, the LF much later (or never)
      b.send([`${verb} `, ['A', g.pick([4097, 8192, 70_000])]], cut(g));
      if (g.chance(0.5)) b.send(['\r\n']);
      return;
    case 4: // behind AUTH: a long line an AUTH may send
      return b.send(['AUTH PLAIN ', ['A', 4200], `\r${verb} ${args}\r\n`]);
    case 5: // after a NUL or a bare CR
      return b.send([`NOOP\r${verb} ${args}\r\n`]);
    default: // pipelined behind a command the backend answers
      return b.send([`NOOP\r\n${verb} ${args}\r\nNOOP\r\n`]);
  }
}

function smtpAuth(b: Builder) {
  const g = b.g;
  const style = g.int(5);
  b.note(`auth:${style}`);
  const after = g.chance(0.5) ? g.pick(['XCLIENT NAME=afterauth\r\n', 'STARTTLS\r\n', 'NOOP\r\n']) : '';
  switch (style) {
    case 0:
      b.send([`AUTH PLAIN AGZ1enoAcHc=\r\n${after}`]);
      break;
    case 1:
      b.send(['AUTH PLAIN\r\n'], {});
      b.wait(SMTP_REPLY, 3000);
      b.send([`${g.pick(['AGZ1enoAcHc=', '*', 'XCLIENT NAME=asresponse', 'STARTTLS'])}\r\n${after}`]);
      break;
    case 2:
      b.send(['AUTH LOGIN\r\n'], {});
      b.wait(SMTP_REPLY, 3000);
      b.send(['ZnV6eg==\r\n']);
      b.wait(SMTP_REPLY, 3000);
      b.send([`cHc=\r\n${after}`]);
      break;
    case 3: // pipelined: the response before the 334
      b.send([`AUTH PLAIN\r\nAGZ1enoAcHc=\r\n${after}`]);
      break;
    default: // an initial response over 4096 (RFC 4954 allows 12288)
      b.send(['AUTH PLAIN ', ['QUFB', g.pick([1100, 3000])], `\r\n${after}`]);
  }
  b.wait(SMTP_REPLY, 3000);
}

/** Commands once the backend has the session (after STARTTLS, or after the plaintext handoff). */
function smtpSecure(b: Builder, greetEhlo: boolean) {
  const g = b.g;
  if (greetEhlo) {
    b.send(line(g, g.pick(['EHLO client.fuzz', 'EHLO client.fuzz', 'HELO client.fuzz', 'EHLO'])), g.chance(0.8) ? {} : cut(g));
    b.wait(SMTP_REPLY, 3500);
  }
  const n = g.weighted([[20, 1], [40, 3], [30, 6], [10, 12]] as const);
  let mail = false;
  for (let i = 0; i < n; i++) {
    const what = g.weighted([
      [12, 'mail'], [10, 'data'], [5, 'bdat'], [10, 'starttls'], [14, 'xclient'], [6, 'auth'], [8, 'noop'], [4, 'rset'], [4, 'ehlo'], [5, 'garbage'], [3, 'long'], [3, 'flood'], [3, 'rush'], [3, 'quit'],
    ] as const);
    switch (what) {
      case 'mail':
        b.send([...line(g, g.pick(MAIL_FROMS), 0.15), ...line(g, g.pick(RCPTS), 0.15)]);
        b.wait(SMTP_REPLY, 3000);
        b.wait(SMTP_REPLY, 3000);
        mail = true;
        break;
      case 'data':
        if (!mail && g.chance(0.7)) b.send(['MAIL FROM:<a@fuzz.test>\r\nRCPT TO:<b@example.org>\r\n']);
        smtpData(b);
        mail = false;
        break;
      case 'bdat':
        if (!mail && g.chance(0.7)) b.send(['MAIL FROM:<a@fuzz.test>\r\nRCPT TO:<b@example.org>\r\n']);
        smtpBdat(b);
        break;
      case 'starttls':
        b.note('starttls-again');
        b.send(line(g, g.pick(['STARTTLS', 'starttls', ' STARTTLS', 'STARTTLS\t', 'STARTTLS x', '\x0bSTARTTLS'])));
        b.wait(SMTP_REPLY, 2000);
        break;
      case 'xclient':
        xclient(b);
        b.wait(SMTP_REPLY, 2000);
        break;
      case 'auth':
        smtpAuth(b);
        break;
      case 'noop':
        b.send(line(g, g.pick(['NOOP', 'NOOP x', `NOOP ${ODD.ls}`, 'VRFY x'])));
        b.wait(SMTP_REPLY, 2000);
        break;
      case 'rset':
        b.send(line(g, 'RSET'));
        b.wait(SMTP_REPLY, 2000);
        mail = false;
        break;
      case 'ehlo':
        b.send(line(g, 'EHLO again.fuzz'));
        b.wait(SMTP_REPLY, 2000);
        break;
      case 'garbage': {
        const n = g.pick([1, 16, 300, 5000]);
        let s = '';
        for (let k = 0; k < n; k++) s += String.fromCharCode(g.int(256));
        b.note('garbage');
        b.send([s, g.chance(0.5) ? '\r\n' : '']);
        break;
      }
      case 'long':
        b.note('long');
        b.send([g.pick(['NOOP ', 'MAIL FROM:<', 'RCPT TO:<', 'AUTH ', '']), [g.pick(['x', ' ', ODD.ls]), g.pick(LIMITS)], g.pick(['\r\n', '', '\n'])], cut(g));
        break;
      case 'flood':
        flood(b, [g.pick(['STARTTLS\r\n', 'XCLIENT NAME=x\r\n', 'XFORWARD NAME=x\r\n', 'NOOP\r\n', 'EHLO x\r\n'])], 'secure');
        break;
      case 'rush':
        // Writes without pause while postern waits for the backend (the 354, or a stalled reply).
        b.note('rush-data');
        if (!mail) b.send(['MAIL FROM:<a@fuzz.test>\r\nRCPT TO:<b@example.org>\r\n']);
        b.send(['DATA\r\n']);
        b.step({ op: 'flood', data: [g.pick(['x'.repeat(1000) + '\r\n', 'XCLIENT NAME=x\r\n', `${ODD.ls}\r\n`])], bytes: g.pick([256 * 1024, 4 * 1024 * 1024]), ms: g.range(500, 3500) });
        return;
      case 'quit':
        b.send(line(g, 'QUIT'));
        b.step({ op: 'linger', ms: 1500 });
        return;
    }
    b.maybePause();
  }
  ending(b, ['QUIT\r\n']);
}

function smtpSession(b: Builder, listener: 'mx' | 'submission') {
  const g = b.g;
  const requireTls = listener === 'submission';
  // An early talker (postscreen's pregreet test): it speaks before the greeting.
  if (g.chance(0.08)) {
    b.note('pregreet');
    b.send(line(g, 'EHLO early.fuzz'));
  }
  b.wait(SMTP_REPLY, 3000);
  smtpPreTls(b, requireTls);
  const path = g.weighted([[55, 'starttls'], [requireTls ? 0 : 18, 'handoff'], [8, 'flood'], [6, 'inject'], [4, 'notls'], [3, 'hello'], [9, 'end']] as const);
  b.note(path);
  switch (path) {
    case 'starttls': {
      if (g.chance(0.7)) {
        b.send(['EHLO client.fuzz\r\n']);
        b.wait(SMTP_REPLY, 3000);
      }
      b.send(line(g, 'STARTTLS', 0.15));
      b.wait(SMTP_REPLY, 3000);
      b.step({ op: 'tls', sni: g.pick([HOSTNAME, HOSTNAME, null, 'other.example.net', 'MAIL.EXAMPLE.ORG']), ms: 4000 });
      smtpSecure(b, g.chance(0.93));
      return;
    }
    case 'handoff':
      // Port 25 without STARTTLS: EHLO, then a command only the backend answers.
      b.send(['EHLO client.fuzz\r\n']);
      b.wait(SMTP_REPLY, 3000);
      b.send(line(g, g.pick(MAIL_FROMS), 0.2));
      b.wait(SMTP_REPLY, 4000);
      smtpSecure(b, false);
      return;
    case 'flood':
      flood(b, [g.pick(['EHLO x\r\n', 'NOOP\r\n', 'RSET\r\n', 'HELO x\r\n', `NOOP ${ODD.ls}\r\n`])], 'pretls');
      ending(b, null);
      return;
    case 'inject':
      // STARTTLS with a command behind it in the same write (CVE-2011-0411), then TLS or not.
      b.send([`STARTTLS\r\n${g.pick(['EHLO injected', 'XCLIENT NAME=inj', 'MAIL FROM:<i@x>'])}\r\n`]);
      b.wait(SMTP_REPLY, 3000);
      if (g.chance(0.5)) b.step({ op: 'tls', sni: HOSTNAME, ms: 4000 });
      else b.send([g.pick(['EHLO x\r\n', '\x16\x03\x01\x00\x05hello', ''])]);
      smtpSecure(b, true);
      return;
    case 'notls':
      // STARTTLS, then something that is not a ClientHello (or half of one).
      b.send(['STARTTLS\r\n']);
      b.wait(SMTP_REPLY, 3000);
      b.send([g.pick(['EHLO x\r\n', '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03', 'GET / HTTP/1.0\r\n\r\n', '\x80\x2e\x01'])]);
      ending(b, null);
      return;
    case 'hello':
      b.helloInDialogue();
      return;
    default:
      ending(b, ['QUIT\r\n']);
  }
}

// ---- IMAP -------------------------------------------------------------------------------------

const TAGS = ['a1', 'A0001', 'x', 'tag]', '1', '*', '+', '', 'a{', `t${ODD.ls}`, 'a"b', 'Z9'];

function imapPreTls(b: Builder) {
  const g = b.g;
  const n = g.weighted([[30, 0], [40, 1], [20, 3], [10, 8]] as const);
  for (let i = 0; i < n; i++) {
    const tag = g.chance(0.8) ? `p${i}` : g.pick(TAGS);
    const cmd = g.pick(['CAPABILITY', 'NOOP', 'LOGIN user pass', 'LOGIN {4+}\r\nuser {4+}\r\npass', 'LOGIN {4}', 'ID ("name" "fuzz")', 'AUTHENTICATE PLAIN', 'SELECT INBOX', 'STARTTLS x', `NOOP ${ODD.ps}`, `CAPABILITY${ODD.nel}`, 'FOO', 'LOGOUT']);
    if (cmd === 'LOGOUT' && g.chance(0.8)) continue;
    b.send(line(g, `${tag} ${cmd}`));
    if (g.chance(0.6)) b.wait(imapTagged(tag), 2500);
    b.maybePause();
  }
}

/** A literal: sync (waits for "+", or not), non-sync, a wrong count, or without a tag. */
function imapLiteral(b: Builder, tag: string) {
  const g = b.g;
  const style = g.int(8);
  b.note(`literal:${style}`);
  const content = g.pick(['user', `b STARTTLS`, '\r\nb STARTTLS\r\n', `${ODD.ls}x`, 'x'.repeat(g.pick([1, 100, 70_000]))]);
  const n = content.length;
  switch (style) {
    case 0: // sync, waits for "+"
      b.send([`${tag} LOGIN {${n}}\r\n`], {});
      b.wait(IMAP_CONT, 3000);
      b.send([content, ' pass\r\n']);
      break;
    case 1: // sync, does not wait (a broken client)
      b.send([`${tag} LOGIN {${n}}\r\n`, content, ' pass\r\n']);
      break;
    case 2: // non-sync (LITERAL+)
      b.send([`${tag} ${g.pick(['LOGIN', 'FOO', 'APPEND INBOX', 'NOOP'])} {${n}+}\r\n`, content, g.pick([' pass\r\n', '\r\n', ' {5+}\r\nhello\r\n'])]);
      break;
    case 3: // wrong count
      b.send([`${tag} LOGIN {${n + g.pick([-2, 3, 100])}${g.chance(0.5) ? '+' : ''}}\r\n`, content, ' pass\r\n']);
      break;
    case 4: // without a tag (Dovecot answers an untagged BAD and waits for a new command)
      b.send(['{5}\r\n'], {});
      b.wait('(?:^|\\n)[*+][^\\n]*\\n', 3000);
      b.send([g.pick(['hello\r\n', 'b STARTTLS\r\n', 'b NOOP\r\n'])]);
      break;
    case 7: { // a non-sync literal on a line a server may refuse before it reads the literal
      const form = g.pick([`${g.pick(['a{', '*', '+', 'a%', 'a"', `a${ODD.ls}`])} LOGIN`, `${tag}\tLOGIN`, ` ${tag} LOGIN`, `${tag}  LOGIN`, `${tag} LOGIN{`, `${tag}`, `${tag} LOGIN "x`, `${tag} AUTHENTICATE PLAIN`, `${tag} FOO`]);
      b.note('literal-confusion');
      b.send([`${form} {${n}+}\r\n`, content, ' pass\r\n']);
      break;
    }
    case 5: // APPEND with a message that looks like commands
      b.send([`${tag} APPEND INBOX {${n + 2}}\r\n`], {});
      b.wait(`(?:${IMAP_CONT})|(?:${imapTagged(tag)})`, 3000);
      b.send([content, '\r\n\r\n']);
      break;
    default: // sync literal, then the client writes without pause while the "+" does not come
      b.note('rush-literal');
      b.send([`${tag} LOGIN {${g.pick([100_000, 5_000_000])}}\r\n`]);
      b.step({ op: 'flood', data: [g.pick(['x'.repeat(1000), 'b STARTTLS\r\n'])], bytes: g.pick([256 * 1024, 4 * 1024 * 1024]), ms: g.range(500, 3500) });
      return;
  }
  b.wait(imapTagged(tag), 3000);
}

function imapSecure(b: Builder) {
  const g = b.g;
  const n = g.weighted([[20, 1], [40, 3], [30, 6], [10, 12]] as const);
  for (let i = 0; i < n; i++) {
    const tag = g.chance(0.85) ? `s${i}` : g.pick(TAGS);
    const what = g.weighted([[12, 'starttls'], [8, 'capability'], [14, 'literal'], [10, 'login'], [6, 'compress'], [5, 'auth'], [6, 'noop'], [4, 'garbage'], [4, 'long'], [3, 'flood'], [3, 'logout'], [4, 'fetch']] as const);
    switch (what) {
      case 'starttls':
        b.note('starttls-again');
        b.send(g.chance(0.5) ? line(g, `${tag} STARTTLS`) : [`${tag}${g.pick([' ', '  ', ' \t', ' \x0b'])}${g.pick(['STARTTLS', 'starttls', 'StartTLS'])}${g.pick(['', ' ', '\t'])}\r\n`]);
        b.wait(imapTagged(tag), 2000);
        break;
      case 'capability':
        b.send(line(g, `${tag} CAPABILITY`));
        b.wait(imapTagged(tag), 2000);
        break;
      case 'literal':
        imapLiteral(b, tag);
        break;
      case 'login':
        b.send(line(g, `${tag} LOGIN fuzz secret`, 0.15));
        if (g.chance(0.5)) b.send([`${tag}b STARTTLS\r\n`]); // pipelined behind the LOGIN
        b.wait(imapTagged(tag), 3000);
        break;
      case 'compress':
        // RFC 4978: after LOGIN, COMPRESS; the bytes that follow are deflated (here: just bytes).
        b.note('compress');
        b.send([`${tag} LOGIN fuzz secret\r\n${tag}c COMPRESS DEFLATE\r\n`]);
        b.wait(imapTagged(`${tag}c`), 3000);
        b.send([g.pick(['\x78\x9c\x03\x00\x00\x00\x00\x01', 'c STARTTLS\r\n', '\x00\xff'.repeat(100)])]);
        break;
      case 'auth':
        if (g.chance(0.5)) b.send([`${tag} AUTHENTICATE PLAIN AGZ1enoAcHc=\r\n`]);
        else {
          b.send([`${tag} AUTHENTICATE PLAIN\r\n`]);
          b.wait(IMAP_CONT, 2000);
          b.send([`${g.pick(['AGZ1enoAcHc=', '*', 'x STARTTLS'])}\r\n`]);
        }
        b.wait(imapTagged(tag), 3000);
        break;
      case 'noop':
        b.send(line(g, `${tag} ${g.pick(['NOOP', 'ID NIL', `NOOP ${ODD.ls}`, 'SELECT INBOX'])}`));
        b.wait(imapTagged(tag), 2000);
        break;
      case 'fetch':
        b.send([`${tag} SELECT INBOX\r\n${tag}f FETCH 1 BODY[]\r\n`]);
        b.wait(imapTagged(`${tag}f`), 3000);
        break;
      case 'garbage': {
        let s = '';
        for (let k = g.pick([1, 16, 300, 5000]); k > 0; k--) s += String.fromCharCode(g.int(256));
        b.note('garbage');
        b.send([s, g.chance(0.5) ? '\r\n' : '']);
        break;
      }
      case 'long':
        b.note('long');
        b.send([`${tag} ${g.pick(['STARTTLS', 'NOOP', 'LOGIN'])} `, [g.pick(['x', ' ']), g.pick(LIMITS)], g.pick(['\r\n', '', ' {5}\r\n'])], cut(g));
        break;
      case 'flood':
        flood(b, [g.pick(['a STARTTLS\r\n', 'a NOOP\r\n', 'a CAPABILITY\r\n'])], 'secure');
        break;
      case 'logout':
        b.send(line(g, `${tag} LOGOUT`));
        b.step({ op: 'linger', ms: 1500 });
        return;
    }
    b.maybePause();
  }
  ending(b, ['z LOGOUT\r\n']);
}

function imapSession(b: Builder) {
  const g = b.g;
  b.wait('(?:^|\\n)\\* [^\\n]*\\n', 3000);
  imapPreTls(b);
  const path = g.weighted([[65, 'starttls'], [10, 'flood'], [7, 'inject'], [3, 'hello'], [15, 'end']] as const);
  b.note(path);
  switch (path) {
    case 'starttls':
      b.send(line(g, 'a STARTTLS', 0.1));
      b.wait(imapTagged('a'), 3000);
      b.step({ op: 'tls', sni: g.pick([HOSTNAME, HOSTNAME, null]), ms: 4000 });
      imapSecure(b);
      return;
    case 'flood':
      flood(b, [g.pick(['a CAPABILITY\r\n', 'a NOOP\r\n', `a NOOP ${ODD.ls}\r\n`])], 'pretls');
      ending(b, null);
      return;
    case 'inject':
      b.send(['a STARTTLS\r\nb LOGIN injected x\r\n']);
      b.wait(imapTagged('a'), 3000);
      b.step({ op: 'tls', sni: HOSTNAME, ms: 4000 });
      imapSecure(b);
      return;
    case 'hello':
      b.helloInDialogue();
      return;
    default:
      ending(b, ['a LOGOUT\r\n']);
  }
}

// ---- POP3 -------------------------------------------------------------------------------------

function pop3Secure(b: Builder) {
  const g = b.g;
  const n = g.weighted([[20, 1], [40, 3], [30, 6], [10, 12]] as const);
  for (let i = 0; i < n; i++) {
    const what = g.weighted([[12, 'stls'], [8, 'capa'], [10, 'user'], [10, 'auth'], [8, 'retr'], [5, 'noop'], [4, 'garbage'], [5, 'long'], [3, 'flood'], [3, 'quit']] as const);
    switch (what) {
      case 'stls':
        b.note('stls-again');
        b.send(g.chance(0.5) ? line(g, 'STLS') : [`${g.pick(['', ' ', '\t', '\x0b'])}${g.pick(['STLS', 'stls', 'Stls'])}${g.pick(['', ' ', '\t', ' x'])}\r\n`]);
        b.wait(POP3_REPLY, 2000);
        break;
      case 'capa':
        b.send(line(g, 'CAPA', 0.15));
        b.wait('(?:^|\\n)\\.\\r?\\n|(?:^|\\n)-ERR[^\\n]*\\n', 2000);
        break;
      case 'user':
        b.send([...line(g, 'USER fuzz', 0.15), ...line(g, 'PASS secret', 0.15), ...(g.chance(0.4) ? ['STLS\r\n'] : [])]);
        b.wait(POP3_REPLY, 2000);
        b.wait(POP3_REPLY, 2000);
        break;
      case 'auth': {
        const style = g.int(4);
        b.note(`auth:${style}`);
        const after = g.chance(0.6) ? g.pick(['STLS\r\n', 'CAPA\r\n', ' STLS\r\n']) : '';
        if (style === 0) b.send([`AUTH PLAIN AGZ1enoAcHc=\r\n${after}`]);
        else if (style === 1) {
          b.send(['AUTH PLAIN\r\n'], {});
          b.wait(POP3_REPLY, 2000);
          b.send([`${g.pick(['AGZ1enoAcHc=', '*', 'STLS'])}\r\n${after}`]);
        } else if (style === 2) b.send([`AUTH\r\n${after}`]);
        else b.send([`AUTH PLAIN\r\nAGZ1enoAcHc=\r\n${after}`]);
        b.wait(POP3_REPLY, 2000);
        b.wait(POP3_REPLY, 2000);
        break;
      }
      case 'retr':
        b.send(line(g, g.pick(['RETR 1', 'TOP 1 0', 'LIST', 'UIDL', 'STAT', 'LIST 1', 'RETR']), 0.15));
        b.wait('(?:^|\\n)\\.\\r?\\n|(?:^|\\n)[+-][^\\n]*\\n', 2000);
        break;
      case 'noop':
        b.send(line(g, g.pick(['NOOP', 'RSET', `NOOP ${ODD.nel}`, 'APOP a b'])));
        b.wait(POP3_REPLY, 2000);
        break;
      case 'garbage': {
        let s = '';
        for (let k = g.pick([1, 16, 300, 5000]); k > 0; k--) s += String.fromCharCode(g.int(256));
        b.note('garbage');
        b.send([s, g.chance(0.5) ? '\r\n' : '']);
        break;
      }
      case 'long':
        b.note('long');
        b.send([g.pick(['STLS', ' STLS', 'USER ', 'NOOP ']), [g.pick([' ', 'x', '\t']), g.pick(LIMITS)], g.pick(['\r\n', '', '\n'])], cut(g));
        break;
      case 'flood':
        flood(b, [g.pick(['STLS\r\n', 'NOOP\r\n', 'CAPA\r\n'])], 'secure');
        break;
      case 'quit':
        b.send(line(g, 'QUIT'));
        b.step({ op: 'linger', ms: 1500 });
        return;
    }
    b.maybePause();
  }
  ending(b, ['QUIT\r\n']);
}

function pop3Session(b: Builder) {
  const g = b.g;
  b.wait(POP3_REPLY, 3000);
  const n = g.weighted([[30, 0], [40, 1], [20, 3], [10, 8]] as const);
  for (let i = 0; i < n; i++) {
    const cmd = g.pick(['CAPA', 'USER fuzz', 'PASS x', 'STLS x', 'AUTH PLAIN', 'NOOP', 'APOP a b', 'UTF8', `USER ${ODD.ls}`, `${ODD.bom}CAPA`, 'QUIT']);
    if (cmd === 'QUIT' && g.chance(0.8)) continue;
    b.send(line(g, cmd));
    if (g.chance(0.6)) b.wait(cmd === 'CAPA' ? '(?:^|\\n)\\.\\r?\\n|(?:^|\\n)-ERR[^\\n]*\\n' : POP3_REPLY, 2500);
    b.maybePause();
  }
  const path = g.weighted([[65, 'stls'], [10, 'flood'], [7, 'inject'], [3, 'hello'], [15, 'end']] as const);
  b.note(path);
  switch (path) {
    case 'stls':
      b.send(line(g, 'STLS', 0.1));
      b.wait(POP3_REPLY, 3000);
      b.step({ op: 'tls', sni: g.pick([HOSTNAME, HOSTNAME, null]), ms: 4000 });
      pop3Secure(b);
      return;
    case 'flood':
      flood(b, [g.pick(['CAPA\r\n', 'NOOP\r\n', `CAPA${ODD.nel}\r\n`])], 'pretls');
      ending(b, null);
      return;
    case 'inject':
      b.send(['STLS\r\nUSER injected\r\n']);
      b.wait(POP3_REPLY, 3000);
      b.step({ op: 'tls', sni: HOSTNAME, ms: 4000 });
      pop3Secure(b);
      return;
    case 'hello':
      b.helloInDialogue();
      return;
    default:
      ending(b, ['QUIT\r\n']);
  }
}

// ---- implicit TLS -----------------------------------------------------------------------------

function implicitSession(b: Builder, hello: Buffer) {
  const g = b.g;
  const path = g.weighted([[50, 'good'], [12, 'truncated'], [8, 'garbage'], [8, 'plaintext'], [8, 'unknown-sni'], [6, 'split'], [8, 'good-rst']] as const);
  b.note(path);
  const h = hello.toString('latin1');
  switch (path) {
    case 'good':
    case 'good-rst':
      b.step({ op: 'tls', sni: g.pick([HOSTNAME, null]), ms: 4000 });
      b.wait(SMTP_REPLY, 3000);
      b.send(line(g, 'EHLO client.fuzz'));
      b.wait(SMTP_REPLY, 3000);
      if (path === 'good-rst') {
        b.send(['MAIL FROM:<a@fuzz.test>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n', 'x'.repeat(g.pick([10, 100_000]))]);
        b.step({ op: 'rst' });
        return;
      }
      b.send(line(g, g.pick(['NOOP', 'STARTTLS', 'XCLIENT NAME=x', 'QUIT'])));
      b.wait(SMTP_REPLY, 2000);
      ending(b, ['QUIT\r\n']);
      return;
    case 'truncated':
      b.send([h.slice(0, g.range(1, h.length - 1))], cut(g));
      if (g.chance(0.5)) b.step({ op: 'fin' });
      b.step({ op: 'linger', ms: 4000 });
      return;
    case 'garbage': {
      let s = String.fromCharCode(g.pick([0x15, 0x17, 0x00, 0xff, 0x16]));
      for (let k = g.pick([4, 100, 3000]); k > 0; k--) s += String.fromCharCode(g.int(256));
      b.send([s], cut(g));
      b.step({ op: 'linger', ms: 4000 });
      return;
    }
    case 'plaintext':
      b.send(line(g, g.pick(['EHLO x', 'a CAPABILITY', 'GET / HTTP/1.1'])));
      b.step({ op: 'linger', ms: 3000 });
      return;
    case 'unknown-sni':
      b.step({ op: 'tls', sni: 'unknown.example.net', ms: 4000 });
      b.step({ op: 'linger', ms: 1000 });
      return;
    default:
      // The real hello one byte at a time, then silence until the handshake deadline.
      b.send([h], { chunk: g.pick([1, 5, 100]), gapMs: g.pick([0, 1]) });
      b.step({ op: 'linger', ms: 4000 });
  }
}

// ---------------------------------------------------------------------------------------------

export interface GenOptions {
  /** Which end-of-DATA dialects SMTP backends read (see fuzz/daemon-backends.ts). */
  dataEnd: 'rfc' | 'lf' | 'both';
  /** A real ClientHello (for implicit-TLS sessions that send one in pieces). */
  hello: Buffer;
}

function backendPlan(g: Rng, opts: GenOptions): Omit<BackendPlan, 'session'> {
  const greeting = g.weighted([[82, 'plain'], [10, 'multiline'], [3, 'refuse'], [3, 'preauth'], [2, 'vanish']] as const);
  return {
    greetDelayMs: g.weighted([[82, 0], [12, g.range(50, 1500)], [6, g.range(3200, 4500)]] as const),
    greeting,
    replyDelayMs: g.weighted([[80, 0], [15, g.range(1, 200)], [5, g.range(300, 900)]] as const),
    stallAfter: g.chance(0.08) ? g.range(1, 6) : null,
    stallMs: g.weighted([[60, g.range(200, 2000)], [40, g.range(3200, 4500)]] as const),
    closeAfter: g.chance(0.04) ? g.range(1, 8) : null,
    closeReset: g.chance(0.5),
    dataReply: g.chance(0.9) ? '354' : '554',
    dataEnd: opts.dataEnd === 'both' ? (g.chance(0.5) ? 'rfc' : 'lf') : opts.dataEnd,
    literalReply: g.weighted([[70, '+'], [15, 'NO'], [15, 'BAD']] as const),
    loginOk: g.chance(0.8),
  };
}

/** The session of this seed. */
export function generate(id: number, seed: number, opts: GenOptions, listener?: ListenerName): SessionScript {
  const g = new Rng(seed);
  const l = listener ?? g.weighted<ListenerName>([[26, 'mx'], [18, 'submission'], [24, 'imap'], [20, 'pop3'], [12, 'smtps']]);
  const backend = backendPlan(g, opts);
  const b = new Builder(g, 9000, backend.greetDelayMs === 0 && backend.replyDelayMs === 0 && backend.stallAfter === null, opts.hello);
  if (l === 'mx' || l === 'submission') smtpSession(b, l);
  else if (l === 'imap') imapSession(b);
  else if (l === 'pop3') pop3Session(b);
  else implicitSession(b, opts.hello);
  return { id, seed, listener: l, kind: b.kind.join(' '), backend, steps: b.steps };
}

// ---------------------------------------------------------------------------------------------
// Running a session

export interface Endpoint {
  port: number;
  caPem: string;
  /** Called once connected, before anything is sent: the backend plan goes in under this port. */
  onConnect(localPort: number): void;
}

export type Event = [ms: number, what: 'out' | 'in' | 'ev', text: string];

export interface SessionRun {
  script: SessionScript;
  localPort: number;
  connected: boolean;
  startedAt: number;
  endedAt: number;
  bytesOut: number;
  bytesIn: number;
  /** True when postern closed the connection before the script was done with it. */
  closedByPeer: boolean;
  tlsOk: boolean | null;
  /** Waits that ended without their reply, and the ms they took. */
  waitsMissed: number;
  waitMsMissed: number;
  transcript: Event[];
  error: string | null;
}

/** Transcript text kept per session (the rest is counted only). */
const TRANSCRIPT_BYTES = 24 * 1024;
/** No session runs longer than this, whatever its steps say. */
const SESSION_CAP_MS = 40_000;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export async function runScript(script: SessionScript, ep: Endpoint): Promise<SessionRun> {
  const t0 = Date.now();
  const run: SessionRun = { script, localPort: 0, connected: false, startedAt: t0, endedAt: t0, bytesOut: 0, bytesIn: 0, closedByPeer: false, tlsOk: null, waitsMissed: 0, waitMsMissed: 0, transcript: [], error: null };
  let kept = 0;
  const record = (what: Event[1], text: string) => {
    if (kept > TRANSCRIPT_BYTES) return;
    const t = text.length > 2048 ? `${text.slice(0, 2048)}...(${text.length} bytes)` : text;
    kept += t.length;
    run.transcript.push([Date.now() - t0, what, t]);
  };

  let raw: net.Socket;
  try {
    raw = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port: ep.port, noDelay: true });
      s.once('connect', () => {
        s.off('error', reject);
        resolve(s);
      });
      s.once('error', reject);
    });
  } catch (err) {
    run.error = `connect: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
    run.endedAt = Date.now();
    return run;
  }
  run.connected = true;
  run.localPort = raw.localPort!;
  ep.onConnect(run.localPort);

  let stream: net.Socket = raw;
  let text = ''; // received text (latin1), from `cursor` on not yet consumed by a wait
  let cursor = 0;
  let closed = false;
  let wake: (() => void) | null = null;
  const notify = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  const onData = (d: Buffer) => {
    run.bytesIn += d.length;
    const s = d.toString('latin1');
    record('in', s);
    text += s;
    // A wait only looks at recent text (after a flood, megabytes of answers may be unread):
    // keep what it scans small, or the fuzzer's own CPU goes into regexes.
    if (text.length - cursor > 32 * 1024) cursor = text.length - 16 * 1024;
    if (cursor > 1 << 20) {
      text = text.slice(cursor);
      cursor = 0;
    }
    notify();
  };
  const onClose = () => {
    if (!closed) {
      closed = true;
      run.closedByPeer = true;
      record('ev', 'closed');
      notify();
    }
  };
  const onError = (e: NodeJS.ErrnoException) => record('ev', `error ${e.code ?? e.message}`);
  const attach = (s: net.Socket) => {
    s.on('data', onData);
    s.on('end', () => record('ev', 'fin from postern'));
    s.on('close', onClose);
    s.on('error', onError);
  };
  attach(raw);
  const until = (pred: () => boolean, ms: number) =>
    new Promise<void>((resolve) => {
      const deadline = Date.now() + ms;
      const check = () => {
        if (pred() || closed || Date.now() >= deadline) return resolve();
        const t = setTimeout(check, Math.min(100, deadline - Date.now()));
        wake = () => {
          clearTimeout(t);
          check();
        };
      };
      check();
    });
  const write = (buf: Buffer): boolean => {
    if (closed || stream.destroyed || !stream.writable) return false;
    run.bytesOut += buf.length;
    stream.write(buf);
    return true;
  };
  const drained = (ms: number) =>
    new Promise<boolean>((resolve) => {
      if (!stream.writableNeedDrain) return resolve(true);
      const s = stream;
      const done = (v: boolean) => {
        clearTimeout(t);
        s.off('drain', onDrain);
        s.off('close', onGone);
        resolve(v);
      };
      const onDrain = () => done(true);
      const onGone = () => done(false);
      const t = setTimeout(() => done(false), ms);
      s.once('drain', onDrain);
      s.once('close', onGone);
    });

  let reset = false;
  const cap = setTimeout(() => {
    record('ev', `session cap ${SESSION_CAP_MS} ms`);
    raw.destroy();
  }, SESSION_CAP_MS);
  try {
    for (const step of script.steps) {
      if (closed && step.op !== 'pause') break;
      switch (step.op) {
        case 'send': {
          const buf = pieceBytes(step.data);
          record('out', buf.toString('latin1'));
          // At most ~2000 writes and ~1.5 s of gaps for one send; past 3 s (postern stopped
          // reading) the rest goes into the socket at once, as a client that does not wait would.
          const gap = step.gapMs ?? 0;
          const chunk = Math.max(step.chunk ?? buf.length, Math.ceil(buf.length / 2000), gap > 0 ? Math.ceil((buf.length * gap) / 1500) : 1, 1);
          const deadline = Date.now() + 3000;
          for (let i = 0; i < buf.length && !closed; i += chunk) {
            if (Date.now() > deadline) {
              record('ev', `send: postern not reading for 3 s, ${buf.length - i} bytes written at once`);
              write(buf.subarray(i));
              break;
            }
            write(buf.subarray(i, i + chunk));
            if (stream.writableNeedDrain) await drained(Math.max(1, deadline - Date.now()));
            if (i + chunk < buf.length) {
              if (gap) await sleep(gap);
              else if (chunk < buf.length) await new Promise((r) => setImmediate(r));
            }
          }
          break;
        }
        case 'pause':
          await sleep(step.ms);
          break;
        case 'wait': {
          const re = new RegExp(step.re, 'm');
          let matched = false;
          const w0 = Date.now();
          await until(() => {
            const m = re.exec(text.slice(cursor));
            if (!m) return false;
            cursor += m.index + m[0].length;
            matched = true;
            return true;
          }, step.ms);
          if (!matched && !closed) {
            record('ev', `no reply in ${step.ms} ms`);
            run.waitsMissed++;
            run.waitMsMissed += Date.now() - w0;
          }
          break;
        }
        case 'tls': {
          // The plaintext reader lets go of the socket; TLS takes it from here.
          raw.off('data', onData);
          raw.pause();
          const s = tls.connect({
            socket: raw,
            ...(step.sni ? { servername: step.sni } : {}),
            ca: ep.caPem,
            rejectUnauthorized: true,
            checkServerIdentity: (_h, cert) => tls.checkServerIdentity(HOSTNAME, cert),
          });
          const ok = await new Promise<boolean>((resolve) => {
            const t = setTimeout(() => resolve(false), step.ms);
            s.once('secureConnect', () => {
              clearTimeout(t);
              resolve(true);
            });
            s.once('error', (e: NodeJS.ErrnoException) => {
              clearTimeout(t);
              record('ev', `tls error ${e.code ?? e.message}`);
              resolve(false);
            });
            s.once('close', () => {
              clearTimeout(t);
              resolve(false);
            });
          });
          s.on('error', () => {});
          run.tlsOk = ok;
          record('ev', ok ? `tls ${s.getProtocol()}` : 'tls failed');
          if (!ok) {
            s.destroy();
            closed = true;
            break;
          }
          stream = s;
          text = '';
          cursor = 0;
          attach(s);
          break;
        }
        case 'read':
          if (step.on) stream.resume();
          else stream.pause();
          record('ev', step.on ? 'reading again' : 'stopped reading');
          break;
        case 'flood': {
          const buf = pieceBytes(step.data);
          const one = buf.length >= 16384 ? buf : Buffer.concat(Array(Math.ceil(16384 / Math.max(1, buf.length))).fill(buf));
          const deadline = Date.now() + step.ms;
          let sent = 0;
          record('out', `flood of ${JSON.stringify(buf.toString('latin1').slice(0, 60))} (${step.bytes} bytes, ${step.ms} ms at most)`);
          while (sent < step.bytes && Date.now() < deadline && !closed) {
            if (stream.writableNeedDrain) {
              await drained(Math.max(1, Math.min(100, deadline - Date.now())));
              continue;
            }
            write(one);
            sent += one.length;
            await new Promise((r) => setImmediate(r));
          }
          record('ev', `flood sent ${sent} bytes`);
          break;
        }
        case 'fin':
          record('ev', 'fin');
          stream.end();
          break;
        case 'rst':
          record('ev', 'rst');
          raw.resetAndDestroy();
          closed = true;
          reset = true;
          break;
        case 'linger':
          // Reading again, so that postern's last words can arrive and its close be seen.
          stream.resume();
          await until(() => false, step.ms);
          break;
      }
    }
  } catch (err) {
    run.error = (err as Error).stack ?? String(err);
  } finally {
    clearTimeout(cap);
    if (!closed) record('ev', 'client closes');
    // Node 24.22 dies of SIGSEGV (ssl3_read_bytes from TLSWrap::OnStreamRead) when a TLSSocket
    // made by tls.connect({ socket }) is destroyed in the same tick as resetAndDestroy() of the
    // socket beneath it and the peer's data arrives: after a reset, the TLS socket goes later.
    if (reset && stream !== raw) setTimeout(() => stream.destroy(), 100);
    else stream.destroy();
    raw.destroy();
    run.endedAt = Date.now();
  }
  return run;
}
