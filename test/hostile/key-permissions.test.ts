// Issue 14, finding 11, against the compiled CLI: a private key file that other users can read
// gets a warning naming the file, its mode and the fix; one that its group or others can write
// is an error (the start is refused, a reload keeps the old store). Group-readable (0640, the
// ssl-cert group of Debian) is fine. Symlinks (certbot's live/, Kubernetes' ..data) are judged
// by their target. `postern check` shows the same.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { chmodSync, mkdtempSync, readFileSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { tlsTry } from '../helpers/clients.ts';
import { freePort } from '../helpers/ports.ts';
import { buildOnce, spawnDaemon, stopAll, runCli, goodClient } from './harness.ts';

let pki: TestPki;
let mail: CertFiles;

beforeAll(async () => {
  buildOnce();
  pki = await makePki();
  mail = await pki.issue('mail', { names: ['mail.example.org'] });
}, 120_000);

afterAll(stopAll);

/** A copy of the test key with exactly this mode (the umask does not apply to chmod). */
function keyWithMode(mode: number, dir = mkdtempSync(join(pki.dir, 'perm-'))): string {
  const key = join(dir, `key-${mode.toString(8)}.pem`);
  writeFileSync(key, mail.keyPem);
  chmodSync(key, mode);
  return key;
}

async function yamlWith(key: string): Promise<string> {
  const file = join(pki.dir, `perm-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, `certificates:
  - cert: ${mail.cert}
    key: ${key}
listeners:
  - name: smtps
    listen: "127.0.0.1:${await freePort()}"
    protocol: smtp
    role: submission
    tls: implicit
    hostname: mail.example.org
    backend: { address: "127.0.0.1:9", proxyProtocol: v2 }
`);
  return file;
}

const warnings = (out: string) => out.split('\n').filter((l) => l.startsWith('warning: '));

describe('private key file permissions', () => {
  it('a key readable by every user (0644): postern starts, with a warning naming the file, its mode and the fix; postern check prints it', async () => {
    const key = keyWithMode(0o644);
    const d = await spawnDaemon({ dir: pki.dir, certs: [{ cert: mail.cert, key }], listeners: [{ name: 'smtps', protocol: 'smtp' }], level: 'info' });
    const line = d.logs.find((l) => l.level === 'warn' && l.msg.includes(key));
    expect(line, JSON.stringify(d.logs)).toBeDefined();
    expect(line!.msg).toContain('0644');
    expect(line!.msg).toMatch(/chmod 600/);
    expect(line!.path).toBe('certificates[0].key');
    await goodClient(d, 'smtps', pki);

    const check = runCli(['check', '-c', d.file], pki.dir);
    expect(check.status, check.stdout + check.stderr).toBe(0);
    const w = warnings(check.stdout + check.stderr).filter((l) => l.includes(key));
    expect(w).toHaveLength(1);
    expect(w[0]).toMatch(/certificates\[0\]\.key: .*readable by every user.*0644.*chmod 600/);
  });

  for (const mode of [0o666, 0o620, 0o602]) {
    it(`a key writable by ${mode & 0o002 ? 'others' : 'its group'} (0${mode.toString(8)}): postern run refuses to start (exit 1) naming the file; postern check fails`, async () => {
      const key = keyWithMode(mode);
      const file = await yamlWith(key);
      const run = runCli(['run', '-c', file], pki.dir);
      expect(run.status, run.stdout + run.stderr).toBe(1);
      expect(run.stderr).toContain('nothing was started');
      const error = run.stderr.split('\n').find((l) => l.startsWith('error: ') && l.includes(key));
      expect(error, run.stderr).toMatch(new RegExp(`certificates\\[0\\]\\.key: .*writable by ${mode & 0o002 ? 'every user' : 'its group'}.*0${mode.toString(8)}.*chmod`));
      expect(run.stdout).not.toContain('"listening"');
      const check = runCli(['check', '-c', file], pki.dir);
      expect(check.status).toBe(1);
      expect(check.stdout + check.stderr).toContain(key);
    });
  }

  it('a symlinked key is judged by its target: a link to a 0666 file is refused, a link to a 0640 file is fine', async () => {
    const dir = mkdtempSync(join(pki.dir, 'link-'));
    const open = keyWithMode(0o666, dir);
    const link = join(dir, 'privkey.pem');
    symlinkSync(open, link);
    const run = runCli(['run', '-c', await yamlWith(link)], pki.dir);
    expect(run.status).toBe(1);
    expect(run.stderr).toMatch(new RegExp(`${link.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}.*writable by every user.*0666`));

    const closed = keyWithMode(0o640, dir);
    const link2 = join(dir, 'privkey2.pem');
    symlinkSync(closed, link2);
    const check = runCli(['check', '-c', await yamlWith(link2)], pki.dir);
    expect(check.status, check.stdout + check.stderr).toBe(0);
    expect(warnings(check.stdout + check.stderr).filter((l) => l.includes('privkey2'))).toEqual([]);
  });

  it('group-readable (0640) and owner-only (0600, 0400) keys: no permission warning', async () => {
    for (const mode of [0o640, 0o600, 0o400]) {
      const key = keyWithMode(mode);
      const check = runCli(['check', '-c', await yamlWith(key)], pki.dir);
      expect(check.status, check.stdout + check.stderr).toBe(0);
      expect(warnings(check.stdout + check.stderr).filter((l) => l.includes(key)), `mode 0${mode.toString(8)}`).toEqual([]);
    }
  });

  it('a renewal whose key is writable by others is refused on reload: the old certificate stays, the error names the file', async () => {
    const dir = mkdtempSync(join(pki.dir, 'renew-'));
    const key = join(dir, 'privkey.pem');
    writeFileSync(key, mail.keyPem, { mode: 0o600 });
    chmodSync(key, 0o600);
    const d = await spawnDaemon({ dir, certs: [{ cert: mail.cert, key }], listeners: [{ name: 'smtps', protocol: 'smtp' }], level: 'info' });
    // The same key, replaced by a file anyone may write.
    const tmp = join(dir, 'privkey.tmp');
    writeFileSync(tmp, readFileSync(key));
    chmodSync(tmp, 0o666);
    renameSync(tmp, key);
    const line = await d.waitLog((l) => l.reason === 'reload_failed' && l.trigger === 'watch' && l.msg.includes(key) && l.msg.includes('writable'), 15_000);
    expect(line.level).toBe('error');
    expect(await d.metric('postern_reloads_total', { trigger: 'watch', result: 'failed' })).toBe(1);
    const o = await tlsTry(d.port('smtps'), { servername: 'mail.example.org', ca: pki.ca.certPem });
    expect(o.socket?.getPeerCertificate().fingerprint256).toBe(new X509Certificate(mail.certPem).fingerprint256);
    o.socket?.destroy();
  }, 40_000);
});
