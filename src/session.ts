// One client connection from accept to close:
//   [prelude] -> peek ClientHello -> ALPN + SNI policy -> handshake -> backend -> splice -> summary
// The implicit-TLS listener enters at secureAndProxy() at once; a STARTTLS prelude enters it
// after its own dialogue, with the same socket. Only this file and the listener own sockets.
import type { Socket } from 'node:net';
import tls from 'node:tls';
import type { BackendConfig, ListenerConfig } from './config/types.ts';
import type { CertStore } from './tls/certstore.ts';
import type { Logger } from './log.ts';
import type { Metrics } from './metrics.ts';
import { CloseReason, type Side } from './errors.ts';
import { peekClientHello } from './tls/peek.ts';
import { decide, type SniClass, type Decision } from './tls/sni-policy.ts';
import { alertRecord, ALERT_NAMES, ALERT_DECODE_ERROR, ALERT_ILLEGAL_PARAMETER, ALERT_RECORD_OVERFLOW } from './tls/alerts.ts';
import { escapeForLog, patternCovers } from './tls/names.ts';
import { dialBackend } from './backend/connect.ts';
import { encodeProxyV1, encodeProxyV2 } from './backend/proxy-protocol.ts';
import { splice } from './splice.ts';
import type { SessionFilter } from './starttls/types.ts';

export interface SecureOptions {
  /** Set after STARTTLS: plaintext where the ClientHello belongs is an injection attempt. */
  afterStarttls: boolean;
  /** The after-TLS filter of the STARTTLS protocol; null for implicit TLS. */
  filter: SessionFilter | null;
}

const IMPLICIT: SecureOptions = { afterStarttls: false, filter: null };

/** What a session needs from the daemon; `store()` is read per connection so reloads apply at once. */
export interface SessionEnv {
  listener: ListenerConfig;
  store(): CertStore;
  log: Logger;
  metrics: Metrics;
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
  cipher: string | null;
  backend: string | null;
  bytesIn: number;
  bytesOut: number;
  durationMs: number;
  closeReason: CloseReason;
  side: Side | null;
  detail: string | null;
}

let nextId = 1;

export class Session {
  readonly summary: Summary;
  private readonly started = performance.now();
  private deadline: NodeJS.Timeout | null = null;
  private finished = false;
  private tlsSocket: tls.TLSSocket | null = null;
  private stopSplice: (() => void) | null = null;
  /** What a STARTTLS prelude says before closing on its deadline (SMTP 421 4.4.2 ...). */
  lastWords: Buffer | null = null;
  /** What a STARTTLS prelude says when postern shuts down (SMTP 421 4.3.2 ...). */
  shutdownWords: Buffer | null = null;
  /**
   * The client as the backend must learn it: the TCP peer, or the original client named by a
   * load balancer's PROXY header (acceptProxyProtocol).
   */
  readonly client: { address: string; port: number; localAddress: string; localPort: number };
  onFinish: ((s: Session) => void) | null = null;
  readonly socket: Socket;
  readonly env: SessionEnv;
  /** The listener's settings as they were at accept: a reload applies to new connections only. */
  readonly listener: ListenerConfig;

  constructor(socket: Socket, env: SessionEnv) {
    this.socket = socket;
    this.env = env;
    this.listener = env.listener;
    this.client = { address: socket.remoteAddress ?? '', port: socket.remotePort ?? 0, localAddress: socket.localAddress ?? '', localPort: socket.localPort ?? 0 };
    this.summary = {
      id: nextId++,
      listener: env.listener.name,
      client: socket.remoteAddress ?? '?',
      clientPort: socket.remotePort ?? 0,
      sni: null,
      sniClass: null,
      decision: null,
      servedName: null,
      alpn: null,
      tlsVersion: null,
      cipher: null,
      backend: null,
      bytesIn: 0,
      bytesOut: 0,
      durationMs: 0,
      closeReason: CloseReason.clientGone,
      side: null,
      detail: null,
    };
    // A socket must always have an error listener: an unhandled 'error' would end the process.
    socket.on('error', (err: NodeJS.ErrnoException) => {
      this.summary.detail ??= err.code ?? err.message;
    });
    // Until a splice owns the sockets, the client going away ends the session; afterwards the
    // splice reports (with its byte counts and reason) when both sides are closed.
    socket.once('close', () => {
      if (!this.tlsSocket && !this.stopSplice) this.finish();
    });
    // Deadlines are absolute (threats.md: slowloris), never reset by incoming bytes: from accept
    // to the handshake for implicit TLS, from accept to STARTTLS for the pre-TLS dialogue.
    if (this.listener.tls === 'starttls') this.arm(CloseReason.starttlsTimeout, this.listener.timeouts.starttlsMs);
    else this.arm(CloseReason.handshakeTimeout, this.listener.timeouts.handshakeMs);
  }

  private arm(reason: CloseReason, ms: number) {
    if (this.deadline) clearTimeout(this.deadline);
    this.deadline = setTimeout(() => this.abort(reason, 'client', null, this.lastWords), ms);
  }

  /** A load balancer's PROXY header named the real client (and the address it was sent to). */
  setClient(source: { address: string; port: number }, destination: { address: string; port: number } | null) {
    Object.assign(this.client, { address: source.address, port: source.port });
    if (destination) Object.assign(this.client, { localAddress: destination.address, localPort: destination.port });
    this.summary.client = source.address;
    this.summary.clientPort = source.port;
  }

  /** Ends the session before the backend is involved: records why, then closes. */
  abort(reason: CloseReason, side: Side, detail: string | null = null, lastWords: Buffer | null = null) {
    if (this.finished) return;
    this.summary.closeReason = reason;
    this.summary.side = side;
    if (detail !== null) this.summary.detail = detail;
    const s = this.tlsSocket ?? this.socket;
    // Whatever the client sent after the handshake will never be read (the session ends here):
    // let it flow away. A TLS socket closed with decrypted data still waiting in it leaks native
    // memory (~2.7 KB per session in the soak, e.g. an EHLO that arrives while the backend is
    // down and the 421 goes out); V8's heap does not show it, RSS does.
    this.tlsSocket?.resume();
    if (lastWords && s.writable) {
      // Flush the last words, then close at once: no waiting for the peer's FIN.
      s.write(lastWords);
      s.destroySoon();
      // Never wait on a peer that does not read: the write either went out or it did not.
      setTimeout(() => s.destroy(), 2000).unref();
    } else s.destroy();
    if (s !== this.socket) this.socket.destroy();
  }

  /** Shutdown: close whatever this session holds. */
  stop() {
    if (this.stopSplice) this.stopSplice();
    else this.abort(CloseReason.shutdown, 'local', null, this.shutdownWords);
  }

  /** Peek, decide, handshake, dial, splice. `initial` holds bytes a prelude already read. */
  async secureAndProxy(initial: Buffer | null = null, opts: SecureOptions = IMPLICIT): Promise<void> {
    const { listener } = this;
    const { metrics } = this.env;
    this.lastWords = null;
    this.shutdownWords = null;
    // RFC 3207 section 4: after STARTTLS the TLS negotiation has its own deadline.
    if (opts.afterStarttls) this.arm(CloseReason.handshakeTimeout, listener.timeouts.handshakeMs);
    const peek = await peekClientHello(this.socket, initial);
    if (this.finished || this.socket.destroyed) return this.finish();
    switch (peek.kind) {
      case 'closed':
        return this.abort(CloseReason.clientGone, 'client', peek.error?.code ?? null);
      case 'not-tls':
        if (opts.afterStarttls) {
          // Commands sent after STARTTLS instead of a ClientHello: never answered, never
          // forwarded (CVE-2011-0411; RFC 3207 section 4: after 220 the client MUST start TLS).
          this.countInjection(peek.head.length);
          return this.abort(CloseReason.starttlsInjection, 'client', peek.reason);
        }
        // Plaintext on a TLS port (EHLO, GET /, SSLv2): close at once, forward nothing.
        this.env.log.debug({ id: this.summary.id, listener: listener.name, head: escapeForLog(peek.head.subarray(0, 32)) }, 'not TLS');
        return this.abort(CloseReason.notTls, 'client', peek.reason);
      case 'malformed': {
        const alert = peek.code === 'too_large' || peek.code === 'record_too_long' ? ALERT_RECORD_OVERFLOW
          : peek.code === 'duplicate_extension' || peek.code === 'bad_server_name' ? ALERT_ILLEGAL_PARAMETER
          : ALERT_DECODE_ERROR;
        this.countAlert(alert);
        const reason = peek.code === 'too_large' ? CloseReason.helloTooLarge : CloseReason.malformedHello;
        return this.abort(reason, 'client', peek.code, alertRecord(alert));
      }
      case 'hello':
        break;
    }

    const store = this.env.store();
    const result = decide(listener, peek.hello, store);
    const s = this.summary;
    s.sniClass = result.sniClass;
    s.decision = result.decision;
    s.sni = result.sni ?? (peek.hello.serverName ? escapeForLog(peek.hello.serverName) : null);
    if (result.action === 'refuse') {
      // We write the alert ourselves, before any handshake; the backend is never contacted.
      metrics.sniDecisions.inc({ listener: listener.name, class: result.sniClass ?? 'none', decision: 'refused' });
      this.countAlert(result.alert);
      return this.abort(result.reason, 'client', result.detail, alertRecord(result.alert));
    }
    metrics.sniDecisions.inc({ listener: listener.name, class: result.sniClass, decision: result.decision });
    if (result.decision === 'fallback') {
      this.env.log.debug({ id: s.id, listener: listener.name, requested: s.sni, served: result.servedName, reason: result.reason }, 'sni fallback');
    }
    s.servedName = result.servedName;
    s.alpn = result.alpn;

    const tlsSocket = new tls.TLSSocket(this.socket, {
      isServer: true,
      secureContext: result.unit.context(listener.minVersion),
      ALPNProtocols: result.alpn ? [result.alpn] : undefined,
    });
    this.tlsSocket = tlsSocket;
    // Handlers run synchronously before 'close' (and so before finish()), so the reason is set
    // in time for the summary line.
    tlsSocket.on('error', (err: NodeJS.ErrnoException) => {
      if (s.tlsVersion !== null) return;
      const code = err.code ?? err.message;
      s.detail ??= code;
      if (s.closeReason === CloseReason.clientGone && code.startsWith('ERR_SSL')) s.closeReason = CloseReason.handshakeFailed;
      s.side ??= 'client';
    });
    tlsSocket.once('close', () => {
      if (!this.stopSplice) this.finish();
    });
    // With allowHalfOpen a FIN alone would leave the socket waiting for the deadline; before the
    // handshake is done there is nothing a half-closed client can still receive.
    tlsSocket.once('end', () => {
      if (s.tlsVersion !== null) return;
      s.side ??= 'client';
      tlsSocket.destroy();
    });
    const secured = await new Promise<boolean>((resolve) => {
      tlsSocket.once('secure', () => resolve(true));
      tlsSocket.once('close', () => resolve(false));
    });
    if (!secured) {
      metrics.handshakes.inc({ listener: listener.name, version: 'none', result: 'failed' });
      return;
    }
    if (this.deadline) clearTimeout(this.deadline);
    this.deadline = null;
    s.tlsVersion = tlsSocket.getProtocol();
    const cipher = tlsSocket.getCipher();
    s.cipher = cipher?.standardName ?? cipher?.name ?? null;
    metrics.handshakes.inc({ listener: listener.name, version: s.tlsVersion ?? 'unknown', result: 'ok' });
    await this.proxy(tlsSocket, cipher?.name ?? null, opts.filter);
  }

  /** STARTTLS bytes the client pipelined after its STARTTLS command: discarded, logged, counted. */
  countInjection(bytes: number) {
    this.env.metrics.starttlsInjections.inc({ listener: this.listener.name });
    this.env.log.warn({ id: this.summary.id, listener: this.listener.name, client: this.summary.client, bytes }, 'discarded bytes sent after STARTTLS (CVE-2011-0411)');
  }

  /**
   * A plaintext session that the prelude hands to the backend (port 25 without STARTTLS): the
   * filter drops the backend's greeting and the replies to `replay`, then everything flows.
   */
  async handoff(pending: Buffer, replay: string, filter: SessionFilter): Promise<void> {
    if (this.deadline) clearTimeout(this.deadline);
    this.deadline = null;
    this.lastWords = null;
    this.shutdownWords = null;
    this.summary.decision = null;
    if (pending.length > 0) this.socket.unshift(pending);
    await this.proxy(this.socket, null, filter, replay);
  }

  private async proxy(client: Socket, opensslCipher: string | null, filter: SessionFilter | null, replay = '') {
    const { listener } = this;
    const { metrics } = this.env;
    const s = this.summary;
    const b = backendFor(listener, s.sniClass === 'invalid' ? null : s.sni);
    s.backend = `${b.address.host}:${b.address.port}`;
    const endpoints = { clientAddress: this.client.address, clientPort: this.client.port, localAddress: this.client.localAddress, localPort: this.client.localPort };
    // AUTHORITY carries the SNI only when the served certificate covers it (exact or wildcard).
    const authority = s.sniClass === 'exact' || s.sniClass === 'wildcard' ? s.sni : null;
    const tlsInfo = s.tlsVersion === null ? null : { sni: authority, alpn: s.alpn, version: s.tlsVersion, cipher: opensslCipher };
    const header = b.proxyProtocol === 'v1' ? encodeProxyV1(endpoints)
      : b.proxyProtocol === 'v2' ? encodeProxyV2(endpoints, tlsInfo)
      : null;
    const dial = await dialBackend(b, listener.timeouts.connectMs, header);
    if (this.finished || client.destroyed) {
      if (dial.ok) dial.socket.destroy();
      return;
    }
    if (!dial.ok) {
      metrics.backendFailures.inc({ listener: listener.name, reason: dial.reason });
      this.env.log.warn({ id: s.id, listener: listener.name, backend: s.backend, reason: dial.reason, error: dial.error }, 'backend connect failed');
      return this.abort(dial.reason, 'backend', dial.error, goodbye(listener));
    }
    metrics.backendConnect.observe({ listener: listener.name }, dial.connectMs / 1000);
    const backend = dial.socket;
    const headerLength = (header?.length ?? 0) + Buffer.byteLength(replay);
    const raw = this.socket;
    const spliceOpts = { idleMs: listener.timeouts.idleMs, filter, replay, resetClient: () => (raw.destroyed ? client.destroy() : raw.resetAndDestroy()) };
    this.stopSplice = splice(client, backend, spliceOpts, (r) => {
      s.closeReason = r.reason;
      s.side = r.side;
      if (r.error) s.detail = r.error;
      s.bytesIn = Math.max(0, backend.bytesWritten - headerLength);
      s.bytesOut = backend.bytesRead;
      this.finish();
    });
  }

  private countAlert(alert: number) {
    this.env.metrics.alerts.inc({ listener: this.listener.name, alert: ALERT_NAMES[alert] ?? String(alert) });
  }

  private finish() {
    if (this.finished) return;
    this.finished = true;
    if (this.deadline) clearTimeout(this.deadline);
    const s = this.summary;
    s.durationMs = Math.round(performance.now() - this.started);
    const { metrics, listener } = this.env;
    metrics.connections.inc({ listener: listener.name, reason: s.closeReason });
    if (s.bytesIn) metrics.bytes.inc({ listener: listener.name, direction: 'in' }, s.bytesIn);
    if (s.bytesOut) metrics.bytes.inc({ listener: listener.name, direction: 'out' }, s.bytesOut);
    this.env.log.info(s, 'connection closed');
    this.onFinish?.(this);
  }
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

/** The protocol's own way to say "try later" when the backend cannot be reached. */
export function goodbye(listener: ListenerConfig): Buffer | null {
  switch (listener.protocol) {
    // RFC 5321 section 3.8 / 4.2.3: 421 closes the channel; 4.3.2 "system not accepting
    // network messages" (RFC 3463) tells the sender to retry later.
    case 'smtp':
      return Buffer.from(`421 4.3.2 ${listener.hostname} Service not available\r\n`);
    // RFC 9051 section 7.1.5: BYE is sent when the server is about to close the connection.
    case 'imap':
      return Buffer.from(`* BYE [UNAVAILABLE] ${listener.hostname} backend not available\r\n`);
    // RFC 1939 section 4: the greeting may be -ERR; the client will retry.
    case 'pop3':
      return Buffer.from(`-ERR [SYS/TEMP] ${listener.hostname} backend not available\r\n`);
    case 'tls':
      return null;
  }
}
