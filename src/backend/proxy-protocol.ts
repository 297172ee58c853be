// Pure PROXY protocol header encoders (haproxy's doc/proxy-protocol.txt, versions 1 and 2).
// Bytes out, nothing else: no sockets, no clocks. The caller writes the result as the very first
// bytes on the backend connection, in one write (section 2 of the spec).
import { formatAddress, parseAddress, type IpAddress } from '../net/address.ts';

export interface ProxyEndpoints {
  /** Addresses as Node reports them: '127.0.0.1', '::1', '::ffff:1.2.3.4'. */
  clientAddress: string;
  clientPort: number;
  localAddress: string;
  localPort: number;
}

export interface ProxyTlsInfo {
  /** The validated SNI, sent as PP2_TYPE_AUTHORITY. */
  sni: string | null;
  /** The negotiated ALPN protocol, sent as PP2_TYPE_ALPN. */
  alpn: string | null;
  /** e.g. 'TLSv1.3', sent as PP2_SUBTYPE_SSL_VERSION. */
  version: string | null;
  /** OpenSSL name, e.g. 'TLS_AES_256_GCM_SHA384', sent as PP2_SUBTYPE_SSL_CIPHER. */
  cipher: string | null;
}

const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V2_VERSION_PROXY = 0x21; // version 2 (high nibble), command PROXY (low nibble)
const FAMILY_UNSPEC = 0x00;
const FAMILY_TCP4 = 0x11;
const FAMILY_TCP6 = 0x21;

export const PP2_TYPE_ALPN = 0x01;
export const PP2_TYPE_AUTHORITY = 0x02;
export const PP2_TYPE_SSL = 0x20;
export const PP2_SUBTYPE_SSL_VERSION = 0x21;
export const PP2_SUBTYPE_SSL_CIPHER = 0x23;
export const PP2_CLIENT_SSL = 0x01;

/**
 * The <verify> field of PP2_TYPE_SSL. proxy-protocol.txt section 2.2.6: "The <verify> field will
 * be zero if the client presented a certificate and it was successfully verified, and non-zero
 * otherwise." postern never asks for client certificates, so no certificate was ever presented
 * and verified: the spec calls for non-zero. (HAProxy leaves it at zero when no certificate was
 * presented, so a receiver that trusted `verify == 0` alone would be fooled; we do not send that.)
 * Receivers that matter here (Dovecot) look only at the PP2_CLIENT_SSL bit to mark a session
 * secured, which the e2e tests check.
 */
export const PP2_VERIFY_NO_CLIENT_CERT = 1;

type Endpoint = IpAddress;

/** Parses an address as Node reports it; IPv4-mapped IPv6 becomes IPv4. Null if unusable. */
function parseEndpoint(address: string): Endpoint | null {
  return parseAddress(address.split('%')[0] ?? ''); // an IPv6 zone id ('fe80::1%eth0') dropped
}

function validPort(port: number): boolean {
  return Number.isInteger(port) && port >= 0 && port <= 65535;
}

/** Both ends in one family, or null (mixed families, unparsable address, bad port). */
function resolveEndpoints(ep: ProxyEndpoints): { src: Endpoint; dst: Endpoint } | null {
  const src = parseEndpoint(ep.clientAddress);
  const dst = parseEndpoint(ep.localAddress);
  if (!src || !dst || src.family !== dst.family) return null;
  if (!validPort(ep.clientPort) || !validPort(ep.localPort)) return null;
  return { src, dst };
}

/** `PROXY TCP4|TCP6 src dst sport dport\r\n`, or `PROXY UNKNOWN\r\n` when it cannot be filled. */
export function encodeProxyV1(ep: ProxyEndpoints): Buffer {
  const r = resolveEndpoints(ep);
  if (!r) return Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
  const proto = r.src.family === 4 ? 'TCP4' : 'TCP6';
  return Buffer.from(`PROXY ${proto} ${formatAddress(r.src)} ${formatAddress(r.dst)} ${ep.clientPort} ${ep.localPort}\r\n`, 'latin1');
}

/** A TLV's value: text, written in its encoding. */
type TlvValue = { text: string; encoding: 'latin1' | 'ascii' | 'utf8' };

/** Bytes of a TLV (type, 2-byte length, value) whose value is `text`. */
function tlvLength(type: number, v: TlvValue): number {
  const n = Buffer.byteLength(v.text, v.encoding);
  if (n > 0xffff) throw new RangeError(`PROXY v2 TLV 0x${type.toString(16)} too long: ${n} bytes`);
  return 3 + n;
}

/** Writes a TLV at `at`; returns the offset after it. */
function writeTlv(out: Buffer, at: number, type: number, v: TlvValue): number {
  const n = out.write(v.text, at + 3, v.encoding);
  out[at] = type;
  out.writeUInt16BE(n, at + 1);
  return at + 3 + n;
}

/**
 * Binary header: signature, 0x21, family (0x11 TCP4, 0x21 TCP6, 0x00 UNSPEC for mixed or unusable
 * endpoints, then without addresses), exact length, addresses and ports, then TLVs: ALPN,
 * AUTHORITY (the SNI), SSL (client = PP2_CLIENT_SSL, verify, VERSION and CIPHER sub-TLVs).
 * No TLVs at all when `tls` is null. Sized first and written into one buffer: it is built for
 * every connection.
 */
export function encodeProxyV2(ep: ProxyEndpoints, tls: ProxyTlsInfo | null): Buffer {
  const r = resolveEndpoints(ep);
  const addressLength = r ? 2 * r.src.bytes.length + 4 : 0;
  const alpn: TlvValue | null = tls?.alpn ? { text: tls.alpn, encoding: 'latin1' } : null;
  const sni: TlvValue | null = tls?.sni ? { text: tls.sni, encoding: 'utf8' } : null;
  const version: TlvValue | null = tls?.version ? { text: tls.version, encoding: 'ascii' } : null;
  const cipher: TlvValue | null = tls?.cipher ? { text: tls.cipher, encoding: 'ascii' } : null;
  // PP2_TYPE_SSL: client (1 byte) and verify (4 bytes), then its sub-TLVs.
  const sslValue = tls ? 5 + (version ? tlvLength(PP2_SUBTYPE_SSL_VERSION, version) : 0) + (cipher ? tlvLength(PP2_SUBTYPE_SSL_CIPHER, cipher) : 0) : 0;
  const bodyLength = addressLength
    + (alpn ? tlvLength(PP2_TYPE_ALPN, alpn) : 0)
    + (sni ? tlvLength(PP2_TYPE_AUTHORITY, sni) : 0)
    + (tls ? 3 + sslValue : 0);
  if (bodyLength > 0xffff) throw new RangeError(`PROXY v2 header too long: ${bodyLength} bytes`);
  const out = Buffer.allocUnsafe(16 + bodyLength);
  V2_SIGNATURE.copy(out, 0);
  out[12] = V2_VERSION_PROXY;
  out[13] = r ? (r.src.family === 4 ? FAMILY_TCP4 : FAMILY_TCP6) : FAMILY_UNSPEC;
  out.writeUInt16BE(bodyLength, 14);
  let at = 16;
  if (r) {
    at += r.src.bytes.copy(out, at);
    at += r.dst.bytes.copy(out, at);
    out.writeUInt16BE(ep.clientPort, at);
    out.writeUInt16BE(ep.localPort, at + 2);
    at += 4;
  }
  if (tls) {
    if (alpn) at = writeTlv(out, at, PP2_TYPE_ALPN, alpn);
    if (sni) at = writeTlv(out, at, PP2_TYPE_AUTHORITY, sni);
    out[at] = PP2_TYPE_SSL;
    out.writeUInt16BE(sslValue, at + 1);
    out[at + 3] = PP2_CLIENT_SSL;
    out.writeUInt32BE(PP2_VERIFY_NO_CLIENT_CERT, at + 4);
    at += 8;
    if (version) at = writeTlv(out, at, PP2_SUBTYPE_SSL_VERSION, version);
    if (cipher) at = writeTlv(out, at, PP2_SUBTYPE_SSL_CIPHER, cipher);
  }
  return out;
}
