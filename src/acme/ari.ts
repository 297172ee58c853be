// ACME Renewal Information (RFC 9773): the CA says when to renew a certificate (earlier than
// planned when it must revoke). The certificate is named by its CertID (section 4.1): the
// base64url of the Authority Key Identifier's keyIdentifier, ".", the base64url of the serial
// number's DER content octets.
import { X509Certificate } from 'node:crypto';
import type { RenewalWindow } from './schedule.ts';

/** RFC 9773 section 4.1, from the two parts. `serialHex` as Node prints it (no leading zero byte). */
export function certIdOf(keyIdentifier: Buffer, serialHex: string): string {
  let serial = Buffer.from(serialHex.length % 2 ? `0${serialHex}` : serialHex, 'hex');
  // DER INTEGER: a positive number whose first bit is set gets a leading zero byte.
  if (serial.length === 0 || serial[0]! & 0x80) serial = Buffer.concat([Buffer.from([0]), serial]);
  return `${keyIdentifier.toString('base64url')}.${serial.toString('base64url')}`;
}

/** AuthorityKeyIdentifier (2.5.29.35), keyIdentifier [0]: read from the certificate's DER. */
export function authorityKeyIdentifier(der: Buffer): Buffer | null {
  const oid = Buffer.from([0x06, 0x03, 0x55, 0x1d, 0x23]);
  const at = der.indexOf(oid);
  if (at < 0) return null;
  let i = at + oid.length;
  // Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
  if (der[i] === 0x01) i += 2 + der[i + 1]!;
  const octets = readTlv(der, i, 0x04);
  if (!octets) return null;
  const seq = readTlv(der, octets.start, 0x30);
  if (!seq) return null;
  const id = readTlv(der, seq.start, 0x80);
  return id ? der.subarray(id.start, id.end) : null;
}

function readTlv(buf: Buffer, i: number, tag: number): { start: number; end: number } | null {
  if (buf[i] !== tag) return null;
  let len = buf[i + 1];
  if (len === undefined) return null;
  let start = i + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 3) return null;
    len = 0;
    for (let k = 0; k < n; k++) len = (len << 8) | (buf[start + k] ?? 0);
    start += n;
  }
  const end = start + len;
  return end <= buf.length ? { start, end } : null;
}

/** The CertID of a PEM certificate (its first block), or null without an AKI. */
export function certIdOfPem(pem: string): string | null {
  const cert = new X509Certificate(pem);
  const aki = authorityKeyIdentifier(cert.raw);
  return aki ? certIdOf(aki, cert.serialNumber) : null;
}

/**
 * RFC 9773 section 4.2: GET <renewalInfo>/<CertID> answers
 * `{"suggestedWindow": {"start": ..., "end": ...}}`; anything else is no answer (the two-thirds
 * rule applies). The response is small: more than 64 KiB is refused unread.
 */
export async function fetchRenewalWindow(renewalInfoUrl: string, certId: string, get: (url: string) => Promise<unknown>): Promise<RenewalWindow | null> {
  const body = await get(`${renewalInfoUrl.replace(/\/$/, '')}/${certId}`);
  return parseRenewalInfo(body);
}

export function parseRenewalInfo(body: unknown): RenewalWindow | null {
  if (typeof body !== 'object' || body === null) return null;
  const w = (body as { suggestedWindow?: { start?: unknown; end?: unknown } }).suggestedWindow;
  if (!w || typeof w.start !== 'string' || typeof w.end !== 'string') return null;
  const start = new Date(w.start);
  const end = new Date(w.end);
  if (Number.isNaN(start.getTime()) || Number.isNaN(end.getTime()) || end < start) return null;
  return { start, end };
}
