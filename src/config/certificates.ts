// The part of config validation that needs the certificates themselves: every pair loads and
// matches, and every listener hostname is covered by a loaded certificate.
import type { ConfigError, PosternConfig } from './types.ts';
import { buildCertStore, type CertStore } from '../tls/certstore.ts';

export interface Located {
  config: PosternConfig;
  position(path: string): { line: number; col: number };
}

export interface CertCheck {
  store: CertStore | null;
  errors: ConfigError[];
  warnings: ConfigError[];
}

export function checkCertificates(loaded: Located, now = new Date()): CertCheck {
  const { config } = loaded;
  const at = (path: string, message: string): ConfigError => ({ file: config.file, ...loaded.position(path), path, message });
  const built = buildCertStore(config.certificates, now);
  const errors: ConfigError[] = [];
  const warnings: ConfigError[] = [];
  for (const p of built.problems) (p.severity === 'error' ? errors : warnings).push(at(p.path, p.message));
  if (built.store) {
    const loadedNames = built.store.entries.flatMap((e) => e.names);
    config.listeners.forEach((l) => {
      if (!built.store!.lookup(l.hostname)) {
        errors.push(at(`${l.path}.hostname`, `no loaded certificate covers "${l.hostname}" (loaded names: ${loadedNames.join(', ') || 'none'})`));
      }
    });
  }
  const byLine = (a: ConfigError, b: ConfigError) => a.line - b.line || a.col - b.col;
  return { store: errors.length === 0 ? built.store : null, errors: errors.sort(byLine), warnings: warnings.sort(byLine) };
}
