// One client connection from accept to close. runSession() walks the stages in order, top to
// bottom, and is the only place that turns their outcomes into the session's end:
//   [PROXY header from a load balancer] -> limits -> [STARTTLS prelude] -> peek ClientHello
//   -> ALPN + SNI policy -> handshake -> dial the backend -> splice -> summary
// Its try/catch is the one boundary that matters: anything thrown by any stage, or by a handler
// a stage installed, ends this session with reason internal_error (logged with its stack,
// counted, the protocol's "try later" where it can be said) and never the process. Session holds
// the connection's state: its sockets, the summary line, the current deadline and how to close.
import type { Socket } from 'node:net';
import type tls from 'node:tls';
import type { SecureContext } from 'node:tls';
import type { BackendConfig, ListenerConfig } from './config/types.ts';
import type { CertStore } from './tls/certstore.ts';
import type { Logger } from './log.ts';
import type { Metrics } from './metrics.ts';
import { CloseReason, type RefusalReason, type Side } from './errors.ts';
import { peekClientHello } from './tls/peek.ts';
import type { ClientHello } from './tls/clienthello.ts';
import { decide, type SniClass, type Decision } from './tls/sni-policy.ts';
import { alertRecord, ALERT_NAMES, ALERT_DECODE_ERROR, ALERT_ILLEGAL_PARAMETER, ALERT_RECORD_OVERFLOW } from './tls/alerts.ts';
import { startHandshake } from './tls/handshake.ts';
import { checkSniBytes, escapeForLog, patternCovers } from './tls/names.ts';
import { dialBackend } from './backend/connect.ts';
import { encodeProxyV1, encodeProxyV2 } from './backend/proxy-protocol.ts';
import { readInboundProxy } from './net/accept-proxy.ts';
import { inNetworks, unmapped } from './net/address.ts';
import { LAST_WORDS_MS, splice, type Splice } from './splice.ts';
import { endGracefully } from './net/last-words.ts';
import type { Prelude } from './starttls/prelude.ts';
import type { ProtocolWords, SessionFilter } from './starttls/types.ts';
import { ACME_TLS_ALPN, type ChallengeBoard } from './acme/challenges.ts';
import type { TicketKeys } from './tls/tickets.ts';
import { SessionEnd, type EndSignal } from './net/end-signal.ts';

/** What a session needs from the daemon; `store()` is read per connection so reloads apply at once. */
export interface SessionEnv {
  listener: ListenerConfig;
  store(): CertStore;
  log: Logger;
  metrics: Metrics;
  /** Open ACME TLS-ALPN-01 validations (acme on); absent otherwise. */
  challenges?: ChallengeBoard;
  /** Session ticket keys (resumption); absent: each context's own random key. */
  tickets?: TicketKeys;
}

/** What the listener gives each session: its prelude and its limits. */
export interface SessionDeps {
  prelude: Prelude | null;
  /** Implicit TLS listeners of a mail protocol: the after-TLS filter (null for protocol tls: raw). */
  implicitFilter?: () => SessionFilter | null;
  /** Counts the session against the limits (by its real client): a refusal's reason, or null. */
  admit(s: Session): CloseReason | null;
}

/** The fields of the one summary line written when the connection closes. */
export interface Summary {
  id: number;
  listener: string;
  client: string;
  clientPort: number;
  sni: string | null;
  sniClass: SniClass | null;
  decision: Decision | null;
  servedName: string | null;
  alpn: string | null;
  tlsVersion: string | null;
  /** The handshake resumed a session (a ticket) instead of a full handshake; null without TLS. */
  resumed: boolean | null;
  cipher: string | null;
  backend: string | null;
  bytesIn: number;
  bytesOut: number;
  durationMs: number;
  closeReason: CloseReason;
  side: Side | null;
  detail: string | null;
  /** Commands postern refused itself after STARTTLS or the handoff (RefusalReason); null when none. */
  refused: number | null;
}

/** How a stage ended the session: the reason, who caused it, and the last words to the client. */
export interface Ending {
  reason: CloseReason;
  side: Side | null;
  detail?: string | null;
  words?: Buffer | string | null;
}

/**
 * Where the client is: in plaintext (a STARTTLS listener's dialogue, or a handed-off plaintext
 * session), in the TLS handshake (nothing can be said), or in the TLS session.
 */
type Phase = 'plain' | 'handshake' | 'secure';

let nextId = 1;

export class Session {
  readonly summary: Summary;
  /** The client's TCP socket. */
  readonly socket: Socket;
  readonly env: SessionEnv;
  /** The listener's settings as they were at accept: a reload applies to new connections only. */
  readonly listener: ListenerConfig;
  /**
   * The client as the backend must learn it: the TCP peer, or the original client named by a
   * load balancer's PROXY header (acceptProxyProtocol).
   */
  readonly client: { address: string; port: number; localAddress: string; localPort: number };
  private readonly words: ProtocolWords | null;
  private readonly started = performance.now();
  private readonly ending = new SessionEnd();
  private phase: Phase;
  /** The socket the client reads from: the TCP socket, then the TLS socket once the handshake starts. */
  private channel: Socket;
  private tlsSocket: tls.TLSSocket | null = null;
  private deadline: NodeJS.Timeout | null = null;
  private splicing: Splice | null = null;
  private ended = false;
  private finished = false;
  private channelClosed: Promise<void>;
  /** The refusal reasons already logged for this session (REFUSAL_BITS). */
  refusalsLogged = 0;

  constructor(socket: Socket, env: SessionEnv, words: ProtocolWords | null) {
    this.socket = socket;
    this.channel = socket;
    this.env = env;
    this.listener = env.listener;
    this.words = words;
    // An IPv4 client on a [::] listener arrives as ::ffff:a.b.c.d: logged, keyed and sent on as IPv4.
    this.client = { address: unmapped(socket.remoteAddress ?? ''), port: socket.remotePort ?? 0, localAddress: unmapped(socket.localAddress ?? ''), localPort: socket.localPort ?? 0 };
    this.summary = {
      id: nextId++,
      listener: env.listener.name,
      client: this.client.address || '?',
      clientPort: socket.remotePort ?? 0,
      sni: null,
      sniClass: null,
      decision: null,
      servedName: null,
      alpn: null,
      tlsVersion: null,
      resumed: null,
      cipher: null,
      backend: null,
      bytesIn: 0,
      bytesOut: 0,
      durationMs: 0,
      closeReason: CloseReason.clientGone,
      side: null,
      detail: null,
      refused: null,
    };
    this.channelClosed = closedPromise(socket);
    this.recordErrors(socket);
    // Deadlines are absolute (threats.md: slowloris), never reset by incoming bytes: from accept
    // to STARTTLS for the pre-TLS dialogue, from accept to the end of the handshake for implicit TLS.
    if (this.listener.tls === 'starttls') {
      this.phase = 'plain';
      this.arm(CloseReason.starttlsTimeout, this.listener.timeouts.starttlsMs);
    } else {
      this.phase = 'handshake';
      this.arm(CloseReason.handshakeTimeout, this.listener.timeouts.handshakeMs);
    }
  }

  /** Aborted once the session has ended (stages waiting on the client stop at once). */
  get signal(): EndSignal {
    return this.ending;
  }

  /** A socket must always have an error listener: an unhandled 'error' would end the process. */
  private recordErrors(s: Socket) {
    s.on('error', (err: NodeJS.ErrnoException) => {
      this.summary.detail ??= err.code ?? err.message;
    });
  }

  /** Starts the absolute deadline of the current phase (replacing the previous one). */
  arm(reason: CloseReason, ms: number) {
    this.disarm();
    this.deadline = setTimeout(() => this.end({ reason, side: 'client', words: this.say('timeout') }), ms);
  }

  disarm() {
    if (this.deadline) clearTimeout(this.deadline);
    this.deadline = null;
  }

  /** The protocol's words for `what`, when the client can hear them now (never mid-handshake). */
  say(what: keyof ProtocolWords): string | null {
    if (!this.words || this.phase === 'handshake') return null;
    if (what === 'timeout' && this.phase !== 'plain') return null;
    return this.words[what];
  }

  /** A load balancer's PROXY header named the real client (and the address it was sent to). */
  setClient(source: { address: string; port: number }, destination: { address: string; port: number } | null) {
    Object.assign(this.client, { address: source.address, port: source.port });
    if (destination) Object.assign(this.client, { localAddress: destination.address, localPort: destination.port });
    this.summary.client = source.address;
    this.summary.clientPort = source.port;
  }

  /**
   * The TLS handshake is next (after STARTTLS) or begins on `tlsSocket`: from here the client
   * cannot be spoken to until it is done.
   */
  enterHandshake(tlsSocket: tls.TLSSocket | null) {
    this.phase = 'handshake';
    if (!tlsSocket) return;
    this.tlsSocket = tlsSocket;
    this.channel = tlsSocket;
    this.channelClosed = closedPromise(tlsSocket);
    this.recordErrors(tlsSocket);
  }

  enterSecure() {
    this.phase = 'secure';
    this.disarm();
  }

  /**
   * Ends the session, once: records why, says the last words (if any), closes. The first
   * reason wins; a later call (the stage noticing that its socket closed) changes nothing.
   */
  end(e: Ending) {
    if (this.ended) return;
    this.ended = true;
    this.disarm();
    const s = this.summary;
    s.closeReason = e.reason;
    s.side = e.side;
    if (e.detail != null) s.detail = e.detail;
    this.close(e.words ?? null);
    // Last: the stages waiting on the client stop (their listeners run here, synchronously);
    // whatever one of them does, the session is already recorded and closing.
    this.ending.abort();
  }

  /** A fault inside postern: this session ends (internal_error), logged with the stack and counted. */
  fault(err: unknown) {
    const { log, metrics } = this.env;
    metrics.internalErrors.inc({ listener: this.listener.name });
    const message = err instanceof Error ? err.message : String(err);
    log.error({ id: this.summary.id, listener: this.listener.name, client: this.summary.client, reason: CloseReason.internalError, error: err instanceof Error ? err.stack : message }, 'session ended by an internal error');
    this.end({ reason: CloseReason.internalError, side: 'local', detail: message, words: this.say('internalError') });
  }

  /** Shutdown: a splice is closed at once; before that, the protocol's goodbye where it can be said. */
  stop() {
    if (this.splicing) this.splicing.stop();
    else this.end({ reason: CloseReason.shutdown, side: 'local', words: this.say('shutdown') });
  }

  private close(words: Buffer | string | null) {
    const s = this.channel;
    // Whatever the client sent after the handshake will never be read (the session ends here):
    // let it flow away. A TLS socket closed with decrypted data still waiting in it leaks native
    // memory (~2.7 KB per session in the soak, e.g. an EHLO that arrives while the backend is
    // down and the 421 goes out); V8's heap does not show it, RSS does.
    this.tlsSocket?.resume();
    // And bytes already received on the TCP socket are read and dropped: closing with unread
    // data makes the kernel send a reset, which can destroy the last words in flight.
    if (!this.tlsSocket) this.socket.resume();
    if (this.tlsSocket && this.phase === 'secure') {
      // Inside TLS: the words, close_notify, then the FIN; the TCP socket beneath goes last.
      const raw = this.socket;
      endGracefully(this.tlsSocket, words, () => raw.destroy());
      return;
    }
    if (words && s.writable) {
      // Flush the last words, then close at once: no waiting for the peer's FIN.
      s.write(words);
      s.destroySoon();
      // Never wait on a peer that does not read: the write either went out or it did not.
      setTimeout(() => s.destroy(), LAST_WORDS_MS).unref();
    } else s.destroy();
    if (s !== this.socket) this.socket.destroy();
  }

  /** The splice owns both sockets from here until it reports. */
  spliced(sp: Splice) {
    this.splicing = sp;
  }

  /** Resolves when the client's socket is closed (end() guarantees it will be). */
  closed(): Promise<void> {
    return this.channelClosed;
  }

  /** Writes the summary line and the connection metrics, once. */
  finish() {
    if (this.finished) return;
    this.finished = true;
    this.disarm();
    const s = this.summary;
    s.durationMs = Math.round(performance.now() - this.started);
    const { metrics, log } = this.env;
    const name = this.listener.name;
    metrics.connections.inc({ listener: name, reason: s.closeReason });
    if (s.bytesIn) metrics.bytes.inc({ listener: name, direction: 'in' }, s.bytesIn);
    if (s.bytesOut) metrics.bytes.inc({ listener: name, direction: 'out' }, s.bytesOut);
    log.info(s, 'connection closed');
  }
}

function closedPromise(s: Socket): Promise<void> {
  return new Promise((resolve) => {
    if (s.closed) resolve();
    else s.once('close', () => resolve());
  });
}

/** Runs one connection to its end. Never rejects: a fault ends this session only. */
export async function runSession(s: Session, deps: SessionDeps): Promise<void> {
  try {
    s.end(await stages(s, deps));
  } catch (err) {
    s.fault(err);
  }
  await s.closed();
  s.finish();
}

/** The stages, in order; each returns how the session ended or hands on to the next. */
async function stages(s: Session, deps: SessionDeps): Promise<Ending> {
  const l = s.listener;
  const { log, metrics } = s.env;

  // [PROXY header] An L4 load balancer (acceptProxyProtocol) names the real client first.
  if (l.acceptProxyProtocol && inNetworks(s.client.address, l.acceptProxyProtocol.from)) {
    const r = await readInboundProxy(s.socket);
    if (r.kind === 'closed' || s.signal.aborted) return { reason: CloseReason.clientGone, side: 'client' };
    if (r.kind === 'invalid') {
      log.warn({ listener: l.name, peer: unmapped(s.socket.remoteAddress ?? ''), reason: CloseReason.proxyHeaderInvalid, detail: r.reason }, 'PROXY header required from this network');
      return { reason: CloseReason.proxyHeaderInvalid, side: 'client', detail: r.reason };
    }
    // LOCAL (a health check) and UNKNOWN keep the load balancer's own address.
    if (r.header.command === 'PROXY' && r.header.source) s.setClient(r.header.source, r.header.destination);
  }

  // Limits, counted by the real client. On a STARTTLS listener the refusal is the greeting.
  const refusal = deps.admit(s);
  if (refusal) {
    log.warn({ listener: l.name, client: s.client.address, reason: refusal }, 'connection limit reached');
    return { reason: refusal, side: 'client', words: l.tls === 'starttls' ? s.say('tooMany') : null };
  }

  // [STARTTLS prelude] postern speaks the pre-TLS dialogue itself.
  let filter: SessionFilter | null = null;
  if (deps.prelude) {
    const p = await deps.prelude.run({ socket: s.socket, signal: s.signal, listener: l, tlsAvailable: s.env.store().lookup(l.hostname) !== null });
    switch (p.kind) {
      case 'gone':
        return { reason: CloseReason.clientGone, side: 'client' };
      case 'close':
        return { reason: p.reason, side: 'client', detail: p.detail, words: p.words };
      case 'handoff':
        // Plaintext session (port 25 without STARTTLS): the backend gets it from this line on.
        metrics.plaintextSessions.inc({ listener: l.name });
        s.disarm();
        if (p.pending.length > 0) s.socket.unshift(p.pending);
        return proxy(s, s.socket, p.filter, p.replay, null);
      case 'starttls':
        if (p.discarded > 0) countInjection(s, p.discarded);
        filter = p.filter;
        // RFC 3207 section 4: after STARTTLS the TLS negotiation has its own deadline.
        s.enterHandshake(null);
        s.arm(CloseReason.handshakeTimeout, l.timeouts.handshakeMs);
        break;
    }
  }

  // Peek the ClientHello (the bytes stay in the socket for the handshake).
  const afterStarttls = filter !== null;
  const peek = await peekClientHello(s.socket, null);
  // Ended meanwhile (the deadline, a shutdown): its reason is recorded, nothing more to do.
  if (s.signal.aborted) return { reason: CloseReason.clientGone, side: 'client' };
  switch (peek.kind) {
    case 'closed':
      return { reason: CloseReason.clientGone, side: 'client', detail: peek.error?.code ?? null };
    case 'not-tls':
      if (afterStarttls) {
        // Commands sent after STARTTLS instead of a ClientHello: never answered, never
        // forwarded (CVE-2011-0411; RFC 3207 section 4: after 220 the client MUST start TLS).
        countInjection(s, peek.head.length);
        return { reason: CloseReason.starttlsInjection, side: 'client', detail: peek.reason };
      }
      // Plaintext on a TLS port (EHLO, GET /, SSLv2): close at once, forward nothing.
      log.debug({ id: s.summary.id, listener: l.name, head: escapeForLog(peek.head.subarray(0, 32)) }, 'not TLS');
      return { reason: CloseReason.notTls, side: 'client', detail: peek.reason };
    case 'malformed': {
      const alert = peek.code === 'too_large' || peek.code === 'record_too_long' ? ALERT_RECORD_OVERFLOW
        : peek.code === 'duplicate_extension' || peek.code === 'bad_server_name' ? ALERT_ILLEGAL_PARAMETER
        : ALERT_DECODE_ERROR;
      countAlert(s, alert);
      return { reason: peek.code === 'too_large' ? CloseReason.helloTooLarge : CloseReason.malformedHello, side: 'client', detail: peek.code, words: alertRecord(alert) };
    }
    case 'hello':
      break;
  }

  // [ACME] The CA validating a name postern ordered (TLS-ALPN-01): answered here, never passed on.
  if (!afterStarttls) {
    const challenge = acmeValidation(s.env.challenges, peek.hello);
    if (challenge) return answerAcme(s, challenge.name, challenge.context);
  }

  // ALPN + SNI policy, decided from postern's own parse before OpenSSL sees a byte.
  const result = decide(l, peek.hello, s.env.store());
  const sum = s.summary;
  sum.sniClass = result.sniClass;
  sum.decision = result.decision;
  sum.sni = result.sni ?? (peek.hello.serverName ? escapeForLog(peek.hello.serverName) : null);
  if (result.action === 'refuse') {
    // We write the alert ourselves, before any handshake; the backend is never contacted.
    metrics.sniDecisions.inc({ listener: l.name, class: result.sniClass ?? 'none', decision: 'refused' });
    countAlert(s, result.alert);
    return { reason: result.reason, side: 'client', detail: result.detail, words: alertRecord(result.alert) };
  }
  metrics.sniDecisions.inc({ listener: l.name, class: result.sniClass, decision: result.decision });
  if (result.decision === 'fallback') log.debug({ id: sum.id, listener: l.name, requested: sum.sni, served: result.servedName, reason: result.reason }, 'sni fallback');
  sum.servedName = result.servedName;
  sum.alpn = result.alpn;

  // Handshake, under the same absolute deadline. The ticket key is the one the client's ticket
  // names, when it is this policy's and this certificate's: resumption never crosses them.
  const tickets = s.env.tickets;
  const ticket = tickets ? tickets.select(`${policyScope(l)}\0${result.unit.identity}`, peek.hello.ticketName) : null;
  const hs = startHandshake(s.socket, { context: result.unit.context(l.minVersion, ticket), alpn: result.alpn });
  s.enterHandshake(hs.socket);
  const shaken = await hs.done;
  if (!shaken.ok) {
    metrics.handshakes.inc({ listener: l.name, version: 'none', result: 'failed' });
    return { reason: shaken.reason, side: 'client', detail: shaken.detail };
  }
  s.enterSecure();
  sum.tlsVersion = shaken.version;
  sum.resumed = shaken.resumed;
  if (shaken.resumed) metrics.resumptions.inc({ listener: l.name });
  sum.cipher = shaken.cipher;
  metrics.handshakes.inc({ listener: l.name, version: shaken.version ?? 'unknown', result: 'ok' });

  // Implicit TLS: the backend's greeting goes to the client, filtered as after STARTTLS.
  filter ??= deps.implicitFilter?.() ?? null;
  return proxy(s, hs.socket, filter, '', shaken.opensslCipher);
}

/**
 * RFC 8737 section 3: the CA's validator offers exactly one ALPN protocol, acme-tls/1, and the
 * name under validation as SNI. Only a name with an open order has an answer; anything else
 * (acme-tls/1 for another name, or with other protocols) goes through the listener's policy as
 * any client would, and never causes an order.
 */
function acmeValidation(board: ChallengeBoard | undefined, hello: ClientHello): { name: string; context: SecureContext } | null {
  if (!board || board.pending === 0 || !hello.serverName || hello.alpn?.length !== 1 || hello.alpn[0] !== ACME_TLS_ALPN) return null;
  const check = checkSniBytes(hello.serverName);
  if (!check.ok) return null;
  const context = board.tlsAlpn(check.name);
  return context ? { name: check.name, context } : null;
}

/**
 * The handshake with the validation certificate and ALPN acme-tls/1, then close: the CA reads
 * the certificate and sends nothing (RFC 8737 section 3), the backend is never contacted.
 */
async function answerAcme(s: Session, name: string, context: SecureContext): Promise<Ending> {
  const l = s.listener;
  const { metrics, log } = s.env;
  s.summary.sni = name;
  s.summary.alpn = ACME_TLS_ALPN;
  const hs = startHandshake(s.socket, { context, alpn: ACME_TLS_ALPN });
  s.enterHandshake(hs.socket);
  const shaken = await hs.done;
  metrics.acmeValidations.inc({ listener: l.name, result: shaken.ok ? 'answered' : 'failed' });
  if (!shaken.ok) return { reason: shaken.reason, side: 'client', detail: shaken.detail };
  s.enterSecure();
  s.summary.tlsVersion = shaken.version;
  s.summary.cipher = shaken.cipher;
  log.info({ id: s.summary.id, listener: l.name, name, client: s.summary.client }, 'acme tls-alpn-01 validation answered');
  return { reason: CloseReason.acmeChallenge, side: 'local' };
}

/** Dial the backend (PROXY header first), then splice until both sides are closed. */
async function proxy(s: Session, client: Socket, filter: SessionFilter | null, replay: string, opensslCipher: string | null): Promise<Ending> {
  const l = s.listener;
  const { log, metrics } = s.env;
  const sum = s.summary;
  const b = backendFor(l, sum.sniClass === 'invalid' ? null : sum.sni);
  sum.backend = `${b.address.host}:${b.address.port}`;
  const endpoints = { clientAddress: s.client.address, clientPort: s.client.port, localAddress: s.client.localAddress, localPort: s.client.localPort };
  // AUTHORITY carries the SNI only when the served certificate covers it (exact or wildcard).
  const authority = sum.sniClass === 'exact' || sum.sniClass === 'wildcard' ? sum.sni : null;
  const tlsInfo = sum.tlsVersion === null ? null : { sni: authority, alpn: sum.alpn, version: sum.tlsVersion, cipher: opensslCipher };
  const header = b.proxyProtocol === 'v1' ? encodeProxyV1(endpoints)
    : b.proxyProtocol === 'v2' ? encodeProxyV2(endpoints, tlsInfo)
    : null;
  const dial = await dialBackend(b, l.timeouts.connectMs, header);
  if (s.signal.aborted || client.destroyed) {
    if (dial.ok) dial.socket.destroy();
    return { reason: CloseReason.clientGone, side: 'client' };
  }
  if (!dial.ok) {
    metrics.backendFailures.inc({ listener: l.name, reason: dial.reason });
    log.warn({ id: sum.id, listener: l.name, backend: sum.backend, reason: dial.reason, error: dial.error }, 'backend connect failed');
    return { reason: dial.reason, side: 'backend', detail: dial.error, words: s.say('backendDown') };
  }
  metrics.backendConnect.observe({ listener: l.name }, dial.connectMs / 1000);
  const backend = dial.socket;
  const headerLength = (header?.length ?? 0) + Buffer.byteLength(replay);
  const raw = s.socket;
  const silent = s.say('backendSilent');
  const down = s.say('backendDown');
  const sp = splice(client, backend, {
    idleMs: l.timeouts.idleMs,
    backendReplyMs: l.timeouts.backendReplyMs,
    filter,
    replay,
    silentBackendWords: silent === null ? null : Buffer.from(silent),
    ungreetedBackendWords: filter && l.tls === 'implicit' && down !== null ? Buffer.from(down) : null,
    resetClient: () => (raw.destroyed ? client.destroy() : raw.resetAndDestroy()),
    refused: (reasons) => countRefusals(s, reasons),
    tooManyErrorsWords: () => s.say('tooManyErrors'),
  });
  s.spliced(sp);
  const counted = () => {
    sum.bytesIn = Math.max(0, backend.bytesWritten - headerLength);
    sum.bytesOut = backend.bytesRead;
  };
  try {
    const r = await sp.done;
    counted();
    return { reason: r.reason, side: r.side, detail: r.error };
  } catch (err) {
    counted();
    throw err;
  }
}

const scopes = new WeakMap<ListenerConfig, string>();
/**
 * What a session ticket is bound to on the listener side: everything the policy decided the
 * session by. Listeners (or a reloaded listener) that differ in any of it never share tickets.
 */
function policyScope(l: ListenerConfig): string {
  let scope = scopes.get(l);
  if (scope === undefined) {
    scope = JSON.stringify([l.protocol, l.tls, l.role, l.hostname, l.sni, l.serverNames, l.alpn, l.minVersion]);
    scopes.set(l, scope);
  }
  return scope;
}

/** STARTTLS bytes the client pipelined after its STARTTLS command: discarded, logged, counted. */
function countInjection(s: Session, bytes: number) {
  s.env.metrics.starttlsInjections.inc({ listener: s.listener.name });
  s.env.log.warn({ id: s.summary.id, listener: s.listener.name, client: s.summary.client, bytes }, 'discarded bytes sent after STARTTLS (CVE-2011-0411)');
}

const REFUSAL_BITS: Record<RefusalReason, number> = { line_too_long: 1, starttls_refused: 2, command_not_permitted: 4 };

/**
 * Commands the after-TLS filter refused itself: every one counted; the first of each reason in a
 * session logged (a client repeating one costs one line, not one per command), and the summary
 * line carries how many there were.
 */
function countRefusals(s: Session, reasons: readonly RefusalReason[]) {
  const sum = s.summary;
  for (const reason of reasons) {
    s.env.metrics.commandsRefused.inc({ listener: s.listener.name, reason });
    sum.refused = (sum.refused ?? 0) + 1;
    if (s.refusalsLogged & REFUSAL_BITS[reason]) continue;
    s.refusalsLogged |= REFUSAL_BITS[reason];
    s.env.log.warn({ id: sum.id, listener: s.listener.name, client: sum.client, reason }, 'command refused');
  }
}

function countAlert(s: Session, alert: number) {
  s.env.metrics.alerts.inc({ listener: s.listener.name, alert: ALERT_NAMES[alert] ?? String(alert) });
}

/**
 * routes: the first route whose serverNames cover the requested name wins; the listener's own
 * backend otherwise (no SNI, invalid SNI, no route, plaintext sessions).
 */
export function backendFor(listener: ListenerConfig, sni: string | null): BackendConfig {
  if (sni === null || listener.routes.length === 0) return listener.backend;
  const route = listener.routes.find((r) => r.serverNames.some((p) => patternCovers(p, sni)));
  return route?.backend ?? listener.backend;
}
