// Host-name rules for SNI values and certificate names. Pure functions, no sockets.
//
// RFC 6066 section 3: HostName is "the fully qualified DNS hostname of the server", ASCII,
// without a trailing dot, and "Literal IPv4 and IPv6 addresses are not permitted".
// RFC 6125 section 6.4.3: a wildcard is the complete leftmost label only, and matches exactly
// one label.

export type InvalidReason =
  | 'ip_literal'
  | 'no_dot'
  | 'trailing_dot'
  | 'bad_chars'
  | 'too_long'
  | 'bad_label'
  /** Bytes that are not a host name at all (NUL, control, non-ASCII): refused under any policy. */
  | 'illegible';

export type NameCheck = { ok: true; name: string } | { ok: false; reason: InvalidReason; name: string };

const IPV4 = /^\d{1,3}(\.\d{1,3}){3}$/;
const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * Classifies the raw host_name bytes of a ClientHello. `name` is the lowercased value when it is
 * printable ASCII, else a latin1 rendering that is only fit for escaped logging.
 */
export function checkSniBytes(raw: Buffer): NameCheck {
  for (const b of raw) {
    // OpenSSL itself refuses a host_name with a NUL byte; control and 8-bit bytes cannot be a
    // DNS name in any form (IDNs travel as A-labels, RFC 5890 section 2.3.2.1).
    if (b < 0x21 || b > 0x7e) return { ok: false, reason: 'illegible', name: raw.toString('latin1') };
  }
  return checkHostName(raw.toString('latin1').toLowerCase());
}

/** Validates an already-lowercased printable name as a DNS host name fit to match certificates. */
export function checkHostName(name: string): NameCheck {
  if (name.length > 253) return { ok: false, reason: 'too_long', name };
  if (name.endsWith('.')) return { ok: false, reason: 'trailing_dot', name };
  if (IPV4.test(name) || name.includes(':') || name.startsWith('[')) return { ok: false, reason: 'ip_literal', name };
  if (!name.includes('.')) return { ok: false, reason: 'no_dot', name };
  for (const label of name.split('.')) {
    if (label.length === 0 || label.length > 63) return { ok: false, reason: 'bad_label', name };
    if (!LABEL.test(label)) return { ok: false, reason: 'bad_chars', name };
  }
  return { ok: true, name };
}

/** "*.example.org" -> "example.org"; null when the pattern is not a wildcard. */
export function wildcardParent(pattern: string): string | null {
  return pattern.startsWith('*.') ? pattern.slice(2) : null;
}

/** The domain a wildcard for this name would be written under: "a.example.org" -> "example.org". */
export function parentOf(name: string): string | null {
  const dot = name.indexOf('.');
  return dot < 0 ? null : name.slice(dot + 1);
}

/**
 * True when a certificate-style pattern (exact name or "*.domain") covers the name.
 * RFC 6125 section 6.4.3: the wildcard stands for exactly one whole leftmost label.
 */
export function patternCovers(pattern: string, name: string): boolean {
  const parent = wildcardParent(pattern);
  if (parent === null) return pattern === name;
  return parentOf(name) === parent;
}

/**
 * Why a certificate name pattern is unusable, or null when it is fine. Partial wildcards
 * ("f*.example.org", "*x.example.org") and wildcards below a single label ("*.org") are refused:
 * RFC 6125 section 7.2 advises against them and clients disagree on their meaning.
 */
export function patternProblem(pattern: string): string | null {
  const parent = wildcardParent(pattern);
  const rest = parent ?? pattern;
  if (rest.includes('*')) return `"${pattern}": partial or nested wildcards are not supported (RFC 6125 section 7.2)`;
  if (parent !== null && !parent.includes('.')) return `"${pattern}": a wildcard must sit below a domain of at least two labels`;
  const check = checkHostName(rest);
  if (!check.ok) return `"${pattern}": not a valid DNS name (${check.reason})`;
  return null;
}

/** Renders untrusted bytes for a log line: printable ASCII as is, everything else as \xHH. */
export function escapeForLog(value: string | Buffer): string {
  const s = typeof value === 'string' ? value : value.toString('latin1');
  let out = '';
  for (let i = 0; i < s.length && i < 300; i++) {
    const c = s.charCodeAt(i);
    out += c >= 0x20 && c < 0x7f && c !== 0x5c ? s[i] : '\\x' + c.toString(16).padStart(2, '0');
  }
  return s.length > 300 ? out + '...' : out;
}
