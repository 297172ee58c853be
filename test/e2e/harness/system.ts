// Host plumbing for the private daemons: programs on PATH, root, users, temp dirs, processes.
import { execFile, spawn } from 'node:child_process';
import { accessSync, constants, readFileSync, statSync } from 'node:fs';
import { chmod, mkdtemp, open, readFile, realpath, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

const SBIN_DIRS = ['/usr/local/sbin', '/usr/sbin', '/sbin'];

export function findProgram(name: string): string | null {
  const dirs = [...(process.env.PATH ?? '').split(path.delimiter).filter(Boolean), ...SBIN_DIRS];
  for (const dir of dirs) {
    const candidate = path.join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  return null;
}

/**
 * Throws when a program is missing. Never skips: a skipped backend test would hide a defect
 * (locally and under CI=true alike).
 */
export function requireProgram(name: string): void {
  if (findProgram(name)) return;
  throw new Error(
    `required program "${name}" not found on PATH or in ${SBIN_DIRS.join(', ')}; ` +
      'install the apt packages postfix dovecot-imapd dovecot-pop3d swaks openssl',
  );
}

/** Postfix (and Dovecot's privilege separation) need root; say so instead of failing obscurely. */
export function requireRoot(): void {
  if (process.getuid?.() === 0) return;
  throw new Error('the private Postfix/Dovecot harness must run as root (postfix start and Dovecot drop privileges themselves)');
}

export interface RunResult { code: number; stdout: string; stderr: string }

/** Runs a program to completion; never throws for a non-zero exit (the caller decides). */
export function run(file: string, args: string[], timeoutMs = 30_000): Promise<RunResult> {
  const resolved = findProgram(file) ?? file;
  return new Promise((resolve, reject) => {
    execFile(resolved, args, { timeout: timeoutMs, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return reject(new Error(`${file} ${args.join(' ')}: ${err.message}\n${stderr}`));
      resolve({ code: err ? Number(err.code) : 0, stdout, stderr });
    });
  });
}

export async function runOk(file: string, args: string[], timeoutMs?: number): Promise<RunResult> {
  const r = await run(file, args, timeoutMs);
  if (r.code !== 0) throw new Error(`${file} ${args.join(' ')} exited ${r.code}\n${r.stdout}${r.stderr}`);
  return r;
}

/**
 * Runs a command that daemonizes (`postfix start`, `dovecot`). Its output goes to `outFile`, not
 * to pipes: the daemon inherits the launcher's stdout/stderr, so waiting for pipes to close (what
 * execFile does) would wait for the daemon itself. We wait for the launcher to exit instead.
 */
export async function runDaemonLauncher(file: string, args: string[], outFile: string, timeoutMs = 30_000): Promise<void> {
  const resolved = findProgram(file) ?? file;
  const out = await open(outFile, 'a');
  try {
    const code = await new Promise<number | string>((resolve, reject) => {
      const child = spawn(resolved, args, { stdio: ['ignore', out.fd, out.fd] });
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`${file} ${args.join(' ')}: no exit within ${timeoutMs} ms`));
      }, timeoutMs);
      child.once('error', reject);
      child.once('exit', (c, signal) => {
        clearTimeout(timer);
        resolve(c ?? signal ?? 'unknown');
      });
    });
    if (code !== 0) {
      const output = await readFile(outFile, 'utf8').catch(() => '');
      throw new Error(`${file} ${args.join(' ')} exited ${code}\n${output}`);
    }
  } finally {
    await out.close();
  }
}

/** uid and gid of an existing account, from /etc/passwd. */
export function lookupUser(name: string): { uid: number; gid: number } {
  for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
    const [user, , uid, gid] = line.split(':');
    if (user === name && uid !== undefined && gid !== undefined) return { uid: Number(uid), gid: Number(gid) };
  }
  throw new Error(`system user "${name}" does not exist (it comes with the postfix/dovecot packages)`);
}

/**
 * A fresh 0755 directory that the daemons' unprivileged users can traverse. mkdtemp makes 0700;
 * every folder above must allow "other" to search, else the daemons fail after dropping
 * privileges. We refuse (with the reason) rather than chmod system folders.
 */
export async function makeTestDir(prefix: string): Promise<string> {
  const base = await realpath(process.env.POSTERN_E2E_TMPDIR ?? os.tmpdir());
  for (let p = base; ; p = path.dirname(p)) {
    if ((statSync(p).mode & 0o001) === 0) {
      throw new Error(`${p} is not searchable by other users; set POSTERN_E2E_TMPDIR to a folder whose parents all are (e.g. /tmp)`);
    }
    if (p === path.dirname(p)) break;
  }
  const dir = await mkdtemp(path.join(base, `postern-${prefix}-`));
  await chmod(dir, 0o755);
  return dir;
}

/** Removes a test dir unless POSTERN_E2E_KEEP=1 (then its path is printed for inspection). */
export async function removeTestDir(dir: string): Promise<void> {
  if (process.env.POSTERN_E2E_KEEP === '1') {
    console.error(`[harness] keeping ${dir}`);
    return;
  }
  await rm(dir, { recursive: true, force: true });
}

/** Gone means no /proc entry or a zombie (daemons are reparented to a PID 1 that may reap late). */
export function processGone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state === 'Z' || state === 'X';
  } catch {
    return true;
  }
}

export async function waitForProcessGone(pid: number, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!processGone(pid)) {
    if (Date.now() > deadline) throw new Error(`${what} (pid ${pid}) still running after ${timeoutMs} ms`);
    await sleep(50);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Reads a pid file ("   8223\n" for Postfix, "8660\n" for Dovecot). */
export function readPidFile(file: string): number {
  const pid = Number(readFileSync(file, 'utf8').trim());
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`bad pid file ${file}`);
  return pid;
}

/**
 * Waits for a daemon's pid file: the launcher may exit before the forked master has written it
 * (seen with Dovecot: ENOENT on run/master.pid right after `dovecot` returned).
 */
export async function waitForPidFile(file: string, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return readPidFile(file);
    } catch (err) {
      if (Date.now() > deadline) throw err;
    }
    await sleep(25);
  }
}

// Last-resort cleanup: if a test file forgets stop() or the worker exits early, do not leave
// daemons behind holding ports. SIGTERM is what `postfix stop` and `doveadm stop` send anyway.
const liveMasters = new Set<number>();
let exitHookInstalled = false;

export function trackMaster(pid: number): void {
  liveMasters.add(pid);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const p of liveMasters) {
      try {
        process.kill(p, 'SIGTERM');
      } catch {
        // already gone
      }
    }
  });
}

export function untrackMaster(pid: number): void {
  liveMasters.delete(pid);
}
