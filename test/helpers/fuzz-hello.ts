// Shared by the ClientHello property tests (test/unit/fuzz-clienthello.test.ts) and the
// coverage-guided fuzzer (fuzz/): the invariants every parse must keep, the places of the length
// fields in a well-formed hello (for targeted tampering), and the captured hellos.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { HelloScanner, parseClientHello, MAX_HELLO_BYTES, type HelloParse } from '../../src/tls/clienthello.ts';

export const FIXTURE_DIR = join(import.meta.dirname, '..', 'fixtures', 'hellos');
export const FIXTURE_FILES = ['node24-x25519mlkem768.bin', 'node24-nosni.bin', 'node24-tls12.bin', 'openssl-s_client.bin', 'curl.bin'] as const;

export function fixtures(): Buffer[] {
  return FIXTURE_FILES.map((f) => readFileSync(join(FIXTURE_DIR, f)));
}

/** Generous: a parse is microseconds; this only catches a hang or a quadratic blow-up on a loaded machine. */
export const MAX_PARSE_MS = 100;

const KINDS = new Set(['need-more', 'not-tls', 'hello', 'malformed']);
const NOT_TLS = new Set(['plaintext', 'sslv2', 'not-handshake']);
const CODES = new Set([
  'record_too_long', 'record_empty', 'bad_record_version', 'not_client_hello', 'length_overrun', 'trailing_bytes',
  'duplicate_extension', 'bad_server_name', 'bad_alpn', 'bad_supported_versions', 'too_large',
]);

/** A broken invariant, with what broke. */
export class InvariantError extends Error {}

function fail(msg: string): never {
  throw new InvariantError(msg);
}

/** The result is one of the four kinds, with well-typed fields. */
export function checkShape(r: HelloParse, input: Buffer): void {
  if (!r || typeof r !== 'object' || !KINDS.has(r.kind)) fail(`not a HelloParse: ${JSON.stringify(r)}`);
  switch (r.kind) {
    case 'need-more':
      if (input[0] === 0x16 && input.length >= MAX_HELLO_BYTES + 5) fail(`need-more on ${input.length} bytes, past the budget`);
      return;
    case 'not-tls':
      if (!NOT_TLS.has(r.reason)) fail(`not-tls reason ${r.reason}`);
      if (input[0] === 0x16) fail('not-tls although the first byte is 0x16');
      return;
    case 'malformed':
      if (!CODES.has(r.code)) fail(`malformed code ${r.code}`);
      if (typeof r.detail !== 'string') fail('malformed without detail');
      return;
    case 'hello': {
      const h = r.hello;
      if (!Number.isInteger(r.consumed) || r.consumed < 10 || r.consumed > input.length || r.consumed > MAX_HELLO_BYTES) fail(`consumed ${r.consumed} of ${input.length}`);
      if (input[0] !== 0x16) fail('hello although the first byte is not 0x16');
      if (h.serverName !== null && !(Buffer.isBuffer(h.serverName) && h.serverName.length > 0)) fail('serverName is neither null nor a non-empty Buffer');
      if (h.serverName !== null && h.serverName.buffer === input.buffer && h.serverName.byteOffset < input.byteOffset + input.length && input.byteOffset < h.serverName.byteOffset + h.serverName.length) fail('serverName is a view of the input (pins the socket buffer)');
      if (h.alpn !== null && !(Array.isArray(h.alpn) && h.alpn.length > 0 && h.alpn.every((p) => typeof p === 'string' && p.length > 0 && p.length < 256))) fail(`alpn ${JSON.stringify(h.alpn)}`);
      if (h.supportedVersions !== null && !(h.supportedVersions.length > 0 && h.supportedVersions.every((v) => Number.isInteger(v) && v >= 0 && v <= 0xffff))) fail('supportedVersions');
      if (h.cipherSuites.length < 1) fail('no cipher suites');
      if (new Set(h.extensionTypes).size !== h.extensionTypes.length) fail('duplicate extension accepted');
      if ((h.serverName !== null) && !h.extensionTypes.includes(0)) fail('serverName without extension 0');
      if ((h.alpn !== null) !== h.extensionTypes.includes(16)) fail('alpn and extension 16 disagree');
      return;
    }
  }
}

/** Parses with a time bound; never throws except for a broken invariant. */
export function checkParse(input: Buffer): HelloParse {
  const t = performance.now();
  let r: HelloParse;
  try {
    r = parseClientHello(input);
  } catch (err) {
    fail(`parseClientHello threw: ${(err as Error)?.stack ?? String(err)}`);
  }
  const ms = performance.now() - t;
  if (ms > MAX_PARSE_MS) fail(`parse took ${ms.toFixed(1)} ms for ${input.length} bytes`);
  checkShape(r, input);
  // Deterministic and pure: a second parse of a copy is the same.
  const again = parseClientHello(Buffer.from(input));
  if (JSON.stringify(again) !== JSON.stringify(r)) fail('a second parse of the same bytes differs');
  return r;
}

/**
 * The peek path's incremental scanner, fed `input` cut at `cuts` (sorted offsets): at every
 * prefix it answers what a fresh parse of that prefix answers (checked at up to ~128 of them), and
 * once final it stays final.
 */
export function checkChunked(input: Buffer, cuts: number[]): HelloParse {
  const scanner = new HelloScanner();
  const ends = [...new Set(cuts.filter((c) => c > 0 && c < input.length))].sort((a, b) => a - b);
  ends.push(input.length);
  let final: HelloParse | null = null;
  // The oracle (a fresh parse of the prefix) costs O(prefix), so comparing at every one of
  // thousands of cuts is quadratic in the test, not in the scanner: compare at most ~128 evenly
  // spread prefixes, and always where the scanner first gives a final answer.
  const every = Math.max(1, Math.ceil(ends.length / 128));
  for (const [i, end] of ends.entries()) {
    const prefix = input.subarray(0, end);
    let r: HelloParse;
    try {
      r = scanner.scan(prefix);
    } catch (err) {
      fail(`HelloScanner threw at ${end}: ${(err as Error)?.stack ?? String(err)}`);
    }
    if (final) {
      if (JSON.stringify(r) !== JSON.stringify(final)) fail(`final result changed at ${end}`);
      continue;
    }
    if (r.kind === 'need-more' && i % every !== 0) continue;
    const fresh = parseClientHello(prefix);
    if (JSON.stringify(r) !== JSON.stringify(fresh)) fail(`scanner at ${end} bytes: ${JSON.stringify(r)} != fresh ${JSON.stringify(fresh)}`);
    if (r.kind !== 'need-more') final = r;
  }
  // A final answer on a prefix is the answer for the whole input (decisions are made as early as
  // the bytes allow, and never revised).
  const whole = parseClientHello(input);
  const last = final ?? { kind: 'need-more' };
  if (JSON.stringify(last) !== JSON.stringify(whole)) fail(`chunked ${JSON.stringify(last)} != whole ${JSON.stringify(whole)}`);
  return whole;
}

export interface LengthField {
  offset: number;
  size: 1 | 2 | 3;
}

/**
 * The length fields of a well-formed hello in one record (the captures, hello-builder output):
 * record, handshake, session id, cipher suites, compression, extensions block, each extension,
 * and inside server_name, ALPN and supported_versions. [] when the bytes do not walk.
 */
export function lengthFields(wire: Buffer): LengthField[] {
  const out: LengthField[] = [];
  try {
    if (wire.length < 9 || wire.readUInt16BE(3) !== wire.length - 5) return [];
    out.push({ offset: 3, size: 2 }, { offset: 6, size: 3 });
    let p = 9 + 2 + 32;
    out.push({ offset: p, size: 1 });
    p += 1 + wire[p]!;
    out.push({ offset: p, size: 2 });
    p += 2 + wire.readUInt16BE(p);
    out.push({ offset: p, size: 1 });
    p += 1 + wire[p]!;
    if (p >= wire.length) return out;
    out.push({ offset: p, size: 2 });
    const end = p + 2 + wire.readUInt16BE(p);
    for (p += 2; p + 4 <= end; ) {
      const type = wire.readUInt16BE(p);
      const len = wire.readUInt16BE(p + 2);
      out.push({ offset: p + 2, size: 2 });
      const d = p + 4;
      if (type === 0) {
        out.push({ offset: d, size: 2 });
        for (let q = d + 2; q + 3 <= d + len; q += 3 + wire.readUInt16BE(q + 1)) out.push({ offset: q + 1, size: 2 });
      } else if (type === 16) {
        out.push({ offset: d, size: 2 });
        for (let q = d + 2; q < d + len; q += 1 + wire[q]!) out.push({ offset: q, size: 1 });
      } else if (type === 43) {
        out.push({ offset: d, size: 1 });
      }
      p = d + len;
    }
  } catch {
    return out;
  }
  return out.filter((f) => f.offset + f.size <= wire.length);
}

/** Writes `value` (masked to the field's size) into a copy of `wire`. */
export function setLength(wire: Buffer, f: LengthField, value: number): Buffer {
  const b = Buffer.from(wire);
  if (f.size === 1) b[f.offset] = value & 0xff;
  else if (f.size === 2) b.writeUInt16BE(value & 0xffff, f.offset);
  else b.writeUIntBE(value & 0xffffff, f.offset, 3);
  return b;
}

export function readLength(wire: Buffer, f: LengthField): number {
  return f.size === 1 ? wire[f.offset]! : f.size === 2 ? wire.readUInt16BE(f.offset) : wire.readUIntBE(f.offset, 3);
}
