// Pure parsers for the capability probe (src/starttls/probe.ts): the backend's answer as text in,
// the capabilities postern may announce before TLS out. STARTTLS/STLS (and IMAP's
// LOGINDISABLED, which reflects the probe's own plaintext connection) are never returned: postern
// decides those itself. The parsers never throw; input they cannot read gives an empty list.

export interface SmtpReply {
  code: number;
  /** The text of each line, after the code and its "-" / " " separator. */
  lines: string[];
  /** Characters of `text` the reply occupies, its last line terminator included. */
  length: number;
}

/**
 * The first complete reply at the start of `text`, or null while its last line has not arrived
 * (RFC 5321 section 4.2.1: "ddd-text" lines, then "ddd text" or "ddd"). A line that is not a
 * reply line also gives null.
 */
export function completeSmtpReply(text: string): SmtpReply | null {
  const lines: string[] = [];
  let pos = 0;
  for (;;) {
    const lf = text.indexOf('\n', pos);
    if (lf < 0) return null;
    const line = text.slice(pos, text[lf - 1] === '\r' ? lf - 1 : lf);
    pos = lf + 1;
    const m = /^(\d{3})([ -]|$)(.*)$/.exec(line);
    if (!m) return null;
    lines.push(m[3]!);
    if (m[2] !== '-') return { code: Number(m[1]), lines, length: pos };
  }
}

/** EHLO keywords with their parameters ("SIZE 10240000") from a 250 reply; the first line (the server's name) is skipped. */
export function parseSmtpEhlo(reply: string): string[] {
  const r = completeSmtpReply(reply);
  if (!r || r.code !== 250) return [];
  return r.lines
    .slice(1)
    .map((l) => l.trim())
    .filter((l) => l !== '' && (l.split(/\s/)[0] ?? '').toUpperCase() !== 'STARTTLS');
}

const IMAP_HIDDEN = new Set(['STARTTLS', 'LOGINDISABLED']);

/**
 * Capability atoms from an IMAP `* CAPABILITY ...` response (RFC 9051 section 7.2.2), or else from
 * a `[CAPABILITY ...]` response code (section 7.1) such as the greeting's.
 */
export function parseImapCapability(text: string): string[] {
  const lines = text.split(/\r?\n/);
  let atoms: string | null = null;
  for (const l of lines) {
    const m = /^\* CAPABILITY (.*)$/i.exec(l);
    if (m) atoms = m[1]!;
  }
  if (atoms === null) {
    for (const l of lines) {
      const m = /^\S+ (?:OK|NO|BAD|PREAUTH|BYE) \[CAPABILITY ([^\]]*)\]/i.exec(l);
      if (m) atoms = m[1]!;
    }
  }
  if (atoms === null) return [];
  return atoms.split(' ').filter((a) => a !== '' && !IMAP_HIDDEN.has(a.toUpperCase()));
}

/** The lines of a POP3 CAPA response (RFC 2449 section 5) between "+OK" and ".", dot-unstuffed. */
export function parsePop3Capa(text: string): string[] {
  const lines = text.split(/\r?\n/);
  if (!lines[0]?.startsWith('+OK')) return [];
  const out: string[] = [];
  for (const raw of lines.slice(1)) {
    if (raw === '.') return out;
    // RFC 1939 section 3: a line starting with "." is byte-stuffed.
    const l = (raw.startsWith('.') ? raw.slice(1) : raw).trim();
    if (l !== '' && (l.split(' ')[0] ?? '').toUpperCase() !== 'STLS') out.push(l);
  }
  return []; // no terminating "." : not a complete CAPA response
}
