// Reads the PROXY header an L4 load balancer (HAProxy, AWS NLB) puts in front of a connection
// (haproxy proxy-protocol.txt). Only asked of connections from acceptProxyProtocol networks;
// the caller's deadline bounds the wait. Bytes after the header go back into the socket. The
// header's addresses come normalised from the decoder (IPv4-mapped IPv6 as IPv4).
import type { Socket } from 'node:net';
import { decodeProxyHeader, type DecodedProxy } from '../backend/proxy-decode.ts';

/** v1 is at most 107 bytes (section 2.1); v2 TLVs from load balancers are small. */
const MAX_HEADER = 16 + 4096;

export type InboundProxy = { kind: 'header'; header: DecodedProxy } | { kind: 'invalid'; reason: string } | { kind: 'closed' };

export function readInboundProxy(socket: Socket): Promise<InboundProxy> {
  return new Promise((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    const detach = () => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onClose);
      socket.pause();
    };
    const finish = (r: InboundProxy, rest: Buffer | null) => {
      detach();
      if (rest && rest.length > 0) socket.unshift(rest);
      resolve(r);
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
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      const d = decodeProxyHeader(buf);
      if (d.kind === 'need-more') {
        if (buf.length > MAX_HEADER) finish({ kind: 'invalid', reason: 'header too long' }, null);
        return;
      }
      if (d.kind === 'invalid') return finish({ kind: 'invalid', reason: d.reason }, null);
      if (d.header.length > MAX_HEADER) return finish({ kind: 'invalid', reason: 'header too long' }, null);
      finish({ kind: 'header', header: d.header }, buf.subarray(d.header.length));
    };
    // The listener's sockets allow half-open connections, so a FIN alone is 'end' without
    // 'close': without this a header cut short by FIN would wait for the deadline.
    const onEnd = () => finish(buf.length === 0 ? { kind: 'closed' } : { kind: 'invalid', reason: 'connection ended inside the PROXY header' }, null);
    const onClose = () => finish({ kind: 'closed' }, null);
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('close', onClose);
    socket.resume();
  });
}
