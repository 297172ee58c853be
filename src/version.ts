// The package's own version, read from the package.json next to src/ and dist/ (this module is
// src/version.ts when tests run it and dist/version.js when installed: both one folder below the
// package root). Read once; "0.0.0-unknown" if the file is not there (a copied dist/ alone), so
// that a metric or --version never takes the process down.
import { readFileSync } from 'node:fs';

let cached: string | null = null;

export function version(): string {
  if (cached !== null) return cached;
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    cached = typeof pkg.version === 'string' ? pkg.version : '0.0.0-unknown';
  } catch {
    cached = '0.0.0-unknown';
  }
  return cached;
}
