// Issue 15 against `postern run` as an admin runs it (the compiled CLI, a real process): log lines
// in the text format on stdout and nothing on stderr, the process and build metrics and the
// plaintext-session counter on /metrics, /readyz per listener, backend checks turned off, and a
// bind failure reported as a log line like any other.
import { describe, it, expect, beforeAll, onTestFinished } from 'vitest';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import net from 'node:net';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { startBackend } from '../helpers/backend.ts';
import { startMailBackend } from '../hostile/harness.ts';
import { freePort } from '../helpers/ports.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const BIN = join(ROOT, 'bin', 'postern.js');
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
let pki: TestPki;
let mail: CertFiles;

beforeAll(async () => {
  execFileSync('npm', ['run', 'build', '--silent'], { cwd: ROOT });
  pki = await makePki();
  mail = await pki.issue('obs', { names: ['mail.example.org'] });
}, 60_000);

interface Running {
  p: ChildProcess;
  /** Complete stdout lines so far. */
  out: string[];
  err: () => string;
  waitFor(pred: (line: string) => boolean, what: string): Promise<string>;
  stop(): Promise<number | null>;
}

function run(yaml: string): Running {
  const file = join(pki.dir, `obs-${Date.now()}-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, yaml);
  const p = spawn(process.execPath, [BIN, 'run', '-c', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out: string[] = [];
  let partial = '';
  let err = '';
  p.stdout!.setEncoding('utf8').on('data', (d: string) => {
    const parts = (partial + d).split('\n');
    partial = parts.pop()!;
    out.push(...parts);
  });
  p.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((r) => p.on('exit', (code) => r(code)));
  onTestFinished(() => {
    if (p.exitCode === null) p.kill('SIGKILL');
  });
  return {
    p,
    out,
    err: () => err,
    async waitFor(pred, what) {
      const until = Date.now() + 10_000;
      for (;;) {
        const hit = out.find(pred);
        if (hit !== undefined) return hit;
        if (Date.now() > until || p.exitCode !== null) throw new Error(`no line: ${what}; stdout:\n${out.join('\n')}\nstderr:\n${err}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async stop() {
      p.kill('SIGTERM');
      return exited;
    },
  };
}

/** Polls `url` until its status is `status` (backend checks run in the background). */
async function until(url: string, status: number): Promise<Response> {
  for (let i = 0; ; i++) {
    const res = await fetch(url);
    if (res.status === status || i >= 50) return res;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The value of the sample `name{labels}` in Prometheus text, exactly these labels. */
function sample(text: string, name: string, labels = ''): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels ? `{${labels}}` : ''} `));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

const TEXT_LINE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (TRACE|DEBUG|INFO|WARN|ERROR|FATAL) \S/;

describe('postern run (issue 15)', () => {
  it('log.format text: every stdout line is "<time> <LEVEL> <message> key=value", stderr stays empty; /metrics has the process, build and plaintext metrics; /readyz?listener=mx ignores a down IMAP backend', async () => {
    const backend = await startMailBackend('smtp');
    onTestFinished(() => backend.close());
    const [mxPort, imapPort, adminPort, nobody] = [await freePort(), await freePort(), await freePort(), await freePort()];
    const r = run(`log: { level: info, format: text }
admin: { listen: "127.0.0.1:${adminPort}" }
certificates: [{ cert: ${mail.cert}, key: ${mail.key} }]
listeners:
  - name: mx
    listen: "127.0.0.1:${mxPort}"
    protocol: smtp
    role: mx
    tls: starttls
    hostname: mail.example.org
    backend: { address: "127.0.0.1:${backend.port}", proxyProtocol: v2 }
  - name: imap
    listen: "127.0.0.1:${imapPort}"
    protocol: imap
    tls: implicit
    hostname: mail.example.org
    backend: { address: "127.0.0.1:${nobody}", proxyProtocol: v2 }
`);
    const listening = await r.waitFor((l) => / INFO listening .*listener=mx /.test(l), 'mx listening');
    expect(listening).toMatch(TEXT_LINE);
    expect(listening).toContain(`listen=127.0.0.1:${mxPort} protocol=smtp tls=starttls`);

    // A sender that never says STARTTLS: its session is handed to the backend in plaintext.
    const c = net.connect({ host: '127.0.0.1', port: mxPort });
    c.setEncoding('latin1');
    let got = '';
    c.on('data', (d: string) => (got += d));
    c.on('error', () => {});
    const wait = async (re: RegExp) => {
      for (let i = 0; i < 100 && !re.test(got); i++) await new Promise((res) => setTimeout(res, 50));
      expect(got).toMatch(re);
    };
    await wait(/^220 /m);
    c.write('EHLO sender.example\r\n');
    await wait(/^250 /m);
    c.write('MAIL FROM:<a@sender.example>\r\n');
    await wait(/^250 2\.0\.0 OK\r\n/m); // the backend's answer
    c.write('QUIT\r\n');
    await wait(/^221 /m);
    c.destroy();
    const closed = await r.waitFor((l) => / INFO connection closed .*listener=mx /.test(l), 'the summary line');
    expect(closed).toMatch(TEXT_LINE);
    expect(closed).toMatch(/ client=127\.0\.0\.1 .*closeReason=\w+/);
    // A field without a value is left out rather than written as null.
    expect(closed).not.toMatch(/=null\b/);

    const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    expect(sample(metrics, 'postern_plaintext_sessions_total', 'listener="mx"')).toBe(1);
    expect(sample(metrics, 'postern_build_info', `version="${VERSION}",node="${process.version}"`)).toBe(1);
    for (const name of ['process_cpu_user_seconds_total', 'process_resident_memory_bytes', 'process_open_fds', 'process_max_fds', 'process_start_time_seconds', 'nodejs_heap_size_used_bytes']) {
      expect(sample(metrics, name), name).toBeGreaterThan(0);
    }
    expect(sample(metrics, 'nodejs_eventloop_lag_seconds')).toBeGreaterThanOrEqual(0);
    expect(metrics).toMatch(/^nodejs_version_info\{.*\} 1$/m);
    const types = metrics.split('\n').filter((l) => l.startsWith('# TYPE '));
    expect(new Set(types).size).toBe(types.length);

    // The IMAP backend is down: the whole pod is not ready, the MX listener is.
    const mx = await until(`http://127.0.0.1:${adminPort}/readyz?listener=mx`, 200);
    expect(mx.status).toBe(200);
    expect(await mx.json()).toMatchObject({ ready: true, scope: ['mx'], backendChecks: { enabled: true, intervalMs: 30_000 } });
    const all = await until(`http://127.0.0.1:${adminPort}/readyz`, 503);
    expect(all.status).toBe(503);
    expect(((await all.json()) as { problems: string[] }).problems).toEqual([`backend 127.0.0.1:${nobody} (listener "imap") unreachable: ECONNREFUSED`]);
    // The check failure itself is a WARN line with its reason code.
    expect(await r.waitFor((l) => / WARN backend health check failed /.test(l), 'the failed check')).toContain(`backend=127.0.0.1:${nobody} reason=backend_unreachable error=ECONNREFUSED`);

    expect(await r.stop()).toBe(0);
    // Flushed on exit: the last line is there, and every line is one event in the text format.
    expect(r.out.at(-1)).toMatch(/ INFO stopped pid=\d+$/);
    for (const line of r.out) expect(line).toMatch(TEXT_LINE);
    expect(r.err()).toBe('');
  }, 30_000);

  it('backendChecks.interval off: no check reaches the backend, /readyz does not consider backends and says so; json lines are unchanged', async () => {
    const backend = await startBackend({ mode: 'echo', proxy: true });
    onTestFinished(() => backend.close());
    const [port, adminPort, nobody] = [await freePort(), await freePort(), await freePort()];
    const r = run(`admin: { listen: "127.0.0.1:${adminPort}" }
backendChecks: { interval: off }
certificates: [{ cert: ${mail.cert}, key: ${mail.key} }]
listeners:
  - name: a
    listen: "127.0.0.1:${port}"
    protocol: tls
    tls: implicit
    hostname: mail.example.org
    backend: { address: "127.0.0.1:${nobody}", proxyProtocol: v2 }
  - name: b
    listen: "127.0.0.1:${await freePort()}"
    protocol: tls
    tls: implicit
    hostname: mail.example.org
    backend: { address: "127.0.0.1:${backend.port}", proxyProtocol: v2 }
`);
    await r.waitFor((l) => l.includes('"msg":"admin endpoint listening"'), 'the admin endpoint');
    const ready = await fetch(`http://127.0.0.1:${adminPort}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ ready: true, scope: null, backendChecks: { enabled: false, intervalMs: null }, backends: [], problems: [] });
    expect((await fetch(`http://127.0.0.1:${adminPort}/readyz?listener=a`)).status).toBe(200);
    const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    expect(metrics).not.toContain('postern_backend_up{');
    await new Promise((res) => setTimeout(res, 300));
    expect(backend.connections).toHaveLength(0);
    expect(await r.stop()).toBe(0);
    for (const line of r.out) expect(() => JSON.parse(line) as unknown, line).not.toThrow();
    expect(JSON.parse(r.out.find((l) => l.includes('"msg":"listening"'))!)).toMatchObject({ level: 'info', listener: 'a', pid: r.p.pid });
    expect(r.err()).toBe('');
  }, 30_000);

  it('a listen address that is taken is one fatal log line on stdout (reason listen_failed), exit 1', async () => {
    const taken = net.createServer();
    await new Promise<void>((res) => taken.listen(0, '127.0.0.1', res));
    onTestFinished(() => new Promise<void>((res) => taken.close(() => res())));
    const port = (taken.address() as net.AddressInfo).port;
    const r = run(`log: { format: text }
certificates: [{ cert: ${mail.cert}, key: ${mail.key} }]
listeners:
  - name: a
    listen: "127.0.0.1:${port}"
    protocol: tls
    tls: implicit
    hostname: mail.example.org
    backend: { address: "127.0.0.1:${await freePort()}", proxyProtocol: v2 }
`);
    const code = await new Promise<number | null>((res) => (r.p.exitCode !== null ? res(r.p.exitCode) : r.p.on('exit', (c) => res(c))));
    expect(code).toBe(1);
    expect(r.out.find((l) => l.includes(' FATAL '))).toMatch(new RegExp(`FATAL cannot listen on 127\\.0\\.0\\.1:${port}: EADDRINUSE .*reason=listen_failed listen=127\\.0\\.0\\.1:${port} error=EADDRINUSE`));
    expect(r.err()).toBe('');
  }, 30_000);
});
