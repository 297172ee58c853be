// The demo's throwaway certificate authority, made with the openssl command (the demo prints
// openssl s_client commands anyway, so openssl is there). Keeping this out of the runtime
// dependencies spares every installation an X.509 library only the demo would use.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface DemoLeaf {
  /** File stem: <file>.pem (leaf then CA) and <file>.key. */
  file: string;
  names: string[];
}

function openssl(args: string[], cwd: string) {
  try {
    execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: Buffer };
    if (e.code === 'ENOENT') throw new Error('the demo makes its certificates with the openssl command, which was not found: install openssl');
    throw new Error(`openssl ${args[0]} failed: ${e.stderr?.toString().trim() ?? e.message}`);
  }
}

/**
 * Writes ca.pem (a P-256 CA valid for 30 days) and, for each leaf, <file>.pem (the leaf, for
 * serverAuth with the names as DNS SANs, then the CA) and <file>.key (mode 0600) into `dir`.
 * The CA's key is deleted at the end: nothing else can be issued from it.
 */
export function makeDemoCertificates(dir: string, leaves: DemoLeaf[]): void {
  const sections = leaves
    .map(
      (l) => `[leaf_${l.file}]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = ${l.names.map((n) => `DNS:${n}`).join(',')}
`,
    )
    .join('\n');
  writeFileSync(
    join(dir, 'openssl.cnf'),
    `[req]
distinguished_name = dn
prompt = no
[dn]
CN = postern demo CA
[ca]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
${sections}`,
  );
  const key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl(['req', '-x509', '-config', 'openssl.cnf', '-extensions', 'ca', ...key, '-days', '30', '-keyout', 'ca.key', '-out', 'ca.pem'], dir);
  const ca = readFileSync(join(dir, 'ca.pem'), 'utf8');
  for (const l of leaves) {
    openssl(['req', '-new', '-config', 'openssl.cnf', ...key, '-subj', `/CN=${l.names[0]}`, '-keyout', `${l.file}.key`, '-out', `${l.file}.csr`], dir);
    const serial = `0x${randomBytes(16).toString('hex').replace(/^[89a-f]/, '1')}`;
    openssl(['x509', '-req', '-in', `${l.file}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-set_serial', serial, '-days', '30', '-extfile', 'openssl.cnf', '-extensions', `leaf_${l.file}`, '-out', `${l.file}.crt`], dir);
    writeFileSync(join(dir, `${l.file}.pem`), readFileSync(join(dir, `${l.file}.crt`), 'utf8') + ca);
    chmodSync(join(dir, `${l.file}.key`), 0o600);
    rmSync(join(dir, `${l.file}.csr`));
    rmSync(join(dir, `${l.file}.crt`));
  }
  rmSync(join(dir, 'ca.key'));
  rmSync(join(dir, 'openssl.cnf'));
}
