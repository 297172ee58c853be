import { describe, it, expect } from 'vitest';
import { chmodSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildCertStore, keyModeProblem } from '../../src/tls/certstore.ts';
import { makePki } from '../helpers/certs.ts';

const DAY = 86_400_000;

describe('certificate store', () => {
  it('a key that does not belong to the certificate is an error naming the key file', async () => {
    const pki = await makePki();
    const a = await pki.issue('a', { names: ['a.example.org'] });
    const b = await pki.issue('b', { names: ['b.example.org'] });
    const r = buildCertStore([{ cert: a.cert, key: b.key, path: 'certificates[0]' }]);
    expect(r.store).toBeNull();
    expect(r.problems).toEqual([expect.objectContaining({ severity: 'error', path: 'certificates[0].key', message: expect.stringContaining(`${b.key} is not the private key of ${a.cert}`) })]);
  });
  it('a missing file and PEM garbage are errors naming the file', async () => {
    const pki = await makePki();
    const a = await pki.issue('a', { names: ['a.example.org'] });
    const junk = join(pki.dir, 'junk.pem');
    writeFileSync(junk, 'not a certificate');
    const r = buildCertStore([
      { cert: join(pki.dir, 'missing.pem'), key: a.key, path: 'certificates[0]' },
      { cert: junk, key: a.key, path: 'certificates[1]' },
    ]);
    expect(r.store).toBeNull();
    expect(r.problems.map((p) => p.message)).toEqual([`cannot read certificate file ${join(pki.dir, 'missing.pem')}: ENOENT`, `${junk} holds no PEM certificate`]);
  });
  it('expired, expiring and chainless certificates load with warnings', async () => {
    const pki = await makePki();
    const old = await pki.issue('old', { names: ['old.example.org'], notBefore: new Date(Date.now() - 100 * DAY), notAfter: new Date(Date.now() - DAY) });
    const soon = await pki.issue('soon', { names: ['soon.example.org'], notAfter: new Date(Date.now() + 5 * DAY) });
    const bare = await pki.issue('bare', { names: ['bare.example.org'], withChain: false });
    const r = buildCertStore([
      { ...old, path: 'certificates[0]' },
      { ...soon, path: 'certificates[1]' },
      { ...bare, path: 'certificates[2]' },
    ]);
    expect(r.store).not.toBeNull();
    const msgs = r.problems.map((p) => `${p.severity} ${p.path} ${p.message}`);
    expect(msgs.some((m) => m.startsWith('warning certificates[0].cert') && m.includes('EXPIRED'))).toBe(true);
    expect(msgs.some((m) => m.startsWith('warning certificates[1].cert') && m.includes('expires in less than 14 days'))).toBe(true);
    expect(msgs.some((m) => m.startsWith('warning certificates[2].cert') && m.includes('no intermediate certificates'))).toBe(true);
  });
  it('a partial wildcard is refused at load with the file and the name', async () => {
    const pki = await makePki();
    const p = await pki.issue('p', { names: ['f*.example.org'] });
    const r = buildCertStore([{ ...p, path: 'certificates[0]' }]);
    expect(r.store).toBeNull();
    expect(r.problems[0]!.message).toBe(`${p.cert}: "f*.example.org": partial or nested wildcards are not supported (RFC 6125 section 7.2)`);
  });
  it('a wildcard matches one label only, never the bare domain or two labels', async () => {
    const pki = await makePki();
    const w = await pki.issue('w', { names: ['*.example.org'] });
    const store = buildCertStore([{ ...w, path: 'certificates[0]' }]).store!;
    expect(store.lookup('a.example.org')?.match).toBe('wildcard');
    expect(store.lookup('example.org')).toBeNull();
    expect(store.lookup('a.b.example.org')).toBeNull();
  });
  it('describes key type and names', async () => {
    const pki = await makePki();
    const e = await pki.issue('e', { names: ['e.example.org', 'E2.example.org'] });
    const r = await pki.issue('r', { names: ['r.example.org'], kind: 'rsa' });
    const store = buildCertStore([{ ...e, path: 'certificates[0]' }, { ...r, path: 'certificates[1]' }]).store!;
    expect(store.entries.map((x) => [x.keyType, x.names])).toEqual([['ECDSA P-256', ['e.example.org', 'e2.example.org']], ['RSA 2048', ['r.example.org']]]);
  });
});

describe('certificate store: several key types for one name', () => {
  it('an RSA and an ECDSA certificate for the same name are served together, one per algorithm', async () => {
    const pki = await makePki();
    const ec = await pki.issue('ec', { names: ['mail.example.org', 'imap.example.org'] });
    const rsa = await pki.issue('rsa', { names: ['mail.example.org'], kind: 'rsa' });
    const ec2 = await pki.issue('ec2', { names: ['mail.example.org'] });
    const store = buildCertStore([{ ...ec, path: 'certificates[0]' }, { ...rsa, path: 'certificates[1]' }, { ...ec2, path: 'certificates[2]' }]).store!;
    expect(store.lookup('mail.example.org')!.unit.entries.map((e) => [e.certFile, e.keyType])).toEqual([[ec.cert, 'ECDSA P-256'], [rsa.cert, 'RSA 2048']]);
    expect(store.lookup('imap.example.org')!.unit.entries.map((e) => e.certFile)).toEqual([ec.cert]);
  });
  it('a certificate that is not yet valid is an error', async () => {
    const pki = await makePki();
    const f = await pki.issue('future', { names: ['f.example.org'], notBefore: new Date(Date.now() + 5 * DAY), notAfter: new Date(Date.now() + 50 * DAY) });
    const r = buildCertStore([{ ...f, path: 'certificates[0]' }]);
    expect(r.store).toBeNull();
    expect(r.problems[0]).toMatchObject({ severity: 'error', path: 'certificates[0].cert', message: expect.stringContaining('is not valid before') });
  });
});

describe('certificate sources', () => {
  it('a certbot live/ folder with symlinks into archive/ loads every certificate folder', async () => {
    const { mkdirSync, symlinkSync, copyFileSync } = await import('node:fs');
    const pki = await makePki();
    const root = join(pki.dir, 'letsencrypt');
    for (const name of ['mail.example.org', 'www.example.org']) {
      const c = await pki.issue(name, { names: [name] });
      mkdirSync(join(root, 'archive', name), { recursive: true });
      mkdirSync(join(root, 'live', name), { recursive: true });
      copyFileSync(c.cert, join(root, 'archive', name, 'fullchain1.pem'));
      copyFileSync(c.key, join(root, 'archive', name, 'privkey1.pem'));
      symlinkSync(`../../archive/${name}/fullchain1.pem`, join(root, 'live', name, 'fullchain.pem'));
      symlinkSync(`../../archive/${name}/privkey1.pem`, join(root, 'live', name, 'privkey.pem'));
    }
    writeFileSync(join(root, 'live', 'README'), 'certbot explains the layout here');
    const r = buildCertStore([{ dir: join(root, 'live'), path: 'certificates[0]' }]);
    expect(r.problems.filter((p) => p.severity === 'error')).toEqual([]);
    expect(r.store!.entries.map((e) => e.names[0])).toEqual(['mail.example.org', 'www.example.org']);
    expect(r.store!.lookup('www.example.org')!.unit.primary.certFile).toBe(join(root, 'live', 'www.example.org', 'fullchain.pem'));
  });
  it('an empty live/ folder is an error naming the folder', async () => {
    const { mkdirSync } = await import('node:fs');
    const pki = await makePki();
    mkdirSync(join(pki.dir, 'empty'));
    const r = buildCertStore([{ dir: join(pki.dir, 'empty'), path: 'certificates[0]' }]);
    expect(r.store).toBeNull();
    expect(r.problems[0]).toMatchObject({ path: 'certificates[0].dir', message: `${join(pki.dir, 'empty')} holds no certificate folders (expected <name>/fullchain.pem and <name>/privkey.pem)` });
  });
  it('one pem file with key, certificate and chain (haproxy style) loads', async () => {
    const pki = await makePki();
    const c = await pki.issue('combined', { names: ['combined.example.org'] });
    const { readFileSync } = await import('node:fs');
    const file = join(pki.dir, 'combined-all.pem');
    writeFileSync(file, readFileSync(c.key, 'utf8') + readFileSync(c.cert, 'utf8'));
    const r = buildCertStore([{ pem: file, path: 'certificates[0]' }]);
    expect(r.problems.filter((p) => p.severity === 'error')).toEqual([]);
    expect(r.store!.entries[0]).toMatchObject({ names: ['combined.example.org'], chainLength: 1, certFile: file, keyFile: file });
  });
});

describe('certificate sources: broken live/ folders', () => {
  it('a live/ subfolder without its files is an error naming the file, never skipped', async () => {
    const { mkdirSync } = await import('node:fs');
    const pki = await makePki();
    mkdirSync(join(pki.dir, 'live', 'half.example.org'), { recursive: true });
    const r = buildCertStore([{ dir: join(pki.dir, 'live'), path: 'certificates[0]' }]);
    expect(r.store).toBeNull();
    expect(r.problems[0]).toMatchObject({ path: 'certificates[0].dir', message: `cannot read certificate file ${join(pki.dir, 'live', 'half.example.org', 'fullchain.pem')}: ENOENT` });
  });
});

describe('private key file permissions (issue 14, finding 11)', () => {
  it('keyModeProblem: group or other write is an error, other read a warning, group read and owner-only fine', () => {
    expect(keyModeProblem('/k', 0o600)).toBeNull();
    expect(keyModeProblem('/k', 0o400)).toBeNull();
    expect(keyModeProblem('/k', 0o640)).toBeNull();
    expect(keyModeProblem('/k', 0o440)).toBeNull();
    expect(keyModeProblem('/k', 0o644)).toEqual({ severity: 'warning', message: expect.stringMatching(/^\/k is readable by every user \(mode 0644\): .*chmod 600 \/k/) });
    expect(keyModeProblem('/k', 0o604)?.severity).toBe('warning');
    expect(keyModeProblem('/k', 0o660)).toEqual({ severity: 'error', message: expect.stringMatching(/^\/k is writable by its group \(mode 0660\): .*chmod 600 \/k/) });
    expect(keyModeProblem('/k', 0o602)?.message).toMatch(/writable by every user \(mode 0602\)/);
    expect(keyModeProblem('/k', 0o666)?.message).toMatch(/writable by every user \(mode 0666\)/);
    // setuid/sticky bits are not read as permissions.
    expect(keyModeProblem('/k', 0o4600)).toBeNull();
    expect(keyModeProblem('/live/privkey.pem', 0o666, '/archive/privkey3.pem')?.message).toMatch(/^\/live\/privkey\.pem \(-> \/archive\/privkey3\.pem\) is writable.*chmod 600 \/live\/privkey\.pem/);
  });

  it('buildCertStore: a world-readable key loads with a warning at the key path; a world-writable one is refused; a symlink is judged by its target', async () => {
    const pki = await makePki();
    const a = await pki.issue('a', { names: ['a.example.org'] });
    chmodSync(a.key, 0o644);
    const warned = buildCertStore([{ ...a, path: 'certificates[0]' }]);
    expect(warned.store).not.toBeNull();
    expect(warned.problems).toEqual([expect.objectContaining({ severity: 'warning', path: 'certificates[0].key', file: a.key, message: expect.stringContaining('(mode 0644)') })]);
    chmodSync(a.key, 0o666);
    const refused = buildCertStore([{ ...a, path: 'certificates[0]' }]);
    expect(refused.store).toBeNull();
    expect(refused.problems).toEqual([expect.objectContaining({ severity: 'error', path: 'certificates[0].key', file: a.key, message: expect.stringContaining('writable by every user (mode 0666)') })]);
    const link = join(pki.dir, 'link.key');
    symlinkSync(a.key, link);
    expect(buildCertStore([{ cert: a.cert, key: link, path: 'certificates[0]' }]).problems[0]!.message).toContain(`${link} (-> ${a.key}) is writable by every user`);
    chmodSync(a.key, 0o640);
    expect(buildCertStore([{ cert: a.cert, key: link, path: 'certificates[0]' }]).problems).toEqual([]);
  });
});
