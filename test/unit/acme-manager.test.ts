// The ACME manager's decisions with a stand-in for the CA (pure scheduling logic; the real CA
// conversation is proven against pebble in test/integration/acme*.test.ts): what is ordered
// when, the order budget, the pause when the CA is unreachable, and what a success writes.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { Registry } from 'prom-client';
import { afterAll, describe, expect, it } from 'vitest';
import { AcmeManager, ORDER_BUDGET } from '../../src/acme/manager.ts';
import { AcmeMetrics } from '../../src/metrics.ts';
import { createLogger } from '../../src/log.ts';
import type { AcmeConfig } from '../../src/config/types.ts';

const dir = mkdtempSync(join(tmpdir(), 'postern-acme-manager-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function logger() {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { log: createLogger('info', sink), lines };
}

function config(storage: string, names: string[]): AcmeConfig {
  return { directory: 'https://ca.invalid/dir', email: 'a@example.org', storage, names, keyTypes: ['ecdsa'], challenge: 'tls-alpn-01', http: null, externalAccountBinding: null, caCertificates: null, retry: { minMs: 3_600_000, maxMs: 12 * 3_600_000 }, keepKey: [], rolloverDelayMs: 7_200_000 };
}

const noResponder = { publish: async () => undefined, withdraw: async () => undefined };

/** A self-signed certificate for `name`, valid 90 days from now, and its key. */
function selfSigned(name: string): { fullchainPem: string; keyPem: string } {
  const d = mkdtempSync(join(dir, 'cert-'));
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'k.pem', '-out', 'c.pem', '-days', '90', '-subj', `/CN=${name}`, '-addext', `subjectAltName=DNS:${name}`], { cwd: d, stdio: 'ignore' });
  return { fullchainPem: readFileSync(join(d, 'c.pem'), 'utf8'), keyPem: readFileSync(join(d, 'k.pem'), 'utf8') };
}

describe('AcmeManager', () => {
  it('a success writes the pair (key 0600), reloads once, and plans the renewal at two thirds of the lifetime', async () => {
    const storage = join(dir, 'ok');
    const { log } = logger();
    const ordered: string[] = [];
    let reloads = 0;
    const m = new AcmeManager({
      config: config(storage, ['mail.example.org']),
      log,
      metrics: new AcmeMetrics(new Registry()),
      responder: noResponder,
      reload: async () => void reloads++,
      random: () => 0,
      openAccount: async () => ({ order: async (name: string) => (ordered.push(name), selfSigned(name)), renewalWindow: async () => null }),
    });
    m.start();
    await m.idle();
    m.stop();
    expect(ordered).toEqual(['mail.example.org']);
    expect(reloads).toBe(1);
    expect(statSync(join(storage, 'live', 'mail.example.org', 'privkey.pem')).mode & 0o777).toBe(0o600);
    const [s] = m.status();
    expect(s).toMatchObject({ name: 'mail.example.org', failures: 0, lastError: null, daysLeft: 89 });
    const left = (Date.parse(s!.notAfter!) - Date.parse(s!.nextAttempt!)) / 86_400_000;
    expect(left).toBeGreaterThan(29);
    expect(left).toBeLessThan(31);

    // A second manager on the same storage (a restart) orders nothing.
    const again: string[] = [];
    const m2 = new AcmeManager({
      config: config(storage, ['mail.example.org']),
      log,
      metrics: new AcmeMetrics(new Registry()),
      responder: noResponder,
      reload: async () => undefined,
      openAccount: async () => ({ order: async (name: string) => (again.push(name), selfSigned(name)), renewalWindow: async () => null }),
    });
    m2.start();
    await m2.idle();
    m2.stop();
    expect(again).toEqual([]);
  });

  it(`never more than ${ORDER_BUDGET.orders} orders in ${ORDER_BUDGET.windowMs / 3_600_000} hours, whatever the number of names`, async () => {
    const names = Array.from({ length: 70 }, (_, i) => `n${i}.example.org`);
    const { log, lines } = logger();
    let orders = 0;
    const now = Date.now();
    const m = new AcmeManager({
      config: config(join(dir, 'budget'), names),
      log,
      metrics: new AcmeMetrics(new Registry()),
      responder: noResponder,
      reload: async () => undefined,
      now: () => now, // time stands still: nothing becomes due again by itself
      openAccount: async () => ({
        order: async () => {
          orders++;
          throw new Error('urn:ietf:params:acme:error:unauthorized: the name does not point here');
        },
        renewalWindow: async () => null,
      }),
    });
    m.start();
    for (let i = 0; i < 100 && !lines.some((l) => l.reason === 'acme_order_budget'); i++) await new Promise((r) => setTimeout(r, 20));
    m.stop();
    expect(orders).toBe(ORDER_BUDGET.orders);
    expect(lines.filter((l) => l.reason === 'acme_order_failed')).toHaveLength(ORDER_BUDGET.orders);
    expect(lines.find((l) => l.reason === 'acme_order_budget')).toMatchObject({ orders: ORDER_BUDGET.orders, windowHours: 3 });
  });

  it('a CA that does not answer pauses every order, not only the failed one; a failure is never retried before retry.min', async () => {
    const { log, lines } = logger();
    let orders = 0;
    let now = Date.now();
    const m = new AcmeManager({
      config: config(join(dir, 'down'), ['a.example.org', 'b.example.org', 'c.example.org']),
      log,
      metrics: new AcmeMetrics(new Registry()),
      responder: noResponder,
      reload: async () => undefined,
      now: () => now,
      random: () => 0,
      openAccount: async () => {
        orders++;
        throw Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:14000'), { code: 'ECONNREFUSED' });
      },
    });
    m.start();
    await new Promise((r) => setTimeout(r, 200));
    expect(orders).toBe(1);
    const failed = lines.filter((l) => l.reason === 'acme_order_failed');
    expect(failed).toHaveLength(1);
    expect(failed[0]).toMatchObject({ name: 'a.example.org', failures: 1, serving: 'no certificate' });
    expect(m.status().every((s) => Date.parse(s.nextAttempt!) >= now + 3_600_000)).toBe(true);
    // An hour later (retry.min) the next attempt runs (woken here by renew() rather than the
    // hour-long timer), fails again, and pauses the others once more; a's wait doubles.
    now += 3_600_000;
    m.renew('a.example.org');
    await new Promise((r) => setTimeout(r, 200));
    m.stop();
    expect(orders).toBe(2);
    const a = m.status().find((s) => s.name === 'a.example.org')!;
    expect(a.failures).toBe(2);
    expect(Date.parse(a.nextAttempt!)).toBe(now + 2 * 3_600_000);
    expect(m.status().filter((s) => s.failures === 0).map((s) => s.name)).toEqual(['b.example.org', 'c.example.org']);
  });

  it('renew() only knows managed names', () => {
    const { log } = logger();
    const m = new AcmeManager({ config: config(join(dir, 'names'), ['mail.example.org']), log, metrics: new AcmeMetrics(new Registry()), responder: noResponder, reload: async () => undefined });
    expect(m.renew('evil.example.net')).toBe(false);
    m.stop();
  });
});
