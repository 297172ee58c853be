// A private Postfix instance on loopback: its own config, queue, log and mailboxes in one temp dir.
// Layout (config apart from the rest: `postfix start` warns about anything under the config
// directory that is not root-owned, and the queue, data and mail folders are not):
//   DIR/etc/main.cf, master.cf, vmailbox   DIR/queue   DIR/data   DIR/maillog
//   DIR/mail/example.org/<user>            mbox files written by the virtual(8) agent as `mail`
import { mkdir, chown, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { readText, waitForText } from './logs.ts';
import { waitForListening } from './ports.ts';
import {
  lookupUser, makeTestDir, processGone, removeTestDir, requireProgram, requireRoot, runDaemonLauncher, runOk,
  trackMaster, untrackMaster, waitForPidFile, waitForProcessGone,
} from './system.ts';

export const MAIL_DOMAIN = 'example.org';

export interface PostfixOptions {
  smtpPort: number;
  submissionPort: number;
  /** 'haproxy' sets smtpd_upstream_proxy_protocol on both smtpd services (v1 and v2 accepted). */
  proxyProtocol: 'haproxy' | null;
  myhostname?: string;
  /** Local parts of example.org that have a mailbox; others are rejected at RCPT. Default ['rcpt']. */
  mailboxes?: string[];
  /** Lines appended to main.cf as they are (e.g. smtpd TLS settings, message_size_limit). */
  mainCfExtra?: string;
  /** Lines appended to master.cf as they are (e.g. the tlsmgr service, which smtpd TLS needs). */
  masterCfExtra?: string;
  /**
   * postscreen(8) in front of smtpd on the smtp port (as on a public MX); its tests are set in
   * mainCfExtra (postscreen_greet_wait, postscreen_access_list...). The PROXY header then goes to
   * postscreen (postscreen_upstream_proxy_protocol).
   */
  postscreen?: boolean;
}

export interface PostfixHandle {
  dir: string;
  smtpPort: number;
  submissionPort: number;
  logFile: string;
  readLog(): Promise<string>;
  waitForLog(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** The mbox text delivered to user@example.org so far ('' when nothing yet). */
  mailboxText(user: string): Promise<string>;
  /** Waits until the mailbox of user@example.org matches (delivery is asynchronous). */
  waitForMailbox(user: string, re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  stop(): Promise<void>;
}

function mainCf(dir: string, opts: PostfixOptions, mail: { uid: number; gid: number }): string {
  return `# postern e2e: private Postfix instance
compatibility_level = 3.6
queue_directory = ${dir}/queue
data_directory = ${dir}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = ${opts.myhostname ?? 'mx.postern.test'}
mydomain = postern.test
myorigin = $myhostname
# Loopback only. "all" protocols so that a TCP6 PROXY header is accepted; the listeners
# themselves are 127.0.0.1 (master.cf).
inet_interfaces = 127.0.0.1
inet_protocols = all
mynetworks = 127.0.0.0/8
# Nothing is delivered locally and nothing leaves: mail for ${MAIL_DOMAIN} goes to mbox files
# under ${dir}/mail, everything else (bounces included) fails at once, without DNS.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains =
default_transport = error:the postern test instance sends no mail out
relay_transport = $default_transport
virtual_mailbox_domains = ${MAIL_DOMAIN}
virtual_mailbox_maps = texthash:${dir}/etc/vmailbox
virtual_mailbox_base = ${dir}/mail
virtual_uid_maps = static:${mail.uid}
virtual_gid_maps = static:${mail.gid}
virtual_minimum_uid = ${mail.uid}
# No reverse DNS for client addresses: logs say unknown[address] at once.
smtpd_peername_lookup = no
biff = no
# Log to a file: needs the postlog service in master.cf, and the file under an allowed prefix.
maillog_file = ${dir}/maillog
maillog_file_prefixes = ${dir}
${opts.mainCfExtra ?? ''}`;
}

export function masterCf(opts: PostfixOptions): string {
  // chroot column "n" everywhere: there is no chroot jail inside the queue directory.
  const proxy = opts.proxyProtocol ? `\n  -o smtpd_upstream_proxy_protocol=${opts.proxyProtocol}` : '';
  const smtp = opts.postscreen
    ? `127.0.0.1:${opts.smtpPort} inet n - n - 1 postscreen${opts.proxyProtocol ? `\n  -o postscreen_upstream_proxy_protocol=${opts.proxyProtocol}` : ''}
smtpd     pass  - - n - - smtpd
dnsblog   unix  - - n - 0 dnsblog
tlsproxy  unix  - - n - 0 tlsproxy`
    : `127.0.0.1:${opts.smtpPort} inet n - n - - smtpd${proxy}`;
  return `# postern e2e: private Postfix instance
${smtp}
127.0.0.1:${opts.submissionPort} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_auth_only=no${proxy}
pickup    unix  n - n 60    1 pickup
cleanup   unix  n - n -     0 cleanup
qmgr      unix  n - n 300   1 qmgr
rewrite   unix  - - n -     - trivial-rewrite
bounce    unix  - - n -     0 bounce
defer     unix  - - n -     0 bounce
trace     unix  - - n -     0 bounce
verify    unix  - - n -     1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -     - proxymap
error     unix  - - n -     - error
retry     unix  - - n -     - error
discard   unix  - - n -     - discard
virtual   unix  - n n -     - virtual
anvil     unix  - - n -     1 anvil
scache    unix  - - n -     1 scache
postlog   unix-dgram n - n - 1 postlogd
${opts.masterCfExtra ?? ''}`;
}

function mailboxName(user: string): string {
  const local = user.toLowerCase().replace(new RegExp(`@${MAIL_DOMAIN.replace('.', '\\.')}$`), '');
  if (!/^[a-z0-9][a-z0-9._+-]*$/.test(local)) throw new Error(`unsupported mailbox name: ${user}`);
  return local;
}

export async function startPostfix(opts: PostfixOptions): Promise<PostfixHandle> {
  requireProgram('postfix');
  requireRoot();
  const mail = lookupUser('mail');
  const dir = await makeTestDir('postfix');
  const etc = path.join(dir, 'etc');
  const domainDir = path.join(dir, 'mail', MAIL_DOMAIN);
  const logFile = path.join(dir, 'maillog');
  const mailboxes = (opts.mailboxes ?? ['rcpt']).map(mailboxName);

  await mkdir(etc, { mode: 0o755 });
  await mkdir(path.join(dir, 'queue'), { mode: 0o755 }); // Postfix creates its subfolders, not this one
  await mkdir(domainDir, { recursive: true, mode: 0o755 }); // virtual(8) creates mbox files, not folders
  await chown(path.join(dir, 'mail'), mail.uid, mail.gid);
  await chown(domainDir, mail.uid, mail.gid);
  await writeFile(path.join(etc, 'main.cf'), mainCf(dir, opts, mail));
  await writeFile(path.join(etc, 'master.cf'), masterCf(opts));
  await writeFile(path.join(etc, 'vmailbox'), mailboxes.map((m) => `${m}@${MAIL_DOMAIN} ${MAIL_DOMAIN}/${m}\n`).join(''));

  let pid = 0;
  const stop = async () => {
    if (pid && !processGone(pid)) {
      await runOk('postfix', ['-c', etc, 'stop']);
      await waitForProcessGone(pid, 15_000, 'postfix master');
    }
    if (pid) untrackMaster(pid);
    await removeTestDir(dir);
  };

  try {
    await runDaemonLauncher('postfix', ['-c', etc, 'start'], path.join(dir, 'start.out'));
    pid = await waitForPidFile(path.join(dir, 'queue', 'pid', 'master.pid'), 10_000);
    trackMaster(pid);
    await waitForListening([opts.smtpPort, opts.submissionPort], 15_000, () => !processGone(pid));
  } catch (err) {
    const log = await readText(logFile);
    await stop().catch(() => {});
    throw new Error(`Postfix did not start: ${(err as Error).message}\n${log.slice(-3000)}`);
  }

  const mailboxFile = (user: string) => path.join(domainDir, mailboxName(user));
  return {
    dir,
    smtpPort: opts.smtpPort,
    submissionPort: opts.submissionPort,
    logFile,
    readLog: () => readText(logFile),
    waitForLog: (re, timeoutMs = 10_000) => waitForText(logFile, re, timeoutMs, 'postfix log'),
    mailboxText: (user) => readText(mailboxFile(user)),
    waitForMailbox: (user, re, timeoutMs = 15_000) => waitForText(mailboxFile(user), re, timeoutMs, `mailbox ${user}`),
    stop,
  };
}
