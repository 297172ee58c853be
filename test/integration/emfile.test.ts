// Running out of descriptors (EMFILE): postern, started with a 64-descriptor limit, is flooded
// with far more connections than it can hold. It must neither crash nor spin, must keep the
// sessions it holds, and must serve a new client once descriptors are free again.
import { describe, it, expect, beforeAll } from 'vitest';
import { spawn, execFileSync } from 'node:child_process';
import { writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import net from 'node:net';
import tls from 'node:tls';
import { makePki, type TestPki } from '../helpers/certs.ts';
import { startBackend } from '../helpers/backend.ts';
import { freePort } from '../helpers/ports.ts';

const ROOT = join(import.meta.dirname, '..', '..');
let pki: TestPki;

beforeAll(async () => {
  execFileSync('npm', ['run', 'build', '--silent'], { cwd: ROOT });
  pki = await makePki();
}, 60_000);

/** User plus system CPU time of a process so far, in ms (from /proc). */
function cpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100;
}

function handshake(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tls.connect({ port, host: '127.0.0.1', servername: 'mail.example.org', ca: pki.ca.certPem }, () => {
      s.end();
      resolve(true);
    });
    s.on('error', () => resolve(false));
    s.setTimeout(2000, () => {
      s.destroy();
      resolve(false);
    });
  });
}

describe('descriptor exhaustion', () => {
  it('a flood past the descriptor limit neither crashes nor spins, and postern serves again once descriptors are free', async () => {
    const cert = await pki.issue('e', { names: ['mail.example.org'] });
    const backend = await startBackend({ proxy: false });
    const port = await freePort();
    const file = join(pki.dir, 'emfile.yaml');
    writeFileSync(file, `certificates: [{ cert: ${cert.cert}, key: ${cert.key} }]
limits: { maxConnections: 100000, maxConnectionsPerClient: 100000 }
listeners:
  - name: t
    listen: "127.0.0.1:${port}"
    protocol: tls
    tls: implicit
    hostname: mail.example.org
    timeouts: { handshake: 60s }
    backend: { address: "127.0.0.1:${backend.port}", proxyProtocol: none }
`);
    const p = spawn('prlimit', ['--nofile=64', process.execPath, join(ROOT, 'bin', 'postern.js'), 'run', '-c', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    let exited = false;
    p.on('exit', () => (exited = true));
    const until = Date.now() + 10_000;
    while (!out.includes('"listening"') && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    expect(await handshake(port)).toBe(true);

    // 200 idle connections that never send a byte: far more than 64 descriptors.
    const flood: net.Socket[] = [];
    for (let i = 0; i < 200; i++) {
      const s = net.connect(port, '127.0.0.1');
      s.on('error', () => {});
      flood.push(s);
    }
    await new Promise((r) => setTimeout(r, 1000));
    const cpuBefore = cpuMs(p.pid!);
    await new Promise((r) => setTimeout(r, 1000));
    const cpuSpent = cpuMs(p.pid!) - cpuBefore;
    expect(exited).toBe(false);
    // A spinning accept loop would burn the whole second; an idle one a few ms.
    expect(cpuSpent).toBeLessThan(300);

    for (const s of flood) s.destroy();
    await new Promise((r) => setTimeout(r, 500));
    let served = false;
    for (let i = 0; i < 20 && !served; i++) served = await handshake(port);
    expect(served).toBe(true);
    expect(exited).toBe(false);
    p.kill('SIGTERM');
    expect(await new Promise((r) => (exited ? r(0) : p.on('exit', r)))).toBe(0);
    await backend.close();
  }, 60_000);
});
