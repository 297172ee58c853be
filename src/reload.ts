// Reloads without dropping anything. Two triggers, two scopes:
//   - a certificate file or folder changes (certbot, Kubernetes): the certificates the running
//     configuration names are read again and checked against the listeners as they run.
//     postern.yaml is not read: an unrelated, half-finished edit must not hold back a renewal.
//   - SIGHUP: postern.yaml is read and validated whole (it is what a restart would run), and the
//     new certificates must also cover every listener that keeps its old settings (a changed
//     `listen`, `protocol` or `tls` needs a restart).
// Either way a complete new store is built and checked, then one reference is swapped. Anything
// wrong (a missing file in the middle of a certbot or Kubernetes swap, a key that does not match,
// a listener hostname no longer covered, a parse error): retry a few times, then keep the last
// good state, log the error with file and reason, and count it. Connections in flight are never
// touched.
import { watch, realpathSync, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';
import type { Daemon } from './daemon.ts';
import type { Logger } from './log.ts';
import type { ConfigError, PosternConfig } from './config/types.ts';
import { validateFile, type Validated } from './commands/load.ts';
import { formatConfigError } from './config/load.ts';
import { checkRunningCertificates, coverageOf, type CoverageNeed, type Uncovered } from './config/certificates.ts';
import type { CertStore } from './tls/certstore.ts';

type Position = (path: string) => { line: number; col: number };

export interface ReloaderOptions {
  file: string;
  daemon: Daemon;
  log: Logger;
  /** Quiet time after the last file event before a reload (certbot swaps one symlink at a time). */
  debounceMs?: number;
  /** Attempts before a failed reload is reported (the missing-file window of a swap). */
  attempts?: number;
  retryDelayMs?: number;
  /**
   * Where YAML paths of the running configuration are in the file as it was loaded (for the line
   * and column of errors found by a certificate-only reload). Without it they point at 1:1.
   */
  position?: Position;
  /** Injected for tests: the SIGHUP validation. */
  validate?: (file: string, need?: (config: PosternConfig) => CoverageNeed[]) => Validated;
}

/** The outcome of one attempt, whatever the trigger. */
type Checked =
  | { ok: true; store: CertStore; warnings: ConfigError[]; config: PosternConfig | null; position: Position | null }
  | { ok: false; errors: ConfigError[]; warnings: ConfigError[]; uncovered: Uncovered[] };

export class Reloader {
  private readonly opts: Required<Omit<ReloaderOptions, 'validate' | 'position'>> & { validate: NonNullable<ReloaderOptions['validate']> };
  private position: Position;
  private watchers: FSWatcher[] = [];
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<boolean> | null = null;
  private again: 'sighup' | 'watch' | null = null;

  constructor(opts: ReloaderOptions) {
    const { position, ...rest } = opts;
    this.opts = { debounceMs: 1000, attempts: 4, retryDelayMs: 500, validate: validateFile, ...rest };
    this.position = position ?? (() => ({ line: 1, col: 1 }));
  }

  /**
   * Watches the folders that hold every certificate and key, and the folders their symlinks
   * point into. Only events for those files count (a log file in the same folder must not cause
   * reloads), plus Kubernetes' `..data` swaps; a certbot `live/` folder counts whole.
   */
  watch(config: PosternConfig) {
    this.unwatch();
    const dirs = new Map<string, Set<string> | null>();
    const note = (dir: string, name: string | null) => {
      const cur = dirs.get(dir);
      if (cur === null) return;
      if (name === null) dirs.set(dir, null);
      else dirs.set(dir, (cur ?? new Set<string>()).add(name));
    };
    const add = (path: string) => {
      note(dirname(path), basename(path));
      try {
        const real = realpathSync(path);
        note(dirname(real), basename(real));
      } catch {
        // A file missing now is reported by the reload itself.
      }
    };
    for (const c of this.opts.daemon.certificates.entries) {
      add(c.certFile);
      add(c.keyFile);
    }
    for (const spec of config.certificates) {
      if ('dir' in spec) note(spec.dir, null);
      else if ('pem' in spec) add(spec.pem);
      else {
        add(spec.cert);
        add(spec.key);
      }
    }
    for (const [dir, names] of dirs) {
      try {
        const w = watch(dir, { persistent: false }, (_event, file) => {
          const name = file === null ? null : String(file);
          if (names === null || name === null || names.has(name) || name.startsWith('..')) this.schedule();
        });
        w.on('error', () => w.close());
        this.watchers.push(w);
      } catch (err) {
        this.opts.log.warn({ dir, error: (err as NodeJS.ErrnoException).code }, 'cannot watch certificate folder; SIGHUP still reloads');
      }
    }
  }

  unwatch() {
    for (const w of this.watchers) w.close();
    this.watchers = [];
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** A file event: wait until the folder has been quiet for debounceMs, then reload once. */
  private schedule() {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.reload('watch');
    }, this.opts.debounceMs);
    this.timer.unref();
  }

  /** Resolves true when the new state is in place, false when the last good one was kept. */
  async reload(trigger: 'sighup' | 'watch'): Promise<boolean> {
    if (this.running) {
      // One reload at a time; a trigger during one runs once more afterwards.
      this.again = trigger;
      return this.running;
    }
    this.running = this.attempt(trigger);
    try {
      return await this.running;
    } finally {
      this.running = null;
      const next = this.again;
      this.again = null;
      if (next) void this.reload(next);
    }
  }

  private async attempt(trigger: 'sighup' | 'watch'): Promise<boolean> {
    try {
      return await this.tryReload(trigger);
    } catch (err) {
      // A reload runs from a signal or a file event, with nobody to hand an error to: anything
      // unexpected in it must cost the reload, never the process and its sessions.
      const { log, daemon } = this.opts;
      log.error({ reason: 'reload_failed', trigger, error: (err as Error).stack ?? String(err) }, 'reload failed unexpectedly; still serving the last good configuration and certificates');
      daemon.metrics.reloads.inc({ trigger, result: 'failed' });
      return false;
    }
  }

  /** SIGHUP: the whole file. A file event: the running configuration's certificates only. */
  private check(trigger: 'sighup' | 'watch'): Checked {
    const { daemon, file } = this.opts;
    if (trigger === 'sighup') {
      const v = this.opts.validate(file, (config) => daemon.coverageAfter(config));
      return v.ok ? { ok: true, store: v.store, warnings: v.warnings, config: v.config, position: v.position } : { ok: false, errors: v.errors, warnings: v.warnings, uncovered: v.uncovered ?? [] };
    }
    const running = daemon.config;
    const c = checkRunningCertificates({ config: running, position: this.position }, coverageOf(running));
    return c.store ? { ok: true, store: c.store, warnings: c.warnings, config: null, position: null } : { ok: false, errors: c.errors, warnings: c.warnings, uncovered: c.uncovered };
  }

  private async tryReload(trigger: 'sighup' | 'watch'): Promise<boolean> {
    const { daemon, log } = this.opts;
    let v = this.check(trigger);
    for (let i = 1; !v.ok && i < this.opts.attempts; i++) {
      await new Promise((r) => setTimeout(r, this.opts.retryDelayMs));
      v = this.check(trigger);
    }
    if (!v.ok) {
      for (const e of v.errors) {
        // A listener left without a certificate is named in the fields, so that an alert can
        // say which one (a STARTTLS listener would otherwise stop offering TLS).
        const u = v.uncovered.find((x) => x.error === e);
        const who = u ? { listener: u.listener, hostname: u.hostname } : {};
        log.error({ reason: 'reload_failed', file: e.file, path: e.path, trigger, ...who }, formatConfigError(e));
      }
      log.error({ reason: 'reload_failed', trigger, errors: v.errors.length }, 'reload failed; still serving the last good configuration and certificates');
      daemon.metrics.reloads.inc({ trigger, result: 'failed' });
      return false;
    }
    for (const w of v.warnings) log.warn({ file: w.file, path: w.path }, formatConfigError(w));
    // A file event renews certificates; listener settings change on SIGHUP only, so that a
    // half-edited YAML is never picked up by a certificate renewal.
    if (v.config) {
      const restart = daemon.apply(v.config, v.store);
      for (const r of restart) log.warn({ reason: 'needs_restart' }, `${r}: needs a restart; until then the old settings stay`);
      if (v.position) this.position = v.position;
    } else daemon.setStore(v.store);
    logCertificates(log, daemon);
    daemon.metrics.reloads.inc({ trigger, result: 'ok' });
    log.info({ trigger, certificates: v.store.entries.length }, 'reloaded');
    this.watch(daemon.config);
    return true;
  }
}

/** One line per certificate at start and on every reload: names, key type, expiry. */
export function logCertificates(log: Logger, daemon: Daemon) {
  for (const e of daemon.certificates.entries) {
    const daysLeft = Math.floor((e.notAfter.getTime() - Date.now()) / 86_400_000);
    const line = { names: e.names, keyType: e.keyType, notAfter: e.notAfter.toISOString(), daysLeft, file: e.certFile };
    if (daysLeft < 14) log.warn(line, daysLeft < 0 ? 'certificate EXPIRED' : 'certificate expires soon');
    else log.info(line, 'certificate loaded');
  }
}

