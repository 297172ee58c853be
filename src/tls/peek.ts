// Reads from a socket until the whole ClientHello is buffered (it may span several TCP segments
// and several TLS records), bounded by the peek budget. The caller owns the deadline: it destroys
// the socket when the deadline passes, which ends the peek with "closed".
// After a "hello" the bytes are back in the socket's read buffer (unshift), so a tls.TLSSocket
// created over the same socket replays them to OpenSSL unchanged.
import type { Socket } from 'node:net';
import { HelloScanner, MAX_HELLO_BYTES, type ClientHello, type MalformedCode } from './clienthello.ts';

export type PeekOutcome =
  | { kind: 'hello'; hello: ClientHello }
  | { kind: 'not-tls'; reason: string; head: Buffer }
  | { kind: 'malformed'; code: MalformedCode; detail: string }
  | { kind: 'closed'; error: NodeJS.ErrnoException | null };

export function peekClientHello(socket: Socket, initial: Buffer | null = null, maxBytes = MAX_HELLO_BYTES): Promise<PeekOutcome> {
  return new Promise((resolve, reject) => {
    // A growing buffer with doubling capacity: 1-byte writes cost amortised O(1) copying, not
    // a full concat per byte (threats.md: hellos split down to 1 byte per write).
    let store = initial ? Buffer.from(initial) : Buffer.alloc(0);
    let used = store.length;
    let buf = store.subarray(0, used);
    let error: NodeJS.ErrnoException | null = null;
    // Resumes at the last complete record on each chunk: linear work over the whole hello.
    const scanner = new HelloScanner(maxBytes);
    const detach = () => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onClose);
      socket.off('error', onError);
      socket.pause();
    };
    const finish = (outcome: PeekOutcome, giveBack: boolean) => {
      detach();
      if (giveBack) socket.unshift(buf);
      resolve(outcome);
    };
    const evaluate = (): boolean => {
      const r = scanner.scan(buf);
      switch (r.kind) {
        case 'need-more':
          return false;
        case 'hello':
          finish({ kind: 'hello', hello: r.hello }, true);
          return true;
        case 'not-tls':
          finish({ kind: 'not-tls', reason: r.reason, head: buf.subarray(0, 64) }, false);
          return true;
        case 'malformed':
          finish({ kind: 'malformed', code: r.code, detail: r.detail }, false);
          return true;
      }
      return false;
    };
    // A throw in a socket handler would reach the event loop: it goes to the session's boundary instead.
    const onData = (chunk: Buffer) => {
      try {
        read(chunk);
      } catch (err) {
        detach();
        reject(err);
      }
    };
    const read = (chunk: Buffer) => {
      if (used + chunk.length > store.length) {
        const bigger = Buffer.allocUnsafe(Math.max(used + chunk.length, Math.min(2 * store.length, maxBytes + 2 * 16640), 2048));
        store.copy(bigger, 0, 0, used);
        store = bigger;
      }
      chunk.copy(store, used);
      used += chunk.length;
      buf = store.subarray(0, used);
      evaluate();
    };
    // The client half-closed or went away before its hello was complete.
    const onEnd = () => finish({ kind: 'closed', error }, false);
    const onClose = () => finish({ kind: 'closed', error }, false);
    const onError = (err: NodeJS.ErrnoException) => {
      error = err;
    };
    if (buf.length > 0 && evaluate()) return;
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('close', onClose);
    socket.on('error', onError);
    socket.resume();
  });
}
