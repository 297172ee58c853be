// Let's Encrypt's ACME test server, pebble (Debian's 2.4.0, /usr/bin/pebble), on loopback, for
// integration tests that obtain real certificates. pebble-challtestsrv runs beside it as its DNS
// server and answers every A query with 127.0.0.1 (and no AAAA), so whatever name a test orders,
// pebble's validation authority connects to 127.0.0.1:httpPort (HTTP-01) or 127.0.0.1:tlsPort
// (TLS-ALPN-01) and nothing leaves the machine.
//
// What pebble 2.4.0 does that a test has to know:
// - Everything is in memory and regenerated at each start: a restarted pebble has a new root and
//   intermediate and has forgotten every account, order and certificate (an ACME client's cached
//   account URL then gets accountDoesNotExist).
// - The VA makes 3 concurrent validation requests per challenge (HTTP-01: GET
//   http://<name>:<httpPort>/.well-known/acme-challenge/<token>; TLS-ALPN-01: TLS to
//   127.0.0.1:<tlsPort> with SNI <name> and ALPN acme-tls/1, expecting a certificate with exactly
//   that one DNS name and the critical acmeIdentifier extension).
// - Issued certificates run from issuance to issuance + certificateValidityPeriod - 1 s
//   (notAfter - notBefore = validitySeconds - 1, i.e. validitySeconds by RFC 5280's inclusive count).
// - Unknown config keys are ignored silently (Go's json.Unmarshal), so the start waits for the log
//   line that proves the validity period was read.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { freePorts } from './ports.ts';

export interface PebbleOptions {
  /** Scratch folder for the config and the HTTPS certificate (the caller creates and removes it). */
  dir: string;
  /** Port pebble's VA connects to on 127.0.0.1 for HTTP-01. */
  httpPort: number;
  /** Port pebble's VA connects to on 127.0.0.1 for TLS-ALPN-01. */
  tlsPort: number;
  /** Lifetime of issued certificates (config certificateValidityPeriod, seconds); pebble's default is 5 years. */
  validitySeconds?: number;
  /** External account binding keys (kid -> base64url HMAC key); when given, new accounts must present one. */
  eab?: Record<string, string>;
  /** PEBBLE_VA_ALWAYS_VALID: every challenge passes without a connection to the client. */
  alwaysValid?: boolean;
  /**
   * PEBBLE_AUTHZREUSE, the percentage of new orders that reuse an already valid authorization
   * instead of asking for a new challenge. pebble's default is 50, which makes "was a challenge
   * answered?" a coin toss; 0 unless a test asks. Even 0 is not never: pebble 2.4 creates a new
   * authorization when `rand.Intn(100) > percent` (wfe.go, makeAuthorizations), so one order in 100
   * still reuses a valid one. A test that needs a challenge answered counts authorizations().
   */
  authzReuse?: number;
  /** More environment for pebble (PEBBLE_CHAIN_LENGTH, PEBBLE_ALTERNATE_ROOTS, ...). */
  env?: Record<string, string>;
  /** Bound on each start (processes up, directory answering); default 15 s. */
  startTimeoutMs?: number;
}

export interface Pebble {
  /** https://127.0.0.1:PORT/dir */
  directoryUrl: string;
  /** https://127.0.0.1:PORT of the management interface (/roots/0, /intermediates/0, /cert-status-by-serial/...). */
  managementUrl: string;
  /** The CA that signed pebble's HTTPS certificate: what an ACME client must trust to talk to it. */
  caCertFile: string;
  caCertPem: string;
  ports: { acme: number; management: number; dns: number; dnsManagement: number };
  /** Every stdout/stderr line of both processes since the start, across restarts. */
  lines: string[];
  /**
   * The roots that sign issued certificates (PEM, concatenated): the current one plus those of
   * earlier runs before a restart, so certificates issued before a CA restart still verify.
   * Issued chains are leaf + intermediate, so a root is all a TLS client needs.
   */
  issuerRoots(): Promise<string>;
  /**
   * Lines of pebble's log matching a pattern. Lines come through a pipe, so one written just before
   * an ACME response can still be in flight when the client has the response: the counters first
   * make pebble log a line of their own and wait for it, and so see everything before it.
   */
  count(pattern: RegExp): Promise<number>;
  /** New orders accepted ("Added order "<id>" to the db"). */
  orders(): Promise<number>;
  /** Certificates issued ("Issued certificate serial <hex> for order <id>"). */
  issued(): Promise<number>;
  /**
   * Authorizations created ("There are now N authorizations in the db", logged once per new one):
   * an order that reused a valid authorization adds none, and asks for no challenge.
   */
  authorizations(): Promise<number>;
  /** Challenges that passed / failed ("authz <id> set VALID|INVALID by completed challenge <id>"). */
  validations(): Promise<{ valid: number; invalid: number }>;
  /**
   * validations() once at least `valid` have passed (or after `timeoutMs`): pebble's VA logs
   * "set VALID" after it has updated the authorization, so a client can see it valid, finish its
   * order and be done before the line is written.
   */
  validationsAtLeast(valid: number, timeoutMs?: number): Promise<{ valid: number; invalid: number }>;
  /** A CA outage: pebble stops (the DNS server stays); its ports refuse connections. */
  stopCa(): Promise<void>;
  /** The CA back on the same ports, with fresh state and a new root. */
  startCa(): Promise<void>;
  restart(): Promise<void>;
  /** Kills both processes and waits for them to exit. */
  stop(): Promise<void>;
}

const PEBBLE_LINE = /^Pebble /;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A CA and a server certificate for 127.0.0.1 and localhost (the directory URL names the IP). */
function makeHttpsCertificate(dir: string) {
  // src/demo/ca.ts makes DNS-only certificates; a client connecting to https://127.0.0.1 checks IP
  // SANs only, hence this small variant.
  writeFileSync(
    join(dir, 'pebble-https.cnf'),
    `[req]
distinguished_name = dn
prompt = no
[dn]
CN = postern pebble HTTPS CA
[ca]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1,DNS:localhost
`,
  );
  const key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2'];
  const openssl = (args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 });
  openssl(['req', '-x509', '-config', 'pebble-https.cnf', '-extensions', 'ca', ...key, '-keyout', 'pebble-https-ca.key', '-out', 'pebble-https-ca.pem']);
  openssl(['req', '-x509', '-config', 'pebble-https.cnf', '-extensions', 'leaf', ...key, '-subj', '/CN=localhost', '-CA', 'pebble-https-ca.pem', '-CAkey', 'pebble-https-ca.key', '-keyout', 'pebble-https.key', '-out', 'pebble-https.pem']);
  rmSync(join(dir, 'pebble-https-ca.key'));
  return { caCertFile: join(dir, 'pebble-https-ca.pem'), cert: join(dir, 'pebble-https.pem'), key: join(dir, 'pebble-https.key') };
}

/** GET over HTTPS trusting `ca`; null on any failure (the server may not be up yet). */
function get(url: string, ca: string, timeoutMs = 2000): Promise<{ status: number; body: string } | null> {
  return new Promise((resolve) => {
    const req = https.get(url, { ca, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', () => resolve(null));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(null));
  });
}

function tcpOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    s.setTimeout(1000);
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('timeout', () => (s.destroy(), resolve(false)));
    s.once('error', () => resolve(false));
  });
}

/** Each child's 'close', recorded at spawn so a late caller does not wait for an event already past. */
const closed = new WeakMap<ChildProcess, Promise<unknown>>();

function isRunning(child: ChildProcess) {
  return child.exitCode === null && child.signalCode === null;
}

/**
 * SIGTERM, then SIGKILL after 3 s; resolves once the process is gone and its output read ('close'
 * comes after the pipes are drained), or after 5 s whatever happens.
 */
async function kill(child: ChildProcess | undefined) {
  if (!child || child.pid === undefined) return;
  const exited = closed.get(child) ?? Promise.resolve();
  if (!isRunning(child)) return void (await Promise.race([exited, sleep(2000)]));
  child.kill('SIGTERM');
  if (await Promise.race([exited.then(() => true), sleep(3000).then(() => false)])) return;
  child.kill('SIGKILL');
  await Promise.race([exited, sleep(2000)]);
}

export async function startPebble(opts: PebbleOptions): Promise<Pebble> {
  const startTimeoutMs = opts.startTimeoutMs ?? 15_000;
  const [acme, management, dns, dnsManagement] = (await freePorts(4)) as [number, number, number, number];
  const files = makeHttpsCertificate(opts.dir);
  const caCertPem = readFileSync(files.caCertFile, 'utf8');
  const configFile = join(opts.dir, 'pebble-config.json');
  writeFileSync(
    configFile,
    JSON.stringify(
      {
        pebble: {
          listenAddress: `127.0.0.1:${acme}`,
          managementListenAddress: `127.0.0.1:${management}`,
          certificate: files.cert,
          privateKey: files.key,
          httpPort: opts.httpPort,
          tlsPort: opts.tlsPort,
          ocspResponderURL: '',
          externalAccountBindingRequired: opts.eab !== undefined,
          externalAccountMACKeys: opts.eab ?? {},
          ...(opts.validitySeconds !== undefined && { certificateValidityPeriod: opts.validitySeconds }),
        },
      },
      null,
      2,
    ),
  );
  const directoryUrl = `https://127.0.0.1:${acme}/dir`;
  const managementUrl = `https://127.0.0.1:${management}`;
  const lines: string[] = [];
  const roots: string[] = [];
  let pebble: ChildProcess | undefined;
  let challtestsrv: ChildProcess | undefined;

  const run = (file: string, args: string[], env: Record<string, string>) => {
    // Only PATH from this process: a PEBBLE_* variable in the developer's shell must not change the tests.
    const child = spawn(file, args, { cwd: opts.dir, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    closed.set(child, new Promise((r) => child.once('close', r)));
    child.on('error', (err) => lines.push(`${file}: ${err.message}`));
    for (const stream of [child.stdout!, child.stderr!]) createInterface({ input: stream }).on('line', (l) => lines.push(l));
    return child;
  };

  /** Polls until ready() holds; throws with the output so far when time runs out or the process exits. */
  const waitFor = async (what: string, child: ChildProcess, ready: () => Promise<boolean>) => {
    const deadline = Date.now() + startTimeoutMs;
    for (;;) {
      if (!isRunning(child)) throw new Error(`${what} exited (${child.exitCode ?? child.signalCode}) before it was ready:\n${lines.join('\n')}`);
      if (await ready()) return;
      if (Date.now() > deadline) throw new Error(`${what} not ready after ${startTimeoutMs} ms:\n${lines.join('\n')}`);
      await sleep(50);
    }
  };

  const fetchRoot = async () => {
    const r = await get(`${managementUrl}/roots/0`, caCertPem);
    if (r?.status !== 200 || !r.body.includes('BEGIN CERTIFICATE')) return false;
    if (!roots.includes(r.body)) roots.push(r.body);
    return true;
  };

  const startCa = async () => {
    if (pebble && isRunning(pebble)) return;
    const from = lines.length;
    const env: Record<string, string> = {
      // No random 0-15 s sleep before each validation.
      PEBBLE_VA_NOSLEEP: '1',
      // pebble rejects 5% of good nonces by default to exercise client retries; tests want determinism.
      PEBBLE_WFE_NONCEREJECT: '0',
      PEBBLE_AUTHZREUSE: String(opts.authzReuse ?? 0),
      ...(opts.alwaysValid && { PEBBLE_VA_ALWAYS_VALID: '1' }),
      ...opts.env,
    };
    pebble = run('pebble', ['-config', configFile, '-dnsserver', `127.0.0.1:${dns}`], env);
    const validityLine = opts.validitySeconds && `Using certificate validity period of ${opts.validitySeconds} seconds`;
    try {
      await waitFor('pebble', pebble, async () => {
        if (validityLine && !lines.slice(from).some((l) => l.endsWith(validityLine))) return false;
        const dir = await get(directoryUrl, caCertPem);
        return dir?.status === 200 && (await fetchRoot());
      });
    } catch (err) {
      // Not left running half-started when the test gives up on it.
      await kill(pebble);
      throw err;
    }
  };

  const stop = async () => {
    await Promise.all([kill(pebble), kill(challtestsrv)]);
  };

  try {
    // Only the DNS server: the challenge servers would take ports (and the test answers challenges
    // itself). The management interface cannot be turned off ("" binds *:80), so it gets a loopback port.
    challtestsrv = run('pebble-challtestsrv', ['-defaultIPv4', '127.0.0.1', '-defaultIPv6', '', '-dns01', `127.0.0.1:${dns}`, '-http01', '', '-https01', '', '-tlsalpn01', '', '-management', `127.0.0.1:${dnsManagement}`], {});
    await waitFor('pebble-challtestsrv', challtestsrv, () => tcpOpen(dns));
    await startCa();
  } catch (err) {
    await stop();
    throw err;
  }

  const countNow = (pattern: RegExp) => lines.filter((l) => PEBBLE_LINE.test(l) && pattern.test(l)).length;
  const DIR_LINE = / GET \/dir -> calling handler\(\)$/;
  /** pebble writes its log in order: once the line of a directory request made now arrives, so has everything before it. */
  const settle = async () => {
    if (!pebble || !isRunning(pebble)) return;
    const before = countNow(DIR_LINE);
    await get(directoryUrl, caCertPem);
    const deadline = Date.now() + 2000;
    while (countNow(DIR_LINE) <= before && Date.now() < deadline) await sleep(5);
  };
  const count = async (pattern: RegExp) => (await settle(), countNow(pattern));
  return {
    directoryUrl,
    managementUrl,
    caCertFile: files.caCertFile,
    caCertPem,
    ports: { acme, management, dns, dnsManagement },
    lines,
    async issuerRoots() {
      if (pebble && isRunning(pebble)) await fetchRoot();
      return roots.join('');
    },
    count,
    orders: () => count(/ Added order "[^"]+" to the db$/),
    issued: () => count(/ Issued certificate serial [0-9a-f]+ for order \S+$/),
    authorizations: () => count(/ There are now \d+ authorizations in the db$/),
    validations: async () => ({ valid: await count(/ authz \S+ set VALID by completed challenge /), invalid: await count(/ authz \S+ set INVALID by completed challenge /) }),
    validationsAtLeast: async (valid: number, timeoutMs = 10_000) => {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const v = { valid: await count(/ authz \S+ set VALID by completed challenge /), invalid: await count(/ authz \S+ set INVALID by completed challenge /) };
        if (v.valid >= valid || Date.now() > until) return v;
        await sleep(100);
      }
    },
    stopCa: () => kill(pebble),
    startCa,
    async restart() {
      await kill(pebble);
      await startCa();
    },
    stop,
  };
}
