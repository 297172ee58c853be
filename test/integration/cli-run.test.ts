// The compiled CLI as an admin runs it: `postern check`, `postern explain`, and `postern run`
// with a good and a bad configuration, plus openssl s_client against the running daemon.
import { describe, it, expect, beforeAll } from 'vitest';
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import net from 'node:net';
import { makePki, type TestPki } from '../helpers/certs.ts';
import { startBackend } from '../helpers/backend.ts';
import { freePort } from '../helpers/ports.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const BIN = join(ROOT, 'bin', 'postern.js');
let pki: TestPki;
let good: string;
let bad: string;
let port: number;
let backendPort: number;

beforeAll(async () => {
  execFileSync('npm', ['run', 'build', '--silent'], { cwd: ROOT });
  pki = await makePki();
  await pki.issue('mail', { names: ['mail.example.org'] });
  const backend = await startBackend({ mode: 'smtp-echo' });
  backendPort = backend.port;
  port = await freePort();
  good = join(pki.dir, 'good.yaml');
  writeFileSync(good, `certificates:
  - cert: mail.pem
    key: mail.key
listeners:
  - name: submissions
    listen: "127.0.0.1:${port}"
    protocol: smtp
    role: submission
    tls: implicit
    hostname: mail.example.org
    backend: { address: "127.0.0.1:${backendPort}", proxyProtocol: v2 }
`);
  bad = join(pki.dir, 'bad.yaml');
  writeFileSync(bad, `certificates:
  - cert: mail.pem
    key: mail.key
listeners:
  - name: submissions
    listen: "127.0.0.1:${port}"
    protocol: smtp
    role: submission
    tls: implicit
    hostname: mail.example.org
    sni: lenient
    backend: { address: "127.0.0.1:${backendPort}" }
`);
}, 60_000);

const cli = (args: string[], env: NodeJS.ProcessEnv = {}) => spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, cwd: pki.dir });

describe('postern CLI', () => {
  it('--help lists the commands', () => {
    const r = cli(['--help']);
    expect(r.status).toBe(0);
    for (const c of ['run', 'check', 'explain', 'demo']) expect(r.stdout).toContain(c);
  });

  it('check on a good file prints the listener and its certificate and exits 0', () => {
    const r = cli(['check', '-c', good]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain(`listener submissions: 127.0.0.1:${port} smtp/implicit role=submission\n  hostname            mail.example.org\n  sni                 strict\n`);
    expect(r.stdout).toMatch(/subject CN=mail\.example\.org; names mail\.example\.org/);
    expect(r.stdout).toMatch(/ECDSA P-256; not after \d{4}-\d\d-\d\dT.*\(\d+ days left\)/);
  });

  it('check on a file with two errors prints both with file:line:col and path, exits 1', () => {
    const r = cli(['check', '-c', bad]);
    expect(r.status).toBe(1);
    expect(r.stdout).toContain('bad.yaml:11:10 listeners[0].sni: expected "strict" or "fallback", got "lenient"');
    expect(r.stdout).toMatch(/bad\.yaml:12:14 listeners\[0\]\.backend\.proxyProtocol: required but missing/);
  });

  it('POSTERN_CONFIG is used when -c is absent', () => {
    expect(cli(['check'], { POSTERN_CONFIG: good }).status).toBe(0);
  });

  it('explain tells what each SNI gets', () => {
    expect(cli(['explain', '-c', good, '--sni', 'mail.example.org']).stdout).toMatch(/submissions \[strict\] sni "mail\.example\.org": class exact -> served: .*mail\.pem/);
    expect(cli(['explain', '-c', good, '--sni', 'other.example.net']).stdout).toContain('refused: alert unrecognized_name (112)');
    expect(cli(['explain', '-c', good, '--alpn', 'h2']).stdout).toContain('refused: alert no_application_protocol (120)');
  });

  it('run with a bad file exits 1 with the errors on stderr and binds nothing', async () => {
    const r = cli(['run', '-c', bad]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('listeners[0].sni: expected "strict" or "fallback", got "lenient"');
    expect(r.stderr).toContain('nothing was started');
    await expect(connectOnce(port)).rejects.toThrow(/ECONNREFUSED/);
  });

  it('run serves openssl s_client, then SIGTERM stops it with exit 0', async () => {
    const p = spawn(process.execPath, [BIN, 'run', '-c', good], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const until = Date.now() + 10_000;
    while (!out.includes('"listening"') && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    const s = spawnSync('openssl', ['s_client', '-brief', '-connect', `127.0.0.1:${port}`, '-servername', 'mail.example.org', '-CAfile', pki.caFile, '-verify_return_error', '-alpn', 'smtp'], { input: 'QUIT\r\n', encoding: 'utf8', timeout: 10_000 });
    expect(s.stderr + s.stdout).toContain('Verification: OK');
    // bin/postern.js re-executed itself (same pid) with the V8 flags it needs (bench/NOTES.md).
    const argv = readFileSync(`/proc/${p.pid}/cmdline`, 'utf8').split('\0');
    expect(argv).toContain('--no-allocation-site-pretenuring');
    expect(argv).toContain('--scavenger-max-new-space-capacity-mb=8');
    const refused = spawnSync('openssl', ['s_client', '-brief', '-connect', `127.0.0.1:${port}`, '-servername', 'unknown.example.net', '-CAfile', pki.caFile], { input: '', encoding: 'utf8', timeout: 10_000 });
    expect(refused.stderr + refused.stdout).toMatch(/alert number 112|unrecognized name/);
    p.kill('SIGTERM');
    const code = await new Promise((r) => p.on('exit', r));
    expect(code).toBe(0);
    expect(out).toContain('"closeReason":"sni_refused"');
  });
});

function connectOnce(p: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect(p, '127.0.0.1', () => {
      s.destroy();
      resolve();
    });
    s.on('error', reject);
  });
}
