// The compiled CLI as a user meets it after `npm ci`: `npx postern --help`, `postern check` with
// a good file (several listeners, exact and wildcard certificates) and with several errors,
// `postern run` taking its file from POSTERN_CONFIG and stopping cleanly on SIGTERM and SIGINT.
// (cli-run.test.ts covers the same commands with other files; this one builds its own copy of the
// package so the two never write dist/ at the same time.)
import { describe, it, expect, beforeAll, afterAll, onTestFinished } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import net from 'node:net';
import { makePki, type TestPki } from '../helpers/certs.ts';
import { startBackend } from '../helpers/backend.ts';
import { freePort } from '../helpers/ports.ts';
import { tlsOk, readUntil } from '../helpers/clients.ts';

const ROOT = join(import.meta.dirname, '..', '..');
/**
 * A copy of the package: package.json, bin/, src/ with its tsconfigs, dist/ (built below) and
 * the repository's node_modules.
 */
let PKG: string;
let BIN: string;
let pki: TestPki;

beforeAll(async () => {
  PKG = mkdtempSync(join(tmpdir(), 'postern-cli-'));
  cpSync(join(ROOT, 'package.json'), join(PKG, 'package.json'));
  cpSync(join(ROOT, 'bin'), join(PKG, 'bin'), { recursive: true });
  cpSync(join(ROOT, 'src'), join(PKG, 'src'), { recursive: true });
  for (const f of ['tsconfig.json', 'tsconfig.build.json']) cpSync(join(ROOT, f), join(PKG, f));
  symlinkSync(join(ROOT, 'node_modules'), join(PKG, 'node_modules'));
  // The same compiler run as `npm run build`, into this folder's dist/. Type errors are the
  // typecheck step's business; what matters here is that the CLI is emitted.
  const tsc = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(PKG, 'tsconfig.build.json')], { encoding: 'utf8', cwd: PKG });
  if (!existsSync(join(PKG, 'dist', 'cli.js'))) throw new Error(`build emitted no dist/cli.js:\n${tsc.stdout}${tsc.stderr}`);
  BIN = join(PKG, 'bin', 'postern.js');
  pki = await makePki();
  await pki.issue('mail', { names: ['mail.example.org'] });
  await pki.issue('wild', { names: ['*.example.com'] });
}, 120_000);

afterAll(() => {
  if (!PKG) return;
  // npx keeps a link to this copy in its cache folder; drop that entry with the copy.
  const npxCache = join(homedir(), '.npm', '_npx');
  for (const entry of existsSync(npxCache) ? readdirSync(npxCache) : []) {
    const link = join(npxCache, entry, 'node_modules', 'postern');
    try {
      if (resolve(join(npxCache, entry, 'node_modules'), readlinkSync(link)) === PKG) rmSync(join(npxCache, entry), { recursive: true, force: true });
    } catch {
      // not a link to a postern copy
    }
  }
  rmSync(PKG, { recursive: true, force: true });
});

const cli = (args: string[], env: NodeJS.ProcessEnv = {}) =>
  spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', cwd: pki.dir, env: { ...process.env, ...env }, timeout: 30_000 });

/** A two-listener config: an SMTP listener on mail.example.org and a tls one on www.example.com. */
async function goodConfig(name: string) {
  const [smtpPort, httpsPort] = [await freePort(), await freePort()];
  const backend = await startBackend({ mode: 'smtp-echo' });
  onTestFinished(() => backend.close());
  const file = join(pki.dir, `${name}.yaml`);
  writeFileSync(file, `log:
  level: info
certificates:
  - cert: mail.pem
    key: mail.key
  - cert: wild.pem
    key: wild.key
listeners:
  - name: submissions
    listen: "127.0.0.1:${smtpPort}"
    protocol: smtp
    role: submission
    tls: implicit
    hostname: mail.example.org
    backend:
      address: "127.0.0.1:${backend.port}"
      proxyProtocol: v2
  - name: https
    listen: "127.0.0.1:${httpsPort}"
    protocol: tls
    tls: implicit
    hostname: www.example.com
    sni: fallback
    backend:
      address: "127.0.0.1:${backend.port}"
      proxyProtocol: none
`);
  return { file, smtpPort, httpsPort };
}

function refused(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

/** Starts `postern run`, resolves once every listener is bound (its "listening" log lines). */
async function run(args: string[], env: NodeJS.ProcessEnv, listeners: number) {
  const p = spawn(process.execPath, [BIN, 'run', ...args], { cwd: pki.dir, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  onTestFinished(() => {
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  });
  let out = '';
  let err = '';
  p.stdout.on('data', (d: Buffer) => (out += d.toString()));
  p.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
  const until = Date.now() + 15_000;
  while ((out.match(/"msg":"listening"/g) ?? []).length < listeners) {
    if (p.exitCode !== null) throw new Error(`postern run exited with ${p.exitCode}: ${err}`);
    if (Date.now() > until) throw new Error(`postern run did not listen: ${out}${err}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return { p, exited, out: () => out, err: () => err };
}

describe('postern cli', () => {
  it('npx postern --help works from the package folder', () => {
    // npx links the package into its cache (no build: the package has no prepare script).
    const r = spawnSync('npx', ['postern', '--help'], { cwd: PKG, encoding: 'utf8', timeout: 120_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('Usage: postern');
    for (const c of ['run', 'check', 'demo']) expect(r.stdout).toMatch(new RegExp(`^  ${c} `, 'm'));
  }, 150_000);

  it('postern check on a good file prints every listener with the certificate that serves it and exits 0', async () => {
    const g = await goodConfig('good-check');
    const r = cli(['check', '-c', g.file]);
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^listener submissions: 127\\.0\\.0\\.1:${g.smtpPort} smtp/implicit role=submission\n  hostname +mail\\.example\\.org\n  sni +strict\n`, 'm'));
    expect(r.stdout).toMatch(new RegExp(`^listener https: 127\\.0\\.0\\.1:${g.httpsPort} tls/implicit\n  hostname +www\\.example\\.com\n  sni +fallback\n  serverNames +any loaded certificate\n  alpn +off\n`, 'm'));
    expect(r.stdout).toMatch(/\(exact match\)\n\s+subject CN=mail\.example\.org; names mail\.example\.org\n\s+issuer CN=postern test CA; ECDSA P-256; not after \d{4}-\d\d-\d\dT[\d:.]+Z \(\d+ days left\)/);
    expect(r.stdout).toMatch(/\(wildcard match\)\n\s+subject CN=\*\.example\.com; names \*\.example\.com\n\s+issuer .*not after \d{4}-\d\d-\d\dT/);
    expect(r.stdout).toContain(': OK');
  });

  it('postern check prints every error of a file as file:line:col path: message and exits 1', () => {
    const file = join(pki.dir, 'two-errors.yaml');
    writeFileSync(file, `certificates:
  - cert: mail.pem
    key: mail.key
listeners:
  - name: submissions
    listen: "127.0.0.1:99999"
    protocol: smtp
    role: submission
    tls: implicit
    hostname: mail.example.org
    backend:
      address: "127.0.0.1:10465"
      proxyProtocol: v3
`);
    const r = cli(['check', '-c', file]);
    expect(r.status).toBe(1);
    const errors = (r.stdout + r.stderr).split('\n').filter((l) => l.startsWith('error: '));
    expect(errors).toHaveLength(2);
    expect(errors[0]).toMatch(/^error: \S*two-errors\.yaml:6:13 listeners\[0\]\.listen: .+/);
    expect(errors[1]).toMatch(/^error: \S*two-errors\.yaml:13:22 listeners\[0\]\.backend\.proxyProtocol: .*v3/);
    expect(r.stdout + r.stderr).toContain('2 error(s)');
  });

  it('postern run with a bad file exits 1, prints the errors on stderr and binds nothing', async () => {
    const port = await freePort();
    const file = join(pki.dir, 'bad-run.yaml');
    writeFileSync(file, `certificates:
  - cert: mail.pem
    key: mail.key
listeners:
  - name: submissions
    listen: "127.0.0.1:${port}"
    protocol: smtp
    role: submission
    tls: implicit
    hostname: nowhere.example.net
    sni: lenient
    backend:
      address: "127.0.0.1:10465"
      proxyProtocol: v2
`);
    const r = cli(['run', '-c', file]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/bad-run\.yaml:11:\d+ listeners\[0\]\.sni: /);
    expect(r.stdout).not.toContain('"listening"');
    expect(await refused(port)).toBe('ECONNREFUSED');
  });

  it('postern run takes its file from POSTERN_CONFIG, serves, and exits 0 on SIGTERM', async () => {
    const g = await goodConfig('good-env');
    const d = await run([], { POSTERN_CONFIG: g.file }, 2);
    const socket = await tlsOk(g.smtpPort, { ca: pki.ca.certPem, servername: 'mail.example.org', ALPNProtocols: ['smtp'] });
    socket.write('EHLO x\r\n');
    await readUntil(socket, '220 backend.test ESMTP\r\n');
    socket.destroy();
    d.p.kill('SIGTERM');
    expect(await d.exited).toBe(0);
    expect(await refused(g.smtpPort)).toBe('ECONNREFUSED');
    expect(await refused(g.httpsPort)).toBe('ECONNREFUSED');
  });

  it('postern run exits 0 on SIGINT', async () => {
    const g = await goodConfig('good-int');
    const d = await run(['-c', g.file], {}, 2);
    d.p.kill('SIGINT');
    expect(await d.exited).toBe(0);
    expect(d.out()).toContain('"signal":"SIGINT"');
  });
});
