// threats.md "Certificates" against the compiled daemon: broken files refuse the start, naming
// the file and the reason; broken files on reload (file watch or SIGHUP) keep the last good
// store, logged and counted; expired and soon-expiring certificates are loud, with their
// not-after metric; a not-yet-valid one is refused; a leaf without its chain is warned about;
// certbot-style symlink swaps never serve a key with the wrong certificate; wildcard rules and
// exact-beats-wildcard checked on the certificate a real client is served.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdirSync, writeFileSync, copyFileSync, rmSync, symlinkSync, renameSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { ALERT, rawExchange, tlsTry } from '../helpers/clients.ts';
import { buildClientHello } from '../helpers/hello-builder.ts';
import { freePort } from '../helpers/ports.ts';
import { buildOnce, spawnDaemon, stopAll, goodClient, runCli, sleep, type SpawnedPostern } from './harness.ts';

const DAY = 86_400_000;
let pki: TestPki;
let mail: CertFiles;

beforeAll(async () => {
  buildOnce();
  pki = await makePki();
  mail = await pki.issue('mail', { names: ['mail.example.org'] });
}, 120_000);

afterAll(stopAll);

/** The certificate a client is served for `servername` (chain verified against the test CA, name not checked). */
async function served(d: SpawnedPostern, listener: string, servername: string | null): Promise<{ cn: string; fingerprint: string; error: string | null }> {
  const o = await tlsTry(d.port(listener), {
    ...(servername ? { servername } : {}),
    ca: pki.ca.certPem,
    rejectUnauthorized: false,
    checkServerIdentity: () => undefined,
  });
  if (!o.socket) return { cn: '', fingerprint: '', error: o.error?.code ?? o.error?.message ?? 'failed' };
  const peer = o.socket.getPeerCertificate();
  const error = o.socket.authorized ? null : String(o.socket.authorizationError);
  o.socket.destroy();
  return { cn: String(peer.subject?.CN ?? ''), fingerprint: peer.fingerprint256, error };
}

const fingerprintOf = (pem: string) => new X509Certificate(pem).fingerprint256;

function yamlFor(cert: string, key: string, port: number): string {
  return `certificates:
  - cert: ${cert}
    key: ${key}
listeners:
  - name: smtps
    listen: "127.0.0.1:${port}"
    protocol: smtp
    role: submission
    tls: implicit
    hostname: mail.example.org
    backend: { address: "127.0.0.1:9", proxyProtocol: v2 }
`;
}

/**
 * `postern run` with one certificate pair; it must exit 1 before binding anything. `asPlainUser`:
 * root reads every file whatever its mode (CAP_DAC_OVERRIDE), so permission cases run the CLI
 * with those capabilities dropped (setpriv), which makes root obey file modes like any user.
 */
async function startFails(cert: string, key: string, opts: { asPlainUser?: boolean } = {}): Promise<string> {
  const port = await freePort();
  const file = join(pki.dir, `bad-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, yamlFor(cert, key, port));
  const dropDac = opts.asPlainUser === true && process.getuid?.() === 0;
  const r = dropDac
    ? runCli(['run', '-c', file], pki.dir, { wrapper: ['setpriv', '--bounding-set=-dac_override,-dac_read_search'] })
    : runCli(['run', '-c', file], pki.dir);
  expect(r.status, r.stdout + r.stderr).toBe(1);
  expect(r.stderr).toContain('nothing was started');
  // Nothing listens.
  const x = await rawExchange(port, Buffer.alloc(0), { timeoutMs: 2000 }).catch((e: Error) => e);
  expect(x instanceof Error || (x as { error: string | null }).error === 'ECONNREFUSED').toBe(true);
  return r.stderr;
}

describe('broken certificate files refuse the start, naming the file and the reason', () => {
  it('a key that belongs to another certificate', async () => {
    const other = await pki.issue('other-key', { names: ['mail.example.org'] });
    const err = await startFails(mail.cert, other.key);
    expect(err).toContain(`${other.key} is not the private key of ${mail.cert} (CN=mail.example.org)`);
  });

  it('a certificate file that cannot be read (missing; a folder)', async () => {
    const missing = join(pki.dir, 'missing.pem');
    expect(await startFails(missing, mail.key)).toMatch(new RegExp(`\\.yaml:\\d+:\\d+ certificates\\[0\\]\\.cert: file not found: ${missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    const folder = join(pki.dir, 'a-folder.pem');
    mkdirSync(folder, { recursive: true });
    expect(await startFails(mail.cert, folder)).toContain(`certificates[0].key: not a regular file: ${folder}`);
  });

  it('a key file without read permission', async () => {
    const locked = join(pki.dir, 'locked.key');
    writeFileSync(locked, mail.keyPem, { mode: 0o000 });
    const err = await startFails(mail.cert, locked, { asPlainUser: true });
    expect(err).toContain(locked);
    expect(err).toMatch(/EACCES|permission/i);
  });

  it('PEM garbage: no certificate block, a block that does not parse, no key block', async () => {
    const text = join(pki.dir, 'text.pem');
    writeFileSync(text, 'this is not a certificate\n');
    expect(await startFails(text, mail.key)).toContain(`${text} holds no PEM certificate`);
    const junk = join(pki.dir, 'junk.pem');
    writeFileSync(junk, '-----BEGIN CERTIFICATE-----\nTUlJQmdhcmJhZ2U=\n-----END CERTIFICATE-----\n');
    expect(await startFails(junk, mail.key)).toMatch(new RegExp(`${junk.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: the first certificate does not parse`));
    const badKey = join(pki.dir, 'junk.key');
    writeFileSync(badKey, '-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n');
    expect(await startFails(mail.cert, badKey)).toContain(`${badKey} holds no PEM private key`);
  });

  it('a certificate that is not valid yet', async () => {
    const future = await pki.issue('future', { names: ['mail.example.org'], notBefore: new Date(Date.now() + 2 * DAY), notAfter: new Date(Date.now() + 90 * DAY) });
    expect(await startFails(future.cert, future.key)).toMatch(/future\.pem is not valid before \d{4}-\d\d-\d\dT.*check the clock/);
  });

  it('a partial wildcard (f*.example.org)', async () => {
    const partial = await pki.issue('partial', { names: ['mail.example.org', 'f*.example.org'] });
    expect(await startFails(partial.cert, partial.key)).toContain(`${partial.cert}: "f*.example.org": partial or nested wildcards are not supported`);
  });
});

describe('loud certificates, wildcard rules, exact beats wildcard (one running daemon)', () => {
  let d: SpawnedPostern;
  let wild: CertFiles;
  let exact: CertFiles;
  let expired: CertFiles;
  let soon: CertFiles;
  let nochain: CertFiles;

  beforeAll(async () => {
    wild = await pki.issue('wild', { names: ['*.example.org'] });
    exact = await pki.issue('exact', { names: ['a.example.org'] });
    expired = await pki.issue('expired', { names: ['old.example.net'], notBefore: new Date(Date.now() - 100 * DAY), notAfter: new Date(Date.now() - 2 * DAY) });
    soon = await pki.issue('soon', { names: ['soon.example.net'], notAfter: new Date(Date.now() + 5 * DAY) });
    nochain = await pki.issue('nochain', { names: ['nochain.example.net'], withChain: false });
    d = await spawnDaemon({
      dir: pki.dir,
      // The wildcard is listed before the exact certificate: exact must still win.
      certs: [wild, exact, mail, expired, soon, nochain].map((c) => ({ cert: c.cert, key: c.key })),
      listeners: [
        { name: 'strict', protocol: 'tls', sni: 'strict' },
        { name: 'fb', protocol: 'tls', sni: 'fallback' },
      ],
    });
    await goodClient(d, 'strict', pki);
  }, 60_000);

  it('an expired certificate: a warning at load ("EXPIRED", days left < 0) and its not-after in the metric; clients that verify refuse it', async () => {
    const line = await d.waitMsg('certificate EXPIRED', { file: expired.cert });
    expect(line.level).toBe('warn');
    expect(line.daysLeft as number).toBeLessThan(0);
    expect(d.logs.some((l) => l.level === 'warn' && l.msg.includes(`${expired.cert} EXPIRED on`))).toBe(true);
    const notAfter = await d.metric('postern_certificate_not_after_seconds', { file: expired.cert, name: 'old.example.net' });
    expect(notAfter).toBe(Math.floor(new Date(new X509Certificate(expired.certPem).validTo).getTime() / 1000));
    expect(notAfter).toBeLessThan(Date.now() / 1000);
    const o = await tlsTry(d.port('strict'), { servername: 'old.example.net', ca: pki.ca.certPem });
    expect(o.error?.code).toBe('CERT_HAS_EXPIRED');
  });

  it('a certificate expiring in 5 days: "certificate expires soon" with days left, and the metric', async () => {
    const line = await d.waitMsg('certificate expires soon', { file: soon.cert });
    expect(line).toMatchObject({ level: 'warn', daysLeft: 4 });
    expect(d.logs.some((l) => l.level === 'warn' && l.msg.includes(`${soon.cert} expires in less than 14 days`))).toBe(true);
    const notAfter = await d.metric('postern_certificate_not_after_seconds', { file: soon.cert });
    expect(Math.round((notAfter * 1000 - Date.now()) / DAY)).toBe(5);
  });

  it('a leaf without its chain: a warning naming the file', () => {
    const w = d.logs.find((l) => l.level === 'warn' && l.msg.includes(`${nochain.cert} has no intermediate certificates after the leaf`));
    expect(w).toBeDefined();
    // The others (leaf + CA) are not warned about.
    expect(d.logs.some((l) => l.level === 'warn' && l.msg.includes(`${mail.cert} has no intermediate`))).toBe(false);
  });

  it('exact beats wildcard: a.example.org gets its own certificate although the wildcard is listed first', async () => {
    const s = await served(d, 'strict', 'a.example.org');
    expect(s).toEqual({ cn: 'a.example.org', fingerprint: fingerprintOf(exact.certPem), error: null });
    const upper = await served(d, 'strict', 'A.Example.ORG');
    expect(upper.fingerprint).toBe(fingerprintOf(exact.certPem));
  });

  it('*.example.org covers b.example.org (and mail.example.org is exact)', async () => {
    expect(await served(d, 'strict', 'b.example.org')).toEqual({ cn: '*.example.org', fingerprint: fingerprintOf(wild.certPem), error: null });
    expect((await served(d, 'strict', 'mail.example.org')).fingerprint).toBe(fingerprintOf(mail.certPem));
  });

  for (const name of ['example.org', 'a.b.example.org']) {
    it(`*.example.org does not cover ${name}: strict -> alert 112, fallback -> the listener's certificate`, async () => {
      const base = await d.settledFds();
      const x = await rawExchange(d.port('strict'), buildClientHello({ sni: name }));
      expect(x.data).toEqual(ALERT.unrecognizedName);
      expect(await d.summaryFor(x.localPort)).toMatchObject({ closeReason: 'sni_refused', sniClass: 'unknown', sni: name });
      const fb = await served(d, 'fb', name);
      expect(fb.fingerprint).toBe(fingerprintOf(mail.certPem));
      await goodClient(d, 'strict', pki);
      expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
    });
  }
});

describe('reload with broken files keeps the last good store', () => {
  it('mismatched key, PEM garbage, a missing key (file watch and SIGHUP): old certificate served, error logged and counted; a good renewal then goes in', async () => {
    const dir = join(pki.dir, 'reload');
    mkdirSync(dir, { recursive: true });
    const cert = join(dir, 'fullchain.pem');
    const key = join(dir, 'privkey.pem');
    copyFileSync(mail.cert, cert);
    copyFileSync(mail.key, key);
    const d = await spawnDaemon({ dir: pki.dir, certs: [{ cert, key }], listeners: [{ name: 'smtps', protocol: 'smtp' }] });
    await goodClient(d, 'smtps', pki);
    const base = await d.settledFds();
    const old = fingerprintOf(mail.certPem);
    expect((await served(d, 'smtps', 'mail.example.org')).fingerprint).toBe(old);
    const failed = (trigger: string) => d.metric('postern_reloads_total', { trigger, result: 'failed' });

    const other = await pki.issue('reload-other', { names: ['mail.example.org'] });
    // Each error line names the YAML file and the config path in its fields, the certificate or
    // key file and the reason in its message.
    const breakages: Array<{ what: string; apply: () => void; message: string; path: string }> = [
      { what: 'key of another certificate', apply: () => writeFileSync(key, other.keyPem), message: `${key} is not the private key of ${cert}`, path: 'certificates[0].key' },
      { what: 'PEM garbage', apply: () => writeFileSync(cert, 'garbage\n'), message: `${cert} holds no PEM certificate`, path: 'certificates[0].cert' },
      { what: 'missing key', apply: () => { writeFileSync(cert, readFileSync(mail.cert)); rmSync(key); }, message: `file not found: ${key}`, path: 'certificates[0].key' },
    ];
    for (const b of breakages) {
      const before = await failed('watch');
      b.apply();
      const line = await d.waitLog((l) => l.reason === 'reload_failed' && l.trigger === 'watch' && typeof l.msg === 'string' && l.msg.includes(b.message), 15_000);
      expect(line).toMatchObject({ level: 'error', file: d.file, path: b.path });
      await d.waitMsg('reload failed; still serving the last good configuration and certificates', { trigger: 'watch' }, 5000);
      expect(await failed('watch'), b.what).toBe(before + 1);
      // SIGHUP while the files are still broken: the same.
      const hup = await failed('sighup');
      d.sighup();
      await d.waitMsg('reload failed; still serving the last good configuration and certificates', { trigger: 'sighup' }, 15_000);
      expect(await failed('sighup'), b.what).toBe(hup + 1);
      expect((await served(d, 'smtps', 'mail.example.org')).fingerprint, b.what).toBe(old);
      await goodClient(d, 'smtps', pki);
      expect(await d.fdsBackTo(base), b.what).toBeLessThanOrEqual(base);
    }

    // A good renewal: picked up by the watch, counted as ok, served at once.
    const okBefore = await d.metric('postern_reloads_total', { trigger: 'watch', result: 'ok' });
    const renewed = await pki.issue('renewed', { names: ['mail.example.org'] });
    writeFileSync(key, renewed.keyPem);
    writeFileSync(cert, readFileSync(renewed.cert));
    await d.waitMsg('reloaded', { trigger: 'watch' }, 15_000);
    expect(await d.metric('postern_reloads_total', { trigger: 'watch', result: 'ok' })).toBe(okBefore + 1);
    expect((await served(d, 'smtps', 'mail.example.org')).fingerprint).toBe(fingerprintOf(renewed.certPem));
    await goodClient(d, 'smtps', pki);
    expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
  });

  it('certbot swaps fullchain and privkey symlinks one at a time: every handshake during the swap gets the old or the new pair, the half-way state is retried, not refused', async () => {
    const root = join(pki.dir, `le-${Math.random().toString(36).slice(2)}`);
    const archive = join(root, 'archive', 'mail.example.org');
    const live = join(root, 'live', 'mail.example.org');
    mkdirSync(archive, { recursive: true });
    mkdirSync(live, { recursive: true });
    const renewed = await pki.issue('le-renewed', { names: ['mail.example.org'] });
    copyFileSync(mail.cert, join(archive, 'fullchain1.pem'));
    copyFileSync(mail.key, join(archive, 'privkey1.pem'));
    copyFileSync(renewed.cert, join(archive, 'fullchain2.pem'));
    copyFileSync(renewed.key, join(archive, 'privkey2.pem'));
    symlinkSync('../../archive/mail.example.org/fullchain1.pem', join(live, 'fullchain.pem'));
    symlinkSync('../../archive/mail.example.org/privkey1.pem', join(live, 'privkey.pem'));
    const d = await spawnDaemon({ dir: pki.dir, certs: [{ dir: join(root, 'live') }], listeners: [{ name: 'smtps', protocol: 'smtp' }] });
    await goodClient(d, 'smtps', pki);
    const base = await d.settledFds();
    const oldFp = fingerprintOf(mail.certPem);
    const newFp = fingerprintOf(renewed.certPem);

    // Handshakes in a loop while the symlinks are swapped.
    let stop = false;
    const seen: Array<{ fingerprint: string; error: string | null }> = [];
    const loop = (async () => {
      while (!stop) {
        const s = await served(d, 'smtps', 'mail.example.org');
        seen.push({ fingerprint: s.fingerprint, error: s.error });
        await sleep(20);
      }
    })();
    const swap = (name: string, target: string) => {
      const tmp = join(live, `.${name}.tmp`);
      symlinkSync(target, tmp);
      renameSync(tmp, join(live, name));
    };
    swap('fullchain.pem', '../../archive/mail.example.org/fullchain2.pem');
    // Longer than the watch's quiet period (1 s): the reload sees the half-way state and retries.
    await sleep(1200);
    swap('privkey.pem', '../../archive/mail.example.org/privkey2.pem');
    await d.waitMsg('reloaded', { trigger: 'watch' }, 15_000);
    await sleep(300);
    stop = true;
    await loop;
    expect(seen.length).toBeGreaterThan(10);
    for (const s of seen) {
      expect(s.error).toBeNull();
      expect([oldFp, newFp]).toContain(s.fingerprint);
    }
    expect(seen.at(-1)!.fingerprint).toBe(newFp);
    expect(d.logs.filter((l) => l.reason === 'reload_failed')).toEqual([]);
    expect(await d.metric('postern_reloads_total', { result: 'failed' })).toBe(0);
    await goodClient(d, 'smtps', pki);
    expect(await d.fdsBackTo(base)).toBeLessThanOrEqual(base);
  });
});
