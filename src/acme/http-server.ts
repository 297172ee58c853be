// The HTTP-01 listener (acme.http): plain HTTP that answers exactly one kind of request,
// GET /.well-known/acme-challenge/<token> for a token of an open order (RFC 8555 section 8.3),
// and 404 for everything else. It is on the Internet on port 80, so it is small and bounded:
// request heads of at most 4 KiB within 5 s, no bodies, at most 64 connections and 4 per client
// address (IPv6: per /64), one request per connection, and nothing but the key authorization
// ever in a response. The per-address cap keeps one host from holding all 64 slots while the
// CA's validators (several vantage points, a few connections each) need them.
import http from 'node:http';
import type { HostPort } from '../config/types.ts';
import type { Logger } from '../log.ts';
import type { AcmeMetrics } from '../metrics.ts';
import type { ChallengeBoard } from './challenges.ts';
import { answerClientErrors, guardConnections } from '../net/small-http.ts';

const PREFIX = '/.well-known/acme-challenge/';
/** RFC 8555 section 8.1: a token is base64url; at least 128 bits of entropy, so 22+ characters. */
const TOKEN = /^[A-Za-z0-9_-]{1,256}$/;
export const HTTP01_LIMITS = { headerBytes: 4096, requestMs: 5000, connections: 64, perClient: 4 } as const;

export interface Http01Server {
  port: number;
  close(): Promise<void>;
}

export async function startHttp01(opts: { listen: HostPort; board: ChallengeBoard; log: Logger; metrics: AcmeMetrics }): Promise<Http01Server> {
  const { board, metrics, log } = opts;
  const server = http.createServer({
    maxHeaderSize: HTTP01_LIMITS.headerBytes,
    headersTimeout: HTTP01_LIMITS.requestMs,
    requestTimeout: HTTP01_LIMITS.requestMs,
    connectionsCheckingInterval: 1000,
    keepAliveTimeout: 1,
  });
  server.maxConnections = HTTP01_LIMITS.connections;
  // One address holds at most 4 connections; each is cut at the deadline whatever it sends.
  guardConnections(server, { perClient: HTTP01_LIMITS.perClient, deadlineMs: HTTP01_LIMITS.requestMs, refused: () => metrics.httpRequests.inc({ result: 'too_many_from_client' }) });
  answerClientErrors(server);
  server.on('request', (req, res) => {
    req.resume();
    const reply = (status: number, body: string, result: 'answered' | 'unknown_token' | 'not_found' | 'bad_method', headers: Record<string, string> = {}) => {
      metrics.httpRequests.inc({ result });
      res.writeHead(status, { 'Content-Type': status === 200 ? 'application/octet-stream' : 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(body), Connection: 'close', 'Cache-Control': 'no-store', ...headers });
      res.end(body);
    };
    const path = (req.url ?? '').split('?')[0]!;
    if (!path.startsWith(PREFIX)) return reply(404, 'not found\n', 'not_found');
    if (req.method !== 'GET' && req.method !== 'HEAD') return reply(405, 'method not allowed\n', 'bad_method', { Allow: 'GET, HEAD' });
    const token = path.slice(PREFIX.length);
    const answer = TOKEN.test(token) ? board.httpAnswer(token) : null;
    if (answer === null) return reply(404, 'not found\n', 'unknown_token');
    log.info({ token, client: req.socket.remoteAddress }, 'acme http-01 validation answered');
    return reply(200, answer, 'answered');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: opts.listen.host, port: opts.listen.port }, () => {
      server.off('error', reject);
      server.on('error', (err) => log.error({ err }, 'acme http-01 listener error'));
      resolve();
    });
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : opts.listen.port;
  log.info({ listen: `${opts.listen.host}:${port}` }, 'acme http-01 listener listening');
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
