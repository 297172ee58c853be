// Reads postern.yaml, validates it completely and compiles it into a PosternConfig.
//
// YAML (with positions) -> plain value -> schema (schema.ts: types, values, unknown keys) plus the
// checks that need the whole document (duplicate names, conflicting listen addresses, starttls
// options on implicit listeners, certificate files) -> every problem, sorted by line, each at the
// most specific YAML node. Only a document without a single problem is compiled.
import { accessSync, constants, readFileSync, statSync } from 'node:fs';
import { dirname, isAbsolute, relative, resolve } from 'node:path';
import { availableParallelism } from 'node:os';
import { isIPv4 } from 'node:net';
import { isAlias, isMap, isPair, isScalar, isSeq, LineCounter, parseDocument } from 'yaml';
import type { Document } from 'yaml';
import {
  DEFAULTS,
  defaultAlpn,
  defaultFallbackCapabilities,
  defaultGreeting,
  defaultRequireTls,
  defaultSni,
  parseHostPort,
  STARTTLS_ONLY_KEYS,
  validateDocument,
} from './schema.ts';
import type { RawDocument, RawListener, SchemaIssue, SchemaPath } from './schema.ts';
import { parseTicketSecret } from '../tls/tickets.ts';
import { mxCovers, policyId, renderPolicy } from '../mta-sts/policy.ts';
import type { MtaStsConfig } from './types.ts';
import type { AcmeConfig, CertificateSpec, ConfigError, HostPort, ListenerConfig, PosternConfig } from './types.ts';

export interface LoadedConfig {
  config: PosternConfig;
  /** Valid but probably wrong (e.g. an MX that requires TLS); printed, never fatal. */
  warnings: ConfigError[];
  /** line/col (1-based) of a YAML path like "listeners[1].sni" or "certificates[0].cert"; falls back to the nearest existing parent */
  position(path: string): { line: number; col: number };
}

export type LoadResult = { ok: true; loaded: LoadedConfig } | { ok: false; errors: ConfigError[] };

// ---------------------------------------------------------------------------------------------
// Paths: "listeners[1].backend.address" <-> ['listeners', 1, 'backend', 'address']

export function formatPath(path: SchemaPath): string {
  let out = '';
  for (const seg of path) out += typeof seg === 'number' ? `[${seg}]` : out === '' ? seg : `.${seg}`;
  return out;
}

export function parsePath(path: string): SchemaPath {
  const out: SchemaPath = [];
  for (const m of path.matchAll(/([^.[\]]+)|\[(\d+)\]/g)) out.push(m[2] !== undefined ? Number(m[2]) : m[1]!);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Positions in the YAML source

type Pos = { line: number; col: number };

class Locator {
  private readonly doc: Document;
  private readonly lines: LineCounter;

  constructor(doc: Document, lines: LineCounter) {
    this.doc = doc;
    this.lines = lines;
  }

  private posOf(node: unknown): Pos | null {
    const range = (node as { range?: [number, number, number] } | null)?.range;
    return range ? this.lines.linePos(range[0]) : null;
  }

  private deref(node: unknown): unknown {
    return isAlias(node) ? node.resolve(this.doc) : node;
  }

  /**
   * Where `path` is in the source: its value node (or its key with at = 'key'); the nearest
   * existing parent when the path does not exist (a missing key points at its mapping).
   */
  find(path: SchemaPath, at: 'value' | 'key' = 'value'): Pos {
    let node: unknown = this.doc.contents;
    let best: Pos = this.posOf(node) ?? { line: 1, col: 1 };
    for (let i = 0; i < path.length; i++) {
      const seg = path[i]!;
      node = this.deref(node);
      const last = i === path.length - 1;
      if (isMap(node)) {
        // The last of duplicate keys is the one whose value counts (as in doc.toJS()).
        const pair = node.items.findLast((p) => isPair(p) && String(isScalar(p.key) ? p.key.value : p.key) === String(seg));
        if (!pair) return best;
        const keyPos = this.posOf(pair.key);
        const valuePos = this.posOf(pair.value);
        // `key:` with nothing after it has an empty value node; point at the key then.
        const empty = isScalar(pair.value) && pair.value.value === null && pair.value.source === '';
        if (last && at === 'key') return keyPos ?? best;
        best = (empty ? keyPos : valuePos) ?? keyPos ?? best;
        node = pair.value;
      } else if (isSeq(node) && typeof seg === 'number') {
        const item: unknown = node.items[seg];
        if (item === undefined) return best;
        best = this.posOf(item) ?? best;
        node = item;
      } else {
        return best;
      }
    }
    return best;
  }

  /** The YAML path of the innermost key or item that contains a source offset. */
  pathAt(offset: number): SchemaPath {
    const path: SchemaPath = [];
    let node: unknown = this.doc.contents;
    const inside = (n: unknown) => {
      const r = (n as { range?: [number, number, number] } | null)?.range;
      return !!r && offset >= r[0] && offset < Math.max(r[2], r[1]);
    };
    for (;;) {
      if (isMap(node)) {
        const pair = node.items.find((p) => inside(p.key) || inside(p.value));
        if (!pair) return path;
        path.push(String(isScalar(pair.key) ? pair.key.value : pair.key));
        if (inside(pair.key)) return path;
        node = pair.value;
      } else if (isSeq(node)) {
        const index = node.items.findIndex((n) => inside(n));
        if (index < 0) return path;
        path.push(index);
        node = node.items[index];
      } else {
        return path;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Checks that need the whole document. They read the plain value defensively: the schema may
// have refused parts of it, and its problems are reported alongside these.

type Issue = SchemaIssue;

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

interface Bound {
  family: 4 | 6;
  /** Canonical address; "0.0.0.0" / "::" for every address. */
  addr: string;
}

/** Canonical form of a listen host: IPv6 compressed and lowercased, IPv4-mapped IPv6 as IPv4. */
function bound(host: string): Bound {
  if (isIPv4(host)) return { family: 4, addr: host };
  const canon = new URL(`http://[${host.replace(/%.*$/, '')}]/`).hostname.slice(1, -1);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(canon);
  if (mapped) {
    const hi = parseInt(mapped[1]!, 16);
    const lo = parseInt(mapped[2]!, 16);
    return { family: 4, addr: `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}` };
  }
  return { family: 6, addr: canon };
}

/** Why two listen addresses cannot both be bound, or null when they can. */
function listenConflict(a: HostPort, b: HostPort): string | null {
  if (a.port !== b.port) return null;
  const x = bound(a.host);
  const y = bound(b.host);
  if (x.family === y.family && x.addr === y.addr) return 'the same address';
  if (x.family === y.family) {
    const any = x.family === 4 ? '0.0.0.0' : '::';
    if (x.addr === any || y.addr === any) return `${x.family === 4 ? '0.0.0.0' : '[::]'} already covers every IPv${x.family} address on port ${a.port}`;
    return null;
  }
  if (x.addr === '::' || y.addr === '::') return `[::] also accepts IPv4 connections on port ${a.port} (dual-stack, the Linux default)`;
  return null;
}

const showHostPort = (h: HostPort) => `${h.host.includes(':') ? `[${h.host}]` : h.host}:${h.port}`;

function fileProblem(path: string): string | null {
  try {
    if (!statSync(path).isFile()) return `not a regular file: ${path}`;
    accessSync(path, constants.R_OK);
    return null;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return `file not found: ${path}`;
    return `cannot read ${path}${code ? ` (${code})` : ''}`;
  }
}

/** The ticket key file: readable, holding enough key material, and not writable by others. */
function ticketKeyFileProblem(path: string): string | null {
  const missing = fileProblem(path);
  if (missing) return missing;
  const mode = statSync(path).mode & 0o777;
  // Whoever can write it can make every host accept tickets they made; whoever can read it can
  // decrypt every ticket (and so resume sessions): owner-only, like a private key.
  if (mode & 0o077) return `${path} is readable or writable by others (mode 0${mode.toString(8)}): it decrypts every session ticket; chmod 600 ${path}`;
  const parsed = parseTicketSecret(readFileSync(path));
  return parsed.ok ? null : `${path} ${parsed.message}`;
}

function dirProblem(path: string): string | null {
  try {
    if (!statSync(path).isDirectory()) return `not a folder: ${path}`;
    accessSync(path, constants.R_OK | constants.X_OK);
    return null;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return `folder not found: ${path}`;
    return `cannot read ${path}${code ? ` (${code})` : ''}`;
  }
}

/**
 * The file checks of documentChecks, for compiled (absolute) certificate paths: what a
 * certificate-only reload runs without reading postern.yaml again.
 */
export function certificateFileProblems(specs: readonly CertificateSpec[]): Array<{ path: string; message: string }> {
  const out: Array<{ path: string; message: string }> = [];
  for (const spec of specs) {
    if ('dir' in spec && spec.optional) continue;
    const fields: Array<[string, string, 'file' | 'dir']> =
      'dir' in spec ? [['dir', spec.dir, 'dir']] : 'pem' in spec ? [['pem', spec.pem, 'file']] : [['cert', spec.cert, 'file'], ['key', spec.key, 'file']];
    for (const [field, path, kind] of fields) {
      const problem = kind === 'dir' ? dirProblem(path) : fileProblem(path);
      if (problem) out.push({ path: `${spec.path}.${field}`, message: problem });
    }
  }
  return out;
}

function documentChecks(raw: unknown, baseDir: string, line: (path: SchemaPath) => number): Issue[] {
  const issues: Issue[] = [];
  if (!isRecord(raw)) return issues;

  if (Array.isArray(raw.certificates)) {
    raw.certificates.forEach((c: unknown, i) => {
      if (!isRecord(c)) return;
      for (const field of ['cert', 'key', 'pem', 'dir'] as const) {
        const value = c[field];
        if (typeof value !== 'string' || value === '') continue;
        const problem = field === 'dir' ? dirProblem(resolve(baseDir, value)) : fileProblem(resolve(baseDir, value));
        if (problem) issues.push({ path: ['certificates', i, field], message: problem, at: 'value' });
      }
    });
  }

  const tickets = raw.sessionTickets;
  if (isRecord(tickets) && typeof tickets.keyFile === 'string' && tickets.keyFile !== '') {
    const problem = ticketKeyFileProblem(resolve(baseDir, tickets.keyFile));
    if (problem) issues.push({ path: ['sessionTickets', 'keyFile'], message: problem, at: 'value' });
  }

  const acme = raw.acme;
  if (isRecord(acme) && typeof acme.caCertificates === 'string' && acme.caCertificates !== '') {
    const problem = fileProblem(resolve(baseDir, acme.caCertificates));
    if (problem) issues.push({ path: ['acme', 'caCertificates'], message: problem, at: 'value' });
  }

  if (Array.isArray(raw.listeners)) {
    const names = new Map<string, number>();
    const listens: Array<{ index: number; address: HostPort; name: unknown }> = [];
    raw.listeners.forEach((l: unknown, i) => {
      if (!isRecord(l)) return;

      if (typeof l.name === 'string') {
        const first = names.get(l.name);
        if (first === undefined) names.set(l.name, i);
        else issues.push({ path: ['listeners', i, 'name'], message: `duplicate listener name "${l.name}": already used by listeners[${first}] (line ${line(['listeners', first, 'name'])})`, at: 'value' });
      }

      if (typeof l.listen === 'string') {
        const parsed = parseHostPort(l.listen, false);
        if (parsed.ok) {
          for (const other of listens) {
            const why = listenConflict(other.address, parsed.value);
            if (!why) continue;
            const who = `${typeof other.name === 'string' ? `listener "${other.name}"` : 'the listener'} (listeners[${other.index}], line ${line(['listeners', other.index, 'listen'])})`;
            const message =
              why === 'the same address'
                ? `"${l.listen}" is already used by ${who}`
                : `"${l.listen}" conflicts with "${showHostPort(other.address)}" of ${who}: ${why}`;
            issues.push({ path: ['listeners', i, 'listen'], message, at: 'value' });
            break;
          }
          listens.push({ index: i, address: parsed.value, name: l.name });
        }
      }

      if (l.tls === 'implicit') {
        for (const key of STARTTLS_ONLY_KEYS) {
          if (key in l) {
            issues.push({ path: ['listeners', i, key], message: `"${key}" only applies to tls: starttls listeners; this one is tls: implicit`, at: 'key' });
          }
        }
      }
      issues.push(...roleChecks(l, i));
      if ('dane' in l && l.dane === true && l.role !== 'mx') {
        issues.push({ path: ['listeners', i, 'dane'], message: 'dane applies to role: mx listeners only: TLSA records under _25._tcp.<hostname> (RFC 7672) are for mail from other servers on port 25', at: 'key' });
      }
      if (l.tls === 'starttls' && l.protocol === 'tls') {
        issues.push({ path: ['listeners', i, 'tls'], message: 'starttls needs protocol smtp, imap or pop3: protocol tls has no STARTTLS command (use tls: implicit)', at: 'value' });
      }
    });
    // The MTA-STS policy host binds next to the others too.
    const sts = isRecord(raw.mtaSts) && typeof raw.mtaSts.listen === 'string' ? parseHostPort(raw.mtaSts.listen, false) : null;
    if (sts?.ok) {
      for (const other of listens) {
        const why = listenConflict(other.address, sts.value);
        if (!why) continue;
        const who = `${typeof other.name === 'string' ? `listener "${other.name}"` : 'a listener'} (listeners[${other.index}], line ${line(['listeners', other.index, 'listen'])})`;
        issues.push({ path: ['mtaSts', 'listen'], message: `"${String((raw.mtaSts as Record<string, unknown>).listen)}" ${why === 'the same address' ? 'is already used by' : `conflicts (${why}) with`} ${who}`, at: 'value' });
        break;
      }
    }
    // The HTTP-01 listener binds next to the others.
    const http = isRecord(acme) && isRecord(acme.http) && typeof acme.http.listen === 'string' ? parseHostPort(acme.http.listen, false) : null;
    if (http?.ok) {
      for (const other of listens) {
        const why = listenConflict(other.address, http.value);
        if (!why) continue;
        const who = `${typeof other.name === 'string' ? `listener "${other.name}"` : 'a listener'} (listeners[${other.index}], line ${line(['listeners', other.index, 'listen'])})`;
        issues.push({ path: ['acme', 'http', 'listen'], message: `"${String((acme as Record<string, Record<string, unknown>>).http!.listen)}" ${why === 'the same address' ? 'is already used by' : `conflicts (${why}) with`} ${who}`, at: 'value' });
        break;
      }
    }
  }
  return issues;
}

/** What the two roles mean, for the messages below. */
const ROLES_EXPLAINED =
  'role: mx (mail from other servers, usually port 25: plaintext allowed, sni fallback) or role: submission (your users, usually 587 and 465: sni strict, TLS required)';

/**
 * `role` on smtp listeners. The sni and requireTls defaults follow it, never the port number: an
 * MX on 2525 behind `-p 25:2525` is still an MX, and a 530 to a sender without STARTTLS is a
 * permanent error (the mail bounces).
 */
function roleChecks(l: Record<string, unknown>, i: number): Issue[] {
  const at = (key: string, message: string, where: 'key' | 'value' = 'value'): Issue => ({ path: ['listeners', i, key], message, at: where });
  if (l.protocol === 'smtp') {
    if (!('role' in l)) {
      return [at('role', `required for smtp listeners: write ${ROLES_EXPLAINED}. The port number no longer decides the defaults`)];
    }
    if (l.role === 'mx' && l.tls === 'implicit') {
      return [
        at(
          'role',
          'role: mx needs tls: starttls: other servers deliver to an MX on port 25 in plaintext and upgrade with STARTTLS (RFC 3207); SMTP with implicit TLS (port 465) is submission (RFC 8314 section 3.3): write role: submission, or tls: starttls for an MX',
        ),
      ];
    }
    return [];
  }
  if ('role' in l && typeof l.protocol === 'string' && ['imap', 'pop3', 'tls'].includes(l.protocol)) {
    return [at('role', `"role" only applies to protocol: smtp listeners; ${l.protocol === 'imap' ? 'an' : 'a'} ${l.protocol} listener has one role (sni strict${l.protocol === 'tls' ? '' : ', TLS required'}): remove it`, 'key')];
  }
  return [];
}

/**
 * Checks of the compiled configuration, where defaults are filled in: an MTA-STS policy whose
 * mx patterns do not cover every MX listener's hostname would tell senders in enforce mode to
 * refuse delivery to this very host (RFC 8461 section 4.1).
 */
function compiledChecks(config: PosternConfig): Issue[] {
  const out: Issue[] = [];
  const sts = config.mtaSts;
  if (sts) {
    const mxHosts = mxHostnames(config.listeners);
    if (sts.mx.length === 0) {
      out.push({ path: ['mtaSts'], message: 'no mx patterns: there is no role: mx listener to take them from; list them with mx: [mail.example.org]', at: 'key' });
    }
    for (const host of mxHosts) {
      if (sts.mx.length > 0 && !sts.mx.some((p) => mxCovers(p, host))) {
        out.push({
          path: ['mtaSts', 'mx'],
          message: `the policy's mx patterns (${sts.mx.join(', ')}) do not cover "${host}", the hostname of an MX listener: senders that enforce the policy would refuse to deliver here (RFC 8461 section 4.1)`,
          at: 'value',
        });
      }
    }
  }
  return out;
}

/** Valid settings that are probably mistakes; the document compiled without errors. */
function warningsOf(doc: RawDocument): Issue[] {
  const out: Issue[] = [];
  doc.listeners.forEach((l, i) => {
    if (l.role === 'mx' && l.requireTls === true) {
      out.push({
        path: ['listeners', i, 'requireTls'],
        message:
          'requireTls: true on role: mx: senders without STARTTLS get 530 before MAIL, a permanent error, and their mail bounces; RFC 3207 section 4: a publicly-referenced SMTP server must not require STARTTLS. Keep it only if no MX record points here',
        at: 'value',
      });
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Compilation

function compile(doc: RawDocument, file: string): PosternConfig {
  const base = dirname(file);
  const certificates: CertificateSpec[] = (doc.certificates ?? []).map((c, i) => {
    const path = `certificates[${i}]`;
    if (c.dir !== undefined) return { dir: resolve(base, c.dir), path };
    if (c.pem !== undefined) return { pem: resolve(base, c.pem), path };
    return { cert: resolve(base, c.cert!), key: resolve(base, c.key!), path };
  });
  const defaults = {
    maxConnections: doc.limits.maxConnections ?? DEFAULTS.maxConnections,
    maxConnectionsPerClient: doc.limits.maxConnectionsPerClient ?? DEFAULTS.maxConnectionsPerClient,
  };
  const listeners = doc.listeners.map((l, i) => compileListener(l, i, defaults));
  const mtaSts = doc.mtaSts ? compileMtaSts(doc.mtaSts, listeners) : null;
  const acme = doc.acme ? compileAcme(doc.acme, base, listeners, mtaSts) : null;
  // What ACME obtained is served like any certbot folder; nothing issued yet is not an error.
  if (acme) certificates.push({ dir: resolve(acme.storage, 'live'), path: 'acme.storage', optional: true });
  return {
    file,
    log: { level: doc.log.level, format: doc.log.format },
    admin: doc.admin ? { listen: doc.admin.listen } : null,
    backendChecks: { intervalMs: doc.backendChecks.interval },
    shutdown: { drainTimeoutMs: doc.shutdown.drainTimeout },
    workers: doc.workers === 'auto' ? availableParallelism() : doc.workers,
    certificates,
    listeners,
    acme,
    mtaSts,
    sessionTickets: { keyFile: doc.sessionTickets.keyFile === undefined ? null : resolve(base, doc.sessionTickets.keyFile), rotateMs: doc.sessionTickets.rotate },
  };
}

/** The MX listeners' hostnames: what an MTA-STS policy's mx patterns must cover. */
export function mxHostnames(listeners: readonly ListenerConfig[]): string[] {
  return [...new Set(listeners.filter((l) => l.role === 'mx').map((l) => l.hostname))];
}

function compileMtaSts(m: NonNullable<RawDocument['mtaSts']>, listeners: ListenerConfig[]): MtaStsConfig {
  const mx = m.mx ?? mxHostnames(listeners);
  const text = renderPolicy({ mode: m.mode, mx, maxAgeS: m.maxAge });
  return { listen: m.listen, domains: [...new Set(m.domains)], mode: m.mode, mx, maxAgeS: m.maxAge, tlsRpt: m.tlsRpt ?? [], text, id: policyId(text) };
}

function compileAcme(a: NonNullable<RawDocument['acme']>, base: string, listeners: ListenerConfig[], mtaSts: MtaStsConfig | null): AcmeConfig {
  // The policy hosts' names are ordered too: a sender fetches https://mta-sts.<domain>/ and
  // verifies its certificate (RFC 8461 section 3.3).
  const policyHosts = (mtaSts?.domains ?? []).map((d) => `mta-sts.${d}`);
  const names = [...new Set([...(a.hosts ?? []), ...(a.listenerHostnames ? listeners.map((l) => l.hostname) : []), ...policyHosts])];
  return {
    directory: a.directory,
    email: a.email,
    storage: resolve(base, a.storage),
    names,
    keyTypes: [...new Set(a.keyTypes)],
    challenge: a.challenge,
    http: a.http ? { listen: a.http.listen } : null,
    externalAccountBinding: a.externalAccountBinding ? { kid: a.externalAccountBinding.kid, hmacKey: a.externalAccountBinding.hmacKey } : null,
    caCertificates: a.caCertificates === undefined ? null : resolve(base, a.caCertificates),
    retry: { minMs: a.retry.min, maxMs: a.retry.max },
    keepKey: [...new Set(listeners.filter((l) => l.role === 'mx' && l.dane && names.includes(l.hostname)).map((l) => l.hostname))],
    rolloverDelayMs: a.rolloverDelay,
  };
}

function compileListener(l: RawListener, i: number, limits: ListenerConfig['limits']): ListenerConfig {
  return {
    name: l.name,
    listen: l.listen,
    protocol: l.protocol,
    tls: l.tls,
    role: l.protocol === 'smtp' ? (l.role ?? null) : null,
    hostname: l.hostname,
    sni: l.sni ?? defaultSni(l.role ?? null),
    serverNames: l.serverNames ?? null,
    alpn: l.alpn === false ? null : (l.alpn ?? defaultAlpn(l.protocol)),
    minVersion: l.minVersion,
    backend: { address: l.backend.address, proxyProtocol: l.backend.proxyProtocol },
    timeouts: { handshakeMs: l.timeouts.handshake, connectMs: l.timeouts.connect, idleMs: l.timeouts.idle, starttlsMs: l.timeouts.starttls, backendReplyMs: l.timeouts.backendReply },
    limits: { maxConnections: l.limits.maxConnections ?? limits.maxConnections, maxConnectionsPerClient: l.limits.maxConnectionsPerClient ?? limits.maxConnectionsPerClient },
    routes: (l.routes ?? []).map((r, j) => ({ serverNames: r.serverNames, backend: { address: r.backend.address, proxyProtocol: r.backend.proxyProtocol }, path: `listeners[${i}].routes[${j}]` })),
    acceptProxyProtocol: l.acceptProxyProtocol ? { from: l.acceptProxyProtocol.from } : null,
    starttls:
      l.tls === 'starttls'
        ? {
            greeting: l.greeting ?? defaultGreeting(l.protocol, l.hostname),
            requireTls: l.requireTls ?? defaultRequireTls(l.role ?? null),
            probeIntervalMs: l.capabilities.probeInterval,
            fallbackCapabilities: l.capabilities.fallback ?? defaultFallbackCapabilities(l.protocol),
          }
        : null,
    dane: l.dane ?? false,
    path: `listeners[${i}]`,
  };
}

// ---------------------------------------------------------------------------------------------
// Entry points

const byPosition = (a: ConfigError, b: ConfigError) => a.line - b.line || a.col - b.col;

/** Parses, validates and compiles YAML text; `file` names it in messages and anchors relative paths. */
export function loadConfigText(text: string, file: string): LoadResult {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const locator = new Locator(doc, lines);
  const errors: ConfigError[] = [];

  const syntax = doc.errors.filter((e) => e.code !== 'DUPLICATE_KEY');
  for (const e of doc.errors) {
    const { line, col } = lines.linePos(e.pos[0]);
    if (e.code === 'DUPLICATE_KEY') {
      const path = locator.pathAt(e.pos[0]);
      const key = path[path.length - 1];
      errors.push({ file, line, col, path: formatPath(path), message: `duplicate key${key === undefined ? '' : ` "${key}"`}: a key may appear only once in a mapping` });
    } else {
      errors.push({ file, line, col, path: '', message: `YAML syntax error: ${e.message}` });
    }
  }
  // A document with syntax errors has no trustworthy structure; duplicate keys alone do not stop
  // validation (the last value counts for the rest of the checks).
  if (syntax.length > 0) return { ok: false, errors: errors.sort(byPosition) };

  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    errors.push({ file, line: 1, col: 1, path: '', message: `YAML: ${(err as Error).message}` });
    return { ok: false, errors };
  }

  const schema = validateDocument(raw);
  const issues = [...(schema.ok ? [] : schema.issues), ...documentChecks(raw, dirname(resolve(file)), (p) => locator.find(p).line)];
  for (const issue of issues) errors.push({ file, ...locator.find(issue.path, issue.at), path: formatPath(issue.path), message: issue.message });
  if (errors.length > 0 || !schema.ok) return { ok: false, errors: errors.sort(byPosition) };

  const config = compile(schema.value, resolve(file));
  const late = compiledChecks(config);
  if (late.length > 0) return { ok: false, errors: late.map((e) => ({ file, ...locator.find(e.path, e.at), path: formatPath(e.path), message: e.message })).sort(byPosition) };
  const warnings = warningsOf(schema.value).map((w) => ({ file, ...locator.find(w.path, w.at), path: formatPath(w.path), message: w.message }));
  return {
    ok: true,
    loaded: {
      config,
      warnings,
      position: (path) => locator.find(parsePath(path)),
    },
  };
}

/** Reads and loads a file; an unreadable file is one error at 1:1. */
export function loadConfigFile(file: string): LoadResult {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EISDIR' ? 'it is a directory' : (e.code ?? e.message);
    return { ok: false, errors: [{ file, line: 1, col: 1, path: '', message: `cannot read the configuration file ${resolve(file)}: ${why}` }] };
  }
  return loadConfigText(text, file);
}

/** A path under the working directory is shown relative to it; anything else as given. */
function displayFile(file: string): string {
  if (!isAbsolute(file)) return file;
  const rel = relative(process.cwd(), file);
  return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel) ? rel : file;
}

/** `postern.yaml:14:7 listeners[1].sni: expected "strict" or "fallback", got "lenient"` */
export function formatConfigError(e: ConfigError): string {
  return `${displayFile(e.file)}:${e.line}:${e.col} ${e.path === '' ? '' : `${e.path}: `}${e.message}`;
}
