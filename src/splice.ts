// Pipes the decrypted client stream and the backend socket both ways: backpressure (pause when
// write() returns false, resume on drain), half-close (a FIN from one side becomes a FIN to the
// other while the reverse direction keeps flowing), resets passed on as resets, an idle timeout
// over both directions, and, with a filter, a deadline on every wait for the backend. Resolves
// once both sockets are closed; rejects at once if a handler threw (the backend closed, the
// client left to the session, which tells it to try later).
import type { Socket } from 'node:net';
import { CloseReason, type RefusalReason, type Side } from './errors.ts';
import { MAX_REFUSALS, type SessionFilter } from './starttls/types.ts';
import { pumpFiltered, type FilteredPipe } from './filtered-pipe.ts';
import { endGracefully } from './net/last-words.ts';

export interface SpliceResult {
  reason: CloseReason;
  side: Side | null;
  error: string | null;
}

export interface SpliceOptions {
  idleMs: number;
  /** With a filter: the longest it may wait for a backend reply (timeouts.backendReply). */
  backendReplyMs: number;
  /** STARTTLS sessions: sees every byte both ways and may answer the client itself. */
  filter: SessionFilter | null;
  /** Commands to send the backend once its greeting is complete (plaintext handoff). */
  replay: string;
  /** What the client is told when the backend does not answer in time (the protocol's "try later"). */
  silentBackendWords: Buffer | null;
  /**
   * Implicit TLS: what the client is told when the backend closes before its greeting (the
   * protocol's "backend not available"); the client has heard nothing else. Null after STARTTLS
   * (the client has postern's greeting) and on raw sessions.
   */
  ungreetedBackendWords?: Buffer | null;
  /**
   * Resets the client's TCP connection. A TLSSocket's own handle is the TLS layer, which cannot
   * send a RST (ERR_INVALID_HANDLE_TYPE); the raw socket beneath it can.
   */
  resetClient: () => void;
  /** With a filter: commands it refused itself (reason codes), to log and count. */
  refused?: (reasons: readonly RefusalReason[]) => void;
  /** What the client is told when it had too many commands refused (the protocol's "too many errors"), asked only then. */
  tooManyErrorsWords?: () => string | null;
}

export interface Splice {
  /** Both sockets closed: how it ended. Rejects with the error when a handler threw (the backend is closed then, the client not yet). */
  done: Promise<SpliceResult>;
  /** Shutdown: close both sides now. */
  stop(): void;
}

export { LAST_WORDS_MS } from './net/last-words.ts';

export function splice(client: Socket, backend: Socket, opts: SpliceOptions): Splice {
  const { idleMs, filter } = opts;
  let result: SpliceResult | null = null;
  let fault: unknown = null;
  let closed = 0;
  let waitTimer: NodeJS.Timeout | null = null;
  let resolveDone!: (r: SpliceResult) => void;
  let rejectDone!: (e: unknown) => void;
  const done = new Promise<SpliceResult>((resolve, reject) => {
    resolveDone = resolve;
    rejectDone = reject;
  });

  let pump: FilteredPipe | null = null;
  /**
   * postern ends the session itself (idle timeout, shutdown): the backend is closed, the client
   * gets an orderly end (close_notify on TLS) and at most LAST_WORDS_MS to go.
   */
  const closeBoth = () => {
    client.setTimeout(0);
    pump?.detach();
    client.unpipe(backend);
    backend.unpipe(client);
    backend.destroy();
    // What the client still sends is dropped (bounded by the pump's drain cap, or by LAST_WORDS_MS).
    if (!pump) client.resume();
    endGracefully(client, null);
  };
  /**
   * One session's fault stays in it: nothing more is forwarded, the backend is closed, and `done`
   * rejects at once; the session closes the client (with the protocol's "try later").
   */
  const guard = <A extends unknown[]>(fn: (...args: A) => void) => (...args: A) => {
    try {
      fn(...args);
    } catch (err) {
      if (fault !== null) return;
      fault = err;
      pump?.detach();
      backend.destroy();
      rejectDone(err);
    }
  };
  const fail = (reason: CloseReason, side: Side, error: string | null, peer: Socket, reset: boolean) => {
    result ??= { reason, side, error };
    if (peer.destroyed) return;
    // A reset on one side is passed on as a reset (RST), not as an orderly FIN.
    if (!reset) peer.destroy();
    else if (peer === client) opts.resetClient();
    else peer.resetAndDestroy();
  };
  const onClose = () => {
    if (++closed < 2) return;
    if (waitTimer) clearTimeout(waitTimer);
    resolveDone(result ?? { reason: CloseReason.done, side: null, error: null });
  };

  client.on('error', (err: NodeJS.ErrnoException) => {
    fail(CloseReason.clientError, 'client', err.code ?? err.message, backend, err.code === 'ECONNRESET');
  });
  backend.on('error', (err: NodeJS.ErrnoException) => {
    fail(CloseReason.backendError, 'backend', err.code ?? err.message, client, err.code === 'ECONNRESET');
  });
  // Once both directions have seen their FIN there is nothing left to carry.
  let ended = 0;
  const onEnd = () => {
    if (++ended === 2) {
      client.destroySoon();
      backend.destroySoon();
    }
  };
  client.on('end', onEnd);
  backend.on('end', onEnd);
  // A side that is fully closed can neither send nor receive: let the other flush what it
  // already accepted, then go.
  client.on('close', () => {
    if (!backend.destroyed) backend.destroySoon();
    onClose();
  });
  backend.on('close', () => {
    if (!client.destroyed) client.destroySoon();
    onClose();
  });

  // RFC 5321 section 4.5.3.2 lets servers time out idle sessions; one timer on the client socket
  // sees both directions, because every byte either way is read from or written to it.
  client.setTimeout(idleMs, () => {
    result ??= { reason: CloseReason.idleTimeout, side: 'local', error: null };
    closeBoth();
  });

  if (filter) {
    // The client's last words once it had too many commands refused; null until then.
    let refusedWords: string | null = null;
    /** The pump stops; the client gets `words` (if any) and its FIN, and at most LAST_WORDS_MS to go. */
    const closeClient = (words: Buffer | string | null) => {
      pump?.detach();
      endGracefully(client, words);
    };
    const onBackendSilent = () => {
      waitTimer = null;
      result ??= { reason: CloseReason.backendReplyTimeout, side: 'backend', error: `no backend reply within ${opts.backendReplyMs} ms` };
      backend.destroy();
      closeClient(refusedWords ?? opts.silentBackendWords);
    };
    try {
      pump = pumpFiltered(client, backend, filter, {
        replay: opts.replay,
        guard,
        refused: opts.refused ?? (() => {}),
        backendGone: (waiting) => {
          if (waiting) result ??= { reason: CloseReason.backendClosed, side: 'backend', error: 'the backend closed while postern waited for its reply' };
          // Unlike a raw pipe, a filtered (mail) session does not stay half-open: what the client
          // still sends is dropped, and a client that does not close within the grace is closed.
          backend.end();
          closeClient(filter.greeted() ? refusedWords : (opts.ungreetedBackendWords ?? null));
        },
        // The backend has its FIN and answers what it already has; one that does not close within
        // timeouts.backendReply is closed (onBackendSilent), the client told the same words.
        tooManyRefusals: () => {
          result ??= { reason: CloseReason.tooManyErrors, side: 'client', error: `${MAX_REFUSALS} commands refused by postern` };
          refusedWords = opts.tooManyErrorsWords?.() ?? null;
        },
        // Waits for the backend have their own deadline: the client's bytes (which reset the idle
        // timer) never extend it (threats.md: "Client bytes never extend a deadline that waits on
        // the backend").
        waiting: (on) => {
          if (waitTimer) clearTimeout(waitTimer);
          waitTimer = on ? setTimeout(guard(onBackendSilent), opts.backendReplyMs) : null;
        },
      });
    } catch (err) {
      fault = err;
      backend.destroy();
      rejectDone(err);
    }
  } else {
    client.pipe(backend);
    backend.pipe(client);
  }
  // The client may have sent its FIN while the backend was being dialled: 'end' is then already
  // behind us and would never reach the listeners above.
  if (client.readableEnded) onEnd();

  return {
    done,
    stop() {
      result ??= { reason: CloseReason.shutdown, side: 'local', error: null };
      closeBoth();
    },
  };
}
