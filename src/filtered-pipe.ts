// The two directions of a STARTTLS (or plaintext handoff) session with its filter in between:
// the flow control of two pipes, plus what a filter needs. Every buffer here has a cap and every
// wait a deadline (the splice runs it):
//   - client bytes the filter has not read yet (`held`: it waits for the backend's greeting, a 354
//     or a "+", or it has answered enough for the client to read first) are capped at HOLD_LIMIT;
//     above it the client is not read (threats.md: "a client that writes without pause while
//     postern waits for the backend");
//   - postern's own answers count as writes to the client: while the client does not take them
//     (its write() returned false), the client is not read either;
//   - a side whose peer's write() returned false is paused until the peer drains.
// Once the filter has nothing more to rewrite (passthrough), the rest is two plain pipes.
import type { Socket } from 'node:net';
import type { RefusalReason } from './errors.ts';
import { MAX_REFUSALS, type SessionFilter } from './starttls/types.ts';

/** Client bytes held while the filter cannot read them; the client is paused above this. */
export const HOLD_LIMIT = 64 * 1024;

const EMPTY = Buffer.alloc(0);

export interface FilteredPipe {
  /**
   * Stops the pump: nothing more is forwarded and held bytes are dropped. The client is read and
   * what it sends dropped, up to DRAIN_LIMIT: enough to see a normal client's FIN at once, too
   * little to spend postern's CPU on a client that keeps sending.
   */
  detach(): void;
}

/** Bytes read and dropped from a client after the pump stopped, before postern stops reading it. */
const DRAIN_LIMIT = 64 * 1024;

export interface PumpOptions {
  /** Commands to send the backend once its greeting is complete (plaintext handoff). */
  replay: string;
  /** Called when the filter starts (true) or stops (false) waiting for the backend. */
  waiting(on: boolean): void;
  /**
   * The backend ended its side (FIN); the splice passes it on and closes the session. A mail server
   * that closes is done with it (after 221, BYE, +OK to QUIT, or a 421): nothing the client still
   * sends can be delivered. `waiting`:
   * the filter was still waiting for its reply (greeting, 354, "+").
   */
  backendGone(waiting: boolean): void;
  /** The filter refused commands of the client itself (its answers are on their way): log and count them. */
  refused(reasons: readonly RefusalReason[]): void;
  /**
   * MAX_REFUSALS reached: the client is no longer read and the backend has its FIN; what the
   * backend still answers goes on to the client, then backendGone() follows, or the wait for the
   * backend (waiting(true)) passes its deadline.
   */
  tooManyRefusals(): void;
  /** Wraps every event handler: an exception in one ends the session, never the process. */
  guard<A extends unknown[]>(fn: (...args: A) => void): (...args: A) => void;
}

export function pumpFiltered(client: Socket, backend: Socket, filter: SessionFilter, opts: PumpOptions): FilteredPipe {
  const { guard } = opts;
  let held: Buffer[] = [];
  let heldBytes = 0;
  // Commands replayed for a plaintext handoff (the client's EHLO) go out once the greeting is
  // complete: a multi-line "220-" greeting may be postscreen waiting to catch early talkers.
  let pendingReplay = opts.replay;
  let clientEnded = client.readableEnded;
  let backendEndSent = false;
  let waiting = false;
  let detached = false;
  let refusals = 0; // commands the filter refused; at MAX_REFUSALS the client is not read any more

  const blocked = () => backend.writableNeedDrain || client.writableNeedDrain;
  const endBackend = () => {
    if (backendEndSent) return;
    backendEndSent = true;
    backend.end();
  };
  const setWaiting = (on: boolean) => {
    if (on === waiting) return;
    waiting = on;
    opts.waiting(on);
  };

  /** Offers held client bytes to the filter while it can read them, then decides whether to read more. */
  const feed = () => {
    if (refusals >= MAX_REFUSALS) return;
    while (held.length > 0 && filter.ready() && !blocked()) {
      const chunk = held.shift()!;
      heldBytes -= chunk.length;
      const r = filter.fromClient(chunk);
      if (r.refused) {
        opts.refused(r.refused);
        refusals += r.refused.length;
      }
      if (r.toClient) client.write(r.toClient);
      if (r.toBackend) backend.write(r.toBackend);
      if (refusals >= MAX_REFUSALS) return stopClient();
      if (r.rest && r.rest.length > 0) {
        held.unshift(r.rest);
        heldBytes += r.rest.length;
      }
      if (filter.passthrough()) return goRaw();
    }
    if (clientEnded && held.length === 0) endBackend();
    if (heldBytes < HOLD_LIMIT && !blocked()) client.resume();
    else client.pause();
    setWaiting(!filter.ready());
  };

  const onClientData = guard((chunk: Buffer) => {
    held.push(chunk);
    heldBytes += chunk.length;
    feed();
  });
  const onBackendData = guard((chunk: Buffer) => {
    const out = filter.fromBackend(chunk);
    if (out && out.length > 0) client.write(out);
    if (pendingReplay && filter.greeted()) {
      backend.write(pendingReplay);
      pendingReplay = '';
    }
    // After too many refusals the client is not read again, even when a reply pipelined before
    // them (an IMAP LOGIN's OK) leaves nothing to rewrite: the backend's bytes keep this path.
    if (filter.passthrough() && refusals < MAX_REFUSALS) return goRaw();
    if (client.writableNeedDrain) backend.pause();
    feed();
  });
  const onClientDrain = guard(() => {
    backend.resume();
    feed();
  });
  const onBackendDrain = guard(() => feed());
  const onClientEnd = guard(() => {
    clientEnded = true;
    feed();
  });
  const onBackendEnd = guard(() => opts.backendGone(!filter.ready()));

  const listen = (on: boolean) => {
    const m = on ? 'on' : 'off';
    client[m]('data', onClientData);
    backend[m]('data', onBackendData);
    client[m]('drain', onClientDrain);
    backend[m]('drain', onBackendDrain);
    client[m]('end', onClientEnd);
    backend[m]('end', onBackendEnd);
  };

  /**
   * Too many refusals. The rest of what the client sent is not read (the socket stays paused; the
   * splice's close drains it, capped), the backend gets a FIN after what it was sent, and its
   * replies still pass the filter in order (RFC 2920: a client that pipelined gets every reply),
   * then its close ends the session. Waiting for that close is a wait for the backend, with its
   * deadline from now.
   */
  const stopClient = () => {
    client.off('data', onClientData);
    client.off('end', onClientEnd);
    client.pause();
    held = [];
    heldBytes = 0;
    endBackend();
    opts.tooManyRefusals();
    setWaiting(false);
    setWaiting(true);
  };

  /** Nothing left to rewrite: what the filter and postern still hold goes first, then two pipes. */
  const goRaw = () => {
    listen(false);
    setWaiting(false);
    // A filter switches to passthrough only in raw mode, where it answers nothing itself.
    const fromClient = filter.fromClient(EMPTY).toBackend;
    if (fromClient && fromClient.length > 0) backend.write(fromClient);
    for (const c of held) backend.write(c);
    held = [];
    heldBytes = 0;
    const fromBackend = filter.fromBackend(EMPTY);
    if (fromBackend && fromBackend.length > 0) client.write(fromBackend);
    if (clientEnded) endBackend();
    else client.pipe(backend);
    backend.pipe(client);
  };

  listen(true);
  feed();
  return {
    detach() {
      if (detached) return;
      detached = true;
      listen(false);
      client.unpipe(backend);
      backend.unpipe(client);
      held = [];
      heldBytes = 0;
      let dropped = 0;
      client.on('data', (c: Buffer) => {
        dropped += c.length;
        if (dropped > DRAIN_LIMIT) client.pause();
      });
      client.resume();
    },
  };
}
