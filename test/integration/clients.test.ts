// Real external clients against a running postern: openssl s_client (strict refusal, verified
// chain and the backend's greeting, fallback, ALPACA refusal) and curl through a `protocol: tls`
// listener to small HTTP/1.1 and HTTP/2 backends.
import { describe, it, expect, beforeAll, onTestFinished } from 'vitest';
import { spawn } from 'node:child_process';
import http from 'node:http';
import http2 from 'node:http2';
import type net from 'node:net';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { scenario } from '../helpers/scenario.ts';

let pki: TestPki;
let certs: CertFiles[];

beforeAll(async () => {
  pki = await makePki();
  certs = [await pki.issue('mail', { names: ['mail.example.org'] }), await pki.issue('wild-com', { names: ['*.example.com'] })];
});

/**
 * Runs a client to completion without blocking: postern runs in this process, so a synchronous
 * spawn would stall the very server the client talks to.
 */
function runClient(cmd: string, args: string[], input = ''): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`${cmd} did not finish:\n${stdout}\n${stderr}`));
    }, 20_000);
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.once('exit', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
    p.stdin.end(input);
  });
}

/** openssl s_client with stdin closed at once: enough for a handshake that is refused. */
async function sClient(port: number, args: string[]) {
  const r = await runClient('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, ...args]);
  return { status: r.status, output: `${r.stdout}\n${r.stderr}` };
}

/** openssl s_client kept open until `want` appears in its output, then stdin is closed. */
function sClientUntil(port: number, args: string[], want: string): Promise<{ status: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`openssl never printed ${JSON.stringify(want)}:\n${output}`));
    }, 20_000);
    const onData = (d: Buffer) => {
      output += d.toString();
      if (output.includes(want)) p.stdin.end();
    };
    p.stdout.on('data', onData);
    p.stderr.on('data', onData);
    p.once('exit', (status) => {
      clearTimeout(timer);
      resolve({ status, output });
    });
  });
}

function curl(args: string[]) {
  return runClient('curl', ['--silent', '--show-error', '--max-time', '15', ...args]);
}

async function listen(server: net.Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  onTestFinished(() => new Promise<void>((r) => server.close(() => r())));
  return (server.address() as net.AddressInfo).port;
}

describe('openssl s_client', () => {
  it('openssl s_client with an unknown name on a strict listener gets alert 112', async () => {
    const s = await scenario(pki, { certs, listener: { sni: 'strict' } });
    const r = await sClient(s.port, ['-servername', 'unknown.example.net', '-CAfile', pki.caFile]);
    expect(r.output).toMatch(/SSL alert number 112/);
    expect(r.output).toMatch(/unrecognized name/);
    expect(r.status).not.toBe(0);
    expect(await s.postern.summary()).toMatchObject({ sni: 'unknown.example.net', decision: 'refused', closeReason: 'sni_refused' });
    expect(s.backend!.connections).toHaveLength(0);
  });

  it('openssl s_client verifies the chain for mail.example.org and reads the backend greeting', async () => {
    const s = await scenario(pki, { certs, listener: { sni: 'strict' }, backend: { mode: 'smtp-echo', greeting: '220 backend.test ESMTP ready\r\n' } });
    const r = await sClientUntil(s.port, ['-brief', '-servername', 'mail.example.org', '-CAfile', pki.caFile, '-verify_return_error', '-alpn', 'smtp'], '220 backend.test ESMTP ready');
    expect(r.output).toContain('Verification: OK');
    expect(r.output).toMatch(/Peer certificate: CN ?= ?mail\.example\.org/);
    expect(r.status).toBe(0);
    expect(await s.postern.summary()).toMatchObject({ sniClass: 'exact', decision: 'served', alpn: 'smtp' });
    expect(s.backend!.connections[0]!.header).toMatchObject({ authority: 'mail.example.org', alpn: 'smtp' });
  });

  it('openssl s_client with the bare domain on a fallback listener gets the hostname certificate, verified', async () => {
    const s = await scenario(pki, { certs, listener: { sni: 'fallback' }, backend: { mode: 'smtp-echo' } });
    const r = await sClientUntil(s.port, ['-brief', '-servername', 'example.org', '-CAfile', pki.caFile, '-verify_return_error'], '220 backend.test ESMTP');
    expect(r.output).toContain('Verification: OK');
    expect(r.output).toMatch(/Peer certificate: CN ?= ?mail\.example\.org/);
    expect(await s.postern.summary()).toMatchObject({ sni: 'example.org', sniClass: 'unknown', decision: 'fallback' });
  });

  it('openssl s_client offering h2 to an smtp listener gets alert 120', async () => {
    const s = await scenario(pki, { certs, listener: { sni: 'fallback' } });
    const r = await sClient(s.port, ['-servername', 'mail.example.org', '-alpn', 'h2', '-CAfile', pki.caFile]);
    expect(r.output).toMatch(/SSL alert number 120/);
    expect(r.output).toMatch(/no application protocol/);
    expect(await s.postern.summary()).toMatchObject({ closeReason: 'alpn_refused' });
    expect(s.backend!.connections).toHaveLength(0);
  });
});

describe('curl', () => {
  const body = 'hello from behind postern\n';

  it('curl over http/1.1 through a tls listener reaches a node:http backend', async () => {
    const backendPort = await listen(http.createServer((req, res) => res.end(`${body}${req.headers.host}\n`)));
    const s = await scenario(pki, { certs, listener: { protocol: 'tls', hostname: 'www.example.com', alpn: ['h2', 'http/1.1'], proxyProtocol: 'none', backendPort } });
    const url = `https://www.example.com:${s.port}/`;
    const r = await curl(['--http1.1', '--cacert', pki.caFile, '--resolve', `www.example.com:${s.port}:127.0.0.1`, '-w', '%{http_version}', url]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe(`${body}www.example.com:${s.port}\n1.1`);
    expect(await s.postern.summary()).toMatchObject({ sni: 'www.example.com', sniClass: 'wildcard', alpn: 'http/1.1', closeReason: 'done' });
  });

  it('curl offering h2 gets h2 selected and reaches an http/2 backend', async () => {
    // postern terminates TLS; the backend speaks HTTP/2 in cleartext (prior knowledge).
    const backendPort = await listen(http2.createServer((_req, res) => res.end(body)));
    const s = await scenario(pki, { certs, listener: { protocol: 'tls', hostname: 'www.example.com', alpn: ['h2', 'http/1.1'], proxyProtocol: 'none', backendPort } });
    const r = await curl(['--cacert', pki.caFile, '--resolve', `www.example.com:${s.port}:127.0.0.1`, '-w', '%{http_version}', `https://www.example.com:${s.port}/`]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe(`${body}2`);
    expect(await s.postern.summary()).toMatchObject({ alpn: 'h2', closeReason: 'done' });
  });

  it('curl to a strict listener with an unknown name fails with exit 35', async () => {
    const s = await scenario(pki, { certs, listener: { protocol: 'tls', hostname: 'www.example.com', sni: 'strict', proxyProtocol: 'none' } });
    const r = await curl(['--cacert', pki.caFile, '--resolve', `unknown.example.net:${s.port}:127.0.0.1`, `https://unknown.example.net:${s.port}/`]);
    expect(r.status).toBe(35);
    expect(r.stderr).toMatch(/unrecognized name/);
    expect(await s.postern.summary()).toMatchObject({ sni: 'unknown.example.net', closeReason: 'sni_refused' });
    expect(s.backend!.connections).toHaveLength(0);
  });

  it('curl to a mail listener is refused with alert 120 (ALPACA)', async () => {
    const s = await scenario(pki, { certs, listener: { protocol: 'smtp', hostname: 'mail.example.org', sni: 'fallback' } });
    const r = await curl(['--cacert', pki.caFile, '--resolve', `mail.example.org:${s.port}:127.0.0.1`, `https://mail.example.org:${s.port}/`]);
    expect(r.status).toBe(35);
    expect(r.stderr).toMatch(/no application protocol/);
    expect(s.backend!.connections).toHaveLength(0);
  });
});
