// bin/postern.js refuses a Node.js older than package.json's engines.node, with a message, before
// it loads anything that an old Node cannot parse (process.execve needs 22.15).
import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
// @ts-expect-error plain JavaScript without types (it must stay parseable by old Node releases)
import { parseVersion, satisfies, tooOld } from '../../bin/node-version.js';

const ROOT = join(import.meta.dirname, '..', '..');
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { engines: { node: string } };

describe('the Node.js version check', () => {
  it('reads versions and ranges', () => {
    expect(parseVersion('v22.15.0')).toEqual([22, 15, 0]);
    expect(parseVersion('>=22.15')).toEqual([22, 15, 0]);
    expect(parseVersion('>= 24')).toEqual([24, 0, 0]);
    expect(parseVersion('^22.15')).toBeNull();
    expect(parseVersion('22.x')).toBeNull();
  });

  it('compares major, minor and patch as numbers', () => {
    expect(satisfies('v22.15.0', '>=22.15')).toBe(true);
    expect(satisfies('v22.14.9', '>=22.15')).toBe(false);
    expect(satisfies('v22.12.0', '>=22.15')).toBe(false);
    expect(satisfies('v23.0.0', '>=22.15')).toBe(true);
    expect(satisfies('v24.1.0', '>=22.15')).toBe(true);
    expect(satisfies('v20.20.2', '>=22.15')).toBe(false);
    expect(satisfies('v22.100.0', '>=22.15')).toBe(true);
    expect(satisfies('v22.15.1', '>=22.15.2')).toBe(false);
    expect(() => satisfies('v22.15.0', '^22')).toThrow(/cannot compare/);
  });

  it('package.json engines.node is one ">=" minimum that covers process.execve (22.15)', () => {
    expect(parseVersion(pkg.engines.node)).not.toBeNull();
    expect(satisfies('v22.15.0', pkg.engines.node)).toBe(true);
    expect(satisfies('v22.14.0', pkg.engines.node)).toBe(false);
    expect(satisfies(process.version, pkg.engines.node)).toBe(true);
  });

  it('the message names both versions', () => {
    expect(tooOld('v24.0.0', '>=22.15')).toBeNull();
    const m = tooOld('v22.12.0', '>=22.15') as string;
    expect(m).toContain('postern needs Node.js 22.15.0 or newer');
    expect(m).toContain('this is Node.js v22.12.0');
  });

  // The machine's Debian node (CI installs Node 24 beside it when it is older, .ci/run).
  const old = spawnSync('/usr/bin/node', ['--version'], { encoding: 'utf8' });
  const oldVersion = old.status === 0 ? old.stdout.trim() : null;
  const isOld = oldVersion !== null && !satisfies(oldVersion, pkg.engines.node);
  it.runIf(isOld)(`bin/postern.js on an old Node (/usr/bin/node ${oldVersion ?? 'absent'}) prints the message, not a syntax error`, () => {
    const r = spawnSync('/usr/bin/node', [join(ROOT, 'bin', 'postern.js'), '--version'], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`postern needs Node.js ${parseVersion(pkg.engines.node)!.join('.')} or newer`);
    expect(r.stderr).toContain(`this is Node.js ${oldVersion}`);
    expect(r.stderr).not.toMatch(/SyntaxError|ERR_/);
  });
});
