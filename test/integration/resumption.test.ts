// TLS session resumption with the real daemon (node bin/postern.js run), real clients (Node's
// tls, openssl s_client) on loopback, and an echo backend:
//   a. TLS 1.3 and 1.2 tickets resume (client side, summary `resumed`, metric), openssl too,
//      and the ticket lifetime hint is the rotation period;
//   b. workers: 2 — a ticket from one worker resumes on the other, and on a replaced worker
//      (b2: also with a key file that changed on disk since the start);
//   c. SIGHUP, unchanged and with a renewed certificate for the same names, keeps resumption;
//      a changed listener policy ends it;
//   d. two daemons sharing sessionTickets.keyFile resume each other's tickets, others do not;
//   e. listeners whose policies differ never resume each other's tickets, nor does another
//      certificate on the same listener, and no ticket gets a client past the SNI policy;
//   f. rotation: the previous period's key is accepted right after the boundary;
//   g. key file errors at load (postern check);
//   h. SO_REUSEPORT: each worker has its own listening socket and accepts, and a second postern
//      on the same address fails with listen_failed instead of sharing it.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes, X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import { makePki, type CertFiles, type TestPki } from '../helpers/certs.ts';
import { startBackend, type RecordingBackend } from '../helpers/backend.ts';
import { freePort, freePorts } from '../helpers/ports.ts';
import { buildOnce } from '../helpers/build.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const BIN = join(ROOT, 'bin', 'postern.js');
const NAME = 'mail.example.org';

let pki: TestPki;
let cert: CertFiles;
let backend: RecordingBackend;
let fileCount = 0;

beforeAll(async () => {
  buildOnce();
  pki = await makePki();
  cert = await pki.issue('mail', { names: [NAME] });
  backend = await startBackend({ proxy: false });
}, 60_000);

afterAll(async () => {
  await backend?.close();
});

type Line = { msg: string; pid: number; level: string } & Record<string, unknown>;

const running = new Set<Postern>();
afterEach(async () => {
  await Promise.all([...running].map((p) => p.stop()));
});

/** One `postern` process (run or check), its JSON log lines parsed as they come. */
class Postern {
  readonly proc: ChildProcess;
  readonly lines: Line[] = [];
  text = '';
  code: number | null | undefined = undefined;
  readonly exited: Promise<number | null>;
  private readonly pending: Array<{ clientPort: number; match: Record<string, unknown>; what: string }> = [];

  constructor(args: string[]) {
    this.proc = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(this);
    let partial = '';
    this.proc.stdout!.setEncoding('utf8');
    this.proc.stdout!.on('data', (d: string) => {
      this.text += d;
      const parts = (partial + d).split('\n');
      partial = parts.pop()!;
      for (const l of parts) {
        if (!l.startsWith('{')) continue;
        try {
          this.lines.push(JSON.parse(l) as Line);
        } catch {
          // not a log line
        }
      }
    });
    this.proc.stderr!.setEncoding('utf8');
    this.proc.stderr!.on('data', (d: string) => (this.text += d));
    // 'close', not 'exit': every line written before the exit has been read by then (the
    // workers write to the same pipe, so it also waits for them).
    this.exited = new Promise((resolve) =>
      this.proc.on('close', (code) => {
        this.code = code;
        running.delete(this);
        resolve(code);
      }),
    );
  }

  static run(file: string): Postern {
    return new Postern(['run', '-c', file]);
  }

  async waitFor<T>(find: () => T | undefined | false, what: string, ms = 20_000): Promise<T> {
    const until = Date.now() + ms;
    for (;;) {
      const v = find();
      if (v !== undefined && v !== false) return v;
      if (this.code !== undefined) throw new Error(`postern exited (${this.code}) while waiting for ${what}; output:\n${this.text}`);
      if (Date.now() > until) throw new Error(`timed out waiting for ${what}; output:\n${this.text}`);
      await sleep(25);
    }
  }

  count(msg: string): number {
    return this.lines.filter((l) => l.msg === msg).length;
  }

  /** Until `n` listeners (over all workers) say they listen. */
  listening(n = 1): Promise<true> {
    return this.waitFor(() => this.count('listening') >= n || undefined, `${n} listening line(s)`);
  }

  /** The summary line of the connection from this client port. */
  summary(clientPort: number): Promise<Line> {
    return this.waitFor(() => this.lines.findLast((l) => l.msg === 'connection closed' && l.clientPort === clientPort), `the summary of client port ${clientPort}`);
  }

  /** The summary lines of these client ports, in order (the log is flushed every 200 ms: wait once). */
  async summariesOf(clientPorts: number[]): Promise<Line[]> {
    const out: Line[] = [];
    for (const p of clientPorts) out.push(await this.summary(p));
    return out;
  }

  /** Expects the summary of this client port to match, checked by checkSummaries(). */
  later(clientPort: number, match: Record<string, unknown>, what = `client port ${clientPort}`) {
    this.pending.push({ clientPort, match, what });
  }

  async checkSummaries(): Promise<void> {
    for (const { clientPort, match, what } of this.pending.splice(0)) expect(await this.summary(clientPort), what).toMatchObject(match);
  }

  summaries(): Line[] {
    return this.lines.filter((l) => l.msg === 'connection closed');
  }

  async stop(): Promise<void> {
    if (this.code !== undefined) return;
    this.proc.kill('SIGTERM');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 15_000);
    await this.exited;
    clearTimeout(timer);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, Math.max(0, ms)));

interface ListenerSpec {
  name: string;
  port: number;
  /** More `key: value` lines for the listener (sni, minVersion, alpn ...). */
  extra?: string[];
}

function writeConfig(opts: { listeners: ListenerSpec[]; workers?: number; adminPort?: number; tickets?: string; certs?: CertFiles[]; file?: string }): string {
  const file = opts.file ?? join(pki.dir, `resumption-${++fileCount}.yaml`);
  const certs = (opts.certs ?? [cert]).map((c) => `  - { cert: ${c.cert}, key: ${c.key} }`).join('\n');
  const listeners = opts.listeners
    .map((l) =>
      [
        `  - name: ${l.name}`,
        `    listen: "127.0.0.1:${l.port}"`,
        '    protocol: tls',
        '    tls: implicit',
        `    hostname: ${NAME}`,
        ...(l.extra ?? []).map((e) => `    ${e}`),
        `    backend: { address: "127.0.0.1:${backend.port}", proxyProtocol: none }`,
      ].join('\n'),
    )
    .join('\n');
  writeFileSync(
    file,
    [
      opts.workers ? `workers: ${opts.workers}` : '',
      opts.adminPort ? `admin: { listen: "127.0.0.1:${opts.adminPort}" }` : '',
      // One backend check at start, then none for 5 minutes (the default is every 30 s).
      'backendChecks: { interval: 5m }',
      opts.tickets ?? '',
      `certificates:\n${certs}`,
      `listeners:\n${listeners}`,
      '',
    ]
      .filter((l, i, all) => l !== '' || i === all.length - 1)
      .join('\n'),
  );
  return file;
}

interface Conn {
  /** isSessionReused() at secureConnect. */
  reused: boolean;
  /**
   * The last ticket the server handed out; null when none came, as after a resumption (OpenSSL
   * renews a ticket only when a key callback asks it to, and postern's keys are static).
   */
  session: Buffer | null;
  protocol: string | null;
  localPort: number;
  fingerprint: string | null;
}

/**
 * One connection through postern to the echo backend: handshake (offering `session` if given),
 * "ping" there and back (by then TLS 1.3 tickets have arrived), close. Rejects when the
 * handshake or the echo fails.
 */
function connect(port: number, opts: { maxVersion?: tls.SecureVersion; session?: Buffer | null; servername?: string } = {}): Promise<Conn> {
  return new Promise((resolve, reject) => {
    let session: Buffer | null = null;
    let reused = false;
    let protocol: string | null = null;
    let fingerprint: string | null = null;
    let echoed = false;
    let localPort = 0;
    const s = tls.connect({ host: '127.0.0.1', port, servername: opts.servername ?? NAME, ca: pki.ca.certPem, ...(opts.maxVersion ? { maxVersion: opts.maxVersion } : {}), ...(opts.session ? { session: opts.session } : {}) });
    s.setTimeout(15_000, () => s.destroy(new Error('timed out')));
    s.on('session', (b: Buffer) => (session = b));
    s.once('connect', () => (localPort = s.localPort ?? 0));
    s.once('secureConnect', () => {
      localPort = s.localPort ?? localPort;
      reused = s.isSessionReused();
      protocol = s.getProtocol();
      fingerprint = s.getPeerCertificate()?.fingerprint256 ?? null;
      s.write('ping\n');
    });
    let got = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      got += d;
      if (!echoed && got.includes('ping\n')) {
        echoed = true;
        s.end();
      }
    });
    s.on('error', reject);
    s.on('close', () => (echoed ? resolve({ reused, session, protocol, localPort, fingerprint }) : reject(new Error(`closed before the echo (handshake ${protocol ?? 'not done'})`))));
  });
}

/** A fresh session (full handshake) of this version. */
async function mint(port: number, maxVersion: tls.SecureVersion): Promise<Conn & { session: Buffer }> {
  const c = await connect(port, { maxVersion });
  expect(c.reused).toBe(false);
  expect(c.protocol).toBe(maxVersion);
  expect(c.session).not.toBeNull();
  return c as Conn & { session: Buffer };
}

async function metrics(adminPort: number): Promise<string> {
  return (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
}

/** A sample's value (0 when absent), e.g. sample(text, 'postern_handshakes_resumed_total{listener="t"}'). */
function sample(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

const NODE_SESSION = Buffer.from('\0nodejs:tls:session:1\0', 'latin1');

/**
 * The DER SSL_SESSION in a session buffer of Node's: Node 24 puts "\0nodejs:tls:session:1\0",
 * a 2-byte length and the server name before it (older versions handed out the DER alone).
 */
function sessionDer(session: Buffer): Buffer {
  if (!session.subarray(0, NODE_SESSION.length).equals(NODE_SESSION)) return session;
  const at = NODE_SESSION.length;
  return session.subarray(at + 2 + session.readUInt16BE(at));
}

/** What openssl sess_id says about a session. */
function sessionText(session: Buffer): string {
  return execFileSync('openssl', ['sess_id', '-inform', 'DER', '-noout', '-text'], { input: sessionDer(session), encoding: 'utf8' });
}

/** The first 16 bytes of the session's ticket: the name of the key that made it. */
function ticketName(session: Buffer): string {
  const m = /TLS session ticket:\s*\n\s*0000 - ((?:[0-9a-f]{2}[ -]){16})/.exec(sessionText(session));
  if (!m) throw new Error(`no ticket in:\n${sessionText(session)}`);
  return m[1]!.replace(/[ -]/g, '');
}

function lifetimeHint(session: Buffer): number {
  const m = /TLS session ticket lifetime hint: (\d+) \(seconds\)/.exec(sessionText(session));
  if (!m) throw new Error(`no lifetime hint in:\n${sessionText(session)}`);
  return Number(m[1]);
}

/**
 * openssl s_client to postern: sends "ping", waits for the echo (and for `sessOut` to be written:
 * s_client writes a TLS 1.3 session when a ticket arrives, which its output may show after the
 * echo), then ends its input. Resolves with everything it printed.
 */
function sClient(port: number, args: string[], opts: { sessOut?: string; servername?: string } = {}): Promise<string> {
  const { sessOut } = opts;
  return new Promise((resolve, reject) => {
    const c = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-servername', opts.servername ?? NAME, '-CAfile', pki.caFile, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    const timer = setTimeout(() => c.kill(), 15_000);
    c.stdout.setEncoding('utf8');
    c.stderr.setEncoding('utf8');
    let ending = false;
    c.stdout.on('data', (d: string) => {
      out += d;
      if (ending || !/^ping$/m.test(out)) return;
      ending = true;
      void (async () => {
        for (let i = 0; sessOut && i < 200 && !(existsSync(sessOut) && statSync(sessOut).size > 0); i++) await sleep(25);
        c.stdin.end();
      })();
    });
    c.stderr.on('data', (d: string) => (out += d));
    c.stdin.write('ping\n');
    c.on('error', reject);
    c.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
  });
}

function handshakeLine(out: string): string {
  return /^(New|Reused), TLSv1\.[23], Cipher is \S+/m.exec(out)?.[0] ?? `no New/Reused line in:\n${out}`;
}

/** SIGKILLs this worker and waits for its replacement to listen; the replacement's pid. */
async function replaceWorker(d: Postern, pid: number): Promise<number> {
  const listening = () => d.lines.filter((l) => l.msg === 'listening');
  const before = listening().length;
  process.kill(pid, 'SIGKILL');
  await d.waitFor(() => d.lines.find((l) => l.msg === 'worker died; starting a replacement' && l.pid === pid), 'the death to be logged');
  const line = await d.waitFor(() => listening()[before], 'the replacement to listen');
  expect(line.pid).not.toBe(pid);
  return line.pid;
}

/**
 * Resumes `session` until a connection lands on worker `pid` (at most 40 tries: the kernel picks
 * the worker), every one of them resumed; how many landed there.
 */
async function resumeUntil(d: Postern, port: number, session: Buffer, pid: number): Promise<number> {
  const ports: number[] = [];
  for (let i = 0; i < 40; i++) {
    const c = await connect(port, { session });
    ports.push(c.localPort);
    expect(c.reused, `resumption ${i} after the replacement`).toBe(true);
    if (i >= 9 && i % 10 === 9 && (await d.summariesOf(ports)).some((l) => l.pid === pid)) break;
  }
  const lines = await d.summariesOf(ports);
  for (const l of lines) expect(l).toMatchObject({ resumed: true });
  return lines.filter((l) => l.pid === pid).length;
}

describe('session resumption', () => {
  it('a. TLS 1.3 and 1.2 tickets resume: client, summary `resumed`, metric; openssl s_client too; lifetime hint = rotation period', async () => {
    const [port, adminPort] = await freePorts(2);
    const d = Postern.run(writeConfig({ listeners: [{ name: 't', port: port! }], adminPort: adminPort! }));
    await d.listening();

    for (const v of ['TLSv1.3', 'TLSv1.2'] as const) {
      const first = await mint(port!, v);
      d.later(first.localPort, { listener: 't', tlsVersion: v, resumed: false, closeReason: 'done' });
      // The default rotation (12h) is the lifetime the client is told.
      expect(lifetimeHint(first.session)).toBe(12 * 3600);
      const again = await connect(port!, { maxVersion: v, session: first.session });
      expect(again.reused).toBe(true);
      expect(again.protocol).toBe(v);
      d.later(again.localPort, { listener: 't', tlsVersion: v, resumed: true });
      // A third connection with the same ticket resumes as well (stateless: nothing to use up).
      const third = await connect(port!, { maxVersion: v, session: first.session });
      expect(third.reused).toBe(true);
      d.later(third.localPort, { resumed: true });
    }
    await d.checkSummaries();
    let m = await metrics(adminPort!);
    expect(sample(m, 'postern_handshakes_resumed_total{listener="t"}')).toBe(4);
    expect(sample(m, 'postern_handshakes_total{listener="t",version="TLSv1.3",result="ok"}')).toBe(3);
    expect(sample(m, 'postern_handshakes_total{listener="t",version="TLSv1.2",result="ok"}')).toBe(3);

    // openssl s_client: -sess_out on a full handshake, -sess_in resumes.
    for (const [v, flag] of [['TLSv1.3', '-tls1_3'], ['TLSv1.2', '-tls1_2']] as const) {
      const sess = join(pki.dir, `s_client-${v}.pem`);
      rmSync(sess, { force: true });
      const before = d.summaries().length;
      expect(handshakeLine(await sClient(port!, [flag, '-sess_out', sess], { sessOut: sess }))).toMatch(new RegExp(`^New, ${v}`));
      await d.waitFor(() => d.summaries().length >= before + 1 || undefined, 's_client summary');
      expect(d.summaries()).toHaveLength(before + 1);
      expect(d.summaries().at(-1)).toMatchObject({ resumed: false, tlsVersion: v });
      expect(execFileSync('openssl', ['sess_id', '-in', sess, '-noout', '-text'], { encoding: 'utf8' })).toContain('TLS session ticket lifetime hint: 43200 (seconds)');
      expect(handshakeLine(await sClient(port!, [flag, '-sess_in', sess]))).toMatch(new RegExp(`^Reused, ${v}`));
      await d.waitFor(() => d.summaries().length >= before + 2 || undefined, 's_client summary');
      expect(d.summaries()).toHaveLength(before + 2);
      expect(d.summaries().at(-1)).toMatchObject({ resumed: true, tlsVersion: v });
    }
    m = await metrics(adminPort!);
    expect(sample(m, 'postern_handshakes_resumed_total{listener="t"}')).toBe(6);
    // Every handshake of the test succeeded; the resumed ones are a subset.
    expect(sample(m, 'postern_handshakes_total{listener="t",version="TLSv1.3",result="ok"}')).toBe(5);
    expect(sample(m, 'postern_handshakes_total{listener="t",version="TLSv1.2",result="ok"}')).toBe(5);
    expect(sample(m, 'postern_handshakes_total{listener="t",version="none",result="failed"}')).toBe(0);
  }, 60_000);

  it('b. workers: 2 — 30 resumptions land on both workers, a ticket minted by one resumes on the other', async () => {
    const [port, adminPort] = await freePorts(2);
    const d = Postern.run(writeConfig({ listeners: [{ name: 't', port: port! }], workers: 2, adminPort: adminPort! }));
    await d.listening(2);
    const workers = new Set(d.lines.filter((l) => l.msg === 'listening').map((l) => l.pid));
    expect(workers.size).toBe(2);

    const minted = { 'TLSv1.3': await mint(port!, 'TLSv1.3'), 'TLSv1.2': await mint(port!, 'TLSv1.2') };
    const mintedBy = { 'TLSv1.3': (await d.summary(minted['TLSv1.3'].localPort)).pid, 'TLSv1.2': (await d.summary(minted['TLSv1.2'].localPort)).pid };
    const resumed: Array<{ v: 'TLSv1.3' | 'TLSv1.2'; conn: Conn }> = [];
    for (let i = 0; i < 30; i++) {
      const v = i % 2 === 0 ? 'TLSv1.3' : 'TLSv1.2';
      const conn = await connect(port!, { maxVersion: v, session: minted[v].session });
      expect(conn.reused, `resumption ${i} (${v})`).toBe(true);
      resumed.push({ v, conn });
    }
    const byPid = new Map<number, number>();
    let crossed = 0;
    const lines = await d.summariesOf(resumed.map((r) => r.conn.localPort));
    lines.forEach((s, i) => {
      const v = resumed[i]!.v;
      expect(s).toMatchObject({ resumed: true, tlsVersion: v });
      expect(workers.has(s.pid)).toBe(true);
      byPid.set(s.pid, (byPid.get(s.pid) ?? 0) + 1);
      if (s.pid !== mintedBy[v]) crossed++;
    });
    // SO_REUSEPORT spreads connections by their 4-tuple: all 30 on one worker has p = 2^-29.
    expect([...byPid.keys()].sort()).toEqual([...workers].sort());
    expect(crossed).toBeGreaterThan(0);
    const m = await metrics(adminPort!);
    expect(sample(m, 'postern_handshakes_resumed_total{listener="t"}')).toBe(30);
    console.log(`workers: resumptions per worker ${JSON.stringify(Object.fromEntries(byPid))}, ${crossed} on the worker that did not mint the ticket`);

    // A worker killed and replaced: the replacement gets the supervisor's secret too.
    const replacement = await replaceWorker(d, mintedBy['TLSv1.3']);
    const onReplacement = await resumeUntil(d, port!, minted['TLSv1.3'].session, replacement);
    expect(onReplacement).toBeGreaterThan(0);
  }, 60_000);

  it('b2. with a key file, a replaced worker keeps the secret the others run with, even when the file changed since', async () => {
    const keyFile = join(pki.dir, 'tickets-workers.key');
    // Raw bytes this time (d's are base64).
    writeFileSync(keyFile, randomBytes(48), { mode: 0o600 });
    const port = await freePort();
    const d = Postern.run(writeConfig({ listeners: [{ name: 't', port }], workers: 2, tickets: `sessionTickets: { keyFile: ${keyFile} }` }));
    await d.listening(2);
    const minted = await mint(port, 'TLSv1.3');
    const mintedBy = (await d.summary(minted.localPort)).pid;
    // The file is replaced by a new secret (a fleet's key rolled out, no restart yet) and a
    // worker dies: its replacement must not start with another secret than its sibling.
    writeFileSync(keyFile, randomBytes(48).toString('base64'), { mode: 0o600 });
    const replacement = await replaceWorker(d, mintedBy);
    expect(await resumeUntil(d, port, minted.session, replacement)).toBeGreaterThan(0);
  }, 60_000);

  it('c. SIGHUP, unchanged and with a renewed certificate for the same name: a session from before resumes after; after a policy change it does not', async () => {
    const port = await freePort();
    // Its own certificate files, replaced below.
    const own = await pki.issue('renewed', { names: [NAME] });
    const file = writeConfig({ listeners: [{ name: 't', port }], certs: [own] });
    const d = Postern.run(file);
    await d.listening();
    const before = { 'TLSv1.3': await mint(port, 'TLSv1.3'), 'TLSv1.2': await mint(port, 'TLSv1.2') };
    const oldPrint = before['TLSv1.3'].fingerprint;
    expect(oldPrint).toBe(new X509Certificate(own.certPem).fingerprint256);

    // 1. SIGHUP with nothing changed.
    d.proc.kill('SIGHUP');
    await d.waitFor(() => d.lines.find((l) => l.msg === 'reloaded' && l.trigger === 'sighup'), 'the reload');
    for (const v of ['TLSv1.3', 'TLSv1.2'] as const) {
      const c = await connect(port, { maxVersion: v, session: before[v].session });
      expect(c.reused, `${v} after an unchanged reload`).toBe(true);
      d.later(c.localPort, { resumed: true });
    }

    // 2. A renewal: a new key and certificate for the same name, each file replaced at once.
    const renewed = await (async () => {
      const c = await pki.issue('renewed-next', { names: [NAME] });
      renameSync(c.key, own.key);
      renameSync(c.cert, own.cert);
      return c;
    })();
    const newPrint = new X509Certificate(renewed.certPem).fingerprint256;
    expect(newPrint).not.toBe(oldPrint);
    const sighups = () => d.lines.filter((l) => l.msg === 'reloaded' && l.trigger === 'sighup').length;
    const reloads = sighups();
    d.proc.kill('SIGHUP');
    await d.waitFor(() => sighups() > reloads || undefined, 'the reload after the renewal');
    // (The changed files may also cause a watch reload; whichever came, the new one is served.)
    let served = (await connect(port)).fingerprint;
    for (let i = 0; i < 40 && served !== newPrint; i++) {
      await sleep(250);
      served = (await connect(port)).fingerprint;
    }
    expect(served).toBe(newPrint);
    for (const v of ['TLSv1.3', 'TLSv1.2'] as const) {
      const c = await connect(port, { maxVersion: v, session: before[v].session });
      expect(c.reused, `${v} after the renewal`).toBe(true);
      d.later(c.localPort, { resumed: true, tlsVersion: v });
    }

    // 3. The listener's policy changes (sni: strict -> fallback): its tickets are another
    // policy's now, and a session from before is not resumed (a full handshake, which succeeds).
    writeConfig({ file, listeners: [{ name: 't', port, extra: ['sni: fallback'] }], certs: [own] });
    // (Counting SIGHUP reloads only: the renewal's files may still cause a watch reload.)
    const reloads2 = sighups();
    d.proc.kill('SIGHUP');
    await d.waitFor(() => sighups() > reloads2 || undefined, 'the reload with the new policy');
    for (const v of ['TLSv1.3', 'TLSv1.2'] as const) {
      const c = await connect(port, { maxVersion: v, session: before[v].session });
      expect(c.reused, `${v} after the policy changed`).toBe(false);
      d.later(c.localPort, { resumed: false, tlsVersion: v, closeReason: 'done' });
    }
    await d.checkSummaries();
    expect(d.lines.filter((l) => l.level === 'error' || l.level === 'fatal')).toEqual([]);
  }, 60_000);

  it('d. two daemons with the same sessionTickets.keyFile resume each other\'s tickets; another key file, or none, does not', async () => {
    const shared = join(pki.dir, 'tickets-shared.key');
    const other = join(pki.dir, 'tickets-other.key');
    for (const f of [shared, other]) {
      writeFileSync(f, execFileSync('openssl', ['rand', '-base64', '48']));
      chmodSync(f, 0o600);
    }
    const ports = await freePorts(4);
    const [pa, pb, pc, pd] = ports as [number, number, number, number];
    const a = Postern.run(writeConfig({ listeners: [{ name: 'a', port: pa }], tickets: `sessionTickets: { keyFile: ${shared} }` }));
    const b = Postern.run(writeConfig({ listeners: [{ name: 'b', port: pb }], tickets: `sessionTickets: { keyFile: ${shared} }` }));
    const c = Postern.run(writeConfig({ listeners: [{ name: 'c', port: pc }], tickets: `sessionTickets: { keyFile: ${other} }` }));
    const n = Postern.run(writeConfig({ listeners: [{ name: 'n', port: pd }] }));
    await Promise.all([a.listening(), b.listening(), c.listening(), n.listening()]);

    for (const v of ['TLSv1.3', 'TLSv1.2'] as const) {
      const fromA = await mint(pa, v);
      const onB = await connect(pb, { maxVersion: v, session: fromA.session });
      expect(onB.reused, `${v}: A's ticket on B`).toBe(true);
      b.later(onB.localPort, { listener: 'b', resumed: true, tlsVersion: v });
      // And back: a ticket B makes resumes on A.
      const fromB = await mint(pb, v);
      expect((await connect(pa, { maxVersion: v, session: fromB.session })).reused, `${v}: B's ticket on A`).toBe(true);
      // One key: the tickets of both carry the same key name; C's another.
      expect(ticketName(fromB.session)).toBe(ticketName(fromA.session));
      expect(ticketName((await mint(pc, v)).session)).not.toBe(ticketName(fromA.session));
      // Another key file, or none (a random secret): a full handshake, which succeeds.
      for (const [d, port] of [[c, pc], [n, pd]] as const) {
        const full = await connect(port, { maxVersion: v, session: fromA.session });
        expect(full.reused, `${v}: A's ticket on ${d === c ? 'C (other key file)' : 'N (no key file)'}`).toBe(false);
        expect(full.protocol).toBe(v);
        d.later(full.localPort, { resumed: false, tlsVersion: v });
      }
    }
    // And the other way: N's tickets (its own random secret) resume on N only.
    const fromN = await mint(pd, 'TLSv1.3');
    expect((await connect(pd, { maxVersion: 'TLSv1.3', session: fromN.session })).reused).toBe(true);
    expect((await connect(pa, { maxVersion: 'TLSv1.3', session: fromN.session })).reused).toBe(false);
    await Promise.all([b.checkSummaries(), c.checkSummaries(), n.checkSummaries()]);
  }, 60_000);

  it('e. listeners whose policies differ never resume each other\'s tickets, nor does another certificate; the listener name is not part of the policy', async () => {
    const other = await pki.issue('other', { names: ['other.example.org'] });
    const ports = await freePorts(5);
    const [pStrict, pFallback, pTwin, pTls13, pAlpn] = ports as [number, number, number, number, number];
    const d = Postern.run(
      writeConfig({
        certs: [cert, other],
        listeners: [
          { name: 'strict', port: pStrict, extra: ['sni: strict'] },
          { name: 'fallback', port: pFallback, extra: ['sni: fallback'] },
          // The same settings as "strict" under another name (and address).
          { name: 'twin', port: pTwin, extra: ['sni: strict'] },
          { name: 'tls13', port: pTls13, extra: ['sni: strict', 'minVersion: TLSv1.3'] },
          { name: 'alpn', port: pAlpn, extra: ['sni: strict', 'alpn: [imap]'] },
        ],
      }),
    );
    await d.listening(5);
    const fromStrict = await mint(pStrict, 'TLSv1.3');
    const fromFallback = await mint(pFallback, 'TLSv1.3');
    const fromStrict12 = await mint(pStrict, 'TLSv1.2');
    // One daemon, one secret, two policies: two keys.
    expect(ticketName(fromFallback.session)).not.toBe(ticketName(fromStrict.session));
    // Each listener resumes its own.
    expect((await connect(pStrict, { session: fromStrict.session })).reused).toBe(true);
    expect((await connect(pFallback, { session: fromFallback.session })).reused).toBe(true);
    // Across policies: a full handshake, which succeeds.
    const cases: Array<[string, number, Buffer, tls.SecureVersion | undefined]> = [
      ['strict -> fallback', pFallback, fromStrict.session, undefined],
      ['fallback -> strict', pStrict, fromFallback.session, undefined],
      ['strict -> tls13 (minVersion)', pTls13, fromStrict.session, undefined],
      ['strict -> alpn', pAlpn, fromStrict.session, undefined],
      ['strict -> fallback, TLS 1.2', pFallback, fromStrict12.session, 'TLSv1.2'],
    ];
    for (const [what, port, session, maxVersion] of cases) {
      const c = await connect(port, { session, ...(maxVersion ? { maxVersion } : {}) });
      expect(c.reused, what).toBe(false);
      d.later(c.localPort, { resumed: false, closeReason: 'done' }, what);
    }
    // Same policy, other name: policyScope leaves the name (and the address) out, so the twin
    // resumes strict's tickets, as it would accept the same clients for the same names.
    const twin = await connect(pTwin, { session: fromStrict.session });
    expect(twin.reused).toBe(true);
    d.later(twin.localPort, { listener: 'twin', resumed: true });
    expect(ticketName((await mint(pTwin, 'TLSv1.3')).session)).toBe(ticketName(fromStrict.session));
    expect((await connect(pTwin, { session: fromStrict12.session, maxVersion: 'TLSv1.2' })).reused).toBe(true);

    // Another certificate on the same listener: Node's client offers a session only to the
    // name it was made for, openssl s_client offers it to any. mail.example.org's ticket for
    // other.example.org: the other certificate, in a full handshake.
    for (const [v, flag] of [['TLSv1.3', '-tls1_3'], ['TLSv1.2', '-tls1_2']] as const) {
      const sess = join(pki.dir, `e-${v}.pem`);
      rmSync(sess, { force: true });
      expect(handshakeLine(await sClient(pFallback, [flag, '-sess_out', sess], { sessOut: sess }))).toMatch(/^New/);
      const cross = await sClient(pFallback, [flag, '-sess_in', sess], { servername: 'other.example.org' });
      expect(handshakeLine(cross), `${v}: a mail.example.org ticket for other.example.org`).toMatch(new RegExp(`^New, ${v}`));
      expect(cross).toMatch(/subject=CN ?= ?other\.example\.org/);
      // On the strict listener a name it does not serve is refused before any handshake: a
      // ticket gets no client past the SNI policy.
      const strictSess = join(pki.dir, `e-strict-${v}.pem`);
      rmSync(strictSess, { force: true });
      await sClient(pStrict, [flag, '-sess_out', strictSess], { sessOut: strictSess });
      const unknown = () => d.summaries().filter((l) => l.sni === 'unknown.example.com');
      const before = unknown().length;
      const refused = await sClient(pStrict, [flag, '-sess_in', strictSess], { servername: 'unknown.example.com' });
      // All that came back is the 7-byte unrecognized_name alert (s_client still prints the
      // session it was given, so its "New, ..." line says nothing here).
      expect(refused, refused).toMatch(/tlsv1 unrecognized name/);
      expect(refused).toMatch(/SSL handshake has read 7 bytes/);
      await d.waitFor(() => unknown().length > before || undefined, 'the refusal summary');
      expect(unknown().at(-1)).toMatchObject({ listener: 'strict', decision: 'refused', resumed: null, tlsVersion: null });
    }
    await d.checkSummaries();
  }, 60_000);

  it('f. rotation (3s): a ticket minted late in a period resumes just after the boundary; its lifetime hint is 3 s', async () => {
    const PERIOD = 3000;
    const port = await freePort();
    const d = Postern.run(writeConfig({ listeners: [{ name: 't', port }], tickets: 'sessionTickets: { rotate: 3s }' }));
    await d.listening();
    // A connection first, so that the one timed below is not the daemon's first (slower) one.
    await connect(port);

    const attempt = async (): Promise<'ok' | 'missed'> => {
      // Mint at 2.3-2.65 s into a period (now, or at 2.4 s of the next): the boundary is a few
      // hundred ms later.
      const phase = Date.now() % PERIOD;
      if (phase < 2300 || phase >= 2650) await sleep((2400 - phase + PERIOD) % PERIOD);
      const t0 = Date.now();
      const minted = { 'TLSv1.3': await mint(port, 'TLSv1.3'), 'TLSv1.2': await mint(port, 'TLSv1.2') };
      const t1 = Date.now();
      const period = Math.floor(t0 / PERIOD);
      // Both tickets were made inside one period only if that period had not ended yet.
      if (Math.floor(t1 / PERIOD) !== period) return 'missed';
      for (const v of ['TLSv1.3', 'TLSv1.2'] as const) expect(lifetimeHint(minted[v].session)).toBe(3);
      // Just after the boundary: the ticket's key is now the previous period's.
      await sleep((period + 1) * PERIOD + 150 - Date.now());
      const t2 = Date.now();
      if (Math.floor(t2 / PERIOD) !== period + 1) return 'missed';
      const resumed = { 'TLSv1.3': await connect(port, { maxVersion: 'TLSv1.3', session: minted['TLSv1.3'].session }), 'TLSv1.2': await connect(port, { maxVersion: 'TLSv1.2', session: minted['TLSv1.2'].session }) };
      const t3 = Date.now();
      // Still in the next period (or the ticket would be two periods old): else try again.
      if (Math.floor(t3 / PERIOD) !== period + 1) return 'missed';
      for (const v of ['TLSv1.3', 'TLSv1.2'] as const) {
        expect(resumed[v].reused, `${v} in the period after the ticket's`).toBe(true);
        d.later(resumed[v].localPort, { resumed: true, tlsVersion: v });
      }
      // The key did change at the boundary: a full handshake now gets a ticket of another key.
      const fresh = await mint(port, 'TLSv1.3');
      if (Math.floor(Date.now() / PERIOD) !== period + 1) return 'missed';
      const oldName = ticketName(minted['TLSv1.3'].session);
      expect(ticketName(minted['TLSv1.2'].session)).toBe(oldName);
      expect(ticketName(fresh.session)).not.toBe(oldName);
      await d.checkSummaries();
      console.log(`rotation: minted at +${t0 % PERIOD}..+${t1 % PERIOD} ms of period ${period}, resumed at +${t2 % PERIOD}..+${t3 % PERIOD} ms of the next`);
      return 'ok';
    };
    let outcome = await attempt();
    if (outcome === 'missed') {
      console.log('rotation: the boundary was missed (a slow machine); trying once more');
      outcome = await attempt();
    }
    expect(outcome).toBe('ok');
  }, 60_000);

  it('g. a world-readable, too short or missing key file: postern check exits 1 naming file:line and sessionTickets.keyFile', async () => {
    const port = await freePort();
    const readable = join(pki.dir, 'tickets-readable.key');
    writeFileSync(readable, randomBytes(48).toString('base64'));
    chmodSync(readable, 0o644);
    const short = join(pki.dir, 'tickets-short.key');
    writeFileSync(short, `${randomBytes(24).toString('base64')}\n`);
    chmodSync(short, 0o600);
    const missing = join(pki.dir, 'tickets-missing.key');
    const cases: Array<[string, string, RegExp]> = [
      ['world-readable', readable, /is readable or writable by others \(mode 0644\): it decrypts every session ticket; chmod 600/],
      ['too short', short, /holds 24 bytes of key material; at least 32 are needed/],
      ['missing', missing, /file not found: /],
    ];
    // At the same time: `run` with the world-readable file. (Good key files, base64 and raw,
    // are the daemons' of d and b2.)
    const bad = Postern.run(writeConfig({ listeners: [{ name: 't', port }], tickets: `sessionTickets:\n  keyFile: ${readable}` }));
    const checks = await Promise.all(
      cases.map(async ([what, keyFile, message]) => {
        // backendChecks is line 1, sessionTickets line 2, its keyFile value line 3 from column 12.
        const file = writeConfig({ listeners: [{ name: 't', port }], tickets: `sessionTickets:\n  keyFile: ${keyFile}` });
        const p = new Postern(['check', '-c', file]);
        return { what, keyFile, message, file, code: await p.exited, text: () => p.text };
      }),
    );
    for (const c of checks) {
      expect(c.code, c.what).toBe(1);
      const out = c.text();
      const line = out.split('\n').find((l) => l.includes('sessionTickets.keyFile'));
      expect(line, `${c.what}: ${out}`).toBeDefined();
      expect(line).toContain(`${c.file}:3:12 sessionTickets.keyFile: `);
      expect(line).toContain(c.keyFile);
      expect(line).toMatch(c.message);
    }
    // `run` refuses the same file before binding anything.
    expect(await bad.exited).toBe(1);
    expect(bad.text).toContain('sessionTickets.keyFile');
    expect(bad.text).toContain('nothing was started');
    expect(bad.lines.filter((l) => l.msg === 'listening')).toEqual([]);
  }, 60_000);

  it('h. SO_REUSEPORT: each worker holds its own listening socket and accepts; a second postern on the address fails with listen_failed', async () => {
    const [port, adminPort] = await freePorts(2);
    const d = Postern.run(writeConfig({ listeners: [{ name: 't', port: port! }], workers: 2, adminPort: adminPort! }));
    await d.listening(2);
    const workers = new Set(d.lines.filter((l) => l.msg === 'listening').map((l) => l.pid));
    expect(workers.size).toBe(2);
    expect(workers.has(d.proc.pid!)).toBe(false);

    // Full handshakes spread over both workers (by the kernel, not through the supervisor).
    const clientPorts: number[] = [];
    for (let i = 0; i < 20; i++) clientPorts.push((await connect(port!)).localPort);
    const pids = new Map<number, number>();
    for (const s of await d.summariesOf(clientPorts)) pids.set(s.pid, (pids.get(s.pid) ?? 0) + 1);
    expect([...pids.keys()].sort()).toEqual([...workers].sort());

    // ss: two listening sockets on the port, one per worker, none in the supervisor.
    const sockets = () =>
      execFileSync('ss', ['-ltnpH', `sport = :${port}`], { encoding: 'utf8' })
        .split('\n')
        .filter((l) => l.trim() !== '');
    const listening = sockets();
    expect(listening, listening.join('\n')).toHaveLength(2);
    const owners = listening.map((l) => Number(/pid=(\d+)/.exec(l)?.[1]));
    expect(owners.sort()).toEqual([...workers].sort());

    // A second postern, 2 workers, same address: its supervisor's probe (no SO_REUSEPORT) fails.
    // (And, at the same time, a single-process one.)
    const second = Postern.run(writeConfig({ listeners: [{ name: 't', port: port! }], workers: 2 }));
    const single = Postern.run(writeConfig({ listeners: [{ name: 't', port: port! }] }));
    expect(await second.exited).toBe(1);
    const fatal = second.lines.find((l) => l.reason === 'listen_failed');
    expect(fatal, second.text).toMatchObject({ level: 'fatal', listen: `127.0.0.1:${port}`, listener: 't', error: 'EADDRINUSE' });
    expect(second.lines.filter((l) => l.msg === 'worker started' || l.msg === 'listening')).toEqual([]);
    // The single-process one fails the same way.
    expect(await single.exited).toBe(1);
    expect(single.lines.find((l) => l.reason === 'listen_failed')).toMatchObject({ listen: `127.0.0.1:${port}`, error: 'EADDRINUSE' });

    // The first one is untouched: still exactly its two sockets, still serving.
    expect(sockets()).toHaveLength(2);
    for (let i = 0; i < 4; i++) await connect(port!);
    const m = await metrics(adminPort!);
    expect(sample(m, 'postern_handshakes_total{listener="t",version="TLSv1.3",result="ok"}')).toBe(24);
    console.log(`reuseport: full handshakes per worker ${JSON.stringify(Object.fromEntries(pids))}`);
  }, 60_000);
});
