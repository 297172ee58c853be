// `postern records --check --resolver 127.0.0.1:PORT` (issue 18) against a real DNS server: Debian's
// unbound, started by the test as its own process with its own configuration in a temporary folder
// on a high loopback port, serving example.org from local data only (a static local zone; every
// other name refused, outgoing queries bound to loopback: nothing but 127.0.0.1 is ever asked).
// Each zone is built from what `postern records --json` prints for the test configuration, then
// kept whole, broken (stale id, missing TLS-RPT, a TLSA with another hash) or odd (two STSv1
// records, a wrong TLSA usage, a refusing server), and the command must say which, exit 0 or 1.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { makePki, type CertFiles, type TestPki } from '../helpers/certs.ts';
import { freePorts } from '../helpers/ports.ts';
import { buildOnce, BIN } from '../hostile/harness.ts';

const run = promisify(execFile);

const MX = 'mail.example.org';
const RUA = ['mailto:tlsrpt@example.org', 'https://reports.example.org/tlsrpt'];
const OTHER_HASH = createHash('sha256').update('some other key').digest('hex');

interface Rec {
  kind: 'mta-sts' | 'tls-rpt' | 'tlsa';
  name: string;
  type: 'TXT' | 'TLSA';
  value: string;
  note: string;
}
interface Checked extends Rec {
  status: 'present' | 'missing' | 'stale';
  found: string[];
}

let pki: TestPki;
let mailEc: CertFiles;
let mailRsa: CertFiles;
let file: string;
let records: Rec[];
/** The four records by role. */
let sts: Rec;
let rpt: Rec;
let tlsaEc: Rec;
let tlsaRsa: Rec;

// ---------------------------------------------------------------------------------------------
// unbound

function which(cmd: string): string | null {
  for (const p of [cmd, `/usr/sbin/${cmd}`, `/usr/bin/${cmd}`]) {
    const r = spawnSync(p, ['-h'], { stdio: 'ignore' });
    if (!r.error) return p;
  }
  return null;
}

interface Unbound {
  port: number;
  conf: string;
  child: ChildProcess;
  log(): string;
  stop(): Promise<void>;
}

const servers: Unbound[] = [];

/**
 * unbound with `zone` (unbound.conf server: lines: local-zone / local-data) on a free loopback
 * port: the configuration is checked with unbound-checkconf first; started in the foreground, ready
 * once it logs "start of service". A port taken meanwhile (by another process) is retried.
 */
async function startUnbound(label: string, zone: string[]): Promise<Unbound> {
  const unbound = which('unbound');
  const checkconf = which('unbound-checkconf');
  if (!unbound || !checkconf) throw new Error('unbound is not installed: apt-get install -y unbound (.ci/run installs it)');
  let lastError = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const dir = mkdtempSync(join(pki.dir, `unbound-${label}-`));
    const [port] = (await freePorts(1)) as [number];
    const conf = join(dir, 'unbound.conf');
    writeFileSync(
      conf,
      [
        'server:',
        '  interface: 127.0.0.1',
        `  port: ${port}`,
        '  do-daemonize: no',
        '  username: ""',
        '  chroot: ""',
        `  directory: "${dir}"`,
        '  pidfile: ""',
        '  use-syslog: no',
        '  logfile: ""',
        '  module-config: "iterator"',
        '  num-threads: 1',
        '  do-ip6: no',
        // Nothing leaves loopback: queries out would go from 127.0.0.1 (and there are none: every
        // name outside the local zone is refused, not resolved).
        '  outgoing-interface: 127.0.0.1',
        '  log-queries: yes',
        '  local-zone: "." refuse',
        ...zone.map((l) => `  ${l}`),
        '',
      ].join('\n'),
    );
    const cc = await run(checkconf, [conf]).then(
      (r) => ({ code: 0, out: r.stdout + r.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout + e.stderr }),
    );
    if (cc.code !== 0) throw new Error(`unbound-checkconf ${conf}: ${cc.out}`);
    const child = spawn(unbound, ['-d', '-c', conf], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    child.stdout!.on('data', (c: Buffer) => (log += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (log += c.toString()));
    const ready = await new Promise<boolean>((resolve) => {
      const t = setInterval(() => {
        if (/start of service/.test(log)) done(true);
      }, 50);
      const timer = setTimeout(() => done(false), 10_000);
      const done = (ok: boolean) => {
        clearInterval(t);
        clearTimeout(timer);
        child.off('exit', onExit);
        resolve(ok);
      };
      const onExit = () => done(false);
      child.once('exit', onExit);
    });
    const server: Unbound = {
      port,
      conf,
      child,
      log: () => log,
      stop: () =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          const hard = setTimeout(() => child.kill('SIGKILL'), 5000);
          child.once('exit', () => {
            clearTimeout(hard);
            resolve();
          });
          child.kill('SIGTERM');
        }),
    };
    if (ready) {
      servers.push(server);
      return server;
    }
    lastError = log;
    await server.stop();
  }
  throw new Error(`unbound (${label}) did not start: ${lastError}`);
}

/** unbound local-data for one record: TXT values quoted (a list: one record of several strings). */
function data(name: string, type: 'TXT' | 'TLSA', value: string | string[]): string {
  const rdata = type === 'TXT' ? (Array.isArray(value) ? value : [value]).map((s) => JSON.stringify(s)).join(' ') : String(value);
  return `local-data: '${name}. 300 IN ${type} ${rdata}'`;
}

// ---------------------------------------------------------------------------------------------
// postern records

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

async function records_(args: string[]): Promise<Result> {
  const t = Date.now();
  return run(process.execPath, [BIN, 'records', '-c', file, ...args], { cwd: pki.dir, timeout: 30_000 }).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - t }),
    (e: { code: number | null; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr, ms: Date.now() - t }),
  );
}

async function check(server: Unbound): Promise<{ text: Result; json: Result; checked: Checked[] }> {
  const [text, json] = await Promise.all([records_(['--check', '--resolver', `127.0.0.1:${server.port}`]), records_(['--check', '--json', '--resolver', `127.0.0.1:${server.port}`])]);
  const checked = (JSON.parse(json.stdout) as { records: Checked[] }).records;
  return { text, json, checked };
}

const byName = (checked: Checked[], r: Rec) => {
  const hit = checked.find((c) => c.name === r.name && c.value === r.value);
  if (!hit) throw new Error(`no result for ${r.name} ${r.value}: ${JSON.stringify(checked)}`);
  return hit;
};

/** The text output's line for a record, and its "found:" line when there is one. */
function textFor(out: string, r: Rec): { status: string; found: string | null } {
  const lines = out.split('\n');
  const i = lines.findIndex((l) => l.endsWith(` ${r.name} ${r.type} ${r.value}`));
  if (i < 0) throw new Error(`no line for ${r.name} ${r.type} ${r.value} in:\n${out}`);
  const found = /^\s+found: (.*)$/.exec(lines[i + 1] ?? '');
  return { status: lines[i]!.split(' ')[0]!, found: found ? found[1]! : null };
}

const spki = (certPem: string) => createHash('sha256').update(new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' })).digest('hex');

// ---------------------------------------------------------------------------------------------

let full: Unbound;
let broken: Unbound;
let odd: Unbound;
let refusing: Unbound;
let equivalent: Unbound;

beforeAll(async () => {
  buildOnce();
  pki = await makePki();
  let sts_: CertFiles;
  [mailEc, mailRsa, sts_] = await Promise.all([
    pki.issue('mail-ec', { names: [MX] }),
    pki.issue('mail-rsa', { names: [MX], kind: 'rsa' }),
    pki.issue('sts', { names: ['mta-sts.example.org'] }),
  ]);
  file = join(pki.dir, 'postern.yaml');
  writeFileSync(
    file,
    `certificates:
  - { cert: ${mailEc.cert}, key: ${mailEc.key} }
  - { cert: ${mailRsa.cert}, key: ${mailRsa.key} }
  - { cert: ${sts_.cert}, key: ${sts_.key} }
mtaSts:
  listen: "127.0.0.1:8443"
  domains: [example.org]
  mode: enforce
  tlsRpt: ${JSON.stringify(RUA)}
listeners:
  - name: mx
    listen: "127.0.0.1:2525"
    protocol: smtp
    role: mx
    dane: true
    tls: starttls
    hostname: ${MX}
    backend: { address: "127.0.0.1:10025", proxyProtocol: v2 }
`,
  );
  const printed = await records_(['--json']);
  expect(printed.code, printed.stderr).toBe(0);
  records = (JSON.parse(printed.stdout) as { records: Rec[] }).records;
  sts = records.find((r) => r.kind === 'mta-sts')!;
  rpt = records.find((r) => r.kind === 'tls-rpt')!;
  tlsaEc = records.find((r) => r.kind === 'tlsa' && r.value === `3 1 1 ${spki(mailEc.certPem)}`)!;
  tlsaRsa = records.find((r) => r.kind === 'tlsa' && r.value === `3 1 1 ${spki(mailRsa.certPem)}`)!;
  expect(records).toHaveLength(4);
  expect([sts, rpt, tlsaEc, tlsaRsa].every(Boolean)).toBe(true);
  expect(rpt.value).toBe(`v=TLSRPTv1; rua=${RUA.join(',')}`);
  expect(sts.value).toMatch(/^v=STSv1; id=[A-Za-z0-9]{1,32}$/);

  const ZONE = 'local-zone: "example.org." static';
  const [id] = /id=(\S+)$/.exec(sts.value)!.slice(1);
  [full, broken, odd, refusing, equivalent] = await Promise.all([
    // Everything published, as an admin pastes it; beside it what a real zone also holds: an
    // unrelated TXT record at _mta-sts, the TLS-RPT record split in two strings (RFC 7208-style).
    startUnbound('full', [
      ZONE,
      data(sts.name, 'TXT', sts.value),
      data(sts.name, 'TXT', 'google-site-verification=abc'),
      data(rpt.name, 'TXT', ['v=TLSRPTv1; ', `rua=${RUA.join(',')}`]),
      data(tlsaEc.name, 'TLSA', tlsaEc.value),
      data(tlsaRsa.name, 'TLSA', tlsaRsa.value),
    ]),
    // The policy changed but the id in DNS did not; TLS-RPT never published; the RSA key's TLSA
    // replaced by another key's.
    startUnbound('broken', [
      ZONE,
      data(sts.name, 'TXT', 'v=STSv1; id=20240101T000000'),
      data(tlsaEc.name, 'TLSA', tlsaEc.value),
      data(tlsaEc.name, 'TLSA', `3 1 1 ${OTHER_HASH}`),
    ]),
    // Two STSv1 records (RFC 8461 section 3.1: as good as none), only an unrelated TXT at
    // _smtp._tls, and the right hash under the wrong usage (2 = DANE-TA, not DANE-EE).
    startUnbound('odd', [
      ZONE,
      data(sts.name, 'TXT', sts.value),
      data(sts.name, 'TXT', 'v=STSv1; id=older'),
      data(rpt.name, 'TXT', 'v=spf1 -all'),
      data(tlsaEc.name, 'TLSA', tlsaEc.value.replace(/^3 /, '2 ')),
    ]),
    // A server that refuses every query for the domain (REFUSED, RFC 1035 rcode 5).
    startUnbound('refusing', ['local-zone: "example.org." refuse']),
    // The same records written differently, as the grammars allow: no space around ";" (RFC 8461
    // section 3.1, sts-field-delim = *WSP ";" *WSP), an extension field, the rua URIs in another
    // order with spaces around the comma (RFC 8460 section 3, *WSP "," *WSP), TLSA hex in capitals.
    startUnbound('equivalent', [
      ZONE,
      data(sts.name, 'TXT', `v=STSv1;id=${id};  ext=1`),
      data(rpt.name, 'TXT', `v=TLSRPTv1;rua=${[...RUA].reverse().join(' , ')}`),
      data(tlsaEc.name, 'TLSA', tlsaEc.value.toUpperCase()),
      data(tlsaRsa.name, 'TLSA', tlsaRsa.value.toUpperCase()),
    ]),
  ]);
}, 40_000);

afterAll(async () => {
  await Promise.all(servers.map((s) => s.stop()));
  if (pki) rmSync(pki.dir, { recursive: true, force: true });
}, 20_000);

describe('postern records --check against unbound on loopback', () => {
  it('all records published: every one "present", exit 0', async () => {
    const { text, json, checked } = await check(full);
    expect(text.code, text.stdout + text.stderr).toBe(0);
    expect(json.code).toBe(0);
    expect(checked.map((c) => [c.name, c.type, c.status])).toEqual(records.map((r) => [r.name, r.type, 'present']));
    for (const r of records) expect(textFor(text.stdout, r)).toEqual({ status: 'present', found: null });
    // What DNS holds, as found: the split TLS-RPT strings joined, the unrelated TXT left out.
    expect(byName(checked, rpt).found).toEqual([rpt.value]);
    expect(byName(checked, sts).found).toEqual([sts.value]);
    expect(new Set(byName(checked, tlsaEc).found)).toEqual(new Set([tlsaEc.value, tlsaRsa.value]));
    console.log(`records-check: full zone checked in ${text.ms} ms (text) / ${json.ms} ms (json)`);
  });

  it('the same records written differently (spacing, field order, rua order, hex case): all "present", exit 0', async () => {
    const { text, checked } = await check(equivalent);
    expect(text.code, text.stdout + text.stderr).toBe(0);
    expect(checked.map((c) => c.status)).toEqual(['present', 'present', 'present', 'present']);
  });

  it('an old STS id is stale, an unpublished TLS-RPT record missing, a TLSA with another hash stale: exit 1, each with what DNS has', async () => {
    const { text, json, checked } = await check(broken);
    expect(text.code, text.stdout + text.stderr).toBe(1);
    expect(json.code).toBe(1);
    expect(byName(checked, sts)).toMatchObject({ status: 'stale', found: ['v=STSv1; id=20240101T000000'] });
    expect(byName(checked, rpt)).toMatchObject({ status: 'missing', found: [] });
    expect(byName(checked, tlsaEc).status).toBe('present');
    const rsa = byName(checked, tlsaRsa);
    expect(rsa.status).toBe('stale');
    expect(new Set(rsa.found)).toEqual(new Set([tlsaEc.value, `3 1 1 ${OTHER_HASH}`]));
    // The text says the same, line by line, with what DNS has under each stale record.
    expect(textFor(text.stdout, sts)).toEqual({ status: 'stale', found: 'v=STSv1; id=20240101T000000' });
    expect(textFor(text.stdout, rpt)).toEqual({ status: 'missing', found: null });
    expect(textFor(text.stdout, tlsaEc)).toEqual({ status: 'present', found: null });
    const rsaLine = textFor(text.stdout, tlsaRsa);
    expect(rsaLine.status).toBe('stale');
    expect(rsaLine.found?.split(' | ').sort()).toEqual([tlsaEc.value, `3 1 1 ${OTHER_HASH}`].sort());
  });

  it('two STSv1 records, only an unrelated TXT, the right hash under usage 2: stale, missing, stale; exit 1', async () => {
    const { text, checked } = await check(odd);
    expect(text.code, text.stdout + text.stderr).toBe(1);
    const s = byName(checked, sts);
    expect(s.status).toBe('stale');
    expect(new Set(s.found)).toEqual(new Set([sts.value, 'v=STSv1; id=older']));
    expect(byName(checked, rpt)).toMatchObject({ status: 'missing', found: [] });
    for (const r of [tlsaEc, tlsaRsa]) expect(byName(checked, r)).toMatchObject({ status: 'stale', found: [tlsaEc.value.replace(/^3 /, '2 ')] });
  });

  it('a server that refuses: every record missing with the lookup error (REFUSED, not a timeout), exit 1', async () => {
    const { text, checked } = await check(refusing);
    expect(text.code, text.stdout + text.stderr).toBe(1);
    for (const c of checked) expect(c, c.name).toMatchObject({ status: 'missing', found: ['lookup failed: EREFUSED'] });
    expect(textFor(text.stdout, sts)).toEqual({ status: 'missing', found: 'lookup failed: EREFUSED' });
  });

  it('each server was asked from 127.0.0.1 only, for the records only, and ran without errors', () => {
    const names = new Set(records.map((r) => `${r.name}. ${r.type} IN`));
    for (const s of [full, broken, odd, refusing, equivalent]) {
      expect(s.child.exitCode, s.log()).toBeNull();
      expect(s.log()).not.toMatch(/error|fail/i);
      // log-queries: "info: <client> <name>. <type> IN" for every query received.
      const queries = [...s.log().matchAll(/ info: (\S+) (\S+\. \S+ IN)$/gm)].map((m) => [m[1], m[2]]);
      expect(queries.length, s.log()).toBeGreaterThanOrEqual(records.length);
      for (const [client, q] of queries) {
        expect(client).toBe('127.0.0.1');
        expect(names.has(q!), q).toBe(true);
      }
    }
  });
});
