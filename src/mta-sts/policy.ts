// MTA-STS (RFC 8461): the policy file, its id, and the mx pattern rule. Pure functions.
import { createHash } from 'node:crypto';

export type StsMode = 'enforce' | 'testing' | 'none';

export interface StsPolicy {
  mode: StsMode;
  /** mx patterns: names or "*.domain" (RFC 8461 section 3.2), lowercased. */
  mx: string[];
  /** max_age in seconds (at most 31557600, section 3.2). */
  maxAgeS: number;
}

/** RFC 8461 section 3.2: max_age is at most 31557600 seconds (about a year). */
export const MAX_AGE_LIMIT_S = 31_557_600;

/**
 * The policy file, RFC 8461 section 3.2: "version: STSv1" first, then mode, one "mx:" line per
 * pattern, max_age; key/value pairs separated by CRLF (section 3.2's grammar and its examples).
 */
export function renderPolicy(p: StsPolicy): string {
  const lines = ['version: STSv1', `mode: ${p.mode}`, ...p.mx.map((m) => `mx: ${m}`), `max_age: ${p.maxAgeS}`];
  return `${lines.join('\r\n')}\r\n`;
}

/**
 * The id of the `_mta-sts` TXT record (section 3.1: 1 to 32 letters and digits) must change
 * whenever the policy does, or senders keep the cached one: derived from the policy's bytes.
 */
export function policyId(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 20);
}

/**
 * RFC 8461 section 4.1: an mx pattern is an exact name, or "*." followed by a name, which matches
 * exactly one more label on the left ("*.example.com" matches "mx1.example.com", not
 * "example.com" nor "a.b.example.com").
 */
export function mxCovers(pattern: string, host: string): boolean {
  if (!pattern.startsWith('*.')) return pattern === host;
  const dot = host.indexOf('.');
  return dot > 0 && host.slice(dot + 1) === pattern.slice(2);
}
