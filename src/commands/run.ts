// `postern run`: validate everything, bind every listener, serve until SIGTERM/SIGINT.
import { validateFile, printProblems } from './load.ts';
import { createLogger } from '../log.ts';
import { Daemon } from '../daemon.ts';
import { preludeFor } from '../starttls/preludes.ts';
import { formatConfigError } from '../config/load.ts';
import type { CertStore } from '../tls/certstore.ts';
import type { Logger } from '../log.ts';

export async function runCommand(file: string): Promise<number> {
  const v = validateFile(file);
  if (!v.ok) {
    printProblems(v.errors, v.warnings);
    process.stderr.write(`postern: ${v.errors.length} error(s) in ${file}; nothing was started\n`);
    return 1;
  }
  const log = createLogger(v.config.log.level);
  for (const w of v.warnings) log.warn({ file: w.file, path: w.path }, formatConfigError(w));
  logCertificates(log, v.store);
  let daemon: Daemon;
  try {
    daemon = await Daemon.start({ config: v.config, store: v.store, log, preludeFor });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
    process.stderr.write(`postern: cannot listen on ${e.address ?? '?'}:${e.port ?? '?'}: ${e.code ?? e.message}\n`);
    return 1;
  }

  // SIGHUP rebuilds the certificate store from the same file and swaps it whole; a failed
  // rebuild keeps the last good store (design.md "Certificates: build, then swap").
  // SIGHUP rebuilds the certificate store from the same file and swaps it whole; a failed
  // rebuild keeps the last good store (design.md "Certificates: build, then swap").
  // Listener settings other than certificates need a restart for now.
  process.on('SIGHUP', () => {
    const r = validateFile(file);
    if (!r.ok) {
      for (const e of r.errors) log.error({ file: e.file, path: e.path }, formatConfigError(e));
      log.error({ reason: 'reload_failed' }, 'reload failed; keeping the running certificates');
      return;
    }
    daemon.setStore(r.store);
    logCertificates(log, r.store);
    log.info('certificates reloaded');
  });

  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) process.exit(0);
      stopping = true;
      log.info({ signal }, 'stopping');
      daemon.stop().then(resolve, resolve);
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
  log.info('stopped');
  log.flush();
  return 0;
}

function logCertificates(log: Logger, store: CertStore) {
  for (const e of store.entries) {
    const daysLeft = Math.floor((e.notAfter.getTime() - Date.now()) / 86_400_000);
    log.info({ names: e.names, keyType: e.keyType, notAfter: e.notAfter.toISOString(), daysLeft, file: e.certFile }, 'certificate loaded');
  }
}
