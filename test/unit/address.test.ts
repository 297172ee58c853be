// Client addresses as the limits, the load-balancer allow-list and the logs see them
// (src/net/address.ts). Property tests over the whole Unicode range and over address-shaped text:
// every function is total (issue 14 finding 5: a zone id that runs to 9 groups ended the process
// in clientKey), and an IPv4-mapped IPv6 address in any spelling is its IPv4 client.
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import net from 'node:net';
import { inNetworks, clientKey, unmapped } from '../../src/net/address.ts';
import { parseCidr } from '../../src/config/schema.ts';
import type { Cidr } from '../../src/config/types.ts';

const nets = (...xs: string[]) => xs.map((x) => {
  const r = parseCidr(x);
  if (!r.ok) throw new Error(r.message);
  return r.value;
});

const SOME = nets('10.0.0.0/8', '127.0.0.2', '2001:db8::/32', '192.168.1.128/25', 'fe80::/10', '::ffff:198.51.100.0/120', '::/0');

describe('client addresses', () => {
  it('matches IPv4, IPv6 and IPv4-mapped IPv6 against networks', () => {
    const n = nets('10.0.0.0/8', '127.0.0.2', '2001:db8::/32', '192.168.1.128/25');
    expect(inNetworks('10.200.3.4', n)).toBe(true);
    expect(inNetworks('::ffff:10.1.1.1', n)).toBe(true);
    expect(inNetworks('::ffff:a01:101', n)).toBe(true);
    expect(inNetworks('127.0.0.2', n)).toBe(true);
    expect(inNetworks('127.0.0.3', n)).toBe(false);
    expect(inNetworks('2001:db8:1::5', n)).toBe(true);
    expect(inNetworks('2001:DB8:1::5', n)).toBe(true);
    expect(inNetworks('2001:db9::5', n)).toBe(false);
    expect(inNetworks('192.168.1.200', n)).toBe(true);
    expect(inNetworks('192.168.1.100', n)).toBe(false);
    expect(inNetworks('not an address', n)).toBe(false);
    expect(inNetworks('', n)).toBe(false);
  });

  it('keeps families apart: ::/0 is every IPv6 client, not every IPv4 one; a mapped network is IPv4', () => {
    expect(inNetworks('2001:db8::1', nets('::/0'))).toBe(true);
    expect(inNetworks('192.0.2.1', nets('::/0'))).toBe(false);
    expect(inNetworks('::ffff:192.0.2.1', nets('::/0'))).toBe(false);
    expect(inNetworks('::1', nets('0.0.0.0/0'))).toBe(false);
    expect(inNetworks('192.0.2.1', nets('0.0.0.0/0'))).toBe(true);
    // A network written in IPv4-mapped form is the IPv4 network it names.
    expect(inNetworks('198.51.100.7', nets('::ffff:198.51.100.0/120'))).toBe(true);
    expect(inNetworks('::ffff:c633:6407', nets('::ffff:198.51.100.0/120'))).toBe(true);
    expect(inNetworks('198.51.101.7', nets('::ffff:198.51.100.0/120'))).toBe(false);
  });

  it('counts IPv6 clients per /64 and IPv4 per address', () => {
    expect(clientKey('2001:db8:1:2:aaaa::1')).toBe(clientKey('2001:db8:1:2:bbbb::9'));
    expect(clientKey('2001:db8:1:2:aaaa::1')).toBe(clientKey('2001:DB8:1:2:0:0:0:7'));
    expect(clientKey('2001:db8:1:3::1')).not.toBe(clientKey('2001:db8:1:2::1'));
    expect(clientKey('::ffff:192.0.2.1')).toBe('192.0.2.1');
    expect(clientKey('192.0.2.1')).toBe('192.0.2.1');
    expect(unmapped('::1')).toBe('::1');
  });

  it('an IPv4-mapped address in hex form (as a PROXY v2 TCP6 block carries it) is the IPv4 client', () => {
    expect(clientKey('::ffff:c633:6401')).toBe('198.51.100.1');
    expect(clientKey('::ffff:c633:6402')).not.toBe(clientKey('::ffff:c633:6401'));
    expect(unmapped('::ffff:c633:6401')).toBe('198.51.100.1');
    expect(unmapped('0:0:0:0:0:FFFF:C633:6401')).toBe('198.51.100.1');
  });

  it('writes IPv6 in RFC 5952 form: lowercase, the longest run of zero groups compressed', () => {
    // RFC 5952 section 4.1 (no leading zeros), 4.2.1 (longest run), 4.2.2 (not one group),
    // 4.2.3 (first of equal runs), 4.3 (lowercase).
    expect(unmapped('2001:0DB8:0000:0000:0000:0000:0000:0001')).toBe('2001:db8::1');
    expect(unmapped('2001:db8:0:1:1:1:1:1')).toBe('2001:db8:0:1:1:1:1:1');
    expect(unmapped('2001:0:0:1:0:0:0:1')).toBe('2001:0:0:1::1');
    expect(unmapped('2001:db8:0:0:1:0:0:1')).toBe('2001:db8::1:0:0:1');
    expect(unmapped('0:0:1:0:0:0:0:1')).toBe('0:0:1::1');
    expect(unmapped('2001:db8:0:0:1::')).toBe('2001:db8:0:0:1::');
    expect(unmapped('0:0:0:0:0:0:0:0')).toBe('::');
    expect(unmapped('fe80::1%eth0')).toBe('fe80::1%eth0');
  });

  it('clientKey of a zone id that runs to 9 groups (PROXY v1 "fe80::1%1:2:3:4:5:6:7:8:9") does not throw', () => {
    expect(() => clientKey('fe80::1%1:2:3:4:5:6:7:8:9')).not.toThrow();
    expect(() => inNetworks('fe80::1%1:2:3:4:5:6:7:8:9', SOME)).not.toThrow();
    expect(() => unmapped('fe80::1%1:2:3:4:5:6:7:8:9')).not.toThrow();
    expect(typeof clientKey('fe80::1%1:2:3:4:5:6:7:8:9')).toBe('string');
  });

  it('a link-local address with a zone id counts in its /64 and matches fe80::/10', () => {
    expect(clientKey('fe80::1%eth0')).toBe(clientKey('fe80::2'));
    expect(inNetworks('fe80::1%eth0', nets('fe80::/10'))).toBe(true);
  });
});

// ---- properties

/** Text made of the characters addresses are made of, with now and then anything at all. */
const addressish = fc.string({
  unit: fc.oneof(
    { weight: 12, arbitrary: fc.constantFrom(...'0123456789abcdefABCDEF:.%') },
    { weight: 1, arbitrary: fc.constantFrom('::', 'ffff', '::ffff:', '%eth0', ' ', '/', '[', ']', '\u2028', '\u0000', '\uffff') },
    { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 1 }) },
  ),
  maxLength: 60,
});

const anyText = fc.oneof(fc.string({ unit: 'grapheme', maxLength: 80 }), fc.string({ unit: 'binary', maxLength: 80 }), addressish);

const RUNS = 3000;

function total(address: string) {
  const key = clientKey(address);
  expect(typeof key).toBe('string');
  expect(typeof inNetworks(address, SOME)).toBe('boolean');
  expect(typeof unmapped(address)).toBe('string');
}

const ipv4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255));

/** A 16-bit group as hex, in either case, with 0-3 leading zeros. */
const hexGroup = (v: number) =>
  fc.tuple(fc.boolean(), fc.nat(3)).map(([upper, pad]) => {
    const h = v.toString(16).padStart(Math.min(4, v.toString(16).length + pad), '0');
    return upper ? h.toUpperCase() : h;
  });

/** ::ffff:a.b.c.d spelled any way RFC 4291 section 2.2 allows (zeros written out or compressed, dotted or hex tail). */
const mappedSpelling = ipv4.chain(([a, b, c, d]) =>
  fc
    .record({
      zerosWritten: fc.nat(5),
      ffff: hexGroup(0xffff),
      zero: hexGroup(0),
      hi: hexGroup((a << 8) | b),
      lo: hexGroup((c << 8) | d),
      dotted: fc.boolean(),
    })
    .map((r) => {
      const tail = r.dotted ? `${a}.${b}.${c}.${d}` : `${r.hi}:${r.lo}`;
      const zeros = Array.from({ length: r.zerosWritten }, () => r.zero);
      const head = r.zerosWritten === 5 ? `${zeros.join(':')}:` : `${zeros.join(':')}::`;
      return { v4: `${a}.${b}.${c}.${d}`, text: `${head}${r.ffff}:${tail}` };
    }),
);

/** Any IPv6 address, written out in full or with its first run of zero groups compressed. */
const ipv6Spelling = fc
  .tuple(fc.array(fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff })), { minLength: 8, maxLength: 8 }), fc.boolean())
  .map(([groups, compress]) => {
    const full = groups.map((g) => g.toString(16)).join(':');
    return compress ? full.replace(/(^|:)0(:0)+(:|$)/, '::') : full;
  });

/** Reference for CIDR membership: compare the first `prefix` bits. */
function bitsMatch(addr: Buffer, cidr: Cidr): boolean {
  for (let i = 0; i < cidr.prefix; i++) {
    const bit = (b: Buffer) => (b[i >> 3]! >> (7 - (i & 7))) & 1;
    if (bit(addr) !== bit(cidr.bytes)) return false;
  }
  return true;
}

describe('client address functions are total', () => {
  it('clientKey, inNetworks and unmapped never throw for any text (full Unicode, address-shaped)', () => {
    fc.assert(fc.property(anyText, (s) => total(s)), { numRuns: RUNS });
  });

  it('...nor for address-shaped text with a zone id', () => {
    fc.assert(fc.property(addressish, addressish, (a, z) => total(`${a}%${z}`)), { numRuns: RUNS });
  });

  it('...nor for a valid IPv6 address with any zone id (RFC 4007 section 11: "%" and anything)', () => {
    fc.assert(fc.property(ipv6Spelling, fc.oneof(addressish, anyText), (a, z) => total(`${a}%${z}`)), { numRuns: RUNS });
  });

  it('unmapped gives a valid address for exactly the texts Node calls IPv4 or IPv6 (without a zone)', () => {
    fc.assert(
      fc.property(addressish.filter((s) => !s.includes('%')), (s) => {
        const out = unmapped(s);
        if (net.isIP(s) === 0) expect(out).toBe(s);
        else expect(net.isIP(out)).not.toBe(0);
      }),
      { numRuns: RUNS },
    );
  });
});

describe('IPv4-mapped IPv6 is the IPv4 client, in any spelling', () => {
  it('the same key, the same text and the same network checks as the dotted quad', () => {
    fc.assert(
      fc.property(mappedSpelling, ({ v4, text }) => {
        expect(net.isIPv6(text)).toBe(true);
        expect(clientKey(text)).toBe(v4);
        expect(unmapped(text)).toBe(v4);
        expect(inNetworks(text, SOME)).toBe(inNetworks(v4, SOME));
      }),
      { numRuns: RUNS },
    );
  });

  it('two different IPv4 clients never share a key, whichever way they are written', () => {
    fc.assert(
      fc.property(mappedSpelling, mappedSpelling, (x, y) => {
        expect(clientKey(x.text) === clientKey(y.text)).toBe(x.v4 === y.v4);
      }),
      { numRuns: RUNS },
    );
  });
});

describe('network membership (net.BlockList) agrees with a bit-by-bit reference', () => {
  const v4cidr = fc.tuple(ipv4, fc.nat(32)).map(([[a, b, c, d], p]) => `${a}.${b}.${c}.${d}/${p}`);
  const v6bytes = fc.uint8Array({ minLength: 16, maxLength: 16 }).map((u) => Buffer.from(u));
  const v6text = (b: Buffer) => Array.from({ length: 8 }, (_, i) => b.readUInt16BE(i * 2).toString(16)).join(':');
  const v6cidr = fc.tuple(v6bytes, fc.nat(128)).map(([b, p]) => `${v6text(b)}/${p}`);

  it('IPv4 addresses (and their mapped form) against IPv4 networks', () => {
    fc.assert(
      fc.property(ipv4, v4cidr, fc.nat(32), ([a, b, c, d], text, share) => {
        const cidr = nets(text)[0]!;
        // Half the time an address inside the network, so both answers are exercised.
        const bytes = Buffer.from([a, b, c, d]);
        for (let i = 0; i < Math.min(share, cidr.prefix); i++) {
          const mask = 1 << (7 - (i & 7));
          bytes[i >> 3] = (bytes[i >> 3]! & ~mask) | (cidr.bytes[i >> 3]! & mask);
        }
        const addr = [...bytes].join('.');
        expect(inNetworks(addr, [cidr])).toBe(bitsMatch(bytes, cidr));
        expect(inNetworks(`::ffff:${addr}`, [cidr])).toBe(bitsMatch(bytes, cidr));
      }),
      { numRuns: RUNS },
    );
  });

  it('IPv6 addresses against IPv6 networks', () => {
    fc.assert(
      fc.property(v6bytes, v6cidr, fc.nat(128), (raw, text, share) => {
        const cidr = nets(text)[0]!;
        const bytes = Buffer.from(raw);
        for (let i = 0; i < Math.min(share, cidr.prefix); i++) {
          const mask = 1 << (7 - (i & 7));
          bytes[i >> 3] = (bytes[i >> 3]! & ~mask) | (cidr.bytes[i >> 3]! & mask);
        }
        const isMapped = bytes.subarray(0, 10).every((x) => x === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
        const cidrMapped = cidr.prefix >= 96 && cidr.bytes.subarray(0, 10).every((x) => x === 0) && cidr.bytes[10] === 0xff && cidr.bytes[11] === 0xff;
        // A mapped address is an IPv4 client: only IPv4 (or mapped-form) networks can hold it.
        const want = isMapped ? cidrMapped && bitsMatch(bytes, cidr) : bitsMatch(bytes, cidr);
        expect(inNetworks(v6text(bytes), [cidr])).toBe(want);
      }),
      { numRuns: RUNS },
    );
  });
});
