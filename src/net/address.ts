// IP addresses as text, in one place: what the per-client limits count, what the load-balancer
// allow-list matches, what the logs and the PROXY headers say. Pure functions, no sockets.
// Every function is total: any string in (garbage, zone ids, Unicode), a value out, never a
// throw (issue 14 finding 5: "fe80::1%1:2:3:4:5:6:7:8:9" in a PROXY v1 header reached the old
// hand-written byte conversion and its RangeError ended the process).
//
// One client, one spelling: an IPv4-mapped IPv6 address (RFC 4291 section 2.5.5.2,
// ::ffff:a.b.c.d, however it is written) is the IPv4 client a.b.c.d. HAProxy on
// `bind :::port v4v6` names every IPv4 client that way; counted as IPv6 they all fell in one /64.
import { BlockList } from 'node:net';
import type { Cidr } from '../config/types.ts';

export interface IpAddress {
  family: 4 | 6;
  /** Network order: 4 bytes, or 16. */
  bytes: Buffer;
  /** An IPv6 scope zone (RFC 4007 section 11: "fe80::1%eth0"), as a socket may report it. */
  zone: string | null;
}

/** The longest IPv6 text: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255". */
const MAX_IPV6_TEXT = 45;
/** Interface names are short (IFNAMSIZ 16); numeric zones shorter still. */
const MAX_ZONE = 64;
/** RFC 6943 section 3.1.1 and proxy-protocol.txt section 2.1: decimal, no heading zeros. */
const OCTET = /^(?:0|[1-9][0-9]{0,2})$/;
const HEX_GROUP = /^[0-9a-fA-F]{1,4}$/;
/** A dotted quad exactly as formatAddress writes it (0-255, no heading zeros). */
const CANONICAL_IPV4 = /^(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
/** Printable ASCII without "%" or space: what an interface name or number can be. */
const ZONE = /^[\x21-\x24\x26-\x7e]+$/;

/**
 * A dotted quad, strictly: exactly four decimal numbers 0-255 without heading zeros
 * ("010.0.0.1" is refused, not read as octal). Null for anything else.
 */
export function parseIPv4(text: string): Buffer | null {
  if (typeof text !== 'string' || text.length > 15) return null;
  const parts = text.split('.');
  if (parts.length !== 4) return null;
  const out = Buffer.alloc(4);
  for (let i = 0; i < 4; i++) {
    const p = parts[i] ?? '';
    if (!OCTET.test(p)) return null;
    const n = Number(p);
    if (n > 255) return null;
    out[i] = n;
  }
  return out;
}

/**
 * IPv6 text as RFC 4291 section 2.2 defines it: eight groups of 1-4 hex digits, at most one "::"
 * standing for one or more zero groups, optionally a dotted quad as the last 32 bits. No zone,
 * no brackets, no prefix length. Null for anything else.
 */
export function parseIPv6(text: string): Buffer | null {
  if (typeof text !== 'string' || text.length < 2 || text.length > MAX_IPV6_TEXT) return null;
  const halves = text.split('::');
  if (halves.length > 2) return null;
  const compressed = halves.length === 2;
  const head = groupsOf(halves[0] ?? '', !compressed);
  const tail = compressed ? groupsOf(halves[1] ?? '', true) : [];
  if (!head || !tail) return null;
  const written = head.length + tail.length;
  if (compressed ? written > 7 : written !== 8) return null;
  const all = [...head, ...new Array<number>(8 - written).fill(0), ...tail];
  const out = Buffer.alloc(16);
  all.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  return out;
}

/** The 16-bit groups of one side of "::"; a dotted quad only as the address's last part. */
function groupsOf(part: string, endsAddress: boolean): number[] | null {
  if (part === '') return [];
  const fields = part.split(':');
  const out: number[] = [];
  for (let i = 0; i < fields.length; i++) {
    const f = fields[i] ?? '';
    if (HEX_GROUP.test(f)) out.push(parseInt(f, 16));
    else if (endsAddress && i === fields.length - 1 && f.includes('.')) {
      const v4 = parseIPv4(f);
      if (!v4) return null;
      out.push(v4.readUInt16BE(0), v4.readUInt16BE(2));
    } else return null;
  }
  return out;
}

function isMapped(bytes: Buffer): boolean {
  if (bytes.length !== 16) return false;
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

/** IPv4-mapped IPv6 becomes the IPv4 address it maps (its zone, meaningless for IPv4, goes). */
function normalise(a: IpAddress): IpAddress {
  return a.family === 6 && isMapped(a.bytes) ? { family: 4, bytes: Buffer.from(a.bytes.subarray(12)), zone: null } : a;
}

/**
 * An IPv4 or IPv6 address (IPv6 with an optional "%zone", as Node reports link-local peers),
 * IPv4-mapped IPv6 returned as IPv4. Null when the text is not an address.
 */
export function parseAddress(text: string): IpAddress | null {
  if (typeof text !== 'string' || text.length === 0 || text.length > MAX_IPV6_TEXT + 1 + MAX_ZONE) return null;
  const pct = text.indexOf('%');
  if (pct < 0) {
    const v4 = parseIPv4(text);
    if (v4) return { family: 4, bytes: v4, zone: null };
  }
  const zone = pct < 0 ? null : text.slice(pct + 1);
  if (zone !== null && (zone.length > MAX_ZONE || !ZONE.test(zone))) return null;
  const v6 = parseIPv6(pct < 0 ? text : text.slice(0, pct));
  return v6 ? normalise({ family: 6, bytes: v6, zone }) : null;
}

/** 4 or 16 network-order bytes (a PROXY v2 address block) as an address; null for other lengths. */
export function addressFromBytes(bytes: Buffer): IpAddress | null {
  if (bytes.length === 4) return { family: 4, bytes: Buffer.from(bytes), zone: null };
  if (bytes.length === 16) return normalise({ family: 6, bytes: Buffer.from(bytes), zone: null });
  return null;
}

/** Dotted quad, or RFC 5952 IPv6 text (then "%zone" when there is one). */
export function formatAddress(a: IpAddress): string {
  if (a.family === 4) return [...a.bytes.subarray(0, 4)].join('.');
  const text = formatIPv6(a.bytes);
  return a.zone === null ? text : `${text}%${a.zone}`;
}

/**
 * RFC 5952 section 4: lowercase hex (4.3), no leading zeros (4.1), "::" for the longest run of two
 * or more zero groups (4.2.1, 4.2.2), the first one when runs tie (4.2.3). Hex throughout: an
 * IPv4-mapped address never gets here (it is written as IPv4), other embedded forms are rare.
 */
function formatIPv6(bytes: Buffer): string {
  const groups = Array.from({ length: 8 }, (_, i) => (bytes.length >= 16 ? bytes.readUInt16BE(i * 2) : 0));
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

/**
 * The address as postern writes it (logs, PROXY headers): IPv4-mapped IPv6 as the dotted quad,
 * IPv6 in RFC 5952 form. Text that is not an address comes back unchanged.
 */
export function unmapped(address: string): string {
  // What Node reports for every IPv4 peer, already in the form written: not parsed again (two
  // calls per connection).
  if (CANONICAL_IPV4.test(address)) return address;
  const a = parseAddress(address);
  return a ? formatAddress(a) : address;
}

/** Each allow-list's BlockLists, built once per (immutable) list from the loaded config. */
const blockLists = new WeakMap<readonly Cidr[], { v4: BlockList; v6: BlockList }>();

/**
 * Two lists so that families stay apart (Node's BlockList would match an IPv4 address against
 * an IPv6 rule through its mapped form, so "::/0" would trust every IPv4 client): IPv4 networks,
 * and IPv6 networks written in mapped form (::ffff:10.0.0.0/104), in one; other IPv6 in the other.
 */
function listsFor(networks: readonly Cidr[]): { v4: BlockList; v6: BlockList } {
  const cached = blockLists.get(networks);
  if (cached) return cached;
  const lists = { v4: new BlockList(), v6: new BlockList() };
  for (const n of networks) {
    const bits = n.family === 4 ? 32 : 128;
    // parseCidr never yields anything else; a hand-made Cidr that is wrong matches nothing.
    if (n.bytes.length !== bits / 8 || !Number.isInteger(n.prefix) || n.prefix < 0 || n.prefix > bits) continue;
    if (n.family === 4) lists.v4.addSubnet([...n.bytes].join('.'), n.prefix, 'ipv4');
    else if (isMapped(n.bytes) && n.prefix >= 96) lists.v4.addSubnet([...n.bytes.subarray(12)].join('.'), n.prefix - 96, 'ipv4');
    else lists.v6.addSubnet(formatIPv6(n.bytes), n.prefix, 'ipv6');
  }
  blockLists.set(networks, lists);
  return lists;
}

/**
 * True when the address lies in one of the networks. IPv4-mapped IPv6 counts as IPv4; an IPv4
 * client matches only IPv4 networks (or networks written in mapped form), an IPv6 client only
 * IPv6 ones. A zone id does not change the answer. Text that is not an address is in no network.
 */
export function inNetworks(address: string, networks: readonly Cidr[]): boolean {
  const a = parseAddress(address);
  if (!a || networks.length === 0) return false;
  const lists = listsFor(networks);
  return a.family === 4 ? lists.v4.check(formatAddress(a), 'ipv4') : lists.v6.check(formatIPv6(a.bytes), 'ipv6');
}

/**
 * The key the per-client connection limit counts by: the IPv4 address (also when written as
 * IPv4-mapped IPv6), or the /64 of an IPv6 address, "2001:db8:1:2::/64" (one customer LAN gets a
 * /64, and one host can use any address in it, RFC 4941). Text that is not an address is its own key.
 */
export function clientKey(address: string): string {
  const a = parseAddress(address);
  if (!a) return address;
  if (a.family === 4) return formatAddress(a);
  const prefix = Buffer.alloc(16);
  a.bytes.copy(prefix, 0, 0, 8);
  return `${formatIPv6(prefix)}/64`;
}
