// Wires a validated configuration to running listeners: certificates -> listeners -> signals.
import type { PosternConfig } from './config/types.ts';
import type { CertStore } from './tls/certstore.ts';
import type { Logger } from './log.ts';
import { Metrics } from './metrics.ts';
import { Listener, type Prelude } from './listener.ts';
import type { SessionEnv } from './session.ts';

export interface DaemonOptions {
  config: PosternConfig;
  store: CertStore;
  log: Logger;
  metrics?: Metrics;
  /** STARTTLS preludes by protocol; absent means the listener only does implicit TLS. */
  preludeFor?: (env: SessionEnv) => Prelude | null;
}

export class Daemon {
  readonly listeners: Listener[] = [];
  readonly metrics: Metrics;
  private store: CertStore;
  private readonly log: Logger;

  private constructor(opts: DaemonOptions) {
    this.store = opts.store;
    this.log = opts.log;
    this.metrics = opts.metrics ?? new Metrics();
    this.setStore(opts.store);
    for (const l of opts.config.listeners) {
      const env: SessionEnv = { listener: l, store: () => this.store, log: opts.log, metrics: this.metrics };
      this.listeners.push(new Listener(env, opts.preludeFor?.(env) ?? null));
    }
  }

  /** Binds every listener or none: on a bind error the ones already bound are closed again. */
  static async start(opts: DaemonOptions): Promise<Daemon> {
    const d = new Daemon(opts);
    try {
      for (const l of d.listeners) await l.listen();
    } catch (err) {
      await Promise.all(d.listeners.map((l) => (l.server.listening ? l.close() : undefined)));
      throw err;
    }
    for (const l of d.listeners) {
      const c = l.env.listener;
      d.log.info({ listener: c.name, listen: `${c.listen.host}:${l.port}`, protocol: c.protocol, tls: c.tls, sni: c.sni, hostname: c.hostname, backend: `${c.backend.address.host}:${c.backend.address.port}` }, 'listening');
    }
    return d;
  }

  /** The listener by name (tests and the demo read the bound port from it). */
  listener(name: string): Listener {
    const l = this.listeners.find((x) => x.env.listener.name === name);
    if (!l) throw new Error(`no listener named ${name}`);
    return l;
  }

  /** Swaps the certificate store; connections in flight keep the context they started with. */
  setStore(store: CertStore) {
    this.store = store;
    this.metrics.certificateNotAfter.reset();
    for (const e of store.entries) this.metrics.certificateNotAfter.set({ file: e.certFile, name: e.names[0] ?? '' }, Math.floor(e.notAfter.getTime() / 1000));
  }

  get certificates(): CertStore {
    return this.store;
  }

  /**
   * Applies a reloaded configuration: certificates and each listener's policy, names, ALPN,
   * backend, timeouts and STARTTLS options take effect for new connections. What only a restart
   * can change (listen address, protocol, tls mode, added or removed listeners) is returned.
   */
  apply(config: PosternConfig, store: CertStore): string[] {
    const needsRestart: string[] = [];
    const byName = new Map(config.listeners.map((l) => [l.name, l]));
    for (const l of this.listeners) {
      const old = l.env.listener;
      const next = byName.get(old.name);
      if (!next) {
        needsRestart.push(`listener "${old.name}" was removed`);
        continue;
      }
      byName.delete(old.name);
      const fixed = (['protocol', 'tls'] as const).filter((k) => next[k] !== old[k]);
      if (next.listen.host !== old.listen.host || next.listen.port !== old.listen.port) fixed.unshift('listen' as never);
      if (fixed.length > 0) {
        needsRestart.push(`listener "${old.name}": ${fixed.join(', ')} changed`);
        continue;
      }
      l.env.listener = next;
    }
    for (const name of byName.keys()) needsRestart.push(`listener "${name}" was added`);
    this.setStore(store);
    return needsRestart;
  }

  /**
   * SIGTERM: stop accepting at once, let sessions finish for up to `timeoutMs`, then close what
   * remains (a client still in the SMTP pre-TLS dialogue gets 421 4.3.2).
   */
  async drain(timeoutMs: number): Promise<{ drained: number; closed: number }> {
    const before = this.openSessions();
    const closing = Promise.all(this.listeners.map((l) => l.close()));
    let timer: NodeJS.Timeout | undefined;
    const idle = Promise.all(this.listeners.map((l) => l.idle()));
    const timedOut = await Promise.race([idle.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), timeoutMs)))]);
    clearTimeout(timer);
    const left = this.openSessions();
    if (timedOut) for (const l of this.listeners) l.stopSessions();
    await closing;
    return { drained: before - left, closed: left };
  }

  openSessions(): number {
    return this.listeners.reduce((n, l) => n + l.sessions.size, 0);
  }

  /** Stops accepting at once, closes every session, resolves when all sockets are gone. */
  async stop(): Promise<void> {
    const closing = this.listeners.map((l) => l.close());
    for (const l of this.listeners) l.stopSessions();
    await Promise.all(closing);
  }
}
