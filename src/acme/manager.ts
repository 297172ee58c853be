// Obtains and renews the certificates of `acme.names`, one order at a time, in the one process
// that talks to the CA (the only process, or the supervisor with workers). The names come from
// the configuration, never from a connection.
//
// Per certificate (name x key type): at start, what the storage holds decides (a valid
// certificate is reused until its renewal time, nothing is ordered); then renew at two thirds of
// the lifetime, or in the CA's ARI window. A failed order keeps the current certificate in
// service and tries again after a backoff (acme.retry), never in a loop; it is logged with a
// reason code and counted, and becomes an error inside the last 7 days. A new certificate is
// written to the storage, then the processes that serve are told to reload: the existing
// build-then-swap reload, which drops no connection.
import type { AcmeConfig, AcmeKeyType } from '../config/types.ts';
import type { Logger } from '../log.ts';
import type { AcmeMetrics } from '../metrics.ts';
import { AcmeAccount, type Responder } from './client.ts';
import { daysLeft, expiryAlarm, renewalTime, retryDelay, type RenewalWindow } from './schedule.ts';
import { ensureDir, liveDir, readIssued, writePair, writeState, LIVE, type CertState, type Issued } from './storage.ts';
import { join } from 'node:path';
import { readFileSync, rmSync, statSync } from 'node:fs';
import { newKey } from './client.ts';
import { spkiSha256OfKey } from '../mta-sts/tlsa.ts';
import { writeAtomic } from './storage.ts';

/** A DANE rollover's next key, beside privkey.pem until it goes into service. */
export const NEXT_KEY = 'next-privkey.pem';

/** The next key of a live folder and when it was made, or null. */
export function nextKeyAge(dir: string): { keyPem: string; created: number } | null {
  try {
    const file = join(dir, NEXT_KEY);
    return { keyPem: readFileSync(file, 'utf8'), created: statSync(file).mtimeMs };
  } catch {
    return null;
  }
}

/** How early (by the wall clock) a rollover's switch may come: timers fire by the loop's cached clock. */
const SWITCH_SLACK_MS = 1000;

/** setTimeout's ceiling, and how often plans are looked at again anyway (clock changes, ARI). */
const MAX_SLEEP_MS = 6 * 3_600_000;

/**
 * Orders per rolling 3 hours, whatever happens: a sixth of Let's Encrypt's 300 new orders per
 * account per 3 hours, so that a configuration with many names, or a storage that keeps getting
 * wiped, can never exhaust the account. Past it, orders wait for the window to move.
 */
export const ORDER_BUDGET = { orders: 50, windowMs: 3 * 3_600_000 } as const;

interface Item {
  name: string;
  keyType: AcmeKeyType;
  dir: string;
  issued: Issued | null;
  window: RenewalWindow | null;
  windowCheckedAt: number;
  next: number;
  failures: number;
  lastAttempt: number | null;
  lastSuccess: number | null;
  lastError: string | null;
  /** Set by renew(): order now whatever the plan says. */
  forced: boolean;
  /** DANE: the key is kept across renewals (a rollover changes it). */
  keepKey: boolean;
}

export interface ManagerOptions {
  config: AcmeConfig;
  log: Logger;
  metrics: AcmeMetrics;
  responder: Responder;
  /** Makes every serving process load the storage again; resolves when they have. */
  /**
   * Makes every serving process load the storage again. `planned`: SPKI SHA-256 values of keys
   * a DANE rollover announced (its TLSA record printed rolloverDelay ago): their coming into
   * service is the plan, not an alarm.
   */
  reload(planned?: string[]): Promise<void>;
  /** Injected for tests. */
  now?: () => number;
  random?: () => number;
  openAccount?: (config: AcmeConfig, log: Logger) => Promise<Pick<AcmeAccount, 'order' | 'renewalWindow'>>;
}

export interface CertStatus {
  name: string;
  keyType: AcmeKeyType;
  folder: string;
  notAfter: string | null;
  daysLeft: number | null;
  nextAttempt: string | null;
  lastAttempt: string | null;
  lastSuccess: string | null;
  lastError: string | null;
  failures: number;
  renewalWindow: { start: string; end: string } | null;
}

export class AcmeManager {
  private readonly opts: Required<Omit<ManagerOptions, 'openAccount'>> & Pick<ManagerOptions, 'openAccount'>;
  private readonly items: Item[];
  private account: Promise<Pick<AcmeAccount, 'order' | 'renewalWindow'>> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  private stopped = false;
  /** A CA that does not answer at all pauses every order, not only the one that failed. */
  private pausedUntil = 0;
  private idleWaiters: Array<() => void> = [];
  /** Start times of the orders in the budget window (ORDER_BUDGET). */
  private readonly recentOrders: number[] = [];

  constructor(opts: ManagerOptions) {
    this.opts = { now: Date.now, random: Math.random, ...opts };
    const { config } = opts;
    this.items = config.names.flatMap((name) =>
      config.keyTypes.map((keyType) => ({
        name,
        keyType,
        dir: liveDir(config.storage, name, keyType),
        issued: null,
        window: null,
        windowCheckedAt: 0,
        next: 0,
        failures: 0,
        lastAttempt: null,
        lastSuccess: null,
        lastError: null,
        forced: false,
        keepKey: config.keepKey.includes(name),
      })),
    );
  }

  /** Reads the storage, plans every certificate, and starts working through what is due. */
  start() {
    const { config, log } = this.opts;
    ensureDir(join(config.storage, LIVE));
    const now = this.opts.now();
    for (const item of this.items) {
      item.issued = this.usable(item, readIssued(item.dir));
      item.next = item.issued ? this.plannedRenewal(item) : now;
      const left = item.issued ? daysLeft(item.issued.notAfter, new Date(now)) : null;
      log.info(
        { name: item.name, keyType: item.keyType, notAfter: item.issued?.notAfter.toISOString() ?? null, daysLeft: left, nextAttempt: new Date(item.next).toISOString() },
        item.issued ? 'acme: certificate in storage' : 'acme: no certificate yet; ordering',
      );
      this.gauge(item);
    }
    this.saveState();
    this.wake();
  }

  stop() {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** `postern acme renew --name N`: order now, whatever the plan says. False for a name not managed. */
  renew(name: string): boolean {
    const mine = this.items.filter((i) => i.name === name);
    for (const i of mine) i.forced = true;
    if (mine.length > 0) this.wake();
    return mine.length > 0;
  }

  /** Resolves when nothing is due now (tests, and the CLI's renew waiting for its order). */
  idle(): Promise<void> {
    if (!this.running && !this.items.some((i) => this.due(i))) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  status(): CertStatus[] {
    const now = new Date(this.opts.now());
    const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());
    return this.items.map((i) => ({
      name: i.name,
      keyType: i.keyType,
      folder: i.dir,
      notAfter: i.issued?.notAfter.toISOString() ?? null,
      daysLeft: i.issued ? daysLeft(i.issued.notAfter, now) : null,
      nextAttempt: iso(Math.max(i.next, this.pausedUntil)),
      lastAttempt: iso(i.lastAttempt),
      lastSuccess: iso(i.lastSuccess),
      lastError: i.lastError,
      failures: i.failures,
      renewalWindow: i.window ? { start: i.window.start.toISOString(), end: i.window.end.toISOString() } : null,
    }));
  }

  /** A stored certificate counts only if it is for this name and not expired. */
  private usable(item: Item, issued: Issued | null): Issued | null {
    if (!issued) return null;
    if (!issued.names.includes(item.name)) {
      this.opts.log.warn({ name: item.name, folder: item.dir, names: issued.names }, 'acme: the stored certificate is for other names; ordering a new one');
      return null;
    }
    return issued.notAfter.getTime() > this.opts.now() ? issued : null;
  }

  private plannedRenewal(item: Item): number {
    const renew = renewalTime(item.issued!, item.window, this.opts.random()).getTime();
    // A rollover's switch is a renewal with the next key, once its TLSA record had time to spread.
    const next = nextKeyAge(item.dir);
    return next === null ? renew : Math.min(renew, next.created + this.opts.config.rolloverDelayMs);
  }

  /**
   * `postern acme rollover --name N` (DANE): a new key per key type of N, written beside the
   * current one as next-privkey.pem. Its TLSA record is returned (and printed by `postern
   * records`) now; the key goes into service with a renewal acme.rolloverDelay later. Until
   * then every renewal keeps the current key. A rollover already pending is shown again, not
   * replaced (its TLSA record may be published already). Null for a name whose key is not kept
   * (no dane: true MX listener has it: its key changes at every renewal anyway).
   */
  rollover(name: string): Array<{ keyType: AcmeKeyType; tlsa: string; switchAt: string; pending: boolean }> | null {
    const mine = this.items.filter((i) => i.name === name && i.keepKey);
    if (mine.length === 0) return null;
    const now = this.opts.now();
    const out = mine.map((item) => {
      const pending = nextKeyAge(item.dir);
      if (pending) {
        const tlsa = `_25._tcp.${item.name}. IN TLSA 3 1 1 ${spkiSha256OfKey(pending.keyPem)}`;
        return { keyType: item.keyType, tlsa, switchAt: new Date(pending.created + this.opts.config.rolloverDelayMs).toISOString(), pending: true };
      }
      const keyPem = newKey(item.keyType);
      writeAtomic(join(item.dir, NEXT_KEY), keyPem, 0o600);
      // Counted from the file's time, as keyFor() counts it: a key made (RSA: tens of ms to
      // seconds) and written after `now` was not due yet when a timer set from `now` fired, and
      // the switch cost an order with the old key first.
      const due = Math.max(now, nextKeyAge(item.dir)?.created ?? now) + this.opts.config.rolloverDelayMs;
      item.next = Math.min(item.next, due);
      const tlsa = `_25._tcp.${item.name}. IN TLSA 3 1 1 ${spkiSha256OfKey(keyPem)}`;
      const switchAt = new Date(due).toISOString();
      this.opts.log.warn({ reason: 'dane_rollover_planned', name: item.name, keyType: item.keyType, tlsa, switchAt }, `acme: next key made for ${item.name}: publish its TLSA record now, beside the current one; it goes into service at ${switchAt}`);
      this.gauge(item);
      return { keyType: item.keyType, tlsa, switchAt, pending: false };
    });
    this.saveState();
    this.wake();
    return out;
  }

  /**
   * The key for an order: a rollover's next key once its delay has passed; the current key when
   * it is kept (DANE); otherwise null (a new one).
   */
  private keyFor(item: Item): { keyPem: string | null; rolledOver: boolean } {
    const next = nextKeyAge(item.dir);
    // SWITCH_SLACK_MS: the timer planned for that moment may fire a little before it by the wall clock.
    if (next && this.opts.now() + SWITCH_SLACK_MS >= next.created + this.opts.config.rolloverDelayMs) return { keyPem: next.keyPem, rolledOver: true };
    if (item.keepKey && item.issued) {
      try {
        return { keyPem: readFileSync(join(item.dir, 'privkey.pem'), 'utf8'), rolledOver: false };
      } catch {
        // No key to keep: a new one (logged by the caller as a key change).
      }
    }
    return { keyPem: null, rolledOver: false };
  }

  private due(i: Item): boolean {
    const now = this.opts.now();
    if (now < this.budgetFreeAt()) return false;
    return i.forced || (now >= i.next && now >= this.pausedUntil);
  }

  /** When the next order fits in ORDER_BUDGET (now, or when the oldest one leaves the window). */
  private budgetFreeAt(): number {
    const now = this.opts.now();
    while (this.recentOrders.length > 0 && now - this.recentOrders[0]! >= ORDER_BUDGET.windowMs) this.recentOrders.shift();
    return this.recentOrders.length < ORDER_BUDGET.orders ? now : this.recentOrders[0]! + ORDER_BUDGET.windowMs;
  }

  /** Run what is due now, or sleep until the next plan (at most MAX_SLEEP_MS). */
  private wake() {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.running) return; // the loop looks again when it finishes
    const now = this.opts.now();
    if (this.items.some((i) => this.due(i))) {
      void this.runDue();
      return;
    }
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
    if (this.items.length === 0) return;
    const budget = this.budgetFreeAt();
    if (budget > now && this.items.some((i) => i.forced || Math.max(i.next, this.pausedUntil) <= now)) {
      this.opts.log.warn({ reason: 'acme_order_budget', orders: ORDER_BUDGET.orders, windowHours: ORDER_BUDGET.windowMs / 3_600_000, resumeAt: new Date(budget).toISOString() }, 'acme: order budget reached; waiting before the next order');
    }
    const next = Math.max(budget, Math.min(...this.items.map((i) => (i.forced ? now : Math.max(i.next, this.pausedUntil)))));
    this.timer = setTimeout(() => void this.refreshWindows().then(() => this.wake()), Math.max(0, Math.min(MAX_SLEEP_MS, next - now)));
    this.timer.unref();
  }

  private async runDue() {
    this.running = true;
    try {
      for (let item = this.items.find((i) => this.due(i)); item && !this.stopped; item = this.items.find((i) => this.due(i))) {
        await this.attempt(item);
      }
    } finally {
      this.running = false;
      this.wake();
    }
  }

  /** One order for one certificate; every outcome is logged, counted and planned. */
  private async attempt(item: Item) {
    const { log, metrics, responder } = this.opts;
    const forced = item.forced;
    const planned: string[] = [];
    item.forced = false;
    item.lastAttempt = this.opts.now();
    this.recentOrders.push(item.lastAttempt);
    const renewing = item.issued !== null;
    log.info({ name: item.name, keyType: item.keyType, reason: forced ? 'manual' : renewing ? 'renewal_due' : 'no_certificate' }, renewing ? 'acme: renewing' : 'acme: ordering');
    try {
      this.account ??= (this.opts.openAccount ?? AcmeAccount.open)(this.opts.config, log);
      const account = await this.account;
      const key = this.keyFor(item);
      const obtained = await account.order(item.name, item.keyType, responder, item.issued?.certPem ?? null, key.keyPem);
      writePair(item.dir, obtained.fullchainPem, obtained.keyPem);
      if (key.rolledOver) planned.push(spkiSha256OfKey(obtained.keyPem));
      if (key.rolledOver) {
        rmSync(join(item.dir, NEXT_KEY), { force: true });
        log.warn({ reason: 'dane_rollover_done', name: item.name, keyType: item.keyType, tlsa: `_25._tcp.${item.name}. IN TLSA 3 1 1 ${spkiSha256OfKey(obtained.keyPem)}` }, `acme: ${item.name} now uses the key of the rollover; the previous key's TLSA record can be removed`);
      }
      const issued = readIssued(item.dir);
      if (!issued) throw new Error(`the certificate written to ${item.dir} does not read back`);
      item.issued = issued;
      item.failures = 0;
      item.lastError = null;
      item.lastSuccess = this.opts.now();
      item.window = await account.renewalWindow(issued.certPem).catch(() => null);
      item.windowCheckedAt = this.opts.now();
      item.next = this.plannedRenewal(item);
      metrics.orders.inc({ key_type: item.keyType, result: 'ok' });
      log.info(
        { name: item.name, keyType: item.keyType, notAfter: issued.notAfter.toISOString(), folder: item.dir, nextRenewal: new Date(item.next).toISOString() },
        renewing ? 'acme: certificate renewed' : 'acme: certificate issued',
      );
      this.saveState();
      this.gauge(item);
    } catch (err) {
      this.failed(item, err);
      return;
    }
    // The certificate is on disk either way: a reload that fails is the reloader's error (logged
    // with its file and reason, the last good certificates kept), never a reason to order again.
    try {
      await this.opts.reload(planned);
    } catch (err) {
      log.error({ reason: 'acme_reload_failed', name: item.name, error: describe(err) }, 'acme: the new certificate is stored but not in service yet');
    }
  }

  private failed(item: Item, err: unknown) {
    const { log, metrics, config } = this.opts;
    // The account is registered again on the next attempt: a CA that lost it (a test CA
    // restarted, an account deactivated) answers "account not found" to every request until then.
    this.account = null;
    const message = describe(err);
    item.failures += 1;
    item.lastError = message;
    const delay = retryDelay(item.failures, config.retry.minMs, config.retry.maxMs, this.opts.random());
    const now = this.opts.now();
    item.next = now + delay;
    // The CA unreachable or rate limiting: every other order would fail the same way.
    if (caWide(err)) this.pausedUntil = Math.max(this.pausedUntil, item.next);
    metrics.orders.inc({ key_type: item.keyType, result: 'failed' });
    const fields = {
      reason: 'acme_order_failed',
      name: item.name,
      keyType: item.keyType,
      failures: item.failures,
      error: message,
      retryAt: new Date(item.next).toISOString(),
      serving: item.issued ? `current certificate until ${item.issued.notAfter.toISOString()}` : 'no certificate',
    };
    if (item.issued && expiryAlarm(item.issued.notAfter, new Date(now))) {
      log.error({ ...fields, reason: 'acme_expiry_near', daysLeft: daysLeft(item.issued.notAfter, new Date(now)) }, `acme: renewal FAILED and the certificate of ${item.name} expires within 7 days`);
    } else if (!item.issued) {
      log.error(fields, `acme: could not obtain a certificate for ${item.name}; listeners with this hostname cannot offer TLS`);
    } else {
      log.warn(fields, 'acme: renewal failed; still serving the current certificate');
    }
    this.saveState();
    this.gauge(item);
  }

  /** ARI (RFC 9773 section 4.3): ask again every few hours; the CA may move the window earlier. */
  private async refreshWindows() {
    const now = this.opts.now();
    if (!this.account) return;
    let account;
    try {
      account = await this.account;
    } catch {
      return;
    }
    for (const item of this.items) {
      if (!item.issued || now - item.windowCheckedAt < MAX_SLEEP_MS || item.failures > 0) continue;
      item.windowCheckedAt = now;
      const window = await account.renewalWindow(item.issued.certPem).catch(() => null);
      if (window) {
        item.window = window;
        item.next = this.plannedRenewal(item);
        this.gauge(item);
      }
    }
  }

  private gauge(item: Item) {
    const { metrics } = this.opts;
    const labels = { name: item.name, key_type: item.keyType };
    metrics.notAfter.set(labels, item.issued ? Math.floor(item.issued.notAfter.getTime() / 1000) : 0);
    metrics.nextRenewal.set(labels, Math.floor(Math.max(item.next, this.pausedUntil) / 1000));
    metrics.failures.set(labels, item.failures);
  }

  private saveState() {
    const { config, log } = this.opts;
    const certificates: CertState[] = this.status().map((s) => ({
      name: s.name,
      keyType: s.keyType,
      nextRenewal: s.nextAttempt,
      lastAttempt: s.lastAttempt,
      lastSuccess: s.lastSuccess,
      lastError: s.lastError,
      failures: s.failures,
      renewalWindow: s.renewalWindow,
    }));
    try {
      writeState(config.storage, { directory: config.directory, updated: new Date(this.opts.now()).toISOString(), certificates });
    } catch (err) {
      log.warn({ reason: 'acme_storage_error', error: describe(err) }, 'acme: cannot write state.json');
    }
  }
}

/** One line for the log: an ACME problem's detail, or the network error. */
function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    return code && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}

/** Errors that are the CA's state, not this name's: no answer, server errors, rate limits. */
function caWide(err: unknown): boolean {
  const e = err as { code?: string; message?: string; response?: { status?: number } };
  if (e?.code && /^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH|ECONNABORTED|ERR_BAD_RESPONSE)$/.test(e.code)) return true;
  const status = e?.response?.status;
  if (status === 429 || (status !== undefined && status >= 500)) return true;
  return /rateLimited|too many/i.test(e?.message ?? '');
}
