// Backend reachability for /readyz and the `postern_backend_up` gauge. A round TCP-connects to
// every distinct backend (each listener's own and its routes'), writes the PROXY header the
// backend expects, and closes. Reachable means: connected within the timeout. Nothing of the
// mail dialogue is spoken (src/starttls/probe.ts does that, for capabilities).
import net from 'node:net';
import { Gauge } from 'prom-client';
import type { BackendConfig, HostPort, ListenerConfig } from '../config/types.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import { encodeProxyV1, encodeProxyV2 } from './proxy-protocol.ts';

export interface HealthTarget {
  listener: string;
  backend: BackendConfig;
}

export interface BackendStatus {
  listener: string;
  /** `host:port`, IPv6 hosts in brackets. */
  address: string;
  /** Connected within the timeout in the last round (false until the first round is done). */
  reachable: boolean;
  /** Why the last check failed (`ECONNREFUSED`, `no connection within 2000 ms`...), else null. */
  error: string | null;
  /** ISO time of the last check, or null when the backend has not been checked yet. */
  checkedAt: string | null;
}

export interface BackendHealthOptions {
  intervalMs: number;
  timeoutMs: number;
  log: Logger;
  /** When given, `postern_backend_up{listener,address}` is kept on its registry. */
  metrics?: Metrics;
}

/** `host:port`, with brackets around an IPv6 host. */
export function formatAddress(a: HostPort): string {
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

/** Every backend of these listeners: the listener's own, then each route's. */
export function healthTargets(listeners: readonly ListenerConfig[]): HealthTarget[] {
  return listeners.flatMap((l) => [{ listener: l.name, backend: l.backend }, ...l.routes.map((r) => ({ listener: l.name, backend: r.backend }))]);
}

/**
 * The PROXY header of a health check names the check's own endpoints. (v1 UNKNOWN and v2 LOCAL
 * are the spec's health-check forms, but Postfix 3.7 answers UNKNOWN with "421 4.3.0 Server
 * local error"; real addresses work everywhere.)
 */
function checkHeader(backend: BackendConfig, socket: net.Socket): Buffer | null {
  const ep = { clientAddress: socket.localAddress ?? '', clientPort: socket.localPort ?? 0, localAddress: socket.remoteAddress ?? '', localPort: socket.remotePort ?? 0 };
  switch (backend.proxyProtocol) {
    case 'v1':
      return encodeProxyV1(ep);
    case 'v2':
      return encodeProxyV2(ep, null);
    case 'none':
      return null;
  }
}

/** One check: null when connected within `timeoutMs`, else the reason. Never rejects. */
export function checkBackend(backend: BackendConfig, timeoutMs: number): Promise<string | null> {
  return new Promise((resolve) => {
    let settled = false;
    const socket = net.connect({ host: backend.address.host, port: backend.address.port, noDelay: true });
    const done = (error: string | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error !== null) socket.destroy();
      resolve(error);
    };
    const timer = setTimeout(() => done(`no connection within ${timeoutMs} ms`), timeoutMs);
    timer.unref();
    socket.once('error', (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
    socket.once('connect', () => {
      const header = checkHeader(backend, socket);
      // Say goodbye politely: header (if any) and FIN, read and drop the greeting, so the
      // backend sees an orderly close rather than a reset. A backend that never closes its
      // side is cut off after a while.
      socket.on('error', () => {});
      socket.resume();
      if (header) socket.end(header);
      else socket.end();
      const linger = setTimeout(() => socket.destroy(), Math.max(timeoutMs, 1000));
      linger.unref();
      socket.once('close', () => clearTimeout(linger));
      socket.unref();
      done(null);
    });
  });
}

interface Result {
  error: string | null;
  checkedAt: string;
}

function probeKey(b: BackendConfig): string {
  return `${b.proxyProtocol} ${formatAddress(b.address)}`;
}

export class BackendHealth {
  /** Resolves after the first round (started by start() or check()). */
  readonly first: Promise<void>;
  private resolveFirst!: () => void;
  private readonly targets: () => Array<HealthTarget>;
  private readonly opts: BackendHealthOptions;
  private readonly results = new Map<string, Result>();
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private queued: Promise<void> | null = null;
  private readonly gauge: Gauge<'listener' | 'address'> | null;
  /** Label sets currently on the gauge, `listener\0address`. */
  private readonly series = new Set<string>();

  constructor(targets: () => Array<HealthTarget>, opts: BackendHealthOptions) {
    this.targets = targets;
    this.opts = opts;
    this.first = new Promise((r) => (this.resolveFirst = r));
    this.gauge = opts.metrics ? backendUpGauge(opts.metrics) : null;
  }

  /** The first round at once, then one every intervalMs (a round still running is not doubled). */
  start(): void {
    if (this.timer) return;
    void this.check();
    this.timer = setInterval(() => {
      if (!this.running) void this.check();
    }, this.opts.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /**
   * Runs a round now and resolves when it is done. While a round is running, one more is queued
   * (its results may predate the caller's reason to ask), and callers share it.
   */
  check(): Promise<void> {
    if (this.queued) return this.queued;
    if (this.running) {
      this.queued = this.running.then(() => {
        this.queued = null;
        return this.check();
      });
      return this.queued;
    }
    this.running = this.round().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  /** One row per listener and backend address, in configuration order. */
  status(): BackendStatus[] {
    const rows: BackendStatus[] = [];
    const seen = new Set<string>();
    for (const t of this.targets()) {
      const address = formatAddress(t.backend.address);
      const id = `${t.listener}\0${address}`;
      if (seen.has(id)) continue;
      seen.add(id);
      const r = this.results.get(probeKey(t.backend));
      rows.push({ listener: t.listener, address, reachable: r !== undefined && r.error === null, error: r?.error ?? null, checkedAt: r?.checkedAt ?? null });
    }
    return rows;
  }

  private async round(): Promise<void> {
    try {
      // Read at every round: a reload may move backends.
      const distinct = new Map<string, BackendConfig>();
      for (const t of this.targets()) distinct.set(probeKey(t.backend), t.backend);
      await Promise.all(
        [...distinct].map(async ([key, backend]) => {
          const error = await checkBackend(backend, this.opts.timeoutMs);
          const before = this.results.get(key);
          this.results.set(key, { error, checkedAt: new Date().toISOString() });
          const address = formatAddress(backend.address);
          if (error !== null && (before === undefined || before.error === null)) this.opts.log.warn({ backend: address, reason: 'backend_unreachable', error }, 'backend health check failed');
          else if (error === null && before !== undefined && before.error !== null) this.opts.log.info({ backend: address }, 'backend reachable again');
        }),
      );
      for (const key of this.results.keys()) if (!distinct.has(key)) this.results.delete(key);
      this.updateGauge();
    } catch (err) {
      this.opts.log.error({ err }, 'backend health round failed');
    } finally {
      this.resolveFirst();
    }
  }

  private updateGauge() {
    if (!this.gauge) return;
    const now = new Set<string>();
    for (const row of this.status()) {
      if (row.checkedAt === null) continue;
      now.add(`${row.listener}\0${row.address}`);
      this.gauge.set({ listener: row.listener, address: row.address }, row.reachable ? 1 : 0);
    }
    for (const id of this.series) {
      if (now.has(id)) continue;
      const [listener = '', address = ''] = id.split('\0');
      this.gauge.remove({ listener, address });
    }
    this.series.clear();
    for (const id of now) this.series.add(id);
  }
}

const GAUGE_NAME = 'postern_backend_up';

/** The gauge on the Metrics' registry, created once per registry. */
function backendUpGauge(metrics: Metrics): Gauge<'listener' | 'address'> {
  const existing = metrics.registry.getSingleMetric(GAUGE_NAME);
  if (existing) return existing as Gauge<'listener' | 'address'>;
  return new Gauge({
    name: GAUGE_NAME,
    help: 'Whether the backend accepted a TCP connection in the last health check (1) or not (0), by listener and address',
    labelNames: ['listener', 'address'] as const,
    // Summed over workers this would count workers; up only when every worker says so.
    aggregator: 'min',
    registers: [metrics.registry],
  });
}
