// The daemon fuzzer's backends (fuzz/daemon.ts): small scripted SMTP, IMAP and POP3 servers that
// greet and answer lines plausibly, and record every command they would have run. Each one reads
// the PROXY v2 header postern sends, looks up the plan the fuzzer registered for that client port
// (how to greet, how fast to answer, when to go silent, how to answer DATA and literals), and
// reads the rest as a real server would: it knows when it is inside DATA, a BDAT chunk, a SASL
// exchange or a literal, so text there is never taken for a command. Whatever it does take for a
// command that postern must refuse (XCLIENT, XFORWARD, STARTTLS after TLS, STLS) is a violation,
// recorded with the client port it came under.
//
// How the SMTP backend reads commands follows Postfix's smtpd (smtpd_token.c): a line ends at LF
// (a CR before it dropped), ends at a NUL as a C string does, and its first word, split on ASCII
// white space, is the command, compared without case. Leading white space is skipped here (Postfix
// would answer "bad syntax"): the check errs on the side of seeing a command. The end of DATA is
// read in one of two dialects (plan.dataEnd): "rfc", CRLF "." CRLF only (RFC 5321 section
// 4.1.1.4); "lf", any LF-ended "." line, as Postfix before 3.9 does by default
// (smtpd_forbid_bare_newline = no; www.postfix.org/smtp-smuggling.html).
import net from 'node:net';
import { decodeProxyHeader } from '../src/backend/proxy-decode.ts';

export type Protocol = 'smtp' | 'imap' | 'pop3';

/** How a backend treats one proxied connection; chosen by the session generator. */
export interface BackendPlan {
  /** The fuzzer's session this connection belongs to (for the report). */
  session: number;
  /** Ms before the greeting (postscreen's greet_wait, a slow server); above timeouts.backendReply postern gives up. */
  greetDelayMs: number;
  /** SMTP: "220-" first, the rest after greetDelayMs (postscreen); IMAP: PREAUTH; refuse: 554 / BYE / -ERR and close; vanish: close (FIN) instead of a greeting. */
  greeting: 'plain' | 'multiline' | 'refuse' | 'preauth' | 'vanish';
  /** Ms before each reply. */
  replyDelayMs: number;
  /** After this many commands, answer nothing for stallMs (then carry on). */
  stallAfter: number | null;
  stallMs: number;
  /** After this many commands, close (reset when closeReset). */
  closeAfter: number | null;
  closeReset: boolean;
  /** SMTP: how DATA is answered once MAIL and RCPT were accepted. */
  dataReply: '354' | '554';
  /** SMTP: which "." line ends DATA (see the file comment). */
  dataEnd: 'rfc' | 'lf';
  /** IMAP: how a synchronizing literal is answered: "+", a tagged NO, or an untagged BAD (Dovecot). */
  literalReply: '+' | 'NO' | 'BAD';
  /** LOGIN / PASS / AUTH succeed. */
  loginOk: boolean;
}

export const DEFAULT_PLAN: BackendPlan = {
  session: -1,
  greetDelayMs: 0,
  greeting: 'plain',
  replyDelayMs: 0,
  stallAfter: null,
  stallMs: 0,
  closeAfter: null,
  closeReset: false,
  dataReply: '354',
  dataEnd: 'rfc',
  literalReply: '+',
  loginOk: true,
};

export interface Violation {
  listener: string;
  session: number;
  clientPort: number;
  /** The command as the backend read it (escaped, at most 200 characters). */
  line: string;
  why: string;
}

export interface BackendStats {
  connections: number;
  proxied: number;
  commands: number;
  violations: Violation[];
  /** When the last backend connection of each fuzzer session was done: the backend closed or finished it (Date.now()). */
  closedAt: Map<number, number>;
}

/** Printable ASCII as is, everything else as \xNN (lines go into logs and JSON). */
export function escapeBytes(s: string, max = 200): string {
  let out = '';
  for (let i = 0; i < s.length && out.length < max; i++) {
    const c = s.charCodeAt(i);
    out += c >= 0x20 && c < 0x7f && c !== 0x5c ? s[i] : c === 0x5c ? '\\\\' : `\\x${c.toString(16).padStart(2, '0')}`;
  }
  return s.length > max ? `${out}...(${s.length} bytes)` : out;
}

const isWs = (c: number) => c === 0x20 || (c >= 0x09 && c <= 0x0d);

/** The first white-space separated word of a line, upper-cased (ASCII), after leading white space; a NUL ends the line (C string). */
export function firstWord(line: string, from = 0): { word: string; end: number } {
  const nul = line.indexOf('\0', from);
  const n = nul < 0 ? line.length : nul;
  let i = from;
  while (i < n && isWs(line.charCodeAt(i))) i++;
  const start = i;
  while (i < n && !isWs(line.charCodeAt(i))) i++;
  return { word: line.slice(start, i).replace(/[a-z]+/g, (m) => m.toUpperCase()), end: i };
}

/** One proxied connection: the header, then a plan-driven conversation. */
abstract class Conversation {
  protected readonly socket: net.Socket;
  protected readonly stats: BackendStats;
  protected readonly listener: string;
  protected plan: BackendPlan = DEFAULT_PLAN;
  protected clientPort = 0;
  /** Unparsed bytes (latin1: one char per byte). */
  protected buf = '';
  private commands = 0;
  private nextReplyAt = 0;
  private stalledUntil = 0;
  private readonly timers = new Set<NodeJS.Timeout>();
  protected closed = false;

  constructor(socket: net.Socket, stats: BackendStats, listener: string) {
    this.socket = socket;
    this.stats = stats;
    this.listener = listener;
    socket.once('close', () => {
      this.closed = true;
      for (const t of this.timers) clearTimeout(t);
      this.timers.clear();
      this.gone();
    });
  }

  private goneAt = 0;
  /** The backend is done with this connection (it closed, or sent its FIN): from now on it reads and says nothing. */
  protected gone(): void {
    if (this.goneAt) return;
    this.goneAt = Date.now();
    if (this.plan.session >= 0) this.stats.closedAt.set(this.plan.session, this.goneAt);
  }

  /** Header read: the plan for this client port. */
  start(plan: BackendPlan, clientPort: number): void {
    this.plan = plan;
    this.clientPort = clientPort;
    const greet = () => {
      if (plan.greeting !== 'vanish') return this.greet();
      this.gone();
      this.socket.end();
    };
    if (plan.greeting === 'multiline' || plan.greetDelayMs === 0) greet();
    else this.later(plan.greetDelayMs, greet);
  }

  protected abstract greet(): void;
  /** Runs complete units of `buf` (lines, literals, chunks); leaves the rest. */
  protected abstract parse(): void;

  feed(chunk: Buffer): void {
    if (this.closed) return;
    this.buf += chunk.toString('latin1');
    this.parse();
    // A real server reads what it can; a line never ending is its own problem (Postfix: 2048 bytes, then skip).
    if (this.buf.length > 1 << 20) this.buf = this.buf.slice(-4096);
  }

  protected later(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.closed) fn();
    }, ms);
    this.timers.add(t);
  }

  /** Sends a reply, in order, after the plan's delays (and a stall). */
  protected say(text: string, then?: () => void): void {
    if (this.closed) return;
    const now = Date.now();
    const at = Math.max(now, this.nextReplyAt, this.stalledUntil) + this.plan.replyDelayMs;
    this.nextReplyAt = at;
    const send = () => {
      if (this.closed || !this.socket.writable) return;
      this.socket.write(text);
      then?.();
    };
    if (at <= now) send();
    else this.later(at - now, send);
  }

  /** Counts a command; applies the plan's stall and close. Returns false when the connection is closing. */
  protected counted(): boolean {
    this.stats.commands++;
    this.commands++;
    const p = this.plan;
    if (p.stallAfter !== null && this.commands === p.stallAfter) this.stalledUntil = Date.now() + p.stallMs;
    if (p.closeAfter !== null && this.commands >= p.closeAfter) {
      const close = () => {
        this.gone();
        if (p.closeReset) this.socket.resetAndDestroy();
        else this.socket.destroy();
      };
      if (this.nextReplyAt <= Date.now()) close();
      else this.later(this.nextReplyAt - Date.now() + 1, close);
      this.closed = true;
      return false;
    }
    return true;
  }

  protected end(text: string): void {
    this.say(text, () => {
      this.gone();
      this.socket.end();
    });
  }

  protected violation(line: string, why: string): void {
    this.stats.violations.push({ listener: this.listener, session: this.plan.session, clientPort: this.clientPort, line: escapeBytes(line), why });
  }

  /** The next LF-ended line (without LF and one CR before it), or null. */
  protected takeLine(): string | null {
    const lf = this.buf.indexOf('\n');
    if (lf < 0) return null;
    const line = this.buf.slice(0, lf > 0 && this.buf[lf - 1] === '\r' ? lf - 1 : lf);
    this.buf = this.buf.slice(lf + 1);
    return line;
  }
}

// ---------------------------------------------------------------------------------------------
// SMTP

class SmtpConversation extends Conversation {
  private mode: 'cmd' | 'data' | 'bdat' | 'sasl' = 'cmd';
  private helo = false;
  private mail = false;
  private rcpt = false;
  private bdatLeft = 0;
  private bdatLast = false;
  private saslSteps = 0;
  /** The last DATA line ended with CRLF (RFC end-of-data needs CRLF "." CRLF). */
  private prevCrlf = true;
  /** A DATA ended at a "." line that RFC 5321 would not end it at (the "lf" dialect): what follows may be smuggled. */
  private smuggled = false;
  private readonly check: boolean;

  constructor(socket: net.Socket, stats: BackendStats, listener: string, check: boolean) {
    super(socket, stats, listener);
    this.check = check;
  }

  protected greet(): void {
    const p = this.plan;
    if (p.greeting === 'refuse') return this.end('554 5.7.1 backend.fuzz no service for you\r\n');
    if (p.greeting === 'multiline') {
      // postscreen: "220-" first; a client that talks now is an early talker.
      this.socket.write('220-backend.fuzz ESMTP hold on\r\n');
      this.later(p.greetDelayMs, () => this.socket.write('220 backend.fuzz ESMTP\r\n'));
      return;
    }
    this.socket.write('220 backend.fuzz ESMTP scripted\r\n');
  }

  protected parse(): void {
    while (!this.closed) {
      if (this.mode === 'bdat') {
        const n = Math.min(this.bdatLeft, this.buf.length);
        this.buf = this.buf.slice(n);
        this.bdatLeft -= n;
        if (this.bdatLeft > 0) return;
        this.mode = 'cmd';
        this.say(this.rcpt ? `250 2.0.0 ${this.bdatLast ? 'queued' : 'chunk received'}\r\n` : '554 5.5.1 Error: no valid recipients\r\n');
        if (this.bdatLast) this.mail = this.rcpt = false;
        continue;
      }
      if (this.mode === 'data') {
        const lf = this.buf.indexOf('\n');
        if (lf < 0) return;
        const crlf = lf > 0 && this.buf[lf - 1] === '\r';
        const line = this.buf.slice(0, crlf ? lf - 1 : lf);
        this.buf = this.buf.slice(lf + 1);
        const rfcEnd = line === '.' && crlf && this.prevCrlf;
        const end = rfcEnd || (line === '.' && this.plan.dataEnd === 'lf');
        this.prevCrlf = crlf;
        if (end && !rfcEnd) this.smuggled = true;
        if (end) {
          this.mode = 'cmd';
          this.mail = this.rcpt = false;
          this.say('250 2.0.0 queued as FUZZ\r\n');
        }
        continue;
      }
      const line = this.takeLine();
      if (line === null) return;
      if (this.mode === 'sasl') {
        // RFC 4954 section 4: a response to a 334 challenge, not a command.
        this.saslSteps--;
        if (line === '*') {
          this.mode = 'cmd';
          this.say('501 5.7.0 Authentication aborted\r\n');
        } else if (this.saslSteps > 0) this.say('334 UGFzc3dvcmQ6\r\n');
        else {
          this.mode = 'cmd';
          this.say(this.plan.loginOk ? '235 2.7.0 Authentication successful\r\n' : '535 5.7.8 Authentication failed\r\n');
        }
        continue;
      }
      this.command(line);
    }
  }

  private command(line: string): void {
    const { word, end } = firstWord(line);
    if (this.check && (word === 'XCLIENT' || word === 'XFORWARD' || word === 'STARTTLS')) {
      this.violation(line, `${word} reached the backend as a command${this.smuggled ? ' (after a DATA ended by a "." line without CRLF before and after it: SMTP smuggling)' : ''}`);
    }
    if (!this.counted()) return;
    const args = line.slice(end).trim();
    const argv = args === '' ? [] : args.split(/[\t\n\v\f\r ]+/);
    switch (word) {
      case 'EHLO':
        this.helo = true;
        this.mail = this.rcpt = false;
        return this.say('250-backend.fuzz\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250-XCLIENT NAME ADDR\r\n250-8BITMIME\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n');
      case 'HELO':
        this.helo = true;
        return this.say('250 backend.fuzz\r\n');
      case 'MAIL':
        if (!this.helo) return this.say('503 5.5.1 Error: send HELO/EHLO first\r\n');
        this.mail = true;
        return this.say('250 2.1.0 Ok\r\n');
      case 'RCPT':
        if (!this.mail) return this.say('503 5.5.1 Error: need MAIL command\r\n');
        this.rcpt = true;
        return this.say('250 2.1.5 Ok\r\n');
      case 'DATA':
        if (!this.rcpt) return this.say('503 5.5.1 Error: need RCPT command\r\n');
        if (this.plan.dataReply === '554') return this.say('554 5.5.1 Error: no valid recipients\r\n');
        this.mode = 'data';
        this.prevCrlf = true;
        return this.say('354 End data with <CR><LF>.<CR><LF>\r\n');
      case 'BDAT': {
        // Postfix bdat_cmd: "BDAT" size ["LAST"], size all digits; a syntax error reads no chunk,
        // any other refusal still reads (and drops) its octets (RFC 3030 section 2).
        if (argv.length < 1 || argv.length > 2 || !/^\d+$/.test(argv[0]!) || (argv.length === 2 && argv[1]!.toUpperCase() !== 'LAST')) {
          return this.say('501 5.5.4 Syntax: BDAT count [LAST]\r\n');
        }
        this.bdatLeft = Number(argv[0]);
        this.bdatLast = argv.length === 2;
        if (this.bdatLeft > 0) this.mode = 'bdat';
        else this.say(this.rcpt ? '250 2.0.0 Ok\r\n' : '554 5.5.1 Error: no valid recipients\r\n');
        return;
      }
      case 'AUTH': {
        const mech = (argv[0] ?? '').toUpperCase();
        if (mech !== 'PLAIN' && mech !== 'LOGIN') return this.say('504 5.5.4 Unrecognized authentication type\r\n');
        if (argv.length >= 2) {
          if (mech === 'LOGIN') {
            this.mode = 'sasl';
            this.saslSteps = 1;
            return this.say('334 UGFzc3dvcmQ6\r\n');
          }
          return this.say(this.plan.loginOk ? '235 2.7.0 Authentication successful\r\n' : '535 5.7.8 Authentication failed\r\n');
        }
        this.mode = 'sasl';
        this.saslSteps = mech === 'LOGIN' ? 2 : 1;
        return this.say(mech === 'LOGIN' ? '334 VXNlcm5hbWU6\r\n' : '334 \r\n');
      }
      case 'NOOP':
      case 'RSET':
        if (word === 'RSET') this.mail = this.rcpt = false;
        return this.say('250 2.0.0 Ok\r\n');
      case 'VRFY':
        return this.say('252 2.0.0 Send some mail, I will try my best\r\n');
      case 'QUIT':
        return this.end('221 2.0.0 Bye\r\n');
      case 'STARTTLS':
        return this.say('454 4.7.0 TLS not available\r\n');
      case 'XCLIENT':
      case 'XFORWARD':
        return this.say('250 2.0.0 Ok\r\n');
      case '':
        return this.say('500 5.5.2 Error: bad syntax\r\n');
      default:
        return this.say('502 5.5.2 Error: command not recognized\r\n');
    }
  }
}

// ---------------------------------------------------------------------------------------------
// IMAP

/** RFC 9051 section 4.3 / RFC 7888: a literal announced at the end of a line. */
const LITERAL = /\{(\d{1,19})(\+?)\}$/;
/** What the IMAP backend returns for FETCH: text a filter must carry as data, never read. */
const FETCH_BODY = 'Subject: fuzz\r\n\r\na STARTTLS\r\n* OK [CAPABILITY IMAP4rev1 STARTTLS] not a greeting\r\n+ not a continuation\r\n';

/**
 * Whether Dovecot 2.3 reads the literal announced at the end of this first line of a command
 * (checked by hand against Dovecot 2.3.19.1): tag, one SP, a command name of letters followed by
 * SP, no unterminated quoted string before the marker, not AUTHENTICATE's initial response.
 */
export function readsLiteral(line: string): boolean {
  const m = /^([\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+) ([A-Za-z]+) /.exec(line);
  if (!m || m[2]!.toUpperCase() === 'AUTHENTICATE') return false;
  let quoted = false;
  for (let i = m[0].length; i < line.length; i++) {
    const c = line[i];
    if (quoted && c === '\\') i++;
    else if (c === '"') quoted = !quoted;
  }
  return !quoted;
}

class ImapConversation extends Conversation {
  private authed = false;
  /** Octets of a literal still to read as data. */
  private literalLeft = 0;
  /** The command being read spans lines (a literal came): its tag and words so far. */
  private pending: { tag: string; text: string } | null = null;
  private sasl: string | null = null; // tag of an AUTHENTICATE waiting for its response line
  private compressed = false;
  private readonly check: boolean;

  constructor(socket: net.Socket, stats: BackendStats, listener: string, check: boolean) {
    super(socket, stats, listener);
    this.check = check;
  }

  protected greet(): void {
    const p = this.plan;
    if (p.greeting === 'refuse') return this.end('* BYE [UNAVAILABLE] backend.fuzz busy\r\n');
    if (p.greeting === 'preauth') {
      this.authed = true;
      this.socket.write('* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] backend.fuzz logged in\r\n');
      return;
    }
    this.socket.write('* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED AUTH=PLAIN LITERAL+ SASL-IR COMPRESS=DEFLATE ID] backend.fuzz ready\r\n');
  }

  protected parse(): void {
    while (!this.closed) {
      if (this.compressed) {
        // RFC 4978: from here on every byte is deflated; this backend just takes them.
        this.buf = '';
        return;
      }
      if (this.literalLeft > 0) {
        const n = Math.min(this.literalLeft, this.buf.length);
        this.buf = this.buf.slice(n);
        this.literalLeft -= n;
        if (this.literalLeft > 0) return;
        continue;
      }
      const line = this.takeLine();
      if (line === null) return;
      if (this.sasl !== null) {
        // RFC 9051 section 6.2.2: the client's response to "+", not a command.
        const tag = this.sasl;
        this.sasl = null;
        if (line === '*') this.say(`${tag} BAD AUTHENTICATE cancelled\r\n`);
        else this.login(tag, 'AUTHENTICATE');
        continue;
      }
      this.commandLine(line);
    }
  }

  private commandLine(line: string): void {
    let tag: string;
    let text: string;
    const continuation = this.pending !== null;
    if (this.pending) {
      // The rest of a command after a literal.
      tag = this.pending.tag;
      text = `${this.pending.text} ${line}`;
      this.pending = null;
    } else {
      const sp = line.indexOf(' ');
      tag = sp < 0 ? line : line.slice(0, sp);
      text = sp < 0 ? '' : line.slice(sp + 1);
      const { word } = firstWord(text);
      if (this.check && !this.authed && word === 'STARTTLS') this.violation(line, 'STARTTLS reached the backend as a command (not authenticated)');
    }
    const lit = LITERAL.exec(line);
    const validTag = /^[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+$/.test(tag);
    if (lit && !continuation && !readsLiteral(line)) {
      // As Dovecot 2.3 does: a command whose tag or name does not parse, or whose literal
      // marker sits inside an unterminated quoted string or in AUTHENTICATE's initial response,
      // is refused before its arguments are read; the line ends there, and the octets the
      // client sends next are read as commands.
      if (!this.counted()) return;
      return this.say(validTag ? `${tag} BAD Error in IMAP command received by server.\r\n` : '* BAD Error in IMAP command received by server.\r\n');
    }
    if (lit) {
      const size = Number(lit[1]);
      if (lit[2] === '+' && size > 65536) return this.end('* BYE Literal size too large\r\n');
      if (lit[2] === '+') {
        // RFC 7888 section 3: the octets follow at once; they belong to the command.
        this.literalLeft = size;
        this.pending = { tag, text };
        return;
      }
      if (!validTag) return this.say('* BAD Error in IMAP command received by server.\r\n');
      const how = this.plan.literalReply;
      if (how === '+') {
        this.say('+ OK\r\n');
        this.literalLeft = size;
        this.pending = { tag, text };
        return;
      }
      if (how === 'BAD') return this.say('* BAD Error in IMAP command: literal refused\r\n');
      return this.say(`${tag} NO [TOOBIG] literal refused\r\n`);
    }
    if (!this.counted()) return;
    if (!validTag) return this.say('* BAD Error in IMAP command received by server.\r\n');
    const { word } = firstWord(text);
    switch (word) {
      case 'CAPABILITY':
        return this.say(`* CAPABILITY IMAP4rev1 STARTTLS ${this.authed ? '' : 'LOGINDISABLED '}AUTH=PLAIN LITERAL+ SASL-IR COMPRESS=DEFLATE ID\r\n${tag} OK Capability completed.\r\n`);
      case 'NOOP':
      case 'CHECK':
        return this.say(`${tag} OK NOOP completed.\r\n`);
      case 'ID':
        return this.say(`* ID ("name" "backend.fuzz")\r\n${tag} OK ID completed.\r\n`);
      case 'LOGIN':
        return this.login(tag, 'LOGIN');
      case 'AUTHENTICATE': {
        const words = text.trim().split(/ +/);
        if ((words[1] ?? '').toUpperCase() !== 'PLAIN') return this.say(`${tag} NO Unsupported authentication mechanism.\r\n`);
        if (words.length >= 3) return this.login(tag, 'AUTHENTICATE');
        this.sasl = tag;
        return this.say('+ \r\n');
      }
      case 'COMPRESS':
        if (!this.authed) return this.say(`${tag} BAD Not authenticated.\r\n`);
        this.say(`${tag} OK Begin compression.\r\n`);
        this.compressed = true;
        return;
      case 'SELECT':
      case 'EXAMINE':
        if (!this.authed) return this.say(`${tag} BAD Not authenticated.\r\n`);
        return this.say(`* 2 EXISTS\r\n* FLAGS (\\Seen)\r\n${tag} OK [READ-WRITE] Select completed.\r\n`);
      case 'FETCH':
        if (!this.authed) return this.say(`${tag} BAD Not authenticated.\r\n`);
        return this.say(`* 1 FETCH (BODY[] {${FETCH_BODY.length}}\r\n${FETCH_BODY})\r\n${tag} OK Fetch completed.\r\n`);
      case 'APPEND':
        if (!this.authed) return this.say(`${tag} BAD Not authenticated.\r\n`);
        return this.say(`${tag} OK [APPENDUID 1 1] Append completed.\r\n`);
      case 'LOGOUT':
        return this.end(`* BYE Logging out\r\n${tag} OK Logout completed.\r\n`);
      case 'STARTTLS':
        return this.say(`${tag} BAD TLS is already active.\r\n`);
      default:
        return this.say(`${tag} BAD Error in IMAP command ${escapeBytes(word, 20)}: Unknown command.\r\n`);
    }
  }

  private login(tag: string, what: string): void {
    if (this.plan.loginOk) {
      this.authed = true;
      this.say(`${tag} OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] ${what} completed.\r\n`);
    } else this.say(`${tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n`);
  }
}

// ---------------------------------------------------------------------------------------------
// POP3

/** A message the POP3 backend sends for RETR/TOP: byte-stuffed lines that look like commands and ends. */
const RETR_BODY = 'Subject: fuzz\r\n\r\nSTLS\r\n..\r\n...STLS\r\n.. .\r\n+OK not a status\r\n';

class Pop3Conversation extends Conversation {
  private authed = false;
  private user = false;
  /** AUTH waits for a response line (RFC 5034 section 4). */
  private sasl = false;
  private readonly check: boolean;

  constructor(socket: net.Socket, stats: BackendStats, listener: string, check: boolean) {
    super(socket, stats, listener);
    this.check = check;
  }

  protected greet(): void {
    if (this.plan.greeting === 'refuse') return this.end('-ERR [SYS/TEMP] backend.fuzz busy\r\n');
    this.socket.write('+OK backend.fuzz ready <1.2@backend.fuzz>\r\n');
  }

  protected parse(): void {
    while (!this.closed) {
      const line = this.takeLine();
      if (line === null) return;
      if (this.sasl) {
        this.sasl = false;
        if (line === '*') this.say('-ERR Authentication aborted\r\n');
        else this.loginReply();
        continue;
      }
      this.command(line);
    }
  }

  private loginReply(): void {
    if (this.plan.loginOk) {
      this.authed = true;
      this.say('+OK Logged in.\r\n');
    } else this.say('-ERR [AUTH] Authentication failed.\r\n');
  }

  private command(line: string): void {
    const { word, end } = firstWord(line);
    // RFC 2595 section 4: STLS only in the AUTHORIZATION state; postern steps aside after login.
    if (this.check && !this.authed && word === 'STLS') this.violation(line, 'STLS reached the backend as a command (AUTHORIZATION state)');
    if (!this.counted()) return;
    const args = line.slice(end).trim();
    const argv = args === '' ? [] : args.split(/ +/);
    switch (word) {
      case 'CAPA':
        return this.say('+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nSTLS\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n');
      case 'USER':
        this.user = true;
        return this.say('+OK\r\n');
      case 'PASS':
        if (!this.user) return this.say('-ERR No username given.\r\n');
        return this.loginReply();
      case 'AUTH':
        if (argv.length === 0) return this.say('+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n');
        if (argv[0]!.toUpperCase() !== 'PLAIN') return this.say('-ERR Unsupported authentication mechanism.\r\n');
        // RFC 5034 section 4: with an initial response the answer is final at once.
        if (argv.length >= 2) return this.loginReply();
        this.sasl = true;
        return this.say('+ \r\n');
      case 'APOP':
        return this.say('-ERR [AUTH] Authentication failed.\r\n');
      case 'STAT':
        return this.say('+OK 2 200\r\n');
      case 'LIST':
      case 'UIDL':
        if (argv.length > 0) return this.say(`+OK ${argv[0]} ${word === 'LIST' ? '100' : 'uid1'}\r\n`);
        return this.say(`+OK\r\n1 ${word === 'LIST' ? '100' : 'uid1'}\r\n2 ${word === 'LIST' ? '100' : 'uid2'}\r\n.\r\n`);
      case 'RETR':
      case 'TOP':
        if (argv.length === 0) return this.say('-ERR Invalid message number\r\n');
        return this.say(`+OK message follows\r\n${RETR_BODY}.\r\n`);
      case 'NOOP':
      case 'DELE':
      case 'RSET':
        return this.say('+OK\r\n');
      case 'QUIT':
        return this.end('+OK Logging out.\r\n');
      case 'STLS':
        return this.say('-ERR [IN-USE] TLS is already active.\r\n');
      default:
        return this.say('-ERR Unknown command.\r\n');
    }
  }
}

// ---------------------------------------------------------------------------------------------

export interface ScriptedBackend {
  readonly listener: string;
  readonly protocol: Protocol;
  port: number;
  readonly stats: BackendStats;
  /** Plans by client port, set by the fuzzer when its connection is up. */
  readonly plans: Map<number, BackendPlan>;
  /** Open connections now. */
  open(): number;
  close(): Promise<void>;
}

/**
 * A backend for one listener. `check`: commands postern must refuse count as violations (false
 * behind an implicit-TLS listener, where postern pipes raw and refuses nothing).
 */
export async function startScriptedBackend(listener: string, protocol: Protocol, check: boolean): Promise<ScriptedBackend> {
  const stats: BackendStats = { connections: 0, proxied: 0, commands: 0, violations: [], closedAt: new Map() };
  const plans = new Map<number, BackendPlan>();
  const live = new Set<net.Socket>();
  const server = net.createServer({ noDelay: true }, (socket) => {
    stats.connections++;
    live.add(socket);
    socket.on('error', () => {});
    socket.once('close', () => live.delete(socket));
    const conv = protocol === 'smtp' ? new SmtpConversation(socket, stats, listener, check)
      : protocol === 'imap' ? new ImapConversation(socket, stats, listener, check)
      : new Pop3Conversation(socket, stats, listener, check);
    let pre: Buffer | null = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      if (pre !== null) {
        pre = Buffer.concat([pre, chunk]);
        const d = decodeProxyHeader(pre);
        if (d.kind === 'need-more' && pre.length < 1024) return;
        let port = 0;
        let rest = pre;
        if (d.kind === 'header') {
          rest = pre.subarray(d.header.length);
          if (d.header.command === 'PROXY' && d.header.source) {
            stats.proxied++;
            port = d.header.source.port;
          }
        }
        pre = null;
        conv.start(plans.get(port) ?? DEFAULT_PLAN, port);
        if (rest.length > 0) conv.feed(rest);
        return;
      }
      conv.feed(chunk);
    });
  });
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, resolve));
  return {
    listener,
    protocol,
    port: (server.address() as net.AddressInfo).port,
    stats,
    plans,
    open: () => live.size,
    async close() {
      for (const s of live) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}
