// Stable reason codes. Each refusal or close has exactly one, used in the summary log line and
// as a metric label; they are public API: add new ones, never rename.

/** Who caused a close: the remote client, this process, or the backend. */
export type Side = 'client' | 'local' | 'backend';

export const CloseReason = {
  /** Both sides finished normally. */
  done: 'done',
  /** The client sent something that is not a TLS ClientHello (EHLO, GET /, SSLv2 hello). */
  notTls: 'not_tls',
  /** The ClientHello did not parse (bad lengths, duplicate extensions, two host names...). */
  malformedHello: 'malformed_hello',
  /** The ClientHello exceeded the peek budget (64 KiB). */
  helloTooLarge: 'hello_too_large',
  /** Strict policy: SNI unknown or invalid -> alert unrecognized_name (112). */
  sniRefused: 'sni_refused',
  /** ALPN offered, none acceptable -> alert no_application_protocol (120). */
  alpnRefused: 'alpn_refused',
  /** The handshake deadline passed (during the peek or the handshake). */
  handshakeTimeout: 'handshake_timeout',
  /** OpenSSL rejected the handshake (no shared cipher, bad version, client alert...). */
  handshakeFailed: 'handshake_failed',
  /** The client closed or reset before the handshake finished. */
  clientGone: 'client_gone',
  /** The backend refused the connection or was unreachable. */
  backendUnreachable: 'backend_unreachable',
  /** The backend did not accept the connection within timeouts.connect. */
  backendTimeout: 'backend_timeout',
  /** The backend reset or errored during the session. */
  backendError: 'backend_error',
  /** The client reset or errored during the session. */
  clientError: 'client_error',
  /** No bytes either way for timeouts.idle. */
  idleTimeout: 'idle_timeout',
  /** The client ended the pre-TLS dialogue itself (QUIT, LOGOUT). */
  clientQuit: 'client_quit',
  /** Plaintext arrived after STARTTLS where the ClientHello belongs (CVE-2011-0411 style). */
  starttlsInjection: 'starttls_injection',
  /** A ClientHello arrived on a STARTTLS port before the STARTTLS command. */
  tlsBeforeStarttls: 'tls_before_starttls',
  /** Too many bad commands in the pre-TLS dialogue. */
  tooManyErrors: 'too_many_errors',
  /** A pre-TLS command line over the protocol's limit. */
  lineTooLong: 'line_too_long',
  /** The pre-TLS STARTTLS dialogue passed its deadline (timeouts.starttls). */
  starttlsTimeout: 'starttls_timeout',
  /** The listener's maxConnections was reached. */
  tooManyConnections: 'too_many_connections',
  /** The client's address (IPv6: its /64) reached maxConnectionsPerClient. */
  tooManyFromClient: 'too_many_from_client',
  /** A connection from an acceptProxyProtocol network sent no valid PROXY header. */
  proxyHeaderInvalid: 'proxy_header_invalid',
  /**
   * The admin endpoint: no complete HTTP request head within 2 s of connecting or of the previous
   * response (an idle or slow connection, which would otherwise hold a slot that probes need).
   */
  requestTimeout: 'request_timeout',
  /** postern is shutting down. */
  shutdown: 'shutdown',
  /** A fault inside postern (an exception) ended this session; logged with its stack. */
  internalError: 'internal_error',
  /** The backend did not answer within timeouts.backendReply (greeting, 354, "+", pipelined replies). */
  backendReplyTimeout: 'backend_reply_timeout',
  /** The backend closed while postern waited for its reply (greeting, 354, "+"): nothing could go on. */
  backendClosed: 'backend_closed',
  /** More commands in the pre-TLS dialogue than any client needs (lines.ts MAX_COMMANDS). */
  tooManyCommands: 'too_many_commands',
  /** The CA's TLS-ALPN-01 validation (RFC 8737) was answered with the challenge certificate. */
  acmeChallenge: 'acme_challenge',
} as const;
export type CloseReason = (typeof CloseReason)[keyof typeof CloseReason];

/**
 * A command postern answers itself with a refusal after STARTTLS (or on a plaintext session it
 * handed to the backend): the session goes on. Logged (the first of each per session), counted in
 * postern_commands_refused_total, and summed in the summary line's `refused`.
 */
export const RefusalReason = {
  /** A command line over the filter's limit (SMTP 500 5.5.6, IMAP TOOBIG, POP3 -ERR). */
  lineTooLong: 'line_too_long',
  /** STARTTLS / STLS with TLS already active (RFC 3207 section 4.2, RFC 2595), or on a handed-off plaintext session. */
  starttlsRefused: 'starttls_refused',
  /** SMTP XCLIENT / XFORWARD: the backend must not take an identity from the client (the PROXY header carries it). */
  commandNotPermitted: 'command_not_permitted',
} as const;
export type RefusalReason = (typeof RefusalReason)[keyof typeof RefusalReason];
