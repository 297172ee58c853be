// threats.md "One client against everyone": a client that never reads while it sends commands
// postern answers itself (issue 14 finding 4). Before TLS the dialogue answers EHLO, NOOP, RSET,
// CAPABILITY, CAPA; after TLS the filter answers a second STARTTLS/STLS and XCLIENT. Contract:
// postern's own replies count for flow control: when the client does not read them, postern
// stops reading the client (or closes the session, e.g. at a junk-command limit). Either way the
// daemon's VmRSS, sampled every 100 ms during the attack, stays bounded and the process stays up.
// The client really stops reading (socket.pause(), never resumed): its receive buffer fills and
// TCP tells postern to stop sending.
//
// Each case runs its own daemon: a case that blows up the heap would spoil the next baseline.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import {
  buildOnce, spawnDaemon, stopAll, goodClient, connectPlain, sessionsOf, rssDuring, mb, GREETING,
  type SpawnedPostern, type MailProtocol, type HostileListener,
} from './harness.ts';
import { upgrade, flood, lines, MB } from './attack.ts';

let pki: TestPki;
let mail: CertFiles;

const BOUND = 64 * MB;
const ATTACK_MS = 4000;

const LISTENER: Record<string, HostileListener> = {
  mx: { name: 'mx', protocol: 'smtp', tls: 'starttls', role: 'mx' },
  imap: { name: 'imap', protocol: 'imap', tls: 'starttls' },
  pop3: { name: 'pop3', protocol: 'pop3', tls: 'starttls' },
};

beforeAll(async () => {
  buildOnce();
  pki = await makePki();
  mail = await pki.issue('mail', { names: ['mail.example.org'] });
}, 60_000);

afterAll(stopAll);

function daemonFor(listener: string): Promise<SpawnedPostern> {
  return spawnDaemon({ dir: pki.dir, certs: [{ cert: mail.cert, key: mail.key }], level: 'info', top: { shutdown: { drainTimeout: '1s' } }, listeners: [LISTENER[listener]!] });
}

function expectAlive(d: SpawnedPostern, pid: number) {
  expect(d.child.exitCode, `postern exited; stderr:\n${d.stderr().slice(-1500)}`).toBeNull();
  expect(d.pid).toBe(pid);
}

function log(what: string, rss: { baseline: number; max: number; after: number; tripped: boolean }, written: number, end: string) {
  console.log(`[one-client] ${what}: client wrote ${(written / MB).toFixed(1)} MB in ${ATTACK_MS / 1000} s (${end}); daemon VmRSS ${(rss.baseline / MB).toFixed(0)} MB -> max ${mb(rss.max - rss.baseline)} (after ${mb(rss.after - rss.baseline)})${rss.tripped ? ' (stopped early at the trip wire)' : ''}`);
}

describe('before TLS: the dialogue\'s answers to a client that never reads', () => {
  const cases: Array<{ listener: string; proto: MailProtocol; commands: string[] }> = [
    { listener: 'mx', proto: 'smtp', commands: ['EHLO x', 'NOOP', 'RSET'] },
    { listener: 'imap', proto: 'imap', commands: ['a CAPABILITY'] },
    { listener: 'pop3', proto: 'pop3', commands: ['CAPA'] },
  ];
  for (const c of cases) {
    it(`${c.listener}: ${c.commands.join(' / ')} sent for 4 s by a client that never reads: VmRSS grows < 64 MB (paused or closed), the process serves the next client`, async () => {
      const d = await daemonFor(c.listener);
      const pid = d.pid;
      const conn = await connectPlain(d.port(c.listener));
      await conn.reader.readUntil(GREETING[c.proto]);
      conn.reader.detach();
      conn.socket.pause();
      const chunk = lines(c.commands.join('\r\n'), Math.ceil(8192 / (c.commands.join('\r\n').length + 2)));
      const { rss, result } = await rssDuring(pid, (signal) => flood(conn.socket, chunk, ATTACK_MS, signal));
      log(`pre-TLS ${c.listener} ${c.commands.join('/')}, client not reading`, rss, result.written, result.end);
      expectAlive(d, pid);
      expect(rss.max - rss.baseline).toBeLessThan(BOUND);
      conn.socket.destroy();
      await d.summaryFor(conn.localPort);
      await goodClient(d, c.listener, pki, { starttls: c.proto });
      expectAlive(d, pid);
    }, 30_000);
  }
});

describe('after TLS: the filter\'s own refusals to a client that never reads', () => {
  const cases: Array<{ listener: string; proto: MailProtocol; command: string; reply: string; forbidden: RegExp }> = [
    { listener: 'mx', proto: 'smtp', command: 'STARTTLS', reply: '503 5.5.1 TLS already active\r\n', forbidden: /STARTTLS/ },
    { listener: 'mx', proto: 'smtp', command: 'XCLIENT ADDR=1.2.3.4', reply: '550 5.7.0 Command not permitted through postern\r\n', forbidden: /XCLIENT/ },
    { listener: 'imap', proto: 'imap', command: 'a STARTTLS', reply: 'a BAD TLS already active\r\n', forbidden: /STARTTLS/ },
    { listener: 'pop3', proto: 'pop3', command: 'STLS', reply: '-ERR TLS already active\r\n', forbidden: /STLS/ },
  ];
  for (const c of cases) {
    it(`${c.listener}: ${c.command} repeated for 4 s by a client that never reads: postern answers 20, then ends the session (too_many_errors); VmRSS grows < 64 MB, nothing reaches the backend`, async () => {
      const d = await daemonFor(c.listener);
      const pid = d.pid;
      const s = await upgrade(d, c.listener, c.proto, pki.ca.certPem);
      if (c.proto === 'smtp') {
        s.secure.write('EHLO x\r\n');
        await s.r.readUntil(/^250 [^\r\n]*\r\n/m);
      }
      // The refusal is postern's own (the first one is read; none after it).
      s.secure.write(`${c.command}\r\n`);
      expect(await s.r.readUntil(/\r\n/)).toBe(c.reply);
      s.r.detach();
      s.secure.pause();
      const { rss, result } = await rssDuring(pid, (signal) => flood(s.secure, lines(c.command, Math.ceil(8192 / (c.command.length + 2))), ATTACK_MS, signal));
      log(`after TLS ${c.listener} ${c.command}, client not reading`, rss, result.written, result.end);
      expectAlive(d, pid);
      expect(rss.max - rss.baseline).toBeLessThan(BOUND);
      s.secure.destroy();
      expect(await d.summaryFor(s.localPort)).toMatchObject({ closeReason: 'too_many_errors', refused: 20 });
      const mine = sessionsOf(d.backend(c.listener), s.localPort);
      expect(mine).toHaveLength(1);
      expect(mine[0]!.data.toString('latin1')).not.toMatch(c.forbidden);
      await goodClient(d, c.listener, pki, { starttls: c.proto });
      expectAlive(d, pid);
    }, 30_000);
  }
});
