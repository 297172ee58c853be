// Interfaces between the pure STARTTLS protocol machines (smtp/imap/pop3 dialogues and the
// after-TLS stream filters) and the socket code that drives them (src/starttls/prelude.ts).

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
  /** The pre-TLS deadline passed or postern is shutting down: the last words before close (SMTP "421 4.4.2 ..."), may be empty. */
  onTimeout(): string;
}

/**
 * Rewrites one session after STARTTLS (or a plaintext handoff) as bytes flow through postern:
 * drops the backend's greeting and the replies to replayed commands, strips STARTTLS/STLS from
 * capability lists, refuses a second STARTTLS locally, and passes message bodies / literals
 * through untouched (so text inside a message is never mistaken for a command).
 */
export interface SessionFilter {
  /** Bytes from the client. Returns what goes on to the backend and what postern answers itself. */
  fromClient(chunk: Buffer): { toBackend: Buffer | null; toClient: Buffer | null };
  /** Bytes from the backend. Returns what goes on to the client. */
  fromBackend(chunk: Buffer): Buffer | null;
  /**
   * False while the backend's greeting and the swallowed replies are still outstanding; the
   * driver holds client bytes until then (RFC 2920 section 3.1: EHLO ends a pipelined group).
   */
  ready?(): boolean;
  /** True once the backend's complete greeting has been seen (the driver then sends the replay). */
  greeted?(): boolean;
}

export interface FilterOptions {
  /** Backend replies to drop after the greeting (the replies to replayed commands). */
  swallow: number;
}
