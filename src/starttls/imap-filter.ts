// The IMAP session after STARTTLS (or after a plaintext handoff): drops the backend's greeting,
// removes STARTTLS and LOGINDISABLED from capability lists, answers a second STARTTLS itself, and
// passes literals (APPEND data from the client, FETCH data from the server) through as raw bytes
// that are never parsed. Once the client is authenticated (a tagged OK to LOGIN or AUTHENTICATE,
// or a PREAUTH greeting) nothing is left to rewrite: STARTTLS is only valid in the
// not-authenticated state (RFC 9051 section 6.2.1), so the filter steps aside and the session is
// piped raw, which is also what a compression layer needs (RFC 4978 COMPRESS=DEFLATE, valid only
// once authenticated, changes every byte after its tagged OK).
import { LOCAL_REPLY_BUDGET, MAX_REFUSALS, type FilterOptions, type FilterStep, type SessionFilter } from './types.ts';
import { RefusalReason } from '../errors.ts';
import { Answers, LF, LineTail, Output, PartialLine, contentLength, leadingWord, splitEol } from './lines.ts';

/**
 * Lines longer than this are forwarded as they come when their tag and command name come first
 * (overlong()); only their last bytes are kept, to see a literal.
 */
const MAX_LINE = 65536;
/** RFC 9051 section 4.3: a literal is announced by "{" number "}" (client: "{n+}" with RFC 7888) at the end of a line. */
const CLIENT_LITERAL = /\{(\d{1,19})(\+?)\}$/;
const SERVER_LITERAL = /\{(\d{1,19})\}$/;
/** RFC 9051 section 9: tag = 1*<any ASTRING-CHAR except "+">. */
const TAG_CHAR = '[\\x21\\x23\\x24\\x26\\x27\\x2c-\\x5b\\x5d-\\x7a\\x7c-\\x7e]';
/** Only a command line with a valid tag, one SP and a command name is one a backend reads literals for. */
const COMMAND_START = new RegExp(`^${TAG_CHAR}+ ([A-Za-z]+)(?: |$)`);
/** An overlong command line is forwarded only if its tag and whole command name come first (see overlong()). */
const OVERLONG_START = new RegExp(`^${TAG_CHAR}{1,200} [A-Za-z]+ `);
/** RFC 9051 section 7.1: TOOBIG, untagged because the tag may be what made the line too long. */
const OVERLONG = '* BAD [TOOBIG] Command line too long\r\n';
/**
 * The commands valid before authentication that take literal arguments (RFC 9051 section 6.2.3
 * LOGIN's astrings, RFC 2971 ID's nstrings). The filter only runs before authentication, so a
 * literal marker anywhere else is not one a backend honours: AUTHENTICATE's initial response is
 * base64 and never a literal (RFC 4959), APPEND and the like are refused before login without
 * reading their literal.
 */
const LITERAL_COMMANDS = new Set(['LOGIN', 'ID']);
const HIDDEN = new Set(['STARTTLS', 'LOGINDISABLED']);
/** Commands whose tagged OK ends the filtering: the session is authenticated (or compressed) from then on. */
const SWITCHING = new Set(['LOGIN', 'AUTHENTICATE', 'COMPRESS']);
/** Tags of such commands remembered at once; a client pipelining more is simply filtered longer. */
const MAX_SWITCH_TAGS = 16;

export function imapFilter(opts: FilterOptions): SessionFilter {
  return new ImapFilter(opts);
}

class ImapFilter implements SessionFilter {
  /** Refusals over the whole session (MAX_REFUSALS). */
  private readonly tally = { refusals: 0 };
  private greetingDone = false;
  private swallow: number; // tagged completions still to drop (with the untagged lines before them)
  private readonly tls: boolean;
  private readonly forwardGreeting: boolean;
  private raw = false; // authenticated or compressed: nothing more to rewrite
  // client -> backend
  private clientMode: 'line' | 'long' | 'literal' | 'discard' = 'line';
  private readonly clientLine = new PartialLine();
  private clientLiteral = 0;
  private commandStart = true; // the next client line starts a command (not the rest of one after a literal)
  private tag = ''; // tag of the command being sent
  private takesLiterals = false; // the command being sent is one a backend reads literals for
  private waitTag: string | null = null; // command whose synchronizing literal waits for "+"
  private waitSize = 0;
  private readonly switchTags = new Set<string>();
  // backend -> client
  private backendMode: 'line' | 'long' | 'literal' = 'line';
  private readonly backendLine = new PartialLine();
  private readonly backendTail = new LineTail();
  private backendLiteral = 0;
  private responseStart = true;

  constructor(opts: FilterOptions) {
    this.swallow = opts.swallow;
    this.tls = opts.tls;
    this.forwardGreeting = opts.forwardGreeting === true;
  }

  greeted(): boolean {
    return this.greetingDone;
  }

  /**
   * Also false while a synchronizing literal waits for the backend's "+" (RFC 9051 section 4.3:
   * the client sends the octets only after it): whether the next bytes are a literal or the next
   * command is the backend's decision, so postern reads them only once it knows.
   */
  ready(): boolean {
    return this.raw || (this.greetingDone && this.swallow === 0 && this.waitTag === null && this.tally.refusals < MAX_REFUSALS);
  }

  passthrough(): boolean {
    return this.raw;
  }

  fromClient(chunk: Buffer): FilterStep {
    // A line begun before the switch is still in the store: it goes first.
    if (this.raw) return { toBackend: this.clientLine.take(chunk), toClient: null, refused: null, rest: null };
    const out = new Output();
    const local = new Answers(this.tally);
    let i = 0;
    while (i < chunk.length) {
      if (this.clientMode === 'literal') {
        const n = Math.min(this.clientLiteral, chunk.length - i);
        out.push(chunk.subarray(i, i + n));
        i += n;
        this.clientLiteral -= n;
        if (this.clientLiteral === 0) this.clientMode = 'line';
        continue;
      }
      const lf = chunk.indexOf(LF, i);
      if (this.clientMode === 'long' || this.clientMode === 'discard') {
        const part = chunk.subarray(i, lf < 0 ? chunk.length : lf + 1);
        if (this.clientMode === 'long') out.push(part);
        if (lf < 0) break;
        i = lf + 1;
        // A line this long announces no literal: a backend refuses it whole (Dovecot's limit is
        // 64 KiB), so what follows is commands, for postern too.
        this.commandStart = true;
        this.clientMode = 'line';
        continue;
      }
      if (this.clientLine.length === 0 && (this.waitTag !== null || this.tally.refusals >= MAX_REFUSALS || local.length >= LOCAL_REPLY_BUDGET)) {
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
      } else this.clientCommandLine(this.clientLine.take(chunk.subarray(i, lf + 1)), out, local);
      i = lf + 1;
    }
    return { toBackend: out.result(), toClient: local.result(), refused: local.refused, rest: null };
  }

  /**
   * A line over MAX_LINE: decided on its first bytes, forwarded as it comes (`complete`: its LF
   * came with it). At the start of a command its tag and name must be readable in those bytes:
   * a backend reads the name wherever it ends, so a tag or padding longer than the head could
   * carry a STARTTLS postern never saw. Such a line is refused (a backend refuses it too: Dovecot
   * 2.3 refuses pre-login lines over 1-2 KB) and dropped up to its end.
   */
  private overlong(out: Output, local: Answers, complete: boolean): void {
    const head = this.clientLine.take();
    // A line this long announces no literal: a backend refuses it whole, so what follows is
    // commands, for postern too.
    let refused = false;
    if (this.commandStart) {
      refused = !OVERLONG_START.test(head.toString('latin1', 0, Math.min(head.length, 256)));
      if (refused) {
        local.refuse(RefusalReason.lineTooLong);
        local.push(OVERLONG);
      }
      else refused = this.refused(head, local);
    }
    if (!refused) out.push(head);
    if (complete) this.commandStart = true;
    else {
      this.clientMode = refused ? 'discard' : 'long';
      this.commandStart = false;
    }
  }

  /**
   * The start of a command: its tag, and whether postern answers it itself (STARTTLS: TLS is
   * already active, RFC 2595 section 3.1 / RFC 9051 section 6.2.1; never forwarded, Dovecot would
   * start a second TLS layer). The verb is read conservatively (leadingWord), so padding or odd
   * separators do not hide it.
   */
  private refused(line: Buffer, local: Answers): boolean {
    const sp = line.indexOf(0x20);
    const tagEnd = sp < 0 ? contentLength(line) : sp;
    this.tag = line.toString('latin1', 0, tagEnd);
    const start = COMMAND_START.exec(line.toString('latin1', 0, Math.min(line.length, 256)));
    this.takesLiterals = start !== null && LITERAL_COMMANDS.has(start[1]!.toUpperCase());
    if (sp < 0) return false;
    const verb = leadingWord(line.subarray(sp + 1));
    if (verb === 'STARTTLS') {
      local.refuse(RefusalReason.starttlsRefused);
      local.push(this.tls ? `${this.tag} BAD TLS already active\r\n` : `${this.tag} NO STARTTLS not available now\r\n`);
      return true;
    }
    if (SWITCHING.has(verb) && this.switchTags.size < MAX_SWITCH_TAGS && this.tag !== '') this.switchTags.add(this.tag);
    return false;
  }

  private clientCommandLine(line: Buffer, out: Output, local: Answers): void {
    if (this.commandStart && this.refused(line, local)) return;
    out.push(line);
    this.afterClientLine(line.toString('latin1', 0, contentLength(line)));
  }

  /**
   * Whether the command goes on after this line: a literal follows (RFC 9051 section 4.3, RFC 7888
   * section 3). Only where a backend would read one: the command takes literals, the marker stands
   * as an argument of its own (after SP or "(") and not inside a quoted string. Anything else is a
   * complete (bad) command line to the backend, and its next bytes are commands to postern too.
   */
  private afterClientLine(text: string): void {
    const lit = this.takesLiterals ? CLIENT_LITERAL.exec(text) : null;
    const valid = lit !== null && (text[lit.index - 1] === ' ' || text[lit.index - 1] === '(') && !insideQuotes(text, lit.index);
    this.commandStart = !valid;
    if (!valid) return;
    const size = Number(lit[1]);
    if (lit[2] === '+') this.startClientLiteral(size);
    else {
      this.waitTag = this.tag;
      this.waitSize = size;
    }
  }

  private startClientLiteral(size: number): void {
    this.clientLiteral = size;
    this.clientMode = size > 0 ? 'literal' : 'line';
  }

  fromBackend(chunk: Buffer): Buffer | null {
    if (this.raw) return this.backendLine.take(chunk);
    const out = new Output();
    let i = 0;
    while (i < chunk.length) {
      if (this.raw) {
        // The login (or COMPRESS) succeeded on the line just read: the rest is the new session.
        out.push(chunk.subarray(i));
        break;
      }
      if (this.backendMode === 'literal') {
        const n = Math.min(this.backendLiteral, chunk.length - i);
        if (this.greetingDone && this.swallow === 0) out.push(chunk.subarray(i, i + n));
        i += n;
        this.backendLiteral -= n;
        if (this.backendLiteral === 0) this.backendMode = 'line';
        continue;
      }
      const lf = chunk.indexOf(LF, i);
      if (this.backendMode === 'long') {
        const part = chunk.subarray(i, lf < 0 ? chunk.length : lf + 1);
        out.push(part);
        this.backendTail.add(part);
        if (lf < 0) break;
        i = lf + 1;
        this.backendMode = 'line';
        this.afterBackendLine(this.backendTail.take().replace(/\r?\n$/, ''));
        continue;
      }
      if (lf < 0) {
        this.backendLine.add(chunk.subarray(i));
        if (this.backendLine.length > MAX_LINE) {
          // Too long to be a capability list: pass it on as it comes.
          const part = this.backendLine.take();
          out.push(part);
          this.backendTail.add(part);
          this.backendMode = 'long';
          this.greetingDone = true;
        }
        break;
      }
      this.backendResponseLine(this.backendLine.take(chunk.subarray(i, lf + 1)), out);
      i = lf + 1;
    }
    return out.result();
  }

  private backendResponseLine(line: Buffer, out: Output): void {
    const { text, eol } = splitEol(line);
    if (!this.responseStart) {
      // The rest of a response after a literal (e.g. " FLAGS (\Seen))" after FETCH BODY[] data).
      if (this.greetingDone && this.swallow === 0) out.push(line);
      this.afterBackendLine(text);
      return;
    }
    if (!this.greetingDone) {
      this.greetingDone = true;
      // RFC 9051 section 7.1.5 / 7.1.1: a BYE (or anything but OK / PREAUTH) greeting means the
      // backend refused; the client must see it. PREAUTH: authenticated from the start.
      // On an implicit TLS listener every greeting reaches the client, its [CAPABILITY ...]
      // code without STARTTLS/LOGINDISABLED like any later capability list.
      if (this.forwardGreeting) {
        const rewritten = withoutHiddenCapabilities(text);
        out.push(rewritten === text ? line : Buffer.from(rewritten + eol, 'latin1'));
      } else if (!/^\* (OK|PREAUTH)\b/i.test(text)) out.push(line);
      if (/^\* PREAUTH\b/i.test(text) && this.swallow === 0) this.raw = true;
      this.afterBackendLine(text);
      return;
    }
    const tagged = !text.startsWith('*') && !text.startsWith('+');
    if (this.swallow > 0) {
      if (tagged) this.swallow--;
      this.afterBackendLine(text);
      return;
    }
    if (this.waitTag !== null) {
      // RFC 9051 section 7.5: "+" asks for the literal. A tagged completion of that command
      // refuses it, and so does an untagged BAD (section 7.1.3: the server could not tell which
      // command was wrong; Dovecot answers a literal on an untagged line this way): the client
      // will not send the octets, and its next bytes are a new command.
      if (text.startsWith('+')) {
        this.waitTag = null;
        this.startClientLiteral(this.waitSize);
      } else if (text.startsWith(`${this.waitTag} `) || /^\* BAD\b/i.test(text)) {
        this.waitTag = null;
        this.clientMode = 'line';
        this.commandStart = true;
      }
    }
    const rewritten = withoutHiddenCapabilities(text);
    out.push(rewritten === text ? line : Buffer.from(rewritten + eol, 'latin1'));
    this.afterBackendLine(text);
    if (tagged && this.switchTags.size > 0) {
      const sp = text.indexOf(' ');
      const tag = sp < 0 ? text : text.slice(0, sp);
      if (this.switchTags.delete(tag) && /^OK\b/i.test(text.slice(sp + 1)) && this.responseStart) this.raw = true;
    }
  }

  private afterBackendLine(text: string): void {
    const lit = SERVER_LITERAL.exec(text);
    this.responseStart = lit === null;
    if (!lit) return;
    this.backendLiteral = Number(lit[1]);
    if (this.backendLiteral > 0) this.backendMode = 'literal';
  }
}

/** Whether position `at` of a command line is inside a quoted string (RFC 9051 section 4.3: "\\" escapes). */
function insideQuotes(text: string, at: number): boolean {
  let quoted = false;
  for (let i = 0; i < at; i++) {
    const c = text.charCodeAt(i);
    if (quoted && c === 0x5c) i++;
    else if (c === 0x22) quoted = !quoted;
  }
  return quoted;
}

/**
 * Removes STARTTLS and LOGINDISABLED from a `* CAPABILITY` response (RFC 9051 section 7.2.2) and
 * from a `[CAPABILITY ...]` response code of a status response (section 7.1), tagged ones too.
 */
function withoutHiddenCapabilities(text: string): string {
  const strip = (atoms: string) => atoms.split(' ').filter((a) => !HIDDEN.has(a.toUpperCase())).join(' ');
  const cap = /^(\* CAPABILITY )(.*)$/i.exec(text);
  if (cap) return cap[1]! + strip(cap[2]!);
  const code = /^(\S+ (?:OK|NO|BAD|PREAUTH|BYE) \[CAPABILITY )([^\]]*)(\].*)$/i.exec(text);
  if (code) return code[1]! + strip(code[2]!) + code[3]!;
  return text;
}
