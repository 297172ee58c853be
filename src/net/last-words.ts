// How postern closes a client it has decided to close (not a reset): its last words, if any, then
// an orderly end. On a TLS socket end() sends the close_notify alert before the FIN (RFC 8446
// section 6.1: a party MUST send close_notify before closing its write side; without it the
// client cannot tell the close from a truncation, and OpenSSL reports "unexpected eof while
// reading"). The client then has at most LAST_WORDS_MS to read them and close its side.
import type { Socket } from 'node:net';

/** After the last words, how long a client that does not read them (or does not close) may keep the socket. */
export const LAST_WORDS_MS = 2000;

/**
 * What postern reads (and drops) from the client while it waits for the client's close: enough
 * to see a normal client's close_notify and FIN at once, too little for a client that keeps
 * writing to keep postern busy for LAST_WORDS_MS (the soak's rush attackers pushed 64 MB in).
 */
const LAST_WORDS_READ_LIMIT = 64 * 1024;

/**
 * Says `words` (if any) and ends `client`'s side; destroys it when the peer has closed its own side
 * too, or after LAST_WORDS_MS. `closed` runs once the socket is closed (e.g. to close the TCP socket
 * beneath a TLS socket: destroying it first would drop the close_notify).
 */
export function endGracefully(client: Socket, words: Buffer | string | null, closed?: () => void): void {
  if (client.destroyed) {
    closed?.();
    return;
  }
  const timer = setTimeout(() => client.destroy(), LAST_WORDS_MS);
  timer.unref();
  client.once('close', () => {
    clearTimeout(timer);
    closed?.();
  });
  // allowHalfOpen: the peer's FIN (after its own close_notify) does not close the socket by itself.
  const onEnd = () => (client.writableFinished ? client.destroy() : client.once('finish', () => client.destroy()));
  if (client.readableEnded) onEnd();
  else {
    client.once('end', onEnd);
    let dropped = 0;
    client.on('data', (chunk: Buffer) => {
      dropped += chunk.length;
      if (dropped > LAST_WORDS_READ_LIMIT) client.destroy();
    });
  }
  if (client.writable) {
    if (words) client.end(words);
    else client.end();
  }
}
