// Compile src/ to dist/ when dist/ is missing or older than src/. The hostile tests, the load test
// and the soak all run the compiled daemon (bin/postern.js -> dist/); several test files, and
// other helpers' test runs, share one dist/, so building only when needed keeps them from racing.
import { execFileSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const ROOT = join(import.meta.dirname, '..', '..');

function newestMtime(dir: string): number {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    newest = Math.max(newest, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}

/** `npm run build` when dist/ is older than src/; returns whether it built. */
export function buildOnce(opts: { verbose?: boolean } = {}): boolean {
  let built = 0;
  try {
    built = statSync(join(ROOT, 'dist', 'cli.js')).mtimeMs;
  } catch {
    built = 0;
  }
  if (built >= newestMtime(join(ROOT, 'src'))) return false;
  execFileSync('npm', ['run', 'build', '--silent'], { cwd: ROOT, stdio: opts.verbose ? 'inherit' : 'pipe' });
  return true;
}
