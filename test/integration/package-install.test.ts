// The npm package as someone installs it: `npm pack` (prepack builds dist/ and
// postern.schema.json) in a copy of the repository, then `npm install -g --prefix <empty> <tgz>`
// from the npm registry, as README.md's Install block does. A vitest test rather than a CI
// script step so that `npm test` catches a broken package locally too, with the same helpers
// (generated certificates) as the other tests; it needs the npm registry for the runtime
// dependencies, which CI has.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { z } from 'zod';
import { parse } from 'yaml';
import { makePki, type TestPki } from '../helpers/certs.ts';
import { freePort } from '../helpers/ports.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string; dependencies: Record<string, string> };

let work: string;
let prefix: string;
let tarballFiles: string[];
let installed: string;
let pki: TestPki;
const postern = (args: string[], opts: { cwd?: string } = {}) =>
  spawnSync(join(prefix, 'bin', 'postern'), args, { encoding: 'utf8', cwd: opts.cwd ?? work, timeout: 30_000 });

function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)]));
}

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'postern-pack-'));
  const src = join(work, 'src-copy');
  mkdirSync(src);
  // What a checkout has; dist/ and postern.schema.json are built by prepack, not copied.
  for (const f of ['package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json', 'config.example.yaml', 'README.md', 'LICENSE', 'bin', 'src']) {
    cpSync(join(ROOT, f), join(src, f), { recursive: true });
  }
  symlinkSync(join(ROOT, 'node_modules'), join(src, 'node_modules'));
  const packed = JSON.parse(execFileSync('npm', ['pack', '--json', '--pack-destination', work], { cwd: src, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })) as Array<{ filename: string; files: Array<{ path: string }> }>;
  tarballFiles = packed[0]!.files.map((f) => f.path).sort();
  prefix = join(work, 'prefix');
  execFileSync('npm', ['install', '-g', '--prefix', prefix, '--no-audit', '--no-fund', join(work, packed[0]!.filename)], { cwd: work, stdio: ['ignore', 'pipe', 'pipe'], timeout: 150_000 });
  installed = join(prefix, 'lib', 'node_modules', 'postern');
  pki = await makePki();
  await pki.issue('imap', { names: ['imap.example.org'] });
}, 180_000);

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
  if (pki) rmSync(pki.dir, { recursive: true, force: true });
});

describe('the npm package', () => {
  it('holds exactly what runs: bin/, the compiled dist/*.js, the example config, the schema, README, LICENSE', () => {
    const compiled = walk(join(ROOT, 'src'))
      .filter((f) => f.endsWith('.ts'))
      .map((f) => `dist/${relative(join(ROOT, 'src'), f).replace(/\.ts$/, '.js')}`);
    const expected = ['package.json', 'README.md', 'LICENSE', 'config.example.yaml', 'postern.schema.json', 'bin/postern.js', 'bin/node-version.js', ...compiled].sort();
    expect(tarballFiles).toEqual(expected);
  });

  it('installs with its runtime dependencies only (no compiler, no test tools); the X.509 libraries only as acme-client needs them', () => {
    const deps = readdirSync(join(installed, 'node_modules'));
    for (const d of Object.keys(pkg.dependencies)) expect(existsSync(join(installed, 'node_modules', d)), d).toBe(true);
    for (const d of ['typescript', 'vitest', 'fast-check', '@types']) expect(deps).not.toContain(d);
    // @peculiar/x509 (with reflect-metadata, a global polyfill) is acme-client's, not postern's own.
    for (const d of ['@peculiar/x509', 'reflect-metadata', 'tsyringe', 'asn1js']) expect(Object.keys(pkg.dependencies)).not.toContain(d);
    const acme = JSON.parse(readFileSync(join(installed, 'node_modules', 'acme-client', 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    expect(Object.keys(acme.dependencies)).toContain('@peculiar/x509');
  });

  it('a daemon without acme never loads acme-client (no global Reflect polyfill); the same probe sees it once acme-client is imported', async () => {
    // An --import module that reports at exit whether reflect-metadata's global is there.
    const probe = join(work, 'probe.mjs');
    const out = join(work, 'probe.out');
    writeFileSync(probe, `import { writeFileSync } from 'node:fs';\nprocess.on('exit', () => writeFileSync(${JSON.stringify(out)}, typeof Reflect.getMetadata));\n`);
    const cfg = join(pki.dir, 'noacme.yaml');
    writeFileSync(cfg, `log: { level: warn }\ncertificates:\n  - { cert: imap.pem, key: imap.key }\nlisteners:\n  - { name: imaps, listen: "127.0.0.1:${await freePort()}", protocol: imap, tls: implicit, hostname: imap.example.org, backend: { address: "127.0.0.1:10143", proxyProtocol: v2 } }\nbackendChecks: { interval: off }\n`);
    const child = spawn(join(prefix, 'bin', 'postern'), ['run', '-c', cfg], { cwd: pki.dir, env: { ...process.env, NODE_OPTIONS: `--import=${probe}` }, stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    let logged = '';
    child.stdout!.on('data', (d: Buffer) => (logged += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (logged += d.toString()));
    // Serving (bound, running) for a moment, then stopped: exit 0, so it was the running daemon.
    await new Promise((r) => setTimeout(r, 1500));
    expect(child.exitCode, logged).toBeNull();
    child.kill('SIGTERM');
    expect(await exited, logged).toBe(0);
    expect(readFileSync(out, 'utf8')).toBe('undefined');
    // The probe is a real check: importing acme-client from the installed tree defines it.
    const loaded = spawnSync(process.execPath, ['--import', probe, '-e', `await import(${JSON.stringify(join(installed, 'node_modules', 'acme-client', 'src', 'index.js'))})`, '--input-type=module'], { encoding: 'utf8', timeout: 30_000 });
    expect(loaded.status, loaded.stderr).toBe(0);
    expect(readFileSync(out, 'utf8')).toBe('function');
  });

  it('postern --version prints package.json version', () => {
    const r = postern(['--version']);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe(pkg.version);
  });

  it("gives postern's version, not the other package's, when run from another package's npm script", () => {
    const other = join(work, 'other');
    mkdirSync(other);
    writeFileSync(join(other, 'package.json'), JSON.stringify({ name: 'other', version: '9.9.9', private: true, scripts: { v: `${join(prefix, 'bin', 'postern')} --version` } }));
    const out = execFileSync('npm', ['run', '--silent', 'v'], { cwd: other, encoding: 'utf8' });
    expect(out.trim()).toBe(pkg.version);
  });

  it('postern check passes a config with generated certificates', () => {
    const cfg = join(pki.dir, 'postern.yaml');
    writeFileSync(
      cfg,
      `certificates:\n  - { cert: imap.pem, key: imap.key }\nlisteners:\n  - { name: imaps, listen: "127.0.0.1:10993", protocol: imap, tls: implicit, hostname: imap.example.org, backend: { address: "127.0.0.1:10143", proxyProtocol: v2 } }\n`,
    );
    const r = postern(['check', '-c', cfg], { cwd: pki.dir });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('listener imaps: 127.0.0.1:10993 imap/implicit');
  });

  it('ships postern.schema.json equal to `postern schema`, and the committed copy is current', () => {
    const printed = postern(['schema']).stdout;
    expect(readFileSync(join(installed, 'postern.schema.json'), 'utf8')).toBe(printed);
    expect(readFileSync(join(ROOT, 'postern.schema.json'), 'utf8'), 'postern.schema.json is stale: npm run build, then commit it').toBe(printed);
  });

  it('config.example.yaml names the schema beside it, and validates against the printed JSON Schema', () => {
    const example = readFileSync(join(installed, 'config.example.yaml'), 'utf8');
    expect(example.split('\n')[0]).toBe('# yaml-language-server: $schema=./postern.schema.json');
    // zod reads the JSON Schema on its own (z.fromJSONSchema), independently of the zod schema it was printed from.
    const schema = JSON.parse(postern(['schema']).stdout) as Parameters<typeof z.fromJSONSchema>[0];
    const check = z.fromJSONSchema(schema);
    const doc = parse(example) as { listeners: Array<Record<string, unknown>> };
    const ok = check.safeParse(doc);
    expect(ok.error?.issues ?? []).toEqual([]);
    // ... and is a real check: an unknown key, a bad enum value and a duration without a unit fail.
    for (const [key, value] of [['bogus', 1], ['sni', 'lenient'], ['timeouts', { idle: '10 minutes' }]] as const) {
      const bad = structuredClone(doc);
      bad.listeners[0]![key] = value;
      expect(check.safeParse(bad).success, `listeners[0].${key}: ${JSON.stringify(value)}`).toBe(false);
    }
  });

  it('the schema has every listener key, each with a description (for the editor)', () => {
    const schema = JSON.parse(postern(['schema']).stdout) as { properties: { listeners: { items: { properties: Record<string, { description?: string }> } } } };
    const listener = schema.properties.listeners.items.properties;
    expect(Object.keys(listener)).toEqual(expect.arrayContaining(['name', 'listen', 'protocol', 'role', 'tls', 'hostname', 'sni', 'serverNames', 'alpn', 'minVersion', 'backend', 'routes', 'acceptProxyProtocol', 'limits', 'timeouts', 'greeting', 'requireTls', 'capabilities']));
    const undescribed = Object.entries(listener).filter(([, v]) => !v.description).map(([k]) => k);
    expect(undescribed).toEqual([]);
  });
});
