// docs/mail-servers.md shows the Postfix, Dovecot and Exim settings "as the end-to-end tests run
// them": every setting line of its Exim, Dovecot and Postfix blocks must be one the e2e harness
// writes (with the docs' ports), apart from the few Postfix lines the docs add and say the tests
// do not run; its Postfix master.cf block is the compose example's master.cf.postern.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { dovecotConf } from '../e2e/harness/dovecot.ts';
import { eximConf } from '../e2e/harness/exim.ts';
import { masterCf } from '../e2e/harness/postfix.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const DOC = readFileSync(join(ROOT, 'docs', 'mail-servers.md'), 'utf8');

/** The first fenced block after a heading line. */
function blockAfter(heading: string): string {
  const at = DOC.indexOf(`\n${heading}\n`);
  if (at < 0) throw new Error(`no heading "${heading}" in docs/mail-servers.md`);
  const m = /\n```[a-z]*\n([\s\S]*?)\n```/.exec(DOC.slice(at));
  if (!m) throw new Error(`no code block after "${heading}"`);
  return m[1]!;
}

/** Setting lines: trimmed, whitespace collapsed, comments, blanks and "..." placeholders left out. */
function settingLines(text: string): string[] {
  return text
    .split('\n')
    .map((l) => l.replace(/\s+#.*$/, '').trim().replace(/\s+/g, ' '))
    .filter((l) => l && !l.startsWith('#') && !l.includes('...'));
}

function missingFrom(doc: string[], written: string): string[] {
  const have = new Set(settingLines(written));
  return doc.filter((l) => !have.has(l));
}

describe('docs/mail-servers.md matches what the e2e harness runs', () => {
  it('Exim: every line of the block is in the harness config (ports 10025/10587)', () => {
    const doc = settingLines(blockAfter('### Exim'));
    expect(doc.length).toBeGreaterThan(10);
    expect(missingFrom(doc, eximConf('/d', '/usr/sbin/exim4', { mxPort: 10025, submissionPort: 10587 }))).toEqual([]);
  });

  it('Dovecot: every line of the block is in the harness config (ports 10143/10110)', () => {
    const doc = settingLines(blockAfter('### Dovecot'));
    expect(doc).toContain('haproxy = yes');
    expect(missingFrom(doc, dovecotConf('/d', { imapPort: 10143, pop3Port: 10110, haproxy: true }, { uid: 8, gid: 8 }))).toEqual([]);
  });

  // The lines the docs add to what the harness runs, each explained there: TLS off on the
  // proxied services (the STARTTLS tests run Postfix with TLS on, to prove postern hides it) and
  // SASL (not run with Postfix; the Exim test runs AUTH).
  const ADDED = ['-o smtpd_tls_security_level=none', '-o smtpd_sasl_auth_enable=yes', '-o smtpd_client_restrictions=permit_sasl_authenticated,reject'];

  it('Postfix: the master.cf block is the harness services plus the explained additions', () => {
    const doc = settingLines(blockAfter('### Postfix'));
    const rest = doc.filter((l) => !ADDED.includes(l));
    expect(rest.length).toBeLessThan(doc.length);
    expect(missingFrom(rest, masterCf({ smtpPort: 10025, submissionPort: 10587, proxyProtocol: 'haproxy' }))).toEqual([]);
  });

  it('postscreen: the block is the harness postscreen services plus the explained addition', () => {
    const doc = settingLines(blockAfter('#### postscreen')).filter((l) => !ADDED.includes(l));
    expect(doc).toContain('-o postscreen_upstream_proxy_protocol=haproxy');
    expect(missingFrom(doc, masterCf({ smtpPort: 10025, submissionPort: 10587, proxyProtocol: 'haproxy', postscreen: true }))).toEqual([]);
  });

  it("Postfix: the block is the compose example's master.cf.postern (which listens on every address)", () => {
    const doc = settingLines(blockAfter('### Postfix')).map((l) => l.replace(/^127\.0\.0\.1:/, ''));
    const example = settingLines(readFileSync(join(ROOT, 'examples', 'postfix', 'master.cf.postern'), 'utf8'));
    expect(example).toEqual(doc);
  });
});
