// One net.Server per configured listener. It accepts, starts a Session, and hands the socket to
// the right entry point: at once into the TLS path for implicit TLS, or to a STARTTLS prelude.
import net from 'node:net';
import type { SessionEnv } from './session.ts';
import { Session } from './session.ts';

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
      this.server.listen({ host, port, exclusive: true }, () => {
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
    this.env.metrics.active.inc({ listener: this.env.listener.name });
    session.onFinish = () => {
      this.sessions.delete(session);
      this.env.metrics.active.dec({ listener: this.env.listener.name });
    };
    if (this.prelude) this.prelude.run(session);
    else void session.secureAndProxy();
  }

  /** Stops accepting; open sessions are left to the caller (drain or stop). */
  close(): Promise<void> {
    this.prelude?.stop?.();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  stopSessions() {
    for (const s of this.sessions) s.stop();
  }
}
