// The admin HTTP endpoint (`admin: { listen: ... }`): /metrics in Prometheus text format,
// /healthz (the process is alive and answering) and /readyz (every listener bound, certificates
// loaded, backends reachable) with a JSON body saying what is not ready. GET and HEAD only.
import http from 'node:http';
import type { HostPort } from './config/types.ts';
import type { Logger } from './log.ts';
import type { Metrics } from './metrics.ts';
import type { BackendStatus } from './backend/health.ts';

/** Anything that renders Prometheus text: a Metrics registry, or the cluster's summed view. */
export interface MetricsSource {
  readonly contentType: string;
  metrics(): Promise<string>;
}

export interface Readiness {
  ready: boolean;
  listeners: Array<{ name: string; bound: boolean }>;
  certificates: { loaded: number };
  backends: BackendStatus[];
  /** What is not ready, one sentence each; empty when ready. */
  problems: string[];
}

export interface ReadinessInput {
  listeners: Array<{ name: string; bound: boolean }>;
  /** Number of loaded certificate entries. */
  certificates: number;
  backends: BackendStatus[];
}

/** Ready when every listener is bound, a certificate is loaded and every backend answered. */
export function readinessOf(input: ReadinessInput): Readiness {
  const problems: string[] = [];
  if (input.listeners.length === 0) problems.push('no listeners');
  for (const l of input.listeners) if (!l.bound) problems.push(`listener "${l.name}" is not bound`);
  if (input.certificates <= 0) problems.push('no certificates loaded');
  for (const b of input.backends) {
    if (b.reachable) continue;
    if (b.checkedAt === null) problems.push(`backend ${b.address} (listener "${b.listener}") not checked yet`);
    else problems.push(`backend ${b.address} (listener "${b.listener}") unreachable: ${b.error ?? 'unknown error'}`);
  }
  return {
    ready: problems.length === 0,
    listeners: input.listeners.map((l) => ({ name: l.name, bound: l.bound })),
    certificates: { loaded: input.certificates },
    backends: input.backends,
    problems,
  };
}

export interface AdminOptions {
  listen: HostPort;
  metrics: Metrics | MetricsSource;
  readiness: () => Readiness | Promise<Readiness>;
  log: Logger;
}

export interface AdminServer {
  /** The bound port (useful with port 0). */
  port: number;
  close(): Promise<void>;
}

const PATHS = new Set(['/metrics', '/healthz', '/readyz']);

function source(m: Metrics | MetricsSource): MetricsSource {
  return 'registry' in m ? m.registry : m;
}

export async function startAdmin(opts: AdminOptions): Promise<AdminServer> {
  const metrics = source(opts.metrics);
  const server = http.createServer({
    // Slow or idle clients cannot hold the endpoint: it serves scrapers and probes, nobody else.
    headersTimeout: 5_000,
    requestTimeout: 10_000,
    keepAliveTimeout: 5_000,
    maxHeaderSize: 8192,
  });
  server.maxConnections = 128;
  server.setTimeout(15_000, (socket) => socket.destroy());

  const send = (res: http.ServerResponse, status: number, type: string, body: string, headers: Record<string, string> = {}) => {
    if (res.headersSent || res.destroyed) return;
    res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store', ...headers });
    res.end(body); // a HEAD request gets the headers only (node drops the body)
  };
  const json = (res: http.ServerResponse, status: number, value: unknown, headers?: Record<string, string>) =>
    send(res, status, 'application/json; charset=utf-8', `${JSON.stringify(value)}\n`, headers);

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    req.resume(); // a body, if any, is of no interest
    let path: string;
    try {
      path = new URL(req.url ?? '/', 'http://admin').pathname;
    } catch {
      return json(res, 400, { error: 'bad request' });
    }
    if (!PATHS.has(path)) return json(res, 404, { error: 'not found', paths: [...PATHS] });
    if (req.method !== 'GET' && req.method !== 'HEAD') return json(res, 405, { error: 'method not allowed' }, { Allow: 'GET, HEAD' });
    switch (path) {
      case '/healthz':
        return json(res, 200, { status: 'ok' });
      case '/readyz': {
        const r = await opts.readiness();
        return json(res, r.ready ? 200 : 503, r);
      }
      default:
        return send(res, 200, metrics.contentType, await metrics.metrics());
    }
  };

  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
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
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
