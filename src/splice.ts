// Pipes the decrypted client stream and the backend socket both ways: backpressure through
// stream.pipe (pause when write() returns false, resume on drain), half-close (a FIN from one
// side becomes a FIN to the other while the reverse direction keeps flowing), resets passed on as
// resets, and an idle timeout over both directions.
import type { Socket } from 'node:net';
import { CloseReason, type Side } from './errors.ts';
import type { SessionFilter } from './starttls/types.ts';

export interface SpliceResult {
  reason: CloseReason;
  side: Side | null;
  error: string | null;
}

/**
 * `filter` (STARTTLS sessions) sees every byte both ways and may answer the client itself; without
 * one the sockets are piped directly.
 */
export interface SpliceOptions {
  idleMs: number;
  /** STARTTLS sessions: sees every byte both ways and may answer the client itself. */
  filter: SessionFilter | null;
  /** Commands to send the backend once its greeting is complete (plaintext handoff). */
  replay: string;
  /**
   * Resets the client's TCP connection. A TLSSocket's own handle is the TLS layer, which cannot
   * send a RST (ERR_INVALID_HANDLE_TYPE); the raw socket beneath it can.
   */
  resetClient: () => void;
}

export function splice(client: Socket, backend: Socket, opts: SpliceOptions, onDone: (r: SpliceResult) => void): () => void {
  const { idleMs, filter, replay } = opts;
  let result: SpliceResult | null = null;
  let closed = 0;
  const fail = (reason: CloseReason, side: Side, error: string | null, peer: Socket, reset: boolean) => {
    result ??= { reason, side, error };
    if (peer.destroyed) return;
    // A reset on one side is passed on as a reset (RST), not as an orderly FIN.
    if (!reset) peer.destroy();
    else if (peer === client) opts.resetClient();
    else peer.resetAndDestroy();
  };
  const onClose = () => {
    if (++closed === 2) onDone(result ?? { reason: CloseReason.done, side: null, error: null });
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
    client.destroy();
    backend.destroy();
  });

  if (filter) pumpFiltered(client, backend, filter, replay);
  else {
    client.pipe(backend);
    backend.pipe(client);
  }
  // The client may have sent its FIN while the backend was being dialled: 'end' is then already
  // behind us and would never reach the listeners above.
  if (client.readableEnded) onEnd();

  return () => {
    result ??= { reason: CloseReason.shutdown, side: 'local', error: null };
    client.destroy();
    backend.destroy();
  };
}

/**
 * The same as two pipes, with the filter in between. Backpressure: a side whose peer's write()
 * returned false is paused until the peer drains. Client bytes wait while the filter is not
 * ready (the backend's greeting and the replies to replayed commands have not all arrived), so
 * the backend never sees a command before its banner (postscreen's pregreet test would flag it).
 */
function pumpFiltered(client: Socket, backend: Socket, filter: SessionFilter, replay: string) {
  let held: Buffer[] = [];
  // Commands replayed for a plaintext handoff (the client's EHLO) go out once the greeting is
  // complete: a multi-line "220-" greeting may be postscreen waiting to catch early talkers.
  let pendingReplay = replay;
  let clientEnded = false;
  const toBackend = (chunk: Buffer) => {
    const r = filter.fromClient(chunk);
    if (r.toClient && client.writable) client.write(r.toClient);
    if (r.toBackend && r.toBackend.length > 0 && !backend.write(r.toBackend)) client.pause();
  };
  client.on('data', (chunk: Buffer) => {
    if (filter.ready && !filter.ready()) held.push(chunk);
    else toBackend(chunk);
  });
  backend.on('data', (chunk: Buffer) => {
    const out = filter.fromBackend(chunk);
    if (out && out.length > 0 && !client.write(out)) backend.pause();
    if (pendingReplay && (!filter.greeted || filter.greeted())) {
      backend.write(pendingReplay);
      pendingReplay = '';
    }
    if (held.length > 0 && (!filter.ready || filter.ready())) {
      const pending = held;
      held = [];
      for (const c of pending) toBackend(c);
      if (clientEnded) backend.end();
    }
  });
  backend.on('drain', () => client.resume());
  client.on('drain', () => backend.resume());
  client.on('end', () => {
    clientEnded = true;
    if (held.length === 0) backend.end();
  });
  backend.on('end', () => client.end());
  if (client.readableEnded) {
    clientEnded = true;
    if (held.length === 0) backend.end();
  }
  // A prelude may have paused the client socket explicitly; 'data' listeners alone do not
  // resume an explicitly paused stream.
  client.resume();
}
