// Small byte-level helpers shared by the STARTTLS dialogues and the after-TLS filters: a partial
// line store, an output collector that keeps untouched bytes zero-copy, the end-of-data scanner
// for SMTP DATA / POP3 multi-line responses, and the limits every dialogue shares.
import { isUtf8 } from 'node:buffer';
import type { RefusalReason } from '../errors.ts';

export const LF = 0x0a;
export const CR = 0x0d;
const EMPTY = Buffer.alloc(0);

/** The bytes of a line whose LF has not arrived yet, kept as slices of the chunks (copied once, when the line completes). */
export class PartialLine {
  private parts: Buffer[] = [];
  length = 0;

  add(b: Buffer): void {
    if (b.length === 0) return;
    this.parts.push(b);
    this.length += b.length;
  }

  /** The stored bytes followed by `tail` as one buffer; the store is empty afterwards. */
  take(tail: Buffer = EMPTY): Buffer {
    if (this.parts.length === 0) return tail;
    const all = tail.length > 0 ? [...this.parts, tail] : this.parts;
    const out = all.length === 1 ? all[0]! : Buffer.concat(all, this.length + tail.length);
    this.parts = [];
    this.length = 0;
    return out;
  }
}

/** Collects output; adjacent slices of the same chunk are merged back into one view, so a chunk that passes untouched is returned without a copy. */
export class Output {
  private parts: Buffer[] = [];
  /** Bytes collected so far. */
  length = 0;

  push(b: Buffer | string): void {
    const buf = typeof b === 'string' ? Buffer.from(b, 'latin1') : b;
    if (buf.length === 0) return;
    this.length += buf.length;
    const last = this.parts[this.parts.length - 1];
    if (last && last.buffer === buf.buffer && last.byteOffset + last.length === buf.byteOffset) {
      this.parts[this.parts.length - 1] = Buffer.from(buf.buffer, last.byteOffset, last.length + buf.length);
    } else this.parts.push(buf);
  }

  result(): Buffer | null {
    if (this.parts.length === 0) return null;
    const out = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts);
    this.parts = [];
    this.length = 0;
    return out;
  }
}

/**
 * postern's own answers in one fromClient() call, and the reason code of each refusal among them;
 * `tally` is the filter's count of refusals over the whole session.
 */
export class Answers extends Output {
  refused: RefusalReason[] | null = null;
  private readonly tally: { refusals: number };

  constructor(tally: { refusals: number }) {
    super();
    this.tally = tally;
  }

  refuse(reason: RefusalReason): void {
    (this.refused ??= []).push(reason);
    this.tally.refusals++;
  }
}

/** Length of the line without its LF / CRLF. */
export function contentLength(line: Buffer): number {
  let n = line.length;
  if (n > 0 && line[n - 1] === LF) n--;
  if (n > 0 && line[n - 1] === CR) n--;
  return n;
}

/** A complete line (ending in LF) split into its text (latin1, so bytes round-trip) and its terminator. */
export function splitEol(line: Buffer): { text: string; eol: string } {
  const n = contentLength(line);
  return { text: line.toString('latin1', 0, n), eol: line.toString('latin1', n) };
}

/**
 * Binary junk in a command line: NUL and other control characters (TAB excepted), DEL, or bytes
 * that are not UTF-8. Well-formed UTF-8 is accepted: a client may use it once postern advertised
 * the backend's SMTPUTF8 (RFC 6531 section 3.3), IMAP4rev2 (RFC 9051 section 4.3) or UTF8
 * (RFC 6856 section 2) capability, and such a command goes on to the backend unchanged.
 */
export function hasBadBytes(line: Buffer): boolean {
  let high = false;
  for (const b of line) {
    if ((b < 0x20 && b !== 0x09) || b === 0x7f) return true;
    if (b >= 0x80) high = true;
  }
  return high && !isUtf8(line);
}

const isBlank = (c: number) => c === 0x20 || c === 0x09;

/**
 * Splits a command line into its upper-cased first word and the rest (leading/trailing blanks
 * removed). A plain scan, not a regex: it is total over any text (U+2028, NEL, lone surrogates)
 * and linear in the line's length, whatever the client sends (threats.md: "Attacker-controlled
 * text never meets a backtracking regex").
 */
export function splitCommand(text: string): { verb: string; args: string } {
  let i = 0;
  while (i < text.length && !isBlank(text.charCodeAt(i))) i++;
  let s = i;
  while (s < text.length && isBlank(text.charCodeAt(s))) s++;
  let e = text.length;
  while (e > s && isBlank(text.charCodeAt(e - 1))) e--;
  return { verb: text.slice(0, i).toUpperCase(), args: text.slice(s, e) };
}

/**
 * The command word a backend would run for this line, read conservatively: leading white space
 * of any kind and any length skipped, then the run of ASCII letters (at most `max` of them),
 * upper-cased ("  xclient\x0bNAME=a" -> "XCLIENT"). Used to refuse commands after TLS, so a
 * padded or oddly separated command is still caught.
 */
export function leadingWord(line: Buffer, max = 64): string {
  const start = skipBlank(line);
  const end = wordEnd(line, start, Math.min(line.length, start + max));
  return line.toString('latin1', start, end).toUpperCase();
}

/**
 * leadingWord of the first bytes of an overlong line, or null when its white space or its word
 * runs to their end: the word a backend reads is then still to come, and cannot be judged.
 */
export function headWord(head: Buffer): string | null {
  return wordEnd(head, skipBlank(head), head.length) < head.length ? leadingWord(head) : null;
}

/** Index of the first byte after leading white space of any kind and any length. */
function skipBlank(line: Buffer): number {
  let i = 0;
  while (i < line.length && (line[i] === 0x20 || (line[i]! >= 0x09 && line[i]! <= 0x0d))) i++;
  return i;
}

/** Index of the first byte at or after `i` (before `end`) that is not an ASCII letter. */
function wordEnd(line: Buffer, i: number, end: number): number {
  while (i < end && (line[i]! | 0x20) >= 0x61 && (line[i]! | 0x20) <= 0x7a) i++;
  return i;
}

/**
 * Message text with every bare LF made CRLF (RFC 5321 section 2.3.8: lines end in CRLF). A
 * backend that ends DATA at "<LF>.<LF>" (Postfix before 3.9, the SMTP smuggling of
 * CVE-2023-51764) and postern, which reads on to "<CR><LF>.<CR><LF>", would otherwise disagree on
 * where the message ends, and the bytes between would reach the backend as unchecked commands.
 * Normalised, every backend ends the message where postern does. `prevCr`: the byte before
 * `from` was CR. Returns whether the last byte was CR. Untouched runs are pushed as views.
 */
export function pushCrlf(chunk: Buffer, from: number, to: number, prevCr: boolean, out: Output): boolean {
  let start = from;
  let lf = chunk.indexOf(LF, from);
  while (lf >= 0 && lf < to) {
    const cr = lf > from ? chunk[lf - 1] === CR : prevCr;
    if (!cr) {
      out.push(chunk.subarray(start, lf));
      out.push(CRLF);
      start = lf + 1;
    }
    lf = chunk.indexOf(LF, lf + 1);
  }
  out.push(chunk.subarray(start, to));
  return to > from ? chunk[to - 1] === CR : prevCr;
}

const CRLF = Buffer.from('\r\n');

/**
 * Finds the end of a dot-terminated body: CRLF "." CRLF, where the first CRLF may be the one
 * that ended the command or status line (an empty body is just ".\r\n"). RFC 5321 section
 * 4.1.1.4 (SMTP DATA) and RFC 1939 section 3 (POP3 multi-line responses). With `bareLf`, LF alone
 * also ends a line (lenient, for POP3 servers that send bare LF).
 */
export class DotTerminator {
  // 0 mid-line, 1 CR seen, 2 at line start, 3 "." at line start, 4 "." CR at line start
  private state = 2;
  private readonly bareLf: boolean;

  constructor(bareLf = false) {
    this.bareLf = bareLf;
  }

  /** The body starts now, at the beginning of a line. */
  reset(): void {
    this.state = 2;
  }

  /** Index just after the terminator in `buf` (searching from `from`), or -1 when the body goes on. */
  scan(buf: Buffer, from: number): number {
    let s = this.state;
    let i = from;
    while (i < buf.length) {
      if (s === 0) {
        // Mid-line: only the next line end matters; find it natively instead of byte by byte
        // (message bodies are the bulk of a session).
        const lf = buf.indexOf(LF, i);
        if (lf < 0) {
          s = buf[buf.length - 1] === CR ? 1 : 0;
          break;
        }
        s = this.bareLf || (lf > i && buf[lf - 1] === CR) ? 2 : 0;
        i = lf + 1;
        continue;
      }
      const b = buf[i];
      if (b === CR) s = s === 3 ? 4 : 1;
      else if (b === LF) {
        if (s === 4 || (s === 3 && this.bareLf)) {
          this.state = 2;
          return i + 1;
        }
        s = s === 1 || this.bareLf ? 2 : 0;
      } else if (b === 0x2e) s = s === 2 ? 3 : 0;
      else s = 0;
      i++;
    }
    this.state = s;
    return -1;
  }
}

/** The last few bytes of a line too long to buffer, enough to see a literal marker such as `{123456}` at its end. */
export class LineTail {
  private bytes = '';

  add(b: Buffer): void {
    this.bytes = (this.bytes + b.toString('latin1', Math.max(0, b.length - 32))).slice(-32);
  }

  take(): string {
    const t = this.bytes;
    this.bytes = '';
    return t;
  }
}

/** Counts error replies of a pre-TLS dialogue; the one that reaches the limit closes the connection instead. */
export const MAX_ERRORS = 10;

/**
 * Commands a pre-TLS dialogue answers before it gives up on the client: a real client needs a
 * handful (greeting, EHLO, STARTTLS). Postfix has the same idea for NOOP/RSET/VRFY/ETRN
 * (smtpd_junk_command_limit, default 100): a client looping on cheap commands is closed.
 */
export const MAX_COMMANDS = 100;
