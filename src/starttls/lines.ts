// Small byte-level helpers shared by the STARTTLS dialogues and the after-TLS filters: a partial
// line store, an output collector that keeps untouched bytes zero-copy, the end-of-data scanner
// for SMTP DATA / POP3 multi-line responses, and a wrapper that keeps a filter from throwing.
import { isUtf8 } from 'node:buffer';
import type { SessionFilter } from './types.ts';

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

  push(b: Buffer | string): void {
    const buf = typeof b === 'string' ? Buffer.from(b, 'latin1') : b;
    if (buf.length === 0) return;
    const last = this.parts[this.parts.length - 1];
    if (last && last.buffer === buf.buffer && last.byteOffset + last.length === buf.byteOffset) {
      this.parts[this.parts.length - 1] = Buffer.from(buf.buffer, last.byteOffset, last.length + buf.length);
    } else this.parts.push(buf);
  }

  result(): Buffer | null {
    if (this.parts.length === 0) return null;
    const out = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts);
    this.parts = [];
    return out;
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

/** Splits a command line into its upper-cased first word and the rest (leading/trailing blanks removed). */
export function splitCommand(text: string): { verb: string; args: string } {
  const m = /^([^ \t]*)[ \t]*(.*?)[ \t]*$/.exec(text)!;
  return { verb: m[1]!.toUpperCase(), args: m[2]! };
}

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
    for (let i = from; i < buf.length; i++) {
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

/**
 * A filter that must never throw (it sits in the data path): an unexpected error turns it into a
 * plain pipe for the rest of the session, so no byte is lost.
 */
export function neverThrow(inner: Required<SessionFilter>): SessionFilter {
  let broken = false;
  return {
    fromClient(chunk) {
      if (!broken) {
        try {
          return inner.fromClient(chunk);
        } catch {
          broken = true;
        }
      }
      return { toBackend: chunk, toClient: null };
    },
    fromBackend(chunk) {
      if (!broken) {
        try {
          return inner.fromBackend(chunk);
        } catch {
          broken = true;
        }
      }
      return chunk;
    },
    ready: () => broken || inner.ready(),
    greeted: () => broken || inner.greeted(),
  };
}

/** Counts error replies of a pre-TLS dialogue; the one that reaches the limit closes the connection instead. */
export const MAX_ERRORS = 10;
