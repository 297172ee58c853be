// Client ends of the "one client against everyone" attacks (issue 14): a STARTTLS upgrade that
// returns the secure socket, a writer that pushes as fast as the socket accepts for a bounded time
// (it honours write()'s backpressure, so the attacker's own memory stays flat and only postern's
// behaviour decides how much it takes in), and the reasons a session may end with.
import type net from 'node:net';
import type tls from 'node:tls';
import { setImmediate as yieldNow } from 'node:timers/promises';
import { connectPlain, readStream, startTls, GREETING, STARTTLS_CMD, type MailProtocol, type SpawnedPostern, type StreamReader } from './harness.ts';

export interface Upgraded {
  raw: net.Socket;
  secure: tls.TLSSocket;
  r: StreamReader;
  /** The client's port (the summary line and the backend's PROXY header name it). */
  localPort: number;
}

/**
 * Plain connect, greeting (and EHLO for SMTP), STARTTLS, handshake. `beforeTls` runs once the
 * client port is known, before anything reaches the backend (to plan the backend's behaviour).
 */
export async function upgrade(d: SpawnedPostern, listener: string, proto: MailProtocol, ca: string, beforeTls: (clientPort: number) => void = () => {}): Promise<Upgraded> {
  const c = await connectPlain(d.port(listener));
  beforeTls(c.localPort);
  await c.reader.readUntil(GREETING[proto]);
  if (proto === 'smtp') {
    c.socket.write('EHLO client.example\r\n');
    await c.reader.readUntil(/^250 [^\r\n]*\r\n/m);
  }
  c.socket.write(STARTTLS_CMD[proto].command);
  await c.reader.readUntil(STARTTLS_CMD[proto].reply);
  c.reader.detach();
  const secure = await startTls(c.socket, { servername: 'mail.example.org', ca });
  return { raw: c.socket, secure, r: readStream(secure), localPort: c.localPort };
}

export interface Flooded {
  /** Bytes the socket accepted from us (some may still sit in its buffers when it ended). */
  written: number;
  /** Why the flood stopped ('done': `next()` returned null). */
  end: 'time' | 'aborted' | 'closed' | 'done';
}

/**
 * Writes `chunk` (or `next()`'s chunks) for `ms`, as fast as the socket takes them: when write()
 * returns false it waits for 'drain' (bounded by the time left). Yields to the event loop between
 * writes, so samplers and readers in this process keep running. Stops at `signal`, at the end of
 * the time, when the socket closes, or when `next()` returns null.
 */
export async function flood(sock: net.Socket | tls.TLSSocket, next: Buffer | (() => Buffer | null), ms: number, signal?: AbortSignal): Promise<Flooded> {
  const until = Date.now() + ms;
  let written = 0;
  let closed = false;
  const onClose = () => (closed = true);
  sock.once('close', onClose);
  try {
    for (;;) {
      if (signal?.aborted) return { written, end: 'aborted' };
      if (closed || sock.destroyed || !sock.writable) return { written, end: 'closed' };
      const left = until - Date.now();
      if (left <= 0) return { written, end: 'time' };
      const chunk = typeof next === 'function' ? next() : next;
      if (chunk === null) return { written, end: 'done' };
      written += chunk.length;
      if (sock.write(chunk)) {
        await yieldNow();
        continue;
      }
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(t);
          sock.off('drain', done);
          sock.off('close', done);
          signal?.removeEventListener('abort', done);
          resolve();
        };
        const t = setTimeout(done, left);
        sock.once('drain', done);
        sock.once('close', done);
        signal?.addEventListener('abort', done, { once: true });
      });
    }
  } finally {
    sock.off('close', onClose);
  }
}

/** `n` lines of `text` (without CRLF) as one buffer, for floods. */
export function lines(text: string, n: number): Buffer {
  return Buffer.from(`${text}\r\n`.repeat(n), 'latin1');
}

export const KB = 1024;
export const MB = 1024 * 1024;
