// Loopback ports for the private daemons.
import { readFileSync } from 'node:fs';
import { sleep } from './system.ts';

// Ports below the ephemeral range, so no outgoing connection takes one before a daemon binds it.
export { freePort, freePorts } from '../../helpers/ports.ts';

/**
 * True when something listens on 127.0.0.1:port. Read from /proc/net/tcp rather than by
 * connecting: a probe connection would reach a PROXY-protocol listener without a header and
 * leave a misleading line in the daemon's log.
 */
export function isListening(port: number): boolean {
  const wanted = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields[1] === wanted && fields[3] === '0A') return true; // 0A = LISTEN
  }
  return false;
}

/** Waits until every port listens; `alive` lets the caller fail fast when the daemon died. */
export async function waitForListening(ports: number[], timeoutMs: number, alive: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const missing = ports.filter((p) => !isListening(p));
    if (missing.length === 0) return;
    if (!alive()) throw new Error(`daemon exited before listening on ${missing.join(', ')}`);
    if (Date.now() > deadline) throw new Error(`nothing listening on 127.0.0.1:${missing.join(', ')} after ${timeoutMs} ms`);
    await sleep(50);
  }
}
