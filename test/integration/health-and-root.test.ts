// `postern health` (the Docker image's HEALTHCHECK) against a running daemon's admin endpoint,
// and the one warning line `postern run` logs when it runs as root.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { buildOnce } from '../helpers/build.ts';
import { makePki, type TestPki } from '../helpers/certs.ts';
import { freePorts } from '../helpers/ports.ts';
import { healthUrl } from '../../src/commands/health.ts';
import { warnIfRoot } from '../../src/commands/run.ts';
import { createLogger } from '../../src/log.ts';

const BIN = join(import.meta.dirname, '..', '..', 'bin', 'postern.js');
let pki: TestPki;
let child: ChildProcess;
let stdout = '';
let cfg: string;
let adminPort: number;

const cli = (args: string[]) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', cwd: pki.dir, timeout: 20_000 });

beforeAll(async () => {
  buildOnce();
  pki = await makePki();
  await pki.issue('imap', { names: ['imap.example.org'] });
  const [port, admin, backend] = await freePorts(3);
  adminPort = admin!;
  cfg = join(pki.dir, 'postern.yaml');
  writeFileSync(
    cfg,
    `certificates:\n  - { cert: imap.pem, key: imap.key }\nlisteners:\n  - { name: imaps, listen: "127.0.0.1:${port}", protocol: imap, tls: implicit, hostname: imap.example.org, backend: { address: "127.0.0.1:${backend}", proxyProtocol: none } }\nadmin: { listen: "0.0.0.0:${adminPort}" }\n`,
  );
  child = spawn(process.execPath, [BIN, 'run', '-c', cfg], { cwd: pki.dir, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.resume();
  const deadline = Date.now() + 15_000;
  while (cli(['health', '-c', cfg]).status !== 0) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`postern did not come up:\n${stdout}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}, 40_000);

afterAll(async () => {
  if (child && child.exitCode === null) {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  }
  if (pki) rmSync(pki.dir, { recursive: true, force: true });
});

describe('postern health', () => {
  it('probes /healthz at admin.listen (a wildcard address on loopback) and exits 0 on 200', () => {
    const r = cli(['health', '-c', cfg]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(`postern health: http://127.0.0.1:${adminPort}/healthz 200\n`);
  });

  it('reads the file from POSTERN_CONFIG, as the image sets it', () => {
    const r = spawnSync(process.execPath, [BIN, 'health'], { encoding: 'utf8', cwd: '/', env: { ...process.env, POSTERN_CONFIG: cfg } });
    expect(r.status).toBe(0);
  });

  it('fails when nothing answers, and when the file cannot be read', () => {
    const down = join(pki.dir, 'down.yaml');
    writeFileSync(down, `admin: { listen: "127.0.0.1:1" }\n`);
    const r = cli(['health', '-c', down, '--timeout', '2000']);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('http://127.0.0.1:1/healthz ECONNREFUSED');
    expect(cli(['health', '-c', join(pki.dir, 'missing.yaml')]).status).toBe(1);
  });

  it('says there is nothing to probe, and exits 0, without an admin endpoint', () => {
    const none = join(pki.dir, 'none.yaml');
    writeFileSync(none, `listeners: []\n`);
    const r = cli(['health', '-c', none]);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('no admin endpoint');
  });

  it('maps wildcard addresses to loopback', () => {
    expect(healthUrl('0.0.0.0:9900')).toBe('http://127.0.0.1:9900/healthz');
    expect(healthUrl('[::]:9900')).toBe('http://[::1]:9900/healthz');
    expect(healthUrl('[2001:db8::1]:9900')).toBe('http://[2001:db8::1]:9900/healthz');
    expect(healthUrl('10.0.0.5:9900')).toBe('http://10.0.0.5:9900/healthz');
    expect(healthUrl('nonsense')).toBeNull();
  });
});

describe('running as root', () => {
  it('postern run logs one running_as_root warning when its uid is 0, none otherwise', async () => {
    // The log is buffered: read it after the daemon stopped.
    child.kill('SIGTERM');
    if (child.exitCode === null) await new Promise((r) => child.once('exit', r));
    const lines = stdout.split('\n').filter((l) => l.includes('"running_as_root"'));
    expect(lines.length).toBe(process.getuid!() === 0 ? 1 : 0);
    if (lines.length) expect(JSON.parse(lines[0]!)).toMatchObject({ reason: 'running_as_root' });
  });

  it('warnIfRoot warns for uid 0 only', () => {
    let out = '';
    const sink = new Writable({ write: (c, _e, cb) => ((out += c.toString()), cb()) });
    warnIfRoot(createLogger('info', sink), 1000);
    expect(out).toBe('');
    warnIfRoot(createLogger('info', sink), 0);
    expect(out).toContain('CAP_NET_BIND_SERVICE');
  });
});
