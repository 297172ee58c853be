import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import net from 'node:net';
import { decodeProxyHeader } from '../../src/backend/proxy-decode.ts';
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

// ---- Decoding what a load balancer sends (acceptProxyProtocol): haproxy proxy-protocol.txt
// section 2.1 (v1) and 2.2 (v2). The decoded source is the client postern counts, logs and sends
// onwards, so it comes out normalised: IPv4-mapped IPv6 as the dotted quad, IPv6 in RFC 5952 form.

describe('decodeProxyHeader', () => {
  const v1 = (line: string) => decodeProxyHeader(Buffer.from(line, 'utf8'));
  const header = (d: ReturnType<typeof decodeProxyHeader>) => {
    if (d.kind !== 'header') throw new Error(`expected a header, got ${JSON.stringify(d)}`);
    return d.header;
  };
  /** A v2 PROXY header with a TCP6 block: 16-byte source and destination, ports. */
  const v2tcp6 = (src: Buffer, dst: Buffer, sport = 40000, dport = 465) => {
    const body = Buffer.alloc(36);
    src.copy(body, 0);
    dst.copy(body, 16);
    body.writeUInt16BE(sport, 32);
    body.writeUInt16BE(dport, 34);
    return Buffer.concat([Buffer.from(SIG, 'hex'), Buffer.from([0x21, 0x21, 0x00, 36]), body]);
  };
  const mappedBytes = (v4: number[]) => Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...v4]);

  it('v1 TCP4 and TCP6 with valid addresses are accepted', () => {
    expect(header(v1('PROXY TCP4 198.51.100.1 203.0.113.25 40000 465\r\n'))).toMatchObject({
      family: 'TCP4', source: { address: '198.51.100.1', port: 40000 }, destination: { address: '203.0.113.25', port: 465 },
    });
    expect(header(v1('PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 0 65535\r\n'))).toMatchObject({
      family: 'TCP6', source: { address: '2001:db8::1', port: 0 }, destination: { address: '::1', port: 65535 },
    });
    expect(header(v1('PROXY UNKNOWN\r\n'))).toMatchObject({ command: 'LOCAL', family: 'UNSPEC', source: null });
    expect(header(v1('PROXY UNKNOWN anything at all\r\n'))).toMatchObject({ command: 'LOCAL', family: 'UNSPEC', source: null });
  });

  it('v1 TCP6 with IPv4-mapped addresses (HAProxy on a v4v6 bind) gives the IPv4 client', () => {
    expect(header(v1('PROXY TCP6 ::ffff:198.51.100.1 ::ffff:203.0.113.25 40000 465\r\n'))).toMatchObject({
      family: 'TCP4', source: { address: '198.51.100.1', port: 40000 }, destination: { address: '203.0.113.25', port: 465 },
    });
    expect(header(v1('PROXY TCP6 ::FFFF:C633:6401 ::ffff:203.0.113.25 40000 465\r\n')).source).toEqual({ address: '198.51.100.1', port: 40000 });
  });

  const refused: Array<[string, string]> = [
    ['a zone id', 'PROXY TCP6 fe80::1%eth0 ::1 1234 465\r\n'],
    ['a zone id that runs to 9 groups', 'PROXY TCP6 fe80::1%1:2:3:4:5:6:7:8:9 ::1 1234 465\r\n'],
    ['9 groups', 'PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1234 465\r\n'],
    ['an IPv4 address in TCP6', 'PROXY TCP6 198.51.100.1 ::1 1234 465\r\n'],
    ['an IPv4 destination in TCP6', 'PROXY TCP6 ::1 127.0.0.1 1234 465\r\n'],
    ['an IPv6 address in TCP4', 'PROXY TCP4 2001:db8::1 127.0.0.1 1234 465\r\n'],
    ['an IPv4-mapped address in TCP4', 'PROXY TCP4 ::ffff:198.51.100.1 127.0.0.1 1234 465\r\n'],
    ['an octet over 255', 'PROXY TCP4 198.51.100.256 127.0.0.1 1234 465\r\n'],
    ['three octets', 'PROXY TCP4 198.51.100 127.0.0.1 1234 465\r\n'],
    ['five octets', 'PROXY TCP4 198.51.100.1.2 127.0.0.1 1234 465\r\n'],
    ['a heading zero in an octet', 'PROXY TCP4 198.051.100.1 127.0.0.1 1234 465\r\n'],
    ['brackets', 'PROXY TCP6 [::1] ::1 1234 465\r\n'],
    ['a prefix length', 'PROXY TCP4 198.51.100.0/24 127.0.0.1 1234 465\r\n'],
    ['a heading zero in a port', 'PROXY TCP4 198.51.100.1 127.0.0.1 01234 465\r\n'],
    ['a port with a sign', 'PROXY TCP4 198.51.100.1 127.0.0.1 +1234 465\r\n'],
    ['a port over 65535', 'PROXY TCP4 198.51.100.1 127.0.0.1 1234 65536\r\n'],
    ['a port of six digits', 'PROXY TCP4 198.51.100.1 127.0.0.1 1234 000465\r\n'],
    ['an empty field', 'PROXY TCP4 198.51.100.1  127.0.0.1 1234 465\r\n'],
    ['U+2028 after the address', 'PROXY TCP6 2001:db8::1\u2028 ::1 1234 465\r\n'],
    ['non-ASCII digits', 'PROXY TCP4 198.51.100.\u0661 127.0.0.1 1234 465\r\n'],
    ['a lone LF inside', 'PROXY TCP4 198.51.100.1\n127.0.0.1 1234 465\r\n'],
    ['a lowercase protocol', 'PROXY tcp4 198.51.100.1 127.0.0.1 1234 465\r\n'],
  ];
  for (const [name, line] of refused) {
    it(`v1 with ${name} is invalid`, () => {
      expect(v1(line).kind).toBe('invalid');
    });
  }

  it('v1: a lone LF is refused at once, not after 107 bytes', () => {
    expect(v1('PROXY TCP4 198.51.100.1\n').kind).toBe('invalid');
  });

  it('v2 TCP6 with IPv4-mapped addresses (HAProxy `bind :::port v4v6`) gives the IPv4 client', () => {
    const h = header(decodeProxyHeader(v2tcp6(mappedBytes([198, 51, 100, 1]), mappedBytes([203, 0, 113, 25]))));
    expect(h).toMatchObject({ family: 'TCP4', source: { address: '198.51.100.1', port: 40000 }, destination: { address: '203.0.113.25', port: 465 } });
  });

  it('v2 TCP6 addresses are written in RFC 5952 form', () => {
    const cases: Array<[string, string]> = [
      ['00000000000000000000000000000001', '::1'],
      ['00000000000000000000000000000000', '::'],
      ['20010db8000000000001000000000000', '2001:db8:0:0:1::'],
      ['00000001000000000000000000000001', '0:1::1'],
      ['0000000000010000000000000000ffff', '0:0:1::ffff'],
      ['20010db8000000000001000000000001', '2001:db8::1:0:0:1'],
      ['20010db8000100010001000100010001', '2001:db8:1:1:1:1:1:1'],
      ['20010db8000000010001000100010001', '2001:db8:0:1:1:1:1:1'],
      ['FE800000000000000000000000ABCDEF'.toLowerCase(), 'fe80::ab:cdef'],
    ];
    for (const [hex, text] of cases) {
      expect(header(decodeProxyHeader(v2tcp6(Buffer.from(hex, 'hex'), Buffer.from(hex, 'hex')))).source!.address).toBe(text);
    }
  });

  // ---- properties

  const RUNS = 3000;
  const bytes = (max: number) => fc.uint8Array({ maxLength: max }).map((a) => Buffer.from(a));
  const v1Token = fc.oneof(
    fc.string({ unit: fc.constantFrom(...'0123456789abcdefABCDEF:.%'), maxLength: 45 }),
    fc.string({ unit: 'grapheme', maxLength: 20 }),
    fc.string({ unit: 'binary', maxLength: 20 }),
    fc.constantFrom('::ffff:198.51.100.1', 'fe80::1%1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7:8:9', '0', '65535', '65536', '-1', '+1'),
  );
  const v1Line = fc
    .tuple(fc.constantFrom('TCP4', 'TCP6', 'UNKNOWN', 'tcp4', 'UDP4', ''), v1Token, v1Token, v1Token, v1Token, fc.constantFrom('\r\n', '\n', '\r', ''))
    .map(([p, a, b, c, d, end]) => Buffer.from(`PROXY ${p} ${a} ${b} ${c} ${d}${end}`, 'utf8'));
  const v2Any = fc
    .tuple(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), bytes(120))
    .map(([verCmd, fam, body]) => {
      const len = Buffer.alloc(2);
      len.writeUInt16BE(body.length);
      return Buffer.concat([Buffer.from(SIG, 'hex'), Buffer.from([verCmd, fam]), len, body]);
    });
  const anyInput = fc.oneof(bytes(300), v1Line, v2Any, fc.string({ unit: 'grapheme', maxLength: 120 }).map((s) => Buffer.from(`PROXY ${s}\r\n`, 'utf8')));

  /** An address as postern uses it: a strict dotted quad, or RFC 5952 IPv6 that is not IPv4-mapped. */
  function normalised(address: string) {
    if (net.isIPv4(address)) return;
    expect(net.isIPv6(address), address).toBe(true);
    expect(address).not.toMatch(/[%A-F.]/);
    expect(address).not.toMatch(/(^|:)0[0-9a-f]/); // no leading zeros in a group
    expect(address.split('::').length).toBeLessThanOrEqual(2);
    const full = new net.SocketAddress({ address, family: 'ipv6' }).address;
    expect(full.startsWith('::ffff:') && full.includes('.'), `${address} is IPv4-mapped`).toBe(false);
  }

  it('never throws for any bytes; every decoded address is normalised', () => {
    fc.assert(
      fc.property(anyInput, (buf) => {
        const d = decodeProxyHeader(buf);
        expect(['need-more', 'invalid', 'header']).toContain(d.kind);
        if (d.kind === 'header') {
          for (const end of [d.header.source, d.header.destination]) if (end) normalised(end.address);
          expect(d.header.length).toBeLessThanOrEqual(buf.length);
        }
      }),
      { numRuns: RUNS },
    );
  });

  it('v2 TCP6: any 16 bytes decode to canonical text of those bytes; mapped ones to the dotted quad', () => {
    const sixteen = fc.oneof(
      fc.uint8Array({ minLength: 16, maxLength: 16 }),
      fc.uint8Array({ minLength: 4, maxLength: 4 }).map((v4) => new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...v4])),
      // Zero runs of every length and place, to exercise "the longest run" (RFC 5952 section 4.2.3).
      fc.array(fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 0, max: 0xffff })), { minLength: 8, maxLength: 8 }).map((g) => {
        const b = Buffer.alloc(16);
        g.forEach((v, i) => b.writeUInt16BE(v, i * 2));
        return new Uint8Array(b);
      }),
    );
    fc.assert(
      fc.property(sixteen, (raw) => {
        const src = Buffer.from(raw);
        const h = header(decodeProxyHeader(v2tcp6(src, src)));
        const address = h.source!.address;
        normalised(address);
        const isMapped = src.subarray(0, 10).every((x) => x === 0) && src[10] === 0xff && src[11] === 0xff;
        if (isMapped) {
          expect(address).toBe([...src.subarray(12)].join('.'));
          expect(h.family).toBe('TCP4');
          return;
        }
        expect(h.family).toBe('TCP6');
        // The same 16 bytes: Node (libuv inet_pton/ntop) reads both texts to the same address.
        const groups = Array.from({ length: 8 }, (_, i) => src.readUInt16BE(i * 2).toString(16)).join(':');
        expect(new net.SocketAddress({ address, family: 'ipv6' }).address).toBe(new net.SocketAddress({ address: groups, family: 'ipv6' }).address);
        // RFC 5952 section 4.2: "::" replaces the longest run of two or more zero groups, the first on a tie.
        const g = groups.split(':');
        let best = -1;
        let bestLen = 1;
        for (let i = 0; i < 8; i++) {
          let j = i;
          while (j < 8 && g[j] === '0') j++;
          if (j - i > bestLen) [best, bestLen] = [i, j - i];
        }
        const want = best < 0 ? groups : `${g.slice(0, best).join(':')}::${g.slice(best + bestLen).join(':')}`;
        expect(address).toBe(want);
      }),
      { numRuns: RUNS },
    );
  });

  it('v1: what is accepted is exactly two addresses of the named family and two ports in range', () => {
    fc.assert(
      fc.property(v1Line, (buf) => {
        const d = decodeProxyHeader(buf);
        if (d.kind !== 'header' || d.header.command === 'LOCAL') return;
        const [, proto, a, b, sp, dp] = buf.toString('latin1').replace(/\r\n$/, '').split(' ');
        expect(proto === 'TCP4' ? net.isIPv4(a!) && net.isIPv4(b!) : net.isIPv6(a!) && net.isIPv6(b!)).toBe(true);
        expect(`${a}${b}`).not.toContain('%');
        for (const p of [sp!, dp!]) expect(p).toMatch(/^(0|[1-9][0-9]{0,4})$/);
        expect(d.header.source!.port).toBeLessThanOrEqual(65535);
        expect(d.header.destination!.port).toBeLessThanOrEqual(65535);
      }),
      { numRuns: RUNS },
    );
  });
});
