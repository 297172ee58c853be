// ACME inside `postern run`: the manager, its challenge plumbing and the HTTP-01 listener, in the
// one process that talks to the CA. Alone, that process also serves, and the answers and reloads
// stay in it. With workers it is the supervisor: TLS-ALPN-01 answers and reloads go to every
// worker over the cluster IPC channel, and an order goes on only once every worker has answered.
import cluster, { type Worker } from 'node:cluster';
import type { Registry } from 'prom-client';
import type { AcmeConfig } from '../config/types.ts';
import type { Logger } from '../log.ts';
import { AcmeMetrics } from '../metrics.ts';
import { AcmeManager } from './manager.ts';
import { ChallengeBoard } from './challenges.ts';
import { startHttp01, type Http01Server } from './http-server.ts';
import type { ChallengeAnswer, Responder } from './client.ts';
import { ensureDir, LIVE } from './storage.ts';
import { join } from 'node:path';

export interface AcmeService {
  manager: AcmeManager;
  http01: Http01Server | null;
  close(): Promise<void>;
}

/**
 * The storage's live/ folder exists before the listeners load it and the reloader watches it.
 * Returns an error sentence, or null.
 */
export function prepareStorage(config: AcmeConfig): string | null {
  try {
    ensureDir(join(config.storage, LIVE));
    return null;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    return `cannot create the ACME storage folder ${config.storage} (${code}): postern needs to write its account key and certificates there`;
  }
}

/** Answers kept in `board`, which this process's listeners and HTTP-01 listener read. */
export function localResponder(board: ChallengeBoard): Responder {
  return {
    async publish(a) {
      if (a.type === 'tls-alpn-01') board.setTlsAlpn(a.name, a);
      else board.setHttp(a.token, a.keyAuthorization);
    },
    async withdraw(a) {
      if (a.type === 'tls-alpn-01') board.removeTlsAlpn(a.name);
      else board.removeHttp(a.token);
    },
  };
}

export async function startAcme(opts: {
  config: AcmeConfig;
  log: Logger;
  registry: Registry;
  board: ChallengeBoard;
  responder: Responder;
  reload(planned?: string[]): Promise<void>;
}): Promise<AcmeService> {
  const metrics = new AcmeMetrics(opts.registry);
  const manager = new AcmeManager({ config: opts.config, log: opts.log, metrics, responder: opts.responder, reload: opts.reload });
  // HTTP-01 answers come from the process that holds the orders: the board given here.
  const http01 = opts.config.http ? await startHttp01({ listen: opts.config.http.listen, board: opts.board, log: opts.log, metrics }) : null;
  manager.start();
  return {
    manager,
    http01,
    async close() {
      manager.stop();
      await http01?.close();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// With workers

export type AcmeMessage =
  | { type: 'postern:acme-answer'; id: number; answer: ChallengeAnswer }
  | { type: 'postern:acme-withdraw'; id: number; answer: ChallengeAnswer }
  | { type: 'postern:acme-reload'; id: number; planned?: string[] }
  | { type: 'postern:acme-ack'; id: number; ok: boolean }
  /** A worker's first word: its handler is in place, so messages sent from now on are not lost. */
  | { type: 'postern:acme-ready'; id: 0 };

export function isAcmeMessage(m: unknown): m is AcmeMessage {
  return typeof m === 'object' && m !== null && typeof (m as { type?: unknown }).type === 'string' && (m as { type: string }).type.startsWith('postern:acme-');
}

/** How long the supervisor waits for every worker to take an answer or finish a reload. */
const ACK_TIMEOUT_MS = 10_000;

/**
 * The supervisor's side: sends to every live worker and waits for each one's ack. A worker
 * started while an answer is open gets it too (`open`).
 *
 * A worker listens for these messages only once its daemon is up (serveAcmeMessages, after the
 * listeners are bound), and a message that reaches a process with no 'message' listener is
 * dropped: at startup the first order's answer would be lost and the order fail after
 * ACK_TIMEOUT_MS. So a worker says 'postern:acme-ready' once it listens, and until then what is
 * sent to it waits here (`queued`) and goes out, in order, when it is ready.
 */
export class WorkerFanout {
  private nextId = 1;
  private readonly waiting = new Map<number, { left: Set<number>; done: (ok: boolean) => void }>();
  private readonly open = new Map<string, ChallengeAnswer>();
  /** Workers (by cluster id) whose message handler is in place. */
  private readonly ready = new Set<number>();
  /** Messages for workers not ready yet, in the order they were sent. */
  private readonly queued = new Map<number, AcmeMessage[]>();

  constructor() {
    cluster.on('message', (worker, msg: unknown) => {
      if (!isAcmeMessage(msg)) return;
      if (msg.type === 'postern:acme-ready') {
        this.ready.add(worker.id);
        // A worker forked after an answer was published learns it here (no ack: nothing waits for it).
        for (const answer of this.open.values()) worker.send({ type: 'postern:acme-answer', id: 0, answer } satisfies AcmeMessage);
        for (const m of this.queued.get(worker.id) ?? []) worker.send(m);
        this.queued.delete(worker.id);
        return;
      }
      if (msg.type !== 'postern:acme-ack') return;
      const w = this.waiting.get(msg.id);
      if (!w) return;
      w.left.delete(worker.id);
      if (!msg.ok) w.done(false);
      else if (w.left.size === 0) w.done(true);
    });
    cluster.on('exit', (worker) => {
      this.ready.delete(worker.id);
      this.queued.delete(worker.id);
      for (const w of this.waiting.values()) {
        w.left.delete(worker.id);
        if (w.left.size === 0) w.done(true);
      }
    });
  }

  private send(make: (id: number) => AcmeMessage, what: string): Promise<void> {
    const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && w.isConnected());
    if (workers.length === 0) return Promise.resolve();
    const id = this.nextId++;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => finish(false), ACK_TIMEOUT_MS);
      const finish = (ok: boolean) => {
        clearTimeout(timer);
        this.waiting.delete(id);
        if (ok) resolve();
        else reject(new Error(`${what}: not every worker confirmed within ${ACK_TIMEOUT_MS / 1000}s`));
      };
      this.waiting.set(id, { left: new Set(workers.map((w) => w.id)), done: finish });
      for (const w of workers) {
        const m = make(id);
        if (this.ready.has(w.id)) w.send(m);
        else this.queued.set(w.id, [...(this.queued.get(w.id) ?? []), m]);
      }
    });
  }

  responder(board: ChallengeBoard): Responder {
    const local = localResponder(board);
    const key = (a: ChallengeAnswer) => (a.type === 'tls-alpn-01' ? `alpn:${a.name}` : `http:${a.token}`);
    return {
      publish: async (answer) => {
        // HTTP-01 is answered by the supervisor's own HTTP listener; TLS-ALPN-01 by the workers'.
        if (answer.type === 'http-01') return local.publish(answer);
        this.open.set(key(answer), answer);
        await this.send((id) => ({ type: 'postern:acme-answer', id, answer }), 'publishing the TLS-ALPN-01 answer');
      },
      withdraw: async (answer) => {
        if (answer.type === 'http-01') return local.withdraw(answer);
        this.open.delete(key(answer));
        await this.send((id) => ({ type: 'postern:acme-withdraw', id, answer }), 'withdrawing the TLS-ALPN-01 answer');
      },
    };
  }

  reload(planned: string[] = []): Promise<void> {
    return this.send((id) => ({ type: 'postern:acme-reload', id, planned }), 'reloading the new certificate');
  }
}

/** A worker's side: answers into its board, reloads on request, acks each. */
export function serveAcmeMessages(board: ChallengeBoard, reload: (planned: string[]) => Promise<boolean>) {
  const respond = localResponder(board);
  process.on('message', (msg: unknown) => {
    if (!isAcmeMessage(msg)) return;
    const ack = (ok: boolean) => {
      if (msg.type !== 'postern:acme-ack' && msg.id !== 0) process.send?.({ type: 'postern:acme-ack', id: msg.id, ok } satisfies AcmeMessage);
    };
    switch (msg.type) {
      case 'postern:acme-answer':
        void respond.publish(msg.answer).then(() => ack(true), () => ack(false));
        break;
      case 'postern:acme-withdraw':
        void respond.withdraw(msg.answer).then(() => ack(true), () => ack(false));
        break;
      case 'postern:acme-reload':
        void reload(msg.planned ?? []).then(ack, () => ack(false));
        break;
    }
  });
  // From here on nothing the supervisor sends is lost: it may send (and flush what it queued).
  process.send?.({ type: 'postern:acme-ready', id: 0 } satisfies AcmeMessage);
}
