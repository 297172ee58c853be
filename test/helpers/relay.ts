// A TCP relay between a real TLS client and postern that changes how the client's bytes are cut,
// never what they are: TCP writes of one byte, and/or the ClientHello re-framed into many small
// TLS records (RFC 8446 section 5.1 allows a handshake message over any number of records).
// Server-to-client bytes pass unchanged.
import net from 'node:net';
import { unwrapRecords, wrapRecords } from './hello-builder.ts';

export interface RelayOptions {
  /** Re-frame the ClientHello into records of this many payload bytes. */
  recordSize?: number;
  /** Write everything from the client one byte per write, yielding to the event loop between. */
  byteWrites?: boolean;
}

export interface Relay {
  port: number;
  /** Records the relay wrote for the ClientHello (1 when not re-framed). */
  helloRecords: number;
  /** Writes the relay made towards postern. */
  writes: number;
  close(): Promise<void>;
}

/** Length of the complete ClientHello records at the start of `buf`, or -1 while incomplete. */
function helloRecordsLength(buf: Buffer): number {
  let pos = 0;
  let payload = 0;
  let msgEnd = -1;
  const head: number[] = [];
  while (pos + 5 <= buf.length) {
    const len = buf.readUInt16BE(pos + 3);
    if (pos + 5 + len > buf.length) return -1;
    for (let i = pos + 5; head.length < 4 && i < pos + 5 + len; i++) head.push(buf[i]!);
    if (head.length === 4) msgEnd = 4 + ((head[1]! << 16) | (head[2]! << 8) | head[3]!);
    payload += len;
    pos += 5 + len;
    if (msgEnd >= 0 && payload >= msgEnd) return pos;
  }
  return -1;
}

export async function startRelay(targetPort: number, opts: RelayOptions): Promise<Relay> {
  const sockets = new Set<net.Socket>();
  const relay: Relay = { port: 0, helloRecords: 0, writes: 0, close: async () => {} };
  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    const upstream = net.connect({ host: '127.0.0.1', port: targetPort, noDelay: true, allowHalfOpen: true });
    sockets.add(client);
    sockets.add(upstream);
    client.setNoDelay(true);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('close', () => sockets.delete(client));
    upstream.on('close', () => {
      sockets.delete(upstream);
      client.destroy();
    });
    upstream.pipe(client);

    // Client -> postern: a queue drained in order, one write per byte when asked to.
    const queue: Buffer[] = [];
    let pumping = false;
    let clientEnded = false;
    const pump = async () => {
      if (pumping) return;
      pumping = true;
      while (queue.length > 0) {
        const chunk = queue.shift()!;
        if (!opts.byteWrites) {
          relay.writes++;
          upstream.write(chunk);
          continue;
        }
        for (let i = 0; i < chunk.length; i++) {
          if (upstream.destroyed) return;
          relay.writes++;
          upstream.write(chunk.subarray(i, i + 1));
          await new Promise((r) => setImmediate(r));
        }
      }
      pumping = false;
      if (clientEnded && !upstream.destroyed) upstream.end();
    };
    let pending: Buffer | null = Buffer.alloc(0);
    client.on('data', (chunk: Buffer) => {
      if (pending !== null) {
        pending = Buffer.concat([pending, chunk]);
        const end = helloRecordsLength(pending);
        if (end < 0) return;
        const hello = pending.subarray(0, end);
        const rest = pending.subarray(end);
        pending = null;
        if (opts.recordSize) {
          const reframed = wrapRecords(unwrapRecords(hello), { recordSize: opts.recordSize, recordVersion: hello.readUInt16BE(1) });
          relay.helloRecords = Math.ceil(unwrapRecords(hello).length / opts.recordSize);
          queue.push(reframed);
        } else {
          relay.helloRecords = 1;
          queue.push(hello);
        }
        if (rest.length > 0) queue.push(rest);
      } else queue.push(chunk);
      void pump();
    });
    client.on('end', () => {
      clientEnded = true;
      void pump();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  relay.port = (server.address() as net.AddressInfo).port;
  relay.close = async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
  };
  return relay;
}
