// A recording backend: accepts plaintext connections from postern, decodes the PROXY header,
// and records every byte, so tests can assert what reached it (and that nothing did).
import net from 'node:net';
import { decodeProxyHeader, type DecodedProxy } from '../../src/backend/proxy-decode.ts';

export interface BackendConnection {
  socket: net.Socket;
  header: DecodedProxy | null;
  /** The PROXY header exactly as it arrived, or null when there was none. */
  headerBytes: Buffer | null;
  /** Bytes after the PROXY header. */
  data: Buffer;
  ended: boolean;
  closed: Promise<void>;
}

export type BackendMode =
  /** Write back everything received (after the header). */
  | 'echo'
  /** Greet like an SMTP server, then echo. */
  | 'smtp-echo'
  /** Only record. */
  | 'sink';

export interface RecordingBackend {
  port: number;
  connections: BackendConnection[];
  /** Resolves with the next connection that has received at least `bytes` bytes after the header. */
  waitForData(bytes: number, index?: number, timeoutMs?: number): Promise<BackendConnection>;
  close(): Promise<void>;
}

export async function startBackend(opts: { mode?: BackendMode; proxy?: boolean; greeting?: string } = {}): Promise<RecordingBackend> {
  const mode = opts.mode ?? 'echo';
  const expectHeader = opts.proxy ?? true;
  const connections: BackendConnection[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    let resolveClosed!: () => void;
    const conn: BackendConnection = { socket, header: null, headerBytes: null, data: Buffer.alloc(0), ended: false, closed: new Promise((r) => (resolveClosed = r)) };
    connections.push(conn);
    let pre = Buffer.alloc(0);
    let headerDone = !expectHeader;
    const greet = () => {
      if (mode === 'smtp-echo') socket.write(opts.greeting ?? '220 backend.test ESMTP\r\n');
    };
    if (headerDone) greet();
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => {
      if (!headerDone) {
        pre = Buffer.concat([pre, chunk]);
        const d = decodeProxyHeader(pre);
        if (d.kind === 'need-more') return;
        headerDone = true;
        if (d.kind === 'header') {
          conn.header = d.header;
          conn.headerBytes = Buffer.from(pre.subarray(0, d.header.length));
          chunk = pre.subarray(d.header.length);
        } else chunk = pre;
        greet();
      }
      conn.data = Buffer.concat([conn.data, chunk]);
      if (mode !== 'sink' && chunk.length > 0) socket.write(chunk);
    });
    socket.on('end', () => {
      conn.ended = true;
      socket.end();
    });
    socket.on('close', () => resolveClosed());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    connections,
    async waitForData(bytes, index = 0, timeoutMs = 5000) {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const c = connections[index];
        if (c && c.data.length >= bytes) return c;
        if (Date.now() > until) throw new Error(`backend connection ${index} did not receive ${bytes} bytes (got ${c?.data.length ?? 'no connection'})`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    async close() {
      for (const c of connections) c.socket.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}
