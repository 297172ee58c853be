// Pipes the decrypted client stream and the backend socket both ways: backpressure through
// stream.pipe (pause when write() returns false, resume on drain), half-close (a FIN from one
// side becomes a FIN to the other while the reverse direction keeps flowing), resets passed on as
// resets, and an idle timeout over both directions.
import type { Socket } from 'node:net';
import { CloseReason, type Side } from './errors.ts';

export interface SpliceResult {
  reason: CloseReason;
  side: Side | null;
  error: string | null;
}

export function splice(client: Socket, backend: Socket, idleMs: number, onDone: (r: SpliceResult) => void): () => void {
  let result: SpliceResult | null = null;
  let closed = 0;
  const fail = (reason: CloseReason, side: Side, error: string | null, peer: Socket, reset: boolean) => {
    result ??= { reason, side, error };
    // A reset on one side is passed on as a reset (RST), not as an orderly FIN.
    if (reset && typeof peer.resetAndDestroy === 'function' && !peer.destroyed) peer.resetAndDestroy();
    else peer.destroy();
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

  client.pipe(backend);
  backend.pipe(client);

  return () => {
    result ??= { reason: CloseReason.shutdown, side: 'local', error: null };
    client.destroy();
    backend.destroy();
  };
}
