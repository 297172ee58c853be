// Interfaces between the pure STARTTLS protocol machines (smtp/imap/pop3 dialogues and the
// after-TLS stream filters) and the socket code that drives them (src/starttls/prelude.ts).
import type { RefusalReason } from '../errors.ts';

export interface DialogueOptions {
  /** The listener's hostname (lowercase). */
  hostname: string;
  /** Greeting text after the status (SMTP "220 <greeting>", IMAP "* OK [CAPABILITY ...] <greeting>", POP3 "+OK <greeting>"). */
  greeting: string;
  /** Commands that need TLS are refused before STARTTLS. */
  requireTls: boolean;
  /** The backend's capabilities as probed (SMTP EHLO keywords such as "SIZE 10240000", IMAP capability atoms, POP3 CAPA lines), never containing STARTTLS/STLS. */
  capabilities: string[];
  /** False when no certificate serves the listener: STARTTLS is then not advertised and answered 454 / NO / -ERR. */
  tlsAvailable: boolean;
}

export type DialogueAction =
  /** Send `text` (complete lines with CRLF) and keep reading. */
  | { kind: 'reply'; text: string }
  /** Send `text` (may be empty) and close the connection; `reason` is a stable code (e.g. "quit", "too_many_errors"). */
  | { kind: 'close'; text: string; reason: string }
  /** Send `text`, then discard anything already buffered after this line and start TLS. */
  | { kind: 'starttls'; text: string }
  /**
   * Plaintext session (requireTls false): connect the backend, send `replay` to it (complete lines
   * with CRLF, e.g. the client's EHLO), drop the backend's greeting and `swallow` more replies
   * (the replies to `replay`), then forward the current line and everything after it unchanged.
   */
  | { kind: 'handoff'; replay: string; swallow: number };

export interface Dialogue {
  /** The greeting postern sends on connect, with CRLF. */
  greeting(): string;
  /** Longest command line accepted, CRLF included (SMTP 512, RFC 5321 section 4.5.3.1.4). */
  readonly maxLine: number;
  /** One complete line, without its CRLF/LF. */
  onLine(line: Buffer): DialogueAction;
  /** A line longer than maxLine arrived (its bytes up to the next LF are discarded by the caller). */
  onOverlong(): DialogueAction;
}

/**
 * What postern says in the protocol's own words outside the dialogue proper (complete lines with
 * CRLF). Sent in plaintext before TLS, or inside the TLS session after the handshake.
 */
export interface ProtocolWords {
  /** The pre-TLS dialogue passed its deadline (timeouts.starttls). */
  timeout: string;
  /** The backend could not be reached: try later. */
  backendDown: string;
  /** The backend did not answer within timeouts.backendReply. */
  backendSilent: string;
  /** One connection too many (the listener's or the client's limit), sent instead of the greeting. */
  tooMany: string;
  /** postern is stopping. */
  shutdown: string;
  /** A fault inside postern ended this session: try later. */
  internalError: string;
  /** After TLS: the client had too many commands refused by postern (MAX_REFUSALS); the session ends. */
  tooManyErrors: string;
}

/** What a filter made of some client bytes. */
export interface FilterStep {
  /** Goes on to the backend. */
  toBackend: Buffer | null;
  /** postern's own answers (a second STARTTLS refused, XCLIENT refused). */
  toClient: Buffer | null;
  /** The reason code of each command refused in this step (its answer may come later, in its place among pipelined replies). */
  refused: readonly RefusalReason[] | null;
  /**
   * Bytes the filter did not read, because from them on it must wait for the backend (the
   * reply to DATA, the "+" for a synchronizing literal, too many commands outstanding) or
   * because it has answered enough for one call. The driver holds them and offers them again
   * when ready() is true and the client can take more answers.
   */
  rest: Buffer | null;
}

/**
 * Rewrites one session after STARTTLS (or a plaintext handoff) as bytes flow through postern:
 * drops the backend's greeting and the replies to replayed commands, strips STARTTLS/STLS from
 * capability lists, refuses a second STARTTLS locally, and passes message bodies / literals
 * through untouched (so text inside a message is never mistaken for a command). A filter may
 * throw only on a bug; the driver then ends the session (internal_error), never the process.
 */
export interface SessionFilter {
  /** Bytes from the client. Returns what goes on to the backend, what postern answers itself, and what it did not read yet. */
  fromClient(chunk: Buffer): FilterStep;
  /** Bytes from the backend. Returns what goes on to the client. */
  fromBackend(chunk: Buffer): Buffer | null;
  /**
   * False while the filter waits for the backend: its greeting or the swallowed replies (RFC
   * 2920 section 3.1: EHLO ends a pipelined group), a reply that decides how the next client
   * bytes are read (354, "+"), or replies to too many outstanding commands. The driver holds
   * client bytes (up to a cap, then stops reading) and runs the backend-reply deadline meanwhile.
   * False for good once MAX_REFUSALS commands were refused: the filter reads no more client bytes.
   */
  ready(): boolean;
  /** True once the backend's complete greeting has been seen (the driver then sends the replay). */
  greeted(): boolean;
  /**
   * True once nothing more needs rewriting either way (IMAP and POP3 after a successful login,
   * IMAP COMPRESS=DEFLATE started): the driver then pipes the rest raw.
   */
  passthrough(): boolean;
}

export interface FilterOptions {
  /** Backend replies to drop after the greeting (the replies to replayed commands). */
  swallow: number;
  /**
   * False for a plaintext session handed to the backend: a STARTTLS then gets "not available"
   * rather than "already active" (RFC 3207 section 4: 454 4.7.0).
   */
  tls: boolean;
  /**
   * Implicit TLS (465, 993, 995): postern has said nothing, so the backend's greeting is the
   * client's first line and is forwarded (IMAP's [CAPABILITY ...] code stripped as any other
   * capability list). Absent or false after STARTTLS or a handoff: the client already had postern's.
   */
  forwardGreeting?: boolean;
}

/** Outstanding pipelined commands a filter tracks before it waits for replies (RFC 2920 sets no limit; Postfix's smtpd_recipient_limit is 1000). */
export const MAX_OUTSTANDING = 1024;

/** Bytes of its own answers a filter produces in one fromClient() call before it returns the rest. */
export const LOCAL_REPLY_BUDGET = 4096;

/**
 * Commands a filter refuses itself in one session; it reads no further command after the last
 * one, and the driver (filtered-pipe.ts) ends the session. The backend would have closed such a
 * client (Postfix: smtpd_hard_error_limit, 20; Dovecot: 20 bad commands), but it never sees these:
 * without a limit a client could have postern answer for ever, as fast as it reads.
 */
export const MAX_REFUSALS = 20;
