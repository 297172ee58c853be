// The schema of postern.yaml, and the only place defaults live.
//
// Two layers, both here:
// - a zod 4 schema of the raw document: strict objects (unknown keys are errors), value parsers
//   with our own messages (addresses, durations, names), and the defaults that do not depend on
//   anything else (`.prefault`, so that a default goes through the same parser as a written value
//   and shows up in the JSON Schema for editors);
// - the defaults that depend on other fields of the listener (sni and requireTls by role, alpn
//   and capabilities by protocol, greeting by hostname), as functions that src/config/load.ts
//   calls when it compiles. No default depends on the port number: behind `-p 25:2525` an MX
//   listens on 2525, and a default read from the port would turn it into submission.
// Checks that need the whole document (duplicates, conflicts, files) live in load.ts.
import { domainToASCII } from 'node:url';
import { isIPv4, isIPv6 } from 'node:net';
import { z } from 'zod';
import { checkHostName } from '../tls/names.ts';
import type { Cidr, HostPort, Protocol, SmtpRole, SniPolicyName } from './types.ts';
import { parseIPv4, parseIPv6 } from '../net/address.ts';

// ---------------------------------------------------------------------------------------------
// Defaults

export const DEFAULTS = {
  logLevel: 'info',
  logFormat: 'json',
  /**
   * Backend reachability checks for /readyz and postern_backend_up. 30 s, not 10 s: each check is
   * a connect and close in every backend's own log (2,880 lines a day per backend, not 8,640), a
   * real session meets a dead backend at once anyway (backend_unreachable), and 30 s is within
   * what a readiness probe with failureThreshold 2-3 reacts in.
   */
  backendCheckInterval: '30s',
  minVersion: 'TLSv1.2',
  timeouts: { handshake: '10s', connect: '5s', idle: '10m', starttls: '1m', backendReply: '2m' },
  probeInterval: '5m',
  drainTimeout: '30s',
  /** Per listener. Postfix's own per-client default (smtpd_client_connection_count_limit) is 50. */
  maxConnections: 10000,
  maxConnectionsPerClient: 50,
  /** RFC 8555 CA used when `acme.directory` is left out. */
  acmeDirectory: 'https://acme-v02.api.letsencrypt.org/directory',
  acmeChallenge: 'tls-alpn-01',
  acmeKeyTypes: ['ecdsa'],
  /**
   * After a failed order: 5 minutes, doubling to 12 hours. Let's Encrypt counts failed
   * validations (5 per name per hour); a renewal has weeks of slack, so patience costs nothing.
   */
  acmeRetry: { min: '5m', max: '12h' },
  /**
   * Session ticket keys rotate every 12 hours; a ticket stays good for its own period and the
   * next (RFC 8446 section 4.6.1 allows 7 days; shorter keeps the window that a stolen key opens
   * small, longer than a working day keeps mail clients resuming).
   */
  ticketRotate: '12h',
  /** RFC 8461 section 3.2 examples use a week; senders refetch when the TXT id changes anyway. */
  stsMaxAge: '7d',
  /** Start in testing (reports only), as RFC 8461 section 3.2 and every guide advise. */
  stsMode: 'testing',
  /** Two TTLs of a 1-hour TLSA record: every resolver has the new record before the key is used. */
  rolloverDelay: '2h',
} as const;

/** Capabilities announced before TLS when the backend probe fails. */
export const DEFAULT_FALLBACK_CAPABILITIES: Readonly<Record<Exclude<Protocol, 'tls'>, readonly string[]>> = {
  smtp: ['PIPELINING', 'SIZE 10240000', '8BITMIME', 'ENHANCEDSTATUSCODES', 'SMTPUTF8', 'CHUNKING'],
  imap: ['IMAP4rev1', 'LITERAL+', 'SASL-IR', 'ID', 'ENABLE', 'IDLE', 'AUTH=PLAIN'],
  pop3: ['TOP', 'UIDL', 'RESP-CODES', 'PIPELINING', 'USER', 'SASL PLAIN'],
};

/**
 * By the listener's role (null: imap, pop3, tls, which have the one role "your users").
 * `fallback` for an MX: senders send no SNI or the wrong one, and RFC 8461 section 5 asks a
 * receiver to serve its certificate anyway. `strict` for everything else: submission clients
 * (RFC 6409, RFC 8314) and IMAP/POP3 clients are configured with the server's name.
 */
export function defaultSni(role: SmtpRole | null): SniPolicyName {
  return role === 'mx' ? 'fallback' : 'strict';
}

/** The protocol's own ALPN id (RFC 7301 registry: smtp, imap, pop3); none for plain `tls`. */
export function defaultAlpn(protocol: Protocol): string[] | null {
  return protocol === 'tls' ? null : [protocol];
}

/**
 * RFC 3207 section 4: a publicly-referenced SMTP server (an MX) must not require TLS, or mail
 * from senders without STARTTLS bounces (530 is a permanent error). Everything else (submission,
 * RFC 8314 section 3.3; IMAP and POP3, RFC 8314 section 3.2) requires it.
 */
export function defaultRequireTls(role: SmtpRole | null): boolean {
  return role !== 'mx';
}

/** Text after `220 ` (SMTP), `* OK [CAPABILITY ...] ` (IMAP) or `+OK ` (POP3). */
export function defaultGreeting(protocol: Protocol, hostname: string): string {
  return protocol === 'smtp' ? `${hostname} ESMTP` : 'ready';
}

export function defaultFallbackCapabilities(protocol: Protocol): string[] {
  return protocol === 'tls' ? [] : [...DEFAULT_FALLBACK_CAPABILITIES[protocol]];
}

// ---------------------------------------------------------------------------------------------
// Value parsers: pure, each with its own messages. Exported for load.ts and the tests.

export type Parsed<T> = { ok: true; value: T } | { ok: false; message: string };
const ok = <T>(value: T): Parsed<T> => ({ ok: true, value });
const bad = (message: string): Parsed<never> => ({ ok: false, message });

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
/** setTimeout's ceiling: longer timers fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;
export const DURATION_HINT = 'use a unit, e.g. 10s (units: ms, s, m, h, d)';

/** "250ms" | "10s" | "5m" | "1h" | "1d" -> milliseconds. */
export function parseDuration(text: string): Parsed<number> {
  if (/^\d+(\.\d+)?$/.test(text.trim())) return bad(`got a bare number (${text}): ${DURATION_HINT}`);
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(text);
  if (!m) return bad(`expected a duration such as 250ms, 10s, 5m, 1h or 1d, got ${JSON.stringify(text)}`);
  const ms = Number(m[1]) * UNITS[m[2]!]!;
  if (ms === 0) return bad(`expected a duration greater than zero, got ${JSON.stringify(text)}`);
  if (ms > MAX_TIMER_MS) return bad(`${JSON.stringify(text)} is too long: at most 24d`);
  return ok(ms);
}

/**
 * MTA-STS max_age, in seconds: a duration like the others but not bound by setTimeout, up to
 * RFC 8461 section 3.2's 31557600 seconds.
 */
export function parseMaxAge(text: string): Parsed<number> {
  const m = /^(\d+)(s|m|h|d)$/.exec(text);
  if (!m) return bad(`expected a duration such as 7d or 86400s, got ${JSON.stringify(text)}`);
  const s = (Number(m[1]) * UNITS[m[2]!]!) / 1000;
  if (s <= 0) return bad('expected a duration greater than zero');
  if (s > 31_557_600) return bad(`${JSON.stringify(text)} is longer than RFC 8461 allows (31557600 s, about 365 days)`);
  return ok(s);
}

/** Shortest backend check interval: more often is load on the backends, not information. */
export const MIN_BACKEND_CHECK_MS = 1000;
export const BACKEND_CHECK_HINT = 'expected a duration such as 30s, or off to turn the checks off';

/** `backendChecks.interval`: a duration of at least 1s, or off (YAML `off` or `false`). */
export function parseCheckInterval(value: string | false): Parsed<number | null> {
  if (value === false || value === 'off') return ok(null);
  const d = parseDuration(value);
  if (!d.ok) return bad(`${d.message}; or off to turn the checks off`);
  if (d.value < MIN_BACKEND_CHECK_MS) return bad(`${JSON.stringify(value)} is too often: at least 1s (each check is a connection in the backend's log), or off`);
  return ok(d.value);
}

export const LISTEN_EXAMPLE = 'expected host:port, e.g. "0.0.0.0:465" or "[::]:465"';
export const BACKEND_EXAMPLE = 'expected host:port, e.g. "127.0.0.1:10465", "[::1]:10465" or "postfix:10465"';
const HOST_LABEL = /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/i;

/**
 * "10.0.0.0/8", "2001:db8::/32", or a single address (a /32 or /128). Addresses are read by the
 * one IP module (src/net/address.ts): strict dotted quads, RFC 4291 IPv6, no zone ids. A network
 * written in IPv4-mapped form (::ffff:10.0.0.0/104) stays IPv6 here; inNetworks treats it as the
 * IPv4 network it names.
 */
export function parseCidr(text: string): Parsed<Cidr> {
  const [addr = '', len, ...rest] = text.split('/');
  if (addr.includes('%')) return bad(`"${text}" is not a network: a zone id (%...) names an interface, not a network`);
  const v4 = parseIPv4(addr);
  const v6 = v4 ? null : parseIPv6(addr);
  const bytes = v4 ?? v6;
  if (!bytes || rest.length > 0) return bad(`"${text}" is not a network: expected an address with an optional /prefix, e.g. "10.0.0.0/8"`);
  const family = v4 ? 4 : 6;
  const max = family === 4 ? 32 : 128;
  const prefix = len === undefined ? max : /^\d{1,3}$/.test(len) ? Number(len) : NaN;
  if (!(prefix >= 0 && prefix <= max)) return bad(`"${text}": the prefix must be 0-${max}`);
  return ok({ text, family, bytes, prefix });
}

/**
 * "IPv4:port" or "[IPv6]:port"; with `allowHostName` (backends) also "name:port", so that docker
 * compose service names work. The host comes back without brackets.
 */
export function parseHostPort(text: string, allowHostName: boolean): Parsed<HostPort> {
  const example = allowHostName ? BACKEND_EXAMPLE : LISTEN_EXAMPLE;
  let host: string;
  let portText: string;
  if (text.startsWith('[')) {
    const end = text.indexOf(']');
    if (end < 0 || text[end + 1] !== ':') return bad(`${example}, got ${JSON.stringify(text)}`);
    host = text.slice(1, end);
    portText = text.slice(end + 2);
    if (!isIPv6(host)) return bad(`"${host}" is not an IPv6 address: ${example}`);
  } else {
    const colon = text.lastIndexOf(':');
    if (colon < 0) return bad(`${example}, got ${JSON.stringify(text)} (${/^\d+$/.test(text) ? 'no address' : 'no port'})`);
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(':')) {
      return isIPv6(host) ? bad(`an IPv6 address needs brackets: "[${host}]:${portText}"`) : bad(`${example}, got ${JSON.stringify(text)}`);
    }
    if (host === '') return bad(`${example}, got ${JSON.stringify(text)} (no host; "0.0.0.0" or "[::]" means every address)`);
    if (!isIPv4(host)) {
      if (/^[\d.]+$/.test(host)) return bad(`"${host}" is not a valid IPv4 address`);
      if (!allowHostName) return bad(`"${host}" is not an IP address: listen takes an address to bind, e.g. "0.0.0.0:465" or "[::]:465"; host names are not allowed here`);
      if (host.length > 253 || !host.split('.').every((l) => HOST_LABEL.test(l))) return bad(`"${host}" is not an IP address or a host name: ${example}`);
      host = host.toLowerCase();
    }
  }
  if (!/^\d+$/.test(portText)) return bad(`${example}, got ${JSON.stringify(text)} (the port must be a number)`);
  const port = Number(portText);
  if (port < 1 || port > 65535) return bad(`port ${portText} is out of range (1-65535)`);
  return ok({ host, port });
}

/** How a host name is refused, in words. */
function nameProblem(input: string, ascii: string): string | null {
  const c = checkHostName(ascii);
  if (c.ok) return null;
  switch (c.reason) {
    case 'no_dot':
      return `"${input}" has no dot: expected a fully qualified name such as mail.example.org`;
    case 'too_long':
      return `"${input}" is longer than 253 characters`;
    case 'bad_label':
      return `"${input}" has an empty label or a label longer than 63 characters`;
    case 'ip_literal':
      return `"${input}" is an IP address: expected a DNS name such as mail.example.org`;
    default:
      return `"${input}" is not a valid DNS name (letters, digits, "-" and dots only)`;
  }
}

/** A DNS host name: lowercased, Unicode converted to A-labels, no trailing dot, no wildcard. */
export function parseDnsName(input: string): Parsed<string> {
  if (input === '') return bad('expected a DNS name such as mail.example.org, got an empty string');
  if (input.includes('*')) return bad(`"${input}": a wildcard is not allowed here; give the exact name`);
  if (input.endsWith('.')) return bad(`"${input}": remove the trailing dot`);
  if (isIPv4(input) || isIPv6(input) || input.startsWith('[')) return bad(`"${input}" is an IP address: expected a DNS name such as mail.example.org`);
  const ascii = domainToASCII(input);
  if (ascii === '') return bad(`"${input}" is not a valid DNS name`);
  const problem = nameProblem(input, ascii);
  return problem ? bad(problem) : ok(ascii);
}

/** An exact name or a "*.domain" pattern (the wildcard is the whole leftmost label). */
export function parseServerName(input: string): Parsed<string> {
  if (!input.includes('*')) return parseDnsName(input);
  if (!input.startsWith('*.') || input.slice(2).includes('*')) {
    return bad(`"${input}": partial wildcards are not supported; a wildcard is a whole leftmost label, as in "*.example.org" (RFC 6125 section 7.2)`);
  }
  const rest = input.slice(2);
  if (!rest.replace(/\.$/, '').includes('.')) return bad(`"${input}": a wildcard must sit below a domain of at least two labels`);
  const parent = parseDnsName(rest);
  if (!parent.ok) return bad(`"${input}": ${parent.message}`);
  return ok(`*.${parent.value}`);
}

export const NAME_RULE = 'lowercase letters, digits, "-" and "_", starting with a letter or digit';

// ---------------------------------------------------------------------------------------------
// The zod schema of the raw document

/** What a YAML value is, in words, for "got ..." in messages. */
export function describeValue(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'an empty value';
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return typeof v;
}

/** A string field whose value goes through `parse`; `typeError` for YAML numbers, booleans... */
function parsedString<T>(parse: (s: string) => Parsed<T>, typeError: (input: unknown) => string) {
  return z
    .string({ error: (iss) => (iss.input === undefined ? undefined : typeError(iss.input)) })
    .transform((s, ctx): T => {
      const r = parse(s);
      if (r.ok) return r.value;
      ctx.issues.push({ code: 'custom', message: r.message, input: s });
      return z.NEVER;
    });
}

const duration = parsedString(parseDuration, (input) =>
  typeof input === 'number' ? `got a bare number (${input}): ${DURATION_HINT}` : `expected a duration such as 10s, got ${describeValue(input)}`,
).meta({ description: 'A duration with a unit: 250ms, 10s, 5m, 1h, 1d', pattern: '^[0-9]+(ms|s|m|h|d)$' });

const checkInterval = z
  .union([z.literal(false), z.string()], {
    error: (iss) => (iss.input === undefined ? undefined : `${BACKEND_CHECK_HINT}, got ${describeValue(iss.input)}`),
  })
  .transform((v, ctx): number | null => {
    const r = parseCheckInterval(v);
    if (r.ok) return r.value;
    ctx.issues.push({ code: 'custom', message: r.message, input: v });
    return z.NEVER;
  })
  .meta({ description: `How often every backend is checked (a TCP connect with a PROXY header, then close): a duration of at least 1s, or off (default ${DEFAULTS.backendCheckInterval})` });

const listenAddress = parsedString(
  (s) => parseHostPort(s, false),
  (input) => `${LISTEN_EXAMPLE}, got ${describeValue(input)}`,
).meta({ description: 'IPv4:port or [IPv6]:port to bind; no host names' });

const backendAddress = parsedString(
  (s) => parseHostPort(s, true),
  (input) => `${BACKEND_EXAMPLE}, got ${describeValue(input)}`,
).meta({ description: 'IPv4:port, [IPv6]:port or hostname:port' });

const dnsName = parsedString(parseDnsName, (input) => `expected a DNS name such as mail.example.org, got ${describeValue(input)}`).meta({
  description: "This listener's own DNS name (no wildcard, no trailing dot)",
});

const serverName = parsedString(parseServerName, (input) => `expected a name or "*.domain" pattern, got ${describeValue(input)}`);

const listenerName = parsedString(
  (s) => (/^[a-z0-9][a-z0-9_-]*$/.test(s) ? ok(s) : bad(`expected a name of ${NAME_RULE} (it is used as a metric label), got ${JSON.stringify(s)}`)),
  (input) => `expected a name of ${NAME_RULE}, got ${describeValue(input)}`,
).meta({ description: `Unique listener name: ${NAME_RULE}; used in logs and metrics`, pattern: '^[a-z0-9][a-z0-9_-]*$' });

const alpnProtocol = parsedString(
  (s) => {
    const bytes = Buffer.byteLength(s);
    return bytes >= 1 && bytes <= 255 ? ok(s) : bad(`an ALPN protocol name is 1 to 255 bytes, got ${bytes}`);
  },
  (input) => `expected an ALPN protocol name such as "smtp" or "h2", got ${describeValue(input)}`,
);

function oneLine(what: string, max: number) {
  return (s: string): Parsed<string> => {
    if (s === '') return bad(`${what} must not be empty`);
    if (!/^[\x20-\x7e]*$/.test(s)) return bad(`${what} must be printable ASCII on one line, got ${JSON.stringify(s)}`);
    if (s.length > max) return bad(`${what} is longer than ${max} characters`);
    return ok(s);
  };
}

const greeting = parsedString(oneLine('the greeting', 400), (input) => `expected the greeting text, got ${describeValue(input)}`).meta({
  description: 'Text after "220 " (SMTP), "* OK [CAPABILITY ...] " (IMAP) or "+OK " (POP3). Default: "<hostname> ESMTP" for smtp, "ready" for imap and pop3',
});

const capability = parsedString(oneLine('a capability', 400), (input) => `expected a capability such as "PIPELINING", got ${describeValue(input)}`);

function pathField(what: string) {
  return parsedString(
    (s) => (s === '' ? bad(`expected the path of the ${what} file, got an empty string`) : ok(s)),
    (input) => `expected the path of the ${what} file, got ${describeValue(input)}`,
  );
}

function oneOf<const T extends readonly [string, ...string[]]>(values: T, hint?: (input: unknown) => string | undefined) {
  return z.enum(values, { error: (iss) => hint?.(iss.input) });
}

/**
 * No default, on purpose. With `none` the backend sees every client as postern's own address
 * (127.0.0.1), and Postfix counts 127.0.0.0/8 as mynetworks: picked by accident, that is an open
 * relay. The admin has to choose.
 */
export const PROXY_PROTOCOL_HINT =
  'choose none, v1 or v2 explicitly: there is no default because with none the backend sees every client as postern\'s own address, and Postfix treats 127.0.0.0/8 as mynetworks (an open relay if chosen by accident)';

const proxyProtocol = oneOf(['none', 'v1', 'v2'], (input) => (input === undefined ? `required but missing: ${PROXY_PROTOCOL_HINT}` : undefined)).meta({
  description: `PROXY protocol header sent to the backend. Required: ${PROXY_PROTOCOL_HINT}`,
});

/**
 * Three ways to name certificates: a {cert, key} pair; {dir} with the certbot `live/` layout (one
 * subfolder per certificate, each with fullchain.pem and privkey.pem); {pem}, one file holding
 * the key, the certificate and its chain (HAProxy and hitch style).
 */
const certificateSchema = z
  .strictObject({
    cert: pathField('certificate').optional().meta({ description: 'PEM certificate (leaf first, then the chain), relative to this file; with key' }),
    key: pathField('private key').optional().meta({ description: 'PEM private key, relative to this file; with cert' }),
    dir: pathField('certificate folder').optional().meta({ description: 'A certbot live/ folder: every subfolder with fullchain.pem and privkey.pem is loaded' }),
    pem: pathField('combined PEM').optional().meta({ description: 'One file with the private key, the certificate and its chain' }),
  })
  .superRefine((c, ctx) => {
    const forms = [c.cert !== undefined || c.key !== undefined, c.dir !== undefined, c.pem !== undefined].filter(Boolean).length;
    if (forms !== 1) ctx.addIssue({ code: 'custom', message: 'give either cert and key, or dir (a certbot live/ folder), or pem (key, certificate and chain in one file)' });
    else if ((c.cert === undefined) !== (c.key === undefined)) ctx.addIssue({ code: 'custom', path: [c.cert === undefined ? 'cert' : 'key'], message: `required but missing: ${c.cert === undefined ? 'cert goes with key' : 'key goes with cert'}` });
  });

const timeoutsSchema = z
  .strictObject({
    handshake: duration.prefault(DEFAULTS.timeouts.handshake).meta({ description: 'From accept to a finished TLS handshake (default 10s)' }),
    connect: duration.prefault(DEFAULTS.timeouts.connect).meta({ description: 'Backend TCP connect (default 5s)' }),
    idle: duration.prefault(DEFAULTS.timeouts.idle).meta({ description: 'No bytes either way for this long closes the connection (default 10m)' }),
    starttls: duration.prefault(DEFAULTS.timeouts.starttls).meta({ description: 'STARTTLS listeners: from accept to the STARTTLS command, absolute (default 1m)' }),
    backendReply: duration.prefault(DEFAULTS.timeouts.backendReply).meta({
      description:
        "STARTTLS and handoff sessions: the longest postern waits for a backend reply it holds the client's bytes for (the greeting, SMTP 354, IMAP \"+\", replies to pipelined commands); client bytes never extend it (default 2m)",
    }),
  })
  .prefault({});

const count = z
  .number({ error: (iss) => (iss.input === undefined ? undefined : `expected a whole number, got ${describeValue(iss.input)}`) })
  .int({ error: 'expected a whole number' })
  .min(1, { error: 'expected at least 1' });

/** Listener limits; a listener without its own takes the top-level `limits`. */
const limitsSchema = z.strictObject({
  maxConnections: count.optional().meta({ description: `Open connections per listener (default ${DEFAULTS.maxConnections}); excess: SMTP 421 4.7.0, others closed` }),
  maxConnectionsPerClient: count.optional().meta({ description: `Open connections per client address, IPv6 per /64 (default ${DEFAULTS.maxConnectionsPerClient})` }),
});

const cidr = parsedString(parseCidr, (input) => `expected a network such as "10.0.0.0/8" or "2001:db8::/32", got ${describeValue(input)}`);

const backendSchema = z.strictObject({ address: backendAddress, proxyProtocol });

const routeSchema = z.strictObject({
  serverNames: z.array(serverName).min(1, { error: 'a route needs at least one name' }).meta({ description: 'SNI names or *.domain patterns this route serves' }),
  backend: backendSchema,
});

const capabilitiesSchema = z
  .strictObject({
    probeInterval: duration.prefault(DEFAULTS.probeInterval).meta({ description: "How often the backend's capabilities are probed (default 5m)" }),
    fallback: z.array(capability).optional().meta({ description: 'Announced when the probe fails; default per protocol' }),
  })
  .prefault({});

/** Keys that only mean something for `tls: starttls`. */
export const STARTTLS_ONLY_KEYS = ['greeting', 'requireTls', 'capabilities'] as const;

const listenerSchema = z.strictObject({
  name: listenerName,
  listen: listenAddress,
  protocol: oneOf(['smtp', 'imap', 'pop3', 'tls']).meta({ description: 'What the clients speak: smtp, imap, pop3, or tls (any TLS service, piped as it is)' }),
  role: oneOf(['mx', 'submission'])
    .optional()
    .meta({
      description:
        'protocol: smtp only, and required there. mx: mail from other servers (sni fallback, requireTls false: RFC 3207 section 4, RFC 8461 section 5); submission: your users (sni strict, requireTls true: RFC 6409, RFC 8314). The port number decides nothing',
    }),
  tls: oneOf(['implicit', 'starttls']).meta({ description: 'implicit (TLS from the first byte: 465, 993, 995, 443) or starttls (postern speaks the plaintext dialogue up to STARTTLS: 25, 587, 143, 110)' }),
  hostname: dnsName,
  sni: oneOf(['strict', 'fallback']).optional().meta({ description: 'Default by role: fallback for role: mx, strict otherwise (submission, imap, pop3, tls)' }),
  serverNames: z
    .array(serverName)
    .min(1, { error: 'an empty list allows no name: leave serverNames out to allow every loaded certificate' })
    .optional()
    .meta({ description: 'Names this listener may serve (exact or *.domain); default: any loaded certificate' }),
  alpn: z
    .union([z.literal(false), z.array(alpnProtocol).min(1, { error: 'an empty list would refuse every client that offers ALPN: write false to turn ALPN handling off' })], {
      error: (iss) => (iss.code === 'invalid_union' ? `expected a list of ALPN protocol names, or false for no ALPN handling, got ${describeValue(iss.input)}` : undefined),
    })
    .optional()
    .meta({ description: 'Acceptable ALPN protocols in preference order, or false. Default: [smtp], [imap], [pop3] by protocol; none for tls' }),
  minVersion: oneOf(['TLSv1.2', 'TLSv1.3']).prefault(DEFAULTS.minVersion).meta({ description: 'Lowest TLS version accepted (default TLSv1.2)' }),
  backend: backendSchema.meta({ description: 'Where the plaintext goes: address and PROXY protocol version' }),
  routes: z.array(routeSchema).optional().meta({ description: 'SNI-based backends: the first route whose serverNames cover the SNI wins, the listener backend otherwise' }),
  acceptProxyProtocol: z
    .strictObject({ from: z.array(cidr).min(1, { error: 'list the load balancer networks that send PROXY headers' }) })
    .optional()
    .meta({ description: 'postern behind an L4 load balancer: a PROXY v1/v2 header is required from these networks and refused from all others' }),
  limits: limitsSchema.prefault({}).meta({ description: "This listener's connection limits; unset values come from the top-level limits" }),
  timeouts: timeoutsSchema.meta({ description: 'Deadlines of this listener\'s sessions' }),
  greeting: greeting.optional(),
  requireTls: z
    .boolean()
    .optional()
    .meta({ description: 'Refuse commands that need TLS before STARTTLS. Default by role: false for role: mx (RFC 3207 section 4), true otherwise (submission, imap, pop3)' }),
  capabilities: capabilitiesSchema.meta({ description: 'STARTTLS listeners: how the backend\'s capabilities are learned for the pre-TLS dialogue' }),
  dane: z
    .boolean()
    .optional()
    .meta({ description: 'role: mx only: you publish TLSA records (DANE, RFC 7672) for this hostname. postern prints them (postern records), treats a key change as an alarm, and ACME keeps the key across renewals. Default false' }),
});

/**
 * `acme:`. Names come from the file only (hosts and listener hostnames), never from a
 * ClientHello: a CA order for a name a client merely asked for would let anyone make postern
 * spend the account's rate limits (and, with a wildcard DNS record, obtain certificates for
 * arbitrary names). Wildcards need DNS-01, which postern does not do.
 */
const acmeHost = parsedString(
  (s) => (s.startsWith('*.') ? bad(`"${s}": a wildcard needs the DNS-01 challenge, which postern does not answer (TLS-ALPN-01 and HTTP-01 validate one name each, RFC 8737 section 3, RFC 8555 section 8.3); list each name`) : parseDnsName(s)),
  (input) => `expected a DNS name such as mail.example.org, got ${describeValue(input)}`,
);

const acmeSchema = z
  .strictObject({
    directory: parsedString(
      (s) => {
        let u: URL;
        try {
          u = new URL(s);
        } catch {
          return bad(`expected the CA's directory URL, e.g. ${DEFAULTS.acmeDirectory}, got ${JSON.stringify(s)}`);
        }
        return u.protocol === 'https:' ? ok(u.href) : bad(`the directory must be an https:// URL (RFC 8555 section 6.1), got ${JSON.stringify(s)}`);
      },
      (input) => `expected the CA's directory URL, got ${describeValue(input)}`,
    )
      .prefault(DEFAULTS.acmeDirectory)
      .meta({ description: `The CA's RFC 8555 directory URL (default Let's Encrypt: ${DEFAULTS.acmeDirectory})` }),
    email: parsedString(
      (s) => (/^[^\s@<>]+@[^\s@<>]+\.[^\s@<>]+$/.test(s) ? ok(s) : bad(`expected an email address such as postmaster@example.org, got ${JSON.stringify(s)}`)),
      (input) => `expected an email address, got ${describeValue(input)}`,
    ).meta({ description: 'Contact address for the CA account (expiry warnings, policy changes)' }),
    termsOfServiceAgreed: z
      .literal(true, { error: (iss) => (iss.input === undefined ? "required: write termsOfServiceAgreed: true after reading the CA's terms of service (postern agrees to them in your name)" : "must be true: postern cannot open a CA account unless you agree to the CA's terms of service") })
      .meta({ description: "true: you have read and agree to the CA's terms of service (required)" }),
    storage: pathField('ACME storage folder').meta({ description: 'Folder for the account key and certificates (live/<name>/fullchain.pem + privkey.pem, the certbot layout), relative to this file' }),
    hosts: z.array(acmeHost).optional().meta({ description: 'Names to obtain certificates for, besides the listener hostnames; never taken from a client\'s SNI' }),
    listenerHostnames: z.boolean().prefault(true).meta({ description: "Add every listener's hostname to the names (default true)" }),
    keyTypes: z
      .array(oneOf(['ecdsa', 'rsa']))
      .min(1, { error: 'list at least one key type: ecdsa, rsa' })
      .prefault([...DEFAULTS.acmeKeyTypes])
      .meta({ description: 'One certificate per key type for each name: ecdsa (P-256), rsa (2048); both are served from one name (default [ecdsa])' }),
    challenge: oneOf(['tls-alpn-01', 'http-01'])
      .prefault(DEFAULTS.acmeChallenge)
      .meta({ description: 'tls-alpn-01 (RFC 8737: the CA connects to port 443, answered by any listener that sees ALPN acme-tls/1) or http-01 (RFC 8555 section 8.3: the CA fetches http://<name>/.well-known/acme-challenge/ on port 80, answered by acme.http). Default tls-alpn-01' }),
    http: z
      .strictObject({ listen: listenAddress })
      .optional()
      .meta({ description: 'Plain HTTP listener for the http-01 challenge: serves only /.well-known/acme-challenge/, 404 for everything else. The CA connects to port 80' }),
    externalAccountBinding: z
      .strictObject({
        kid: z.string().min(1).meta({ description: 'Key identifier from the CA' }),
        hmacKey: z.string().regex(/^[A-Za-z0-9_-]+={0,2}$/, { error: 'expected the base64url MAC key from the CA' }).meta({ description: 'base64url HMAC key from the CA' }),
      })
      .optional()
      .meta({ description: 'External Account Binding (RFC 8555 section 7.3.4) for CAs that require one (ZeroSSL, Google, Sectigo)' }),
    caCertificates: pathField('CA certificates').optional().meta({ description: "PEM file of extra roots trusted for the CA's HTTPS API (a private CA such as step-ca); default: the system's" }),
    retry: z
      .strictObject({
        min: duration.prefault(DEFAULTS.acmeRetry.min).meta({ description: `First wait after a failed order (default ${DEFAULTS.acmeRetry.min}); doubles after each failure` }),
        max: duration.prefault(DEFAULTS.acmeRetry.max).meta({ description: `Longest wait between attempts (default ${DEFAULTS.acmeRetry.max})` }),
      })
      .prefault({})
      .meta({ description: 'Backoff after a failed order or renewal; the current certificate is served meanwhile' }),
    rolloverDelay: duration
      .prefault(DEFAULTS.rolloverDelay)
      .meta({ description: `DANE key rollover (postern acme rollover): the next key is used this long after its TLSA record was printed; at least two TTLs of your _25._tcp records (default ${DEFAULTS.rolloverDelay})` }),
  })
  .meta({ description: 'Built-in ACME: postern obtains and renews the certificates of the listed names itself' });

export const documentSchema = z
  .strictObject({
    log: z
      .strictObject({
        level: oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).prefault(DEFAULTS.logLevel),
        format: oneOf(['json', 'text'])
          .prefault(DEFAULTS.logFormat)
          .meta({ description: `json: one JSON object per line; text: "<time> <LEVEL> <message> key=value ..." per line (default ${DEFAULTS.logFormat}). Both on stdout` }),
      })
      .prefault({}),
    certificates: z
      .array(certificateSchema)
      .min(1, { error: 'at least one certificate is required (or leave certificates out and use acme)' })
      .optional()
      .meta({ description: 'Certificates ({cert, key}, {dir} or {pem}); the names each serves come from its SANs. Optional with acme' }),
    acme: acmeSchema.optional(),
    listeners: z.array(listenerSchema).min(1, { error: 'at least one listener is required' }),
    admin: z.strictObject({ listen: listenAddress }).optional().meta({ description: 'HTTP endpoint with /metrics, /healthz and /readyz; off when absent' }),
    backendChecks: z
      .strictObject({ interval: checkInterval.prefault(DEFAULTS.backendCheckInterval) })
      .prefault({})
      .meta({ description: 'Backend reachability checks behind /readyz and postern_backend_up; with interval: off, /readyz does not consider backends' }),
    shutdown: z.strictObject({ drainTimeout: duration.prefault(DEFAULTS.drainTimeout) }).prefault({}).meta({ description: 'On SIGTERM: stop accepting, let sessions finish up to drainTimeout (default 30s)' }),
    limits: limitsSchema.prefault({}).meta({ description: 'Defaults for every listener\'s limits' }),
    mtaSts: z
      .strictObject({
        listen: listenAddress.meta({ description: 'Where the HTTPS policy host listens (the senders fetch https://mta-sts.<domain>/.well-known/mta-sts.txt on port 443)' }),
        domains: z.array(dnsName).min(1, { error: 'list at least one mail domain' }).meta({ description: 'Mail domains with a policy; postern serves mta-sts.<domain> for each' }),
        mode: oneOf(['enforce', 'testing', 'none']).prefault(DEFAULTS.stsMode).meta({ description: `enforce, testing (reports only) or none (withdraws the policy) (default ${DEFAULTS.stsMode})` }),
        mx: z.array(serverName).min(1).optional().meta({ description: 'mx patterns of the policy (names or *.domain); default: the hostnames of the role: mx listeners' }),
        maxAge: parsedString(parseMaxAge, (input) => `expected a duration such as 7d, got ${describeValue(input)}`)
          .prefault(DEFAULTS.stsMaxAge)
          .meta({ description: `max_age of the policy: a duration in s, m, h or d (default ${DEFAULTS.stsMaxAge}, at most 365d)` }),
        tlsRpt: z
          .array(
            parsedString(
              (s) => (/^(mailto:[^\s,;!]+@[^\s,;!]+|https:\/\/[^\s,;!]+)$/.test(s) ? ok(s) : bad(`expected a mailto: or https: URI, e.g. mailto:tlsrpt@example.org, got ${JSON.stringify(s)}`)),
              (input) => `expected a mailto: or https: URI, got ${describeValue(input)}`,
            ),
          )
          .optional()
          .meta({ description: 'TLS-RPT (RFC 8460) report addresses: postern records prints the _smtp._tls TXT record with them' }),
      })
      .optional()
      .meta({ description: 'MTA-STS (RFC 8461): postern serves the policy over HTTPS itself and prints the DNS records to publish' }),
    sessionTickets: z
      .strictObject({
        keyFile: pathField('session ticket key')
          .optional()
          .meta({ description: 'File with the secret ticket keys are derived from (at least 32 bytes, raw or base64: openssl rand -base64 48). Hosts behind one load balancer share it to resume each other\'s sessions. Default: a random secret per start, shared by the workers' }),
        rotate: duration.prefault(DEFAULTS.ticketRotate).meta({ description: `How often the ticket key changes; tickets of the previous period are still accepted (default ${DEFAULTS.ticketRotate})` }),
      })
      .prefault({})
      .meta({ description: 'TLS session resumption (tickets): resumes across workers, reloads and, with a shared keyFile, hosts; never across listeners whose policies differ' }),
    workers: z
      .union([z.literal('auto'), count], { error: (iss) => (iss.code === 'invalid_union' ? `expected "auto" or a number of processes, got ${describeValue(iss.input)}` : undefined) })
      .prefault(1)
      .meta({ description: 'Worker processes sharing the listeners: a number, or auto for one per CPU (default 1)' }),
  })
  .superRefine((doc, ctx) => {
    if (doc.certificates === undefined && doc.acme === undefined) {
      ctx.addIssue({ code: 'custom', path: ['certificates'], message: 'required but missing: list certificates, or configure acme to obtain them' });
    }
    if (doc.acme?.challenge === 'http-01' && doc.acme.http === undefined) {
      ctx.addIssue({ code: 'custom', path: ['acme', 'http'], message: 'required for challenge: http-01: write http: { listen: "0.0.0.0:80" } (the CA fetches the challenge over plain HTTP on port 80)' });
    }
    const r = doc.acme?.retry;
    if (r && r.min > r.max) ctx.addIssue({ code: 'custom', path: ['acme', 'retry', 'min'], message: 'must not be longer than retry.max' });
  })
  .meta({ title: 'postern configuration' });

export type RawDocument = z.output<typeof documentSchema>;
export type RawListener = z.output<typeof listenerSchema>;

/** JSON Schema (draft 2020-12) of postern.yaml, for editors (yaml-language-server). */
export function configJsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(documentSchema, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
}

// ---------------------------------------------------------------------------------------------
// Validation with our own messages

export type SchemaPath = Array<string | number>;

export interface SchemaIssue {
  path: SchemaPath;
  message: string;
  /** Where in the YAML the issue points: the value at `path`, or the key that names it. */
  at: 'value' | 'key';
}

const TYPE_WORDS: Record<string, string> = {
  string: 'a string',
  number: 'a number',
  boolean: 'true or false',
  object: 'a mapping (key: value)',
  array: 'a list',
};

function quoteList(values: readonly unknown[]): string {
  const q = values.map((v) => JSON.stringify(v));
  return q.length <= 1 ? (q[0] ?? '') : `${q.slice(0, -1).join(', ')} or ${q[q.length - 1]}`;
}

/** Messages for the issues no field-level `error` answered. */
const errorMap: z.core.$ZodErrorMap = (iss) => {
  const missing = iss.input === undefined && (iss.code === 'invalid_type' || iss.code === 'invalid_value' || iss.code === 'invalid_union');
  if (missing) return 'required but missing';
  switch (iss.code) {
    case 'invalid_type':
      return `expected ${TYPE_WORDS[iss.expected] ?? iss.expected}, got ${describeValue(iss.input)}`;
    case 'invalid_value':
      return `expected ${quoteList(iss.values)}, got ${describeValue(iss.input)}`;
    case 'unrecognized_keys': {
      const inst = iss.inst as unknown as { shape?: Record<string, unknown> } | undefined;
      return Object.keys(inst?.shape ?? {}).join(', ');
    }
    case 'too_small':
      return iss.origin === 'array' ? `expected at least ${String(iss.minimum)} item(s)` : `must not be empty`;
    default:
      return undefined;
  }
};

/** "proxy_protocol" -> "proxyProtocol": same letters apart from case, "_" and "-", or 2 edits away. */
function closest(key: string, allowed: string[]): string | null {
  const norm = (s: string) => s.toLowerCase().replace(/[-_]/g, '');
  for (const a of allowed) if (norm(a) === norm(key)) return a;
  let best: string | null = null;
  let bestD = 3;
  for (const a of allowed) {
    const d = editDistance(key.toLowerCase(), a.toLowerCase());
    if (d < bestD) [best, bestD] = [a, d];
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

export function unknownKeyMessage(key: string, allowed: string[]): string {
  const guess = closest(key, allowed);
  return `unknown key "${key}"${guess ? ` (did you mean "${guess}"?)` : ''}; allowed keys: ${allowed.join(', ')}`;
}

/** Validates the plain JS value of the YAML document; every issue, with our messages. */
export function validateDocument(raw: unknown): { ok: true; value: RawDocument } | { ok: false; issues: SchemaIssue[] } {
  if (raw === null || raw === undefined) {
    return { ok: false, issues: [{ path: [], message: 'the file is empty: expected a mapping with certificates and listeners', at: 'value' }] };
  }
  const r = documentSchema.safeParse(raw, { error: errorMap });
  if (r.success) return { ok: true, value: r.data };
  const issues: SchemaIssue[] = [];
  const collect = (list: readonly z.core.$ZodIssue[], prefix: SchemaPath) => {
    for (const iss of list) {
      const path = [...prefix, ...iss.path.filter((p): p is string | number => typeof p !== 'symbol')];
      if (iss.code === 'unrecognized_keys') {
        const allowed = iss.message.split(', ').filter(Boolean);
        for (const key of iss.keys) issues.push({ path: [...path, key], message: unknownKeyMessage(key, allowed), at: 'key' });
        continue;
      }
      if (iss.code === 'invalid_union') {
        // `alpn: [smtp, ""]`: the value has the shape of one alternative (a list) and fails inside
        // it. Report that alternative's own problems rather than "expected a list or false".
        const fitting = iss.errors.filter((branch) => !branch.some((b) => b.path.length === 0 && (b.code === 'invalid_type' || b.code === 'invalid_value')));
        if (fitting.length === 1) {
          collect(fitting[0]!, path);
          continue;
        }
      }
      issues.push({ path, message: iss.message, at: 'value' });
    }
  };
  collect(r.error.issues, []);
  return { ok: false, issues };
}
