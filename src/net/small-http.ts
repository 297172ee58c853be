// What the two small Internet-facing HTTP servers share (the ACME HTTP-01 listener and the
// MTA-STS policy host): a cap per client address, an absolute deadline per connection, and
// answers for requests the parser refuses.
import type { Server } from 'node:net';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { clientKey } from './address.ts';

/** IPv4 address or IPv6 /64, as the listeners count clients; an unreadable address counts alone. */
export function clientKeyOf(address: string | undefined): string {
  try {
    return clientKey(address ?? '');
  } catch {
    return address ?? '?';
  }
}

/**
 * Each new connection: closed at once past `perClient` open ones from its address (`refused`
 * is told), else destroyed after `deadlineMs` whatever it sends meanwhile.
 */
export function guardConnections(server: Server, opts: { perClient: number; deadlineMs: number; refused(): void }) {
  const open = new Map<string, number>();
  server.on('connection', (socket: Socket) => {
    const key = clientKeyOf(socket.remoteAddress);
    const n = (open.get(key) ?? 0) + 1;
    if (n > opts.perClient) {
      opts.refused();
      socket.destroy();
      return;
    }
    open.set(key, n);
    const t = setTimeout(() => socket.destroy(), opts.deadlineMs);
    t.unref();
    socket.once('close', () => {
      clearTimeout(t);
      const left = (open.get(key) ?? 1) - 1;
      if (left <= 0) open.delete(key);
      else open.set(key, left);
    });
  });
}

/** Node's own clientError answers, kept: 431 for a head over the limit (RFC 6585 section 5), 408, else 400; then close. */
export function answerClientErrors(server: Server) {
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : '400 Bad Request';
    if (socket.writable) socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    else socket.destroy();
  });
}
