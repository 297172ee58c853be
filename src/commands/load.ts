// Loads and fully validates a configuration file: schema, files, certificates, coverage.
// Either everything is right and a store is built, or every problem is listed.
import { loadConfigFile, formatConfigError } from '../config/load.ts';
import { checkCertificates, coverageOf, type CoverageNeed, type Uncovered } from '../config/certificates.ts';
import type { ConfigError, PosternConfig } from '../config/types.ts';
import type { CertStore } from '../tls/certstore.ts';

export type Validated =
  | {
      ok: true;
      config: PosternConfig;
      store: CertStore;
      warnings: ConfigError[];
      /** line/col of a YAML path in the file as it was read. */
      position(path: string): { line: number; col: number };
    }
  | { ok: false; errors: ConfigError[]; warnings: ConfigError[]; uncovered?: Uncovered[] };

/**
 * `need`: the hostnames the certificates must cover, by default every listener of the file; a
 * SIGHUP reload adds the listeners that keep running with their old settings.
 */
export function validateFile(file: string, need?: (config: PosternConfig) => CoverageNeed[], now = new Date()): Validated {
  const loaded = loadConfigFile(file);
  if (!loaded.ok) return { ok: false, errors: loaded.errors, warnings: [] };
  const certs = checkCertificates(loaded.loaded, now, (need ?? coverageOf)(loaded.loaded.config));
  const warnings = [...loaded.loaded.warnings, ...certs.warnings].sort((a, b) => a.line - b.line || a.col - b.col);
  if (certs.errors.length > 0 || !certs.store) return { ok: false, errors: certs.errors, warnings, uncovered: certs.uncovered };
  return { ok: true, config: loaded.loaded.config, store: certs.store, warnings, position: loaded.loaded.position };
}

export function printProblems(errors: ConfigError[], warnings: ConfigError[], out: NodeJS.WritableStream = process.stderr) {
  for (const e of errors) out.write(`error: ${formatConfigError(e)}\n`);
  for (const w of warnings) out.write(`warning: ${formatConfigError(w)}\n`);
}
