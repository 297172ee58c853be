// Line dialogues over any byte stream: a raw TCP socket before STARTTLS, the TLS socket after it,
// or the output of a child process (openssl s_client). Each read returns the unread text up to a
// pattern, so a test can say exactly what arrived, and that nothing else did.
import net from 'node:net';
import tls from 'node:tls';
import type { Readable } from 'node:stream';

export interface StreamReader {
  /** Resolves with the unread text up to and including the first match of `re`. */
  readUntil(re: RegExp, timeoutMs?: number): Promise<string>;
  /** Resolves when the stream ends (or errors), with whatever was still unread. */
  readToEnd(timeoutMs?: number): Promise<string>;
  /** Text received but not yet returned by a read. */
  unread(): string;
  /** Everything received so far. */
  transcript(): string;
  /** True once the stream has ended or closed. */
  ended(): boolean;
  /** Stops listening (before handing the socket to TLS); returns what was unread. */
  detach(): string;
}

export function readStream(...streams: Readable[]): StreamReader {
  let received = '';
  let consumed = 0;
  let open = streams.length;
  let wake: (() => void) | null = null;
  const notify = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  const onData = (chunk: Buffer | string) => {
    received += typeof chunk === 'string' ? chunk : chunk.toString('latin1');
    notify();
  };
  const onEnd = () => {
    open = Math.max(0, open - 1);
    notify();
  };
  const onError = () => {}; // seen as the end of the stream; the transcript tells the story
  for (const s of streams) {
    s.on('data', onData);
    s.once('end', onEnd);
    s.once('close', onEnd);
    s.on('error', onError);
  }

  const wait = async (done: () => string | null, timeoutMs: number, what: string): Promise<string> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const result = done();
      if (result !== null) return result;
      const left = deadline - Date.now();
      if (open === 0 || left <= 0) {
        throw new Error(`${what}: ${open === 0 ? 'stream closed' : `timeout after ${timeoutMs} ms`}; transcript:\n${received}`);
      }
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 200));
        wake = () => {
          clearTimeout(t);
          r();
        };
      });
    }
  };

  return {
    readUntil: (re, timeoutMs = 10_000) =>
      wait(() => {
        const rest = received.slice(consumed);
        const m = re.exec(rest);
        if (!m) return null;
        const end = m.index + m[0].length;
        consumed += end;
        return rest.slice(0, end);
      }, timeoutMs, `waiting for ${re}`),
    readToEnd: (timeoutMs = 10_000) =>
      wait(() => {
        if (open > 0) return null;
        const rest = received.slice(consumed);
        consumed = received.length;
        return rest;
      }, timeoutMs, 'waiting for the end of the stream'),
    unread: () => received.slice(consumed),
    transcript: () => received,
    ended: () => open === 0,
    detach: () => {
      for (const s of streams) {
        s.off('data', onData);
        s.off('end', onEnd);
        s.off('close', onEnd);
      }
      const rest = received.slice(consumed);
      consumed = received.length;
      return rest;
    },
  };
}

/** A TCP connection from `localAddress` (a 127.0.0.0/8 address) to 127.0.0.1:port, with Nagle off. */
export function connectFrom(port: number, localAddress: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port, localAddress, noDelay: true });
    socket.once('connect', () => {
      socket.off('error', reject);
      socket.on('error', () => {});
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

export interface StartTlsOptions {
  servername?: string;
  ca: string;
  /** Accept a certificate that does not match `servername` (fallback cases); the chain is still verified. */
  anyName?: boolean;
}

/**
 * Starts TLS on a socket whose pre-TLS reader has been detached; resolves with the secure socket
 * once the handshake finished, rejects with the error when it failed.
 */
export function startTls(socket: net.Socket, opts: StartTlsOptions): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const t = tls.connect({
      socket,
      ca: opts.ca,
      ...(opts.servername ? { servername: opts.servername } : {}),
      ...(opts.anyName ? { checkServerIdentity: () => undefined } : {}),
    });
    const onError = (err: Error) => {
      t.destroy();
      reject(err);
    };
    t.once('error', onError);
    t.once('close', () => reject(new Error('closed during the TLS handshake')));
    t.once('secureConnect', () => {
      t.off('error', onError);
      t.on('error', () => {});
      resolve(t);
    });
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A RegExp that matches `s` literally. */
export function literal(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
