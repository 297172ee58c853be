// `postern demo` as a user runs it: the compiled CLI, its throwaway CA made with the openssl
// command, and the printed openssl s_client commands working against it.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { buildOnce } from '../helpers/build.ts';

const ROOT = join(import.meta.dirname, '..', '..');
// A loopback address of its own, so the demo's fixed ports (8460-8463) are free whatever else runs.
const HOST = `127.0.${84 + Math.floor(Math.random() * 100)}.${2 + Math.floor(Math.random() * 200)}`;
let child: ChildProcess;
let stdout = '';
let ca = '';

beforeAll(async () => {
  buildOnce();
  child = spawn(process.execPath, [join(ROOT, 'bin', 'postern.js'), 'demo', '--host', HOST], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.resume();
  const deadline = Date.now() + 20_000;
  while (!/Ctrl-C stops the demo/.test(stdout)) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`the demo did not start:\n${stdout}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  ca = /from a throwaway CA: (\S+)/.exec(stdout)![1]!;
}, 30_000);

afterAll(async () => {
  if (child && child.exitCode === null) {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  }
});

const sClient = (port: number, servername: string) =>
  spawnSync('openssl', ['s_client', '-brief', '-verify_return_error', '-connect', `${HOST}:${port}`, '-servername', servername, '-CAfile', ca], { input: 'QUIT\r\n', encoding: 'utf8', timeout: 10_000 });

describe('postern demo', () => {
  it('writes a CA that openssl verifies the served certificates against', () => {
    expect(existsSync(ca)).toBe(true);
    const mail = sClient(8461, 'mail.example.org');
    expect(mail.stderr).toContain('Verification: OK');
    expect(mail.stderr).toContain('Peer certificate: CN = mail.example.org');
    const wild = sClient(8461, 'www.example.com');
    expect(wild.stderr).toContain('Verification: OK');
    expect(wild.stderr).toContain('Peer certificate: CN = *.example.com');
  });

  it('keeps the private keys private and the CA key nowhere', () => {
    const dir = join(ca, '..');
    for (const k of ['mail.key', 'wild.key']) expect(statSync(join(dir, k)).mode & 0o077).toBe(0);
    expect(existsSync(join(dir, 'ca.key'))).toBe(false);
  });

  it('refuses an unknown name on the strict listener with alert 112', () => {
    const r = sClient(8461, 'other.example.net');
    expect(r.stderr).toMatch(/unrecognized name|alert number 112/);
  });

  it('removes its folder when stopped', async () => {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    expect(existsSync(join(ca, '..'))).toBe(false);
  });
});
