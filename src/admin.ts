// The admin HTTP endpoint (`admin: { listen: ... }`): /metrics in Prometheus text format,
// /healthz (the process is alive and answering) and /readyz (every listener bound, certificates
// loaded and covering every listener's hostname, backends reachable) with a JSON body saying what
// is not ready; /readyz?listener=NAME asks the same of one listener (several: all of them).
// GET and HEAD only.
//
// A liveness probe that goes unanswered restarts the pod and drops every mail session, so idle
// connections must never crowd the probes out: a connection gets 2 s to send a complete request
// (and 2 s after each response), each client address (IPv6: its /64) holds at most 8, all of
// them at most 128, and when a limit is reached the connection that has waited longest without a
// request is closed to make room for the new one, rather than the new one being refused.
import http from 'node:http';
import type { Socket } from 'node:net';
import { Counter, Registry } from 'prom-client';
import type { HostPort } from './config/types.ts';
import type { Logger } from './log.ts';
import type { Metrics } from './metrics.ts';
import type { BackendStatus } from './backend/health.ts';
import { CloseReason } from './errors.ts';
import { clientKey, unmapped } from './net/address.ts';
import type { AcmeManager } from './acme/manager.ts';

/** Anything that renders Prometheus text: a Metrics registry, or the cluster's summed view. */
export interface MetricsSource {
  readonly contentType: string;
  metrics(): Promise<string>;
}

export interface Readiness {
  ready: boolean;
  /** The listeners asked about (`/readyz?listener=NAME`), or null: all of them. */
  scope: string[] | null;
  listeners: Array<{ name: string; bound: boolean }>;
  certificates: { loaded: number };
  /** Whether backends are checked (and so count for readiness), and how often. */
  backendChecks: { enabled: boolean; intervalMs: number | null };
  /** The backends of the listeners in scope; empty when the checks are off. */
  backends: BackendStatus[];
  /** What is not ready, one sentence each; empty when ready. */
  problems: string[];
}

export interface ReadinessInput {
  listeners: Array<{ name: string; bound: boolean }>;
  /**
   * Every configured listener name, for telling an unknown name from one not reported yet (the
   * supervisor before its workers report); default: the names in `listeners`.
   */
  names?: string[];
  /** Number of loaded certificate entries. */
  certificates: number;
  /** Listeners whose hostname no loaded certificate covers (a STARTTLS one cannot offer TLS). */
  certificatesMissing?: Array<{ listener: string; hostname: string }>;
  /** `backendChecks.interval`; null: off, and backends do not count. */
  backendChecks: { intervalMs: number | null };
  backends: BackendStatus[];
  /** Problems of the whole process, whatever the scope (workers not running). */
  problems?: string[];
}

/** `?listener=a&listener=b` or `?listener=a,b`; null when none is given. */
export function scopeOf(params: URLSearchParams): string[] | null {
  const names = params.getAll('listener').flatMap((v) => v.split(','));
  return names.length === 0 ? null : [...new Set(names)];
}

/** The names in `scope` that no configured listener has. */
export function unknownListeners(input: ReadinessInput, scope: readonly string[]): string[] {
  const known = new Set(input.names ?? input.listeners.map((l) => l.name));
  return scope.filter((n) => !known.has(n));
}

/**
 * Ready when the listeners in scope (all of them by default) are bound, a certificate is loaded
 * and covers their hostnames, and their backends (the listener's own and its routes') answered
 * the last check, when backends are checked. A scope lets a probe ask for one listener: an IMAP
 * backend that is down then does not take port 25 out of its Service.
 */
export function readinessOf(input: ReadinessInput, scope: readonly string[] | null = null): Readiness {
  const inScope = (name: string) => scope === null || scope.includes(name);
  const checks = input.backendChecks.intervalMs !== null;
  const listeners = input.listeners.filter((l) => inScope(l.name));
  const backends = checks ? input.backends.filter((b) => inScope(b.listener)) : [];
  const problems: string[] = [...(input.problems ?? [])];
  if (input.listeners.length === 0 && scope === null) problems.push('no listeners');
  for (const l of listeners) if (!l.bound) problems.push(`listener "${l.name}" is not bound`);
  if (input.certificates <= 0) problems.push('no certificates loaded');
  for (const m of input.certificatesMissing ?? []) if (inScope(m.listener)) problems.push(`listener "${m.listener}": no loaded certificate covers its hostname "${m.hostname}"`);
  for (const b of backends) {
    if (b.reachable) continue;
    if (b.checkedAt === null) problems.push(`backend ${b.address} (listener "${b.listener}") not checked yet`);
    else problems.push(`backend ${b.address} (listener "${b.listener}") unreachable: ${b.error ?? 'unknown error'}`);
  }
  return {
    ready: problems.length === 0,
    scope: scope === null ? null : [...scope],
    listeners: listeners.map((l) => ({ name: l.name, bound: l.bound })),
    certificates: { loaded: input.certificates },
    backendChecks: { enabled: checks, intervalMs: input.backendChecks.intervalMs },
    backends,
    problems,
  };
}

export interface AdminOptions {
  listen: HostPort;
  metrics: Metrics | MetricsSource;
  /** The state /readyz judges; the endpoint applies `?listener=` to it. */
  readiness: () => ReadinessInput | Promise<ReadinessInput>;
  log: Logger;
  /** ACME on: GET /acme (status) and POST /acme/renew?name=N (from loopback only). */
  acme?: Pick<AcmeManager, 'status' | 'renew' | 'rollover'> | null;
}

export interface AdminServer {
  /** The bound port (useful with port 0). */
  port: number;
  close(): Promise<void>;
}

const PATHS = new Set(['/metrics', '/healthz', '/readyz', '/acme', '/acme/renew', '/acme/rollover']);

/** The admin endpoint's connection limits (see the top of this file). */
export const ADMIN_LIMITS = {
  /** Connections from one client address (IPv4) or /64 (IPv6). */
  perClient: 8,
  /** Connections in all. */
  total: 128,
  /** From accept, and from the end of each response, to a complete request head. */
  requestMs: 2_000,
} as const;

export type AdminRefusal = typeof CloseReason.tooManyFromClient | typeof CloseReason.tooManyConnections | typeof CloseReason.requestTimeout;

interface GateEntry {
  key: string;
  /** Requests being answered; a connection with none is idle and may be closed for a new one. */
  busy: number;
  /** When it last became idle (accept, or the end of a response). */
  idleSince: number;
}

export interface Admission<C> {
  admitted: boolean;
  /** Why the new connection was refused (admitted false). */
  refused: AdminRefusal | null;
  /** Connections to close to make room for it, and why. */
  evict: Array<{ conn: C; key: string; reason: AdminRefusal }>;
}

/**
 * The admin endpoint's connection limits as a pure policy over opaque connections: per client
 * key and in total, the newest connection wins over the one idle the longest (a probe sends its
 * request at once; an idle connection is what an attacker holds). Within the total, room is made
 * at the expense of the client key that holds the most connections. A connection that is
 * answering a request is never closed for another; when all are, the new one is refused.
 */
export class AdminGate<C> {
  private readonly entries = new Map<C, GateEntry>();
  private readonly byKey = new Map<string, Set<C>>();
  private readonly limits: { perClient: number; total: number };

  constructor(limits: { perClient: number; total: number } = ADMIN_LIMITS) {
    this.limits = limits;
  }

  get size(): number {
    return this.entries.size;
  }

  admit(conn: C, key: string, now: number): Admission<C> {
    const evict: Admission<C>['evict'] = [];
    const mine = this.byKey.get(key);
    if (mine && mine.size >= this.limits.perClient) {
      const victim = this.longestIdle(mine);
      if (victim === null) return { admitted: false, refused: CloseReason.tooManyFromClient, evict };
      evict.push({ conn: victim, key, reason: CloseReason.tooManyFromClient });
      this.remove(victim);
    }
    if (this.entries.size >= this.limits.total) {
      // The key with the most connections that has an idle one gives it up.
      let victim: C | null = null;
      let victimKey = '';
      let most = 0;
      let since = Infinity;
      for (const [k, set] of this.byKey) {
        if (set.size < most) continue;
        const v = this.longestIdle(set);
        if (v === null) continue;
        const idleSince = this.entries.get(v)!.idleSince;
        // More connections first; among keys with as many, the connection idle the longest.
        if (set.size > most || idleSince < since) {
          victim = v;
          victimKey = k;
          most = set.size;
          since = idleSince;
        }
      }
      if (victim === null) return { admitted: false, refused: CloseReason.tooManyConnections, evict };
      evict.push({ conn: victim, key: victimKey, reason: CloseReason.tooManyConnections });
      this.remove(victim);
    }
    this.entries.set(conn, { key, busy: 0, idleSince: now });
    let set = this.byKey.get(key);
    if (!set) this.byKey.set(key, (set = new Set()));
    set.add(conn);
    return { admitted: true, refused: null, evict };
  }

  /** A request arrived on the connection. */
  busy(conn: C) {
    const e = this.entries.get(conn);
    if (e) e.busy++;
  }

  /** A response on the connection is done; true when no other request is being answered on it. */
  idle(conn: C, now: number): boolean {
    const e = this.entries.get(conn);
    if (!e) return false;
    e.busy = Math.max(0, e.busy - 1);
    if (e.busy === 0) e.idleSince = now;
    return e.busy === 0;
  }

  remove(conn: C) {
    const e = this.entries.get(conn);
    if (!e) return;
    this.entries.delete(conn);
    const set = this.byKey.get(e.key)!;
    set.delete(conn);
    if (set.size === 0) this.byKey.delete(e.key);
  }

  private longestIdle(set: Set<C>): C | null {
    let best: C | null = null;
    let since = Infinity;
    for (const c of set) {
      const e = this.entries.get(c)!;
      if (e.busy === 0 && e.idleSince < since) {
        best = c;
        since = e.idleSince;
      }
    }
    return best;
  }
}

/**
 * Refusals logged at most once per window: the first one at once (reason and client), then, while
 * they go on, one summary per window with the counts by reason and the busiest clients. An attack
 * of thousands of connections is a handful of lines, never one line per socket.
 */
export class RefusalLog {
  private readonly log: Logger;
  private readonly windowMs: number;
  private timer: NodeJS.Timeout | null = null;
  private counts = new Map<string, number>();
  private clients = new Map<string, number>();

  constructor(log: Logger, windowMs = 10_000) {
    this.log = log;
    this.windowMs = windowMs;
  }

  note(reason: AdminRefusal, client: string) {
    if (this.timer === null) {
      this.log.warn({ reason, client }, `admin connections refused: ${reason} (${client}); further refusals are summed up every ${this.windowMs / 1000} s`);
      this.open();
      return;
    }
    this.counts.set(reason, (this.counts.get(reason) ?? 0) + 1);
    this.clients.set(client, (this.clients.get(client) ?? 0) + 1);
  }

  private open() {
    this.timer = setTimeout(() => this.flush(), this.windowMs);
    this.timer.unref();
  }

  private flush() {
    this.timer = null;
    if (this.counts.size === 0) return;
    const total = [...this.counts.values()].reduce((a, b) => a + b, 0);
    const [reason] = [...this.counts.entries()].sort((a, b) => b[1] - a[1])[0]!;
    const clients = [...this.clients.entries()].sort((a, b) => b[1] - a[1]).slice(0, 5).map(([client, n]) => ({ client, refused: n }));
    this.log.warn({ reason, refused: Object.fromEntries(this.counts), clients }, `admin connections refused: ${total} more in the last ${this.windowMs / 1000} s`);
    this.counts = new Map();
    this.clients = new Map();
    this.open();
  }

  stop() {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}

/** The per-client key of the limits: the IPv4 address, or the /64 of an IPv6 one. */
function keyOf(address: string | undefined): string {
  if (!address) return 'unknown';
  try {
    return clientKey(address);
  } catch {
    return address; // an address clientKey cannot read (a zone id) counts on its own
  }
}

function isLoopback(address: string | undefined): boolean {
  const a = unmapped(address ?? '');
  return a === '::1' || a.startsWith('127.');
}

function source(m: Metrics | MetricsSource): MetricsSource {
  return 'registry' in m ? m.registry : m;
}

export async function startAdmin(opts: AdminOptions): Promise<AdminServer> {
  const metrics = source(opts.metrics);
  // The endpoint's own counter, in a registry of its own: it is served by the process that
  // serves the endpoint (the supervisor with workers), appended to whatever /metrics renders.
  const own = new Registry();
  const refusedTotal = new Counter({
    name: 'postern_admin_connections_refused_total',
    help: 'Admin endpoint connections refused or closed by its limits, by reason (too_many_from_client|too_many_connections|request_timeout)',
    labelNames: ['reason'] as const,
    registers: [own],
  });
  for (const reason of [CloseReason.tooManyFromClient, CloseReason.tooManyConnections, CloseReason.requestTimeout]) refusedTotal.inc({ reason }, 0);
  const refusals = new RefusalLog(opts.log);
  const server = http.createServer({
    // Node's own timers are the backstop; the 2 s deadline below is the rule. Node checks
    // headersTimeout and requestTimeout only every connectionsCheckingInterval (30 s by default).
    headersTimeout: ADMIN_LIMITS.requestMs + 1_000,
    requestTimeout: 10_000,
    connectionsCheckingInterval: 1_000,
    keepAliveTimeout: ADMIN_LIMITS.requestMs,
    maxHeaderSize: 8192,
  });
  // Past this, Node closes new connections before postern sees them ('drop'): the slack above
  // the gate's total covers sockets already closed whose 'close' has not been processed yet.
  server.maxConnections = ADMIN_LIMITS.total * 2;
  server.on('drop', (d?: { remoteAddress?: string }) => refused(CloseReason.tooManyConnections, keyOf(d?.remoteAddress)));
  server.setTimeout(10_000, (socket) => socket.destroy());

  const refused = (reason: AdminRefusal, client: string) => {
    refusedTotal.inc({ reason });
    refusals.note(reason, client);
  };

  const gate = new AdminGate<Socket>();
  const deadlines = new Map<Socket, NodeJS.Timeout>();
  /** Whether a complete request ever arrived on the socket (then its deadline is a plain idle close). */
  const served = new WeakSet<Socket>();
  const arm = (socket: Socket) => {
    clearTimeout(deadlines.get(socket));
    const t = setTimeout(() => {
      deadlines.delete(socket);
      if (!served.has(socket)) refused(CloseReason.requestTimeout, keyOf(socket.remoteAddress));
      socket.destroy();
    }, ADMIN_LIMITS.requestMs);
    t.unref();
    deadlines.set(socket, t);
  };
  const disarm = (socket: Socket) => {
    clearTimeout(deadlines.get(socket));
    deadlines.delete(socket);
  };
  server.on('connection', (socket: Socket) => {
    const key = keyOf(socket.remoteAddress);
    const a = gate.admit(socket, key, Date.now());
    for (const e of a.evict) {
      disarm(e.conn);
      refused(e.reason, e.key);
      e.conn.destroy();
    }
    if (!a.admitted) {
      refused(a.refused!, key);
      socket.destroy();
      return;
    }
    arm(socket);
    socket.once('close', () => {
      disarm(socket);
      gate.remove(socket);
    });
  });

  const send = (res: http.ServerResponse, status: number, type: string, body: string, headers: Record<string, string> = {}) => {
    if (res.headersSent || res.destroyed) return;
    res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store', ...headers });
    res.end(body); // a HEAD request gets the headers only (node drops the body)
  };
  const json = (res: http.ServerResponse, status: number, value: unknown, headers?: Record<string, string>) =>
    send(res, status, 'application/json; charset=utf-8', `${JSON.stringify(value)}\n`, headers);

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    req.resume(); // a body, if any, is of no interest
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://admin');
    } catch {
      return json(res, 400, { error: 'bad request' });
    }
    const path = url.pathname;
    if (!PATHS.has(path)) return json(res, 404, { error: 'not found', paths: [...PATHS] });
    if (path === '/acme/rollover') {
      // A new key changes what DANE senders must find in DNS: the same gate as a renewal.
      if (req.method !== 'POST') return json(res, 405, { error: 'method not allowed' }, { Allow: 'POST' });
      if (!isLoopback(req.socket.remoteAddress)) return json(res, 403, { error: 'rollovers are accepted from loopback only' });
      if (!opts.acme) return json(res, 404, { error: 'acme is not configured' });
      const name = (url.searchParams.get('name') ?? '').toLowerCase();
      const planned = opts.acme.rollover(name);
      if (!planned) return json(res, 404, { error: `${JSON.stringify(name)} is not the hostname of a dane: true MX listener managed by acme (only their keys are kept across renewals)` });
      return json(res, 202, { name, planned });
    }
    if (path === '/acme/renew') {
      // An order spends the CA account's rate limits: only someone on this host may ask for one
      // (`postern acme renew`, `docker exec`), whoever else can reach /metrics.
      if (req.method !== 'POST') return json(res, 405, { error: 'method not allowed' }, { Allow: 'POST' });
      if (!isLoopback(req.socket.remoteAddress)) return json(res, 403, { error: 'renewals are accepted from loopback only' });
      if (!opts.acme) return json(res, 404, { error: 'acme is not configured' });
      const name = url.searchParams.get('name') ?? '';
      if (!opts.acme.renew(name.toLowerCase())) return json(res, 404, { error: `${JSON.stringify(name)} is not an ACME-managed name`, names: [...new Set(opts.acme.status().map((c) => c.name))] });
      return json(res, 202, { queued: name.toLowerCase() });
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') return json(res, 405, { error: 'method not allowed' }, { Allow: 'GET, HEAD' });
    switch (path) {
      case '/acme':
        if (!opts.acme) return json(res, 404, { error: 'acme is not configured' });
        return json(res, 200, { certificates: opts.acme.status() });
      case '/healthz':
        return json(res, 200, { status: 'ok' });
      case '/readyz': {
        const input = await opts.readiness();
        const scope = scopeOf(url.searchParams);
        const unknown = scope === null ? [] : unknownListeners(input, scope);
        if (unknown.length > 0) {
          const listeners = [...new Set(input.names ?? input.listeners.map((l) => l.name))];
          return json(res, 404, { error: `no listener named ${unknown.map((n) => JSON.stringify(n)).join(', ')}`, unknown, listeners });
        }
        const r = readinessOf(input, scope);
        return json(res, r.ready ? 200 : 503, r);
      }
      default: {
        const text = await metrics.metrics();
        return send(res, 200, metrics.contentType, `${text}${text.endsWith('\n') || text === '' ? '' : '\n'}${await own.metrics()}`);
      }
    }
  };

  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const socket = req.socket;
    served.add(socket);
    gate.busy(socket);
    disarm(socket);
    res.once('close', () => {
      // Keep-alive: the next request within 2 s, or closed (pipelined ones are still answered).
      if (gate.idle(socket, Date.now()) && !socket.destroyed) arm(socket);
    });
    handle(req, res).catch((err: unknown) => {
      opts.log.error({ err, path: req.url }, 'admin request failed');
      try {
        json(res, 500, { error: 'internal error' });
      } catch {
        res.destroy();
      }
    });
  });

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen({ host: opts.listen.host, port: opts.listen.port }, () => {
      server.off('error', onError);
      server.on('error', (err) => opts.log.error({ err }, 'admin endpoint error'));
      resolve();
    });
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : opts.listen.port;
  const host = opts.listen.host.includes(':') ? `[${opts.listen.host}]` : opts.listen.host;
  opts.log.info({ admin: `${host}:${port}` }, 'admin endpoint listening');

  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        refusals.stop();
        for (const t of deadlines.values()) clearTimeout(t);
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
