// The listener role decides the SMTP defaults, never the port number (issue 15). Before it, an
// MX on 2525 (behind `-p 25:2525`) answered a plaintext sender's MAIL FROM with 530, a permanent
// error, and the mail bounced; a submission listener off port 587 fell back on an unknown SNI.
// Real clients (swaks, openssl s_client) against a running postern on high ports.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import net from 'node:net';
import { makePki, type TestPki } from '../helpers/certs.ts';
import { freePort } from '../helpers/ports.ts';
import { startPostern, type RunningPostern } from '../helpers/postern.ts';
import type { RecordingBackend } from '../helpers/backend.ts';
import { startMailBackend } from '../hostile/harness.ts';

let pki: TestPki;
let backend: RecordingBackend;
let p: RunningPostern;

/** A child process, run without blocking this process's event loop (the daemon runs in it). */
function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { encoding: 'utf8', timeout: 20_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, out: stdout + stderr });
    });
    child.stdin?.end(); // s_client ends the session at EOF on its input
  });
}

/** Reads whole SMTP replies (up to the line "NNN text") from a socket, one per call. */
function replies(c: net.Socket): () => Promise<string> {
  let buf = '';
  let wake: (() => void) | null = null;
  c.on('data', (d: Buffer) => {
    buf += d.toString('latin1');
    wake?.();
  });
  return async () => {
    const until = Date.now() + 5000;
    for (;;) {
      const m = /^\d{3} [^\r\n]*\r\n/m.exec(buf);
      if (m) {
        const end = m.index + m[0].length;
        const out = buf.slice(0, end);
        buf = buf.slice(end);
        return out;
      }
      if (Date.now() > until) throw new Error(`no complete reply: ${JSON.stringify(buf)}`);
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 100);
      });
    }
  };
}

beforeAll(async () => {
  pki = await makePki();
  const mail = await pki.issue('mail', { names: ['mail.example.org'] });
  backend = await startMailBackend('smtp');
  // Neither listener has an sni or requireTls key: what they do comes from the role alone.
  p = await startPostern(
    pki.dir,
    `log: { level: debug }
certificates:
  - { cert: ${mail.cert}, key: ${mail.key} }
listeners:
  - name: mx
    listen: "127.0.0.1:${await freePort()}"
    protocol: smtp
    role: mx
    tls: starttls
    hostname: mail.example.org
    backend: { address: "127.0.0.1:${backend.port}", proxyProtocol: v2 }
  - name: sub
    listen: "127.0.0.1:${await freePort()}"
    protocol: smtp
    role: submission
    tls: starttls
    hostname: mail.example.org
    backend: { address: "127.0.0.1:${backend.port}", proxyProtocol: v2 }
`,
  );
}, 30_000);

afterAll(async () => {
  await p?.stop();
  await backend?.close();
});

describe('role: mx on a port that is not 25', () => {
  it('swaks without TLS delivers: 250 to MAIL FROM and to the message, never 530 (RFC 3207 section 4)', async () => {
    const port = p.port('mx');
    expect(port).not.toBe(25);
    const r = await run('swaks', ['--server', '127.0.0.1', '--port', String(port), '--helo', 'sender.example.net', '--from', 's@example.net', '--to', 'r@example.org', '--timeout', '10']);
    expect(r.code, r.out).toBe(0);
    expect(r.out).not.toMatch(/530/);
    expect(r.out).not.toMatch(/TLS started/);
    expect(r.out).toMatch(/^ -> MAIL FROM:<s@example\.net>\n<-  250 /m);
    expect(r.out).toMatch(/^<-  250 2\.0\.0 queued$/m);
    expect(backend.connections.some((c) => c.data.toString().includes('MAIL FROM:<s@example.net>'))).toBe(true);
    expect(await p.summary((l) => l.listener === 'mx')).toMatchObject({ tlsVersion: null, backend: `127.0.0.1:${backend.port}` });
  });

  it('an unknown SNI gets the hostname certificate (sni fallback, RFC 8461 section 5)', async () => {
    const r = await run('openssl', ['s_client', '-starttls', 'smtp', '-connect', `127.0.0.1:${p.port('mx')}`, '-servername', 'unknown.example.net', '-CAfile', pki.caFile, '-brief']);
    expect(r.out).toMatch(/Peer certificate: CN ?= ?mail\.example\.org/);
    expect(await p.summary((l) => l.listener === 'mx' && l.sni === 'unknown.example.net')).toMatchObject({ sniClass: 'unknown', decision: 'fallback', servedName: 'mail.example.org' });
  });
});

describe('role: submission on a port that is not 587, without an sni key', () => {
  it('openssl s_client -starttls smtp with an unknown SNI gets alert unrecognized_name (112)', async () => {
    const r = await run('openssl', ['s_client', '-starttls', 'smtp', '-connect', `127.0.0.1:${p.port('sub')}`, '-servername', 'unknown.example.net', '-CAfile', pki.caFile, '-brief']);
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/alert number 112|unrecognized name/);
    expect(await p.summary((l) => l.listener === 'sub' && l.sni === 'unknown.example.net')).toMatchObject({ decision: 'refused', closeReason: 'sni_refused', backend: null });
  });

  it('refuses MAIL FROM before STARTTLS with 530 5.7.0 (swaks without TLS, and a raw socket)', async () => {
    const mailsBefore = backend.connections.filter((b) => b.data.toString().includes('MAIL FROM')).length;
    const r = await run('swaks', ['--server', '127.0.0.1', '--port', String(p.port('sub')), '--from', 's@example.net', '--to', 'r@example.org', '--quit-after', 'MAIL', '--timeout', '10']);
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/^<\*\* +530 5\.7\.0 Must issue a STARTTLS command first$/m);

    const c = net.connect(p.port('sub'), '127.0.0.1');
    const reply = replies(c);
    expect(await reply()).toBe('220 mail.example.org ESMTP\r\n');
    c.write('EHLO client.example.net\r\n');
    const ehlo = await reply();
    expect(ehlo).toMatch(/^250[- ]STARTTLS\r$/m);
    expect(ehlo).not.toMatch(/AUTH/); // not announced before TLS on a listener that requires it
    c.write('MAIL FROM:<s@example.net>\r\n');
    expect(await reply()).toBe('530 5.7.0 Must issue a STARTTLS command first\r\n');
    c.destroy();
    // Neither session reached the backend (the mx test's delivery is the only MAIL it saw).
    expect(backend.connections.filter((b) => b.data.toString().includes('MAIL FROM'))).toHaveLength(mailsBefore);
  });
});
