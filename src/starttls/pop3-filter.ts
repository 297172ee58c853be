// The POP3 session after STLS (or after a plaintext handoff): drops the backend's greeting, removes
// STLS from CAPA responses, answers a second STLS itself, and passes message content (RETR, TOP)
// through as raw bytes that are never parsed. Once the client has logged in (+OK to PASS, APOP or
// AUTH) the session is in the TRANSACTION state, where STLS is not valid (RFC 2595 section 4):
// the filter steps aside and the rest is piped raw.
import { LOCAL_REPLY_BUDGET, MAX_REFUSALS, MAX_OUTSTANDING, type FilterOptions, type FilterStep, type SessionFilter } from './types.ts';
import { RefusalReason } from '../errors.ts';
import { Answers, DotTerminator, LF, Output, PartialLine, contentLength, leadingWord, splitCommand, splitEol, headWord } from './lines.ts';

/** Lines longer than this are forwarded as they come (RFC 2449 section 4 allows 255 / 512 octets). */
const MAX_LINE = 4096;
/** RFC 2449 section 4: commands are at most 255 octets; a longer line without a readable command is refused. */
const OVERLONG = '-ERR Line too long\r\n';

/**
 * What each command forwarded to the backend waits for, in order (RFC 2449 section 6.6: with
 * PIPELINING, responses come in command order): one status line, a multi-line response when the
 * status is +OK (RFC 1939 section 3), an AUTH exchange (RFC 5034 section 4) that ends at +OK /
 * -ERR, or the answer to PASS / APOP, whose +OK ends the AUTHORIZATION state.
 */
type Expect = { kind: 'single' | 'multi' | 'capa' | 'auth' | 'login' } | { kind: 'local'; text: string };

export function pop3Filter(opts: FilterOptions): SessionFilter {
  return new Pop3Filter(opts);
}

class Pop3Filter implements SessionFilter {
  /** Refusals over the whole session (MAX_REFUSALS). */
  private readonly tally = { refusals: 0 };
  private greetingDone = false;
  private swallow: number; // status lines still to drop
  private readonly stlsAnswer: string;
  private readonly forwardGreeting: boolean;
  private raw = false; // logged in: nothing more to rewrite
  /**
   * An AUTH exchange waits for the backend (RFC 5034 section 4: the client sends each response
   * only after a "+ " challenge): whether the next client line is a SASL response or a command is
   * the backend's decision, so postern reads it only once it knows.
   */
  private authWait = false;
  private readonly expect: Expect[] = [];
  // client -> backend
  private clientMode: 'line' | 'long' | 'auth-long' | 'sasl' | 'sasl-long' | 'discard' = 'line';
  private readonly clientLine = new PartialLine();
  // backend -> client
  private backendMode: 'line' | 'long' | 'body' | 'capa' = 'line';
  private afterLong: 'line' | 'capa' = 'line'; // the mode an oversized line returns to
  private readonly backendLine = new PartialLine();
  private readonly dot = new DotTerminator(true);

  constructor(opts: FilterOptions) {
    this.swallow = opts.swallow;
    this.forwardGreeting = opts.forwardGreeting === true;
    // RFC 2595 section 4: STLS after TLS is refused; on a plaintext session handed to the backend
    // TLS can no longer start.
    this.stlsAnswer = opts.tls ? '-ERR TLS already active\r\n' : '-ERR [SYS/TEMP] STLS not available now\r\n';
  }

  greeted(): boolean {
    return this.greetingDone;
  }

  ready(): boolean {
    if (this.raw) return true;
    if (!this.greetingDone || this.swallow > 0 || this.tally.refusals >= MAX_REFUSALS) return false;
    // Waits start and end at line boundaries: the rest of a line being passed goes on.
    return this.clientMode !== 'line' || (!this.authWait && this.expect.length < MAX_OUTSTANDING);
  }

  passthrough(): boolean {
    return this.raw;
  }

  fromClient(chunk: Buffer): FilterStep {
    if (this.raw) return { toBackend: this.clientLine.take(chunk), toClient: null, refused: null, rest: null };
    const out = new Output();
    const local = new Answers(this.tally);
    let i = 0;
    while (i < chunk.length) {
      const lf = chunk.indexOf(LF, i);
      if (this.clientMode === 'long' || this.clientMode === 'auth-long' || this.clientMode === 'sasl-long' || this.clientMode === 'discard') {
        if (this.clientMode !== 'discard') out.push(chunk.subarray(i, lf < 0 ? chunk.length : lf + 1));
        if (lf < 0) break;
        i = lf + 1;
        // An AUTH command or a SASL response is complete: the backend speaks next.
        if (this.clientMode === 'sasl-long' || this.clientMode === 'auth-long') this.authWait = true;
        this.clientMode = 'line';
        continue;
      }
      if (this.clientLine.length === 0 && (!this.ready() || local.length >= LOCAL_REPLY_BUDGET)) {
        return { toBackend: out.result(), toClient: local.result(), refused: local.refused, rest: chunk.subarray(i) };
      }
      if (lf < 0) {
        this.clientLine.add(chunk.subarray(i));
        if (this.clientLine.length > MAX_LINE) this.overlong(out, local, false);
        break;
      }
      // A line over the limit is treated the same whether its end came with it or not, so that
      // how the client's bytes were split never changes what postern does.
      if (this.clientLine.length + lf + 1 - i > MAX_LINE) {
        this.clientLine.add(chunk.subarray(i, lf + 1));
        this.overlong(out, local, true);
      } else this.clientCommand(this.clientLine.take(chunk.subarray(i, lf + 1)), out, local);
      i = lf + 1;
    }
    return { toBackend: out.result(), toClient: local.result(), refused: local.refused, rest: null };
  }

  /** postern's own answer, in its place among the responses to pipelined commands. */
  private answer(text: string, reason: RefusalReason, local: Answers): void {
    local.refuse(reason);
    if (this.expect.length === 0) local.push(text);
    else this.expect.push({ kind: 'local', text });
  }

  /**
   * A line over MAX_LINE, decided on its first bytes: a SASL response or a command forwarded as
   * it comes (its expected answer read from its head), STLS answered and dropped. `complete`: its
   * LF came with it.
   */
  private overlong(out: Output, local: Answers, complete: boolean): void {
    const head = this.clientLine.take();
    if (this.clientMode === 'sasl') {
      out.push(head);
      if (complete) {
        this.clientMode = 'line';
        this.authWait = true;
      } else this.clientMode = 'sasl-long';
      return;
    }
    // Decided on exactly the first MAX_LINE + 1 bytes, however many have come: white space as
    // long as that hides the command a backend would read after it (an STLS), so it is refused.
    const word = headWord(head.subarray(0, MAX_LINE + 1));
    if (word === null || word === 'STLS') {
      if (word === null) this.answer(OVERLONG, RefusalReason.lineTooLong, local);
      else this.answer(this.stlsAnswer, RefusalReason.starttlsRefused, local);
      if (!complete) this.clientMode = 'discard';
      return;
    }
    out.push(head);
    const { verb, args } = splitCommand(head.toString('latin1', 0, Math.min(head.length, MAX_LINE)));
    const kind = expectFor(verb, args);
    this.expect.push({ kind });
    if (complete) this.authWait = kind === 'auth';
    else this.clientMode = kind === 'auth' ? 'auth-long' : 'long';
  }

  private clientCommand(line: Buffer, out: Output, local: Answers): void {
    if (this.clientMode === 'sasl') {
      // RFC 5034 section 4: a base64 answer to a "+ " challenge, not a command; then the backend
      // speaks again.
      out.push(line);
      this.clientMode = 'line';
      this.authWait = true;
      return;
    }
    if (leadingWord(line) === 'STLS') {
      // RFC 2595 section 4. The answer keeps its place among the responses to pipelined commands.
      return this.answer(this.stlsAnswer, RefusalReason.starttlsRefused, local);
    }
    const { verb, args } = splitCommand(line.toString('latin1', 0, contentLength(line)));
    out.push(line);
    const kind = expectFor(verb, args);
    this.expect.push({ kind });
    if (kind === 'auth') this.authWait = true;
  }

  fromBackend(chunk: Buffer): Buffer | null {
    if (this.raw) return this.backendLine.take(chunk);
    const out = new Output();
    let i = 0;
    while (i < chunk.length) {
      if (this.raw) {
        // The login succeeded on the line just read: the rest belongs to the TRANSACTION state.
        out.push(chunk.subarray(i));
        break;
      }
      if (this.backendMode === 'body') {
        // RFC 1939 section 3: the response ends at a line holding only "."; byte-stuffed lines
        // (and any STLS inside a message) pass as they are.
        const end = this.dot.scan(chunk, i);
        out.push(chunk.subarray(i, end < 0 ? chunk.length : end));
        if (end < 0) break;
        i = end;
        this.backendMode = 'line';
        this.drainLocal(out);
        continue;
      }
      const lf = chunk.indexOf(LF, i);
      if (this.backendMode === 'long') {
        out.push(chunk.subarray(i, lf < 0 ? chunk.length : lf + 1));
        if (lf < 0) break;
        i = lf + 1;
        this.backendMode = this.afterLong;
        continue;
      }
      if (lf < 0) {
        this.backendLine.add(chunk.subarray(i));
        if (this.backendLine.length > MAX_LINE) {
          // Not a status or capability line POP3 knows: pass it on as it comes.
          out.push(this.backendLine.take());
          this.afterLong = this.backendMode === 'capa' ? 'capa' : 'line';
          this.backendMode = 'long';
          this.greetingDone = true;
        }
        break;
      }
      const line = this.backendLine.take(chunk.subarray(i, lf + 1));
      i = lf + 1;
      if (this.backendMode === 'capa') this.capaLine(line, out);
      else this.statusLine(line, out);
    }
    return out.result();
  }

  private capaLine(line: Buffer, out: Output): void {
    const { text } = splitEol(line);
    if (text === '.') {
      out.push(line);
      this.backendMode = 'line';
      this.drainLocal(out);
    } else if (leadingWord(line) !== 'STLS') out.push(line);
  }

  private statusLine(line: Buffer, out: Output): void {
    const { text } = splitEol(line);
    const ok = text.startsWith('+OK');
    if (!this.greetingDone) {
      this.greetingDone = true;
      // A -ERR greeting (the backend refuses) must reach the client; on an implicit TLS listener
      // every greeting does (its APOP timestamp too, RFC 1939 section 7).
      if (!ok || this.forwardGreeting) out.push(line);
      return;
    }
    if (this.swallow > 0) {
      this.swallow--;
      return;
    }
    out.push(line);
    const head = this.expect[0];
    if (!head) return; // unsolicited (e.g. a -ERR before the backend closes)
    if (head.kind === 'auth') {
      this.authWait = false;
      if (text.startsWith('+') && !ok) {
        // A "+ " challenge: the client's next line is its response (if the exchange is the only
        // thing outstanding; anything else means the client did not wait, and its lines stay commands).
        if (this.expect.length === 1) this.clientMode = 'sasl';
        return;
      }
      this.clientMode = 'line';
    }
    this.expect.shift();
    if (ok && head.kind === 'multi') {
      this.backendMode = 'body';
      this.dot.reset();
    } else if (ok && head.kind === 'capa') this.backendMode = 'capa';
    else {
      this.drainLocal(out);
      // Logged in, and no answer of postern's own is still waiting for its place: step aside.
      if (ok && (head.kind === 'login' || head.kind === 'auth') && !this.expect.some((e) => e.kind === 'local')) this.raw = true;
    }
  }

  private drainLocal(out: Output): void {
    while (this.expect[0]?.kind === 'local') out.push((this.expect.shift() as { text: string }).text);
  }
}

/** Which commands get a multi-line response after +OK (RFC 1939 sections 5 and 7, RFC 2449 section 5). */
function expectFor(verb: string, args: string): 'single' | 'multi' | 'capa' | 'auth' | 'login' {
  switch (verb) {
    case 'CAPA':
      return 'capa';
    case 'RETR':
    case 'TOP':
      return 'multi';
    case 'LIST':
    case 'UIDL':
      return args === '' ? 'multi' : 'single';
    case 'AUTH':
      // Without a mechanism, many servers (Dovecot among them) list the mechanisms, "."-ended.
      return args === '' ? 'multi' : 'auth';
    case 'PASS':
    case 'APOP':
      return 'login';
    default:
      return 'single';
  }
}
