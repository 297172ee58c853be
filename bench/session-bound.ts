// What one hostile session can cost: the compiled daemon in a child process, N clients that each
// attack one path at once, and the daemon's RSS sampled during the attack. The figure per session
// is (peak RSS - RSS with N idle sessions on the same path) / N, i.e. the buffers the attack
// fills, on top of an idle session's TLS state. The README's per-session bound is checked against
// this (and test/hostile/one-client.test.ts asserts a bound with margin).
//
//   npm run bench:bound -- [--clients N] [--seconds S] [--attack name,...]   (default 100 clients, 5 s)
//   --quick: 20 clients, 1 s each (CI: proves it runs; RSS is too noisy at that size for a verdict)
// Without --quick it exits 1 when any attack costs more than BOUND_KB per session.
//
// Attacks (each against its own fresh daemon):
//   pretls-noread    SMTP pre-TLS: EHLO/NOOP/RSET flood, never reads the answers
//   greeting-flood   after STARTTLS + TLS: floods while the backend never greets
//   data-flood       after TLS: DATA, then floods message text while the backend delays 354
//   literal-flood    IMAP after TLS: a synchronizing literal, then floods while "+" never comes
//   handoff-flood    SMTP port-25 plaintext handoff: floods while the backend never greets
//   starttls-noread  after TLS: a second STARTTLS over and over, never reads the 503s (postern ends the session at the 20th)
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import tls from 'node:tls';
import { stringify } from 'yaml';
import { createCa, issueCert } from '../test/helpers/pki.ts';
import { buildOnce } from '../test/helpers/build.ts';
import { freePort } from '../test/helpers/ports.ts';

const ROOT = join(import.meta.dirname, '..');
const arg = (name: string, def: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : def;
};
const QUICK = process.argv.includes('--quick');
const CLIENTS = Number(arg('clients', QUICK ? '20' : '100'));
const SECONDS = Number(arg('seconds', QUICK ? '1' : '5'));
/** The per-session buffer bound the README states. */
const BOUND_KB = 256;
const ATTACKS = arg('attack', 'pretls-noread,greeting-flood,data-flood,literal-flood,handoff-flood,starttls-noread').split(',');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const rssKb = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);

type Proto = 'smtp' | 'imap';

/** A backend that reads the PROXY header and what follows, and answers as the attack needs. */
function backend(kind: 'silent' | 'smtp-no354' | 'imap-no-plus'): Promise<{ port: number; close(): void }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    let greeted = false;
    s.on('data', () => {
      // Reads whatever comes (so postern's writes never block on it); greets once, never more. (A
      // silent backend also fails postern's capability probe: timeouts.connect is short here.)
      if (greeted || kind === 'silent') return;
      greeted = true;
      s.write(kind === 'smtp-no354' ? '220 b ESMTP\r\n250-b\r\n250 8BITMIME\r\n' : '* OK b ready\r\n');
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ port: (server.address() as net.AddressInfo).port, close: () => { for (const s of sockets) s.destroy(); server.close(); } })));
}

async function startDaemon(dir: string, proto: Proto, backendPort: number, requireTls: boolean) {
  const ca = await createCa('bench CA');
  const leaf = await issueCert(ca, { names: ['mail.example.org'] });
  writeFileSync(join(dir, 'c.pem'), leaf.certPem + ca.certPem);
  writeFileSync(join(dir, 'k.pem'), leaf.keyPem, { mode: 0o600 });
  const port = await freePort();
  const yaml = stringify({
    log: { level: 'info' },
    certificates: [{ cert: 'c.pem', key: 'k.pem' }],
    limits: { maxConnectionsPerClient: 100_000 },
    listeners: [{ name: 'l', listen: `127.0.0.1:${port}`, protocol: proto, ...(proto === 'smtp' ? { role: requireTls ? 'submission' : 'mx' } : {}), tls: 'starttls', hostname: 'mail.example.org', requireTls, backend: { address: `127.0.0.1:${backendPort}`, proxyProtocol: 'v2' }, timeouts: { starttls: '5m', idle: '5m', backendReply: '5m', connect: '1s' } }],
  });
  writeFileSync(join(dir, 'p.yaml'), yaml);
  const child = spawn(process.execPath, [join(ROOT, 'bin', 'postern.js'), 'run', '-c', join(dir, 'p.yaml')], { stdio: ['ignore', 'pipe', 'inherit'] });
  // A daemon that does not start (a config error) ends the benchmark instead of hanging it.
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => (d.toString().includes('"listening"') ? resolve() : undefined));
    child.once('exit', (code) => reject(new Error(`postern exited with ${code} before listening`)));
  });
  return { child, port, ca: ca.certPem };
}

function readLine(s: net.Socket | tls.TLSSocket, re: RegExp): Promise<void> {
  return new Promise((resolve, reject) => {
    let got = '';
    const on = (d: Buffer) => {
      got += d.toString('latin1');
      if (re.test(got)) {
        s.off('data', on);
        resolve();
      }
    };
    s.on('data', on);
    s.once('error', reject);
  });
}

/** Opens one session on the attack's path and returns a function that floods it (or null: idle). */
async function open(attack: string, port: number, ca: string): Promise<{ flood(): void; close(): void }> {
  const raw = net.connect({ host: '127.0.0.1', port });
  raw.on('error', () => {});
  await readLine(raw, /^(220 |\* OK)/m);
  const proto: Proto = attack === 'literal-flood' ? 'imap' : 'smtp';
  if (attack === 'pretls-noread') {
    raw.pause();
    return { flood: () => floodWrite(raw, 'EHLO attacker.example\r\nNOOP\r\nRSET\r\n'), close: () => raw.destroy() };
  }
  if (attack === 'handoff-flood') {
    raw.write('EHLO attacker.example\r\n');
    await readLine(raw, /^250 /m);
    return { flood: () => floodWrite(raw, `MAIL FROM:<a@b>\r\n${'x'.repeat(1000)}\r\n`), close: () => raw.destroy() };
  }
  raw.write(proto === 'smtp' ? 'EHLO attacker.example\r\nSTARTTLS\r\n' : 'a STARTTLS\r\n');
  await readLine(raw, proto === 'smtp' ? /^220 2/m : /^a OK/m);
  raw.removeAllListeners('data');
  const s = tls.connect({ socket: raw, servername: 'mail.example.org', ca });
  s.on('error', () => {});
  await new Promise<void>((r) => s.once('secureConnect', () => r()));
  switch (attack) {
    case 'greeting-flood':
      return { flood: () => floodWrite(s, `EHLO attacker.example\r\n${'x'.repeat(1000)}\r\n`), close: () => s.destroy() };
    case 'data-flood':
      return { flood: () => floodWrite(s, `EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n${'text of the message '.repeat(50)}\r\n`), close: () => s.destroy() };
    case 'literal-flood':
      return { flood: () => floodWrite(s, `b LOGIN user {999999}\r\n${'x'.repeat(1000)}`), close: () => s.destroy() };
    default:
      s.pause();
      return { flood: () => floodWrite(s, 'STARTTLS\r\nXCLIENT ADDR=192.0.2.1\r\n'), close: () => s.destroy() };
  }
}

/** Writes as fast as the socket takes it (never reads), until it is closed. */
function floodWrite(s: net.Socket, text: string) {
  const block = Buffer.from(text.repeat(Math.max(1, Math.floor(16384 / text.length))));
  const go = () => {
    while (!s.destroyed && s.write(block));
    if (!s.destroyed) s.once('drain', go);
  };
  go();
}

async function run(attack: string) {
  const dir = mkdtempSync(join(tmpdir(), 'postern-bound-'));
  const be = await backend(attack === 'data-flood' ? 'smtp-no354' : attack === 'literal-flood' ? 'imap-no-plus' : 'silent');
  const d = await startDaemon(dir, attack === 'literal-flood' ? 'imap' : 'smtp', be.port, attack === 'pretls-noread' || attack === 'literal-flood' ? true : false);
  const pid = d.child.pid!;
  await sleep(500);
  const empty = rssKb(pid);
  const sessions = [];
  for (let i = 0; i < CLIENTS; i++) sessions.push(await open(attack, d.port, d.ca));
  await sleep(1000);
  const idle = rssKb(pid);
  for (const s of sessions) s.flood();
  let peak = idle;
  const until = Date.now() + SECONDS * 1000;
  while (Date.now() < until) {
    await sleep(100);
    peak = Math.max(peak, rssKb(pid));
  }
  for (const s of sessions) s.close();
  be.close();
  // With every client gone the daemon drains at once; how long it takes is printed (a session
  // that outlives its client would show here as the drain timeout).
  const stopping = Date.now();
  const exited = new Promise<void>((r) => d.child.once('exit', () => r()));
  d.child.kill('SIGTERM');
  await exited;
  const stopMs = Date.now() - stopping;
  const perSession = ((peak - idle) / CLIENTS).toFixed(1);
  const idleEach = ((idle - empty) / CLIENTS).toFixed(1);
  console.log(`${attack.padEnd(16)} clients ${CLIENTS}  RSS empty ${(empty / 1024).toFixed(1)} MB, idle ${(idle / 1024).toFixed(1)} MB (${idleEach} KB each), peak ${(peak / 1024).toFixed(1)} MB: +${perSession} KB per attacking session; stopped in ${stopMs} ms`);
  return Number(perSession);
}

buildOnce();
let worst = 0;
for (const a of ATTACKS) worst = Math.max(worst, await run(a));
console.log(`worst: +${worst} KB per attacking session (bound ${BOUND_KB} KB)${QUICK ? ' [quick: no verdict]' : ''}`);
if (!QUICK && worst > BOUND_KB) process.exit(1);
