// The part of config validation that needs the certificates themselves: every pair loads and
// matches, and every listener hostname is covered by a loaded certificate.
import type { ConfigError, PosternConfig } from './types.ts';
import { buildCertStore, type CertStore } from '../tls/certstore.ts';
import { certificateFileProblems } from './load.ts';

export interface Located {
  config: PosternConfig;
  position(path: string): { line: number; col: number };
}

/** A hostname that must be covered: a listener's, as it will run. */
export interface CoverageNeed {
  listener: string;
  hostname: string;
  /** YAML path the problem points at, e.g. "listeners[1].hostname". */
  path: string;
  /**
   * Why this hostname still counts although the file may say otherwise (a listener that keeps
   * its old settings until a restart); null for a listener as written.
   */
  keptBecause: string | null;
}

/** A listener whose hostname no certificate of the checked store covers. */
export interface Uncovered {
  listener: string;
  hostname: string;
  error: ConfigError;
}

export interface CertCheck {
  store: CertStore | null;
  errors: ConfigError[];
  warnings: ConfigError[];
  /** The coverage errors again, with the listener and hostname as values (for log fields). */
  uncovered: Uncovered[];
}

/**
 * Every listener of the file, with its hostname as written, and the MTA-STS policy hosts
 * (mta-sts.<domain>): senders verify that certificate before they read the policy.
 */
export function coverageOf(config: PosternConfig): CoverageNeed[] {
  const listeners = config.listeners.map((l) => ({ listener: l.name, hostname: l.hostname, path: `${l.path}.hostname`, keptBecause: null }));
  const policyHosts = (config.mtaSts?.domains ?? []).map((d, i) => ({ listener: 'mta-sts', hostname: `mta-sts.${d}`, path: `mtaSts.domains[${i}]`, keptBecause: null }));
  return [...listeners, ...policyHosts];
}

/**
 * Builds the store of `loaded.config.certificates` and checks it covers `need` (by default every
 * listener of the file; on a reload, the listeners that will actually run after it).
 */
export function checkCertificates(loaded: Located, now = new Date(), need: CoverageNeed[] = coverageOf(loaded.config)): CertCheck {
  const { config } = loaded;
  const at = (path: string, message: string): ConfigError => ({ file: config.file, ...loaded.position(path), path, message });
  const built = buildCertStore(config.certificates, now);
  const errors: ConfigError[] = [];
  const warnings: ConfigError[] = [];
  const uncovered: Uncovered[] = [];
  for (const p of built.problems) (p.severity === 'error' ? errors : warnings).push(at(p.path, p.message));
  if (built.store) {
    const loadedNames = built.store.entries.flatMap((e) => e.names);
    const names = `(loaded names: ${loadedNames.join(', ') || 'none'})`;
    const acme = new Set(config.acme?.names ?? []);
    for (const n of need) {
      if (built.store.lookup(n.hostname)) continue;
      if (acme.has(n.hostname)) {
        // Not an error: the certificate is ordered at start. Until it is issued the listener
        // cannot offer TLS (a STARTTLS listener does not announce it), which the daemon logs.
        warnings.push(at(n.path, `"${n.hostname}" has no certificate yet: postern obtains it from ${config.acme!.directory} (acme); until then listener "${n.listener}" cannot offer TLS`));
        continue;
      }
      const message =
        n.keptBecause === null
          ? `no loaded certificate covers "${n.hostname}" ${names}`
          : `listener "${n.listener}" keeps running with its old settings until a restart (${n.keptBecause}), and no loaded certificate covers its hostname "${n.hostname}" ${names}`;
      const error = at(n.path, message);
      errors.push(error);
      uncovered.push({ listener: n.listener, hostname: n.hostname, error });
    }
  }
  const byLine = (a: ConfigError, b: ConfigError) => a.line - b.line || a.col - b.col;
  return { store: errors.length === 0 ? built.store : null, errors: errors.sort(byLine), warnings: warnings.sort(byLine), uncovered };
}

/**
 * A certificate-only reload (a file event): the certificates the running configuration names,
 * read again, checked against the listeners as they run. postern.yaml is not read: a half-edited
 * file must not hold back a renewal (it is read on SIGHUP). The file checks are the same as at
 * load, so a missing file gets the same message either way.
 */
export function checkRunningCertificates(running: Located, need: CoverageNeed[], now = new Date()): CertCheck {
  const { config } = running;
  const missing = certificateFileProblems(config.certificates).map((p) => ({ file: config.file, ...running.position(p.path), path: p.path, message: p.message }));
  if (missing.length > 0) return { store: null, errors: missing, warnings: [], uncovered: [] };
  return checkCertificates(running, now, need);
}
