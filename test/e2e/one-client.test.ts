// Issue 14 against real backends: postern (the compiled daemon in a child process, so its VmRSS
// can be read) in front of a private Dovecot 2.3 with the zlib plugins and a private Postfix with
// postscreen(8), as a production MX runs them.
//   - IMAP COMPRESS=DEFLATE (RFC 4978; finding 12): after "c OK Begin compression" both directions
//     are deflate streams. Through postern's IMAP STARTTLS listener the session must go on as it
//     does straight to Dovecot (the control) and through an implicit-TLS listener (a raw pipe).
//   - The IMAP literal stall (finding 3): "{5}" without a tag gets Dovecot's untagged BAD and no
//     "+"; later commands must still be answered, or the session ends at timeouts.backendReply;
//     memory stays bounded while the client keeps writing.
//   - postscreen's greet pause (finding 2): a TLS client flooding during postscreen_greet_wait
//     must not grow postern's memory, and must not talk to postscreen before its banner.
import { randomUUID } from 'node:crypto';
import { chmod, mkdtemp, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import zlib from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeProxyV2 } from '../../src/backend/proxy-protocol.ts';
import { makePki, type CertFiles, type TestPki } from '../helpers/certs.ts';
import { buildOnce, spawnDaemon, stopAll, rssDuring, mb, type SpawnedPostern } from '../hostile/harness.ts';
import { flood, lines, MB } from '../hostile/attack.ts';
import { freePorts, requireProgram, requireRoot, startDovecot, startPostfix } from './harness/index.ts';
import type { DovecotHandle, PostfixHandle } from './harness/index.ts';
import { connectFrom, readStream, startTls, type StreamReader } from './harness/streams.ts';

let pki: TestPki;
let mail: CertFiles;
let dc: DovecotHandle;
let pf: PostfixHandle;
let d: SpawnedPostern;

const HOSTNAME = 'mail.example.org';
const ATTACKER = '127.0.0.2';

beforeAll(async () => {
  for (const p of ['postfix', 'dovecot', 'doveadm', 'openssl']) requireProgram(p);
  requireRoot();
  buildOnce();
  pki = await makePki();
  mail = await pki.issue('mail', { names: [HOSTNAME] });
  const [imap, pop3, smtp, submission] = await freePorts(4);
  dc = await startDovecot({
    imapPort: imap!, pop3Port: pop3!, haproxy: true, sslRequired: true,
    // RFC 4978 COMPRESS=DEFLATE, offered after login (Debian: lib20_zlib_plugin, lib30_imap_zlib_plugin).
    extraConf: 'mail_plugins = $mail_plugins zlib\nprotocol imap {\n  mail_plugins = $mail_plugins imap_zlib\n}\n',
  });
  // postscreen's pregreet test for everyone but postern's own capability probe (127.0.0.1), which
  // would otherwise wait out the greet pause at every start.
  const access = await mkdtemp(path.join(os.tmpdir(), 'postern-ps-'));
  await chmod(access, 0o755);
  await writeFile(path.join(access, 'access.cidr'), '127.0.0.1/32 permit\n', { mode: 0o644 });
  pf = await startPostfix({
    smtpPort: smtp!, submissionPort: submission!, proxyProtocol: 'haproxy', postscreen: true,
    mainCfExtra: [
      'postscreen_greet_wait = 6s',
      'postscreen_greet_action = enforce',
      `postscreen_access_list = cidr:${path.join(access, 'access.cidr')}`,
      'postscreen_dnsbl_sites =',
      '',
    ].join('\n'),
  });
  d = await spawnDaemon({
    dir: pki.dir,
    certs: [{ cert: mail.cert, key: mail.key }],
    level: 'info',
    listeners: [
      { name: 'imap', protocol: 'imap', tls: 'starttls', backendPort: dc.imapPort },
      { name: 'imaps', protocol: 'imap', tls: 'implicit', backendPort: dc.imapPort },
    ],
  });
}, 90_000);

afterAll(async () => {
  await stopAll();
  await dc?.stop();
  await pf?.stop();
});

// ---------------------------------------------------------------------------------------------
// IMAP sessions

/** STARTTLS on postern's IMAP listener, from `from`: the secure socket and its reader. */
async function imapStarttls(port: number, from = '127.0.0.1'): Promise<{ sock: tls.TLSSocket; r: StreamReader; localPort: number }> {
  const raw = await connectFrom(port, from);
  const pre = readStream(raw);
  await pre.readUntil(/^\* OK [^\r\n]*\r\n/m);
  raw.write('a STARTTLS\r\n');
  await pre.readUntil(/^a OK [^\r\n]*\r\n/m);
  expect(pre.detach()).toBe('');
  const sock = await startTls(raw, { servername: HOSTNAME, ca: pki.ca.certPem });
  return { sock, r: readStream(sock), localPort: raw.localPort! };
}

/** One side of RFC 4978: what is written is deflated (a sync flush per command), what is read inflated. */
function deflateChannel(sock: Duplex): { send(line: string): void; r: StreamReader } {
  const deflate = zlib.createDeflateRaw();
  const inflate = zlib.createInflateRaw();
  deflate.on('data', (c: Buffer) => sock.write(c));
  sock.on('data', (c: Buffer) => inflate.write(c));
  inflate.on('error', () => {});
  return {
    send(line) {
      deflate.write(`${line}\r\n`);
      deflate.flush(zlib.constants.Z_SYNC_FLUSH);
    },
    r: readStream(inflate),
  };
}

/** LOGIN, COMPRESS DEFLATE, then NOOP, SELECT INBOX and LOGOUT through the deflate streams. */
async function compressedSession(sock: Duplex, r: StreamReader): Promise<string[]> {
  const user = dc.users[0]!;
  sock.write(`b LOGIN ${user.user} ${user.password}\r\n`);
  expect(await r.readUntil(/^b (OK|NO|BAD)[^\r\n]*\r\n/m)).toMatch(/^b OK /m);
  sock.write('c COMPRESS DEFLATE\r\n');
  expect(await r.readUntil(/^c (OK|NO|BAD)[^\r\n]*\r\n/m)).toMatch(/^c OK /m);
  expect(r.detach()).toBe('');
  const z = deflateChannel(sock);
  const answers: string[] = [];
  for (const [tag, command] of [['d', 'NOOP'], ['e', 'SELECT INBOX'], ['f', 'LOGOUT']] as const) {
    z.send(`${tag} ${command}`);
    answers.push(await z.r.readUntil(new RegExp(`^${tag} (OK|NO|BAD)[^\\r\\n]*\\r\\n`, 'm'), 5000));
  }
  return answers;
}

function expectAnswered(answers: string[]) {
  expect(answers[0]).toMatch(/^d OK /m);
  expect(answers[1]).toMatch(/^\* \d+ EXISTS\r\n/m);
  expect(answers[1]).toMatch(/^e OK /m);
  expect(answers[2]).toMatch(/^\* BYE /m);
  expect(answers[2]).toMatch(/^f OK /m);
}

describe('IMAP COMPRESS=DEFLATE (RFC 4978) with Dovecot\'s imap_zlib', () => {
  it('control, straight to Dovecot (PROXY v2 with the SSL TLV, as postern sends it): NOOP, SELECT INBOX and LOGOUT are answered through the deflate streams', async () => {
    const sock = net.connect(dc.imapPort, '127.0.0.1');
    await new Promise((resolve) => sock.once('connect', resolve));
    sock.write(encodeProxyV2({ clientAddress: '127.0.0.9', clientPort: 40000, localAddress: '127.0.0.1', localPort: 143 }, { sni: HOSTNAME, alpn: null, version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384' }));
    const r = readStream(sock);
    await r.readUntil(/^\* OK [^\r\n]*\r\n/m);
    try {
      expectAnswered(await compressedSession(sock, r));
    } finally {
      sock.destroy();
    }
  });

  it('through postern\'s implicit-TLS IMAP listener: the same session works', async () => {
    const sock = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const t = tls.connect({ host: '127.0.0.1', port: d.port('imaps'), servername: HOSTNAME, ca: pki.ca.certPem }, () => resolve(t));
      t.once('error', reject);
    });
    const r = readStream(sock);
    await r.readUntil(/^\* OK [^\r\n]*\r\n/m);
    try {
      expectAnswered(await compressedSession(sock, r));
    } finally {
      sock.destroy();
    }
  });

  it('through postern\'s IMAP STARTTLS listener: after "c OK Begin compression" NOOP, SELECT INBOX and LOGOUT are answered', async () => {
    const s = await imapStarttls(d.port('imap'));
    try {
      expectAnswered(await compressedSession(s.sock, s.r));
    } finally {
      s.sock.destroy();
    }
  });
});

describe('IMAP literal stall against Dovecot: "{5}" without a tag', () => {
  it('Dovecot answers the untagged BAD; the client writes "c NOOP" without pause for 3 s: postern\'s VmRSS grows < 64 MB', async () => {
    const own = await spawnDaemon({ dir: pki.dir, certs: [{ cert: mail.cert, key: mail.key }], level: 'info', top: { shutdown: { drainTimeout: '1s' } }, listeners: [{ name: 'imap', protocol: 'imap', tls: 'starttls', backendPort: dc.imapPort }] });
    const s = await imapStarttls(own.port('imap'));
    s.sock.write('{5}\r\n');
    expect(await s.r.readUntil(/\r\n/)).toBe('* BAD Error in IMAP command received by server.\r\n');
    s.r.detach();
    s.sock.on('data', () => {}); // the answers, if any, are read and dropped
    const { rss, result } = await rssDuring(own.pid, (signal) => flood(s.sock, lines('c NOOP', 8192), 3000, signal));
    console.log(`[one-client e2e] imap literal stall vs Dovecot: client wrote ${(result.written / MB).toFixed(1)} MB in 3 s; postern VmRSS max ${mb(rss.max - rss.baseline)}`);
    s.sock.destroy();
    expect(rss.max - rss.baseline).toBeLessThan(64 * MB);
    expect(own.child.exitCode).toBeNull();
  }, 30_000);

  it('with timeouts.backendReply 2s: "b NOOP" after it gets Dovecot\'s "b OK", or the session ends with * BYE [UNAVAILABLE] at the deadline', async () => {
    const own = await spawnDaemon({ dir: pki.dir, certs: [{ cert: mail.cert, key: mail.key }], level: 'info', top: { shutdown: { drainTimeout: '1s' } }, listeners: [{ name: 'imap', protocol: 'imap', tls: 'starttls', backendPort: dc.imapPort, extra: { timeouts: { backendReply: '2s' } } }] });
    const s = await imapStarttls(own.port('imap'));
    s.sock.write('{5}\r\n');
    expect(await s.r.readUntil(/\r\n/)).toBe('* BAD Error in IMAP command received by server.\r\n');
    s.sock.write('b NOOP\r\n');
    const got = await s.r.readUntil(/^(b OK|\* BYE \[UNAVAILABLE\])[^\r\n]*\r\n/m, 6000);
    if (got.startsWith('* BYE')) {
      expect(await s.r.readToEnd(3000)).toBe('');
      expect(await own.summaryFor(s.localPort)).toMatchObject({ closeReason: 'backend_reply_timeout', side: 'backend' });
    } else {
      expect(got).toMatch(/^b OK NOOP completed/m);
      s.sock.destroy();
    }
  }, 30_000);
});

describe('postscreen\'s greet pause (postscreen_greet_wait 6s) behind the port-25 STARTTLS listener', () => {
  it('control, straight to postscreen: a client that talks before the banner is logged as PREGREET', async () => {
    const sock = net.connect(pf.smtpPort, '127.0.0.1');
    await new Promise((resolve) => sock.once('connect', resolve));
    sock.on('error', () => {});
    sock.write(encodeProxyV2({ clientAddress: '127.0.0.3', clientPort: 40001, localAddress: '127.0.0.1', localPort: 25 }, null));
    const r = readStream(sock);
    await r.readUntil(/^220-[^\r\n]*\r\n/m);
    sock.write('EHLO early.example\r\n');
    await pf.waitForLog(/PREGREET \d+ after [\d.]+ from \[127\.0\.0\.3\]:40001/, 10_000);
    sock.destroy();
  });

  it(`a TLS client from ${ATTACKER} flooding during the pause for 4 s: postern's VmRSS grows < 64 MB; postscreen logs no PREGREET for it`, async () => {
    const own = await spawnDaemon({
      dir: pki.dir, certs: [{ cert: mail.cert, key: mail.key }], level: 'info', top: { shutdown: { drainTimeout: '1s' } },
      listeners: [{ name: 'mx', protocol: 'smtp', tls: 'starttls', role: 'mx', backendPort: pf.smtpPort }],
    });
    const raw = await connectFrom(own.port('mx'), ATTACKER);
    const pre = readStream(raw);
    await pre.readUntil(/^220 [^\r\n]*\r\n/m);
    raw.write('EHLO attacker.example\r\n');
    await pre.readUntil(/^250 [^\r\n]*\r\n/m);
    raw.write('STARTTLS\r\n');
    await pre.readUntil(/^220 [^\r\n]*\r\n/m);
    pre.detach();
    const sock = await startTls(raw, { servername: HOSTNAME, ca: pki.ca.certPem });
    sock.on('data', () => {});
    const port = raw.localPort!;
    sock.write(`EHLO ${randomUUID().slice(0, 8)}.example\r\n`);
    const { rss, result } = await rssDuring(own.pid, (signal) => flood(sock, lines('x'.repeat(62), 1024), 4000, signal));
    console.log(`[one-client e2e] postscreen greet pause: client wrote ${(result.written / MB).toFixed(1)} MB in 4 s; postern VmRSS max ${mb(rss.max - rss.baseline)}`);
    sock.destroy();
    await pf.waitForLog(new RegExp(`postscreen\\[\\d+\\]: CONNECT from \\[${ATTACKER.replace(/\./g, '\\.')}\\]:${port}`));
    expect.soft(rss.max - rss.baseline).toBeLessThan(64 * MB);
    // Let postscreen finish with this client, then read what it concluded.
    await pf.waitForLog(new RegExp(`(HANGUP|PASS NEW|PREGREET|DISCONNECT)[^\\n]*\\[${ATTACKER.replace(/\./g, '\\.')}\\]:${port}`), 15_000);
    expect(await pf.readLog()).not.toMatch(new RegExp(`PREGREET[^\\n]*\\[${ATTACKER.replace(/\./g, '\\.')}\\]:${port}`));
  }, 45_000);
});
