// The SMTP session after STARTTLS (or after a plaintext handoff): drops the backend's greeting and
// the replies to replayed commands, removes STARTTLS from EHLO replies, answers a second STARTTLS
// and XCLIENT/XFORWARD itself, and lets message content (DATA, BDAT) through as raw bytes that
// are never parsed. SMTP stays filtered for the whole session: any later command line may be one
// that postern refuses.
import { LOCAL_REPLY_BUDGET, MAX_REFUSALS, MAX_OUTSTANDING, type FilterOptions, type FilterStep, type SessionFilter } from './types.ts';
import { RefusalReason } from '../errors.ts';
import { Answers, DotTerminator, LF, Output, PartialLine, leadingWord, pushCrlf, splitEol, contentLength, headWord } from './lines.ts';

/**
 * A command line longer than this is not held. RFC 5321 section 4.5.3.1.4 allows 512 octets;
 * only AUTH may legitimately be longer (RFC 4954 section 4: an initial response, up to 12288), so
 * an overlong AUTH line or SASL response is forwarded as it comes and any other is refused here.
 */
const MAX_COMMAND = 4096;
/** A backend reply larger than this is passed through unmodified instead of being held. */
const MAX_REPLY = 65536;

/** What each command forwarded to the backend is waiting for, in order (RFC 2920: replies come in command order). */
type Expect = { kind: 'reply' } | { kind: 'data' } | { kind: 'local'; text: string };

const REFUSED_XCLIENT = '550 5.7.0 Command not permitted through postern\r\n';
const OVERLONG = '500 5.5.6 Line too long\r\n';

export function smtpFilter(opts: FilterOptions): SessionFilter {
  return new SmtpFilter(opts);
}

class SmtpFilter implements SessionFilter {
  /** Refusals over the whole session (MAX_REFUSALS). */
  private readonly tally = { refusals: 0 };
  private greetingDone = false;
  private swallow: number;
  private readonly starttlsAnswer: string;
  private readonly forwardGreeting: boolean;
  private readonly expect: Expect[] = [];
  // backend -> client
  private readonly backendLine = new PartialLine();
  private reply: Buffer[] = []; // complete lines of the reply being assembled
  private replyBytes = 0;
  private backendRaw = false; // inside an oversized line or reply: passed as it comes
  // client -> backend
  private mode: 'cmd' | 'data' | 'bdat' | 'long' | 'discard' = 'cmd';
  private readonly clientLine = new PartialLine();
  private readonly dot = new DotTerminator(true);
  private dataCr = false; // DATA: the last byte of message text passed on was CR
  private bdatLeft = 0;
  private saslResponse = false; // the last reply was 334: the next client line is an AUTH response
  private waitingData = false; // DATA forwarded, its reply not seen yet

  constructor(opts: FilterOptions) {
    this.swallow = opts.swallow;
    this.forwardGreeting = opts.forwardGreeting === true;
    // RFC 3207 section 4.2: after TLS, STARTTLS is a bad sequence; on a plaintext session that
    // postern handed to the backend, TLS cannot start any more: 454, "temporary reason".
    this.starttlsAnswer = opts.tls ? '503 5.5.1 TLS already active\r\n' : '454 4.7.0 TLS not available due to temporary reason\r\n';
  }

  greeted(): boolean {
    return this.greetingDone;
  }

  /**
   * Also false between DATA and the backend's answer to it: the client must wait for 354
   * (RFC 5321 section 4.1.1.4, RFC 2920 section 3.1), and whether the bytes after DATA are message
   * text or commands is the backend's decision, so postern reads them only once it knows.
   */
  ready(): boolean {
    if (!this.greetingDone || this.swallow > 0 || this.tally.refusals >= MAX_REFUSALS) return false;
    // Waits start and end at command boundaries: message text and the rest of a line go on.
    return this.mode !== 'cmd' || (!this.waitingData && this.expect.length < MAX_OUTSTANDING);
  }

  passthrough(): boolean {
    return false;
  }

  fromClient(chunk: Buffer): FilterStep {
    const out = new Output();
    const local = new Answers(this.tally);
    let i = 0;
    while (i < chunk.length) {
      if (this.mode === 'data') {
        // RFC 5321 section 4.1.1.4: the message ends at CRLF "." CRLF; dot-stuffed lines pass as
        // sent. Bare LFs become CRLF on the way (pushCrlf), so the end is read here the way every
        // backend will read it: an LF ends a line whether a CR came before it or not.
        const end = this.dot.scan(chunk, i);
        const to = end < 0 ? chunk.length : end;
        this.dataCr = pushCrlf(chunk, i, to, this.dataCr, out);
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
      } else if (this.mode === 'long' || this.mode === 'discard') {
        const lf = chunk.indexOf(LF, i);
        if (this.mode === 'long') out.push(chunk.subarray(i, lf < 0 ? chunk.length : lf + 1));
        if (lf < 0) break;
        i = lf + 1;
        this.mode = 'cmd';
      } else {
        // At a command boundary: stop where the backend must answer first, or where postern has
        // said enough for the client to read before it hears more.
        if (this.clientLine.length === 0 && (!this.ready() || local.length >= LOCAL_REPLY_BUDGET)) {
          return { toBackend: out.result(), toClient: local.result(), refused: local.refused, rest: chunk.subarray(i) };
        }
        const lf = chunk.indexOf(LF, i);
        if (lf < 0) {
          this.clientLine.add(chunk.subarray(i));
          if (this.clientLine.length > MAX_COMMAND) this.overlong(out, local, 'long');
          break;
        }
        // A line over the limit is treated the same whether its end came with it or not, so
        // that how the client's bytes were split never changes what postern does.
        if (this.clientLine.length + lf + 1 - i > MAX_COMMAND) {
          this.clientLine.add(chunk.subarray(i, lf + 1));
          this.overlong(out, local, 'cmd');
        } else this.command(this.clientLine.take(chunk.subarray(i, lf + 1)), out, local);
        i = lf + 1;
      }
    }
    return { toBackend: out.result(), toClient: local.result(), refused: local.refused, rest: null };
  }

  /** postern's own answer, in its place among the replies to pipelined commands. */
  private answer(text: string, reason: RefusalReason, local: Answers): void {
    local.refuse(reason);
    if (this.expect.length === 0) local.push(text);
    else this.expect.push({ kind: 'local', text });
  }

  /**
   * A command line over MAX_COMMAND, decided on its first bytes: an AUTH line or a SASL response
   * is forwarded, anything else answered 500 and dropped. `then`: 'long' while its end has not
   * arrived (the rest follows the same way), 'cmd' when it came whole.
   */
  private overlong(out: Output, local: Answers, then: 'long' | 'cmd'): void {
    const head = this.clientLine.take();
    // Decided on exactly the first MAX_COMMAND + 1 bytes, however many have come, and only on a
    // verb that ends inside them.
    if (this.saslResponse || headWord(head.subarray(0, MAX_COMMAND + 1)) === 'AUTH') {
      this.saslResponse = false;
      out.push(head);
      this.expect.push({ kind: 'reply' });
      this.mode = then;
      return;
    }
    this.answer(OVERLONG, RefusalReason.lineTooLong, local);
    this.mode = then === 'long' ? 'discard' : 'cmd';
  }

  private command(line: Buffer, out: Output, local: Answers): void {
    if (this.saslResponse) {
      // RFC 4954 section 4: a base64 line answering a 334 challenge, not a command.
      this.saslResponse = false;
      out.push(line);
      this.expect.push({ kind: 'reply' });
      return;
    }
    const verb = leadingWord(line);
    if (verb === 'STARTTLS') {
      // STARTTLS is never advertised after TLS (or after the handoff); the answer keeps its
      // place among the replies to pipelined commands.
      return this.answer(this.starttlsAnswer, RefusalReason.starttlsRefused, local);
    }
    if (verb === 'XCLIENT' || verb === 'XFORWARD') {
      // Postfix trusts these from smtpd_authorized_xclient_hosts; the backend sees postern's own
      // address, so a client could otherwise claim any identity. The client's real address
      // travels in the PROXY header instead.
      return this.answer(REFUSED_XCLIENT, RefusalReason.commandNotPermitted, local);
    }
    out.push(line);
    if (verb === 'DATA') {
      this.expect.push({ kind: 'data' });
      this.waitingData = true;
      return;
    }
    this.expect.push({ kind: 'reply' });
    if (verb === 'BDAT') {
      // Only an exact BDAT line counts: if postern took chunk octets for commands it would at
      // worst refuse too much; the reverse would let unchecked lines reach the backend.
      const bdat = /^BDAT[ \t]+(\d{1,15})(?:[ \t]+LAST)?[ \t]*$/i.exec(line.toString('latin1', 0, contentLength(line)));
      if (bdat) {
        this.bdatLeft = Number(bdat[1]);
        if (this.bdatLeft > 0) this.mode = 'bdat';
      }
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
      // After STARTTLS the client already has postern's 220; a refusal (4xx/5xx) must still reach
      // it. On an implicit TLS listener the backend's greeting is the client's first reply
      // (RFC 8314 section 3.3: the SMTP session starts once TLS is up).
      if (this.forwardGreeting || code < 200 || code >= 300) for (const l of lines) out.push(l);
      return;
    }
    if (this.swallow > 0) {
      this.swallow--;
      return;
    }
    const head = this.expect[0];
    if (head?.kind === 'data') {
      this.waitingData = false;
      if (code === 354) {
        // The message follows; the reply after its end answers this same DATA.
        this.expect[0] = { kind: 'reply' };
        this.mode = 'data';
        this.dot.reset();
        this.dataCr = false;
      } else this.expect.shift();
    } else if (head) this.expect.shift();
    this.saslResponse = code === 334 && this.expect.length === 0;
    for (const l of code === 250 ? withoutHidden(lines) : lines) out.push(l);
    while (this.expect[0]?.kind === 'local') out.push((this.expect.shift() as { text: string }).text);
  }
}

/** EHLO keywords postern answers itself (refuses): never announced to the client. */
const HIDDEN_KEYWORDS = new Set(['STARTTLS', 'XCLIENT', 'XFORWARD']);

/**
 * An EHLO reply without its STARTTLS, XCLIENT and XFORWARD lines; the new last line gets "250 "
 * (RFC 5321 section 4.2.1).
 */
function withoutHidden(lines: Buffer[]): Buffer[] {
  const keep = lines.filter((l, i) => i === 0 || !HIDDEN_KEYWORDS.has(leadingWord(l.subarray(4))));
  if (keep.length === lines.length) return lines;
  return keep.map((l, i) => {
    const { text, eol } = splitEol(l);
    const sep = i === keep.length - 1 ? ' ' : '-';
    const rest = text.slice(4);
    return Buffer.from(`${text.slice(0, 3)}${rest === '' && sep === ' ' ? '' : sep}${rest}${eol}`, 'latin1');
  });
}
