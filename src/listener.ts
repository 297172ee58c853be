// One net.Server per configured listener. It accepts, starts a Session, and hands the socket to
// the right entry point: at once into the TLS path for implicit TLS, or to a STARTTLS prelude.
import net from 'node:net';
import type { SessionEnv } from './session.ts';
import { Session } from './session.ts';
import { CloseReason } from './errors.ts';
import { clientKey, inNetworks } from './net/address.ts';
import { readInboundProxy } from './net/accept-proxy.ts';

export interface Prelude {
  /** Speaks the pre-TLS dialogue, then calls session.secureAndProxy() (or hands over plaintext). */
  run(session: Session): void;
  /** Resolves when the prelude is ready to serve (e.g. its first capability probe is done). */
  ready?(): Promise<void>;
  stop?(): void;
}

export class Listener {
  readonly server: net.Server;
  readonly sessions = new Set<Session>();
  private readonly idleWaiters: Array<() => void> = [];
  /** Open sessions per client key (IPv4 address, IPv6 /64). */
  private readonly perClient = new Map<string, number>();
  readonly env: SessionEnv;
  private readonly prelude: Prelude | null;

  constructor(env: SessionEnv, prelude: Prelude | null) {
    this.env = env;
    this.prelude = prelude;
    // allowHalfOpen: a client's FIN must not close our write side; the backend's reply still
    // has to reach it (half-close, threats.md "Resources").
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (socket) => this.accept(socket));
  }

  async listen(): Promise<void> {
    await this.prelude?.ready?.();
    return this.bind();
  }

  private bind(): Promise<void> {
    const { host, port } = this.env.listener.listen;
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      this.server.listen({ host, port }, () => {
        this.server.off('error', onError);
        this.server.on('error', (err) => this.env.log.error({ listener: this.env.listener.name, err }, 'listener error'));
        resolve();
      });
    });
  }

  /** The bound port (useful with port 0 in tests). */
  get port(): number {
    const addr = this.server.address();
    return typeof addr === 'object' && addr ? addr.port : 0;
  }

  private accept(socket: net.Socket) {
    const session = new Session(socket, this.env);
    this.sessions.add(session);
    this.env.metrics.accepted.inc({ listener: session.listener.name });
    this.env.metrics.active.inc({ listener: session.listener.name });
    session.onFinish = () => {
      this.sessions.delete(session);
      this.env.metrics.active.dec({ listener: session.listener.name });
      if (this.sessions.size === 0) for (const w of this.idleWaiters.splice(0)) w();
    };
    void this.admit(session);
  }

  /** The load balancer's PROXY header (when expected), the limits, then the protocol. */
  private async admit(session: Session) {
    const l = session.listener;
    const socket = session.socket;
    if (l.acceptProxyProtocol && inNetworks(socket.remoteAddress ?? '', l.acceptProxyProtocol.from)) {
      const r = await readInboundProxy(socket);
      if (r.kind === 'closed') return session.abort(CloseReason.clientGone, 'client');
      if (r.kind === 'invalid') {
        this.env.log.warn({ listener: l.name, peer: socket.remoteAddress, reason: CloseReason.proxyHeaderInvalid, detail: r.reason }, 'PROXY header required from this network');
        return session.abort(CloseReason.proxyHeaderInvalid, 'client', r.reason);
      }
      // LOCAL (a health check) and UNKNOWN keep the load balancer's own address.
      if (r.header.command === 'PROXY' && r.header.source) session.setClient(r.header.source, r.header.destination);
    }
    const refusal = this.overLimit(session);
    if (refusal) {
      const words = l.protocol === 'smtp' && l.tls === 'starttls' ? Buffer.from(`421 4.7.0 ${l.hostname} Too many connections, try again later\r\n`) : null;
      this.env.log.warn({ listener: l.name, client: session.client.address, reason: refusal }, 'connection limit reached');
      return session.abort(refusal, 'client', null, words);
    }
    if (this.prelude) this.prelude.run(session);
    else void session.secureAndProxy();
  }

  /** Counts the session against the limits; the reason code when it is one too many. */
  private overLimit(session: Session): CloseReason | null {
    const { limits } = session.listener;
    if (this.sessions.size > limits.maxConnections) return CloseReason.tooManyConnections;
    const key = clientKey(session.client.address);
    const n = (this.perClient.get(key) ?? 0) + 1;
    if (n > limits.maxConnectionsPerClient) return CloseReason.tooManyFromClient;
    this.perClient.set(key, n);
    const done = session.onFinish;
    session.onFinish = (s) => {
      const left = (this.perClient.get(key) ?? 1) - 1;
      if (left === 0) this.perClient.delete(key);
      else this.perClient.set(key, left);
      done?.(s);
    };
    return null;
  }

  /** Stops accepting; open sessions are left to the caller (drain or stop). */
  close(): Promise<void> {
    this.prelude?.stop?.();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  /** Resolves when no session is open (immediately if none is). */
  idle(): Promise<void> {
    return this.sessions.size === 0 ? Promise.resolve() : new Promise((r) => this.idleWaiters.push(r));
  }

  stopSessions() {
    for (const s of this.sessions) s.stop();
  }
}
