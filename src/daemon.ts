// Wires a validated configuration to running listeners: certificates -> listeners -> signals.
import type { ListenerConfig, PosternConfig } from './config/types.ts';
import { coverageOf, type CoverageNeed } from './config/certificates.ts';
import type { CertStore } from './tls/certstore.ts';
import type { Logger } from './log.ts';
import { Metrics } from './metrics.ts';
import { Listener, type Prelude } from './listener.ts';
import type { SessionEnv } from './session.ts';
import type { ChallengeBoard } from './acme/challenges.ts';
import { TicketKeys } from './tls/tickets.ts';
import { spkiSha256 } from './mta-sts/tlsa.ts';

export interface DaemonOptions {
  config: PosternConfig;
  store: CertStore;
  log: Logger;
  metrics?: Metrics;
  /** STARTTLS preludes by protocol; absent means the listener only does implicit TLS. */
  preludeFor?: (env: SessionEnv) => Prelude | null;
  /** Open ACME TLS-ALPN-01 validations, answered by every listener (acme on). */
  challenges?: ChallengeBoard;
  /** Session ticket keys; default: a random secret, rotated as sessionTickets.rotate says. */
  tickets?: TicketKeys;
}

/** What a reloaded configuration does to the running listeners (see Daemon.plan). */
export interface ReloadPlan {
  /** Each running listener's settings after apply(): the new ones, or its old ones when kept. */
  listeners: Array<{ config: ListenerConfig; keptBecause: string | null; newPath: string | null }>;
  /** What only a restart can change, one sentence each. */
  needsRestart: string[];
}

/** Top-level settings only a restart applies. */
const RESTART_ONLY = ['log', 'admin', 'backendChecks', 'shutdown', 'workers', 'acme', 'sessionTickets'] as const;

export class Daemon {
  readonly listeners: Listener[] = [];
  readonly metrics: Metrics;
  private store: CertStore;
  private readonly log: Logger;
  /** The configuration last applied (its certificate specs are the ones in use). */
  private applied: PosternConfig;
  /** Listeners whose hostname the store in use does not cover (logged once on the change). */
  private missing = new Set<string>();

  private constructor(opts: DaemonOptions) {
    this.store = opts.store;
    this.log = opts.log;
    this.applied = opts.config;
    this.metrics = opts.metrics ?? new Metrics();
    const tickets = opts.tickets ?? TicketKeys.random(opts.config.sessionTickets.rotateMs);
    for (const l of opts.config.listeners) {
      // The STARTTLS prelude offers TLS when store().lookup(hostname) finds a certificate: the
      // same answer as certificatesMissing() below, which the reloader keeps false.
      const env: SessionEnv = { listener: l, store: () => this.store, log: opts.log, metrics: this.metrics, tickets, ...(opts.challenges ? { challenges: opts.challenges } : {}) };
      this.listeners.push(new Listener(env, opts.preludeFor?.(env) ?? null));
    }
    this.setStore(opts.store);
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
    const before = this.store === store ? null : this.daneKeys(this.store);
    this.store = store;
    if (before) this.daneAlarm(before, this.daneKeys(store));
    // A series from the start, at 0: an alert on its increase misses a series that first appears at 1.
    for (const l of this.listeners) if (l.env.listener.role === 'mx' && l.env.listener.dane) this.metrics.daneKeyChanges.inc({ listener: l.env.listener.name }, 0);
    this.metrics.certificateNotAfter.reset();
    for (const e of store.entries) this.metrics.certificateNotAfter.set({ file: e.certFile, name: e.names[0] ?? '' }, Math.floor(e.notAfter.getTime() / 1000));
    this.refreshCoverage();
  }

  /** SPKI SHA-256 of keys a DANE rollover announced: their arrival is planned (expectKeys). */
  private readonly expected = new Set<string>();

  /** A planned rollover's keys are about to come into service (the ACME manager says so). */
  expectKeys(sha256: readonly string[]) {
    for (const k of sha256) this.expected.add(k);
  }

  /** dane: true MX listeners: hostname -> SPKI SHA-256 of each key that serves it. */
  private daneKeys(store: CertStore): Map<string, Set<string>> {
    const out = new Map<string, Set<string>>();
    for (const l of this.listeners.map((x) => x.env.listener).filter((c) => c.role === 'mx' && c.dane)) {
      out.set(l.hostname, new Set((store.lookup(l.hostname)?.unit.entries ?? []).map((e) => spkiSha256(e.certPem))));
    }
    return out;
  }

  /**
   * A reload that takes a key out of service on a dane: true listener: senders that validate
   * DANE (RFC 7672 section 3.1) find the new key in no TLSA record and stop delivering until it
   * is published. The reload still happens (an expiring certificate must be replaced), but
   * loudly: an error line per key with both TLSA values, and a counter to alert on.
   */
  private daneAlarm(before: Map<string, Set<string>>, after: Map<string, Set<string>>) {
    for (const [host, old] of before) {
      const now = after.get(host) ?? new Set<string>();
      const gone = [...old].filter((k) => !now.has(k));
      if (gone.length === 0) continue;
      const added = [...now].filter((k) => !old.has(k));
      // A planned rollover (postern acme rollover): its TLSA record was printed rolloverDelay ago.
      if (added.length > 0 && added.every((k) => this.expected.has(k))) {
        for (const k of added) this.expected.delete(k);
        this.log.warn(
          { reason: 'dane_key_rolled', hostname: host, removed: gone.map((k) => `3 1 1 ${k}`), added: added.map((k) => `3 1 1 ${k}`) },
          `DANE: ${host} now uses the key of the planned rollover; remove _25._tcp.${host}. TLSA ${gone.map((k) => `3 1 1 ${k}`).join(' and ')} after two TTLs`,
        );
        continue;
      }
      for (const l of this.listeners.filter((x) => x.env.listener.hostname === host && x.env.listener.dane)) this.metrics.daneKeyChanges.inc({ listener: l.env.listener.name });
      this.log.error(
        { reason: 'dane_key_changed', hostname: host, removed: gone.map((k) => `3 1 1 ${k}`), added: added.map((k) => `3 1 1 ${k}`) },
        `DANE: the key serving ${host} changed; publish _25._tcp.${host}. TLSA ${added.map((k) => `3 1 1 ${k}`).join(' and ') || '(none)'} now: senders that validate DANE refuse delivery until it is in DNS (postern records --check)`,
      );
    }
  }

  get certificates(): CertStore {
    return this.store;
  }

  /** The running configuration: the last applied file, with each listener as it actually runs. */
  get config(): PosternConfig {
    return { ...this.applied, listeners: this.listeners.map((l) => l.env.listener) };
  }

  /** Listeners whose hostname no loaded certificate covers now (normally none). */
  certificatesMissing(): Array<{ listener: string; hostname: string }> {
    return this.listeners.map((l) => l.env.listener).filter((c) => this.store.lookup(c.hostname) === null).map((c) => ({ listener: c.name, hostname: c.hostname }));
  }

  /**
   * postern_listener_certificate_missing, and one error line when a listener becomes uncovered
   * (or covered again): a STARTTLS listener without a certificate cannot offer TLS, and that must
   * never go unnoticed on a port-25 listener, where mail would then flow in plaintext.
   */
  private refreshCoverage() {
    const now = new Set<string>();
    for (const { listener, hostname } of this.certificatesMissing()) {
      now.add(listener);
      if (!this.missing.has(listener)) this.log.error({ reason: 'certificate_missing', listener, hostname }, `listener "${listener}": no loaded certificate covers its hostname "${hostname}"; it cannot offer TLS`);
    }
    for (const listener of this.missing) if (!now.has(listener)) this.log.info({ listener }, `listener "${listener}": its hostname is covered again`);
    this.missing = now;
    for (const l of this.listeners) this.metrics.listenerCertificateMissing.set({ listener: l.env.listener.name }, now.has(l.env.listener.name) ? 1 : 0);
  }

  /**
   * What apply(config) would do, without doing it: each running listener with the settings it
   * will have (the new ones, or its old ones when a restart-only key changed or it was removed
   * from the file), and what needs a restart.
   */
  plan(config: PosternConfig): ReloadPlan {
    const needsRestart: string[] = [];
    const listeners: ReloadPlan['listeners'] = [];
    const byName = new Map(config.listeners.map((l) => [l.name, l]));
    for (const l of this.listeners) {
      const old = l.env.listener;
      const next = byName.get(old.name);
      if (!next) {
        needsRestart.push(`listener "${old.name}" was removed`);
        listeners.push({ config: old, keptBecause: 'removed from the file', newPath: null });
        continue;
      }
      byName.delete(old.name);
      const fixed = (['protocol', 'tls'] as const).filter((k) => next[k] !== old[k]);
      if (next.listen.host !== old.listen.host || next.listen.port !== old.listen.port) fixed.unshift('listen' as never);
      if (fixed.length > 0) {
        const what = `${fixed.join(', ')} changed`;
        needsRestart.push(`listener "${old.name}": ${what}`);
        listeners.push({ config: old, keptBecause: what, newPath: next.path });
        continue;
      }
      listeners.push({ config: next, keptBecause: null, newPath: next.path });
    }
    for (const name of byName.keys()) needsRestart.push(`listener "${name}" was added`);
    // Process-wide settings are read once at start (the logger, the admin endpoint, the backend
    // check timer, the drain, the workers, the ACME manager and its names): a change is named
    // rather than silently ignored.
    for (const key of RESTART_ONLY) if (JSON.stringify(config[key]) !== JSON.stringify(this.applied[key])) needsRestart.push(`${key} changed`);
    // The MTA-STS policy (mode, mx, max_age, domains) changes on a reload; its address does not.
    if (JSON.stringify(config.mtaSts?.listen ?? null) !== JSON.stringify(this.applied.mtaSts?.listen ?? null)) needsRestart.push(config.mtaSts && this.applied.mtaSts ? 'mtaSts.listen changed' : `mtaSts was ${config.mtaSts ? 'added' : 'removed'}`);
    return { listeners, needsRestart };
  }

  /**
   * The hostnames a store must cover for `config` to be applied: every listener of the file (a
   * restart would run it), and the old hostname of each listener that keeps its old settings.
   */
  coverageAfter(config: PosternConfig): CoverageNeed[] {
    const need = coverageOf(config);
    for (const p of this.plan(config).listeners) {
      if (p.keptBecause === null) continue;
      const inFile = config.listeners.find((l) => l.name === p.config.name);
      if (inFile && inFile.hostname === p.config.hostname) continue; // already required above
      need.push({ listener: p.config.name, hostname: p.config.hostname, path: p.newPath ? `${p.newPath}.hostname` : 'listeners', keptBecause: p.keptBecause });
    }
    return need;
  }

  /**
   * Applies a reloaded configuration: certificates and each listener's policy, names, ALPN,
   * backend, timeouts and STARTTLS options take effect for new connections. What only a restart
   * can change (listen address, protocol, tls mode, added or removed listeners, the top-level
   * log, admin, backendChecks, shutdown, workers and acme) is returned.
   */
  apply(config: PosternConfig, store: CertStore): string[] {
    const plan = this.plan(config);
    plan.listeners.forEach((p, i) => (this.listeners[i]!.env.listener = p.config));
    // The process-wide settings stay what the process runs with (named again on the next reload).
    // A new policy applies at once, on the address bound at start (a new address waits for the
    // restart): what is served and what `postern records` prints never disagree.
    const stsListen = JSON.stringify(config.mtaSts?.listen ?? null) === JSON.stringify(this.applied.mtaSts?.listen ?? null);
    this.applied = { ...config, ...Object.fromEntries(RESTART_ONLY.map((k) => [k, this.applied[k]])), mtaSts: stsListen ? config.mtaSts : config.mtaSts && this.applied.mtaSts ? { ...config.mtaSts, listen: this.applied.mtaSts.listen } : this.applied.mtaSts };
    this.setStore(store);
    return plan.needsRestart;
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
