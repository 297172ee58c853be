// The IMAP session after STARTTLS (or after a plaintext handoff): drops the backend's greeting,
// removes STARTTLS and LOGINDISABLED from capability lists, answers a second STARTTLS itself, and
// passes literals (APPEND data from the client, FETCH data from the server) through as raw bytes
// that are never parsed.
import type { FilterOptions, SessionFilter } from './types.ts';
import { LF, LineTail, Output, PartialLine, contentLength, neverThrow, splitEol } from './lines.ts';

/** Lines longer than this are forwarded as they come; only their last bytes are kept, to see a literal. */
const MAX_LINE = 65536;
/** RFC 9051 section 4.3: a literal is announced by "{" number "}" (client: "{n+}" with RFC 7888) at the end of a line. */
const CLIENT_LITERAL = /\{(\d{1,19})(\+?)\}$/;
const SERVER_LITERAL = /\{(\d{1,19})\}$/;
const HIDDEN = new Set(['STARTTLS', 'LOGINDISABLED']);

export function imapFilter(opts: FilterOptions): SessionFilter {
  return neverThrow(new ImapFilter(opts.swallow));
}

class ImapFilter {
  private greetingDone = false;
  private swallow: number; // tagged completions still to drop (with the untagged lines before them)
  // client -> backend
  private clientMode: 'line' | 'long' | 'literal' | 'literal-wait' = 'line';
  private readonly clientLine = new PartialLine();
  private readonly clientTail = new LineTail();
  private clientLiteral = 0;
  private commandStart = true; // the next client line starts a command (not the rest of one after a literal)
  private tag = ''; // tag of the command being sent
  private waitTag: string | null = null; // command whose synchronizing literal waits for "+"
  private waitSize = 0;
  // backend -> client
  private backendMode: 'line' | 'long' | 'literal' = 'line';
  private readonly backendLine = new PartialLine();
  private readonly backendTail = new LineTail();
  private backendLiteral = 0;
  private responseStart = true;

  constructor(swallow: number) {
    this.swallow = swallow;
  }

  greeted(): boolean {
    return this.greetingDone;
  }

  /**
   * Also false while a synchronizing literal waits for the backend's "+" (RFC 9051 section 4.3:
   * the client sends the octets only after it): early octets are held until the backend has
   * decided whether they are a literal or the next command.
   */
  ready(): boolean {
    return this.greetingDone && this.swallow === 0 && this.clientMode !== 'literal-wait';
  }

  fromClient(chunk: Buffer): { toBackend: Buffer | null; toClient: Buffer | null } {
    const out = new Output();
    const local = new Output();
    let i = 0;
    while (i < chunk.length) {
      if (this.clientMode === 'literal-wait') {
        // The client did not wait for "+": count the octets as the literal, as a server that
        // accepts it will.
        this.waitTag = null;
        this.startClientLiteral(this.waitSize);
        continue;
      }
      if (this.clientMode === 'literal') {
        const n = Math.min(this.clientLiteral, chunk.length - i);
        out.push(chunk.subarray(i, i + n));
        i += n;
        this.clientLiteral -= n;
        if (this.clientLiteral === 0) this.clientMode = 'line';
        continue;
      }
      const lf = chunk.indexOf(LF, i);
      if (this.clientMode === 'long') {
        const part = chunk.subarray(i, lf < 0 ? chunk.length : lf + 1);
        out.push(part);
        this.clientTail.add(part);
        if (lf < 0) break;
        i = lf + 1;
        this.clientMode = 'line';
        this.afterClientLine(this.clientTail.take().replace(/\r?\n$/, ''));
        continue;
      }
      if (lf < 0) {
        this.clientLine.add(chunk.subarray(i));
        if (this.clientLine.length > MAX_LINE) {
          const part = this.clientLine.take();
          out.push(part);
          this.clientTail.add(part);
          this.clientMode = 'long';
          this.commandStart = false;
        }
        break;
      }
      this.clientCommandLine(this.clientLine.take(chunk.subarray(i, lf + 1)), out, local);
      i = lf + 1;
    }
    return { toBackend: out.result(), toClient: local.result() };
  }

  private clientCommandLine(line: Buffer, out: Output, local: Output): void {
    const text = line.toString('latin1', 0, contentLength(line));
    if (this.commandStart) {
      const sp = text.indexOf(' ');
      this.tag = sp < 0 ? text : text.slice(0, sp);
      // RFC 2595 section 3.1 / RFC 9051 section 6.2.1: TLS is already active; answered here,
      // never forwarded (Dovecot would start a second TLS layer).
      if (sp > 0 && /^STARTTLS(?: |$)/i.test(text.slice(sp + 1))) {
        local.push(`${this.tag} BAD TLS already active\r\n`);
        return;
      }
    }
    out.push(line);
    this.afterClientLine(text);
  }

  /** Whether the command goes on after this line: a literal follows (RFC 9051 section 4.3, RFC 7888 section 3). */
  private afterClientLine(text: string): void {
    const lit = CLIENT_LITERAL.exec(text);
    this.commandStart = lit === null;
    if (!lit) return;
    const size = Number(lit[1]);
    if (lit[2] === '+') this.startClientLiteral(size);
    else {
      this.clientMode = 'literal-wait';
      this.waitTag = this.tag;
      this.waitSize = size;
    }
  }

  private startClientLiteral(size: number): void {
    this.clientLiteral = size;
    this.clientMode = size > 0 ? 'literal' : 'line';
  }

  fromBackend(chunk: Buffer): Buffer | null {
    const out = new Output();
    let i = 0;
    while (i < chunk.length) {
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
      // backend refused; the client must see it.
      if (!/^\* (OK|PREAUTH)\b/i.test(text)) out.push(line);
      this.afterBackendLine(text);
      return;
    }
    const tagged = !text.startsWith('*') && !text.startsWith('+');
    if (this.swallow > 0) {
      if (tagged) this.swallow--;
      this.afterBackendLine(text);
      return;
    }
    if (this.clientMode === 'literal-wait' && this.waitTag !== null) {
      // RFC 9051 section 7.5: "+" asks for the literal; a tagged completion instead refuses it
      // and the client will not send it.
      if (text.startsWith('+')) {
        this.waitTag = null;
        this.startClientLiteral(this.waitSize);
      } else if (text.startsWith(`${this.waitTag} `)) {
        this.waitTag = null;
        this.clientMode = 'line';
        this.commandStart = true;
      }
    }
    const rewritten = withoutHiddenCapabilities(text);
    out.push(rewritten === text ? line : Buffer.from(rewritten + eol, 'latin1'));
    this.afterBackendLine(text);
  }

  private afterBackendLine(text: string): void {
    const lit = SERVER_LITERAL.exec(text);
    this.responseStart = lit === null;
    if (!lit) return;
    this.backendLiteral = Number(lit[1]);
    if (this.backendLiteral > 0) this.backendMode = 'literal';
  }
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
