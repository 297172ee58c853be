// `postern run`: validate everything, bind every listener, serve until SIGTERM/SIGINT.
// With `workers: N` (N > 1) this process becomes the supervisor and N workers run the daemon.
import cluster from 'node:cluster';
import { AggregatorRegistry, Registry } from 'prom-client';
import { validateFile, printProblems, type Validated } from './load.ts';
import { createLogger } from '../log.ts';
import { Daemon } from '../daemon.ts';
import { preludeFor } from '../starttls/protocols.ts';
import { formatConfigError } from '../config/load.ts';
import { Reloader, logCertificates } from '../reload.ts';
import { Supervisor, type WorkerStatus } from '../cluster.ts';
import type { PosternConfig } from '../config/types.ts';
import type { Logger } from '../log.ts';
import { startAdmin, type ReadinessInput } from '../admin.ts';
import { BackendHealth, healthTargets } from '../backend/health.ts';
import { ChallengeBoard } from '../acme/challenges.ts';
import { startPolicyHost, type PolicyHost } from '../mta-sts/server.ts';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { MIN_SECRET_BYTES, parseTicketSecret, TicketKeys } from '../tls/tickets.ts';
import { localResponder, prepareStorage, serveAcmeMessages, startAcme, WorkerFanout, type AcmeService } from '../acme/service.ts';

export async function runCommand(file: string): Promise<number> {
  const v = validateFile(file);
  if (!v.ok) {
    printProblems(v.errors, v.warnings);
    process.stderr.write(`postern: ${v.errors.length} error(s) in ${file}; nothing was started\n`);
    return 1;
  }
  if (v.config.workers > 1 && cluster.isPrimary) return runSupervisor(v.config);
  return runDaemon(file, v);
}

/**
 * A bug that escapes (an uncaught exception, an unhandled rejection) still ends the process, as
 * Node does by default: its state can no longer be trusted, and the container's restart policy
 * (or the supervisor, for a worker) brings a fresh one. Before that, one fatal JSON line with a
 * stable reason code, flushed, so that log pipelines see why; Node then prints the stack.
 */
function logFatalErrors(log: Logger) {
  process.on('uncaughtExceptionMonitor', (err, origin) => {
    log.fatal({ reason: 'internal_error', origin, error: err?.stack ?? String(err) }, 'internal error: exiting');
    log.flush();
  });
}

/**
 * postern needs one privilege, binding ports below 1024 (CAP_NET_BIND_SERVICE); as root a bug
 * could do anything. One line at startup says so; the systemd unit and the Docker image run it
 * as an unprivileged user that holds only that capability.
 */
export function warnIfRoot(log: Logger, uid = process.getuid?.()) {
  if (uid !== 0) return;
  log.warn(
    { reason: 'running_as_root' },
    'running as root: postern needs only CAP_NET_BIND_SERVICE to bind ports below 1024; run it as a dedicated user with that capability (examples/systemd/postern.service, or the Docker image: setcap cap_net_bind_service=+ep on node)',
  );
}

async function runDaemon(file: string, v: Extract<Validated, { ok: true }>): Promise<number> {
  const log = createLogger(v.config.log.level, 1, v.config.log.format);
  logFatalErrors(log);
  const worker = cluster.isWorker;
  if (!worker) for (const w of v.warnings) log.warn({ file: w.file, path: w.path }, formatConfigError(w));
  if (!worker) warnIfRoot(log);
  const acme = v.config.acme;
  if (acme) {
    const problem = prepareStorage(acme);
    if (problem) {
      log.fatal({ reason: 'acme_storage_error', storage: acme.storage }, problem);
      return 1;
    }
  }
  // TLS-ALPN-01 answers for every listener: filled by this process's manager, or by the supervisor.
  const challenges = acme ? new ChallengeBoard() : undefined;
  const tickets = ticketKeys(v.config);
  let daemon: Daemon;
  try {
    daemon = await Daemon.start({ config: v.config, store: v.store, log, preludeFor, challenges, tickets });
    if (!worker) logCertificates(log, daemon);
  } catch (err) {
    // A log line like every other once the logger exists: one stream, one format.
    const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
    log.fatal({ reason: 'listen_failed', listen: `${e.address ?? '?'}:${e.port ?? '?'}`, error: e.code ?? e.message }, `cannot listen on ${e.address ?? '?'}:${e.port ?? '?'}: ${e.code ?? e.message}`);
    return 1;
  }
  // process_* and nodejs_*: with workers, each worker's, combined by the supervisor.
  daemon.metrics.collectProcessMetrics();

  // SIGHUP, or a change in a certificate folder, reloads: build everything new, then swap.
  const reloader = new Reloader({ file, daemon, log, position: v.position });
  reloader.watch(v.config);

  // Each process checks the backends itself, so /readyz and postern_backend_up speak for it.
  // backendChecks.interval: off: no checks, and backends do not count for /readyz.
  const intervalMs = v.config.backendChecks.intervalMs;
  const health = intervalMs === null ? null : new BackendHealth(() => healthTargets(daemon.listeners.map((l) => l.env.listener)), {
    intervalMs,
    timeoutMs: Math.max(...v.config.listeners.map((l) => l.timeouts.connectMs)),
    log,
    metrics: daemon.metrics,
  });
  health?.start();
  // A reload may move backends: check them at once rather than call them "not checked yet"
  // (503) until the next round, up to an interval later.
  process.on('SIGHUP', () => void reloader.reload('sighup').then((ok) => (ok ? health?.check() : undefined)));
  // MTA-STS: every serving process answers the policy host (each worker binds it with
  // SO_REUSEPORT, as the listeners).
  let policyHost: PolicyHost | null = null;
  if (v.config.mtaSts) {
    try {
      policyHost = await startPolicyHost({ config: () => daemon.config.mtaSts ?? v.config.mtaSts!, store: () => daemon.certificates, log, requests: daemon.metrics.mtaStsRequests });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const l = v.config.mtaSts.listen;
      log.fatal({ reason: 'listen_failed', listen: `${l.host}:${l.port}`, error: e.code ?? e.message }, `cannot listen on mtaSts ${l.host}:${l.port}: ${e.code ?? e.message}`);
      await daemon.stop();
      return 1;
    }
  }

  // ACME: this process orders and answers itself (without workers); a worker only answers and
  // reloads when the supervisor says so.
  let acmeService: AcmeService | null = null;
  if (acme && challenges && worker) serveAcmeMessages(challenges, (planned) => (daemon.expectKeys(planned), reloader.reload('watch')));
  if (acme && challenges && !worker) {
    try {
      acmeService = await startAcme({
        config: acme,
        log,
        registry: daemon.metrics.registry,
        board: challenges,
        responder: localResponder(challenges),
        reload: (planned = []) => (daemon.expectKeys(planned), reloader.reload('watch').then(() => undefined)),
      });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      log.fatal({ reason: 'listen_failed', listen: `${acme.http?.listen.host}:${acme.http?.listen.port}`, error: e.code ?? e.message }, `cannot listen on acme http ${acme.http?.listen.host}:${acme.http?.listen.port}: ${e.code ?? e.message}`);
      await daemon.stop();
      return 1;
    }
  }
  let admin: { close(): Promise<void> } | null = null;
  if (v.config.admin && !worker) {
    const readiness = (): ReadinessInput => ({ ...processState(daemon, health), backendChecks: { intervalMs } });
    admin = await openAdmin(v.config, log, { metrics: daemon.metrics, readiness, acme: acmeService?.manager ?? null });
    if (!admin) {
      health?.stop();
      await acmeService?.close();
      await daemon.stop();
      return 1;
    }
  }

  let statusTimer: NodeJS.Timeout | null = null;
  if (worker) {
    // The supervisor sums the workers' metrics and asks them for their state (/readyz).
    AggregatorRegistry.setRegistries([daemon.metrics.registry]);
    // prom-client answers the primary's metric requests once an AggregatorRegistry exists here.
    new AggregatorRegistry();
    const report = () => process.send?.({ type: 'postern:status', ...processState(daemon, health) } satisfies WorkerStatus);
    report();
    void health?.first.then(report);
    statusTimer = setInterval(report, 2000);
    statusTimer.unref();
  }

  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        log.warn({ signal, open: daemon.openSessions() }, 'second signal: exiting now');
        log.flush();
        process.exit(0);
      }
      stopping = true;
      const ms = v.config.shutdown.drainTimeoutMs;
      log.info({ signal, open: daemon.openSessions(), drainTimeoutMs: ms }, 'stopping: no new connections, draining');
      daemon.drain(ms).then((r) => {
        log.info(r, 'drained');
        resolve();
      }, resolve);
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    // A terminal's Ctrl-C reaches the whole process group; in a worker the supervisor decides.
    process.on('SIGINT', () => (worker ? undefined : stop('SIGINT')));
  });
  if (statusTimer) clearInterval(statusTimer);
  health?.stop();
  await acmeService?.close();
  await policyHost?.close();
  // The admin endpoint stayed up during the drain: /readyz said 503 (listeners unbound).
  await admin?.close();
  reloader.unwatch();
  log.info('stopped');
  log.flush();
  // The IPC channel to the supervisor would keep a worker alive after its drain.
  if (worker) process.disconnect?.();
  return 0;
}

/** Binds host:port alone (no SO_REUSEPORT) and closes again; the error code, or null when free. */
function probeListen(host: string, port: number): Promise<string | null> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    srv.listen({ host, port, exclusive: true }, () => srv.close(() => resolve(null)));
  });
}

const TICKET_SECRET_ENV = 'POSTERN_TICKET_SECRET';

/**
 * The session ticket keys: in a worker, the secret the supervisor handed it; else from
 * sessionTickets.keyFile (checked at load), else a random one for this process.
 */
function ticketKeys(config: PosternConfig): TicketKeys {
  const { keyFile, rotateMs } = config.sessionTickets;
  const handed = process.env[TICKET_SECRET_ENV];
  delete process.env[TICKET_SECRET_ENV];
  if (cluster.isWorker && handed && /^[0-9a-f]{64,}$/.test(handed)) return new TicketKeys(Buffer.from(handed, 'hex'), rotateMs);
  const secret = keyFile === null ? null : readTicketSecret(keyFile);
  return secret ? new TicketKeys(secret, rotateMs) : TicketKeys.random(rotateMs);
}

function readTicketSecret(keyFile: string): Buffer | null {
  const parsed = parseTicketSecret(readFileSync(keyFile));
  return parsed.ok ? parsed.secret : null;
}

/** What this process knows for /readyz (a worker sends it to the supervisor). */
export function processState(daemon: Daemon, health: BackendHealth | null): Omit<WorkerStatus, 'type'> {
  return {
    listeners: daemon.listeners.map((l) => ({ name: l.env.listener.name, bound: l.server.listening })),
    certificates: daemon.certificates.entries.length,
    certificatesMissing: daemon.certificatesMissing(),
    backends: health?.status() ?? [],
  };
}

async function runSupervisor(config: PosternConfig): Promise<number> {
  const log = createLogger(config.log.level, 1, config.log.format);
  logFatalErrors(log);
  const acme = config.acme;
  if (acme) {
    const problem = prepareStorage(acme);
    if (problem) {
      log.fatal({ reason: 'acme_storage_error', storage: acme.storage }, problem);
      return 1;
    }
  }
  // The workers share one ticket secret, so a client resumes on any of them: the key file's,
  // read here once, or (without one) a random one made here; handed to each worker at its start
  // (the environment of a process is readable only by its own user), and never logged. A worker
  // that replaces a dead one gets the same secret even if the key file changed since (a new
  // secret takes a restart, as any sessionTickets change).
  const keyFile = config.sessionTickets.keyFile;
  const ticketSecret = ((keyFile === null ? null : readTicketSecret(keyFile)) ?? randomBytes(MIN_SECRET_BYTES)).toString('hex');
  // Workers bind with SO_REUSEPORT, which would also let them share a port with a second
  // postern left running by mistake (and split its connections with it). Each address is bound
  // here once without it first: taken by anyone, that fails, as a single process's bind would.
  const shared = [...config.listeners.map((l) => ({ name: l.name, listen: l.listen })), ...(config.mtaSts ? [{ name: 'mtaSts', listen: config.mtaSts.listen }] : [])];
  for (const l of shared) {
    const taken = await probeListen(l.listen.host, l.listen.port);
    if (taken) {
      log.fatal({ reason: 'listen_failed', listen: `${l.listen.host}:${l.listen.port}`, listener: l.name, error: taken }, `cannot listen on ${l.listen.host}:${l.listen.port}: ${taken}`);
      return 1;
    }
  }
  const sup = new Supervisor({ workers: config.workers, log, stopTimeoutMs: config.shutdown.drainTimeoutMs + 5000, env: { [TICKET_SECRET_ENV]: ticketSecret } });
  // Only the supervisor talks to the CA; the workers answer its validations and load the result.
  const fanout = acme ? new WorkerFanout() : null;
  log.info({ workers: config.workers }, 'starting workers');
  sup.start();
  const own = new Registry();
  let acmeService: AcmeService | null = null;
  if (acme && fanout) {
    const board = new ChallengeBoard();
    try {
      acmeService = await startAcme({ config: acme, log, registry: own, board, responder: fanout.responder(board), reload: (planned) => fanout.reload(planned) });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      log.fatal({ reason: 'listen_failed', listen: `${acme.http?.listen.host}:${acme.http?.listen.port}`, error: e.code ?? e.message }, `cannot listen on acme http ${acme.http?.listen.host}:${acme.http?.listen.port}: ${e.code ?? e.message}`);
      await sup.stop();
      return 1;
    }
  }
  let admin: { close(): Promise<void> } | null = null;
  if (config.admin) {
    // /metrics sums the workers' registries over IPC (prom-client's AggregatorRegistry), then
    // adds the supervisor's own (the ACME manager's).
    const aggregator = new AggregatorRegistry();
    const metrics = { contentType: aggregator.contentType, metrics: async () => `${await aggregator.clusterMetrics()}${await own.metrics()}` };
    admin = await openAdmin(config, log, { metrics, readiness: () => supervisorReadiness(sup, config), acme: acmeService?.manager ?? null });
    if (!admin) {
      await acmeService?.close();
      await sup.stop();
      return 1;
    }
  }
  process.on('SIGHUP', () => sup.signal('SIGHUP'));
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        log.warn({ signal }, 'second signal: killing workers');
        sup.kill();
        process.exit(0);
      }
      stopping = true;
      log.info({ signal }, 'stopping workers');
      void sup.stop().then(resolve);
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
  await acmeService?.close();
  await admin?.close();
  log.info('stopped');
  log.flush();
  return 0;
}

async function openAdmin(config: PosternConfig, log: Logger, src: Pick<Parameters<typeof startAdmin>[0], 'metrics' | 'readiness' | 'acme'>) {
  const listen = config.admin!.listen;
  try {
    return await startAdmin({ listen, log, ...src });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    log.fatal({ reason: 'listen_failed', listen: `${listen.host}:${listen.port}`, error: code }, `cannot listen on admin ${listen.host}:${listen.port}: ${code}`);
    return null;
  }
}

/** Ready when every worker is up and reports the listeners in scope bound and their backends reachable. */
function supervisorReadiness(sup: Supervisor, config: PosternConfig): ReadinessInput {
  const all: WorkerStatus[] = [...sup.status.values()];
  const missing = new Map(all.flatMap((w) => w.certificatesMissing).map((m) => [m.listener, m]));
  return {
    listeners: all.flatMap((w) => w.listeners),
    names: config.listeners.map((l) => l.name),
    certificates: Math.min(...all.map((w) => w.certificates), all.length ? Infinity : 0),
    certificatesMissing: [...missing.values()],
    backendChecks: { intervalMs: config.backendChecks.intervalMs },
    backends: all.flatMap((w) => w.backends),
    problems: all.length < config.workers ? [`${all.length} of ${config.workers} workers running`] : [],
  };
}
