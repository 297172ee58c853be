// The ACME storage folder, on disk, in the certbot layout so that a `dir:` source, another tool
// or a second postern can read it:
//   <storage>/live/<name>/fullchain.pem + privkey.pem        (ECDSA P-256)
//   <storage>/live/<name>_rsa/fullchain.pem + privkey.pem    (RSA 2048)
//   <storage>/accounts/<ca host>-<hash>/key.pem + account.json
//   <storage>/state.json                                     (what `postern acme status` reads)
// Every file is written to a temporary name in the same folder, flushed and renamed over the old
// one: a reader sees the old file or the new one, never half of one. Keys are 0600.
import { createHash, X509Certificate } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync, unlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { AcmeKeyType } from '../config/types.ts';

export const LIVE = 'live';

/** The folder of one certificate. An underscore cannot occur in a name a public CA issues for. */
export function liveDir(storage: string, name: string, keyType: AcmeKeyType): string {
  return join(storage, LIVE, keyType === 'ecdsa' ? name : `${name}_${keyType}`);
}

export function accountDir(storage: string, directory: string): string {
  const url = new URL(directory);
  const hash = createHash('sha256').update(directory).digest('hex').slice(0, 12);
  return join(storage, 'accounts', `${url.hostname}-${hash}`);
}

export const stateFile = (storage: string) => join(storage, 'state.json');

/** mkdir -p with 0700 for new folders: the keys are inside. */
export function ensureDir(dir: string) {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
}

/** Write, fsync, rename: atomic for readers; the mode is set at creation (no window of 0644). */
export function writeAtomic(file: string, data: string, mode: number) {
  ensureDir(dirname(file));
  const tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
  const fd = openSync(tmp, 'w', mode);
  try {
    writeSync(fd, data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    renameSync(tmp, file);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      // already gone
    }
    throw err;
  }
}

/**
 * A new certificate and its key. The key goes first: a reader that sees the new key with the old
 * certificate finds a mismatch and retries (the reloader does), while the reverse order would be
 * the same; what matters is that each file is whole.
 */
export function writePair(dir: string, fullchainPem: string, keyPem: string) {
  writeAtomic(join(dir, 'privkey.pem'), keyPem, 0o600);
  writeAtomic(join(dir, 'fullchain.pem'), fullchainPem, 0o644);
}

export interface Issued {
  certPem: string;
  notBefore: Date;
  notAfter: Date;
  names: string[];
}

/** The certificate in a live folder, or null when there is none (or it does not parse). */
export function readIssued(dir: string): Issued | null {
  let pem: string;
  try {
    pem = readFileSync(join(dir, 'fullchain.pem'), 'utf8');
  } catch {
    return null;
  }
  try {
    const leaf = new X509Certificate(pem);
    const names = (leaf.subjectAltName ?? '').split(', ').filter((p) => p.startsWith('DNS:')).map((p) => p.slice(4).toLowerCase());
    return { certPem: pem, notBefore: new Date(leaf.validFrom), notAfter: new Date(leaf.validTo), names };
  } catch {
    return null;
  }
}

/** What `postern acme status` shows beyond the files: per certificate, the manager's view. */
export interface CertState {
  name: string;
  keyType: AcmeKeyType;
  /** ISO times. */
  nextRenewal: string | null;
  lastAttempt: string | null;
  lastSuccess: string | null;
  lastError: string | null;
  failures: number;
  /** RFC 9773 window when the CA gave one. */
  renewalWindow: { start: string; end: string } | null;
}

export interface StateFile {
  directory: string;
  updated: string;
  certificates: CertState[];
}

export function readState(storage: string): StateFile | null {
  try {
    return JSON.parse(readFileSync(stateFile(storage), 'utf8')) as StateFile;
  } catch {
    return null;
  }
}

export function writeState(storage: string, state: StateFile) {
  writeAtomic(stateFile(storage), `${JSON.stringify(state, null, 2)}\n`, 0o600);
}
