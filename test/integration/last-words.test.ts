// Issue 15 item 6: when postern ends a TLS session itself (its last words, a timeout, a
// shutdown), the client gets a TLS close_notify before the FIN (RFC 8446 section 6.1: each party
// MUST send a close_notify before closing its write side), so that it can tell an orderly close
// from a truncation: no "unexpected eof while reading" from openssl s_client, 'end' before 'close'
// and no ECONNRESET in a Node client.
import { spawn } from 'node:child_process';
import net from 'node:net';
import tls from 'node:tls';
import { beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { makePki, type CertFiles, type TestPki } from '../helpers/certs.ts';
import { startPostern, type RunningPostern } from '../helpers/postern.ts';
import { startBackend } from '../helpers/backend.ts';
import { freePort } from '../helpers/ports.ts';

const NAME = 'mail.example.org';
let pki: TestPki;
let cert: CertFiles;

beforeAll(async () => {
  pki = await makePki();
  cert = await pki.issue('mail', { names: [NAME] });
});

async function postern(listener: string): Promise<{ p: RunningPostern; port: number }> {
  const port = await freePort();
  const p = await startPostern(pki.dir, `log: { level: debug }
certificates:
  - { cert: ${cert.cert}, key: ${cert.key} }
listeners:
  - name: l
    listen: "127.0.0.1:${port}"
    hostname: ${NAME}
    tls: implicit
${listener}`);
  onTestFinished(() => p.stop());
  return { p, port };
}

interface SClient {
  /** Everything s_client printed (stdout and stderr, hex dumps of -msg left out), once it exited. */
  output: Promise<string>;
  /** Resolves once the output so far matches. */
  waitFor(re: RegExp): Promise<void>;
}

/** openssl s_client with -msg (prints every record and alert it receives), stdin kept open (-ign_eof). */
function sClient(port: number): SClient {
  const c = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', NAME, '-CAfile', pki.caFile, '-verify_return_error', '-msg', '-ign_eof', '-crlf'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let waiters: Array<() => void> = [];
  const add = (d: Buffer) => {
    out += d.toString('latin1');
    for (const w of waiters.splice(0)) w();
  };
  c.stdout.on('data', add);
  c.stderr.on('data', add);
  const clean = () => out.split('\n').filter((l) => !/^ {4}[0-9a-f]{2} /.test(l)).join('\n');
  const output = new Promise<string>((resolve) => c.on('close', () => resolve(clean())));
  const timer = setTimeout(() => c.kill(), 20_000);
  void output.then(() => clearTimeout(timer));
  onTestFinished(() => {
    c.kill();
  });
  return {
    output,
    async waitFor(re) {
      while (!re.test(clean())) {
        if (c.exitCode !== null) throw new Error(`s_client exited before ${re}: ${clean()}`);
        await new Promise<void>((r) => waiters.push(r));
      }
    },
  };
}

/** s_client received postern's close_notify and saw no truncation. */
function expectOrderlyClose(out: string) {
  expect(out).toMatch(/^<<< TLS 1\.3, Alert \[length 0002\], warning close_notify$/m);
  expect(out).not.toMatch(/unexpected eof/i);
}

/** A Node TLS client that records the order of 'end', 'close' and errors, and what it read. */
function nodeClient(port: number, onData?: (s: tls.TLSSocket, text: string) => void): Promise<{ events: string[]; text: string }> {
  return new Promise((resolve) => {
    const events: string[] = [];
    let text = '';
    const s = tls.connect({ port, host: '127.0.0.1', servername: NAME, ca: pki.ca.certPem });
    s.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      onData?.(s, text);
    });
    s.on('end', () => events.push('end'));
    s.on('error', (e: NodeJS.ErrnoException) => events.push(`error ${e.code ?? e.message}`));
    s.on('close', () => {
      events.push('close');
      resolve({ events, text });
    });
  });
}

describe('last words over TLS end with close_notify, then FIN', () => {
  it('backend down on an implicit smtp listener: 421, close_notify (openssl s_client)', async () => {
    const { p, port } = await postern(`    protocol: smtp
    role: submission
    backend: { address: "127.0.0.1:${await freePort()}", proxyProtocol: v2 }
`);
    const out = await sClient(port).output;
    expect(out).toMatch(/^421 4\.3\.2 /m);
    expectOrderlyClose(out);
    expect(await p.summary()).toMatchObject({ closeReason: 'backend_unreachable' });
  });

  it("backend down on an implicit imap listener: a Node client reads the BYE, then 'end' before 'close', no reset", async () => {
    const { port } = await postern(`    protocol: imap
    backend: { address: "127.0.0.1:${await freePort()}", proxyProtocol: v2 }
`);
    const r = await nodeClient(port);
    expect(r.text).toMatch(/^\* BYE /);
    expect(r.events).toEqual(['end', 'close']);
  });

  it('a backend that never greets (timeouts.backendReply) on an implicit pop3 listener: -ERR, close_notify', async () => {
    const b = await startBackend({ mode: 'sink' });
    onTestFinished(() => b.close());
    const { p, port } = await postern(`    protocol: pop3
    timeouts: { backendReply: 1s }
    backend: { address: "127.0.0.1:${b.port}", proxyProtocol: v2 }
`);
    const out = await sClient(port).output;
    expect(out).toMatch(/^-ERR /m);
    expectOrderlyClose(out);
    expect(await p.summary()).toMatchObject({ closeReason: 'backend_reply_timeout' });
  });

  it('20 refused commands and a backend that ignores its FIN: after timeouts.backendReply the client gets 421, close_notify', async () => {
    // Greets, then neither answers nor closes: half-open for ever once postern has sent its FIN.
    const held: net.Socket[] = [];
    const server = net.createServer({ allowHalfOpen: true }, (sock) => {
      held.push(sock);
      sock.on('error', () => {});
      let header = true;
      sock.on('data', () => {
        if (header) sock.write('220 stuck.test ESMTP\r\n');
        header = false;
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    onTestFinished(() => {
      for (const s of held) s.destroy();
      server.close();
    });
    const { p, port } = await postern(`    protocol: smtp
    role: submission
    timeouts: { backendReply: 1s }
    backend: { address: "127.0.0.1:${(server.address() as net.AddressInfo).port}", proxyProtocol: v2 }
`);
    const started = Date.now();
    const r = await nodeClient(port, (s, text) => {
      if (text === '220 stuck.test ESMTP\r\n') s.write('STARTTLS\r\n'.repeat(25));
    });
    expect(r.text).toMatch(new RegExp(`^220 stuck\\.test ESMTP\\r\\n(503 5\\.5\\.1 TLS already active\\r\\n){20}421 4\\.7\\.0 ${NAME.replace(/\./g, '\\.')} Too many errors\\r\\n$`));
    expect(r.events).toEqual(['end', 'close']);
    // The 421 waited for the backend's deadline, since this backend never closes.
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    expect(await p.summary()).toMatchObject({ closeReason: 'too_many_errors', refused: 20 });
  });

  it('idle timeout on a raw tls listener: close_notify (openssl s_client)', async () => {
    const b = await startBackend({ mode: 'echo' });
    onTestFinished(() => b.close());
    const { p, port } = await postern(`    protocol: tls
    timeouts: { idle: 1s }
    backend: { address: "127.0.0.1:${b.port}", proxyProtocol: v2 }
`);
    const out = await sClient(port).output;
    expectOrderlyClose(out);
    expect(await p.summary()).toMatchObject({ closeReason: 'idle_timeout' });
  });

  it('shutdown (drain timeout) of a spliced implicit smtp session: close_notify (openssl s_client and Node)', async () => {
    const b = await startBackend({ mode: 'smtp-echo' });
    onTestFinished(() => b.close());
    const { p, port } = await postern(`    protocol: smtp
    role: submission
    backend: { address: "127.0.0.1:${b.port}", proxyProtocol: v2 }
`);
    const c = sClient(port);
    await c.waitFor(/^220 backend\.test ESMTP/m);
    const node = nodeClient(port);
    await b.waitForData(0, 1);
    expect(await p.daemon.drain(200)).toEqual({ drained: 0, closed: 2 });
    const out = await c.output;
    expectOrderlyClose(out);
    const r = await node;
    expect(r.text).toMatch(/^220 backend\.test ESMTP/);
    expect(r.events).toEqual(['end', 'close']);
  });
});
