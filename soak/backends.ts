// The soak's backends: a scripted SMTP server and a scripted IMAP server that postern proxies to,
// each able to be killed (listener closed, every connection reset or destroyed) and restarted on
// the same port. They record what they received, so the soak can prove afterwards that every
// message a client saw accepted is held exactly once with its body intact, and that nothing a
// hostile client injected ever arrived.
//
//   SMTP: [PROXY v2] 220 / EHLO / MAIL / RCPT / DATA (dot-unstuffed; complete only at the "."
//         line, then recorded and answered "250 2.0.0 queued") / RSET / NOOP / QUIT.
//   IMAP: [PROXY v2] * OK / LOGIN / SELECT / FETCH n BODY[] (1: a small literal, 2: a large one)
//         / NOOP / LOGOUT.
//   POP3: [PROXY v2] +OK / CAPA / USER / PASS / STAT / NOOP / QUIT (behind the attackers' listener).
// Commands postern must answer itself never reach them: XCLIENT, XFORWARD and STARTTLS (SMTP, read
// as Postfix reads a command word), STARTTLS before login (IMAP behind a STARTTLS listener), STLS
// before login (POP3); each one that does is recorded. For the soak's attackers the SMTP backend
// greets late or answers DATA late (SlowPlan, by the PROXY header's client port).
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { decodeProxyHeader } from '../src/backend/proxy-decode.ts';

/** What the SMTP backend holds for one message id. */
export interface HeldMessage {
  id: string;
  /** Times the message was received complete (the "." line) and answered 250. */
  complete: number;
  /** SHA-256 announced by the sender in X-Soak-SHA256, and the one computed over the body received. */
  announced: string[];
  computed: string[];
  /** Times a DATA for this id was cut off before its "." line (never counted as held). */
  partial: number;
  /**
   * The backend was killed (fault injection) after answering 250 for this message and before the
   * client's next command proved it had read the 250: the client may see a drop although the
   * message is held. That is SMTP's own duplicate window (RFC 1047), not postern's doing.
   */
  killedBeforeAck: number;
}

/** Markers hostile clients put in the bytes that must never reach a backend. */
export const NEVER_FORWARDED = ['INJECTED-', 'PLAINTEXT-'];

/**
 * What an attacker asks of the SMTP backend for its own connection (found by the PROXY header's
 * source port): a greeting that comes late (postscreen's greet_wait), a 354 that comes late, so
 * that postern has to hold a client that writes without pause.
 */
export interface SlowPlan {
  greetMs: number;
  dataMs: number;
}

export interface BackendStats {
  connections: number;
  /** Connections that carried a PROXY v2 PROXY header (health checks send LOCAL or close early). */
  proxied: number;
  killed: number;
  /** Lines containing one of NEVER_FORWARDED. */
  forbidden: string[];
}

type ConnHandler = (socket: net.Socket, stats: BackendStats) => ConnState;
interface ConnState {
  /** Called with the backend killed: the state notes what the kill cut off. */
  onKill(): void;
}

/** A TCP server that can be killed and brought back on the same port. */
export class RestartableServer {
  readonly name: string;
  port = 0;
  up = false;
  readonly stats: BackendStats = { connections: 0, proxied: 0, killed: 0, forbidden: [] };
  private server: net.Server | null = null;
  private readonly live = new Map<net.Socket, ConnState>();
  private readonly handler: ConnHandler;

  constructor(name: string, handler: ConnHandler) {
    this.name = name;
    this.handler = handler;
  }

  async start(): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const server = net.createServer({ allowHalfOpen: false, noDelay: true }, (socket) => {
        this.stats.connections++;
        socket.on('error', () => {});
        const state = this.handler(socket, this.stats);
        this.live.set(socket, state);
        socket.once('close', () => this.live.delete(socket));
      });
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen({ host: '127.0.0.1', port: this.port, exclusive: true }, () => {
            server.off('error', reject);
            resolve();
          });
        });
        this.server = server;
        this.port = (server.address() as net.AddressInfo).port;
        this.up = true;
        return;
      } catch (err) {
        // The port is ours; a restart right after the close can race the kernel for a moment.
        if (attempt >= 50) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /** Stops listening and cuts every connection: about half with a reset, half with a plain close. */
  kill(): void {
    if (!this.server) return;
    this.up = false;
    this.stats.killed++;
    this.server.close();
    this.server = null;
    for (const [socket, state] of this.live) {
      state.onKill();
      if (Math.random() < 0.5) socket.resetAndDestroy();
      else socket.destroy();
    }
    this.live.clear();
  }

  /** Open connections right now. */
  get open(): number {
    return this.live.size;
  }
}

/** Reads the PROXY header (if any), then hands every later chunk to `onData`. */
function withProxyHeader(socket: net.Socket, stats: BackendStats, onReady: (clientPort: number | null) => void, onData: (chunk: Buffer) => void): void {
  let pre: Buffer | null = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    if (pre !== null) {
      pre = Buffer.concat([pre, chunk]);
      const d = decodeProxyHeader(pre);
      if (d.kind === 'need-more') return;
      let rest = pre;
      let clientPort: number | null = null;
      if (d.kind === 'header') {
        if (d.header.command === 'PROXY') stats.proxied++;
        clientPort = d.header.source?.port ?? null;
        rest = pre.subarray(d.header.length);
      }
      pre = null;
      onReady(clientPort);
      if (rest.length === 0) return;
      chunk = rest;
    }
    onData(chunk);
  });
}

function checkForbidden(line: string, stats: BackendStats): void {
  for (const m of NEVER_FORWARDED) if (line.includes(m)) stats.forbidden.push(line.slice(0, 120));
}

/** The command word of a line as Postfix reads it (leading white space skipped, then up to white space), upper-cased. */
function commandWord(line: string): string {
  return (/^[\t\n\v\f\r ]*([^\t\n\v\f\r ]*)/.exec(line.split('\0')[0]!)?.[1] ?? '').toUpperCase();
}

/** Commands postern answers itself after TLS (or after the plaintext handoff): one reaching a backend is a failure. */
function checkRefused(line: string, words: readonly string[], stats: BackendStats): void {
  const w = commandWord(line);
  if (words.includes(w)) stats.forbidden.push(`${w} as a command: ${line.slice(0, 100)}`);
}

// ---------------------------------------------------------------------------------------------
// SMTP

export function smtpBackend(held: Map<string, HeldMessage>, plans: Map<number, SlowPlan> = new Map()): RestartableServer {
  return new RestartableServer('smtp', (socket, stats) => {
    let plan: SlowPlan | undefined;
    let pending = '';
    let inData = false;
    let header = true; // inside the message header section
    let id: string | null = null;
    let announced = '';
    let slow = false;
    let body: ReturnType<typeof createHash> | null = null;
    let sinceBreath = 0;
    /** The message last answered 250 whose receipt the client has not yet shown (by a next command). */
    let awaitingAck: string | null = null;
    const say = (s: string) => {
      if (!socket.destroyed) socket.write(s);
    };
    const entry = (mid: string): HeldMessage => {
      let m = held.get(mid);
      if (!m) held.set(mid, (m = { id: mid, complete: 0, announced: [], computed: [], partial: 0, killedBeforeAck: 0 }));
      return m;
    };
    const line = (l: string) => {
      if (inData) {
        if (l === '.') {
          inData = false;
          const mid = id ?? '(no id)';
          const m = entry(mid);
          m.complete++;
          m.announced.push(announced);
          m.computed.push(body!.digest('hex'));
          body = null;
          awaitingAck = mid;
          // Recorded and answered in the same tick: nothing can come between the two.
          say(`250 2.0.0 queued as ${mid}\r\n`);
          return;
        }
        const text = l.startsWith('.') ? l.slice(1) : l; // RFC 5321 section 4.5.2
        if (header) {
          if (text === '') header = false;
          else {
            const m = /^X-Soak-(Id|SHA256|Slow): *(.*)$/i.exec(text);
            if (m?.[1]!.toLowerCase() === 'id') id = m[2]!;
            else if (m?.[1]!.toLowerCase() === 'sha256') announced = m[2]!;
            else if (m) slow = true;
            checkForbidden(text, stats);
          }
        } else body!.update(`${text}\r\n`, 'latin1');
        return;
      }
      checkForbidden(l, stats);
      checkRefused(l, ['XCLIENT', 'XFORWARD', 'STARTTLS'], stats);
      awaitingAck = null;
      const verb = (l.split(' ')[0] ?? '').toUpperCase();
      switch (verb) {
        case 'EHLO':
          return say('250-backend.soak\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 52428800\r\n250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n');
        case 'HELO':
          return say('250 backend.soak\r\n');
        case 'MAIL':
        case 'RCPT':
        case 'RSET':
        case 'NOOP':
          return say('250 2.0.0 OK\r\n');
        case 'DATA':
          inData = true;
          header = true;
          id = null;
          announced = '';
          slow = false;
          body = createHash('sha256');
          if (plan?.dataMs) return void setTimeout(() => say('354 End data with <CR><LF>.<CR><LF>\r\n'), plan.dataMs);
          return say('354 End data with <CR><LF>.<CR><LF>\r\n');
        case 'QUIT':
          say('221 2.0.0 bye\r\n');
          return void socket.end();
        default:
          return say('500 5.5.2 unknown command\r\n');
      }
    };
    withProxyHeader(
      socket,
      stats,
      (clientPort) => {
        plan = clientPort === null ? undefined : plans.get(clientPort);
        if (plan?.greetMs) setTimeout(() => say('220 backend.soak ESMTP scripted\r\n'), plan.greetMs);
        else say('220 backend.soak ESMTP scripted\r\n');
      },
      (chunk) => {
        pending += chunk.toString('latin1');
        let lf: number;
        while ((lf = pending.indexOf('\n')) >= 0) {
          const l = pending.slice(0, lf).replace(/\r$/, '');
          pending = pending.slice(lf + 1);
          line(l);
        }
        // A slow reader during DATA: every 64 KiB it stops reading for 100 ms, so postern has to
        // hold the client back (backpressure) rather than buffer the message.
        if (inData && slow) {
          sinceBreath += chunk.length;
          if (sinceBreath >= 65536) {
            sinceBreath = 0;
            socket.pause();
            setTimeout(() => socket.resume(), 100);
          }
        }
      },
    );
    socket.once('close', () => {
      if (inData && id) entry(id).partial++;
    });
    return {
      onKill() {
        if (awaitingAck) entry(awaitingAck).killedBeforeAck++;
        awaitingAck = null;
      },
    };
  });
}

// ---------------------------------------------------------------------------------------------
// IMAP

/** The two messages of the IMAP mailbox: 1 is small, 2 is large (for slow readers). */
export const MAILBOX: Buffer[] = [mailboxMessage(20_000), mailboxMessage(2_000_000)];
export const MAILBOX_SHA256 = MAILBOX.map((b) => createHash('sha256').update(b).digest('hex'));

function mailboxMessage(size: number): Buffer {
  const head = `From: a@example.org\r\nTo: b@example.org\r\nSubject: soak ${size}\r\n\r\n`;
  const lines: string[] = [];
  let n = head.length;
  const noise = randomBytes(Math.ceil(size * 0.75)).toString('base64');
  for (let i = 0; n < size; i += 76) {
    const l = noise.slice(i % (noise.length - 76), (i % (noise.length - 76)) + 76);
    lines.push(l);
    n += l.length + 2;
  }
  return Buffer.from(head + lines.join('\r\n') + '\r\n', 'latin1');
}

/** `starttlsListener`: behind a STARTTLS listener, where postern answers STARTTLS itself (behind implicit TLS it pipes raw). */
export function imapBackend(opts: { starttlsListener?: boolean } = {}): RestartableServer {
  return new RestartableServer('imap', (socket, stats) => {
    let authed = false;
    let pending = '';
    const say = (s: string | Buffer) => {
      if (!socket.destroyed) socket.write(s);
    };
    const line = (l: string) => {
      checkForbidden(l, stats);
      const [tag = '*', verb = '', ...rest] = l.split(' ');
      // STARTTLS is valid only before login (RFC 9051 section 6.2.1): postern steps aside after it.
      if (opts.starttlsListener && !authed) checkRefused(l.slice(tag.length), ['STARTTLS'], stats);
      switch (verb.toUpperCase()) {
        case 'CAPABILITY':
          return say(`* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n${tag} OK done\r\n`);
        case 'LOGIN':
          authed = true;
          return say(`${tag} OK LOGIN completed\r\n`);
        case 'SELECT':
          return say(`* ${MAILBOX.length} EXISTS\r\n* FLAGS (\\Seen)\r\n${tag} OK [READ-WRITE] SELECT completed\r\n`);
        case 'FETCH': {
          const n = Number(rest[0]);
          const msg = MAILBOX[n - 1];
          if (!msg) return say(`${tag} NO no such message\r\n`);
          say(`* ${n} FETCH (BODY[] {${msg.length}}\r\n`);
          say(msg);
          return say(`)\r\n${tag} OK FETCH completed\r\n`);
        }
        case 'NOOP':
          return say(`${tag} OK NOOP completed\r\n`);
        case 'LOGOUT':
          say(`* BYE logging out\r\n${tag} OK LOGOUT completed\r\n`);
          return void socket.end();
        default:
          return say(`${tag} BAD unknown command\r\n`);
      }
    };
    withProxyHeader(
      socket,
      stats,
      () => say('* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] backend.soak ready\r\n'),
      (chunk) => {
        pending += chunk.toString('latin1');
        let lf: number;
        while ((lf = pending.indexOf('\n')) >= 0) {
          const l = pending.slice(0, lf).replace(/\r$/, '');
          pending = pending.slice(lf + 1);
          line(l);
        }
      },
    );
    return { onKill() {} };
  });
}

// ---------------------------------------------------------------------------------------------
// POP3 (behind a STARTTLS listener; only attackers use it)

export function pop3Backend(): RestartableServer {
  return new RestartableServer('pop3', (socket, stats) => {
    let pending = '';
    let authed = false;
    const say = (s: string) => {
      if (!socket.destroyed) socket.write(s);
    };
    const line = (l: string) => {
      checkForbidden(l, stats);
      // STLS is valid only in the AUTHORIZATION state (RFC 2595 section 4).
      if (!authed) checkRefused(l, ['STLS'], stats);
      switch (commandWord(l)) {
        case 'CAPA':
          return say('+OK\r\nTOP\r\nUIDL\r\nSTLS\r\nUSER\r\n.\r\n');
        case 'USER':
          return say('+OK\r\n');
        case 'PASS':
          authed = true;
          return say('+OK logged in\r\n');
        case 'STAT':
          return say('+OK 0 0\r\n');
        case 'NOOP':
          return say('+OK\r\n');
        case 'QUIT':
          say('+OK bye\r\n');
          return void socket.end();
        default:
          return say('-ERR unknown command\r\n');
      }
    };
    withProxyHeader(
      socket,
      stats,
      () => say('+OK backend.soak ready\r\n'),
      (chunk) => {
        pending += chunk.toString('latin1');
        let lf: number;
        while ((lf = pending.indexOf('\n')) >= 0) {
          const l = pending.slice(0, lf).replace(/\r$/, '');
          pending = pending.slice(lf + 1);
          line(l);
        }
        if (pending.length > 1 << 20) pending = '';
      },
    );
    return { onKill() {} };
  });
}
