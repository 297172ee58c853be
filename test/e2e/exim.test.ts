// Exim behind postern (issue 15): a real Exim daemon (Debian's exim4-daemon-heavy, built with
// SUPPORT_PROXY, unpacked by .ci/run into .tools/exim) with `hosts_proxy = 127.0.0.1`, run from
// its own config file on two loopback ports, as docs/mail-servers.md ("Exim") describes. swaks
// sends through postern from 127.0.0.x addresses other than 127.0.0.1, so the address Exim logs
// and writes into Received is the one postern saw, not postern's own.
//
//   mx          STARTTLS, sni fallback, plaintext allowed, PROXY v2 -> Exim mx port
//   mx-v1       the same with PROXY v1                               -> Exim mx port
//   submission  STARTTLS required before AUTH/MAIL, PROXY v2         -> Exim submission port (AUTH)
//   submissions implicit TLS, PROXY v2                               -> Exim submission port (AUTH)
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { startPostern, type RunningPostern } from '../helpers/postern.ts';
import { EXIM_NAME, EXIM_USERS, findExim, freePorts, requireProgram, requireRoot, run, startExim } from './harness/index.ts';
import type { EximHandle } from './harness/index.ts';
import { HOSTNAME, makeStackPki, type StackPki } from './harness/postern-stack.ts';
import { connectFrom, literal, readStream } from './harness/streams.ts';

let certs: StackPki;
let exim: EximHandle;
let postern: RunningPostern;

beforeAll(async () => {
  for (const p of ['swaks', 'openssl']) requireProgram(p);
  requireRoot();
  certs = await makeStackPki();
  const [mxPort, submissionPort, ...listen] = await freePorts(6);
  exim = await startExim({ mxPort: mxPort!, submissionPort: submissionPort! });
  const smtp = (name: string, port: number, tls: 'starttls' | 'implicit', backendPort: number, proxyProtocol: 'v1' | 'v2', extra: object) => ({
    name, listen: `127.0.0.1:${port}`, protocol: 'smtp', tls, hostname: HOSTNAME,
    backend: { address: `127.0.0.1:${backendPort}`, proxyProtocol }, ...extra,
  });
  const config = {
    log: { level: 'debug' },
    certificates: [certs.otherCert, certs.hostCert].map((c) => ({ cert: c.cert, key: c.key })),
    listeners: [
      smtp('mx', listen[0]!, 'starttls', mxPort!, 'v2', { role: 'mx' }),
      smtp('mx-v1', listen[1]!, 'starttls', mxPort!, 'v1', { role: 'mx' }),
      smtp('submission', listen[2]!, 'starttls', submissionPort!, 'v2', { role: 'submission' }),
      smtp('submissions', listen[3]!, 'implicit', submissionPort!, 'v2', { role: 'submission' }),
    ],
  };
  postern = await startPostern(certs.pki.dir, stringify(config));
}, 60_000);

afterAll(async () => {
  await postern?.stop();
  await exim?.stop();
});

/** A message whose text must arrive unchanged: a leading dot, SMTP-looking lines, tabs, 8-bit-free. */
function messageFile(token: string, from: string): { file: string; body: string } {
  const body = [
    `token ${token}`,
    '.a line that starts with a dot (swaks dot-stuffs it, Exim removes the stuffing)',
    'STARTTLS',
    'QUIT',
    'MAIL FROM:<smuggled@example.net>',
    '\tindented with a tab, trailing spaces   ',
    'x'.repeat(900),
    'last line',
  ].join('\n');
  // No final newline: swaks ends the text with CRLF . CRLF itself.
  const text = [`From: ${from}`, 'To: rcpt@example.org', `Subject: ${token}`, `Message-ID: <${token}@client.example.net>`, '', body].join('\n');
  const file = path.join(certs.pki.dir, `${token}.eml`);
  writeFileSync(file, text);
  return { file, body };
}

function swaks(listener: string, from: string, args: string[]) {
  return run('swaks', [
    '--server', '127.0.0.1', '--port', String(postern.port(listener)), '--local-interface', from,
    '--ehlo', 'client.example.net', '--from', 'sender@example.net', '--to', 'rcpt@example.org', '--timeout', '20', ...args,
  ], 40_000);
}

const tlsVerified = () => ['--tls-verify', '--tls-ca-path', certs.pki.caFile, '--tls-sni', HOSTNAME];

function eximId(output: string): string {
  const m = /250 OK id=([0-9A-Za-z-]+)/.exec(output);
  if (!m) throw new Error(`no Exim message id in:\n${output}`);
  return m[1]!;
}

/** Sends one message and checks what Exim logged and delivered for it; returns the message. */
async function deliverAndCheck(listener: string, from: string, args: string[], protocol: 'esmtp' | 'esmtpa') {
  const token = `${listener}-${randomUUID()}`;
  const { file, body } = messageFile(token, 'sender@example.net');
  const r = await swaks(listener, from, ['--data', `@${file}`, ...args]);
  expect(r.code, r.stdout + r.stderr).toBe(0);
  // Inside TLS the client's EHLO reaches Exim, which greets it by the address from the PROXY
  // header (on a plaintext session postern answers that EHLO itself, then hands over).
  if (/TLS started/.test(r.stdout)) {
    expect(r.stdout).toMatch(new RegExp(`<~ {2}250-${literal(EXIM_NAME)} Hello client\\.example\\.net \\[${literal(from)}\\]`));
  }
  const id = eximId(r.stdout);
  // The reception line: the client's address, and PRX= postern's own (log_selector +proxy).
  const line = (await exim.waitForLog(new RegExp(`^.* ${literal(id)} <= sender@example\\.net .*$`, 'm')))[0];
  expect(line).toContain(` H=(client.example.net) [${from}]:`);
  expect(line).toContain(` P=${protocol} `);
  expect(line).toContain(' PRX=127.0.0.1 ');
  await exim.waitForLog(new RegExp(`${literal(id)} => rcpt <rcpt@example\\.org> R=local_maildir T=maildir_delivery`));
  const msg = await exim.waitForMessage('rcpt', new RegExp(literal(token)));
  // The Received header Exim added names the client postern saw (not 127.0.0.1).
  expect(msg).toMatch(new RegExp(`^Received: from \\[${literal(from)}\\] \\(port=\\d+ helo=client\\.example\\.net\\)\n\tby ${literal(EXIM_NAME)} with ${protocol} \\(Exim [\\d.]+\\)\n(?:\t.*\n)*?\tid ${literal(id)}\n`, 'm'));
  expect(msg).not.toContain('[127.0.0.1]');
  // The text arrived as sent (swaks sent CRLF and dot-stuffed; the maildir file has LF).
  expect(msg.split('\n\n').slice(1).join('\n\n')).toBe(`${body}\n`);
  return { token, id, stdout: r.stdout, msg };
}

it('a missing Exim fails the suite instead of skipping it', async () => {
  await expect(findExim(['/nonexistent/exim4', undefined])).rejects.toThrow(/required program "exim" not found/);
});

it('the Exim under test reads PROXY headers (SUPPORT_PROXY)', async () => {
  const v = await run(exim.binary, ['-bV']);
  expect(v.stdout).toMatch(/^Support for:.* PROXY\b/m);
});

describe('MX listener (STARTTLS, plaintext allowed) in front of Exim', () => {
  it('PROXY v2, STARTTLS: delivered intact; Exim logs and writes 127.0.0.2 as the client', async () => {
    const from = '127.0.0.2';
    const { stdout } = await deliverAndCheck('mx', from, ['--tls', ...tlsVerified()], 'esmtp');
    expect(stdout).toMatch(/=== TLS started with cipher TLSv1\.3/);
    const s = await postern.summary((l) => l.listener === 'mx' && l.client === from);
    expect(s).toMatchObject({ tlsVersion: 'TLSv1.3', sni: HOSTNAME, servedName: HOSTNAME, backend: `127.0.0.1:${exim.mxPort}` });
  });

  it('PROXY v2, plaintext (RFC 3207: a public MX must not require STARTTLS): delivered; Exim logs 127.0.0.3', async () => {
    const from = '127.0.0.3';
    const { stdout } = await deliverAndCheck('mx', from, [], 'esmtp');
    expect(stdout).not.toMatch(/TLS started|Ready to start TLS/);
    const s = await postern.summary((l) => l.listener === 'mx' && l.client === from);
    expect(s).toMatchObject({ tlsVersion: null, backend: `127.0.0.1:${exim.mxPort}` });
  });

  it('PROXY v1, STARTTLS with the bare domain as SNI (fallback): delivered; Exim logs 127.0.0.4', async () => {
    const from = '127.0.0.4';
    await deliverAndCheck('mx-v1', from, ['--tls', '--tls-ca-path', certs.pki.caFile, '--tls-sni', 'example.org'], 'esmtp');
    const s = await postern.summary((l) => l.listener === 'mx-v1' && l.client === from);
    expect(s).toMatchObject({ tlsVersion: 'TLSv1.3', sniClass: 'unknown', decision: 'fallback', servedName: HOSTNAME });
  });

  it('PROXY v1, plaintext: delivered; Exim logs 127.0.0.5', async () => {
    await deliverAndCheck('mx-v1', '127.0.0.5', [], 'esmtp');
  });

  it("before TLS postern announces Exim's own extensions (SIZE from its probe) and STARTTLS; after TLS Exim answers without STARTTLS", async () => {
    const r = await swaks('mx', '127.0.0.6', ['--tls', ...tlsVerified(), '--quit-after', 'EHLO']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    // Pre-TLS EHLO: postern's, with Exim's SIZE (its default, 50 MB) and postern's STARTTLS.
    expect(r.stdout).toMatch(new RegExp(`<- {2}250-${literal(HOSTNAME)}\\b`));
    expect(r.stdout).toMatch(/<- {2}250[- ]SIZE 52428800/);
    expect(r.stdout).toMatch(/<- {2}250[- ]STARTTLS/);
    // Inside TLS: Exim's own reply (~> / <~ are swaks' TLS lines), without STARTTLS.
    expect(r.stdout).toMatch(new RegExp(`<~ {2}250-${literal(EXIM_NAME)} Hello client\\.example\\.net \\[127\\.0\\.0\\.6\\]`));
    expect(r.stdout).not.toMatch(/<~ {2}250[- ]STARTTLS/);
  });
});

describe('submission listeners (AUTH with Exim\'s plaintext authenticator)', () => {
  const [alice] = EXIM_USERS;
  const auth = () => ['--auth', 'PLAIN', '--auth-user', alice!.user, '--auth-password', alice!.password];

  it('implicit TLS (465-style), AUTH PLAIN: delivered as esmtpa; Exim logs the user and 127.0.0.7', async () => {
    const from = '127.0.0.7';
    const { id } = await deliverAndCheck('submissions', from, ['--tls-on-connect', ...tlsVerified(), ...auth()], 'esmtpa');
    expect(await exim.readLog()).toMatch(new RegExp(`${literal(id)} <= sender@example\\.net .* A=plain_server:alice `));
    const s = await postern.summary((l) => l.listener === 'submissions' && l.client === from);
    expect(s).toMatchObject({ tlsVersion: 'TLSv1.3', backend: `127.0.0.1:${exim.submissionPort}` });
  });

  it('STARTTLS (587-style), AUTH PLAIN after TLS: delivered as esmtpa; Exim logs 127.0.0.8', async () => {
    await deliverAndCheck('submission', '127.0.0.8', ['--tls', ...tlsVerified(), ...auth()], 'esmtpa');
  });

  it('AUTH before STARTTLS: not announced, and refused by postern with 530; Exim never sees it', async () => {
    const from = '127.0.0.9';
    const r = await swaks('submission', from, auth());
    expect(r.code).not.toBe(0);
    expect(r.stdout).not.toMatch(/<- {2}250[- ]AUTH/);
    // A client that sends AUTH anyway (raw socket, no TLS).
    const sock = await connectFrom(postern.port('submission'), from);
    const rd = readStream(sock);
    await rd.readUntil(/^220 .*\r\n/m);
    sock.write('EHLO client.example.net\r\n');
    await rd.readUntil(/^250 .*\r\n/m);
    sock.write(`AUTH PLAIN ${Buffer.from(`\0${alice!.user}\0${alice!.password}`).toString('base64')}\r\n`);
    expect(await rd.readUntil(/^\d{3} .*\r\n/m)).toMatch(/^530 5\.7\.0 /);
    sock.write('QUIT\r\n');
    await rd.readToEnd();
    expect(await exim.readLog()).not.toContain(`[${from}]`);
  });

  it('without AUTH, the submission port refuses the recipient (Exim ACL on $received_port)', async () => {
    const from = '127.0.0.10';
    const r = await swaks('submissions', from, ['--tls-on-connect', ...tlsVerified()]);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toMatch(/<~\* {1,2}550 authentication required/);
    await exim.waitForLog(new RegExp(`H=\\(client\\.example\\.net\\) \\[${literal(from)}\\]:\\d+ .*rejected RCPT <rcpt@example\\.org>: authentication required`));
  });

  it('a wrong password is refused by Exim (535) and logged with the real client address', async () => {
    const from = '127.0.0.11';
    const r = await swaks('submissions', from, ['--tls-on-connect', ...tlsVerified(), '--auth', 'PLAIN', '--auth-user', alice!.user, '--auth-password', 'wrong']);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toMatch(/<~\* {1,2}535 /);
    await exim.waitForLog(new RegExp(`plain_server authenticator failed for \\(client\\.example\\.net\\) \\[${literal(from)}\\]:\\d+`));
  });
});
