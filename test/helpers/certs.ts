// Certificates generated per test run into a temporary folder (never committed).
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCa, issueCert, type IssueOptions, type TestCa } from './pki.ts';

export interface CertFiles {
  cert: string;
  key: string;
  certPem: string;
  keyPem: string;
}

export interface TestPki {
  dir: string;
  ca: TestCa;
  caFile: string;
  issue(file: string, opts: IssueOptions & { withChain?: boolean }): Promise<CertFiles>;
}

export async function makePki(): Promise<TestPki> {
  const dir = mkdtempSync(join(tmpdir(), 'postern-test-'));
  const ca = await createCa();
  const caFile = join(dir, 'ca.pem');
  writeFileSync(caFile, ca.certPem);
  return {
    dir,
    ca,
    caFile,
    async issue(file, opts) {
      const c = await issueCert(ca, opts);
      const cert = join(dir, `${file}.pem`);
      const key = join(dir, `${file}.key`);
      writeFileSync(cert, opts.withChain === false ? c.certPem : c.chainPem);
      // Owner-only, as a private key should be: 0644 would add a permission warning to every load.
      writeFileSync(key, c.keyPem, { mode: 0o600 });
      return { cert, key, certPem: c.certPem, keyPem: c.keyPem };
    },
  };
}
