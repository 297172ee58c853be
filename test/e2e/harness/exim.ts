// A private Exim daemon on loopback, run from its own config file (`exim -C DIR/exim.conf -bdf`).
//   DIR/exim.conf   DIR/spool (spool_directory)   DIR/log/mainlog, paniclog, rejectlog
//   DIR/mail/<local part>/{new,cur,tmp}   maildirs written by the appendfile transport
//
// The binary: $POSTERN_EXIM, else the one .ci/run unpacks into .tools/exim (Debian's
// exim4-daemon-heavy, which conflicts with the postfix package and so is not installed), else
// exim4 or exim on PATH. It must be built with SUPPORT_PROXY (`exim -bV` lists PROXY).
//
// Privileges: Exim gives up root for anything it re-executes (deliveries) when started with -C
// and a file that is not in its TRUSTED_CONFIG_LIST ("exim user lost privilege for using -C
// option"), so deliveries run as its compiled-in exim user, Debian-exim, and the spool, log and
// mail folders belong to that user. The user must exist (the binary looks it up before reading any
// config; .ci/run creates it as the exim4-base package would).
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { chown, mkdir, open, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readText, waitForText } from './logs.ts';
import { waitForListening } from './ports.ts';
import {
  findProgram, lookupUser, makeTestDir, processGone, removeTestDir, requireRoot, run, trackMaster, untrackMaster,
  waitForPidFile, waitForProcessGone,
} from './system.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
/** Where .ci/run unpacks the Debian packages (dpkg-deb -x). */
export const BUNDLED_EXIM = path.join(ROOT, '.tools/exim/usr/sbin/exim4');
/** Exim's compiled-in user in Debian's build (`exim -bV` fails without it). */
export const EXIM_USER = 'Debian-exim';
/** Exim's own name: tells its replies and Received headers from postern's. */
export const EXIM_NAME = 'mx.exim.test';
export const EXIM_DOMAIN = 'example.org';
/** The SASL user of the plaintext authenticator (AUTH PLAIN and LOGIN). */
export const EXIM_USERS = [{ user: 'alice', password: 'secret' }];

export interface EximOptions {
  /** The daemon port postern's MX listener connects to (Postfix's 10025). */
  mxPort: number;
  /** The daemon port of the submission listeners (Postfix's 10587): RCPT requires AUTH. */
  submissionPort: number;
  /** hosts_proxy: who must send a PROXY header. Default 127.0.0.1 (postern). */
  hostsProxy?: string;
  /** Local parts of example.org with a maildir; others are refused at RCPT. Default ['rcpt']. */
  mailboxes?: string[];
}

export interface EximHandle {
  dir: string;
  binary: string;
  mxPort: number;
  submissionPort: number;
  config: string;
  readLog(): Promise<string>;
  waitForLog(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** The delivered messages of a maildir (new/), as written; waits until one matches `re`. */
  waitForMessage(user: string, re: RegExp, timeoutMs?: number): Promise<string>;
  stop(): Promise<void>;
}

/**
 * The Exim binary to run, or an error saying how to get one. Never a skip: a missing Exim must
 * fail the suite (as a missing Postfix does).
 */
export async function findExim(candidates = [process.env.POSTERN_EXIM, BUNDLED_EXIM, findProgram('exim4'), findProgram('exim')]): Promise<string> {
  const binary = candidates.find((c): c is string => !!c && existsSync(c));
  if (!binary) {
    throw new Error(
      `required program "exim" not found (POSTERN_EXIM, ${BUNDLED_EXIM}, exim4/exim on PATH): ` +
        'run the "Exim" step of .ci/run (apt-get download exim4-daemon-heavy exim4-base exim4-config, dpkg-deb -x into .tools/exim)',
    );
  }
  const v = await run(binary, ['-bV']);
  const support = /^Support for:(.*)$/m.exec(v.stdout)?.[1] ?? '';
  if (!/\bPROXY\b/.test(support)) {
    throw new Error(`${binary} -bV does not list PROXY under "Support for" (built without SUPPORT_PROXY?):\n${v.stdout}${v.stderr}`);
  }
  return binary;
}

/** The configuration docs/mail-servers.md shows (section "Exim"), with the test's paths and ports. */
export function eximConf(dir: string, binary: string, opts: EximOptions): string {
  const mailboxes = opts.mailboxes ?? ['rcpt'];
  const users = EXIM_USERS.map((u) => `{and{{eq{$auth2}{${u.user}}}{eq{$auth3}{${u.password}}}}}`).join('');
  return `# postern e2e: private Exim instance (exim -C ${dir}/exim.conf -bdf)
exim_path = ${binary}
keep_environment =
primary_hostname = ${EXIM_NAME}
spool_directory = ${dir}/spool
log_file_path = ${dir}/log/%slog
pid_file_path = ${dir}/exim.pid

# The two ports postern connects to (postern's MX listener, and its submission listeners), on
# loopback only. $received_port is this port, whatever the client connected to at postern.
daemon_smtp_ports = ${opts.mxPort} : ${opts.submissionPort}
local_interfaces = <; 127.0.0.1.${opts.mxPort} ; 127.0.0.1.${opts.submissionPort}
# Connections from these hosts must start with a PROXY header (v1 or v2, Exim tells them apart).
hosts_proxy = ${opts.hostsProxy ?? '127.0.0.1'}
# TLS is postern's job: no STARTTLS here (Exim would not see postern's TLS anyway).
tls_advertise_hosts =
# AUTH on the submission port only, to every client there: Exim sees plaintext from postern,
# and postern refuses AUTH before TLS. (Not \${if def:tls_in_cipher}: that is never set here.)
auth_advertise_hosts = \${if eq{$received_port}{${opts.submissionPort}}{*}{}}
# No DNS and no ident callbacks (the test machine has no resolver).
host_lookup =
rfc1413_hosts =
# PRX=<postern's address> on the <= lines, the port on connection lines.
log_selector = +proxy +incoming_port +received_recipients +smtp_connection

domainlist local_domains = ${EXIM_DOMAIN}
acl_smtp_rcpt = acl_check_rcpt

begin acl

acl_check_rcpt:
  # The submission port: authenticated users only.
  deny    condition = \${if eq{$received_port}{${opts.submissionPort}}}
          !authenticated = *
          message = authentication required
  accept  domains = +local_domains
          local_parts = ${mailboxes.join(' : ')}
  deny    message = relay not permitted

begin routers

local_maildir:
  driver = accept
  domains = +local_domains
  local_parts = ${mailboxes.join(' : ')}
  transport = maildir_delivery

begin transports

maildir_delivery:
  driver = appendfile
  # $local_part_data: the untainted list item that matched (Exim 4.94+ refuses tainted paths).
  directory = ${dir}/mail/\${local_part_data}
  maildir_format
  create_directory
  delivery_date_add
  envelope_to_add
  return_path_add
  user = ${EXIM_USER}
  mode = 0600

begin retry

*  *  F,1h,5m

begin authenticators

plain_server:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = \${if or{${users}}}
  server_set_id = $auth2

login_server:
  driver = plaintext
  public_name = LOGIN
  server_prompts = Username:: : Password::
  server_condition = \${if or{${EXIM_USERS.map((u) => `{and{{eq{$auth1}{${u.user}}}{eq{$auth2}{${u.password}}}}}`).join('')}}}
  server_set_id = $auth1
`;
}

export async function startExim(opts: EximOptions): Promise<EximHandle> {
  requireRoot();
  const binary = await findExim();
  const exim = lookupUser(EXIM_USER);
  const dir = await makeTestDir('exim');
  const config = path.join(dir, 'exim.conf');
  const logFile = path.join(dir, 'log', 'mainlog');
  for (const sub of ['spool', 'log', 'mail']) {
    await mkdir(path.join(dir, sub), { mode: 0o750 });
    await chown(path.join(dir, sub), exim.uid, exim.gid);
  }
  // Root-owned and not writable by others: Exim refuses -C otherwise.
  await writeFile(config, eximConf(dir, binary, opts), { mode: 0o644 });

  let pid = 0;
  const stop = async () => {
    if (pid && !processGone(pid)) {
      process.kill(pid, 'SIGTERM');
      await waitForProcessGone(pid, 15_000, 'exim daemon');
    }
    if (pid) untrackMaster(pid);
    await removeTestDir(dir);
  };

  const out = await open(path.join(dir, 'daemon.out'), 'a');
  try {
    // -bdf: the daemon stays in the foreground (this process's child); no -q: deliveries start
    // as each message is received.
    const child = spawn(binary, ['-C', config, '-bdf'], { stdio: ['ignore', out.fd, out.fd] });
    child.once('error', () => {});
    pid = child.pid ?? 0;
    if (!pid) throw new Error(`could not start ${binary}`);
    trackMaster(pid);
    await waitForPidFile(path.join(dir, 'exim.pid'), 10_000);
    await waitForListening([opts.mxPort, opts.submissionPort], 15_000, () => !processGone(pid));
  } catch (err) {
    const log = (await readText(logFile)) + (await readText(path.join(dir, 'log', 'paniclog'))) + (await readText(path.join(dir, 'daemon.out')));
    await stop().catch(() => {});
    throw new Error(`Exim did not start: ${(err as Error).message}\n${log.slice(-3000)}`);
  } finally {
    await out.close();
  }

  const maildirNew = (user: string) => path.join(dir, 'mail', user, 'new');
  return {
    dir,
    binary,
    mxPort: opts.mxPort,
    submissionPort: opts.submissionPort,
    config,
    readLog: () => readText(logFile),
    waitForLog: (re, timeoutMs = 10_000) => waitForText(logFile, re, timeoutMs, 'exim mainlog'),
    async waitForMessage(user, re, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const folder = maildirNew(user);
        const files = existsSync(folder) ? readdirSync(folder) : [];
        for (const f of files) {
          const text = await readFile(path.join(folder, f), 'utf8').catch(() => '');
          if (re.test(text)) return text;
        }
        if (Date.now() > deadline) {
          throw new Error(`no message matching ${re} in ${folder} within ${timeoutMs} ms (${files.length} files); mainlog:\n${(await readText(logFile)).slice(-3000)}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    stop,
  };
}
