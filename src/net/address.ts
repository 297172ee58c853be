// Client addresses as the limits and the load-balancer allow-list see them. Pure functions.
import { isIPv4, isIPv6 } from 'node:net';
import type { Cidr } from '../config/types.ts';
import { addressBytes } from '../config/schema.ts';

/** "::ffff:192.0.2.1" -> "192.0.2.1"; other addresses unchanged. */
export function unmapped(address: string): string {
  return address.startsWith('::ffff:') && isIPv4(address.slice(7)) ? address.slice(7) : address;
}

/** True when the address lies in one of the networks (IPv4-mapped IPv6 counts as IPv4). */
export function inNetworks(address: string, networks: readonly Cidr[]): boolean {
  const a = unmapped(address);
  const family = isIPv4(a) ? 4 : isIPv6(a) ? 6 : 0;
  if (family === 0) return false;
  const bytes = addressBytes(a, family);
  return networks.some((n) => n.family === family && prefixEqual(bytes, n.bytes, n.prefix));
}

function prefixEqual(a: Buffer, b: Buffer, prefix: number): boolean {
  const whole = prefix >> 3;
  if (a.compare(b, 0, whole, 0, whole) !== 0) return false;
  const rest = prefix & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (a[whole]! & mask) === (b[whole]! & mask);
}

/**
 * The key the per-client connection limit counts by: the IPv4 address, or the /64 of an IPv6
 * address (one customer LAN gets a /64, and one host can use any address in it, RFC 4941).
 */
export function clientKey(address: string): string {
  const a = unmapped(address);
  if (!isIPv6(a)) return a;
  return addressBytes(a, 6).subarray(0, 8).toString('hex') + '/64';
}
