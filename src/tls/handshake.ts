// The TLS handshake stage: wraps the client's socket (the peeked ClientHello is still in it) in a
// server TLSSocket with the SecureContext the policy chose, and resolves when the handshake is done
// or the socket closes. The caller owns the deadline (it destroys the socket when it passes).
import type { Socket } from 'node:net';
import tls, { type SecureContext } from 'node:tls';
import { CloseReason } from '../errors.ts';

export interface HandshakeOptions {
  context: SecureContext;
  /** The ALPN protocol the policy selected, or null (none offered, or no ALPN handling). */
  alpn: string | null;
}

export type HandshakeResult =
  | { ok: true; version: string | null; cipher: string | null; opensslCipher: string | null; resumed: boolean }
  | { ok: false; reason: CloseReason; detail: string | null };

export function startHandshake(socket: Socket, opts: HandshakeOptions): { socket: tls.TLSSocket; done: Promise<HandshakeResult> } {
  const tlsSocket = new tls.TLSSocket(socket, {
    isServer: true,
    secureContext: opts.context,
    ALPNProtocols: opts.alpn ? [opts.alpn] : undefined,
  });
  let detail: string | null = null;
  let refused = false;
  const onError = (err: NodeJS.ErrnoException) => {
    const code = err.code ?? err.message;
    detail ??= code;
    if (code.startsWith('ERR_SSL')) refused = true;
  };
  // With allowHalfOpen a FIN alone would leave the socket waiting for the deadline; before the
  // handshake is done there is nothing a half-closed client can still receive.
  const onEnd = () => tlsSocket.destroy();
  tlsSocket.on('error', onError);
  tlsSocket.once('end', onEnd);
  const done = new Promise<HandshakeResult>((resolve) => {
    const onClose = () => resolve({ ok: false, reason: refused ? CloseReason.handshakeFailed : CloseReason.clientGone, detail });
    tlsSocket.once('close', onClose);
    tlsSocket.once('secure', () => {
      tlsSocket.off('error', onError);
      tlsSocket.off('end', onEnd);
      tlsSocket.off('close', onClose);
      const cipher = tlsSocket.getCipher();
      resolve({ ok: true, version: tlsSocket.getProtocol(), cipher: cipher?.standardName ?? cipher?.name ?? null, opensslCipher: cipher?.name ?? null, resumed: tlsSocket.isSessionReused() });
    });
  });
  return { socket: tlsSocket, done };
}
