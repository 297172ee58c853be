import { describe, expect, it } from 'vitest';
import { encodeProxyV1, encodeProxyV2 } from '../../src/backend/proxy-protocol.ts';
import type { ProxyEndpoints, ProxyTlsInfo } from '../../src/backend/proxy-protocol.ts';

const SIG = '0d0a0d0a000d0a515549540a';

const v4: ProxyEndpoints = { clientAddress: '192.0.2.7', clientPort: 54321, localAddress: '198.51.100.1', localPort: 465 };
const v6: ProxyEndpoints = { clientAddress: '2001:db8::7', clientPort: 40000, localAddress: '2001:db8:0:0:1::25', localPort: 25 };
const mapped: ProxyEndpoints = { clientAddress: '::ffff:192.0.2.7', clientPort: 54321, localAddress: '::ffff:198.51.100.1', localPort: 465 };
const mixed: ProxyEndpoints = { clientAddress: '192.0.2.7', clientPort: 54321, localAddress: '2001:db8::1', localPort: 465 };
const tls: ProxyTlsInfo = { sni: 'mail.example.org', alpn: 'imap', version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384' };

type Tlv = { type: number; value: Buffer };

function decodeTlvs(buf: Buffer): Tlv[] {
  const out: Tlv[] = [];
  let i = 0;
  while (i < buf.length) {
    expect(i + 3).toBeLessThanOrEqual(buf.length);
    const type = buf.readUInt8(i);
    const len = buf.readUInt16BE(i + 1);
    expect(i + 3 + len).toBeLessThanOrEqual(buf.length);
    out.push({ type, value: buf.subarray(i + 3, i + 3 + len) });
    i += 3 + len;
  }
  return out;
}

/** A tiny v2 decoder: checks signature and length, splits addresses and TLVs. */
function decodeV2(buf: Buffer) {
  expect(buf.subarray(0, 12).toString('hex')).toBe(SIG);
  expect(buf.readUInt8(12)).toBe(0x21);
  const family = buf.readUInt8(13);
  const length = buf.readUInt16BE(14);
  expect(buf.length).toBe(16 + length); // the length field is exact
  const addrLen = family === 0x11 ? 12 : family === 0x21 ? 36 : 0;
  const addr = buf.subarray(16, 16 + addrLen);
  const half = (addrLen - 4) / 2;
  return {
    family,
    src: addr.subarray(0, half),
    dst: addr.subarray(half, 2 * half),
    sport: addrLen ? addr.readUInt16BE(2 * half) : null,
    dport: addrLen ? addr.readUInt16BE(2 * half + 2) : null,
    tlvs: decodeTlvs(buf.subarray(16 + addrLen)),
  };
}

describe('PROXY v1', () => {
  it('writes TCP4', () => {
    expect(encodeProxyV1(v4).toString('latin1')).toBe('PROXY TCP4 192.0.2.7 198.51.100.1 54321 465\r\n');
  });

  it('writes TCP6 in canonical form', () => {
    expect(encodeProxyV1(v6).toString('latin1')).toBe('PROXY TCP6 2001:db8::7 2001:db8::1:0:0:25 40000 25\r\n');
    expect(encodeProxyV1({ clientAddress: '::1', clientPort: 1, localAddress: '::1', localPort: 2 }).toString('latin1'))
      .toBe('PROXY TCP6 ::1 ::1 1 2\r\n');
  });

  it('writes IPv4-mapped IPv6 as TCP4 with the dotted form', () => {
    expect(encodeProxyV1(mapped).toString('latin1')).toBe('PROXY TCP4 192.0.2.7 198.51.100.1 54321 465\r\n');
    // One end mapped, the other plain IPv4: still one family.
    expect(encodeProxyV1({ ...mapped, localAddress: '198.51.100.1' }).toString('latin1'))
      .toBe('PROXY TCP4 192.0.2.7 198.51.100.1 54321 465\r\n');
  });

  it('writes UNKNOWN for mixed families and unusable endpoints', () => {
    expect(encodeProxyV1(mixed).toString('latin1')).toBe('PROXY UNKNOWN\r\n');
    expect(encodeProxyV1({ ...v4, clientAddress: '' }).toString('latin1')).toBe('PROXY UNKNOWN\r\n');
    expect(encodeProxyV1({ ...v4, clientPort: 70000 }).toString('latin1')).toBe('PROXY UNKNOWN\r\n');
  });

  it('stays within the 107-byte limit for the longest IPv6 line', () => {
    const long = 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff';
    const line = encodeProxyV1({ clientAddress: long, clientPort: 65535, localAddress: long, localPort: 65535 });
    expect(line.length).toBe(104);
  });
});

describe('PROXY v2', () => {
  it('encodes an IPv4 header without TLS info, byte for byte', () => {
    const buf = encodeProxyV2(v4, null);
    expect(buf.toString('hex')).toBe(
      SIG + '21' + '11' + '000c' + 'c0000207' + 'c6336401' + 'd431' + '01d1',
    );
  });

  it('encodes an IPv6 header without TLS info, byte for byte', () => {
    const buf = encodeProxyV2(v6, null);
    expect(buf.toString('hex')).toBe(
      SIG + '21' + '21' + '0024'
        + '20010db8000000000000000000000007'
        + '20010db8000000000001000000000025'
        + '9c40' + '0019',
    );
  });

  it('encodes IPv4-mapped endpoints as TCP over IPv4', () => {
    expect(encodeProxyV2(mapped, null).equals(encodeProxyV2(v4, null))).toBe(true);
  });

  it('uses UNSPEC without addresses for mixed families, TLVs still allowed', () => {
    expect(encodeProxyV2(mixed, null).toString('hex')).toBe(SIG + '21' + '00' + '0000');
    const d = decodeV2(encodeProxyV2(mixed, tls));
    expect(d.family).toBe(0x00);
    expect(d.tlvs.map((t) => t.type)).toEqual([0x01, 0x02, 0x20]);
  });

  it('appends ALPN, AUTHORITY and SSL TLVs, byte for byte', () => {
    const buf = encodeProxyV2(v4, { sni: 'a.example', alpn: 'smtp', version: 'TLSv1.3', cipher: 'X' });
    const hex = (s: string) => Buffer.from(s).toString('hex');
    const tlvs =
      '01' + '0004' + hex('smtp')
      + '02' + '0009' + hex('a.example')
      + '20' + '0013' + '01' + '00000001'
        + '21' + '0007' + hex('TLSv1.3')
        + '23' + '0001' + hex('X');
    expect(buf.toString('hex')).toBe(SIG + '21' + '11' + (12 + tlvs.length / 2).toString(16).padStart(4, '0')
      + 'c0000207' + 'c6336401' + 'd431' + '01d1' + tlvs);
  });

  it('round-trips through a decoder: addresses, ports, TLVs and sub-TLVs', () => {
    for (const ep of [v4, v6]) {
      const d = decodeV2(encodeProxyV2(ep, tls));
      expect(d.family).toBe(ep === v4 ? 0x11 : 0x21);
      expect(d.sport).toBe(ep.clientPort);
      expect(d.dport).toBe(ep.localPort);
      const [alpn, authority, ssl] = d.tlvs;
      expect(d.tlvs).toHaveLength(3);
      expect(alpn?.type).toBe(0x01);
      expect(alpn?.value.toString()).toBe('imap');
      expect(authority?.type).toBe(0x02);
      expect(authority?.value.toString()).toBe('mail.example.org');
      expect(ssl?.type).toBe(0x20);
      const value = ssl!.value;
      expect(value.readUInt8(0)).toBe(0x01); // PP2_CLIENT_SSL only: no client certificate
      expect(value.readUInt32BE(1)).not.toBe(0); // verify: non-zero, no certificate was verified
      const subs = decodeTlvs(value.subarray(5));
      expect(subs.map((s) => [s.type, s.value.toString()])).toEqual([
        [0x21, 'TLSv1.3'],
        [0x23, 'TLS_AES_256_GCM_SHA384'],
      ]);
    }
    const d6 = decodeV2(encodeProxyV2(v6, tls));
    expect(d6.src.toString('hex')).toBe('20010db8000000000000000000000007');
  });

  it('omits the TLVs it has no value for, but always sends SSL when TLS info is given', () => {
    const d = decodeV2(encodeProxyV2(v4, { sni: null, alpn: null, version: null, cipher: null }));
    expect(d.tlvs).toHaveLength(1);
    expect(d.tlvs[0]?.type).toBe(0x20);
    expect(d.tlvs[0]?.value.length).toBe(5);
  });

  it('has a length field that matches the bytes that follow', () => {
    for (const ep of [v4, v6, mapped, mixed]) {
      for (const t of [null, tls]) {
        const buf = encodeProxyV2(ep, t);
        expect(buf.readUInt16BE(14)).toBe(buf.length - 16);
      }
    }
  });
});
