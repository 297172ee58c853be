// One net.Server per configured listener. It accepts, counts, and runs each connection as a
// session (src/session.ts runSession) with this listener's prelude, limits and protocol words.
import cluster from 'node:cluster';
import net from 'node:net';
import type { SessionEnv, SessionDeps } from './session.ts';
import { Session, runSession } from './session.ts';
import { CloseReason } from './errors.ts';
import { clientKey } from './net/address.ts';
import type { Prelude } from './starttls/prelude.ts';
import type { ProtocolWords } from './starttls/types.ts';
import { implicitFilterFor, wordsFor } from './starttls/protocols.ts';
import type { ListenerConfig } from './config/types.ts';

export type { Prelude };

export class Listener {
  readonly server: net.Server;
  readonly sessions = new Set<Session>();
  private readonly idleWaiters: Array<() => void> = [];
  /** Open sessions per client key (IPv4 address, IPv6 /64). */
  private readonly perClient = new Map<string, number>();
  readonly env: SessionEnv;
  private readonly prelude: Prelude | null;
  /** The protocol's words for the listener's current settings (a reload may change the hostname). */
  private words: { config: ListenerConfig; words: ProtocolWords | null } | null = null;

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

  /**
   * In a cluster worker, its own socket with SO_REUSEPORT (Linux 3.9+): the kernel hands each new
   * connection to one worker's socket directly. node:cluster's default instead accepts every
   * connection in the primary and passes it to a worker over IPC, a cost on every handshake that
   * a second worker then spends its time on. The price: connections still waiting in a worker's
   * accept queue when that worker dies are reset (with the primary's queue they would not be).
   */
  private bind(): Promise<void> {
    const { host, port } = this.env.listener.listen;
    const own = cluster.isWorker ? { exclusive: true, reusePort: true } : {};
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      this.server.listen({ host, port, ...own }, () => {
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
    const { metrics, log } = this.env;
    const name = this.env.listener.name;
    const config = this.env.listener;
    if (this.words?.config !== config) this.words = { config, words: wordsFor(config.protocol, config.hostname) };
    const session = new Session(socket, this.env, this.words.words);
    this.sessions.add(session);
    metrics.accepted.inc({ listener: name });
    metrics.active.inc({ listener: name });
    let release: (() => void) | null = null;
    const deps: SessionDeps = {
      prelude: this.prelude,
      implicitFilter: () => implicitFilterFor(session.listener),
      admit: (s) => {
        const r = this.admit(s);
        if (typeof r === 'function') {
          release = r;
          return null;
        }
        return r;
      },
    };
    const done = () => {
      release?.();
      this.sessions.delete(session);
      metrics.active.dec({ listener: name });
      if (this.sessions.size === 0) for (const w of this.idleWaiters.splice(0)) w();
    };
    // runSession never rejects (its own boundary catches); should it ever, the bookkeeping still runs.
    runSession(session, deps).then(done, (err: unknown) => {
      log.error({ listener: name, reason: CloseReason.internalError, error: err instanceof Error ? err.stack : String(err) }, 'session runner failed');
      done();
    });
  }

  /** Counts the session against the limits: its release, or the reason code when it is one too many. */
  private admit(session: Session): (() => void) | CloseReason {
    const { limits } = session.listener;
    if (this.sessions.size > limits.maxConnections) return CloseReason.tooManyConnections;
    const key = clientKey(session.client.address);
    const n = (this.perClient.get(key) ?? 0) + 1;
    if (n > limits.maxConnectionsPerClient) return CloseReason.tooManyFromClient;
    this.perClient.set(key, n);
    return () => {
      const left = (this.perClient.get(key) ?? 1) - 1;
      if (left === 0) this.perClient.delete(key);
      else this.perClient.set(key, left);
    };
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
