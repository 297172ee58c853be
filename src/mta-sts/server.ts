// The MTA-STS policy host (RFC 8461 section 3.3): HTTPS on mtaSts.listen for the names
// mta-sts.<domain>, answering exactly GET (and HEAD) /.well-known/mta-sts.txt with the policy as
// text/plain, and 404 for everything else. The certificate for each name comes from the same
// store the listeners use (so ACME and reloads apply); a handshake for any other name is refused:
// closed without a certificate (and without an alert: unlike a strict listener's unrecognized_name,
// Node sends none when the SNICallback fails). It is on the Internet, so it is bounded like the
// HTTP-01 listener: 4 KiB request heads within 5 s, no bodies, 256 connections and 8 per client
// address, one request per connection.
import cluster from 'node:cluster';
import https from 'node:https';
import type { SecureContext } from 'node:tls';
import type { MtaStsConfig } from '../config/types.ts';
import type { Logger } from '../log.ts';
import type { CertStore } from '../tls/certstore.ts';
import { answerClientErrors, guardConnections } from '../net/small-http.ts';
import type { Counter } from 'prom-client';

export const POLICY_PATH = '/.well-known/mta-sts.txt';
export const STS_LIMITS = { headerBytes: 4096, requestMs: 5000, handshakeMs: 5000, connections: 256, perClient: 8 } as const;

export interface PolicyHost {
  port: number;
  close(): Promise<void>;
}

type Result = 'served' | 'not_found' | 'bad_method' | 'too_many_from_client' | 'unknown_name';

export async function startPolicyHost(opts: { config: () => MtaStsConfig; store: () => CertStore; log: Logger; requests: Counter<'result'> }): Promise<PolicyHost> {
  const { log, requests } = opts;
  const hostOf = (name: string | undefined): string | null => {
    const n = (name ?? '').toLowerCase().replace(/:\d+$/, '').replace(/\.$/, '');
    return opts.config().domains.some((d) => `mta-sts.${d}` === n) ? n : null;
  };
  const contextFor = (name: string): SecureContext | null => opts.store().lookup(name)?.unit.context('TLSv1.2') ?? null;
  const count = (result: Result) => requests.inc({ result });
  const server = https.createServer({
    // A handshake for a name of ours gets its certificate; any other name is refused.
    SNICallback: (servername, cb) => {
      const name = hostOf(servername);
      const ctx = name ? contextFor(name) : null;
      if (!ctx) {
        count('unknown_name');
        cb(new Error(`no policy host ${JSON.stringify(servername)}`));
        return;
      }
      cb(null, ctx);
    },
    // Without SNI: the first domain's policy host (a sender always sends SNI, RFC 8461 section 3.3).
    ...(() => {
      const first = opts.config().domains[0];
      const unit = first ? opts.store().lookup(`mta-sts.${first}`)?.unit : undefined;
      return unit ? { cert: unit.entries.map((e) => e.certPem), key: unit.entries.map((e) => e.keyPem) } : {};
    })(),
    minVersion: 'TLSv1.2',
    handshakeTimeout: STS_LIMITS.handshakeMs,
    maxHeaderSize: STS_LIMITS.headerBytes,
    headersTimeout: STS_LIMITS.requestMs,
    requestTimeout: STS_LIMITS.requestMs,
    connectionsCheckingInterval: 1000,
    keepAliveTimeout: 1,
  });
  server.maxConnections = STS_LIMITS.connections;
  // The whole exchange (handshake and request) within both deadlines, whatever arrives meanwhile.
  guardConnections(server, { perClient: STS_LIMITS.perClient, deadlineMs: STS_LIMITS.handshakeMs + STS_LIMITS.requestMs, refused: () => count('too_many_from_client') });
  server.on('tlsClientError', (_err, socket) => socket.destroy());
  answerClientErrors(server);
  server.on('request', (req, res) => {
    req.resume();
    const reply = (status: number, body: string, result: Result, headers: Record<string, string> = {}) => {
      count(result);
      res.writeHead(status, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body), Connection: 'close', ...headers });
      res.end(body);
    };
    const path = (req.url ?? '').split('?')[0];
    // The Host must name one of our policy hosts (RFC 8461 section 3.3: the sender fetches
    // https://mta-sts.<domain>/.well-known/mta-sts.txt).
    if (path !== POLICY_PATH || hostOf(req.headers.host) === null) return reply(404, 'not found\n', 'not_found');
    if (req.method !== 'GET' && req.method !== 'HEAD') return reply(405, 'method not allowed\n', 'bad_method', { Allow: 'GET, HEAD' });
    return reply(200, opts.config().text, 'served');
  });
  const { host, port } = opts.config().listen;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port, ...(cluster.isWorker ? { exclusive: true, reusePort: true } : {}) }, () => {
      server.off('error', reject);
      server.on('error', (err) => log.error({ err }, 'mta-sts policy host error'));
      resolve();
    });
  });
  const addr = server.address();
  const bound = typeof addr === 'object' && addr ? addr.port : port;
  if (!cluster.isWorker) log.info({ listen: `${host}:${bound}`, domains: opts.config().domains, id: opts.config().id, mode: opts.config().mode }, 'mta-sts policy host listening');
  return {
    port: bound,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
