// ACME's pure parts: the renewal plan, the backoff, ARI's CertID and window, the acme: config
// section (messages and compiled values), and the storage's atomic writes and modes.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { renewalTime, retryDelay, expiryAlarm, daysLeft } from '../../src/acme/schedule.ts';
import { authorityKeyIdentifier, certIdOf, certIdOfPem, parseRenewalInfo } from '../../src/acme/ari.ts';
import { liveDir, writeAtomic, writePair, readIssued } from '../../src/acme/storage.ts';
import { formatConfigError, loadConfigText } from '../../src/config/load.ts';

const dir = mkdtempSync(join(tmpdir(), 'postern-acme-unit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const DAY = 86_400_000;

describe('renewal plan', () => {
  const v = { notBefore: new Date('2026-01-01T00:00:00Z'), notAfter: new Date('2026-04-01T00:00:00Z') }; // 90 days
  const lifetime = v.notAfter.getTime() - v.notBefore.getTime();

  it('without ARI: two thirds of the lifetime, less at most 1/30 of it (day 57 to 60 of 90)', () => {
    expect(renewalTime(v, null, 0).getTime()).toBe(v.notBefore.getTime() + (lifetime * 2) / 3);
    const earliest = renewalTime(v, null, 0.999999).getTime();
    expect(earliest).toBeGreaterThanOrEqual(v.notBefore.getTime() + (lifetime * 2) / 3 - lifetime / 30);
    expect((v.notAfter.getTime() - earliest) / DAY).toBeLessThanOrEqual(33);
    expect((v.notAfter.getTime() - renewalTime(v, null, 0).getTime()) / DAY).toBeCloseTo(30, 5);
  });

  it('with an ARI window: a moment inside it, spread by the random draw (RFC 9773 section 4.2)', () => {
    const w = { start: new Date('2026-02-10T00:00:00Z'), end: new Date('2026-02-12T00:00:00Z') };
    expect(renewalTime(v, w, 0).toISOString()).toBe(w.start.toISOString());
    expect(renewalTime(v, w, 0.5).toISOString()).toBe('2026-02-11T00:00:00.000Z');
    expect(renewalTime(v, w, 0.999).getTime()).toBeLessThan(w.end.getTime());
  });

  it('an empty or inverted window is ignored (two thirds rule)', () => {
    const w = { start: new Date('2026-02-12T00:00:00Z'), end: new Date('2026-02-10T00:00:00Z') };
    expect(renewalTime(v, w, 0).getTime()).toBe(v.notBefore.getTime() + (lifetime * 2) / 3);
  });

  it('backoff: min, doubling, capped at max, up to 10% jitter, never below min', () => {
    const min = 5 * 60_000;
    const max = 12 * 3_600_000;
    expect(retryDelay(1, min, max, 0)).toBe(min);
    expect(retryDelay(2, min, max, 0)).toBe(2 * min);
    expect(retryDelay(4, min, max, 0)).toBe(8 * min);
    expect(retryDelay(50, min, max, 0)).toBe(max);
    expect(retryDelay(1000, min, max, 0.999)).toBeLessThanOrEqual(max * 1.1);
    for (let n = 1; n < 40; n++) expect(retryDelay(n, min, max, Math.random())).toBeGreaterThanOrEqual(min);
  });

  it('the expiry alarm starts inside the last 7 days', () => {
    const now = new Date('2026-03-20T00:00:00Z');
    expect(expiryAlarm(new Date(now.getTime() + 8 * DAY), now)).toBe(false);
    expect(expiryAlarm(new Date(now.getTime() + 6 * DAY), now)).toBe(true);
    expect(daysLeft(new Date(now.getTime() + 6.5 * DAY), now)).toBe(6);
    expect(daysLeft(new Date(now.getTime() - 1), now)).toBe(-1);
  });
});

describe('ARI (RFC 9773)', () => {
  it("CertID: the RFC's own example (section 4.1): AKI 69:88:5B:..., serial 00:87:65:43:21", () => {
    const aki = Buffer.from('69885b6b87464041e1b37b847ba0ae2cde01c8d4', 'hex');
    // Node prints the serial without the DER sign byte: "87654321".
    expect(certIdOf(aki, '87654321')).toBe('aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE');
    // A serial whose first bit is clear gets no extra byte; an odd digit count is padded.
    expect(certIdOf(aki, '1234').split('.')[1]).toBe(Buffer.from([0x12, 0x34]).toString('base64url'));
    expect(certIdOf(aki, 'ABC').split('.')[1]).toBe(Buffer.from([0x0a, 0xbc]).toString('base64url'));
  });

  it('the AKI read from a real certificate equals what openssl prints', () => {
    const d = mkdtempSync(join(dir, 'aki-'));
    const run = (...args: string[]) => execFileSync('openssl', args, { cwd: d, stdio: ['ignore', 'pipe', 'pipe'] }).toString();
    run('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=ari-ca');
    run('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'leaf.key', '-out', 'leaf.csr', '-subj', '/CN=mail.example.org');
    writeFileSync(join(d, 'ext'), 'subjectAltName=DNS:mail.example.org\nauthorityKeyIdentifier=keyid\n');
    run('x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-set_serial', '0x8a0b0c', '-out', 'leaf.pem', '-days', '2', '-extfile', 'ext');
    const text = run('x509', '-in', 'leaf.pem', '-noout', '-ext', 'authorityKeyIdentifier');
    const hex = /([0-9A-F]{2}(?::[0-9A-F]{2})+)/.exec(text)![1]!.replace(/:/g, '').toLowerCase();
    const pem = readFileSync(join(d, 'leaf.pem'), 'utf8');
    const der = Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
    expect(authorityKeyIdentifier(der)!.toString('hex')).toBe(hex);
    // Serial 0x8a0b0c has its first bit set: DER content 00 8a 0b 0c.
    expect(certIdOfPem(pem)).toBe(`${Buffer.from(hex, 'hex').toString('base64url')}.${Buffer.from('008a0b0c', 'hex').toString('base64url')}`);
  });

  it('a certificate without an AKI has no CertID; garbage DER finds nothing', () => {
    expect(authorityKeyIdentifier(Buffer.from([0x30, 0x03, 0x02, 0x01, 0x01]))).toBeNull();
    expect(authorityKeyIdentifier(Buffer.from([0x06, 0x03, 0x55, 0x1d, 0x23, 0x04, 0x7f]))).toBeNull();
  });

  it('renewalInfo responses: a valid window, or nothing', () => {
    expect(parseRenewalInfo({ suggestedWindow: { start: '2026-02-10T00:00:00Z', end: '2026-02-12T00:00:00Z' } })).toEqual({ start: new Date('2026-02-10T00:00:00Z'), end: new Date('2026-02-12T00:00:00Z') });
    expect(parseRenewalInfo({ suggestedWindow: { start: '2026-02-12T00:00:00Z', end: '2026-02-10T00:00:00Z' } })).toBeNull();
    expect(parseRenewalInfo({ suggestedWindow: { start: 'soon' } })).toBeNull();
    expect(parseRenewalInfo('<html>')).toBeNull();
    expect(parseRenewalInfo(null)).toBeNull();
  });
});

describe('storage', () => {
  it('the certbot layout: ECDSA in live/<name>, RSA in live/<name>_rsa', () => {
    expect(liveDir('/s', 'mail.example.org', 'ecdsa')).toBe('/s/live/mail.example.org');
    expect(liveDir('/s', 'mail.example.org', 'rsa')).toBe('/s/live/mail.example.org_rsa');
  });

  it('writes are atomic (no temporary file left) and the key is 0600 from its creation', () => {
    const live = join(dir, 'store', 'live', 'x.example.org');
    writePair(live, 'not a certificate\n', 'KEY\n');
    expect(statSync(join(live, 'privkey.pem')).mode & 0o777).toBe(0o600);
    expect(statSync(live).mode & 0o777).toBe(0o700);
    writeAtomic(join(live, 'privkey.pem'), 'KEY2\n', 0o600);
    expect(readFileSync(join(live, 'privkey.pem'), 'utf8')).toBe('KEY2\n');
    expect(readdirSync(live).sort()).toEqual(['fullchain.pem', 'privkey.pem']);
    // A file that is not a certificate reads as "none": the manager orders a new one.
    expect(readIssued(live)).toBeNull();
    expect(readIssued(join(dir, 'nothing-here'))).toBeNull();
  });
});

describe('acme: in the configuration', () => {
  const file = join(dir, 'postern.yaml');
  const listener = `listeners:
  - name: imaps
    listen: "127.0.0.1:993"
    protocol: imap
    tls: implicit
    hostname: mail.example.org
    backend: { address: "127.0.0.1:10993", proxyProtocol: v2 }
`;
  const load = (acme: string) => loadConfigText(`${acme}${listener}`, file);
  const errors = (acme: string) => {
    const r = load(acme);
    if (r.ok) throw new Error('expected errors');
    return r.errors.map((e) => formatConfigError(e).replace(`${dir}/`, ''));
  };

  it('certificates may be left out with acme; the names are hosts plus listener hostnames, defaults filled in', () => {
    const r = load('acme:\n  email: postmaster@example.org\n  termsOfServiceAgreed: true\n  storage: acme\n  hosts: [MX.Example.org, mail.example.org]\n');
    if (!r.ok) throw new Error(r.errors.map(formatConfigError).join('\n'));
    const a = r.loaded.config.acme!;
    expect(a).toMatchObject({
      directory: 'https://acme-v02.api.letsencrypt.org/directory',
      email: 'postmaster@example.org',
      storage: join(dir, 'acme'),
      names: ['mx.example.org', 'mail.example.org'],
      keyTypes: ['ecdsa'],
      challenge: 'tls-alpn-01',
      http: null,
      externalAccountBinding: null,
      retry: { minMs: 300_000, maxMs: 43_200_000 },
    });
    // The storage is served like a certbot folder, and may be empty.
    expect(r.loaded.config.certificates).toEqual([{ dir: join(dir, 'acme', 'live'), path: 'acme.storage', optional: true }]);
  });

  it('listenerHostnames: false leaves the listener hostnames out', () => {
    const r = load('acme:\n  email: a@example.org\n  termsOfServiceAgreed: true\n  storage: acme\n  hosts: [mx.example.org]\n  listenerHostnames: false\n');
    expect(r.ok && r.loaded.config.acme!.names).toEqual(['mx.example.org']);
  });

  it('refusals name the line and the field', () => {
    expect(errors('acme:\n  email: a@example.org\n  storage: acme\n')).toEqual([
      expect.stringMatching(/^postern\.yaml:2:3 acme\.termsOfServiceAgreed: required: write termsOfServiceAgreed: true/),
    ]);
    expect(errors('acme:\n  email: a@example.org\n  termsOfServiceAgreed: false\n  storage: acme\n')[0]).toMatch(/^postern\.yaml:3:25 acme\.termsOfServiceAgreed: must be true/);
    expect(errors('acme:\n  email: a@example.org\n  termsOfServiceAgreed: true\n  storage: acme\n  hosts: ["*.example.org"]\n')[0]).toMatch(/acme\.hosts\[0\]: "\*\.example\.org": a wildcard needs the DNS-01 challenge/);
    expect(errors('acme:\n  directory: http://ca.example/dir\n  email: a@example.org\n  termsOfServiceAgreed: true\n  storage: acme\n')[0]).toMatch(/acme\.directory: the directory must be an https:\/\/ URL/);
    expect(errors('acme:\n  email: nobody\n  termsOfServiceAgreed: true\n  storage: acme\n')[0]).toMatch(/acme\.email: expected an email address/);
    expect(errors('acme:\n  email: a@example.org\n  termsOfServiceAgreed: true\n  storage: acme\n  challenge: http-01\n')[0]).toMatch(/acme\.http: required for challenge: http-01/);
    expect(errors('acme:\n  email: a@example.org\n  termsOfServiceAgreed: true\n  storage: acme\n  keyTypes: [ed25519]\n')[0]).toMatch(/acme\.keyTypes\[0\]: expected "ecdsa" or "rsa"/);
    expect(errors('acme:\n  email: a@example.org\n  termsOfServiceAgreed: true\n  storage: acme\n  retry: { min: 1h, max: 5m }\n')[0]).toMatch(/acme\.retry\.min: must not be longer than retry\.max/);
    expect(errors('acme:\n  email: a@example.org\n  termsOfServiceAgreed: true\n  storage: acme\n  caCertificates: nope.pem\n')[0]).toMatch(/acme\.caCertificates: file not found/);
    expect(errors('acme:\n  email: a@example.org\n  termsOfServiceAgreed: true\n  storage: acme\n  challenge: http-01\n  http: { listen: "127.0.0.1:993" }\n')[0]).toMatch(/acme\.http\.listen: "127\.0\.0\.1:993" is already used by listener "imaps"/);
    expect(errors('acme:\n  email: a@example.org\n  termsOfServiceAgreed: true\n  storage: acme\n  stroage: x\n')[0]).toMatch(/unknown key "stroage" \(did you mean "storage"\?\)/);
  });

  it('without certificates and without acme: one clear error', () => {
    const r = loadConfigText(listener, file);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.errors.map(formatConfigError).join('\n')).toMatch(/certificates: required but missing: list certificates, or configure acme/);
  });
});

describe('the ACME setup the docs show', () => {
  const block = (file: string) => {
    const text = readFileSync(join(import.meta.dirname, '..', '..', file), 'utf8');
    const m = /```yaml\n(acme:[\s\S]*?)```/.exec(text);
    if (!m) throw new Error(`${file}: no yaml block starting with acme:`);
    return m[1]!;
  };

  for (const file of ['README.md', 'docs/acme.md']) {
    it(`${file}: the Postfix + Dovecot file loads as is, in under 20 lines, and orders only the listener hostname`, () => {
      const yaml = block(file);
      expect(yaml.trimEnd().split('\n').length).toBeLessThan(20);
      const r = loadConfigText(yaml, join(dir, 'readme.yaml'));
      if (!r.ok) throw new Error(r.errors.map(formatConfigError).join('\n'));
      const c = r.loaded.config;
      expect(c.acme).toMatchObject({ names: ['mail.example.org'], challenge: 'http-01', http: { listen: { host: '0.0.0.0', port: 80 } }, storage: '/var/lib/postern/acme' });
      expect(c.listeners.map((l) => l.hostname)).toContain('mail.example.org');
    });
  }
});

describe('the MTA-STS step the README shows', () => {
  it('its mtaSts line, added to the README ACME file, loads: the policy covers the MX and ACME orders mta-sts.example.org', () => {
    const readme = readFileSync(join(import.meta.dirname, '..', '..', 'README.md'), 'utf8');
    const acme = /```yaml\n(acme:[\s\S]*?)```/.exec(readme)![1]!;
    const sts = /```yaml\n\s*(mtaSts:[^\n]*)\n\s*```/.exec(readme)![1]!;
    const r = loadConfigText(`${acme}${sts}\n`, join(dir, 'readme-sts.yaml'));
    if (!r.ok) throw new Error(r.errors.map(formatConfigError).join('\n'));
    const c = r.loaded.config;
    expect(c.mtaSts).toMatchObject({ domains: ['example.org'], mode: 'testing', mx: ['mail.example.org'], tlsRpt: ['mailto:tlsrpt@example.org'] });
    expect(c.mtaSts!.text).toBe('version: STSv1\r\nmode: testing\r\nmx: mail.example.org\r\nmax_age: 604800\r\n');
    expect(c.acme!.names).toEqual(['mail.example.org', 'mta-sts.example.org']);
  });
});
