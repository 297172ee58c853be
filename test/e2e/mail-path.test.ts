// postern in front of real Postfix and Dovecot (issue 3's proof): swaks, openssl s_client and
// curl as clients, STARTTLS on SMTP/IMAP/POP3, PROXY v2 to the backends, the client address the
// backends log, Dovecot's "secured", strict refusal, fallback, and STARTTLS injection.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import net from 'node:net';
import tls from 'node:tls';
import { spawn } from 'node:child_process';
import { freePorts, requireProgram, requireRoot, run, startDovecot, startPostfix } from './harness/index.ts';
import type { DovecotHandle, PostfixHandle } from './harness/index.ts';
import { makePki, type TestPki } from '../helpers/certs.ts';
import { startPostern, type RunningPostern } from '../helpers/postern.ts';

const CLIENT = '127.0.0.2';
let pki: TestPki;
let pf: PostfixHandle;
let dc: DovecotHandle;
let postern: RunningPostern;
const port: Record<string, number> = {};

beforeAll(async () => {
  for (const p of ['postfix', 'dovecot', 'doveadm', 'swaks', 'openssl', 'curl']) requireProgram(p);
  requireRoot();
  pki = await makePki();
  const cert = await pki.issue('mail', { names: ['mail.example.org'] });
  const [smtp, sub, imap, pop3, l25, l587, l143, l110, l143s] = await freePorts(9);
  [pf, dc] = await Promise.all([
    startPostfix({ smtpPort: smtp!, submissionPort: sub!, proxyProtocol: 'haproxy' }),
    startDovecot({ imapPort: imap!, pop3Port: pop3!, haproxy: true, sslRequired: true }),
  ]);
  Object.assign(port, { smtp: l25, submission: l587, imap: l143, pop3: l110, imapStrict: l143s });
  const l = (name: string, p: number, protocol: string, backend: number, extra = '') => `
  - name: ${name}
    listen: "127.0.0.1:${p}"
    protocol: ${protocol}
    tls: starttls
    hostname: mail.example.org
    backend: { address: "127.0.0.1:${backend}", proxyProtocol: v2 }
${extra}`;
  postern = await startPostern(pki.dir, `log: { level: debug }
certificates:
  - { cert: ${cert.cert}, key: ${cert.key} }
listeners:${l('smtp', l25!, 'smtp', smtp!, '    requireTls: false')}${l('submission', l587!, 'smtp', sub!, '    requireTls: true')}${l('imap', l143!, 'imap', imap!, '    sni: fallback')}${l('pop3', l110!, 'pop3', pop3!)}${l('imap-strict', l143s!, 'imap', imap!, '    sni: strict')}`);
}, 60_000);

afterAll(async () => {
  await postern?.stop();
  await Promise.all([pf?.stop(), dc?.stop()]);
});

function swaks(args: string[]) {
  return run('swaks', ['--server', '127.0.0.1', '--local-interface', CLIENT, '--from', 'sender@example.net', '--to', 'rcpt@example.org', '--timeout', '15', ...args], 30_000);
}

describe('SMTP through postern to Postfix', () => {
  for (const [label, sni] of [['the listener hostname', 'mail.example.org'], ['the bare domain (as MDaemon sends it)', 'example.org'], ['no sni', null]] as const) {
    it(`swaks delivers over STARTTLS with sni ${label}, and Postfix logs the client's own address`, async () => {
      const token = randomUUID();
      const tlsArgs = ['--tls', '--tls-ca-path', pki.caFile, ...(sni ? ['--tls-sni', sni] : [])];
      const r = await swaks(['--port', String(port.smtp), '--header', `Subject: ${token}`, ...tlsArgs]);
      expect(r.code, r.stdout + r.stderr).toBe(0);
      expect(r.stdout).toMatch(/<-\s+220 2\.0\.0 Ready to start TLS/);
      expect(r.stdout).toMatch(/=== TLS started with cipher TLSv1\.3/);
      await pf.waitForMailbox('rcpt', new RegExp(`Subject: ${token}`));
      await pf.waitForLog(new RegExp(`connect from unknown\\[${CLIENT.replace(/\./g, '\\.')}\\]`));
      const summary = await postern.summary((s) => s.listener === 'smtp' && s.tlsVersion === 'TLSv1.3' && s.sni === sni);
      // swaks may end with a TCP reset after QUIT (it closes with the 221 unread): either is fine.
      expect(['done', 'client_error']).toContain(summary.closeReason);
      expect(summary).toMatchObject({ servedName: 'mail.example.org', client: CLIENT, sniClass: sni === null ? 'none' : sni === 'example.org' ? 'unknown' : 'exact', decision: sni === 'example.org' ? 'fallback' : 'served' });
    });
  }

  it('swaks delivers in plaintext on the port-25 listener (RFC 3207: a public MX must not require TLS)', async () => {
    const token = randomUUID();
    const r = await swaks(['--port', String(port.smtp), '--header', `Subject: ${token}`]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const box = await pf.waitForMailbox('rcpt', new RegExp(`Subject: ${token}`));
    expect(box).toBeTruthy();
    const text = await pf.mailboxText('rcpt');
    const msg = text.slice(text.lastIndexOf('Return-Path', text.indexOf(token)));
    expect(msg).toContain(`unknown [${CLIENT}]`);
  });

  it('the submission listener refuses MAIL before STARTTLS with 530 and delivers after it', async () => {
    const plain = await swaks(['--port', String(port.submission), '--quit-after', 'MAIL']);
    expect(plain.stdout).toMatch(/<\*\* 530 5\.7\.0 Must issue a STARTTLS command first/);
    const token = randomUUID();
    const ok = await swaks(['--port', String(port.submission), '--tls', '--tls-ca-path', pki.caFile, '--tls-sni', 'mail.example.org', '--header', `Subject: ${token}`]);
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    await pf.waitForMailbox('rcpt', new RegExp(`Subject: ${token}`));
  });

  it('EHLO before TLS lists Postfix\'s own extensions plus STARTTLS; after TLS, Postfix\'s EHLO has no STARTTLS and a second STARTTLS gets 503', async () => {
    const sock = net.connect({ port: port.smtp!, host: '127.0.0.1', localAddress: CLIENT });
    const read = lineReader(sock);
    expect(await read(/^220 .*\r\n/m)).toMatch(/^220 mail\.example\.org ESMTP/);
    sock.write('EHLO client.example.net\r\n');
    const before = await read(/^250 .*\r\n/m);
    expect(before).toMatch(/250[- ]STARTTLS\r\n/);
    expect(before).toMatch(/250[- ]SIZE \d+/); // Postfix's message_size_limit, learned by the probe
    expect(before).toMatch(/250[- ]PIPELINING/);
    sock.write('STARTTLS\r\n');
    expect(await read(/^220 .*\r\n/m)).toBe('220 2.0.0 Ready to start TLS\r\n');
    const t = tls.connect({ socket: sock, servername: 'mail.example.org', ca: pki.ca.certPem });
    await new Promise((r, j) => t.once('secureConnect', r).once('error', j));
    const tread = lineReader(t);
    t.write('EHLO client.example.net\r\n');
    const after = await tread(/^250 .*\r\n/m);
    expect(after).toMatch(/^250-/);
    expect(after).not.toMatch(/STARTTLS/);
    t.write('STARTTLS\r\n');
    expect(await tread(/^\d{3} .*\r\n/m)).toBe('503 5.5.1 TLS already active\r\n');
    t.write('QUIT\r\n');
    expect(await tread(/^221 .*\r\n/m)).toMatch(/^221 /);
    t.destroy();
  });

  it('curl --ssl-reqd sends a message through postern to Postfix with certificate verification', async () => {
    const token = randomUUID();
    const mail = join(pki.dir, `${token}.eml`);
    writeFileSync(mail, `From: s@example.net\r\nTo: rcpt@example.org\r\nSubject: ${token}\r\n\r\nvia curl\r\n`);
    const r = await run('curl', ['--silent', '--show-error', '--ssl-reqd', '--cacert', pki.caFile, '--interface', CLIENT, '--resolve', `mail.example.org:${port.submission}:127.0.0.1`, `smtp://mail.example.org:${port.submission}`, '--mail-from', 's@example.net', '--mail-rcpt', 'rcpt@example.org', '-T', mail]);
    expect(r.code, r.stderr).toBe(0);
    await pf.waitForMailbox('rcpt', new RegExp(`Subject: ${token}`));
  });

  it('STARTTLS with a pipelined command: the command is never answered and never reaches Postfix', async () => {
    const marker = `injected-${randomUUID().slice(0, 8)}`;
    const sock = net.connect({ port: port.smtp!, host: '127.0.0.1', localAddress: CLIENT });
    const read = lineReader(sock);
    await read(/^220 .*\r\n/m);
    sock.write('EHLO client.example.net\r\n');
    await read(/^250 .*\r\n/m);
    sock.write(`STARTTLS\r\nVRFY ${marker}@example.org\r\n`);
    expect(await read(/^220 .*\r\n/m)).toBe('220 2.0.0 Ready to start TLS\r\n');
    const t = tls.connect({ socket: sock, servername: 'mail.example.org', ca: pki.ca.certPem });
    await new Promise((r, j) => t.once('secureConnect', r).once('error', j));
    const tread = lineReader(t);
    t.write('NOOP\r\n');
    // The first reply inside TLS answers NOOP: nothing answered the injected VRFY.
    expect(await tread(/^\d{3} .*\r\n/m)).toMatch(/^250 /);
    t.end('QUIT\r\n');
    await tread(/^221 .*\r\n/m);
    expect(postern.logs.some((l) => l.msg === 'discarded bytes sent after STARTTLS (CVE-2011-0411)')).toBe(true);
    expect(await pf.readLog()).not.toContain(marker);
  });
});

describe('IMAP and POP3 through postern to Dovecot', () => {
  it('openssl s_client -starttls imap logs in and Dovecot counts the session as secured (v2 SSL TLV)', async () => {
    const out = await opensslSession(['-starttls', 'imap', '-connect', `127.0.0.1:${port.imap}`, '-servername', 'mail.example.org', '-CAfile', pki.caFile], ['a LOGIN alice secret', 'b LOGOUT'], /b OK/);
    expect(out).toMatch(/a OK .*Logged in/);
    await dc.waitForLog(/imap-login: (Info: )?Login: user=<alice>.*secured/);
  });

  it('a second STARTTLS inside IMAP TLS gets BAD from postern; CAPABILITY after TLS has no STARTTLS', async () => {
    const out = await opensslSession(['-starttls', 'imap', '-connect', `127.0.0.1:${port.imap}`, '-servername', 'mail.example.org', '-CAfile', pki.caFile], ['c CAPABILITY', 'd STARTTLS', 'e LOGOUT'], /e OK/);
    const cap = /\* CAPABILITY[^\r\n]*/.exec(out)?.[0] ?? '';
    expect(cap).toMatch(/IMAP4rev1/);
    expect(cap).not.toMatch(/STARTTLS|LOGINDISABLED/);
    expect(out).toMatch(/d BAD TLS already active/);
  });

  it('curl --ssl-reqd lists the POP3 mailbox through postern', async () => {
    const r = await run('curl', ['--silent', '--show-error', '--ssl-reqd', '--cacert', pki.caFile, '--resolve', `mail.example.org:${port.pop3}:127.0.0.1`, '-u', 'alice:secret', `pop3://mail.example.org:${port.pop3}/`]);
    expect(r.code, r.stderr).toBe(0);
    await dc.waitForLog(/pop3-login: (Info: )?Login: user=<alice>.*secured/);
  });

  it('curl --ssl-reqd lists the IMAP mailbox through postern', async () => {
    const r = await run('curl', ['--silent', '--show-error', '--ssl-reqd', '--cacert', pki.caFile, '--resolve', `mail.example.org:${port.imap}:127.0.0.1`, '-u', 'alice:secret', `imap://mail.example.org:${port.imap}/`]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/INBOX/);
  });

  it('IMAP before TLS announces LOGINDISABLED and refuses LOGIN with PRIVACYREQUIRED', async () => {
    const sock = net.connect({ port: port.imap!, host: '127.0.0.1' });
    const read = lineReader(sock);
    expect(await read(/^\* OK .*\r\n/m)).toMatch(/STARTTLS.*LOGINDISABLED|LOGINDISABLED.*STARTTLS/);
    sock.write('a LOGIN alice secret\r\n');
    expect(await read(/^a .*\r\n/m)).toMatch(/^a NO \[PRIVACYREQUIRED\]/);
    sock.destroy();
  });

  it('a strict IMAP STARTTLS listener refuses an unknown sni with alert 112', async () => {
    const out = await opensslSession(['-starttls', 'imap', '-connect', `127.0.0.1:${port.imapStrict}`, '-servername', 'unknown.example.net', '-CAfile', pki.caFile], [], null);
    expect(out).toMatch(/alert number 112|unrecognized name/);
  });

  it('IMAP STARTTLS with a pipelined command: never answered, never seen by Dovecot', async () => {
    const sock = net.connect({ port: port.imap!, host: '127.0.0.1' });
    const read = lineReader(sock);
    await read(/^\* OK .*\r\n/m);
    sock.write('a STARTTLS\r\nb CAPABILITY\r\n');
    expect(await read(/^a .*\r\n/m)).toBe('a OK Begin TLS negotiation now\r\n');
    const t = tls.connect({ socket: sock, servername: 'mail.example.org', ca: pki.ca.certPem });
    await new Promise((r, j) => t.once('secureConnect', r).once('error', j));
    const tread = lineReader(t);
    t.write('c NOOP\r\n');
    const reply = await tread(/^c .*\r\n/m);
    expect(reply).not.toMatch(/^b /m);
    t.destroy();
  });

  it('POP3 STLS with a pipelined command: never answered', async () => {
    const sock = net.connect({ port: port.pop3!, host: '127.0.0.1' });
    const read = lineReader(sock);
    await read(/^\+OK.*\r\n/m);
    sock.write('STLS\r\nUSER alice\r\n');
    expect(await read(/^\+OK.*\r\n/m)).toBe('+OK Begin TLS negotiation\r\n');
    const t = tls.connect({ socket: sock, servername: 'mail.example.org', ca: pki.ca.certPem });
    await new Promise((r, j) => t.once('secureConnect', r).once('error', j));
    const tread = lineReader(t);
    t.write('NOOP\r\n');
    // Had USER alice survived, Dovecot would answer it first (+OK), then NOOP (-ERR: not authenticated).
    expect(await tread(/^[+-].*\r\n/m)).toMatch(/^-ERR/);
    t.destroy();
  });
});

/** Reads lines from a socket: each call resolves with the unread text up to the first match. */
function lineReader(s: net.Socket): (re: RegExp, timeoutMs?: number) => Promise<string> {
  let buf = '';
  let waiter: (() => void) | null = null;
  s.on('data', (d: Buffer) => {
    buf += d.toString('latin1');
    waiter?.();
  });
  s.on('error', () => {});
  return async (re, timeoutMs = 10_000) => {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const m = re.exec(buf);
      if (m) {
        const end = m.index + m[0].length;
        const out = buf.slice(0, end);
        buf = buf.slice(end);
        return out;
      }
      if (Date.now() > until) throw new Error(`timed out waiting for ${re}; have ${JSON.stringify(buf)}`);
      await new Promise<void>((r) => {
        waiter = r;
        setTimeout(r, 100);
      });
    }
  };
}

/** Runs openssl s_client, writes the lines one by one, returns everything it printed. */
function opensslSession(args: string[], lines: string[], until: RegExp | null): Promise<string> {
  return new Promise((resolve) => {
    const p = spawn('openssl', ['s_client', '-quiet', '-crlf', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    const onOut = (d: Buffer) => {
      out += d.toString();
      if (until && until.test(out)) p.stdin.end();
    };
    p.stdout.on('data', onOut);
    p.stderr.on('data', onOut);
    let i = 0;
    const next = () => {
      if (i < lines.length) {
        p.stdin.write(`${lines[i++]}\n`);
        setTimeout(next, 300);
      } else if (!until) p.stdin.end();
    };
    setTimeout(next, 500);
    const timer = setTimeout(() => p.kill(), 15_000);
    p.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
  });
}
