// Issue 17, target 5: the mail path against what admins use today. Real Postfix and Dovecot on
// loopback, each run twice side by side:
//   own-tls  the server's own TLS: Postfix smtpd STARTTLS (tlsmgr, default session cache
//            settings), Dovecot imaps (implicit TLS in imap-login)
//   postern  postern terminates TLS (SMTP STARTTLS role mx, IMAP implicit TLS) and hands the
//            plaintext to Postfix (smtpd_upstream_proxy_protocol = haproxy) and Dovecot
//            (inet_listener haproxy = yes) with a PROXY v2 header
// and measures:
//   smtp  one 10 KB delivery per session: EHLO, STARTTLS, EHLO, MAIL, RCPT, DATA, QUIT; Postfix
//         hands every message to discard(8); each delivery is checked in Postfix's log
//   imap  a session per login: TLS, LOGIN, SELECT INBOX, FETCH 1 (BODY[]), LOGOUT (the body is
//         checked)
//   idle  N authenticated IMAP sessions in IDLE: RSS and PSS of all server processes per session
// CPU: every process of one server (or postern) is moved into a cgroup made for it, and children
// inherit it, so the short-lived ones (smtpd, imap-login, imap, cleanup...) are counted after they
// exit. The load generator (this process, core 1) is in none of them; the servers and postern run
// on core 0. Each client verifies the certificate against the run's CA and offers TLS 1.3 only
// with X25519 (what Debian 12's OpenSSL 3.0 in Postfix and Dovecot negotiates anyway).
//
//   node bench/mail-path.ts [--quick] [--runs N] [--seconds S] [--idle N] [--concurrency C] [--cpu-prof]
//   --quick: one run, 3 s per loop, 50 idle sessions (CI: proves it runs; no verdicts)
//   --cpu-prof: postern under node --cpu-prof; prints where its time went (self time by function)
// Writes bench/results/mail-<date>.json (quick: mail-<date>-quick.json) and prints the tables.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { stringify } from 'yaml';
import { cpuTimes, ownCpuSeconds, round, runCapture, spawnPinned, stopProc, treeCpuSeconds, treePids, type Proc } from './lib/proc.ts';
import { median } from './lib/report.ts';
import { makePki } from '../test/helpers/certs.ts';
import { startPostfix, type PostfixHandle } from '../test/e2e/harness/postfix.ts';
import { startDovecot, type DovecotHandle } from '../test/e2e/harness/dovecot.ts';
import { HOSTNAME, deliverToMaildir, postfixTls } from '../test/e2e/harness/postern-stack.ts';
import { freePorts, waitForListening } from '../test/e2e/harness/ports.ts';
import { connectFrom, readStream, sleep, type StreamReader } from '../test/e2e/harness/streams.ts';
import { waitForText } from '../test/e2e/harness/logs.ts';

const REPO = path.dirname(import.meta.dirname);
const HOST = '127.0.0.1';
const SERVER_CORE = 0;
const CLIENT_CORE = 1;

// ---- options --------------------------------------------------------------------------------

const argv = process.argv.slice(2);
const QUICK = argv.includes('--quick');
const opt = (name: string, def: number): number => {
  const i = argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(argv[i + 1]) : def;
  if (!Number.isFinite(v) || v <= 0) throw new Error(`--${name} wants a positive number`);
  return v;
};
const RUNS = opt('runs', QUICK ? 1 : 3);
const SECONDS = opt('seconds', QUICK ? 3 : 12);
const IDLE = opt('idle', QUICK ? 50 : 500);
const CONCURRENCY = opt('concurrency', 20);
const WARMUP_SECONDS = QUICK ? 1 : 3;
/** postern runs under --cpu-prof (its CPU figures then include the profiler's cost). */
const CPU_PROF = argv.includes('--cpu-prof');

/** A 10 KB message (10,240 bytes with the final CRLF), no line starting with a dot. */
const MARKER = 'end of the postern mail-path bench message';
const MESSAGE = ((): string => {
  const head = `From: <bench@client.bench.test>\r\nTo: <rcpt@example.org>\r\nSubject: mail-path bench\r\nMessage-ID: <bench@client.bench.test>\r\n\r\n`;
  const tail = `${MARKER}\r\n`;
  const line = `${'x'.repeat(74)}\r\n`;
  let body = '';
  while (head.length + body.length + line.length + tail.length <= 10_240) body += line;
  const pad = 10_240 - head.length - body.length - tail.length;
  return head + body + (pad >= 2 ? `${'y'.repeat(pad - 2)}\r\n` : '') + tail;
})();

// ---- CPU and memory per process group: cgroups ----------------------------------------------

type GroupKind = 'postfix' | 'dovecot' | 'postern';

interface CgroupRoot { kind: 'cgroup2' | 'cpuacct'; dir: string }

/** A writable cgroup hierarchy that accounts CPU: cgroup v2 (cpu.stat), else v1 cpuacct. */
function findCgroupRoot(): CgroupRoot | null {
  const mounts = fs.readFileSync('/proc/mounts', 'utf8').split('\n').map((l) => l.split(' '));
  const candidates: CgroupRoot[] = [];
  for (const m of mounts) {
    if (m[2] === 'cgroup2' && m[1]) candidates.push({ kind: 'cgroup2', dir: m[1] });
    if (m[2] === 'cgroup' && m[1] && m[3]?.split(',').includes('cpuacct')) candidates.push({ kind: 'cpuacct', dir: m[1] });
  }
  candidates.sort((a, b) => (a.kind === b.kind ? 0 : a.kind === 'cgroup2' ? -1 : 1));
  for (const c of candidates) {
    const probe = path.join(c.dir, `postern-mail-probe-${process.pid}`);
    try {
      fs.mkdirSync(probe);
      const ok = fs.existsSync(path.join(probe, c.kind === 'cgroup2' ? 'cpu.stat' : 'cpuacct.usage'));
      fs.rmdirSync(probe);
      if (ok) return c;
    } catch { /* not writable: next */ }
  }
  return null;
}

/** Sum of a value over processes, from /proc: VmRSS (status) and Pss (smaps_rollup), in KB. */
function memoryKb(pids: number[]): { rss: number; pss: number } {
  let rss = 0, pss = 0;
  for (const pid of pids) {
    try {
      rss += Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'latin1'))?.[1] ?? 0);
      pss += Number(/^Pss:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'latin1'))?.[1] ?? 0);
    } catch { /* exited */ }
  }
  return { rss, pss };
}

function comm(pid: number): string {
  try { return fs.readFileSync(`/proc/${pid}/comm`, 'latin1').trim(); } catch { return ''; }
}

/** The processes of one server (or postern): CPU seconds used so far, their pids, their memory. */
class Group {
  private readonly roots: number[] = [];
  private readonly dir: string | null;
  readonly label: string;
  readonly kind: GroupKind;
  private readonly root: CgroupRoot | null;

  constructor(label: string, kind: GroupKind, root: CgroupRoot | null) {
    this.label = label;
    this.kind = kind;
    this.root = root;
    this.dir = root ? path.join(root.dir, `postern-mail-${process.pid}-${label}`) : null;
    if (this.dir) fs.mkdirSync(this.dir);
  }

  /** Moves a running daemon (and what it forked so far) in, pinned to the server core. */
  async adopt(pid: number): Promise<void> {
    this.roots.push(pid);
    // Twice: a child forked while the first pass ran is caught by the second.
    for (let pass = 0; pass < 2; pass++) {
      for (const p of treePids(pid)) {
        if (this.dir) { try { fs.writeFileSync(path.join(this.dir, 'cgroup.procs'), String(p)); } catch { /* exited */ } }
        await runCapture('taskset', ['-a', '-cp', String(SERVER_CORE), String(p)]);
      }
    }
  }

  pids(): number[] {
    if (!this.dir) return this.roots.flatMap((r) => treePids(r));
    return fs.readFileSync(path.join(this.dir, 'cgroup.procs'), 'latin1').split('\n').filter(Boolean).map(Number);
  }

  /** CPU seconds of every process that was ever in the group (without a cgroup: live ones only). */
  cpuSeconds(): number { return this.cpu().total; }

  /** The same, and the part of it in the kernel (NaN where the accounting does not split it). */
  cpu(): { total: number; system: number } {
    if (!this.dir || !this.root) return { total: this.roots.reduce((a, r) => a + treeCpuSeconds(r), 0), system: NaN };
    if (this.root.kind === 'cgroup2') {
      const stat = fs.readFileSync(path.join(this.dir, 'cpu.stat'), 'latin1');
      const v = (k: string) => Number(new RegExp(`^${k} (\\d+)`, 'm').exec(stat)?.[1] ?? NaN) / 1e6;
      return { total: v('usage_usec'), system: v('system_usec') };
    }
    const v = (f: string) => Number(fs.readFileSync(path.join(this.dir!, f), 'latin1').trim()) / 1e9;
    return { total: v('cpuacct.usage'), system: v('cpuacct.usage_sys') };
  }

  memory(): { rss: number; pss: number } { return memoryKb(this.pids()); }

  /** How many processes run each program (imap-login, imap, smtpd...). */
  programs(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const p of this.pids()) { const c = comm(p); if (c) out[c] = (out[c] ?? 0) + 1; }
    return out;
  }

  async remove(): Promise<void> {
    if (!this.dir) return;
    const deadline = Date.now() + 10_000;
    for (;;) {
      try { fs.rmdirSync(this.dir); return; } catch (err) {
        if (Date.now() > deadline) { console.error(`could not remove ${this.dir}: ${(err as Error).message}`); return; }
      }
      await sleep(200);
    }
  }
}

// ---- the setups -----------------------------------------------------------------------------

interface Setup {
  name: 'own-tls' | 'postern';
  smtpPort: number;
  imapPort: number;
  postfix: PostfixHandle;
  dovecot: DovecotHandle;
  /** The processes this setup's figures count: its Postfix, its Dovecot and (postern) postern. */
  groups: Group[];
}

const cleanups: (() => Promise<void>)[] = [];
async function cleanup(): Promise<void> {
  while (cleanups.length) {
    const f = cleanups.pop()!;
    await f().catch((err: Error) => console.error(`cleanup: ${err.message}`));
  }
}

/** Settings both setups share: delivery by discard(8), limits that let 500 IMAP sessions in. */
const POSTFIX_COMMON = [
  // discard(8) for every accepted recipient: no mailbox write, so what is compared is the SMTP
  // side (smtpd, cleanup, qmgr, the queue file), not the disk. Recipients are still checked.
  'virtual_transport = discard:delivered by the mail-path bench',
  `message_size_limit = ${10 * 1024 * 1024}`,
  'smtpd_helo_required = yes',
  '',
].join('\n');

const DOVECOT_COMMON = `# mail-path bench: the same in both setups
default_process_limit = 1000
default_client_limit = 5000
protocol imap {
  mail_max_userip_connections = 5000
}
`;

interface Started { setups: [Setup, Setup]; caPem: string; settings: Record<string, unknown>; postern: Proc; profDir: string; cgroup: string }

async function startAll(): Promise<Started> {
  const root = findCgroupRoot();
  const pki = await makePki();
  cleanups.push(async () => { fs.rmSync(pki.dir, { recursive: true, force: true }); });
  const cert = await pki.issue('mail', { names: [HOSTNAME] }); // ECDSA P-256, with the CA in the chain
  const [pfA, pfAsub, pfB, pfBsub, dcA, dcApop, dcAimaps, dcB, dcBpop, pSmtp, pImap] = await freePorts(11);

  // The cgroups first, so that they are removed after the daemons stopped (cleanups run backwards).
  const mkGroup = (label: string, kind: GroupKind) => {
    const g = new Group(label, kind, root);
    cleanups.push(() => g.remove());
    return g;
  };
  const gPfA = mkGroup('postfix-a', 'postfix'), gDcA = mkGroup('dovecot-a', 'dovecot');
  const gPfB = mkGroup('postfix-b', 'postfix'), gDcB = mkGroup('dovecot-b', 'dovecot'), gPostern = mkGroup('postern', 'postern');

  // own-tls: Postfix with smtpd TLS (the e2e suite's settings: may, cert, key, tlsmgr), Dovecot
  // with an imaps listener.
  const tlsA = postfixTls(cert, 10 * 1024 * 1024);
  const postfixA = await startPostfix({
    smtpPort: pfA!, submissionPort: pfAsub!, proxyProtocol: null, myhostname: HOSTNAME,
    mainCfExtra: POSTFIX_COMMON + tlsA.mainCfExtra, masterCfExtra: tlsA.masterCfExtra,
  });
  cleanups.push(() => postfixA.stop());
  const dovecotA = await startDovecot({
    imapPort: dcA!, pop3Port: dcApop!, haproxy: false,
    extraConf: `${DOVECOT_COMMON}ssl = yes
ssl_cert = <${cert.cert}
ssl_key = <${cert.key}
service imap-login {
  inet_listener imaps {
    address = 127.0.0.1
    port = ${dcAimaps}
    ssl = yes
  }
}
`,
  });
  cleanups.push(() => dovecotA.stop());
  await waitForListening([dcAimaps!], 10_000, () => true);

  // postern: plaintext Postfix and Dovecot behind PROXY v2.
  const postfixB = await startPostfix({
    smtpPort: pfB!, submissionPort: pfBsub!, proxyProtocol: 'haproxy', myhostname: HOSTNAME, mainCfExtra: POSTFIX_COMMON,
  });
  cleanups.push(() => postfixB.stop());
  const dovecotB = await startDovecot({ imapPort: dcB!, pop3Port: dcBpop!, haproxy: true, extraConf: DOVECOT_COMMON });
  cleanups.push(() => dovecotB.stop());

  const posternYaml = stringify({
    log: { level: 'info' },
    limits: { maxConnections: 100_000, maxConnectionsPerClient: 100_000 }, // every client is 127.0.0.1
    certificates: [{ cert: cert.cert, key: cert.key }],
    listeners: [
      { name: 'mx', listen: `${HOST}:${pSmtp}`, protocol: 'smtp', role: 'mx', tls: 'starttls', hostname: HOSTNAME, backend: { address: `${HOST}:${pfB}`, proxyProtocol: 'v2' } },
      { name: 'imaps', listen: `${HOST}:${pImap}`, protocol: 'imap', tls: 'implicit', hostname: HOSTNAME, backend: { address: `${HOST}:${dcB}`, proxyProtocol: 'v2' } },
    ],
  });
  const cfg = path.join(pki.dir, 'postern.yaml');
  fs.writeFileSync(cfg, posternYaml);
  const posternLog = path.join(pki.dir, 'postern.log');
  const profDir = path.join(pki.dir, 'cpu-prof');
  const prof = CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', profDir] : [];
  const postern = spawnPinned('postern', SERVER_CORE, process.execPath, [...prof, path.join(REPO, 'bin', 'postern.js'), 'run', '-c', cfg], { logFile: posternLog });
  cleanups.push(() => stopProc(postern));
  await waitForText(posternLog, /"listening"[\s\S]*"listening"/, 15_000, 'postern log').catch((err: Error) => {
    throw new Error(`postern did not start (${postern.exitedEarly() ?? 'running'}): ${err.message}`);
  });
  await waitForListening([pSmtp!, pImap!], 10_000, () => postern.exitedEarly() === null);

  const masterPid = (file: string) => Number(fs.readFileSync(file, 'utf8').trim());
  await gPfA.adopt(masterPid(path.join(postfixA.dir, 'queue', 'pid', 'master.pid')));
  await gDcA.adopt(masterPid(path.join(dovecotA.dir, 'run', 'master.pid')));
  await gPfB.adopt(masterPid(path.join(postfixB.dir, 'queue', 'pid', 'master.pid')));
  await gDcB.adopt(masterPid(path.join(dovecotB.dir, 'run', 'master.pid')));
  await gPostern.adopt(postern.pid);

  // One message in alice's INBOX for FETCH 1, in both Dovecots.
  for (const d of [dovecotA, dovecotB]) await deliverToMaildir(d.dir, 'alice', 'bench.1:2,', MESSAGE);

  const settings = {
    certificate: 'ECDSA P-256 leaf + test CA (test/helpers/certs.ts), the same file for Postfix, Dovecot and postern',
    client: `Node ${process.version} tls: TLS 1.3 only, ecdhCurve X25519, certificate verified against the CA, servername ${HOSTNAME}; no resumption (every session a full handshake)`,
    postfixCommon: POSTFIX_COMMON.trim().split('\n'),
    postfixOwnTls: tlsA.mainCfExtra.trim().split('\n').concat(['smtpd_tls_session_cache_database unset (Postfix default: no server-side cache; TLS 1.3 tickets at their default, unused by these clients)', 'master.cf: tlsmgr']),
    postfixPostern: ['smtpd_upstream_proxy_protocol = haproxy (master.cf -o)', 'no smtpd TLS settings'],
    dovecotCommon: DOVECOT_COMMON.trim().split('\n'),
    dovecotOwnTls: ['ssl = yes, ssl_cert/ssl_key = the same ECDSA certificate', 'inet_listener imaps { ssl = yes }', 'imap-login with its defaults (service_count = 1: one process per connection, which stays as the TLS proxy of the session)'],
    dovecotPostern: ['ssl = no', 'inet_listener imap { haproxy = yes }, haproxy_trusted_networks = 127.0.0.0/8'],
    postern: posternYaml.trim().split('\n'),
    queueAndMail: `Postfix queue and Dovecot maildirs under ${process.env.POSTERN_E2E_TMPDIR ?? os.tmpdir()}`,
  };
  return {
    setups: [
      { name: 'own-tls', smtpPort: pfA!, imapPort: dcAimaps!, postfix: postfixA, dovecot: dovecotA, groups: [gPfA, gDcA] },
      { name: 'postern', smtpPort: pSmtp!, imapPort: pImap!, postfix: postfixB, dovecot: dovecotB, groups: [gPfB, gDcB, gPostern] },
    ],
    caPem: pki.ca.certPem,
    settings,
    postern,
    profDir,
    cgroup: root ? `${root.kind} at ${root.dir}` : 'none writable: /proc of the live processes (exited ones missed: a lower bound)',
  };
}

// ---- the client (the load generator, on core 1) ---------------------------------------------

let CLIENT_TLS: tls.ConnectionOptions = {};

interface TlsInfo { protocol: string | null; group: string | null; cipher: string | null }

function tlsInfo(s: tls.TLSSocket): TlsInfo {
  return { protocol: s.getProtocol(), group: (s.getEphemeralKeyInfo() as { name?: string } | null)?.name ?? null, cipher: s.getCipher()?.standardName ?? null };
}

/** TLS over an existing socket (STARTTLS) or a new connection (implicit); bounded by 10 s. */
function tlsConnect(o: tls.ConnectionOptions): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const t = tls.connect({ ...CLIENT_TLS, ...o });
    t.setNoDelay(true);
    t.setTimeout(10_000, () => t.destroy(new Error('TLS handshake: no answer within 10 s')));
    t.once('error', reject);
    t.once('secureConnect', () => {
      t.setTimeout(0);
      t.off('error', reject);
      t.on('error', () => {});
      resolve(t);
    });
  });
}

/** Waits for the whole reply (its last line "NNN text") and checks the code. */
async function smtpReply(r: StreamReader, code: string, step: string): Promise<string> {
  const text = await r.readUntil(/^\d{3} [^\r\n]*\r\n/m);
  const last = text.trimEnd().split('\r\n').pop() ?? '';
  if (!last.startsWith(`${code} `)) throw new Error(`${step}: expected ${code}, got ${JSON.stringify(last.slice(0, 100))}`);
  return text;
}

/** One delivery: greeting, EHLO, STARTTLS, handshake, EHLO, MAIL, RCPT, DATA, QUIT. */
async function smtpDelivery(port: number): Promise<TlsInfo> {
  const plain = await connectFrom(port, HOST);
  let secure: tls.TLSSocket | null = null;
  try {
    const r = readStream(plain);
    await smtpReply(r, '220', 'greeting');
    plain.write('EHLO client.bench.test\r\n');
    if (!/^250[ -]STARTTLS\r$/m.test(await smtpReply(r, '250', 'EHLO'))) throw new Error('no STARTTLS offered');
    plain.write('STARTTLS\r\n');
    await smtpReply(r, '220', 'STARTTLS');
    r.detach();
    secure = await tlsConnect({ socket: plain });
    const s = readStream(secure);
    const step = async (line: string, code: string): Promise<void> => { secure!.write(line); await smtpReply(s, code, line.split(/[ :\r]/)[0]!); };
    await step('EHLO client.bench.test\r\n', '250');
    await step('MAIL FROM:<bench@client.bench.test>\r\n', '250');
    await step('RCPT TO:<rcpt@example.org>\r\n', '250');
    await step('DATA\r\n', '354');
    await step(`${MESSAGE}.\r\n`, '250');
    const info = tlsInfo(secure);
    await step('QUIT\r\n', '221');
    return info;
  } finally {
    secure?.destroy();
    plain.destroy();
  }
}

async function imapCommand(s: tls.TLSSocket, r: StreamReader, tag: string, command: string): Promise<string> {
  s.write(`${tag} ${command}\r\n`);
  const text = await r.readUntil(new RegExp(`^${tag} (OK|NO|BAD)[^\\r\\n]*\\r\\n`, 'm'));
  if (!new RegExp(`^${tag} OK`, 'm').test(text)) throw new Error(`${command.split(' ')[0]}: ${JSON.stringify(text.slice(-100))}`);
  return text;
}

/** Implicit TLS, LOGIN, SELECT INBOX, then FETCH 1 (BODY[]) and LOGOUT, or IDLE (the socket is kept). */
async function imapSession(port: number, mode: 'fetch' | 'idle'): Promise<{ info: TlsInfo; socket: tls.TLSSocket | null }> {
  const s = await tlsConnect({ host: HOST, port });
  let keep = false;
  try {
    const r = readStream(s);
    await r.readUntil(/^\* OK[^\r\n]*\r\n/m);
    await imapCommand(s, r, 'a1', 'LOGIN alice secret');
    await imapCommand(s, r, 'a2', 'SELECT INBOX');
    const info = tlsInfo(s);
    if (mode === 'idle') {
      s.write('a3 IDLE\r\n');
      await r.readUntil(/^\+ [^\r\n]*\r\n/m);
      r.detach();
      keep = true;
      return { info, socket: s };
    }
    const fetched = await imapCommand(s, r, 'a3', 'FETCH 1 (BODY[])');
    if (!fetched.includes(MARKER) || !fetched.includes(`{${MESSAGE.length}}`)) throw new Error('FETCH: not the whole message');
    await imapCommand(s, r, 'a4', 'LOGOUT');
    return { info, socket: null };
  } finally {
    if (!keep) s.destroy();
  }
}

interface LoopResult { ok: number; failed: number; seconds: number; lastError: string | null; tls: TlsInfo | null }

/** `parallel` clients run sessions back to back for `ms` (each step of a session is bounded). */
async function loop(ms: number, parallel: number, session: () => Promise<TlsInfo>): Promise<LoopResult> {
  const res: LoopResult = { ok: 0, failed: 0, seconds: 0, lastError: null, tls: null };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (performance.now() - t0 < ms) {
      try { res.tls = await session(); res.ok++; } catch (err) {
        res.failed++;
        res.lastError = (err as Error).message.split('\n')[0]!;
        await sleep(20);
      }
    }
  }));
  res.seconds = (performance.now() - t0) / 1000;
  return res;
}

// ---- measurement windows --------------------------------------------------------------------

async function ciRunning(): Promise<boolean> {
  return (await runCapture('pgrep', ['-f', '\\.ci/run'])).stdout.trim() !== '';
}

interface WindowResult {
  seconds: number;
  /** CPU seconds per group label over the window. */
  cpu: Record<string, number>;
  /** The share of it spent in the kernel (system time). */
  systemShare: Record<string, number>;
  /** Cores' worth of CPU used by processes outside the groups and this harness. */
  foreignCores: number;
  core0Busy: number;
  core1Busy: number;
  ciRunning: boolean;
  disturbed: boolean;
}

/** CPU of every group, of each core and of this harness, from now until `close()`. */
async function openWindow(all: Group[], posternGroup: Group): Promise<() => Promise<WindowResult>> {
  const ci0 = await ciRunning();
  const t0 = performance.now();
  const cpu0 = all.map((g) => g.cpu());
  const own0 = ownCpuSeconds();
  const cores0 = cpuTimes();
  return async () => {
    const cpu1 = all.map((g) => g.cpu());
    const own1 = ownCpuSeconds();
    const cores1 = cpuTimes();
    const seconds = (performance.now() - t0) / 1000;
    const cpu: Record<string, number> = {};
    const systemShare: Record<string, number> = {};
    all.forEach((g, i) => {
      cpu[g.label] = cpu1[i]!.total - cpu0[i]!.total;
      systemShare[g.label] = round((cpu1[i]!.system - cpu0[i]!.system) / cpu[g.label]!, 3);
    });
    let task = 0;
    const busy: number[] = [];
    for (const [n, b] of cores1) {
      const a = cores0.get(n);
      if (!a) continue;
      task += (b.task - a.task) / 100;
      busy[n] = b.total > a.total ? (b.busy - a.busy) / (b.total - a.total) : 0;
    }
    // postern is this harness's child: in ownCpuSeconds and in its group; count it once.
    const groups = Object.values(cpu).reduce((a, b) => a + b, 0);
    const foreignCores = Math.max(0, task - groups - (own1 - own0 - cpu[posternGroup.label]!)) / seconds;
    const ci = ci0 || (await ciRunning());
    return {
      seconds: round(seconds, 2), cpu, systemShare, foreignCores: round(foreignCores, 3), core0Busy: round(busy[0] ?? 0, 3), core1Busy: round(busy[1] ?? 0, 3),
      ciRunning: ci, disturbed: ci || foreignCores > 0.15,
    };
  };
}

/** Full mode: time left to wait for other processes to leave the CPUs, over the whole run. */
let quietBudgetMs = QUICK ? 0 : 300_000;

/** Waits (bounded by the budget) until a 1 s window is not disturbed. */
async function waitQuiet(all: Group[], pg: Group): Promise<void> {
  while (quietBudgetMs > 0) {
    const t0 = Date.now();
    const close = await openWindow(all, pg);
    await sleep(1000);
    const quiet = !(await close()).disturbed;
    quietBudgetMs -= Date.now() - t0;
    if (quiet) return;
  }
}

/** Measures once; in full mode a window that other processes disturbed is taken again (twice at most). */
async function undisturbed<T extends { window: WindowResult }>(all: Group[], pg: Group, what: string, measure: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    await waitQuiet(all, pg);
    const r = await measure();
    if (!r.window.disturbed || QUICK || attempt >= 2) return r;
    console.log(`  ${what}: disturbed (foreign ${r.window.foreignCores} cores${r.window.ciRunning ? ', CI running' : ''}), measuring again`);
  }
}

/** CPU ms per session of the setup's groups, by kind (postfix / dovecot / postern) and in total. */
function perSession(setup: Setup, w: WindowResult, sessions: number): Record<string, number> {
  const out: Record<string, number> = { total: 0 };
  for (const g of setup.groups) {
    const ms = sessions ? (w.cpu[g.label]! * 1000) / sessions : NaN;
    out[g.kind] = round((out[g.kind] ?? 0) + ms, 3);
    out.total = round(out.total! + ms, 3);
  }
  return out;
}

/** Waits (bounded) until a group runs no more than `max` processes of these programs. */
async function waitPrograms(g: Group, names: string[], max: number, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const p = g.programs();
    const n = names.reduce((a, k) => a + (p[k] ?? 0), 0);
    if (n <= max || Date.now() > deadline) return n;
    await sleep(100);
  }
}

const groupOf = (s: Setup, kind: GroupKind): Group => s.groups.find((g) => g.kind === kind)!;
const sentCount = (log: string): { sent: number; failed: number } => ({
  sent: (log.match(/ status=sent /g) ?? []).length,
  failed: (log.match(/ status=(deferred|bounced) /g) ?? []).length,
});

interface SmtpRun { deliveries: number; failed: number; lastError: string | null; perSec: number; delivered: number; notDelivered: number; cpuMs: Record<string, number>; tls: TlsInfo | null; window: WindowResult }
interface ImapRun { logins: number; failed: number; lastError: string | null; perSec: number; cpuMs: Record<string, number>; tls: TlsInfo | null; window: WindowResult }
interface IdleRun { held: number; failed: number; lastError: string | null; rssKbPerSession: number; pssKbPerSession: number; byKind: Record<string, { rss: number; pss: number }>; processesHeld: Record<string, number> }

async function measureSmtp(setup: Setup, all: Group[], pg: Group, seconds: number): Promise<SmtpRun> {
  const before = sentCount(await setup.postfix.readLog());
  const close = await openWindow(all, pg);
  const l = await loop(seconds * 1000, CONCURRENCY, () => smtpDelivery(setup.smtpPort));
  // Delivery is asynchronous: the window closes once every accepted message left the queue.
  const deadline = Date.now() + 60_000;
  let now = before;
  while (Date.now() < deadline) {
    now = sentCount(await setup.postfix.readLog());
    if (now.sent - before.sent + now.failed - before.failed >= l.ok) break;
    await sleep(200);
  }
  const w = await close();
  const delivered = now.sent - before.sent;
  return {
    deliveries: l.ok, failed: l.failed, lastError: l.lastError, perSec: round(l.ok / l.seconds, 1),
    delivered, notDelivered: l.ok - delivered, cpuMs: perSession(setup, w, l.ok), tls: l.tls, window: w,
  };
}

async function measureImap(setup: Setup, all: Group[], pg: Group, seconds: number): Promise<ImapRun> {
  const dc = groupOf(setup, 'dovecot');
  const close = await openWindow(all, pg);
  const l = await loop(seconds * 1000, CONCURRENCY, async () => (await imapSession(setup.imapPort, 'fetch')).info);
  // imap and imap-login processes finish their logout after the client saw it.
  await waitPrograms(dc, ['imap', 'imap-login'], 0, 10_000);
  const w = await close();
  return { logins: l.ok, failed: l.failed, lastError: l.lastError, perSec: round(l.ok / l.seconds, 1), cpuMs: perSession(setup, w, l.ok), tls: l.tls, window: w };
}

async function measureIdle(setup: Setup, n: number): Promise<IdleRun> {
  const dc = groupOf(setup, 'dovecot');
  await waitPrograms(dc, ['imap', 'imap-login'], 0, 10_000);
  await sleep(1000);
  const memGroups = setup.groups.filter((g) => g.kind !== 'postfix');
  const m0 = memGroups.map((g) => g.memory());
  const sockets: tls.TLSSocket[] = [];
  let failed = 0, lastError: string | null = null, next = 0;
  const deadline = Date.now() + 120_000;
  try {
    await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
      while (next < n && Date.now() < deadline) {
        next++;
        try { sockets.push((await imapSession(setup.imapPort, 'idle')).socket!); } catch (err) {
          failed++;
          lastError = (err as Error).message.split('\n')[0]!;
        }
      }
    }));
    await sleep(2000);
    const m1 = memGroups.map((g) => g.memory());
    const held = sockets.filter((s) => !s.destroyed).length;
    const byKind: Record<string, { rss: number; pss: number }> = {};
    let rss = 0, pss = 0;
    memGroups.forEach((g, i) => {
      const d = { rss: m1[i]!.rss - m0[i]!.rss, pss: m1[i]!.pss - m0[i]!.pss };
      byKind[g.kind] = { rss: round(d.rss / held, 1), pss: round(d.pss / held, 1) };
      rss += d.rss;
      pss += d.pss;
    });
    const processesHeld: Record<string, number> = {};
    for (const g of memGroups) for (const [k, v] of Object.entries(g.programs())) processesHeld[`${g.kind}/${k}`] = v;
    return { held, failed, lastError, rssKbPerSession: round(rss / held, 1), pssKbPerSession: round(pss / held, 1), byKind, processesHeld };
  } finally {
    for (const s of sockets) { s.end('DONE\r\na4 LOGOUT\r\n'); s.destroy(); }
    await waitPrograms(dc, ['imap', 'imap-login'], 0, 30_000);
  }
}

// ---- report ---------------------------------------------------------------------------------

interface RunRecord { run: number; setup: Setup['name']; smtp: SmtpRun; imap: ImapRun; idle: IdleRun }

const fmt = (x: number | undefined, d = 1): string => (x === undefined || Number.isNaN(x) ? '-' : x.toFixed(d));

function summary(runs: RunRecord[], name: Setup['name']) {
  const rs = runs.filter((r) => r.setup === name);
  const med = (f: (r: RunRecord) => number | undefined): number => {
    const v = rs.map(f).filter((x): x is number => x !== undefined && !Number.isNaN(x));
    return v.length ? round(median(v), 3) : NaN;
  };
  return {
    setup: name,
    runs: rs.length,
    disturbedRuns: rs.filter((r) => r.smtp.window.disturbed || r.imap.window.disturbed).length,
    smtpPerSec: med((r) => r.smtp.perSec),
    smtpCpuMs: { total: med((r) => r.smtp.cpuMs.total), postern: med((r) => r.smtp.cpuMs.postern), postfix: med((r) => r.smtp.cpuMs.postfix), dovecot: med((r) => r.smtp.cpuMs.dovecot) },
    smtpFailed: rs.reduce((a, r) => a + r.smtp.failed + r.smtp.notDelivered, 0),
    imapPerSec: med((r) => r.imap.perSec),
    imapCpuMs: { total: med((r) => r.imap.cpuMs.total), postern: med((r) => r.imap.cpuMs.postern), postfix: med((r) => r.imap.cpuMs.postfix), dovecot: med((r) => r.imap.cpuMs.dovecot) },
    imapFailed: rs.reduce((a, r) => a + r.imap.failed, 0),
    idleRssKb: med((r) => r.idle.rssKbPerSession),
    idlePssKb: med((r) => r.idle.pssKbPerSession),
    idleRssKbPostern: med((r) => r.idle.byKind.postern?.rss),
    idleFailed: rs.reduce((a, r) => a + r.idle.failed, 0),
    core0Busy: med((r) => r.smtp.window.core0Busy),
  };
}

function table(head: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [line(head), line(head.map(() => '---')), ...rows.map(line)].join('\n');
}

/** Self time by function in the .cpuprofile that `node --cpu-prof` wrote, largest first (% of the busy time). */
function profileTop(dir: string, n = 25): { fn: string; selfPct: number }[] {
  // bin/postern.js re-executes itself (execve) with its V8 flags: the larger profile is the daemon's.
  const files = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')) : [];
  const file = files.sort((a, b) => fs.statSync(path.join(dir, b)).size - fs.statSync(path.join(dir, a)).size)[0];
  if (!file) return [];
  const prof = JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8')) as { nodes: { callFrame: { functionName: string; url: string; lineNumber: number }; hitCount?: number }[] };
  const self = new Map<string, number>();
  let total = 0;
  for (const node of prof.nodes) {
    const { functionName, url, lineNumber } = node.callFrame;
    if (functionName === '(idle)') continue; // share of the busy time, not of the run
    const key = `${functionName || '(anonymous)'} ${url ? `${path.basename(url)}:${lineNumber + 1}` : ''}`.trim();
    self.set(key, (self.get(key) ?? 0) + (node.hitCount ?? 0));
    total += node.hitCount ?? 0;
  }
  return [...self].sort((a, b) => b[1] - a[1]).slice(0, n).map(([fn, hits]) => ({ fn, selfPct: round((100 * hits) / total, 1) }));
}

// ---- main -----------------------------------------------------------------------------------

async function main(): Promise<void> {
  const started = Date.now();
  if (process.getuid?.() !== 0) throw new Error('needs root: Postfix, Dovecot and the cgroups');
  // Postfix's queue and Dovecot's maildirs on tmpfs: fsync latency is not what is compared.
  if (!process.env.POSTERN_E2E_TMPDIR && fs.existsSync('/dev/shm')) process.env.POSTERN_E2E_TMPDIR = '/dev/shm';
  if (!fs.existsSync(path.join(REPO, 'dist', 'cli.js'))) throw new Error('dist/ is missing: npm run build');
  const notes: string[] = [];
  if (os.availableParallelism() < 2) throw new Error('needs two CPUs: the servers on one, the load generator on the other');
  const pin = await runCapture('taskset', ['-a', '-cp', String(CLIENT_CORE), String(process.pid)]);
  if (pin.code !== 0) notes.push(`load generator NOT pinned to core ${CLIENT_CORE}: ${pin.stderr.trim()}`);

  console.log(`mail-path bench (${QUICK ? 'quick' : 'full'}): ${RUNS} run(s) per setup, interleaved, ${SECONDS} s per loop, ${CONCURRENCY} clients, ${IDLE} idle IMAP sessions`);
  console.log(`pinning: Postfix, Dovecot and postern on core ${SERVER_CORE} (taskset, inherited by their children); this load generator on core ${CLIENT_CORE}`);
  if (await ciRunning()) notes.push('a CI run (.ci/run) was running at the start: figures are disturbed');

  const st = await startAll();
  console.log(`CPU accounting: ${st.cgroup}; ${st.settings.queueAndMail as string}`);
  CLIENT_TLS = { ca: st.caPem, servername: HOSTNAME, minVersion: 'TLSv1.3', ecdhCurve: 'X25519' };
  const all = st.setups.flatMap((s) => s.groups);
  const pg = all.find((g) => g.kind === 'postern')!;

  // Warm-up: every daemon has its processes and postern its JIT; a setup that fails stops here.
  for (const s of st.setups) {
    const smtp = await loop(WARMUP_SECONDS * 1000, CONCURRENCY, () => smtpDelivery(s.smtpPort));
    const imap = await loop(WARMUP_SECONDS * 1000, CONCURRENCY, async () => (await imapSession(s.imapPort, 'fetch')).info);
    console.log(`warm-up ${s.name}: ${smtp.ok} deliveries (${smtp.failed} failed), ${imap.ok} IMAP logins (${imap.failed} failed); TLS ${smtp.tls?.protocol} ${smtp.tls?.group} ${smtp.tls?.cipher}`);
    if (smtp.ok === 0 || imap.ok === 0) throw new Error(`${s.name}: warm-up failed: ${smtp.lastError ?? imap.lastError}`);
  }

  const runs: RunRecord[] = [];
  for (let run = 1; run <= RUNS; run++) {
    const order = run % 2 === 1 ? st.setups : [...st.setups].reverse();
    for (const s of order) {
      const smtp = await undisturbed(all, pg, `${s.name} smtp`, () => measureSmtp(s, all, pg, SECONDS));
      const imap = await undisturbed(all, pg, `${s.name} imap`, () => measureImap(s, all, pg, SECONDS));
      const idle = await measureIdle(s, IDLE);
      runs.push({ run, setup: s.name, smtp, imap, idle });
      const flag = (w: WindowResult) => (w.disturbed ? ` DISTURBED (foreign ${w.foreignCores} cores${w.ciRunning ? ', CI running' : ''})` : '');
      console.log(`run ${run} ${s.name}: smtp ${smtp.perSec}/s ${smtp.cpuMs.total} ms CPU (${smtp.failed} failed, ${smtp.notDelivered} not delivered; core0 ${smtp.window.core0Busy}, core1 ${smtp.window.core1Busy})${flag(smtp.window)}; ` +
        `imap ${imap.perSec}/s ${imap.cpuMs.total} ms CPU (${imap.failed} failed; core0 ${imap.window.core0Busy})${flag(imap.window)}; idle ${idle.held} held: ${idle.rssKbPerSession} KB RSS, ${idle.pssKbPerSession} KB PSS each (${idle.failed} failed)`);
      if (smtp.lastError || imap.lastError || idle.lastError) console.log(`  last errors: ${[smtp.lastError, imap.lastError, idle.lastError].filter(Boolean).join(' / ')}`);
    }
  }

  const sums = st.setups.map((s) => summary(runs, s.name));
  const smtpTable = table(
    ['setup', 'deliveries/s', 'CPU ms/delivery', 'postern', 'postfix', 'failed'],
    sums.map((x) => [x.setup, fmt(x.smtpPerSec, 0), fmt(x.smtpCpuMs.total, 2), fmt(x.smtpCpuMs.postern, 2), fmt(x.smtpCpuMs.postfix, 2), String(x.smtpFailed)]),
  );
  const imapTable = table(
    ['setup', 'logins/s', 'CPU ms/login', 'postern', 'dovecot', 'failed', 'KB/idle IMAP (RSS)', 'KB/idle IMAP (PSS)', 'of which postern (RSS)'],
    sums.map((x) => [x.setup, fmt(x.imapPerSec, 0), fmt(x.imapCpuMs.total, 2), fmt(x.imapCpuMs.postern, 2), fmt(x.imapCpuMs.dovecot, 2), String(x.imapFailed + x.idleFailed), fmt(x.idleRssKb), fmt(x.idlePssKb), fmt(x.idleRssKbPostern)]),
  );
  const [a, b] = sums as [ReturnType<typeof summary>, ReturnType<typeof summary>];
  const ratios = `postern / own TLS, CPU per session: SMTP ${fmt(b.smtpCpuMs.total / a.smtpCpuMs.total, 2)}x, IMAP ${fmt(b.imapCpuMs.total / a.imapCpuMs.total, 2)}x; ` +
    `sessions/s: SMTP ${fmt(b.smtpPerSec / a.smtpPerSec, 2)}x, IMAP ${fmt(b.imapPerSec / a.imapPerSec, 2)}x`;
  const disturbed = runs.some((r) => r.smtp.window.disturbed || r.imap.window.disturbed);
  console.log(`\nSMTP: one 10 KB delivery per STARTTLS session (medians of ${RUNS})\n${smtpTable}\n\nIMAP: implicit TLS, LOGIN, SELECT, FETCH 1 (BODY[]), LOGOUT; idle: ${IDLE} sessions in IDLE (medians of ${RUNS})\n${imapTable}\n\n${ratios}`);
  if (disturbed) console.log('some windows were DISTURBED (other processes used the CPUs): see the JSON');
  for (const n of notes) console.log(`note: ${n}`);

  let profile: { fn: string; selfPct: number }[] | null = null;
  if (CPU_PROF) {
    await stopProc(st.postern); // the profile is written when postern exits
    profile = profileTop(st.profDir);
    console.log(`\npostern --cpu-prof, self time in % of its busy time over the whole run (its CPU figures above include the profiler):\n${profile.map((p) => `  ${p.selfPct.toFixed(1).padStart(5)}%  ${p.fn}`).join('\n')}`);
  }
  const rev = await runCapture('git', ['-C', REPO, 'rev-parse', '--short', 'HEAD']);
  const dirty = await runCapture('git', ['-C', REPO, 'status', '--porcelain', '--', 'src']);
  const postern = `${rev.stdout.trim() || 'unknown'}${dirty.stdout.trim() ? ' + uncommitted src changes' : ''}`;

  const date = new Date().toISOString().replace(/:/g, '-').replace(/\.\d+Z$/, 'Z');
  const out = path.join(REPO, 'bench', 'results', `mail-${date}${QUICK ? '-quick' : ''}.json`);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, `${JSON.stringify({
    date: new Date().toISOString(), postern, cpuProf: CPU_PROF, profile, quick: QUICK, runs: RUNS, seconds: SECONDS, concurrency: CONCURRENCY, idleSessions: IDLE, disturbed, notes,
    machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? '?', kernel: os.release(), memoryGB: round(os.totalmem() / 2 ** 30, 1), node: process.version },
    pinning: { servers: SERVER_CORE, loadGenerator: CLIENT_CORE }, cpuAccounting: st.cgroup, settings: st.settings,
    summary: sums, ratios, records: runs,
  }, null, 2)}\n`);
  // Not a verdict on the figures: a session that failed or a message that was not delivered means
  // the harness (or a server behind it) is broken, in quick mode too.
  const broken = sums.reduce((a, x) => a + x.smtpFailed + x.imapFailed + x.idleFailed, 0);
  if (broken > 0) {
    console.log(`FAILED: ${broken} session(s) failed or message(s) not delivered (see the JSON records)`);
    process.exitCode = 1;
  }
  console.log(`\nwrote ${path.relative(REPO, out)} in ${round((Date.now() - started) / 1000, 0)} s`);
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    console.error(`\n${sig}: stopping`);
    void cleanup().finally(() => process.exit(130));
  });
}

try {
  await main();
} catch (err) {
  console.error(`mail-path bench failed: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
} finally {
  await cleanup();
}
