// Dials the backend with a deadline. The PROXY header, when any, is the first thing written,
// before a single byte of the client's session (haproxy proxy-protocol.txt section 2: the header
// must be sent at once, in a single write, before any data).
import net from 'node:net';
import type { BackendConfig } from '../config/types.ts';

export type DialResult =
  | { ok: true; socket: net.Socket; connectMs: number }
  | { ok: false; reason: 'backend_unreachable' | 'backend_timeout'; error: string };

export function dialBackend(backend: BackendConfig, timeoutMs: number, header: Buffer | null): Promise<DialResult> {
  return new Promise((resolve) => {
    const started = performance.now();
    const socket = net.connect({ host: backend.address.host, port: backend.address.port, allowHalfOpen: true, noDelay: true });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ ok: false, reason: 'backend_timeout', error: `no connection within ${timeoutMs} ms` });
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      if (header) socket.write(header);
      // A backend that resets the connection between its accept and this write (it is stopping,
      // or was killed with connections in its accept queue) fails the write at once; the socket
      // then emits 'error' on the next tick, before the session's own handlers are on. onError
      // stays until then and turns that into a failed dial: the client gets the protocol's
      // goodbye, and the process does not die of an unhandled 'error' event.
      process.nextTick(() => {
        // (onError has resolved first when there was an error; this covers any other close.)
        if (socket.destroyed) return resolve({ ok: false, reason: 'backend_unreachable', error: 'closed before the session started' });
        socket.off('error', onError);
        resolve({ ok: true, socket, connectMs: performance.now() - started });
      });
    });
    const onError = (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ ok: false, reason: 'backend_unreachable', error: err.code ?? err.message });
    };
    socket.once('error', onError);
  });
}
