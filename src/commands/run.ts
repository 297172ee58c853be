// `postern run`: validate everything, bind every listener, serve until SIGTERM/SIGINT.
import { validateFile, printProblems } from './load.ts';
import { createLogger } from '../log.ts';
import { Daemon } from '../daemon.ts';
import { preludeFor } from '../starttls/preludes.ts';
import { formatConfigError } from '../config/load.ts';
import { Reloader, logCertificates } from '../reload.ts';

export async function runCommand(file: string): Promise<number> {
  const v = validateFile(file);
  if (!v.ok) {
    printProblems(v.errors, v.warnings);
    process.stderr.write(`postern: ${v.errors.length} error(s) in ${file}; nothing was started\n`);
    return 1;
  }
  const log = createLogger(v.config.log.level);
  for (const w of v.warnings) log.warn({ file: w.file, path: w.path }, formatConfigError(w));
  let daemon: Daemon;
  try {
    daemon = await Daemon.start({ config: v.config, store: v.store, log, preludeFor });
    logCertificates(log, daemon);
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
    process.stderr.write(`postern: cannot listen on ${e.address ?? '?'}:${e.port ?? '?'}: ${e.code ?? e.message}\n`);
    return 1;
  }

  // SIGHUP, or a change in a certificate folder, reloads: build everything new, then swap.
  const reloader = new Reloader({ file, daemon, log });
  reloader.watch(v.config);
  process.on('SIGHUP', () => void reloader.reload('sighup'));

  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        log.warn({ signal, open: daemon.openSessions() }, 'second signal: exiting now');
        log.flush();
        process.exit(0);
      }
      stopping = true;
      const ms = v.config.shutdown.drainTimeoutMs;
      log.info({ signal, open: daemon.openSessions(), drainTimeoutMs: ms }, 'stopping: no new connections, draining');
      daemon.drain(ms).then((r) => {
        log.info(r, 'drained');
        resolve();
      }, resolve);
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
  reloader.unwatch();
  log.info('stopped');
  log.flush();
  return 0;
}

