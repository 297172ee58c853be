// Pure PROXY protocol header decoder (haproxy's proxy-protocol.txt, v1 and v2). Reads the header
// a trusted load balancer puts in front of a connection (acceptProxyProtocol), and what postern
// sends (the demo backend, the tests). Bounded: v1 is at most 107 bytes (section 2.1), v2 at most
// 16 + 65535. Total: any bytes give need-more, invalid or a header, never a throw.
//
// The addresses come out as the client postern counts, logs and names onwards (src/net/address.ts):
// IPv4-mapped IPv6 as the dotted quad (HAProxy on `bind :::port v4v6` sends IPv4 clients as
// TCP6 ::ffff:a.b.c.d), IPv6 in RFC 5952 form; `family` is TCP4 when both ends are IPv4 then.
import { addressFromBytes, formatAddress, parseIPv4, parseIPv6 } from '../net/address.ts';

export interface DecodedTlv {
  type: number;
  value: Buffer;
}

export interface DecodedProxy {
  version: 1 | 2;
  /** 'PROXY' for a proxied connection, 'LOCAL' for a health check (v2) or UNKNOWN (v1). */
  command: 'PROXY' | 'LOCAL';
  /** As the decoded addresses are: TCP4 when both ends are IPv4, IPv4-mapped IPv6 included. */
  family: 'TCP4' | 'TCP6' | 'UNSPEC';
  source: { address: string; port: number } | null;
  destination: { address: string; port: number } | null;
  tlvs: DecodedTlv[];
  /** Decoded conveniences from the TLVs. */
  authority: string | null;
  alpn: string | null;
  ssl: { client: number; verify: number; version: string | null; cipher: string | null } | null;
  /** Bytes the header took. */
  length: number;
}

export type ProxyDecode = { kind: 'need-more' } | { kind: 'invalid'; reason: string } | { kind: 'header'; header: DecodedProxy };

export const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V1_MAX = 107;

export function decodeProxyHeader(buf: Buffer): ProxyDecode {
  const n = Math.min(buf.length, 12);
  if (buf.subarray(0, n).equals(V2_SIGNATURE.subarray(0, n))) return buf.length < 16 ? { kind: 'need-more' } : decodeV2(buf);
  const v1 = Buffer.from('PROXY ');
  const m = Math.min(buf.length, 6);
  if (buf.subarray(0, m).equals(v1.subarray(0, m))) return decodeV1(buf);
  return { kind: 'invalid', reason: 'no PROXY signature' };
}

const CR = 0x0d;
const LF = 0x0a;
/** Section 2.1: decimal [0..65535], "Heading zeroes are not permitted". */
const PORT = /^(?:0|[1-9][0-9]{0,4})$/;

function invalid(reason: string): ProxyDecode {
  return { kind: 'invalid', reason };
}

/**
 * Section 2.1: "PROXY" SP ("TCP4" | "TCP6") SP src SP dst SP sport SP dport CRLF, or "PROXY UNKNOWN"
 * and anything up to CRLF. TCP4 carries two dotted quads, TCP6 two IPv6 addresses; "Any sequence
 * which does not exactly match the protocol must be discarded and cause the receiver to abort the
 * connection." Reasons are fixed words: the offending bytes are never echoed into the log.
 */
function decodeV1(buf: Buffer): ProxyDecode {
  // "The receiver ... must not tolerate a single CR or LF character to end the line".
  let end = -1;
  for (let i = 0; i < Math.min(buf.length, V1_MAX); i++) {
    if (buf[i] === LF) return invalid('v1 header has a LF without CR');
    if (buf[i] !== CR) continue;
    if (i + 1 === buf.length) break;
    if (buf[i + 1] !== LF) return invalid('v1 header has a CR without LF');
    end = i;
    break;
  }
  if (end < 0) return buf.length >= V1_MAX ? invalid('v1 header longer than 107 bytes') : { kind: 'need-more' };
  if (end + 2 > V1_MAX) return invalid('v1 header longer than 107 bytes');
  const parts = buf.toString('latin1', 0, end).split(' ');
  const base = { version: 1 as const, tlvs: [], authority: null, alpn: null, ssl: null, length: end + 2 };
  if (parts[1] === 'UNKNOWN') return { kind: 'header', header: { ...base, command: 'LOCAL', family: 'UNSPEC', source: null, destination: null } };
  const [, proto, srcText = '', dstText = '', sportText = '', dportText = ''] = parts;
  if (parts.length !== 6 || (proto !== 'TCP4' && proto !== 'TCP6')) return invalid('malformed v1 header');
  const parse = proto === 'TCP4' ? parseIPv4 : parseIPv6;
  const src = parse(srcText);
  const dst = parse(dstText);
  if (!src || !dst) return invalid(proto === 'TCP4' ? 'v1 TCP4 needs two IPv4 addresses' : 'v1 TCP6 needs two IPv6 addresses');
  if (!PORT.test(sportText) || !PORT.test(dportText)) return invalid('bad v1 port');
  const sport = Number(sportText);
  const dport = Number(dportText);
  if (sport > 65535 || dport > 65535) return invalid('bad v1 port');
  const ends = endpoints(src, sport, dst, dport);
  if (!ends) return invalid('malformed v1 header');
  return { kind: 'header', header: { ...base, command: 'PROXY', ...ends } };
}

/** Both ends normalised; family TCP4 when both are IPv4 (IPv4-mapped IPv6 included). */
function endpoints(src: Buffer, sport: number, dst: Buffer, dport: number): Pick<DecodedProxy, 'family' | 'source' | 'destination'> | null {
  const s = addressFromBytes(src);
  const d = addressFromBytes(dst);
  if (!s || !d) return null;
  return {
    family: s.family === 4 && d.family === 4 ? 'TCP4' : 'TCP6',
    source: { address: formatAddress(s), port: sport },
    destination: { address: formatAddress(d), port: dport },
  };
}

function decodeV2(buf: Buffer): ProxyDecode {
  const verCmd = buf[12]!;
  if (verCmd >> 4 !== 2) return { kind: 'invalid', reason: 'v2 version nibble is not 2' };
  const cmd = verCmd & 0x0f;
  if (cmd > 1) return { kind: 'invalid', reason: 'v2 unknown command' };
  const fam = buf[13]!;
  const len = buf.readUInt16BE(14);
  if (buf.length < 16 + len) return { kind: 'need-more' };
  const body = buf.subarray(16, 16 + len);
  let family: DecodedProxy['family'] = 'UNSPEC';
  let source: DecodedProxy['source'] = null;
  let destination: DecodedProxy['destination'] = null;
  let off = 0;
  if (fam === 0x11 || fam === 0x21) {
    // Section 2.2: TCP over IPv4 (0x11), 4-byte addresses then ports; TCP over IPv6 (0x21), 16-byte.
    const size = fam === 0x11 ? 4 : 16;
    if (len < 2 * size + 4) return { kind: 'invalid', reason: `v2 ${fam === 0x11 ? 'TCP4' : 'TCP6'} block too short` };
    const ends = endpoints(body.subarray(0, size), body.readUInt16BE(2 * size), body.subarray(size, 2 * size), body.readUInt16BE(2 * size + 2));
    if (!ends) return { kind: 'invalid', reason: 'v2 address block unreadable' };
    ({ family, source, destination } = ends);
    off = 2 * size + 4;
  } else if (fam !== 0x00) return { kind: 'invalid', reason: `v2 unsupported family 0x${fam.toString(16)}` };
  const tlvs = parseTlvs(body.subarray(off));
  if (!tlvs) return { kind: 'invalid', reason: 'v2 TLV overruns the header' };
  const header: DecodedProxy = { version: 2, command: cmd === 1 ? 'PROXY' : 'LOCAL', family, source, destination, tlvs, authority: null, alpn: null, ssl: null, length: 16 + len };
  for (const t of tlvs) {
    if (t.type === 0x02) header.authority = t.value.toString('latin1');
    if (t.type === 0x01) header.alpn = t.value.toString('latin1');
    if (t.type === 0x20 && t.value.length >= 5) {
      const subs = parseTlvs(t.value.subarray(5)) ?? [];
      header.ssl = {
        client: t.value[0]!,
        verify: t.value.readUInt32BE(1),
        version: subs.find((s) => s.type === 0x21)?.value.toString('latin1') ?? null,
        cipher: subs.find((s) => s.type === 0x23)?.value.toString('latin1') ?? null,
      };
    }
  }
  return { kind: 'header', header };
}

function parseTlvs(b: Buffer): DecodedTlv[] | null {
  const out: DecodedTlv[] = [];
  let i = 0;
  while (i < b.length) {
    if (i + 3 > b.length) return null;
    const l = b.readUInt16BE(i + 1);
    if (i + 3 + l > b.length) return null;
    out.push({ type: b[i]!, value: b.subarray(i + 3, i + 3 + l) });
    i += 3 + l;
  }
  return out;
}
