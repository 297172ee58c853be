// The STARTTLS prelude stage: greets, feeds complete command lines to the protocol's dialogue (a
// pure machine) and answers them, and resolves with how the dialogue ended: STARTTLS (the same
// socket goes on to the TLS peek), a plaintext handoff to the backend (requireTls: false), or a
// close. It never touches the session: the session's runner acts on the outcome.
//
// Flow control: the dialogue's answers are postern's own writes, so they count. While the client
// does not read them (write() returned false) no further line is answered and the socket is not
// read; what is buffered is at most one read plus one partial line (maxLine).
import type { Socket } from 'node:net';
import { CloseReason } from '../errors.ts';
import type { ListenerConfig } from '../config/types.ts';
import type { Dialogue, DialogueAction, DialogueOptions, SessionFilter, FilterOptions, ProtocolWords } from './types.ts';
import type { CapabilityProbe } from './probe.ts';
import type { EndSignal } from '../net/end-signal.ts';

export interface ProtocolMachines {
  dialogue(opts: DialogueOptions): Dialogue;
  filter(opts: FilterOptions): SessionFilter;
  words(hostname: string): ProtocolWords;
}

/** What the prelude needs of one connection. */
export interface PreludeClient {
  socket: Socket;
  /** Aborted when the session is ended from outside (deadline, shutdown, fault): stop at once. */
  signal: EndSignal;
  /** The listener's settings as they were at accept. */
  listener: ListenerConfig;
  /** Whether a certificate serves the listener's hostname (STARTTLS is announced only then). */
  tlsAvailable: boolean;
}

export type PreludeOutcome =
  /** STARTTLS accepted: the TLS ClientHello comes next on the same socket. `discarded`: bytes sent after the command (CVE-2011-0411). */
  | { kind: 'starttls'; filter: SessionFilter; discarded: number }
  /** Plaintext session: `pending` (the current line and what followed it) goes to the backend after `replay`. */
  | { kind: 'handoff'; pending: Buffer; replay: string; filter: SessionFilter }
  /** The dialogue closes: `words` are its last (221, 421, BYE...), or null for a silent close. */
  | { kind: 'close'; reason: CloseReason; detail: string | null; words: Buffer | null }
  /** The client went away (FIN, reset) or the session was ended from outside. */
  | { kind: 'gone' };

export interface Prelude {
  /** Speaks the pre-TLS dialogue on the client socket; resolves with how it ended. Rejects only on a bug. */
  run(client: PreludeClient): Promise<PreludeOutcome>;
  /** Resolves when the prelude is ready to serve (its first capability probe is done). */
  ready?(): Promise<void>;
  stop?(): void;
}

const LF = 0x0a;
const EMPTY = Buffer.alloc(0);

/** Dialogue close reasons as the stable codes of src/errors.ts. */
const CLOSE_REASONS: Record<string, CloseReason> = {
  quit: CloseReason.clientQuit,
  line_too_long: CloseReason.lineTooLong,
  too_many_errors: CloseReason.tooManyErrors,
  too_many_commands: CloseReason.tooManyCommands,
};

/** Where the dialogue's answers go: `write` them, and ask `canWrite` before answering the next line. */
export interface DialogueIo {
  write(text: string): void;
  /** False while the client has not taken what was written (its write() returned false). */
  canWrite(): boolean;
}

/**
 * The socket-free core of the prelude: splits the client's bytes into lines (at most maxLine,
 * CRLF included; an overlong line is answered once and dropped up to its LF), hands them to the
 * dialogue, carries out its answers, and reports the outcome when the dialogue is over. It stops
 * answering while `io.canWrite()` is false; pump() goes on once the client has read.
 */
export class DialogueReader {
  private readonly dialogue: Dialogue;
  private readonly machines: ProtocolMachines;
  private readonly io: DialogueIo;
  private buf: Buffer = EMPTY; // unread bytes; lines before `start` are done
  private start = 0;
  private discarding = false; // inside an overlong line, up to its LF
  private first = true;
  /** Set once the dialogue is over. */
  outcome: PreludeOutcome | null = null;
  /** True when answering stopped because the client is not reading. */
  blocked = false;

  constructor(dialogue: Dialogue, machines: ProtocolMachines, io: DialogueIo) {
    this.dialogue = dialogue;
    this.machines = machines;
    this.io = io;
  }

  /** Bytes from the client. */
  feed(chunk: Buffer): void {
    if (this.outcome) return;
    if (this.first) {
      this.first = false;
      // 0x16: a TLS ClientHello before STARTTLS (a client that expected implicit TLS).
      if (chunk[0] === 0x16) {
        this.outcome = { kind: 'close', reason: CloseReason.tlsBeforeStarttls, detail: null, words: null };
        return;
      }
    }
    this.buf = this.start >= this.buf.length ? chunk : Buffer.concat([this.buf.subarray(this.start), chunk]);
    this.start = 0;
    this.pump();
  }

  /** Answers complete lines while the client takes the answers. */
  pump(): void {
    const d = this.dialogue;
    this.blocked = false;
    while (!this.outcome) {
      if (!this.io.canWrite()) {
        this.blocked = true;
        return;
      }
      const lf = this.buf.indexOf(LF, this.start);
      if (lf < 0) break;
      const lineStart = this.start;
      this.start = lf + 1;
      if (this.discarding) {
        this.discarding = false;
        continue;
      }
      if (lf + 1 - lineStart > d.maxLine) {
        this.act(d.onOverlong(), lineStart);
        continue;
      }
      const lineEnd = lf > lineStart && this.buf[lf - 1] === 0x0d ? lf - 1 : lf;
      this.act(d.onLine(this.buf.subarray(lineStart, lineEnd)), lineStart);
    }
    if (this.outcome) return;
    // No complete line left: keep the partial one, unless it is already over the limit.
    this.buf = this.start >= this.buf.length ? EMPTY : this.buf.subarray(this.start);
    this.start = 0;
    if (this.buf.length > d.maxLine && !this.discarding) {
      // An overlong line still arriving: answer now and drop bytes up to its end.
      this.discarding = true;
      this.buf = EMPTY;
      this.act(d.onOverlong(), 0);
    } else if (this.discarding) this.buf = EMPTY;
  }

  /** Carries out one dialogue action. `at`: where its line began in the buffer. */
  private act(action: DialogueAction, at: number): void {
    switch (action.kind) {
      case 'reply':
        if (action.text !== '') this.io.write(action.text);
        return;
      case 'close':
        this.outcome = { kind: 'close', reason: CLOSE_REASONS[action.reason] ?? CloseReason.tooManyErrors, detail: action.reason, words: Buffer.from(action.text) };
        return;
      case 'starttls':
        this.io.write(action.text);
        // RFC 3207 section 4 / CVE-2011-0411: anything the client sent after STARTTLS but
        // before seeing our answer was sent in the clear and must not survive into TLS.
        this.outcome = { kind: 'starttls', filter: this.machines.filter({ swallow: 0, tls: true }), discarded: this.buf.length - this.start };
        return;
      case 'handoff':
        this.outcome = { kind: 'handoff', pending: Buffer.from(this.buf.subarray(at)), replay: action.replay, filter: this.machines.filter({ swallow: action.swallow, tls: false }) };
        return;
    }
  }
}

export class StarttlsPrelude implements Prelude {
  private readonly machines: ProtocolMachines;
  private readonly probe: CapabilityProbe;

  constructor(machines: ProtocolMachines, probe: CapabilityProbe) {
    this.machines = machines;
    this.probe = probe;
  }

  ready(): Promise<void> {
    return this.probe.first;
  }

  stop(): void {
    this.probe.stop();
  }

  run(client: PreludeClient): Promise<PreludeOutcome> {
    const { socket, signal, listener } = client;
    const st = listener.starttls!;
    const dialogue = this.machines.dialogue({
      hostname: listener.hostname,
      greeting: st.greeting,
      requireTls: st.requireTls,
      capabilities: this.probe.capabilities(),
      tlsAvailable: client.tlsAvailable,
    });
    // The dialogue's answers are postern's own writes: while the client does not read them, no
    // further line is answered and the socket is not read (the buffer is then at most one read
    // plus one partial line).
    const reader = new DialogueReader(dialogue, this.machines, { write: (t) => socket.write(t), canWrite: () => !socket.writableNeedDrain });
    return new Promise<PreludeOutcome>((resolve, reject) => {
      let settled = false;
      const settle = (outcome: PreludeOutcome | null, err?: unknown) => {
        if (settled) return;
        settled = true;
        socket.off('data', onData);
        socket.off('drain', onDrain);
        socket.off('end', onGone);
        socket.off('close', onGone);
        signal.removeEventListener('abort', onGone);
        if (outcome) resolve(outcome);
        else reject(err);
      };
      /** After the reader ran: the outcome, or read on (or not, while the client is not reading). */
      const next = () => {
        if (reader.outcome) {
          // The TLS peek or the backend reads the rest: nothing more flows until they do.
          socket.pause();
          return settle(reader.outcome);
        }
        if (reader.blocked) socket.pause();
        else socket.resume();
      };
      /** Handlers run on socket events: a throw must end this session (via the runner), never escape. */
      const onData = (chunk: Buffer) => {
        try {
          reader.feed(chunk);
          next();
        } catch (err) {
          settle(null, err);
        }
      };
      const onDrain = () => {
        try {
          reader.pump();
          next();
        } catch (err) {
          settle(null, err);
        }
      };
      // The listener allows half-open sockets (the backend's reply must still reach a client that
      // sent FIN after its last command), so during the dialogue a client's FIN alone would leave
      // the socket open until timeouts.starttls: a scanner that reads the banner and leaves would
      // hold a descriptor for a minute. Nobody is left to answer: close now. The same when the
      // session is ended from outside (deadline, shutdown).
      const onGone = () => settle({ kind: 'gone' });

      if (signal.aborted) return settle({ kind: 'gone' });
      socket.on('data', onData);
      socket.on('drain', onDrain);
      socket.once('end', onGone);
      socket.once('close', onGone);
      signal.addEventListener('abort', onGone);
      socket.write(dialogue.greeting());
      socket.resume();
    });
  }
}
