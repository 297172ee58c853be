// When to renew, when to try again, when to shout: pure functions of the certificate's dates,
// the CA's renewal information and the failure count. The manager owns the timers.

export interface Validity {
  notBefore: Date;
  notAfter: Date;
}

/** RFC 9773 section 4.2: the CA's suggested renewal window. */
export interface RenewalWindow {
  start: Date;
  end: Date;
}

/** How long before expiry a failing renewal becomes an error rather than a warning. */
export const EXPIRY_ALARM_MS = 7 * 86_400_000;

/**
 * The moment to renew. With the CA's renewal information (ARI), a uniformly random moment in its
 * window (RFC 9773 section 4.2: spreads the CA's load; a window already past means now).
 * Without it, at two thirds of the lifetime, less a random share of up to 1/30 of the lifetime
 * (for 90-day certificates: day 57 to 60, a month before expiry), so that many postern hosts
 * started together do not all renew in the same second. `random` is in [0, 1).
 */
export function renewalTime(v: Validity, window: RenewalWindow | null, random: number): Date {
  if (window && window.end.getTime() > window.start.getTime()) {
    const span = window.end.getTime() - window.start.getTime();
    return new Date(window.start.getTime() + Math.floor(random * span));
  }
  const lifetime = v.notAfter.getTime() - v.notBefore.getTime();
  const at = v.notBefore.getTime() + (lifetime * 2) / 3 - (lifetime / 30) * random;
  return new Date(Math.floor(at));
}

/**
 * The wait after the n-th failure in a row (n >= 1): min, doubling, capped at max, with up to
 * 10% added at random. Never shorter than min: a CA that fails is never asked in a tight loop.
 */
export function retryDelay(failures: number, minMs: number, maxMs: number, random: number): number {
  const base = Math.min(maxMs, minMs * 2 ** Math.min(30, Math.max(0, failures - 1)));
  return Math.floor(base + base * 0.1 * random);
}

/** Days (rounded down) until `notAfter`; negative once expired. */
export function daysLeft(notAfter: Date, now: Date): number {
  return Math.floor((notAfter.getTime() - now.getTime()) / 86_400_000);
}

/** Inside the last 7 days: a failing renewal is loud (log error, not warn). */
export function expiryAlarm(notAfter: Date, now: Date): boolean {
  return notAfter.getTime() - now.getTime() < EXPIRY_ALARM_MS;
}
