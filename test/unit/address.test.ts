import { describe, it, expect } from 'vitest';
import { inNetworks, clientKey, unmapped } from '../../src/net/address.ts';
import { parseCidr } from '../../src/config/schema.ts';

const nets = (...xs: string[]) => xs.map((x) => {
  const r = parseCidr(x);
  if (!r.ok) throw new Error(r.message);
  return r.value;
});

describe('client addresses', () => {
  it('matches IPv4, IPv6 and IPv4-mapped IPv6 against networks', () => {
    const n = nets('10.0.0.0/8', '127.0.0.2', '2001:db8::/32', '192.168.1.128/25');
    expect(inNetworks('10.200.3.4', n)).toBe(true);
    expect(inNetworks('::ffff:10.1.1.1', n)).toBe(true);
    expect(inNetworks('127.0.0.2', n)).toBe(true);
    expect(inNetworks('127.0.0.3', n)).toBe(false);
    expect(inNetworks('2001:db8:1::5', n)).toBe(true);
    expect(inNetworks('2001:db9::5', n)).toBe(false);
    expect(inNetworks('192.168.1.200', n)).toBe(true);
    expect(inNetworks('192.168.1.100', n)).toBe(false);
    expect(inNetworks('not an address', n)).toBe(false);
  });
  it('counts IPv6 clients per /64 and IPv4 per address', () => {
    expect(clientKey('2001:db8:1:2:aaaa::1')).toBe(clientKey('2001:db8:1:2:bbbb::9'));
    expect(clientKey('2001:db8:1:3::1')).not.toBe(clientKey('2001:db8:1:2::1'));
    expect(clientKey('::ffff:192.0.2.1')).toBe('192.0.2.1');
    expect(unmapped('::1')).toBe('::1');
  });
});
