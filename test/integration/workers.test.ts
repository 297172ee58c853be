// workers: 2 — the supervisor forks two workers that share the listener; a worker killed with
// SIGKILL is replaced and logged while the other keeps serving; SIGTERM stops everything, exit 0.
import { describe, it, expect, beforeAll } from 'vitest';
import { spawn, execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
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

function handshake(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tls.connect({ port, host: '127.0.0.1', servername: 'mail.example.org', ca: pki.ca.certPem }, () => {
      // end(), not destroy(): our Finished must leave before the socket closes.
      s.end();
      resolve(true);
    });
    s.on('error', () => resolve(false));
    s.setTimeout(3000, () => {
      s.destroy();
      resolve(false);
    });
  });
}

describe('workers', () => {
  it('a killed worker is replaced while the other serves, and SIGTERM ends the supervisor with exit 0', async () => {
    const cert = await pki.issue('w', { names: ['mail.example.org'] });
    const backend = await startBackend({ proxy: false });
    const port = await freePort();
    const adminPort = await freePort();
    const file = join(pki.dir, 'workers.yaml');
    writeFileSync(file, `workers: 2
admin: { listen: "127.0.0.1:${adminPort}" }
certificates: [{ cert: ${cert.cert}, key: ${cert.key} }]
listeners:
  - name: t
    listen: "127.0.0.1:${port}"
    protocol: tls
    tls: implicit
    hostname: mail.example.org
    backend: { address: "127.0.0.1:${backend.port}", proxyProtocol: none }
`);
    const p = spawn(process.execPath, [join(ROOT, 'bin', 'postern.js'), 'run', '-c', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: Array<Record<string, unknown>> = [];
    p.stdout.setEncoding('utf8');
    let partial = '';
    p.stdout.on('data', (d: string) => {
      const parts = (partial + d).split('\n');
      partial = parts.pop()!;
      for (const l of parts) if (l) lines.push(JSON.parse(l));
    });
    const waitFor = async (pred: () => boolean, what: string) => {
      const until = Date.now() + 10_000;
      while (!pred()) {
        if (Date.now() > until) throw new Error(`timed out waiting for ${what}; log: ${JSON.stringify(lines)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    await waitFor(() => lines.filter((l) => l.msg === 'listening').length === 2, 'two workers listening');
    const workers = lines.filter((l) => l.msg === 'worker started').map((l) => l.pid as number);
    const workerPids = [...new Set(lines.filter((l) => l.msg === 'listening').map((l) => l.pid as number))];
    expect(workers).toHaveLength(2);
    expect(workerPids).toHaveLength(2);

    let ok = 0;
    for (let i = 0; i < 10; i++) if (await handshake(port)) ok++;
    expect(ok).toBe(10);
    // The supervisor's /metrics sums both workers; /readyz sees both workers' listeners.
    const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    expect(metrics.split("\n").filter((l) => l.startsWith("postern_handshakes_total")).join("\n")).toMatch(/^postern_handshakes_total\{listener="t",version="TLSv1\.3",result="ok"\} 10$/m);
    const readyz = async () => fetch(`http://127.0.0.1:${adminPort}/readyz`);
    let ready = await readyz();
    // Ready once both workers have reported their first backend check.
    for (let i = 0; i < 40 && ready.status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 100));
      ready = await readyz();
    }
    expect(ready.status).toBe(200);
    expect(((await ready.json()) as { listeners: unknown[] }).listeners).toHaveLength(2);
    expect((await fetch(`http://127.0.0.1:${adminPort}/readyz?listener=t`)).status).toBe(200);
    expect((await fetch(`http://127.0.0.1:${adminPort}/readyz?listener=nope`)).status).toBe(404);
    // Process metrics over two workers: CPU and memory summed, descriptors of the fullest worker
    // against the lowest limit (EMFILE is per process), one build_info, not one per worker.
    const sample = (text: string, name: string) => {
      const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
      return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
    };
    const again = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    expect(sample(again, 'postern_build_info')).toBe(1);
    expect(sample(again, 'nodejs_version_info')).toBe(1);
    expect(sample(again, 'process_resident_memory_bytes')).toBeGreaterThan(0);
    expect(sample(again, 'process_cpu_seconds_total')).toBeGreaterThan(0);
    const open = sample(again, 'process_open_fds')!;
    const max = sample(again, 'process_max_fds')!;
    expect(open).toBeGreaterThan(0);
    expect(open).toBeLessThan(max);
    expect(max).toBe(Number(execFileSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).trim()));
    const types = again.split('\n').filter((l) => l.startsWith('# TYPE '));
    expect(new Set(types).size).toBe(types.length);

    process.kill(workerPids[0]!, 'SIGKILL');
    await waitFor(() => lines.some((l) => l.msg === 'worker died; starting a replacement'), 'the death to be logged');
    // While the replacement starts, the surviving worker serves every new connection.
    let during = 0;
    for (let i = 0; i < 10; i++) if (await handshake(port)) during++;
    expect(during).toBe(10);
    await waitFor(() => lines.filter((l) => l.msg === 'listening').length === 3, 'the replacement listening');
    expect(lines.find((l) => l.msg === 'worker died; starting a replacement')).toMatchObject({ level: 'error', reason: 'worker_exit', signal: 'SIGKILL' });

    p.kill('SIGTERM');
    const code = await new Promise((r) => p.on('exit', r));
    expect(code).toBe(0);
    const drained = lines.filter((l) => l.msg === 'drained');
    expect(drained).toHaveLength(2);
    await backend.close();
  }, 60_000);
});
