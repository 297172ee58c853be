// Processes for the benchmark: spawn pinned to a core, stop, and read /proc for the resident
// memory and CPU time of a process and all its descendants (nginx and hitch fork workers).
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface Proc {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  /** Resolves with the exit code (or signal name) once the process has exited. */
  readonly exited: Promise<string>;
  exitedEarly(): string | null;
}

/** Starts `cmd args` under `taskset -c core` (taskset execs, so the pid is the command's). */
/** `core`: one core, or a taskset CPU list ("0-1": the scheduler places each process). */
export function spawnPinned(name: string, core: number | string, cmd: string, args: string[], opts: {
  logFile: string; env?: NodeJS.ProcessEnv; cwd?: string;
}): Proc {
  const fd = fs.openSync(opts.logFile, 'a');
  const child = spawn('taskset', ['-c', String(core), cmd, ...args], {
    stdio: ['ignore', fd, fd],
    env: opts.env ?? process.env,
    cwd: opts.cwd,
  });
  fs.closeSync(fd);
  let status: string | null = null;
  const exited = new Promise<string>((resolve) => {
    child.once('exit', (code, signal) => { status = signal ?? String(code); resolve(status); });
    child.once('error', (err) => { status = `spawn error: ${err.message}`; resolve(status); });
  });
  if (child.pid === undefined) throw new Error(`${name}: cannot spawn ${cmd}`);
  return { name, child, pid: child.pid, exited, exitedEarly: () => status };
}

/** SIGTERM, then SIGKILL (the process and any descendants left) after `graceMs`. */
export async function stopProc(p: Proc, graceMs = 5000): Promise<void> {
  if (p.exitedEarly() !== null) return;
  const tree = treePids(p.pid);
  try { process.kill(p.pid, 'SIGTERM'); } catch { /* gone */ }
  const t = await Promise.race([p.exited.then(() => 'exited'), sleep(graceMs).then(() => 'timeout')]);
  if (t === 'timeout') {
    for (const pid of tree) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
    await Promise.race([p.exited, sleep(2000)]);
  }
  // Workers that outlive their parent by a moment (nginx, hitch): wait for them, then kill.
  const deadline = Date.now() + graceMs;
  for (const pid of tree) {
    while (alive(pid) && Date.now() < deadline) await sleep(50);
    if (alive(pid)) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
  }
}

function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    return !/\) [ZX] /.test(stat);
  } catch { return false; }
}

interface Stat { pid: number; ppid: number; utime: number; stime: number; cutime: number; cstime: number }
function readStat(pid: number): Stat | null {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // f[0] is field 3 (state): ppid is field 4, utime 14, stime 15, cutime 16, cstime 17.
    return { pid, ppid: Number(f[1]), utime: Number(f[11]), stime: Number(f[12]), cutime: Number(f[13]), cstime: Number(f[14]) };
  } catch { return null; }
}

/** pid and every descendant (by walking /proc's parent links). */
export function treePids(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const st = readStat(Number(e));
    if (!st) continue;
    const list = children.get(st.ppid) ?? [];
    list.push(st.pid);
    children.set(st.ppid, list);
  }
  const out: number[] = [];
  const todo = [root];
  while (todo.length) {
    const pid = todo.pop()!;
    out.push(pid);
    for (const c of children.get(pid) ?? []) todo.push(c);
  }
  return out;
}

/** Sum of VmRSS over the process tree, in bytes. */
export function treeRss(root: number): number {
  let kb = 0;
  for (const pid of treePids(root)) {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'latin1'));
      if (m) kb += Number(m[1]);
    } catch { /* exited */ }
  }
  return kb * 1024;
}

const TICK = 100; // USER_HZ on Linux
/** CPU seconds (user + system, all threads) used so far by the process tree. */
export function treeCpuSeconds(root: number): number {
  const t = treeCpuSplit(root);
  return t.user + t.system;
}

/** The same, split: user time (JavaScript, OpenSSL) and system time (the kernel's socket work). */
export function treeCpuSplit(root: number): { user: number; system: number } {
  let user = 0, system = 0;
  for (const pid of treePids(root)) {
    const st = readStat(pid);
    if (st) {
      user += st.utime;
      system += st.stime;
    }
  }
  return { user: user / TICK, system: system / TICK };
}

/**
 * CPU seconds used by this harness and everything it started, including children that have
 * exited (their time moves into the parent's cutime/cstime when reaped, e.g. each wrk run).
 */
export function ownCpuSeconds(): number {
  let ticks = 0;
  for (const pid of treePids(process.pid)) {
    const st = readStat(pid);
    if (st) ticks += st.utime + st.stime + st.cutime + st.cstime;
  }
  return ticks / TICK;
}

interface CpuLine { busy: number; task: number; steal: number; total: number }
/** Per CPU from /proc/stat: busy (not idle/iowait), task time (user+nice+system), steal, total. */
export function cpuTimes(): Map<number, CpuLine> {
  const out = new Map<number, CpuLine>();
  for (const line of fs.readFileSync('/proc/stat', 'latin1').split('\n')) {
    const m = /^cpu(\d+) (.*)$/.exec(line);
    if (!m) continue;
    const v = m[2]!.trim().split(/\s+/).map(Number);
    // user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
    const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
    const idle = (v[3] ?? 0) + (v[4] ?? 0);
    out.set(Number(m[1]), { busy: total - idle, task: (v[0] ?? 0) + (v[1] ?? 0) + (v[2] ?? 0), steal: v[7] ?? 0, total });
  }
  return out;
}

export interface CpuUse {
  /** CPU seconds used by the proxy's process tree over the interval (null: no proxy). */
  proxySeconds: number | null;
  /** The same in cores (seconds per wall second). */
  proxyCores: number | null;
  /** The kernel's share of proxySeconds (system time: sockets, TCP); the rest is user time. */
  proxySystemSeconds: number | null;
  core0Busy: number | null;
  core1Busy: number | null;
  /** Cores' worth of task time used by processes this harness did not start (other users). */
  foreignCores: number;
  /** Share of the interval the hypervisor took away from the CPUs (both together). */
  steal: number;
}

/** Measures CPU use over an interval: the proxy tree, each CPU, and everybody else. */
export class CpuMeter {
  private readonly t0 = performance.now();
  private readonly pid: number | null;
  private readonly proc0: number;
  private readonly sys0: number;
  private readonly own0 = ownCpuSeconds();
  private readonly cpus0 = cpuTimes();
  constructor(pid: number | null) {
    this.pid = pid;
    const t = pid === null ? { user: 0, system: 0 } : treeCpuSplit(pid);
    this.proc0 = t.user + t.system;
    this.sys0 = t.system;
  }
  stop(): CpuUse {
    const secs = (performance.now() - this.t0) / 1000;
    const cpus1 = cpuTimes();
    const own = ownCpuSeconds() - this.own0;
    const busy = (n: number): number | null => {
      const a = this.cpus0.get(n), b = cpus1.get(n);
      if (!a || !b || b.total === a.total) return null;
      return round((b.busy - a.busy) / (b.total - a.total), 3);
    };
    let task = 0, steal = 0, total = 0;
    for (const [n, b] of cpus1) {
      const a = this.cpus0.get(n);
      if (!a) continue;
      task += b.task - a.task;
      steal += b.steal - a.steal;
      total += b.total - a.total;
    }
    const t = this.pid === null ? null : treeCpuSplit(this.pid);
    const proxySeconds = t === null ? null : t.user + t.system - this.proc0;
    return {
      proxySeconds: proxySeconds === null ? null : round(proxySeconds, 3),
      proxyCores: proxySeconds === null ? null : round(proxySeconds / secs, 3),
      proxySystemSeconds: t === null ? null : round(t.system - this.sys0, 3),
      core0Busy: busy(0),
      core1Busy: busy(1),
      foreignCores: round(Math.max(0, task / TICK - own) / secs, 3),
      steal: total ? round(steal / total, 3) : 0,
    };
  }
}

export function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** Polls until a TCP connect to host:port succeeds (or fails with `want: 'closed'`). */
export async function waitPort(host: string, port: number, timeoutMs: number, want: 'open' | 'closed' = 'open'): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const open = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, host);
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
      s.setTimeout(1000, () => { s.destroy(); resolve(false); });
    });
    if (open === (want === 'open')) return true;
    await sleep(50);
  }
  return false;
}

/** Runs a command to completion (bounded by timeoutMs), capturing its output. */
export function runCapture(cmd: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    let stdout = '', stderr = '';
    let child: ChildProcess;
    try {
      child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env });
    } catch (err) {
      resolve({ code: null, stdout: '', stderr: (err as Error).message });
      return;
    }
    child.stdout!.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.once('error', (err) => { clearTimeout(timer); resolve({ code: null, stdout, stderr: stderr + err.message }); });
    child.once('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}

/** First path in $PATH (plus the sbin folders) holding an executable `name`, or null. */
export function which(name: string): string | null {
  const dirs = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin', '/usr/local/sbin']);
  for (const d of dirs) {
    if (!d) continue;
    const p = `${d}/${name}`;
    try { fs.accessSync(p, fs.constants.X_OK); if (fs.statSync(p).isFile()) return p; } catch { /* next */ }
  }
  return null;
}
