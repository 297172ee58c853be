// TLS session ticket keys (RFC 8446 section 4.6.1, RFC 5077): derived, not stored. Every key is
// HKDF(secret, scope, period): the same secret gives the same keys in every worker, after every
// reload and, with a shared key file, on every host behind a load balancer, so a client resumes
// wherever its next connection lands. The period number rotates the keys on a schedule
// (`sessionTickets.rotate`); a ticket made with the previous or the next period's key (a client
// that resumes just after a rotation, a host whose clock is a little ahead) is still accepted.
//
// The scope keeps resumption inside one policy: a ticket is made for one listener policy and one
// set of names, so a session that one listener's policy admitted can never be resumed on a
// listener whose policy differs (or for names another certificate serves).
//
// Node offers one ticket key per SecureContext and no key callback, so postern selects the key
// itself: the peek has the ClientHello, and a stateless OpenSSL ticket begins with its key's
// 16-byte name (the PSK identity in TLS 1.3, the SessionTicket extension in TLS 1.2). The context
// whose key has that name is chosen; any other hello gets the current key.
import { hkdfSync, randomBytes } from 'node:crypto';

/** OpenSSL's ticket key: name (16) + HMAC secret (16) + AES key (16). */
export const TICKET_KEY_BYTES = 48;
export const TICKET_NAME_BYTES = 16;
/** The secret must carry at least 256 bits. */
export const MIN_SECRET_BYTES = 32;

export interface TicketKey {
  /** The 48 bytes for tls.createSecureContext({ ticketKeys }). */
  key: Buffer;
  /** Which period it belongs to (for the context cache). */
  period: number;
  /**
   * The ticket lifetime to announce (RFC 8446 section 4.6.1): one rotation period, at most 7
   * days. A ticket's key is accepted for at least that long (its own period and the next).
   */
  lifetimeS: number;
}

export class TicketKeys {
  private readonly secret: Buffer;
  readonly rotateMs: number;
  private readonly now: () => number;
  /** `${scope}\0${period}` -> key; only the periods around now are kept. */
  private readonly keys = new Map<string, Buffer>();
  private keptPeriod = -1;

  constructor(secret: Buffer, rotateMs: number, now: () => number = Date.now) {
    if (secret.length < MIN_SECRET_BYTES) throw new Error(`a session ticket secret needs at least ${MIN_SECRET_BYTES} bytes, got ${secret.length}`);
    this.secret = Buffer.from(secret);
    this.rotateMs = rotateMs;
    this.now = now;
  }

  /** A fresh random secret: resumption works in this process (and its workers) until it stops. */
  static random(rotateMs: number): TicketKeys {
    return new TicketKeys(randomBytes(MIN_SECRET_BYTES), rotateMs);
  }

  get lifetimeS(): number {
    return Math.min(7 * 86_400, Math.max(1, Math.floor(this.rotateMs / 1000)));
  }

  period(at = this.now()): number {
    return Math.floor(at / this.rotateMs);
  }

  key(scope: string, period: number): Buffer {
    const id = `${scope}\0${period}`;
    let k = this.keys.get(id);
    if (!k) {
      k = Buffer.from(hkdfSync('sha256', this.secret, 'postern session tickets v1', id, TICKET_KEY_BYTES));
      this.keys.set(id, k);
    }
    return k;
  }

  /**
   * The key for a handshake in `scope`: the one whose name the client's ticket carries, if it is
   * this scope's key of the previous, current or next period; else the current one.
   */
  select(scope: string, ticketName: Buffer | null): TicketKey {
    const now = this.period();
    if (now !== this.keptPeriod) this.prune(now);
    if (ticketName) {
      for (const p of [now, now - 1, now + 1]) {
        const k = this.key(scope, p);
        if (k.subarray(0, TICKET_NAME_BYTES).equals(ticketName)) return { key: k, period: p, lifetimeS: this.lifetimeS };
      }
    }
    return { key: this.key(scope, now), period: now, lifetimeS: this.lifetimeS };
  }

  /** Forgets keys older than the previous period. */
  private prune(now: number) {
    this.keptPeriod = now;
    for (const id of this.keys.keys()) {
      const p = Number(id.slice(id.lastIndexOf('\0') + 1));
      if (p < now - 1) this.keys.delete(id);
    }
  }
}

/**
 * A key file's secret: base64 text (`openssl rand -base64 48 > file`) or raw bytes
 * (`openssl rand 48 > file`), at least 32 bytes either way.
 */
export function parseTicketSecret(data: Buffer): { ok: true; secret: Buffer } | { ok: false; message: string } {
  const text = data.toString('latin1').trim();
  let secret = data;
  if (/^[A-Za-z0-9+/=_\s-]+$/.test(text)) secret = Buffer.from(text.replace(/\s+/g, ''), text.includes('-') || text.includes('_') ? 'base64url' : 'base64');
  if (secret.length < MIN_SECRET_BYTES) {
    return { ok: false, message: `holds ${secret.length} bytes of key material; at least ${MIN_SECRET_BYTES} are needed (make one with: openssl rand -base64 48 > FILE)` };
  }
  return { ok: true, secret };
}
