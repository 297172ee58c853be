// Builds ClientHello bytes for tests: well-formed by default, every piece overridable so tests
// can build exactly the malformation they need. Encodings follow RFC 8446 s4.1.2 (body),
// RFC 6066 s3 (server_name), RFC 7301 s3.1 (ALPN), RFC 8446 s4.2.1 (supported_versions).

export const EXT = { serverName: 0, alpn: 16, supportedVersions: 43, keyShare: 51, padding: 21 } as const;

export interface Extension {
  type: number;
  data: Buffer;
}

export interface HelloSpec {
  /** host_name for server_name; null/undefined leaves the extension out. */
  sni?: string | Buffer | null;
  /** ALPN protocol names; null/undefined leaves the extension out. */
  alpn?: string[] | null;
  /** supported_versions; defaults to [0x0304, 0x0303]; null leaves the extension out. */
  versions?: number[] | null;
  /** Appended after the extensions above, raw (duplicates allowed: that is the point). */
  extensions?: Extension[];
  cipherSuites?: number[];
  legacyVersion?: number;
  sessionId?: Buffer;
  /** Fixed random by default so builds are reproducible. */
  random?: Buffer;
  /** Omit the extensions block entirely (pre-TLS-1.2 style clients). */
  noExtensions?: boolean;
}

export interface RecordOptions {
  /** Payload bytes per record (1..16384); default 16384. */
  recordSize?: number;
  /** legacy_record_version of every record; default 0x0301 as real clients send. */
  recordVersion?: number;
}

export function u8(n: number): Buffer {
  return Buffer.from([n & 0xff]);
}

export function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n & 0xffff);
  return b;
}

export function u24(n: number): Buffer {
  return Buffer.from([(n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff]);
}

/** opaque<..2^8-1> */
export function vec8(...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  return Buffer.concat([u8(body.length), body]);
}

/** opaque<..2^16-1> */
export function vec16(...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  return Buffer.concat([u16(body.length), body]);
}

export function ext(type: number, data: Buffer): Extension {
  return { type, data };
}

/** server_name with arbitrary entries (two host names, empty names, other name types...). */
export function serverNameExt(entries: Array<{ type?: number; name: string | Buffer }>): Extension {
  const list = entries.map((e) => Buffer.concat([u8(e.type ?? 0), vec16(Buffer.from(e.name))]));
  return ext(EXT.serverName, vec16(...list));
}

export function alpnExt(names: Array<string | Buffer>): Extension {
  return ext(EXT.alpn, vec16(...names.map((n) => vec8(typeof n === 'string' ? Buffer.from(n, 'latin1') : n))));
}

export function supportedVersionsExt(versions: number[]): Extension {
  return ext(EXT.supportedVersions, vec8(...versions.map(u16)));
}

export function encodeExtensions(exts: Extension[]): Buffer {
  return vec16(...exts.map((e) => Buffer.concat([u16(e.type), vec16(e.data)])));
}

/** The handshake message: msg_type 1, uint24 length, ClientHello body. */
export function buildHandshake(spec: HelloSpec = {}): Buffer {
  const exts: Extension[] = [];
  if (spec.sni !== undefined && spec.sni !== null) exts.push(serverNameExt([{ name: spec.sni }]));
  if (spec.alpn) exts.push(alpnExt(spec.alpn));
  const versions = spec.versions === undefined ? [0x0304, 0x0303] : spec.versions;
  if (versions) exts.push(supportedVersionsExt(versions));
  exts.push(...(spec.extensions ?? []));
  const body = Buffer.concat([
    u16(spec.legacyVersion ?? 0x0303),
    spec.random ?? Buffer.alloc(32, 0xab),
    vec8(spec.sessionId ?? Buffer.alloc(32, 0xcd)),
    vec16(...(spec.cipherSuites ?? [0x1301, 0x1302, 0x1303, 0xc02f]).map(u16)),
    vec8(u8(0)),
    spec.noExtensions ? Buffer.alloc(0) : encodeExtensions(exts),
  ]);
  return Buffer.concat([u8(1), u24(body.length), body]);
}

/** One TLS record (RFC 8446 s5.1); the length field is taken from the payload unless given. */
export function record(payload: Buffer, opts: { type?: number; version?: number; length?: number } = {}): Buffer {
  return Buffer.concat([u8(opts.type ?? 22), u16(opts.version ?? 0x0301), u16(opts.length ?? payload.length), payload]);
}

/** Fragments a handshake message into handshake records of `recordSize` payload bytes. */
export function wrapRecords(message: Buffer, opts: RecordOptions = {}): Buffer {
  const size = opts.recordSize ?? 16384;
  if (size < 1) throw new Error('recordSize must be at least 1');
  const out: Buffer[] = [];
  for (let i = 0; i < message.length; i += size) {
    out.push(record(message.subarray(i, i + size), { version: opts.recordVersion ?? 0x0301 }));
  }
  return Buffer.concat(out);
}

/** A complete ClientHello as it goes on the wire. */
export function buildClientHello(spec: HelloSpec = {}, opts: RecordOptions = {}): Buffer {
  return wrapRecords(buildHandshake(spec), opts);
}

/** Concatenated payloads of a sequence of well-formed records (to re-fragment a capture). */
export function unwrapRecords(wire: Buffer): Buffer {
  const out: Buffer[] = [];
  for (let p = 0; p + 5 <= wire.length; ) {
    const len = wire.readUInt16BE(p + 3);
    out.push(wire.subarray(p + 5, p + 5 + len));
    p += 5 + len;
  }
  return Buffer.concat(out);
}
