// Client ends of the integration tests: a Node TLS client that reports how the handshake ended,
// and a raw TCP client that sends exact bytes and records everything that comes back until the
// server closes (for alerts written before any handshake, and for input that is not TLS at all).
import net from 'node:net';
import tls from 'node:tls';

export const ALERT = {
  /** unrecognized_name (RFC 6066 section 3). */
  unrecognizedName: Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70]),
  /** no_application_protocol (RFC 7301 section 3.2). */
  noApplicationProtocol: Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x78]),
  /** illegal_parameter (RFC 8446 section 6.2). */
  illegalParameter: Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x2f]),
  /** decode_error. */
  decodeError: Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32]),
  /** record_overflow. */
  recordOverflow: Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x16]),
} as const;

/** tls.connect passes the TCP options through to net.connect; the type does not say so. */
export type TlsClientOptions = tls.ConnectionOptions & { localAddress?: string; allowHalfOpen?: boolean };

export interface TlsOutcome {
  /** Set when the handshake finished. */
  socket: tls.TLSSocket | null;
  /** Set when it did not (an alert from the server, a reset, a close). */
  error: NodeJS.ErrnoException | null;
  /** The client's port, to find this connection's summary line. */
  localPort: number;
}

/**
 * Connects to 127.0.0.1:port and resolves when the handshake finishes or fails, never rejects.
 * Verification is on by default: pass `ca`, and `checkServerIdentity: () => undefined` where the
 * served certificate is expected not to match the requested name (fallback, no SNI).
 */
export function tlsTry(port: number, opts: TlsClientOptions = {}): Promise<TlsOutcome> {
  return new Promise((resolve) => {
    let localPort = 0;
    let settled = false;
    const socket = tls.connect({ host: '127.0.0.1', port, ...opts });
    const done = (o: Omit<TlsOutcome, 'localPort'>) => {
      if (settled) return;
      settled = true;
      resolve({ ...o, localPort });
    };
    socket.once('connect', () => {
      localPort = socket.localPort ?? 0;
    });
    socket.once('secureConnect', () => done({ socket, error: null }));
    socket.once('error', (error: NodeJS.ErrnoException) => {
      socket.destroy();
      done({ socket: null, error });
    });
    socket.once('close', () => done({ socket: null, error: Object.assign(new Error('closed before the handshake finished'), { code: 'CLOSED' }) }));
  });
}

/** The handshake must succeed; returns the secure socket (closed by the caller or on test end). */
export async function tlsOk(port: number, opts: TlsClientOptions = {}): Promise<tls.TLSSocket & { clientPort: number }> {
  const o = await tlsTry(port, opts);
  if (!o.socket) throw new Error(`handshake failed: ${o.error?.code ?? ''} ${o.error?.message ?? ''}`);
  o.socket.on('error', () => {});
  return Object.assign(o.socket, { clientPort: o.localPort });
}

/** Reads from a stream until `want` (bytes or text) has arrived; rejects on close or timeout. */
export function readUntil(socket: net.Socket, want: number | string, timeoutMs = 5000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const done = (err: Error | null) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
      if (err) reject(err);
      else resolve(got);
    };
    const enough = () => (typeof want === 'number' ? got.length >= want : got.toString('latin1').includes(want));
    const onData = (chunk: Buffer) => {
      got = Buffer.concat([got, chunk]);
      if (enough()) done(null);
    };
    const onClose = () => done(new Error(`closed after ${got.length} bytes while waiting for ${JSON.stringify(want)}: ${JSON.stringify(got.toString('latin1'))}`));
    const timer = setTimeout(() => done(new Error(`timed out after ${got.length} bytes waiting for ${JSON.stringify(want)}: ${JSON.stringify(got.toString('latin1'))}`)), timeoutMs);
    socket.on('data', onData);
    socket.on('close', onClose);
  });
}

/** Everything the stream delivers until it ends or closes (errors end the collection too). */
export function readToEnd(socket: net.Socket, timeoutMs = 10_000): Promise<{ data: Buffer; error: string | null }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let error: string | null = null;
    const timer = setTimeout(() => reject(new Error(`no end after ${timeoutMs} ms; got ${JSON.stringify(Buffer.concat(chunks).toString('latin1'))}`)), timeoutMs);
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', (e: NodeJS.ErrnoException) => {
      error = e.code ?? e.message;
    });
    const finish = () => {
      clearTimeout(timer);
      resolve({ data: Buffer.concat(chunks), error });
    };
    socket.once('end', finish);
    socket.once('close', finish);
  });
}

export interface RawExchange {
  /** Every byte the server sent before it closed. */
  data: Buffer;
  /** Milliseconds from the TCP connect to the server's close (FIN or reset). */
  closedAfterMs: number;
  /** A socket error on the client side (ECONNRESET, EPIPE), if any. */
  error: string | null;
  localPort: number;
}

export interface RawOptions {
  /** Pause between chunks; the first chunk goes out at once. */
  delayMs?: number;
  localAddress?: string;
  /** Give up (and fail) when the server has not closed by then. */
  timeoutMs?: number;
  /** Send FIN after the last chunk (a client that says it is done). */
  endAfterWrites?: boolean;
}

/**
 * Connects, writes `chunks` one write each (with `delayMs` between them, stopping when the server
 * closes), and records what comes back until the server closes the connection.
 */
export function rawExchange(port: number, chunks: Buffer | Buffer[], opts: RawOptions = {}): Promise<RawExchange> {
  const list = Array.isArray(chunks) ? chunks : [chunks];
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port, localAddress: opts.localAddress, noDelay: true, allowHalfOpen: true });
    const received: Buffer[] = [];
    let error: string | null = null;
    let connectedAt = 0;
    let closed = false;
    let localPort = 0;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`server did not close within ${opts.timeoutMs ?? 15_000} ms; received ${JSON.stringify(Buffer.concat(received).toString('latin1'))}`));
    }, opts.timeoutMs ?? 15_000);
    const serverClosed = () => {
      if (closed) return;
      closed = true;
      clearTimeout(timer);
      const closedAfterMs = performance.now() - connectedAt;
      socket.destroy();
      resolve({ data: Buffer.concat(received), closedAfterMs, error, localPort });
    };
    socket.on('data', (c: Buffer) => received.push(c));
    socket.on('end', serverClosed);
    socket.on('error', (e: NodeJS.ErrnoException) => {
      error = e.code ?? e.message;
      serverClosed();
    });
    socket.on('close', serverClosed);
    socket.once('connect', async () => {
      connectedAt = performance.now();
      localPort = socket.localPort ?? 0;
      for (let i = 0; i < list.length && !closed; i++) {
        if (i > 0 && opts.delayMs) await new Promise((r) => setTimeout(r, opts.delayMs));
        if (!closed && socket.writable && list[i]!.length > 0) socket.write(list[i]!);
      }
      if (opts.endAfterWrites && !closed) socket.end();
    });
  });
}

/** Splits bytes into pieces of `size` (1 for byte-by-byte writes). */
export function pieces(buf: Buffer, size = 1): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) out.push(buf.subarray(i, i + size));
  return out;
}
