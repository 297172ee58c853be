// A private Dovecot instance on loopback: its own config, runtime dir, log and maildirs.
//   DIR/dovecot.conf  DIR/users (passwd-file)  DIR/run (base_dir)  DIR/state  DIR/dovecot.log
//   DIR/mail/<user>   maildirs owned by `mail`  DIR/cert.pem, key.pem (only with sslRequired)
import { chown, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { readText, waitForText } from './logs.ts';
import { waitForListening } from './ports.ts';
import {
  lookupUser, makeTestDir, processGone, removeTestDir, requireProgram, requireRoot, runDaemonLauncher, runOk,
  trackMaster, untrackMaster, waitForPidFile, waitForProcessGone,
} from './system.ts';

export interface DovecotOptions {
  imapPort: number;
  pop3Port: number;
  /** `haproxy = yes` on both listeners: every connection must start with a PROXY header. */
  haproxy: boolean;
  /** haproxy_trusted_networks; default 127.0.0.0/8. */
  trustedNetworks?: string;
  /** ssl = required and disable_plaintext_auth = yes (else ssl = no, plaintext auth allowed). */
  sslRequired?: boolean;
  /** Lines appended to dovecot.conf as they are (e.g. the zlib / imap_zlib plugins for COMPRESS). */
  extraConf?: string;
}

export interface DovecotHandle {
  dir: string;
  imapPort: number;
  pop3Port: number;
  logFile: string;
  users: { user: string; password: string }[];
  readLog(): Promise<string>;
  waitForLog(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  stop(): Promise<void>;
}

const USERS = [{ user: 'alice', password: 'secret' }];

function listener(name: string, port: number, haproxy: boolean): string {
  return `  inet_listener ${name} {
    address = 127.0.0.1
    port = ${port}
    haproxy = ${haproxy ? 'yes' : 'no'}
  }`;
}

export function dovecotConf(dir: string, opts: DovecotOptions, mail: { uid: number; gid: number }): string {
  const ssl = opts.sslRequired
    ? `ssl = required\nssl_cert = <${dir}/cert.pem\nssl_key = <${dir}/key.pem\ndisable_plaintext_auth = yes`
    : 'ssl = no\ndisable_plaintext_auth = no';
  return `# postern e2e: private Dovecot instance
base_dir = ${dir}/run
state_dir = ${dir}/state
instance_name = ${path.basename(dir)}
log_path = ${dir}/dovecot.log
info_log_path = ${dir}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
${ssl}
auth_mechanisms = plain login
auth_verbose = yes
# %c says "secured" (or "TLS") for a secured session, %r is the client address (from the header).
login_log_format_elements = user=<%u> method=%m rip=%r lip=%l mpid=%e %c session=<%{session}>
haproxy_trusted_networks = ${opts.trustedNetworks ?? '127.0.0.0/8'}
# The mail user is the system account "mail" (uid ${mail.uid}); Dovecot refuses uids below 500 by default.
first_valid_uid = ${mail.uid}
first_valid_gid = ${mail.gid}
mail_location = maildir:${dir}/mail/%u
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u ${dir}/users
}
userdb {
  driver = passwd-file
  args = username_format=%u ${dir}/users
}
service imap-login {
${listener('imap', opts.imapPort, opts.haproxy)}
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
${listener('pop3', opts.pop3Port, opts.haproxy)}
  inet_listener pop3s {
    port = 0
  }
}
${opts.extraConf ?? ''}`;
}

export async function startDovecot(opts: DovecotOptions): Promise<DovecotHandle> {
  requireProgram('dovecot');
  requireProgram('doveadm');
  if (opts.sslRequired) requireProgram('openssl');
  requireRoot();
  const mail = lookupUser('mail');
  const dir = await makeTestDir('dovecot');
  const conf = path.join(dir, 'dovecot.conf');
  const logFile = path.join(dir, 'dovecot.log');

  for (const sub of ['run', 'state']) await mkdir(path.join(dir, sub), { mode: 0o755 });
  await mkdir(path.join(dir, 'mail'), { mode: 0o755 });
  await chown(path.join(dir, 'mail'), mail.uid, mail.gid);
  await writeFile(
    path.join(dir, 'users'),
    USERS.map((u) => `${u.user}:{PLAIN}${u.password}:${mail.uid}:${mail.gid}::${dir}/mail/${u.user}::\n`).join(''),
  );
  if (opts.sslRequired) {
    // ssl = required needs a certificate even though TLS is terminated in front of Dovecot.
    await runOk('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
      '-subj', '/CN=imap.postern.test', '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'),
    ]);
  }
  await writeFile(conf, dovecotConf(dir, opts, mail));

  let pid = 0;
  const stop = async () => {
    if (pid && !processGone(pid)) {
      await runOk('doveadm', ['-c', conf, 'stop']);
      await waitForProcessGone(pid, 15_000, 'dovecot master');
    }
    if (pid) untrackMaster(pid);
    await removeTestDir(dir);
  };

  try {
    await runDaemonLauncher('dovecot', ['-c', conf], path.join(dir, 'start.out'));
    pid = await waitForPidFile(path.join(dir, 'run', 'master.pid'), 10_000);
    trackMaster(pid);
    await waitForListening([opts.imapPort, opts.pop3Port], 15_000, () => !processGone(pid));
  } catch (err) {
    const log = await readText(logFile);
    await stop().catch(() => {});
    throw new Error(`Dovecot did not start: ${(err as Error).message}\n${log.slice(-3000)}`);
  }

  return {
    dir,
    imapPort: opts.imapPort,
    pop3Port: opts.pop3Port,
    logFile,
    users: USERS.map((u) => ({ ...u })),
    readLog: () => readText(logFile),
    waitForLog: (re, timeoutMs = 10_000) => waitForText(logFile, re, timeoutMs, 'dovecot log'),
    stop,
  };
}
