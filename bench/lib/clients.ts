// The Node.js load clients that wrk does not cover: bulk transfer, idle sessions for the memory
// figure, session resumption, and the start-up sanity check (mail sessions: mail-sessions.ts). They run in the harness process,
// which is pinned to the load generator's core.
import net from 'node:net';
import tls from 'node:tls';

export interface Endpoint {
  host: string;
  port: number;
  /** null: plaintext (the `direct` ceiling). */
  sni: string | null;
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<T>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

/** Connects (TCP, or TLS 1.3 with the bench SNI) and resolves once the handshake is done. */
export function connect(ep: Endpoint, tlsOpts: tls.ConnectionOptions = {}): Promise<net.Socket | tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    if (ep.sni === null) {
      const s = net.connect(ep.port, ep.host);
      s.setNoDelay(true);
      s.once('connect', () => { s.removeListener('error', reject); resolve(s); });
      s.once('error', reject);
      return;
    }
    const s = tls.connect({
      host: ep.host, port: ep.port, servername: ep.sni, rejectUnauthorized: false,
      minVersion: 'TLSv1.3', ...tlsOpts,
    });
    s.setNoDelay(true);
    s.once('secureConnect', () => { s.removeListener('error', reject); resolve(s); });
    s.once('error', reject);
  });
}

const GET = Buffer.from('GET / HTTP/1.1\r\nHost: bench\r\n\r\n');

/** Reads until a whole small response ("...\r\n\r\nok") has arrived. */
function awaitOk(s: net.Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const onData = (d: Buffer): void => {
      got += d.toString('latin1');
      if (got.includes('\r\n\r\n') && got.endsWith('ok')) { cleanup(); resolve(got); }
    };
    const onEnd = (): void => { cleanup(); reject(new Error(`connection closed after ${JSON.stringify(got.slice(0, 80))}`)); };
    const onErr = (e: Error): void => { cleanup(); reject(e); };
    const cleanup = (): void => { s.off('data', onData); s.off('end', onEnd); s.off('error', onErr); };
    s.on('data', onData);
    s.once('end', onEnd);
    s.once('error', onErr);
  });
}

export interface SanityResult { protocol: string | null; cipher: string | null; tls12Refused: boolean | null }

/** One request through the target; for TLS also checks that a TLS 1.2-only client is refused. */
export async function sanityCheck(ep: Endpoint): Promise<SanityResult> {
  const s = await withTimeout(connect(ep), 5000, 'connect');
  let protocol: string | null = null, cipher: string | null = null;
  try {
    if (ep.sni !== null) {
      const t = s as tls.TLSSocket;
      protocol = t.getProtocol();
      cipher = t.getCipher()?.standardName ?? null;
    }
    s.write(GET);
    const resp = await withTimeout(awaitOk(s), 5000, 'GET /');
    if (!resp.startsWith('HTTP/1.1 200')) throw new Error(`unexpected answer ${JSON.stringify(resp.slice(0, 80))}`);
  } finally { s.destroy(); }
  if (ep.sni === null) return { protocol: null, cipher: null, tls12Refused: null };
  let tls12Refused = false;
  try {
    const old = await withTimeout(connect(ep, { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' }), 5000, 'TLS 1.2 connect');
    old.destroy();
  } catch { tls12Refused = true; }
  return { protocol, cipher, tls12Refused };
}

const CHUNK = Buffer.alloc(256 * 1024, 0x62);

export interface BulkResult { mbPerSec: number; seconds: number; bytes: number }

/**
 * Moves `bytes` through the target in one direction on one connection and returns the rate,
 * timed from the first byte sent (after the handshake) to the last byte acknowledged: for an
 * upload the backend's 200 after it has read the whole body, for a download the last body byte.
 */
export async function bulk(ep: Endpoint, direction: 'upload' | 'download', bytes: number, timeoutMs: number): Promise<BulkResult> {
  const s = await withTimeout(connect(ep), 10_000, 'connect');
  try {
    const t0 = performance.now();
    const done = new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.once('close', () => reject(new Error('connection closed early')));
      if (direction === 'upload') {
        let answer = '';
        s.on('data', (d: Buffer) => { answer += d.toString('latin1'); if (answer.endsWith('ok')) resolve(); });
        s.write(`POST /sink HTTP/1.1\r\nHost: bench\r\nContent-Length: ${bytes}\r\n\r\n`);
        let left = bytes;
        const pump = (): void => {
          while (left > 0) {
            const c = left >= CHUNK.length ? CHUNK : CHUNK.subarray(0, left);
            left -= c.length;
            if (!s.write(c)) { s.once('drain', pump); return; }
          }
        };
        pump();
      } else {
        let need = -1;
        let got = 0;
        let head = '';
        s.on('data', (d: Buffer) => {
          got += d.length;
          if (need < 0) {
            head += d.toString('latin1', 0, Math.min(d.length, 4096));
            const end = head.indexOf('\r\n\r\n');
            if (end >= 0) need = end + 4 + bytes;
          }
          if (need >= 0 && got >= need) resolve();
        });
        s.write(`GET /bytes/${bytes} HTTP/1.1\r\nHost: bench\r\n\r\n`);
      }
    });
    await withTimeout(done, timeoutMs, `${direction} of ${bytes} bytes`);
    const seconds = (performance.now() - t0) / 1000;
    return { mbPerSec: bytes / 1e6 / seconds, seconds, bytes };
  } finally {
    s.removeAllListeners('close');
    s.destroy();
  }
}

/**
 * Opens n sessions through the target (at most `parallel` handshakes at a time), each with one
 * request and its answer so that the backend connection exists too, and leaves them idle.
 */
export async function openIdleSessions(ep: Endpoint, n: number, parallel: number, timeoutMs: number, tlsOpts: tls.ConnectionOptions = {}): Promise<{ sockets: net.Socket[]; failed: number; lastError: string | null }> {
  const sockets: net.Socket[] = [];
  let failed = 0;
  let lastError: string | null = null;
  let next = 0;
  const deadline = Date.now() + timeoutMs;
  const worker = async (): Promise<void> => {
    while (next < n && Date.now() < deadline) {
      next++;
      try {
        const s = await withTimeout(connect(ep, tlsOpts), 10_000, 'connect');
        s.on('error', () => {});
        sockets.push(s);
        s.write(GET);
        await withTimeout(awaitOk(s), 10_000, 'GET /');
      } catch (err) {
        failed++;
        lastError = (err as Error).message;
      }
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return { sockets, failed, lastError };
}

/** The key exchange group a TLS session negotiated ("X25519", "X25519MLKEM768"), null for TCP. */
export function negotiatedGroup(s: net.Socket | undefined): string | null {
  return s instanceof tls.TLSSocket ? (s.getEphemeralKeyInfo() as { name?: string } | null)?.name ?? null : null;
}

export async function closeAll(sockets: net.Socket[]): Promise<void> {
  await Promise.all(sockets.map((s) => new Promise<void>((resolve) => {
    if (s.destroyed) { resolve(); return; }
    s.once('close', () => resolve());
    s.destroy();
  })));
}

/**
 * How a resuming client treats its tickets:
 * - `resume`: keeps the last session it was given (each 'session' event replaces it) and offers it
 *   again on every connection, also when the server sent no new one (OpenSSL's client cache, and
 *   so Postfix's, does this).
 * - `single-use`: offers a ticket once (RFC 8446 appendix C.4: clients SHOULD NOT reuse a
 *   ticket); without a new ticket from that connection the next one is a full handshake.
 * - `full`: never offers a session (full handshakes from the same client, the like-for-like base).
 */
export type ResumeMode = 'resume' | 'single-use' | 'full';

export interface ResumeResult {
  /** Connections that completed (handshake, request, answer). */
  connections: number;
  /** Handshakes where isSessionReused() was true. */
  resumed: number;
  /** Handshakes that offered a session the server did not take, or offered none. */
  full: number;
  /** Connections that offered a session (resumed + refused offers). */
  offered: number;
  /** 'session' events (NewSessionTicket messages) received on resumed connections. */
  ticketsOnResumed: number;
  /** ... and on full handshakes. */
  ticketsOnFull: number;
  errors: number;
  lastError: string | null;
  seconds: number;
}

const GET_CLOSE = Buffer.from('GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n');

/**
 * A pool of TLS clients that reconnect in a loop, one request per connection (as wrk does for the
 * full-handshake figure), each holding its own session. `warm()` gives every client a session
 * (one full handshake each) before the measured `run()`.
 */
export class ResumingClients {
  private readonly sessions: (Buffer | undefined)[];
  private readonly ep: Endpoint;
  private readonly tlsOpts: tls.ConnectionOptions;

  constructor(ep: Endpoint, clients: number, tlsOpts: tls.ConnectionOptions = {}) {
    if (ep.sni === null) throw new Error('ResumingClients needs a TLS endpoint');
    this.ep = ep;
    this.tlsOpts = tlsOpts;
    this.sessions = new Array<Buffer | undefined>(clients).fill(undefined);
  }

  /** One connection for client i; updates its session as the mode says. */
  private async once(i: number, mode: ResumeMode, r: ResumeResult): Promise<void> {
    const offer = mode === 'full' ? undefined : this.sessions[i];
    if (mode === 'single-use') this.sessions[i] = undefined;
    let tickets = 0;
    const s = tls.connect({
      host: this.ep.host, port: this.ep.port, servername: this.ep.sni!, rejectUnauthorized: false,
      minVersion: 'TLSv1.3', ...this.tlsOpts, ...(offer ? { session: offer } : {}),
    });
    s.setNoDelay(true);
    s.on('session', (sess: Buffer) => {
      tickets++;
      if (mode !== 'full') this.sessions[i] = sess;
    });
    try {
      await new Promise<void>((resolve, reject) => {
        s.once('secureConnect', () => { s.removeListener('error', reject); resolve(); });
        s.once('error', reject);
      });
      s.on('error', () => {});
      s.write(GET_CLOSE);
      await awaitOk(s);
      if (offer) r.offered++;
      if (s.isSessionReused()) { r.resumed++; r.ticketsOnResumed += tickets; }
      else { r.full++; r.ticketsOnFull += tickets; }
      r.connections++;
    } finally {
      s.destroy();
    }
  }

  /** Gives every client a session (a full handshake each); returns how many have one. */
  async warm(timeoutMs: number): Promise<number> {
    const r = emptyResume();
    await Promise.all(this.sessions.map(async (_, i) => {
      try { await withTimeout(this.once(i, 'resume', r), timeoutMs, 'warm-up connection'); } catch { /* counted below */ }
    }));
    return this.sessions.filter((x) => x !== undefined).length;
  }

  /** Every client reconnects in a loop for `durationMs`. */
  async run(mode: ResumeMode, durationMs: number): Promise<ResumeResult> {
    const r = emptyResume();
    const t0 = performance.now();
    const end = t0 + durationMs;
    await Promise.all(this.sessions.map(async (_, i) => {
      while (performance.now() < end) {
        try {
          await withTimeout(this.once(i, mode, r), 10_000, 'connection');
        } catch (err) {
          r.errors++;
          r.lastError = (err as Error).message;
          await new Promise((res) => setTimeout(res, 10));
        }
      }
    }));
    r.seconds = (performance.now() - t0) / 1000;
    return r;
  }

  /** `n` connections in a row on client 0 (a short probe, not a load). */
  async sequence(mode: ResumeMode, n: number): Promise<ResumeResult> {
    const r = emptyResume();
    const t0 = performance.now();
    for (let k = 0; k < n; k++) {
      try { await withTimeout(this.once(0, mode, r), 10_000, 'connection'); } catch (err) { r.errors++; r.lastError = (err as Error).message; }
    }
    r.seconds = (performance.now() - t0) / 1000;
    return r;
  }
}

function emptyResume(): ResumeResult {
  return { connections: 0, resumed: 0, full: 0, offered: 0, ticketsOnResumed: 0, ticketsOnFull: 0, errors: 0, lastError: null, seconds: 0 };
}
