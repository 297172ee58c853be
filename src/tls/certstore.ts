// PEM pairs -> SecureContexts with a name index. A store is built completely (every file read,
// every key matched to its certificate, contexts created) before anyone can use it; the daemon
// holds one reference and swaps it whole, so a connection never sees a half-built store.
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readdirSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import tls, { type SecureContext } from 'node:tls';
import type { CertificateSource, CertificateSpec, TlsMinVersion } from '../config/types.ts';
import { patternProblem, wildcardParent, parentOf } from './names.ts';
import { SERVER_TLS_OPTIONS } from './settings.ts';
import type { TicketKey } from './tickets.ts';

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

/**
 * What serves one name: at most one certificate per key algorithm (ECDSA, RSA, ...), all in one
 * SecureContext, so OpenSSL picks by what the client supports (ECDSA for modern clients, RSA for
 * old ones). The first pair listed in the configuration wins within an algorithm.
 */
export class ServeUnit {
  readonly entries: readonly CertEntry[];
  /**
   * What a session ticket of this unit vouches for: its names and key types, not the
   * certificates' bytes, so that a renewal (same names, new certificate) keeps resumption.
   */
  readonly identity: string;
  private readonly contexts = new Map<string, { context: SecureContext; period: number }>();

  constructor(entries: CertEntry[]) {
    this.entries = entries;
    this.identity = entries.map((e) => `${algorithm(e)}:${[...e.names].sort().join(',')}`).join('|');
  }

  /** The certificate shown in logs and `check`: the first one listed. */
  get primary(): CertEntry {
    return this.entries[0]!;
  }

  /**
   * The SecureContext under a listener's TLS settings, created once and cached. Suites, server
   * order and no renegotiation are the fixed policy of settings.ts.
   */
  context(minVersion: TlsMinVersion, ticket: TicketKey | null = null): SecureContext {
    const id = ticket ? `${minVersion}|${ticket.key.toString('hex', 0, 16)}` : minVersion;
    let entry = this.contexts.get(id);
    if (!entry) {
      const context = tls.createSecureContext({
        ...SERVER_TLS_OPTIONS,
        cert: this.entries.map((e) => e.certPem),
        key: this.entries.map((e) => e.keyPem),
        minVersion,
        ...(ticket ? { ticketKeys: ticket.key, sessionTimeout: ticket.lifetimeS } : {}),
      });
      if (ticket) this.prune(ticket.period);
      entry = { context, period: ticket?.period ?? Infinity };
      this.contexts.set(id, entry);
    }
    return entry.context;
  }

  /** Contexts of ticket periods before the previous one are never chosen again. */
  private prune(period: number) {
    for (const [id, e] of this.contexts) if (e.period < period - 1) this.contexts.delete(id);
  }
}

export type CertMatch = { unit: ServeUnit; match: 'exact' | 'wildcard' };

export class CertStore {
  readonly entries: readonly CertEntry[];
  private readonly exact = new Map<string, ServeUnit>();
  private readonly wildcard = new Map<string, ServeUnit>();

  constructor(entries: CertEntry[]) {
    this.entries = entries;
    const exact = new Map<string, CertEntry[]>();
    const wildcard = new Map<string, CertEntry[]>();
    for (const entry of entries) {
      for (const name of entry.names) {
        const parent = wildcardParent(name);
        const index = parent === null ? exact : wildcard;
        const key = parent ?? name;
        const list = index.get(key) ?? [];
        // One certificate per key algorithm; a second one of the same kind is shadowed.
        if (!list.some((e) => algorithm(e) === algorithm(entry))) list.push(entry);
        index.set(key, list);
      }
    }
    // Names served by the same set of certificates share one unit, so one context.
    const units = new Map<string, ServeUnit>();
    const unitFor = (list: CertEntry[]) => {
      const id = list.map((e) => entries.indexOf(e)).join(',');
      let unit = units.get(id);
      if (!unit) units.set(id, (unit = new ServeUnit(list)));
      return unit;
    };
    for (const [k, list] of exact) this.exact.set(k, unitFor(list));
    for (const [k, list] of wildcard) this.wildcard.set(k, unitFor(list));
  }

  /** Exact beats wildcard (RFC 6125 section 6.4); name must already be lowercased and valid. */
  lookup(name: string): CertMatch | null {
    const exact = this.exact.get(name);
    if (exact) return { unit: exact, match: 'exact' };
    const parent = parentOf(name);
    const wild = parent === null ? undefined : this.wildcard.get(parent);
    return wild ? { unit: wild, match: 'wildcard' } : null;
  }

  /** Every unit, for creating the contexts up front. */
  units(): ServeUnit[] {
    return [...new Set([...this.exact.values(), ...this.wildcard.values()])];
  }
}

function algorithm(e: CertEntry): string {
  return e.keyType.split(' ')[0]!;
}

export interface BuildResult {
  store: CertStore | null;
  problems: CertProblem[];
}

/** Reads and checks every pair; returns a store only when no pair has an error. */
export function buildCertStore(specs: CertificateSpec[], now = new Date()): BuildResult {
  const problems: CertProblem[] = [];
  const entries: CertEntry[] = [];
  for (const source of specs.flatMap((spec) => expand(spec, problems))) {
    const entry = loadPair(source, now, problems);
    if (entry) entries.push(entry);
  }
  const failed = problems.some((p) => p.severity === 'error');
  if (!failed) {
    const store = new CertStore(entries);
    // Creating the default contexts now surfaces OpenSSL's complaints at load, not per handshake.
    for (const unit of store.units()) {
      try {
        unit.context('TLSv1.2');
      } catch (err) {
        const e = unit.primary;
        problems.push({ path: `${e.source}.cert`, file: e.certFile, severity: 'error', message: `OpenSSL refused ${unit.entries.map((x) => x.certFile).join(' + ')}: ${(err as Error).message}` });
      }
    }
    if (!problems.some((p) => p.severity === 'error')) return { store, problems };
  }
  return { store: null, problems };
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** The certbot live/ layout: one subfolder per certificate (symlinks into archive/ followed). */
const LIVE_CERT = 'fullchain.pem';
const LIVE_KEY = 'privkey.pem';

/** A spec as the pairs it stands for; a folder's listing is read anew on every build. */
function expand(spec: CertificateSpec, problems: CertProblem[]): PairSource[] {
  if ('cert' in spec) return [{ ...spec, certField: `${spec.path}.cert`, keyField: `${spec.path}.key` }];
  if ('pem' in spec) return [{ cert: spec.pem, key: spec.pem, path: spec.path, certField: `${spec.path}.pem`, keyField: `${spec.path}.pem` }];
  let names: string[];
  try {
    // ACME storage before the first issuance: nothing there yet, and nothing wrong.
    if (spec.optional && !existsSync(spec.dir)) return [];
    names = readdirSync(spec.dir, { withFileTypes: true })
      .filter((d) => (d.isDirectory() || d.isSymbolicLink()) && !d.name.startsWith('.'))
      .map((d) => d.name)
      .sort();
  } catch (e) {
    problems.push({ path: `${spec.path}.dir`, file: spec.dir, severity: 'error', message: `cannot read folder ${spec.dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` });
    return [];
  }
  // Every subfolder is a certificate: one that cannot be read is an error, never skipped.
  // The ACME storage is named by its own key (acme.storage), a certificates[] entry by its dir.
  const field = spec.optional ? spec.path : `${spec.path}.dir`;
  const pairs = names.map((n) => ({ cert: join(spec.dir, n, LIVE_CERT), key: join(spec.dir, n, LIVE_KEY), path: spec.path, certField: field, keyField: field }));
  if (pairs.length === 0 && !spec.optional) problems.push({ path: `${spec.path}.dir`, file: spec.dir, severity: 'error', message: `${spec.dir} holds no certificate folders (expected <name>/${LIVE_CERT} and <name>/${LIVE_KEY})` });
  return pairs;
}

interface PairSource extends CertificateSource {
  /** YAML paths that problems with the certificate / the key point at. */
  certField: string;
  keyField: string;
}

const PEM_KEY = /-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----[\s\S]+?-----END \1-----/;

function loadPair(source: PairSource, now: Date, problems: CertProblem[]): CertEntry | null {
  const certPath = source.certField;
  const keyPath = source.keyField;
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
  let keyMode: number;
  try {
    ({ text: keyPem, mode: keyMode } = readWithMode(source.key));
  } catch (e) {
    return err(keyPath, source.key, `cannot read key file ${source.key}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const permission = keyModeProblem(source.key, keyMode, targetOf(source.key));
  if (permission?.severity === 'error') return err(keyPath, source.key, permission.message);
  if (permission) problems.push({ path: keyPath, file: source.key, message: permission.message, severity: 'warning' });
  const blocks = certPem.match(PEM_CERT) ?? [];
  if (blocks.length === 0) return err(certPath, source.cert, `${source.cert} holds no PEM certificate`);
  // Only the certificate blocks go to OpenSSL as the chain, and only the key block as the key:
  // a combined file ({pem}) holds both.
  certPem = blocks.join('\n') + '\n';
  const keyBlock = PEM_KEY.exec(keyPem);
  if (!keyBlock) return err(keyPath, source.key, `${source.key} holds no PEM private key`);
  if (keyBlock[1] === 'ENCRYPTED PRIVATE KEY') return err(keyPath, source.key, `${source.key}: the private key is encrypted; postern needs it unencrypted (protect the file with its permissions)`);
  keyPem = keyBlock[0] + '\n';
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
  // A certificate from the future is a clock or deployment mistake: every verifying client would
  // refuse it, so it is refused here rather than served.
  if (notBefore > now) return err(certPath, source.cert, `${source.cert} is not valid before ${notBefore.toISOString()} (check the clock, or the renewal deployed too early)`);
  const weak = keyWeakness(key);
  if (weak) return err(keyPath, source.key, `${source.key}: ${weak}`);
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

/**
 * The text of a file and the mode of what was read: fstat of the open descriptor, so a symlink
 * (certbot's live/, Kubernetes' ..data) is judged by its target, and by the very file read.
 */
function readWithMode(file: string): { text: string; mode: number } {
  const fd = openSync(file, 'r');
  try {
    const mode = fstatSync(fd).mode & 0o7777;
    return { text: readFileSync(fd, 'utf8'), mode };
  } finally {
    closeSync(fd);
  }
}

/** Where a symlink leads; null for a plain file. */
function targetOf(file: string): string | null {
  try {
    const real = realpathSync(file);
    return real === file ? null : real;
  } catch {
    return null;
  }
}

const octal = (mode: number) => `0${(mode & 0o777).toString(8).padStart(3, '0')}`;

/**
 * A private key file's mode. Writable by the group or by others: an error, whoever can write it
 * can make postern serve a key of their choosing. Readable by others: a warning, every local user
 * can read the key. Readable by the group (0640: Debian's ssl-cert group, a Kubernetes fsGroup)
 * is how a key is shared with a service user, and fine.
 */
export function keyModeProblem(file: string, mode: number, target: string | null = null): { severity: 'error' | 'warning'; message: string } | null {
  const shown = target === null ? file : `${file} (-> ${target})`;
  if (mode & 0o022) {
    const who = mode & 0o002 ? 'every user' : 'its group';
    return { severity: 'error', message: `${shown} is writable by ${who} (mode ${octal(mode)}): whoever can write it can make postern serve a key of their own; chmod 600 ${file} (or chmod 640 and a group postern runs in)` };
  }
  if (mode & 0o004) {
    return { severity: 'warning', message: `${shown} is readable by every user (mode ${octal(mode)}): every local user can read the private key; chmod 600 ${file} (or chmod 640 and a group postern runs in, e.g. ssl-cert)` };
  }
  return null;
}

function dnsNames(cert: X509Certificate): string[] {
  const san = cert.subjectAltName ?? '';
  const names = new Set<string>();
  for (const part of san.split(', ')) {
    if (part.startsWith('DNS:')) names.add(part.slice(4).toLowerCase());
  }
  return [...names];
}

/** NIST SP 800-57 / BSI TR-02102: RSA below 2048 bits and curves below 256 bits are too weak. */
function keyWeakness(key: KeyObject): string | null {
  const d = key.asymmetricKeyDetails ?? {};
  if ((key.asymmetricKeyType === 'rsa' || key.asymmetricKeyType === 'rsa-pss') && (d.modulusLength ?? 0) < 2048) return `RSA key of ${d.modulusLength} bits is too weak (at least 2048)`;
  if (key.asymmetricKeyType === 'ec' && !['prime256v1', 'secp384r1', 'secp521r1'].includes(d.namedCurve ?? '')) return `elliptic curve ${d.namedCurve} is not supported (use P-256 or P-384)`;
  return null;
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
