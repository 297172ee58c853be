// Pure PROXY protocol header decoder (haproxy's proxy-protocol.txt, v1 and v2). Used by the demo
// backend and the tests to read what postern sends, and the base for accepting PROXY from a load
// balancer. Bounded: v1 is at most 107 bytes (section 2.1), v2 at most 16 + 65535.

export interface DecodedTlv {
  type: number;
  value: Buffer;
}

export interface DecodedProxy {
  version: 1 | 2;
  /** 'PROXY' for a proxied connection, 'LOCAL' for a health check (v2) or UNKNOWN (v1). */
  command: 'PROXY' | 'LOCAL';
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

function decodeV1(buf: Buffer): ProxyDecode {
  const end = buf.indexOf('\r\n');
  if (end < 0) return buf.length >= V1_MAX ? { kind: 'invalid', reason: 'v1 header longer than 107 bytes' } : { kind: 'need-more' };
  if (end + 2 > V1_MAX) return { kind: 'invalid', reason: 'v1 header longer than 107 bytes' };
  const parts = buf.toString('latin1', 0, end).split(' ');
  const base = { version: 1 as const, tlvs: [], authority: null, alpn: null, ssl: null, length: end + 2 };
  if (parts[1] === 'UNKNOWN') return { kind: 'header', header: { ...base, command: 'LOCAL', family: 'UNSPEC', source: null, destination: null } };
  if (parts.length !== 6 || (parts[1] !== 'TCP4' && parts[1] !== 'TCP6')) return { kind: 'invalid', reason: 'malformed v1 header' };
  const sport = Number(parts[4]);
  const dport = Number(parts[5]);
  if (!/^\d{1,5}$/.test(parts[4]!) || !/^\d{1,5}$/.test(parts[5]!) || sport > 65535 || dport > 65535) return { kind: 'invalid', reason: 'bad v1 port' };
  return {
    kind: 'header',
    header: { ...base, command: 'PROXY', family: parts[1], source: { address: parts[2]!, port: sport }, destination: { address: parts[3]!, port: dport } },
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
  if (fam === 0x11) {
    if (len < 12) return { kind: 'invalid', reason: 'v2 TCP4 block too short' };
    family = 'TCP4';
    source = { address: [...body.subarray(0, 4)].join('.'), port: body.readUInt16BE(8) };
    destination = { address: [...body.subarray(4, 8)].join('.'), port: body.readUInt16BE(10) };
    off = 12;
  } else if (fam === 0x21) {
    if (len < 36) return { kind: 'invalid', reason: 'v2 TCP6 block too short' };
    family = 'TCP6';
    source = { address: ipv6(body.subarray(0, 16)), port: body.readUInt16BE(32) };
    destination = { address: ipv6(body.subarray(16, 32)), port: body.readUInt16BE(34) };
    off = 36;
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

function ipv6(b: Buffer): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  return groups.join(':').replace(/(^|:)0(:0)+(:|$)/, '::');
}
