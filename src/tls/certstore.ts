// PEM pairs -> SecureContexts with a name index. A store is built completely (every file read,
// every key matched to its certificate, contexts created) before anyone can use it; the daemon
// holds one reference and swaps it whole, so a connection never sees a half-built store.
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import tls, { type SecureContext } from 'node:tls';
import type { CertificateSource, TlsMinVersion } from '../config/types.ts';
import { patternProblem, wildcardParent, parentOf } from './names.ts';

export interface CertEntry {
  /** DNS names from the leaf's subjectAltName, lowercased; wildcards as "*.domain". */
  names: string[];
  subject: string;
  issuer: string;
  notBefore: Date;
  notAfter: Date;
  /** e.g. "ECDSA P-256", "RSA 2048". */
  keyType: string;
  certFile: string;
  keyFile: string;
  /** Number of certificates in the file after the leaf. */
  chainLength: number;
  /** YAML path of the certificates[] entry it came from. */
  source: string;
  /** The PEM text, kept to create contexts for other TLS settings on demand. */
  certPem: string;
  keyPem: string;
}

export interface CertProblem {
  /** YAML path such as "certificates[0].cert". */
  path: string;
  file: string;
  message: string;
  severity: 'error' | 'warning';
}

export type CertMatch = { entry: CertEntry; match: 'exact' | 'wildcard' };

export class CertStore {
  readonly entries: readonly CertEntry[];
  private readonly exact = new Map<string, CertEntry>();
  private readonly wildcard = new Map<string, CertEntry>();
  private readonly contexts = new Map<CertEntry, Map<TlsMinVersion, SecureContext>>();

  constructor(entries: CertEntry[]) {
    this.entries = entries;
    for (const entry of entries) {
      for (const name of entry.names) {
        const parent = wildcardParent(name);
        const index = parent === null ? this.exact : this.wildcard;
        const key = parent ?? name;
        // The first certificate listed for a name serves it; order in the config decides.
        if (!index.has(key)) index.set(key, entry);
      }
    }
  }

  /** Exact beats wildcard (RFC 6125 section 6.4); name must already be lowercased and valid. */
  lookup(name: string): CertMatch | null {
    const exact = this.exact.get(name);
    if (exact) return { entry: exact, match: 'exact' };
    const parent = parentOf(name);
    const wild = parent === null ? undefined : this.wildcard.get(parent);
    return wild ? { entry: wild, match: 'wildcard' } : null;
  }

  /** The SecureContext for an entry under a listener's TLS settings, created once and cached. */
  context(entry: CertEntry, minVersion: TlsMinVersion): SecureContext {
    let byVersion = this.contexts.get(entry);
    if (!byVersion) {
      byVersion = new Map();
      this.contexts.set(entry, byVersion);
    }
    let ctx = byVersion.get(minVersion);
    if (!ctx) {
      ctx = tls.createSecureContext({ cert: entry.certPem, key: entry.keyPem, minVersion });
      byVersion.set(minVersion, ctx);
    }
    return ctx;
  }
}

export interface BuildResult {
  store: CertStore | null;
  problems: CertProblem[];
}

/** Reads and checks every pair; returns a store only when no pair has an error. */
export function buildCertStore(sources: CertificateSource[], now = new Date()): BuildResult {
  const problems: CertProblem[] = [];
  const entries: CertEntry[] = [];
  for (const source of sources) {
    const entry = loadPair(source, now, problems);
    if (entry) entries.push(entry);
  }
  const failed = problems.some((p) => p.severity === 'error');
  if (!failed) {
    const store = new CertStore(entries);
    // Creating the default contexts now surfaces OpenSSL's complaints at load, not per handshake.
    for (const entry of entries) {
      try {
        store.context(entry, 'TLSv1.2');
      } catch (err) {
        problems.push({ path: `${entry.source}.cert`, file: entry.certFile, severity: 'error', message: `OpenSSL refused the pair: ${(err as Error).message}` });
      }
    }
    if (!problems.some((p) => p.severity === 'error')) return { store, problems };
  }
  return { store: null, problems };
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

function loadPair(source: CertificateSource, now: Date, problems: CertProblem[]): CertEntry | null {
  const certPath = `${source.path}.cert`;
  const keyPath = `${source.path}.key`;
  const err = (path: string, file: string, message: string): null => {
    problems.push({ path, file, message, severity: 'error' });
    return null;
  };
  let certPem: string;
  let keyPem: string;
  try {
    certPem = readFileSync(source.cert, 'utf8');
  } catch (e) {
    return err(certPath, source.cert, `cannot read certificate file ${source.cert}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    keyPem = readFileSync(source.key, 'utf8');
  } catch (e) {
    return err(keyPath, source.key, `cannot read key file ${source.key}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const blocks = certPem.match(PEM_CERT) ?? [];
  if (blocks.length === 0) return err(certPath, source.cert, `${source.cert} holds no PEM certificate`);
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(blocks[0]!);
  } catch (e) {
    return err(certPath, source.cert, `${source.cert}: the first certificate does not parse: ${(e as Error).message}`);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(keyPem);
  } catch (e) {
    return err(keyPath, source.key, `${source.key} holds no usable private key: ${(e as Error).message}`);
  }
  if (!leaf.checkPrivateKey(key)) {
    return err(keyPath, source.key, `${source.key} is not the private key of ${source.cert} (${leaf.subject.replace(/\n/g, ', ')})`);
  }
  const names = dnsNames(leaf);
  if (names.length === 0) return err(certPath, source.cert, `${source.cert} has no DNS names in subjectAltName`);
  for (const name of names) {
    const problem = patternProblem(name);
    if (problem) return err(certPath, source.cert, `${source.cert}: ${problem}`);
  }
  const notBefore = new Date(leaf.validFrom);
  const notAfter = new Date(leaf.validTo);
  const warn = (message: string) => problems.push({ path: certPath, file: source.cert, message, severity: 'warning' });
  if (notBefore > now) warn(`${source.cert} is not valid before ${notBefore.toISOString()}`);
  if (notAfter < now) warn(`${source.cert} EXPIRED on ${notAfter.toISOString()}; clients that verify will refuse it`);
  else if (notAfter.getTime() - now.getTime() < 14 * 86_400_000) warn(`${source.cert} expires in less than 14 days (${notAfter.toISOString()})`);
  if (blocks.length === 1 && leaf.issuer !== leaf.subject) warn(`${source.cert} has no intermediate certificates after the leaf; most clients need the chain`);
  return {
    names,
    subject: leaf.subject.replace(/\n/g, ', '),
    issuer: leaf.issuer.replace(/\n/g, ', '),
    notBefore,
    notAfter,
    keyType: describeKey(key),
    certFile: source.cert,
    keyFile: source.key,
    chainLength: blocks.length - 1,
    source: source.path,
    certPem,
    keyPem,
  };
}

function dnsNames(cert: X509Certificate): string[] {
  const san = cert.subjectAltName ?? '';
  const names = new Set<string>();
  for (const part of san.split(', ')) {
    if (part.startsWith('DNS:')) names.add(part.slice(4).toLowerCase());
  }
  return [...names];
}

function describeKey(key: KeyObject): string {
  const d = key.asymmetricKeyDetails ?? {};
  switch (key.asymmetricKeyType) {
    case 'ec':
      return `ECDSA ${d.namedCurve === 'prime256v1' ? 'P-256' : d.namedCurve === 'secp384r1' ? 'P-384' : (d.namedCurve ?? '?')}`;
    case 'rsa':
    case 'rsa-pss':
      return `RSA ${d.modulusLength ?? '?'}`;
    default:
      return key.asymmetricKeyType ?? 'unknown';
  }
}
