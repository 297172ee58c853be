// The socket side of a STARTTLS listener: greets, feeds complete command lines to the protocol's
// dialogue (a pure machine), and on STARTTLS hands the same socket to the TLS path; on a
// plaintext session (requireTls: false) hands it to the backend. Bytes pipelined after STARTTLS
// are discarded (CVE-2011-0411).
import type { Prelude } from '../listener.ts';
import type { Session, SessionEnv } from '../session.ts';
import { CloseReason } from '../errors.ts';
import type { Dialogue, DialogueOptions, SessionFilter, FilterOptions } from './types.ts';
import type { CapabilityProbe } from './probe.ts';

export interface ProtocolMachines {
  dialogue(opts: DialogueOptions): Dialogue;
  filter(opts: FilterOptions): SessionFilter;
}

/** Bad input closes the dialogue without a reply once this many bytes wait without a line end. */
const LF = 0x0a;

export class StarttlsPrelude implements Prelude {
  private readonly env: SessionEnv;
  private readonly machines: ProtocolMachines;
  private readonly probe: CapabilityProbe;

  constructor(env: SessionEnv, machines: ProtocolMachines, probe: CapabilityProbe) {
    this.env = env;
    this.machines = machines;
    this.probe = probe;
  }

  ready(): Promise<void> {
    return this.probe.first;
  }

  stop(): void {
    this.probe.stop();
  }

  run(session: Session): void {
    const { listener } = session;
    const st = listener.starttls!;
    const dialogue = this.machines.dialogue({
      hostname: listener.hostname,
      greeting: st.greeting,
      requireTls: st.requireTls,
      capabilities: this.probe.capabilities(),
      tlsAvailable: this.env.store().lookup(listener.hostname) !== null,
    });
    const socket = session.socket;
    session.lastWords = Buffer.from(dialogue.onTimeout());
    session.shutdownWords = Buffer.from(shutdownWords(listener.protocol, listener.hostname));
    socket.write(dialogue.greeting());

    let buf: Buffer = Buffer.alloc(0);
    let discarding = false; // inside an overlong line, up to its LF
    let first = true;
    const stop = () => {
      socket.off('data', onData);
      socket.off('end', onEnd);
    };
    // The listener allows half-open sockets (the backend's reply must still reach a client that
    // sent FIN after its last command), so during the dialogue a client's FIN alone would leave
    // the socket open until timeouts.starttls: a scanner that reads the banner and leaves would
    // hold a descriptor for a minute. Nobody is left to answer: close now.
    const onEnd = () => {
      stop();
      session.abort(CloseReason.clientGone, 'client');
    };
    const onData = (chunk: Buffer) => {
      if (first) {
        first = false;
        // 0x16 0x03: a ClientHello before STARTTLS (a client that expected implicit TLS).
        if (chunk[0] === 0x16) {
          stop();
          return session.abort(CloseReason.tlsBeforeStarttls, 'client');
        }
      }
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      let start = 0;
      for (;;) {
        const lf = buf.indexOf(LF, start);
        if (lf < 0) break;
        const lineEnd = lf > start && buf[lf - 1] === 0x0d ? lf - 1 : lf;
        const line = buf.subarray(start, lineEnd);
        const lineStart = start;
        start = lf + 1;
        if (discarding) {
          discarding = false;
          continue;
        }
        if (lf + 1 - lineStart > dialogue.maxLine) {
          if (this.act(session, dialogue.onOverlong(), buf.subarray(lineStart), buf.subarray(start), stop)) return;
          continue;
        }
        if (this.act(session, dialogue.onLine(line), buf.subarray(lineStart), buf.subarray(start), stop)) return;
      }
      buf = buf.subarray(start);
      if (buf.length > dialogue.maxLine && !discarding) {
        // An overlong line still arriving: answer now and drop bytes up to its end.
        discarding = true;
        buf = Buffer.alloc(0);
        if (this.act(session, dialogue.onOverlong(), Buffer.alloc(0), Buffer.alloc(0), stop)) return;
      } else if (discarding) buf = Buffer.alloc(0);
    };
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.resume();
  }

  /** Carries out one action; true when the dialogue is over (TLS, handoff or close). */
  private act(session: Session, action: ReturnType<Dialogue['onLine']>, fromLine: Buffer, rest: Buffer, stop: () => void): boolean {
    const socket = session.socket;
    switch (action.kind) {
      case 'reply':
        socket.write(action.text);
        return false;
      case 'close': {
        stop();
        const reason = action.reason === 'quit' ? CloseReason.clientQuit : action.reason === 'line_too_long' ? CloseReason.lineTooLong : action.reason === 'too_many_errors' ? CloseReason.tooManyErrors : action.reason;
        session.abort(reason as CloseReason, 'client', action.reason, Buffer.from(action.text));
        return true;
      }
      case 'starttls': {
        stop();
        socket.pause();
        socket.write(action.text);
        // RFC 3207 section 4 / CVE-2011-0411: anything the client sent after STARTTLS but before
        // seeing our 220 was sent in the clear and must not survive into the TLS session.
        if (rest.length > 0) session.countInjection(rest.length);
        void session.secureAndProxy(null, { afterStarttls: true, filter: this.machines.filter({ swallow: 0 }) });
        return true;
      }
      case 'handoff': {
        stop();
        socket.pause();
        void session.handoff(Buffer.from(fromLine), action.replay, this.machines.filter({ swallow: action.swallow }));
        return true;
      }
    }
  }
}

/** What a client still in the pre-TLS dialogue is told when postern stops. */
function shutdownWords(protocol: string, hostname: string): string {
  switch (protocol) {
    // RFC 5321 section 3.8: 421 when the service must shut down; the sender retries later.
    case 'smtp':
      return `421 4.3.2 ${hostname} Service shutting down\r\n`;
    // RFC 9051 section 7.1.5.
    case 'imap':
      return `* BYE ${hostname} shutting down\r\n`;
    default:
      return '-ERR [SYS/TEMP] shutting down\r\n';
  }
}
