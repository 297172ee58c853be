// Certificate renewal while serving: certbot's exact symlink sequence during a handshake loop,
// a broken renewal kept out, SIGHUP-style reload of listener policy, and a transfer that spans a
// reload. Real files on disk, a running postern, Node TLS clients verifying against the CA.
import { describe, it, expect, onTestFinished } from 'vitest';
import { mkdirSync, writeFileSync, symlinkSync, renameSync, readFileSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import tls from 'node:tls';
import net from 'node:net';
import { Writable } from 'node:stream';
import { createCa, issueCert, type TestCa } from '../helpers/pki.ts';
import { validateFile } from '../../src/commands/load.ts';
import { createLogger } from '../../src/log.ts';
import { Daemon } from '../../src/daemon.ts';
import { Reloader } from '../../src/reload.ts';
import { startBackend } from '../helpers/backend.ts';

const NAME = 'mail.example.org';

interface Setup {
  dir: string;
  ca: TestCa;
  file: string;
  daemon: Daemon;
  reloader: Reloader;
  port: number;
  logs: Array<Record<string, unknown>>;
  /** Writes archive/<NAME>/{fullchain,privkey}N.pem. */
  archive(n: number, keyFrom?: number): Promise<string>;
  /** certbot's swap: each live/ symlink replaced by an atomic rename, one after the other. */
  swapLive(n: number, pauseMs: number): Promise<void>;
}

async function setup(yamlExtra = ''): Promise<Setup> {
  const dir = mkdtempSync(join(tmpdir(), 'postern-reload-'));
  const ca = await createCa();
  const live = join(dir, 'live', NAME);
  const arch = join(dir, 'archive', NAME);
  mkdirSync(live, { recursive: true });
  mkdirSync(arch, { recursive: true });
  const keys = new Map<number, string>();
  const archive = async (n: number, keyFrom?: number) => {
    const c = await issueCert(ca, { names: [NAME] });
    writeFileSync(join(arch, `fullchain${n}.pem`), c.chainPem);
    keys.set(n, c.keyPem);
    writeFileSync(join(arch, `privkey${n}.pem`), keyFrom === undefined ? c.keyPem : keys.get(keyFrom)!);
    return c.certPem;
  };
  const swapLive = async (n: number, pauseMs: number) => {
    for (const f of ['fullchain', 'privkey']) {
      const tmp = join(live, `.${f}.tmp`);
      symlinkSync(`../../archive/${NAME}/${f}${n}.pem`, tmp);
      renameSync(tmp, join(live, `${f}.pem`));
      await new Promise((r) => setTimeout(r, pauseMs));
    }
  };
  await archive(1);
  symlinkSync(`../../archive/${NAME}/fullchain1.pem`, join(live, 'fullchain.pem'));
  symlinkSync(`../../archive/${NAME}/privkey1.pem`, join(live, 'privkey.pem'));
  const backend = await startBackend({ mode: 'echo' });
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise((r) => probe.close(r));
  const file = join(dir, 'postern.yaml');
  writeFileSync(file, `log: { level: info }
certificates:
  - dir: live
listeners:
  - name: imaps
    listen: "127.0.0.1:${port}"
    protocol: tls
    alpn: [imap]
    tls: implicit
    hostname: ${NAME}
    backend: { address: "127.0.0.1:${backend.port}", proxyProtocol: v2 }
${yamlExtra}`);
  const v = validateFile(file);
  if (!v.ok) throw new Error(JSON.stringify(v.errors));
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({ write(c: Buffer, _e, cb) { for (const l of c.toString().split('\n')) if (l) logs.push(JSON.parse(l)); cb(); } });
  const daemon = await Daemon.start({ config: v.config, store: v.store, log: createLogger('info', sink) });
  const reloader = new Reloader({ file, daemon, log: createLogger('info', sink), debounceMs: 150, retryDelayMs: 100, attempts: 5 });
  reloader.watch(v.config);
  onTestFinished(async () => {
    reloader.unwatch();
    await daemon.stop();
    await backend.close();
  });
  return { dir, ca, file, daemon, reloader, port, logs, archive, swapLive };
}

function handshake(port: number, ca: string): Promise<{ ok: boolean; pem: string | null; error: string | null }> {
  return new Promise((resolve) => {
    const s = tls.connect({ port, host: '127.0.0.1', servername: NAME, ca, ALPNProtocols: ['imap'] }, () => {
      const raw = s.getPeerCertificate().raw;
      const pem = `-----BEGIN CERTIFICATE-----\n${raw.toString('base64').match(/.{1,64}/g)!.join('\n')}\n-----END CERTIFICATE-----`;
      s.destroy();
      resolve({ ok: s.authorized, pem, error: null });
    });
    s.on('error', (e: NodeJS.ErrnoException) => resolve({ ok: false, pem: null, error: e.code ?? e.message }));
  });
}

const norm = (pem: string) => pem.replace(/\s+/g, '');

describe('certificate reload', () => {
  it('a certbot renewal swapped symlink by symlink during a handshake loop serves the old or the new certificate, never a mismatch', async () => {
    const s = await setup();
    const oldPem = norm((await handshake(s.port, s.ca.certPem)).pem!);
    const newPem = norm(await s.archive(2));
    let stop = false;
    const seen = { old: 0, new: 0, other: 0, failed: [] as string[] };
    const loop = (async () => {
      while (!stop) {
        const r = await handshake(s.port, s.ca.certPem);
        if (!r.ok) seen.failed.push(r.error ?? 'unverified');
        else if (norm(r.pem!) === oldPem) seen.old++;
        else if (norm(r.pem!) === newPem) seen.new++;
        else seen.other++;
      }
    })();
    await new Promise((r) => setTimeout(r, 200));
    // The gap between the two renames is a window in which fullchain is new and privkey old.
    await s.swapLive(2, 120);
    const until = Date.now() + 5000;
    while (seen.new < 20 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    stop = true;
    await loop;
    expect(seen.failed).toEqual([]);
    expect(seen.other).toBe(0);
    expect(seen.old).toBeGreaterThan(0);
    expect(seen.new).toBeGreaterThanOrEqual(20);
    const reloads = await s.daemon.metrics.reloads.get();
    expect(reloads.values.find((v) => v.labels.result === 'ok')?.value).toBeGreaterThanOrEqual(1);
  });

  it('a broken renewal (key of another certificate) is kept out: the last good certificate stays, the error is logged and counted', async () => {
    const s = await setup();
    const oldPem = norm((await handshake(s.port, s.ca.certPem)).pem!);
    await s.archive(2);
    await s.archive(3, 2); // fullchain3 with privkey of certificate 2
    await s.swapLive(3, 10);
    const until = Date.now() + 5000;
    while (!s.logs.some((l) => l.msg?.toString().startsWith('reload failed')) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    const r = await handshake(s.port, s.ca.certPem);
    expect(r.ok).toBe(true);
    expect(norm(r.pem!)).toBe(oldPem);
    expect(s.logs.some((l) => l.reason === 'reload_failed' && String(l.msg).includes('is not the private key of'))).toBe(true);
    const reloads = await s.daemon.metrics.reloads.get();
    expect(reloads.values.find((v) => v.labels.result === 'failed')?.value).toBeGreaterThanOrEqual(1);
  });

  it('a reload that throws (not a config error: a bug, an I/O surprise) is logged and counted, and postern keeps serving', async () => {
    const s = await setup();
    const oldPem = norm((await handshake(s.port, s.ca.certPem)).pem!);
    const sink = new Writable({ write(c: Buffer, _e, cb) { for (const l of c.toString().split('\n')) if (l) s.logs.push(JSON.parse(l)); cb(); } });
    const throwing = new Reloader({
      file: s.file,
      daemon: s.daemon,
      log: createLogger('info', sink),
      validate: () => {
        throw new Error('EIO while reading the configuration');
      },
    });
    expect(await throwing.reload('sighup')).toBe(false);
    const line = s.logs.find((l) => l.reason === 'reload_failed' && String(l.error).includes('EIO while reading'));
    expect(line?.trigger).toBe('sighup');
    expect(line?.level).toBe('error');
    const reloads = await s.daemon.metrics.reloads.get();
    expect(reloads.values.find((v) => v.labels.result === 'failed' && v.labels.trigger === 'sighup')?.value).toBe(1);
    const r = await handshake(s.port, s.ca.certPem);
    expect(r.ok).toBe(true);
    expect(norm(r.pem!)).toBe(oldPem);
    // The next reload, with nothing wrong, goes through.
    expect(await s.reloader.reload('sighup')).toBe(true);
  });

  it('a transfer that spans a reload completes', async () => {
    const s = await setup();
    const c = tls.connect({ port: s.port, host: '127.0.0.1', servername: NAME, ca: s.ca.certPem });
    await new Promise((r) => c.once('secureConnect', r));
    let got = 0;
    c.on('data', (d: Buffer) => (got += d.length));
    const chunk = Buffer.alloc(64 * 1024, 7);
    for (let i = 0; i < 80; i++) {
      if (i === 40) {
        await s.archive(2);
        await s.swapLive(2, 0);
        expect(await s.reloader.reload('sighup')).toBe(true);
      }
      if (!c.write(chunk)) await new Promise((r) => c.once('drain', r));
    }
    const until = Date.now() + 10_000;
    while (got < 80 * chunk.length && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    expect(got).toBe(80 * chunk.length);
    c.destroy();
  });

  it('SIGHUP applies a new sni policy to new connections and reports a listen change as needing a restart', async () => {
    const s = await setup('    sni: strict\n');
    expect((await handshake2(s.port, s.ca.certPem, 'other.example.net')).error).toMatch(/UNRECOGNIZED_NAME/);
    const yaml = readFileSync(s.file, 'utf8').replace('sni: strict', 'sni: fallback').replace(`127.0.0.1:${s.port}`, `127.0.0.1:${s.port + 1}`);
    writeFileSync(s.file, yaml);
    expect(await s.reloader.reload('sighup')).toBe(true);
    expect(s.logs.some((l) => l.reason === 'needs_restart' && String(l.msg).includes('listen changed'))).toBe(true);
    // listen did not change, so neither did the rest of that listener's settings
    expect((await handshake2(s.port, s.ca.certPem, 'other.example.net')).error).toMatch(/UNRECOGNIZED_NAME/);
    writeFileSync(s.file, yaml.replace(`127.0.0.1:${s.port + 1}`, `127.0.0.1:${s.port}`));
    expect(await s.reloader.reload('sighup')).toBe(true);
    expect((await handshake2(s.port, s.ca.certPem, 'other.example.net')).error).toBeNull();
  });

  it('SIGHUP names a changed log format or backend check interval as needing a restart, and reloads the rest', async () => {
    const s = await setup();
    const yaml = readFileSync(s.file, 'utf8').replace('log: { level: info }', 'log: { level: info, format: text }\nbackendChecks: { interval: off }');
    writeFileSync(s.file, yaml);
    expect(await s.reloader.reload('sighup')).toBe(true);
    const restart = s.logs.filter((l) => l.reason === 'needs_restart').map((l) => l.msg);
    expect(restart).toEqual(['log changed: needs a restart; until then the old settings stay', 'backendChecks changed: needs a restart; until then the old settings stay']);
    // Still running with the old ones: the next reload names them again.
    expect(s.daemon.config.log).toEqual({ level: 'info', format: 'json' });
    expect(await s.reloader.reload('sighup')).toBe(true);
    expect(s.logs.filter((l) => l.reason === 'needs_restart')).toHaveLength(4);
  });
});

function handshake2(port: number, ca: string, servername: string): Promise<{ error: string | null }> {
  return new Promise((resolve) => {
    const s = tls.connect({ port, host: '127.0.0.1', servername, ca, rejectUnauthorized: false }, () => {
      s.destroy();
      resolve({ error: null });
    });
    s.on('error', (e: NodeJS.ErrnoException) => resolve({ error: e.code ?? e.message }));
  });
}

describe('kubernetes secret mount', () => {
  it('a ..data symlink swap is picked up once and the new certificate served', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'postern-k8s-'));
    const ca = await createCa();
    const mount = join(dir, 'tls');
    mkdirSync(mount);
    const version = async (n: number) => {
      const c = await issueCert(ca, { names: [NAME] });
      const v = join(mount, `..2026_11_28_00_00_0${n}.000`);
      mkdirSync(v);
      writeFileSync(join(v, 'tls.crt'), c.chainPem);
      writeFileSync(join(v, 'tls.key'), c.keyPem);
      return { name: `..2026_11_28_00_00_0${n}.000`, pem: c.certPem };
    };
    const v1 = await version(1);
    symlinkSync(v1.name, join(mount, '..data'));
    symlinkSync('..data/tls.crt', join(mount, 'tls.crt'));
    symlinkSync('..data/tls.key', join(mount, 'tls.key'));
    const backend = await startBackend();
    const port = await (async () => {
      const srv = net.createServer();
      await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
      const p = (srv.address() as net.AddressInfo).port;
      await new Promise((r) => srv.close(r));
      return p;
    })();
    const file = join(dir, 'postern.yaml');
    writeFileSync(file, `certificates:\n  - { cert: tls/tls.crt, key: tls/tls.key }\nlisteners:\n  - name: imaps\n    listen: "127.0.0.1:${port}"\n    protocol: tls\n    alpn: [imap]\n    tls: implicit\n    hostname: ${NAME}\n    backend: { address: "127.0.0.1:${backend.port}", proxyProtocol: v2 }\n`);
    const v = validateFile(file);
    if (!v.ok) throw new Error(JSON.stringify(v.errors));
    const quiet = new Writable({ write(_c, _e, cb) { cb(); } });
    const daemon = await Daemon.start({ config: v.config, store: v.store, log: createLogger('info', quiet) });
    const reloader = new Reloader({ file, daemon, log: createLogger('info', quiet), debounceMs: 150, retryDelayMs: 100 });
    reloader.watch(v.config);
    onTestFinished(async () => {
      reloader.unwatch();
      await daemon.stop();
      await backend.close();
    });
    expect(norm((await handshake(port, ca.certPem)).pem!)).toBe(norm(v1.pem));
    // The kubelet's atomic update: a new timestamped folder, then ..data renamed onto it.
    const v2 = await version(2);
    symlinkSync(v2.name, join(mount, '..data_tmp'));
    renameSync(join(mount, '..data_tmp'), join(mount, '..data'));
    const until = Date.now() + 5000;
    let served = '';
    while (Date.now() < until) {
      const r = await handshake(port, ca.certPem);
      expect(r.ok).toBe(true);
      served = norm(r.pem!);
      if (served === norm(v2.pem)) break;
      await new Promise((r2) => setTimeout(r2, 50));
    }
    expect(served).toBe(norm(v2.pem));
    const reloads = await daemon.metrics.reloads.get();
    expect(reloads.values.find((x) => x.labels.trigger === 'watch' && x.labels.result === 'ok')?.value).toBe(1);
  });
});

describe('what does not trigger a reload', () => {
  it('other files changing in a certificate folder (a log next to the PEMs) do not reload', async () => {
    const s = await setup();
    const log = join(s.dir, 'live', NAME, 'postern.log');
    for (let i = 0; i < 5; i++) {
      writeFileSync(log, `line ${i}\n`, { flag: 'a' });
      await new Promise((r) => setTimeout(r, 60));
    }
    await new Promise((r) => setTimeout(r, 400));
    const reloads = await s.daemon.metrics.reloads.get();
    expect(reloads.values.reduce((n, v) => n + v.value, 0)).toBe(0);
  });
});
