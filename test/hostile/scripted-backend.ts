// A mail backend whose timing the test scripts per client (issue 14: postern waiting for its
// backend while the client keeps writing). Connections whose PROXY header names a client port that
// the test planned for follow the plan; all others (postern's capability probes, health checks,
// good clients) get a normal, immediate SMTP/IMAP/POP3 dialogue like startMailBackend's.
//
// A plan can
//   - hold the greeting: send `greetingFirst` (e.g. postscreen's "220-" line) at once and the
//     rest only on release(), or never greet at all ('never');
//   - hold SMTP's 354 after DATA, or IMAP's "+" after a synchronizing literal, until release();
//   - answer an untagged "{5}" line the way Dovecot 2.3 does ("* BAD Error in IMAP command
//     received by server.", no "+"), which the normal dialogue always does.
// Every connection records what it received, and how much of it arrived while the backend was
// still waiting to say something (before its complete greeting, after DATA before its 354, after a
// literal's announcement before its "+"): postern must never pass the client's bytes on early.
// Records are capped (the flood tests push far more than a test needs to keep).
import net from 'node:net';
import { decodeProxyHeader } from '../../src/backend/proxy-decode.ts';
import type { DecodedProxy } from '../../src/backend/proxy-decode.ts';
import { sleep, type MailProtocol } from './harness.ts';

export interface Plan {
  /** 'now' (default), 'never' (accept and stay silent), or 'held': `greetingFirst` now, the rest on release(). */
  greeting?: 'now' | 'never' | 'held';
  /** Sent at once when the greeting is held (SMTP: "220-backend.test wait\r\n"). */
  greetingFirst?: string;
  /** SMTP: the 354 after DATA waits for release(). */
  hold354?: boolean;
  /** IMAP: the "+" after a synchronizing literal {n} waits for release(). */
  holdPlus?: boolean;
  /** Reads nothing after the header (a backend that does not keep up): TCP pushes back on postern. */
  paused?: boolean;
}

export interface ScriptedConnection {
  socket: net.Socket;
  header: DecodedProxy | null;
  /** Bytes received after the header (the first RECORD_CAP of them are kept in `data`). */
  received: number;
  data: Buffer;
  /** Bytes that arrived while the backend still owed a greeting, a 354 or a "+". */
  early: number;
  /** The first bytes of those, for the failure message. */
  earlySample: string;
  /** Sends what was held (greeting rest, 354, "+"). */
  release(): void;
  closed: Promise<void>;
}

export interface ScriptedBackend {
  port: number;
  connections: ScriptedConnection[];
  /** The plan for the session of the client whose source port is `clientPort`. */
  plan(clientPort: number, plan: Plan): void;
  /** The connection carrying that client (waits for it, bounded). */
  forClient(clientPort: number, timeoutMs?: number): Promise<ScriptedConnection>;
  close(): Promise<void>;
}

const RECORD_CAP = 1024 * 1024;
/** A line without LF longer than this is dropped (the flood tests send junk). */
const MAX_PENDING = 64 * 1024;

const GREETING: Record<MailProtocol, string> = { smtp: '220 backend.test ESMTP\r\n', imap: '* OK backend ready\r\n', pop3: '+OK backend ready\r\n' };

export async function startScriptedBackend(protocol: MailProtocol): Promise<ScriptedBackend> {
  const plans = new Map<number, Plan>();
  const connections: ScriptedConnection[] = [];
  const sockets = new Set<net.Socket>();

  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    let resolveClosed!: () => void;
    const closed = new Promise<void>((r) => (resolveClosed = r));
    socket.on('close', () => {
      sockets.delete(socket);
      resolveClosed();
    });
    let pre = Buffer.alloc(0);
    let conn: ScriptedConnection | null = null;
    // What the backend still owes before client bytes may arrive: null when nothing.
    let owing: 'greeting' | '354' | '+' | null = 'greeting';
    let onRelease: (() => void) | null = null;
    let pending = '';
    let inData = false;
    let literal = 0; // IMAP: literal octets still to read
    let literalTag = '';
    let helo = false;
    const say = (s: string) => {
      if (!socket.destroyed && socket.writable) socket.write(s);
    };

    const answer = (line: string, plan: Plan) => {
      if (protocol === 'smtp') {
        if (inData) {
          if (line === '.') {
            inData = false;
            say('250 2.0.0 queued\r\n');
          }
          return;
        }
        const [verb = '', ...rest] = line.split(' ');
        switch (verb.toUpperCase()) {
          case 'EHLO':
            helo = true;
            return say('250-backend.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n');
          case 'HELO':
            helo = true;
            return say('250 backend.test\r\n');
          case 'NOOP':
            return say(`250 2.0.0 OK ${rest.join(' ')}\r\n`);
          case 'MAIL':
            return say(helo ? '250 2.0.0 OK\r\n' : '503 5.5.1 EHLO first\r\n');
          case 'RCPT':
          case 'RSET':
            return say('250 2.0.0 OK\r\n');
          case 'DATA':
            inData = true;
            if (plan.hold354) {
              owing = '354';
              onRelease = () => say('354 go ahead\r\n');
              return;
            }
            return say('354 go ahead\r\n');
          case 'QUIT':
            say('221 2.0.0 bye\r\n');
            return void socket.end();
          default:
            return say('500 5.5.2 unknown\r\n');
        }
      }
      if (protocol === 'imap') {
        const lit = /\{(\d{1,9})\}$/.exec(line);
        const sp = line.indexOf(' ');
        const tag = sp < 0 ? line : line.slice(0, sp);
        if (lit && (sp < 0 || tag.startsWith('{'))) {
          // Dovecot 2.3 on "{5}" alone: an untagged BAD and no "+"; the next line is a new command.
          return say('* BAD Error in IMAP command received by server.\r\n');
        }
        if (lit) {
          const size = Number(lit[1]);
          const go = () => {
            literal = size;
            literalTag = tag;
            say('+ OK\r\n');
          };
          if (plan.holdPlus) {
            owing = '+';
            onRelease = go;
          } else go();
          return;
        }
        if (literalTag !== '') {
          // The rest of the command after its literal.
          const t = literalTag;
          literalTag = '';
          return say(`${t} OK done\r\n`);
        }
        const [, verb = '', ...rest] = line.split(' ');
        switch (verb.toUpperCase()) {
          case 'CAPABILITY':
            return say(`* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\n${tag} OK done\r\n`);
          case 'NOOP':
            return say(`${tag} OK ${rest.join(' ')}\r\n`);
          case 'LOGOUT':
            say(`* BYE bye\r\n${tag} OK done\r\n`);
            return void socket.end();
          default:
            return say(`${tag} BAD unknown\r\n`);
        }
      }
      const [verb = '', ...rest] = line.split(' ');
      switch (verb.toUpperCase()) {
        case 'CAPA':
          return say('+OK\r\nSTLS\r\nUSER\r\n.\r\n');
        case 'NOOP':
          return say(`+OK ${rest.join(' ')}\r\n`);
        case 'USER':
        case 'PASS':
          return say('+OK\r\n');
        case 'QUIT':
          say('+OK bye\r\n');
          return void socket.end();
        default:
          return say('-ERR unknown\r\n');
      }
    };

    const feed = (c: ScriptedConnection, chunk: Buffer, plan: Plan) => {
      if (c.data.length < RECORD_CAP) c.data = Buffer.concat([c.data, chunk.subarray(0, RECORD_CAP - c.data.length)]);
      c.received += chunk.length;
      let i = 0;
      while (i < chunk.length) {
        if (owing !== null) {
          // Everything from here on arrived before the backend said what it owes.
          const rest = chunk.subarray(i);
          if (c.earlySample.length < 200) c.earlySample += rest.toString('latin1', 0, 200 - c.earlySample.length);
          c.early += rest.length;
          return;
        }
        if (literal > 0) {
          const n = Math.min(literal, chunk.length - i);
          literal -= n;
          i += n;
          continue;
        }
        const lf = chunk.indexOf(0x0a, i);
        if (lf < 0) {
          pending += chunk.toString('latin1', i);
          if (pending.length > MAX_PENDING) pending = '';
          return;
        }
        const line = (pending + chunk.toString('latin1', i, lf)).replace(/\r$/, '');
        pending = '';
        i = lf + 1;
        answer(line, plan);
      }
    };

    const start = (header: DecodedProxy | null, rest: Buffer) => {
      const plan = (header?.source?.port !== undefined ? plans.get(header.source.port) : undefined) ?? {};
      const c: ScriptedConnection = {
        socket, header, received: 0, data: Buffer.alloc(0), early: 0, earlySample: '', closed,
        release: () => {
          const f = onRelease;
          onRelease = null;
          owing = null;
          f?.();
        },
      };
      conn = c;
      if (plan.greeting === 'held') {
        say(plan.greetingFirst ?? '');
        onRelease = () => say(GREETING[protocol]);
      } else if (plan.greeting === 'never') {
        onRelease = () => say(GREETING[protocol]);
      } else {
        owing = null;
        say(GREETING[protocol]);
      }
      // Registered last: a test waiting in forClient() sees the connection with its plan applied.
      connections.push(c);
      socket.on('data', (chunk: Buffer) => feed(c, chunk, plan));
      if (rest.length > 0) feed(c, rest, plan);
      if (plan.paused) socket.pause();
    };

    const onHeader = (chunk: Buffer) => {
      pre = Buffer.concat([pre, chunk]);
      const d = decodeProxyHeader(pre);
      if (d.kind === 'need-more') return;
      socket.off('data', onHeader);
      if (d.kind === 'header') start(d.header, pre.subarray(d.header.length));
      else start(null, pre);
    };
    socket.on('data', onHeader);
    socket.on('end', () => {
      if (conn) socket.end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));

  return {
    port: (server.address() as net.AddressInfo).port,
    connections,
    plan: (clientPort, plan) => void plans.set(clientPort, plan),
    async forClient(clientPort, timeoutMs = 5000) {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const c = connections.find((x) => x.header?.source?.port === clientPort);
        if (c) return c;
        if (Date.now() > until) throw new Error(`no backend connection for client port ${clientPort}`);
        await sleep(10);
      }
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

/** What a session's backend connection received, as text (latin1), for `not.toMatch` checks. */
export function receivedText(c: ScriptedConnection | undefined): string {
  return c ? c.data.toString('latin1') : '';
}
