// workers: N. The primary process binds nothing itself: it forks N workers that run the same
// daemon, each with its own listening sockets on the same addresses (SO_REUSEPORT: the kernel
// spreads new connections over them, no hand-off through the primary; see Listener.bind),
// passes SIGHUP and SIGTERM on to every worker, restarts a worker that dies, and serves the
// admin endpoint with the metrics summed over all workers.
import cluster, { type Worker } from 'node:cluster';
import type { Logger } from './log.ts';
import type { BackendStatus } from './backend/health.ts';

export interface SupervisorOptions {
  workers: number;
  log: Logger;
  /** Grace after SIGTERM before workers are killed: their drain timeout plus a margin. */
  stopTimeoutMs: number;
  /** More environment for every worker (the shared session ticket secret). */
  env?: Record<string, string>;
}

/** What a worker tells the primary about itself (for /readyz). */
export interface WorkerStatus {
  type: 'postern:status';
  listeners: Array<{ name: string; bound: boolean }>;
  certificates: number;
  backends: BackendStatus[];
  /** Listeners whose hostname no loaded certificate covers (normally none). */
  certificatesMissing: Array<{ listener: string; hostname: string }>;
}

export class Supervisor {
  private readonly opts: SupervisorOptions;
  private stopping = false;
  private readonly restarts: number[] = [];
  readonly status = new Map<number, WorkerStatus>();

  constructor(opts: SupervisorOptions) {
    this.opts = opts;
  }

  start(): void {
    cluster.on('exit', (worker, code, signal) => this.onExit(worker, code, signal));
    cluster.on('message', (worker, msg: unknown) => {
      if (isStatus(msg)) this.status.set(worker.id, msg);
    });
    for (let i = 0; i < this.opts.workers; i++) this.fork();
  }

  private fork(): Worker {
    const w = cluster.fork({ ...this.opts.env, POSTERN_WORKER: '1' });
    this.opts.log.info({ worker: w.id, pid: w.process.pid }, 'worker started');
    return w;
  }

  private onExit(worker: Worker, code: number | null, signal: string | null) {
    this.status.delete(worker.id);
    if (this.stopping) return;
    this.opts.log.error({ worker: worker.id, pid: worker.process.pid, code, signal, reason: 'worker_exit' }, 'worker died; starting a replacement');
    // A worker that dies at once again and again (a bad certificate on disk, a port taken) must
    // not become a fork loop: at most 5 restarts in 30 s, then one per 5 s.
    const now = Date.now();
    while (this.restarts.length > 0 && now - this.restarts[0]! > 30_000) this.restarts.shift();
    this.restarts.push(now);
    const delay = this.restarts.length > 5 ? 5_000 : 0;
    setTimeout(() => {
      if (!this.stopping) this.fork();
    }, delay).unref();
  }

  /** Sends a signal to every worker (SIGHUP: reload). */
  signal(sig: NodeJS.Signals) {
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill(sig);
  }

  /** SIGTERM to every worker; each drains and exits. Resolves when all are gone. */
  async stop(): Promise<void> {
    this.stopping = true;
    const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined);
    const gone = Promise.all(workers.map((w) => new Promise<void>((r) => (w.isDead() ? r() : w.once('exit', () => r())))));
    for (const w of workers) w.process.kill('SIGTERM');
    const timer = setTimeout(() => {
      for (const w of workers) if (!w.isDead()) w.process.kill('SIGKILL');
    }, this.opts.stopTimeoutMs);
    await gone;
    clearTimeout(timer);
  }

  /** Second signal: end at once. */
  kill() {
    this.stopping = true;
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGKILL');
  }
}

function isStatus(msg: unknown): msg is WorkerStatus {
  return typeof msg === 'object' && msg !== null && (msg as { type?: unknown }).type === 'postern:status';
}
