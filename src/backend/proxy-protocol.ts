// Pure PROXY protocol header encoders (haproxy's doc/proxy-protocol.txt, versions 1 and 2).
// Bytes out, nothing else: no sockets, no clocks. The caller writes the result as the very first
// bytes on the backend connection, in one write (section 2 of the spec).
import { formatAddress, parseAddress } from '../net/address.ts';

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

type Endpoint = { family: 4 | 6; bytes: Buffer; text: string };

/** Parses an address as Node reports it; IPv4-mapped IPv6 becomes IPv4. Null if unusable. */
function parseEndpoint(address: string): Endpoint | null {
  const bare = address.split('%')[0] ?? ''; // drop an IPv6 zone id ('fe80::1%eth0')
  const a = parseAddress(bare);
  return a ? { family: a.family, bytes: a.bytes, text: formatAddress(a) } : null;
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
  return Buffer.from(`PROXY ${proto} ${r.src.text} ${r.dst.text} ${ep.clientPort} ${ep.localPort}\r\n`, 'latin1');
}

function tlv(type: number, value: Buffer): Buffer {
  if (value.length > 0xffff) throw new RangeError(`PROXY v2 TLV 0x${type.toString(16)} too long: ${value.length} bytes`);
  const head = Buffer.alloc(3);
  head.writeUInt8(type, 0);
  head.writeUInt16BE(value.length, 1);
  return Buffer.concat([head, value]);
}

function sslTlv(tls: ProxyTlsInfo): Buffer {
  const fixed = Buffer.alloc(5);
  fixed.writeUInt8(PP2_CLIENT_SSL, 0);
  fixed.writeUInt32BE(PP2_VERIFY_NO_CLIENT_CERT, 1);
  const subs: Buffer[] = [fixed];
  if (tls.version) subs.push(tlv(PP2_SUBTYPE_SSL_VERSION, Buffer.from(tls.version, 'ascii')));
  if (tls.cipher) subs.push(tlv(PP2_SUBTYPE_SSL_CIPHER, Buffer.from(tls.cipher, 'ascii')));
  return tlv(PP2_TYPE_SSL, Buffer.concat(subs));
}

/**
 * Binary header: signature, 0x21, family (0x11 TCP4, 0x21 TCP6, 0x00 UNSPEC for mixed or unusable
 * endpoints, then without addresses), exact length, addresses and ports, then TLVs: ALPN,
 * AUTHORITY (the SNI), SSL (client = PP2_CLIENT_SSL, verify, VERSION and CIPHER sub-TLVs).
 * No TLVs at all when `tls` is null.
 */
export function encodeProxyV2(ep: ProxyEndpoints, tls: ProxyTlsInfo | null): Buffer {
  const r = resolveEndpoints(ep);
  let family = FAMILY_UNSPEC;
  let addresses = Buffer.alloc(0);
  if (r) {
    family = r.src.family === 4 ? FAMILY_TCP4 : FAMILY_TCP6;
    const ports = Buffer.alloc(4);
    ports.writeUInt16BE(ep.clientPort, 0);
    ports.writeUInt16BE(ep.localPort, 2);
    addresses = Buffer.concat([r.src.bytes, r.dst.bytes, ports]);
  }
  const tlvs: Buffer[] = [];
  if (tls) {
    if (tls.alpn) tlvs.push(tlv(PP2_TYPE_ALPN, Buffer.from(tls.alpn, 'latin1')));
    if (tls.sni) tlvs.push(tlv(PP2_TYPE_AUTHORITY, Buffer.from(tls.sni, 'utf8')));
    tlvs.push(sslTlv(tls));
  }
  const body = Buffer.concat([addresses, ...tlvs]);
  if (body.length > 0xffff) throw new RangeError(`PROXY v2 header too long: ${body.length} bytes`);
  const head = Buffer.alloc(16);
  V2_SIGNATURE.copy(head, 0);
  head.writeUInt8(V2_VERSION_PROXY, 12);
  head.writeUInt8(family, 13);
  head.writeUInt16BE(body.length, 14);
  return Buffer.concat([head, body]);
}
