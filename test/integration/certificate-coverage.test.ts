// Issue 14, finding 10: whether each listener's hostname is covered is never silent. The reloader
// refuses a store that would uncover a running listener (test/hostile/reload-scope.test.ts); this
// file checks what postern says when a store without coverage is in place anyway (a store swapped
// in by something other than the reloader): postern_listener_certificate_missing, /readyz 503 with
// the listener and hostname, one error line per change, and the per-listener answer the STARTTLS
// prelude reads. Also what a SIGHUP must check: Daemon.plan and coverageAfter.
import { describe, it, expect, beforeAll, onTestFinished } from 'vitest';
import http from 'node:http';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { startPostern } from '../helpers/postern.ts';
import { startBackend } from '../helpers/backend.ts';
import { freePort } from '../helpers/ports.ts';
import { startAdmin, type Readiness } from '../../src/admin.ts';
import { processState } from '../../src/commands/run.ts';
import { buildCertStore, type CertStore } from '../../src/tls/certstore.ts';
import { loadConfigText } from '../../src/config/load.ts';
import type { PosternConfig } from '../../src/config/types.ts';
import { createLogger } from '../../src/log.ts';

let pki: TestPki;
let mail: CertFiles;
let other: CertFiles;

beforeAll(async () => {
  pki = await makePki();
  mail = await pki.issue('mail', { names: ['mail.example.org'] });
  other = await pki.issue('other', { names: ['other.example.net'] });
});

const storeOf = (c: CertFiles): CertStore => buildCertStore([{ cert: c.cert, key: c.key, path: 'certificates[0]' }]).store!;

function yaml(ports: number[], backend: number, hostnames = ['mail.example.org', 'mail.example.org']): string {
  return `log: { level: info }
certificates:
  - { cert: ${mail.cert}, key: ${mail.key} }
listeners:
${ports
  .map(
    (p, i) => `  - name: l${i}
    listen: "127.0.0.1:${p}"
    protocol: imap
    tls: implicit
    hostname: ${hostnames[i]}
    backend: { address: "127.0.0.1:${backend}", proxyProtocol: v2 }
`,
  )
  .join('')}`;
}

function get(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
}

describe('a listener whose hostname no loaded certificate covers', () => {
  it('sets postern_listener_certificate_missing to 1, makes /readyz 503 naming the listener and hostname, logs one error, and tells the prelude', async () => {
    const backend = await startBackend();
    onTestFinished(() => backend.close());
    const p = await startPostern(pki.dir, yaml([await freePort(), await freePort()], backend.port));
    onTestFinished(() => p.stop());
    const d = p.daemon;
    const admin = await startAdmin({
      listen: { host: '127.0.0.1', port: 0 },
      metrics: d.metrics,
      log: createLogger('fatal'),
      readiness: () => ({ ...processState(d, null), backendChecks: { intervalMs: null } }),
    });
    onTestFinished(() => admin.close());
    const gauge = async (listener: string) => (await d.metrics.listenerCertificateMissing.get()).values.find((v) => v.labels.listener === listener)?.value;
    // What the STARTTLS prelude asks before it offers TLS (src/session.ts: tlsAvailable).
    const prelude = (i: number) => d.listeners[i]!.env.store().lookup(d.listeners[i]!.env.listener.hostname) === null;

    expect(await gauge('l0')).toBe(0);
    expect(await gauge('l1')).toBe(0);
    expect(prelude(0)).toBe(false);
    expect((await get(admin.port, '/readyz')).status).toBe(200);

    d.setStore(storeOf(other));
    expect(await gauge('l0')).toBe(1);
    expect(await gauge('l1')).toBe(1);
    expect(prelude(0)).toBe(true);
    expect(d.certificatesMissing()).toEqual([{ listener: 'l0', hostname: 'mail.example.org' }, { listener: 'l1', hostname: 'mail.example.org' }]);
    const r = await get(admin.port, '/readyz');
    expect(r.status).toBe(503);
    expect((JSON.parse(r.body) as Readiness).problems).toEqual([
      'listener "l0": no loaded certificate covers its hostname "mail.example.org"',
      'listener "l1": no loaded certificate covers its hostname "mail.example.org"',
    ]);
    const metrics = await get(admin.port, '/metrics');
    expect(metrics.body).toContain('postern_listener_certificate_missing{listener="l0"} 1');
    const errors = p.logs.filter((l) => l.reason === 'certificate_missing');
    expect(errors).toEqual([
      expect.objectContaining({ level: 'error', listener: 'l0', hostname: 'mail.example.org' }),
      expect.objectContaining({ level: 'error', listener: 'l1', hostname: 'mail.example.org' }),
    ]);
    // The same store again: no new line (one per change, not per swap).
    d.setStore(storeOf(other));
    expect(p.logs.filter((l) => l.reason === 'certificate_missing')).toHaveLength(2);

    d.setStore(storeOf(mail));
    expect(await gauge('l0')).toBe(0);
    expect(prelude(0)).toBe(false);
    expect((await get(admin.port, '/readyz')).status).toBe(200);
    expect(p.logs.some((l) => l.msg === 'listener "l0": its hostname is covered again')).toBe(true);
  });
});

describe('what a SIGHUP must cover: Daemon.plan and coverageAfter', () => {
  const compile = (text: string): PosternConfig => {
    const r = loadConfigText(text, `${pki.dir}/plan.yaml`);
    if (!r.ok) throw new Error(JSON.stringify(r.errors));
    return r.loaded.config;
  };

  it('a listener with a new listen address keeps its old settings and its old hostname must stay covered; one removed from the file too', async () => {
    const backend = await startBackend();
    onTestFinished(() => backend.close());
    const [a, b, c] = [await freePort(), await freePort(), await freePort()];
    const p = await startPostern(pki.dir, yaml([a, b, c], backend.port, ['mail.example.org', 'mail.example.org', 'mail.example.org']));
    onTestFinished(() => p.stop());
    // l0 moves (restart-only) and is renamed in its hostname; l1 only changes its hostname; l2 is gone.
    const next = compile(yaml([await freePort(), b], backend.port, ['other.example.net', 'other.example.net']));
    const plan = p.daemon.plan(next);
    expect(plan.needsRestart).toEqual(['listener "l0": listen changed', 'listener "l2" was removed']);
    expect(plan.listeners.map((x) => [x.config.name, x.config.hostname, x.keptBecause])).toEqual([
      ['l0', 'mail.example.org', 'listen changed'],
      ['l1', 'other.example.net', null],
      ['l2', 'mail.example.org', 'removed from the file'],
    ]);
    expect(p.daemon.coverageAfter(next)).toEqual([
      { listener: 'l0', hostname: 'other.example.net', path: 'listeners[0].hostname', keptBecause: null },
      { listener: 'l1', hostname: 'other.example.net', path: 'listeners[1].hostname', keptBecause: null },
      { listener: 'l0', hostname: 'mail.example.org', path: 'listeners[0].hostname', keptBecause: 'listen changed' },
      { listener: 'l2', hostname: 'mail.example.org', path: 'listeners', keptBecause: 'removed from the file' },
    ]);
    // plan() changed nothing.
    expect(p.daemon.listeners.map((l) => l.env.listener.hostname)).toEqual(['mail.example.org', 'mail.example.org', 'mail.example.org']);
  });
});
