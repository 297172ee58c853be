// The SMTP session after STARTTLS (or after a plaintext handoff): drops the backend's greeting and
// the replies to replayed commands, removes STARTTLS from EHLO replies, answers a second STARTTLS
// itself, and lets message content (DATA, BDAT) through as raw bytes that are never parsed.
import type { FilterOptions, SessionFilter } from './types.ts';
import { DotTerminator, LF, Output, PartialLine, neverThrow, splitEol, contentLength } from './lines.ts';

/** A command line longer than this is forwarded as it is (the backend rejects it). */
const MAX_COMMAND = 4096;
/** A backend reply larger than this is passed through unmodified instead of being held. */
const MAX_REPLY = 65536;

/** What each command forwarded to the backend is waiting for, in order (RFC 2920: replies come in command order). */
type Expect = { kind: 'reply' } | { kind: 'data' } | { kind: 'local'; text: string };

export function smtpFilter(opts: FilterOptions): SessionFilter {
  return neverThrow(new SmtpFilter(opts.swallow));
}

class SmtpFilter {
  private greetingDone = false;
  private swallow: number;
  private readonly expect: Expect[] = [];
  // backend -> client
  private readonly backendLine = new PartialLine();
  private reply: Buffer[] = []; // complete lines of the reply being assembled
  private replyBytes = 0;
  private backendRaw = false; // inside an oversized line or reply: passed as it comes
  // client -> backend
  private mode: 'cmd' | 'data-wait' | 'data' | 'bdat' | 'long' = 'cmd';
  private readonly clientLine = new PartialLine();
  private readonly dot = new DotTerminator();
  private bdatLeft = 0;
  private saslResponse = false; // the last reply was 334: the next client line is an AUTH response

  constructor(swallow: number) {
    this.swallow = swallow;
  }

  greeted(): boolean {
    return this.greetingDone;
  }

  /**
   * Also false between DATA and the backend's answer to it: the client must wait for 354
   * (RFC 5321 section 4.1.1.4, RFC 2920 section 3.1), and holding early bytes keeps postern's view
   * of "command or message text" the same as the backend's.
   */
  ready(): boolean {
    return this.greetingDone && this.swallow === 0 && this.mode !== 'data-wait';
  }

  fromClient(chunk: Buffer): { toBackend: Buffer | null; toClient: Buffer | null } {
    const out = new Output();
    const local = new Output();
    let i = 0;
    while (i < chunk.length) {
      if (this.mode === 'data-wait') {
        // Message text before the 354 (the client did not wait): treat it as the message, as the
        // backend will if it accepts the DATA.
        this.mode = 'data';
        this.dot.reset();
      }
      if (this.mode === 'data') {
        // RFC 5321 section 4.1.1.4: the message ends at CRLF "." CRLF; dot-stuffed lines pass as sent.
        const end = this.dot.scan(chunk, i);
        out.push(chunk.subarray(i, end < 0 ? chunk.length : end));
        if (end < 0) break;
        i = end;
        this.mode = 'cmd';
      } else if (this.mode === 'bdat') {
        // RFC 3030 section 2: exactly <n> octets follow the BDAT command line.
        const n = Math.min(this.bdatLeft, chunk.length - i);
        out.push(chunk.subarray(i, i + n));
        i += n;
        this.bdatLeft -= n;
        if (this.bdatLeft === 0) this.mode = 'cmd';
      } else if (this.mode === 'long') {
        const lf = chunk.indexOf(LF, i);
        out.push(chunk.subarray(i, lf < 0 ? chunk.length : lf + 1));
        if (lf < 0) break;
        i = lf + 1;
        this.mode = 'cmd';
        this.expect.push({ kind: 'reply' });
      } else {
        const lf = chunk.indexOf(LF, i);
        if (lf < 0) {
          this.clientLine.add(chunk.subarray(i));
          if (this.clientLine.length > MAX_COMMAND) {
            out.push(this.clientLine.take());
            this.mode = 'long';
          }
          break;
        }
        this.command(this.clientLine.take(chunk.subarray(i, lf + 1)), out, local);
        i = lf + 1;
      }
    }
    return { toBackend: out.result(), toClient: local.result() };
  }

  private command(line: Buffer, out: Output, local: Output): void {
    if (this.saslResponse) {
      // RFC 4954 section 4: a base64 line answering a 334 challenge, not a command.
      this.saslResponse = false;
      out.push(line);
      this.expect.push({ kind: 'reply' });
      return;
    }
    const text = line.toString('latin1', 0, contentLength(line));
    const verb = (/^[^ \t]*/.exec(text)![0]).toUpperCase();
    if (verb === 'STARTTLS') {
      // RFC 3207 section 4.2: TLS is already active (STARTTLS is never advertised after it);
      // the answer keeps its place among the replies to pipelined commands.
      const text503 = '503 5.5.1 TLS already active\r\n';
      if (this.expect.length === 0) local.push(text503);
      else this.expect.push({ kind: 'local', text: text503 });
      return;
    }
    if (verb === 'XCLIENT' || verb === 'XFORWARD') {
      // Postfix trusts these from smtpd_authorized_xclient_hosts; the backend sees postern's own
      // address, so a client could otherwise claim any identity. The client's real address
      // travels in the PROXY header instead.
      const text550 = '550 5.7.0 Command not permitted through postern\r\n';
      if (this.expect.length === 0) local.push(text550);
      else this.expect.push({ kind: 'local', text: text550 });
      return;
    }
    out.push(line);
    if (verb === 'DATA') {
      this.expect.push({ kind: 'data' });
      this.mode = 'data-wait';
      return;
    }
    this.expect.push({ kind: 'reply' });
    const bdat = verb === 'BDAT' ? /^BDAT[ \t]+(\d{1,15})(?:[ \t]+LAST)?[ \t]*$/i.exec(text) : null;
    if (bdat) {
      this.bdatLeft = Number(bdat[1]);
      if (this.bdatLeft > 0) this.mode = 'bdat';
    }
  }

  fromBackend(chunk: Buffer): Buffer | null {
    const out = new Output();
    let i = 0;
    while (i < chunk.length) {
      const lf = chunk.indexOf(LF, i);
      if (this.backendRaw) {
        out.push(chunk.subarray(i, lf < 0 ? chunk.length : lf + 1));
        if (lf < 0) break;
        i = lf + 1;
        this.backendRaw = false;
        continue;
      }
      if (lf < 0) {
        this.backendLine.add(chunk.subarray(i));
        if (this.backendLine.length > MAX_REPLY) this.passRaw(out, this.backendLine.take());
        break;
      }
      this.backendReplyLine(this.backendLine.take(chunk.subarray(i, lf + 1)), out);
      i = lf + 1;
    }
    return out.result();
  }

  /** Protocol violation or an oversized reply: what is held goes out unchanged, the rest of the line follows raw. */
  private passRaw(out: Output, partial: Buffer): void {
    for (const l of this.reply) out.push(l);
    this.reply = [];
    this.replyBytes = 0;
    out.push(partial);
    this.backendRaw = true;
  }

  private backendReplyLine(line: Buffer, out: Output): void {
    // RFC 5321 section 4.2: Reply-line = *( Reply-code "-" [ textstring ] CRLF ) Reply-code [ SP textstring ] CRLF
    const { text } = splitEol(line);
    const m = /^(\d{3})([ -]|$)/.exec(text);
    if (!m) {
      // Not SMTP: pass it on as it is (a greeting that is not a reply still counts as the greeting).
      for (const l of this.reply) out.push(l);
      out.push(line);
      this.reply = [];
      this.replyBytes = 0;
      this.greetingDone = true;
      return;
    }
    this.reply.push(line);
    this.replyBytes += line.length;
    if (m[2] === '-') {
      if (this.replyBytes > MAX_REPLY) {
        for (const l of this.reply) out.push(l);
        this.reply = [];
        this.replyBytes = 0;
      }
      return;
    }
    const lines = this.reply;
    this.reply = [];
    this.replyBytes = 0;
    this.completeReply(Number(m[1]), lines, out);
  }

  private completeReply(code: number, lines: Buffer[], out: Output): void {
    if (!this.greetingDone) {
      this.greetingDone = true;
      // The client already has postern's 220; a refusal (4xx/5xx) must still reach it.
      if (code < 200 || code >= 300) for (const l of lines) out.push(l);
      return;
    }
    if (this.swallow > 0) {
      this.swallow--;
      return;
    }
    const head = this.expect[0];
    if (head?.kind === 'data' && code === 354) {
      // The message follows; the reply after its end answers this same DATA.
      this.expect[0] = { kind: 'reply' };
      if (this.mode === 'data-wait') {
        this.mode = 'data';
        this.dot.reset();
      }
    } else if (head) {
      this.expect.shift();
      if (head.kind === 'data' && this.mode === 'data-wait') this.mode = 'cmd';
    }
    this.saslResponse = code === 334 && this.expect.length === 0;
    for (const l of code === 250 ? withoutStarttls(lines) : lines) out.push(l);
    while (this.expect[0]?.kind === 'local') out.push((this.expect.shift() as { text: string }).text);
  }
}

/** An EHLO reply without its STARTTLS line; the new last line gets "250 " (RFC 5321 section 4.2.1). */
function withoutStarttls(lines: Buffer[]): Buffer[] {
  const keep = lines.filter((l, i) => i === 0 || splitEol(l).text.slice(4).trim().toUpperCase() !== 'STARTTLS');
  if (keep.length === lines.length) return lines;
  return keep.map((l, i) => {
    const { text, eol } = splitEol(l);
    const sep = i === keep.length - 1 ? ' ' : '-';
    const rest = text.slice(4);
    return Buffer.from(`${text.slice(0, 3)}${rest === '' && sep === ' ' ? '' : sep}${rest}${eol}`, 'latin1');
  });
}
