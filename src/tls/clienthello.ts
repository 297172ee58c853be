// Pure ClientHello parser: bytes in, one of need-more | not-tls | hello | malformed out.
// No sockets and no exceptions: every read is bounds-checked, every length is checked against its
// container, and the work is linear in the input. The caller (peek.ts) re-runs it on the growing
// buffer, so it decides as early as the bytes allow (first byte for not-TLS, declared lengths for
// too_large) and otherwise answers need-more.

export const MAX_HELLO_BYTES = 65536;

export interface ClientHello {
  recordVersion: number; // from the first record header, e.g. 0x0301
  legacyVersion: number; // client_version in the hello body, e.g. 0x0303
  /** Raw host_name bytes of the server_name extension (RFC 6066 s3), or null if absent. Not validated or lowercased here. */
  serverName: Buffer | null;
  /** ALPN protocol names (RFC 7301 s3.1), decoded latin1; null if the extension is absent. */
  alpn: string[] | null;
  /** supported_versions (RFC 8446 s4.2.1) or null if absent. */
  supportedVersions: number[] | null;
  cipherSuites: number[];
  /** Extension types in the order they appear. */
  extensionTypes: number[];
  /**
   * The first 16 bytes of the session ticket the client offers, the name of the key that made it
   * (an OpenSSL stateless ticket): from the first PSK identity (RFC 8446 s4.2.11) or the
   * SessionTicket extension (RFC 5077 s3.2); null when there is none. Never a reason to refuse.
   */
  ticketName: Buffer | null;
}

export type HelloParse =
  | { kind: 'need-more' }
  | { kind: 'not-tls'; reason: 'plaintext' | 'sslv2' | 'not-handshake' }
  | { kind: 'hello'; hello: ClientHello; /** bytes of buf that made up the records carrying the hello */ consumed: number }
  | { kind: 'malformed'; code: MalformedCode; detail: string };

export type MalformedCode =
  | 'record_too_long'
  | 'record_empty'
  | 'bad_record_version'
  | 'not_client_hello'
  | 'length_overrun'
  | 'trailing_bytes'
  | 'duplicate_extension'
  | 'bad_server_name'
  | 'bad_alpn'
  | 'bad_supported_versions'
  | 'too_large';

const CT_HANDSHAKE = 22; // RFC 8446 s5.1 ContentType.handshake
const HT_CLIENT_HELLO = 1; // RFC 8446 s4 HandshakeType.client_hello
const RECORD_HEADER = 5; // type(1) legacy_record_version(2) length(2)
// RFC 8446 s5.2: TLSCiphertext.length MUST NOT exceed 2^14 + 256. Plaintext records are bounded
// by 2^14 (s5.1); we accept the larger ciphertext bound to stay lenient and let OpenSSL decide.
const MAX_RECORD = 2 ** 14 + 256;
const EXT_SERVER_NAME = 0; // RFC 6066 s3
const EXT_ALPN = 16; // RFC 7301 s3.1
const EXT_SUPPORTED_VERSIONS = 43; // RFC 8446 s4.2.1
const EXT_SESSION_TICKET = 35; // RFC 5077 s3.2
const EXT_PRE_SHARED_KEY = 41; // RFC 8446 s4.2.11
const TICKET_NAME = 16;

const NEED_MORE: HelloParse = { kind: 'need-more' };

function bad(code: MalformedCode, detail: string): HelloParse {
  return { kind: 'malformed', code, detail };
}

/** A failure inside a sub-parser, turned into a malformed result by the caller. */
class Bad {
  code: MalformedCode;
  detail: string;
  constructor(code: MalformedCode, detail: string) {
    this.code = code;
    this.detail = detail;
  }
}

/** Bounds-checked cursor over one vector; reads return null instead of running past the end. */
class Reader {
  buf: Buffer;
  pos = 0;
  constructor(buf: Buffer) {
    this.buf = buf;
  }
  get left(): number {
    return this.buf.length - this.pos;
  }
  u8(): number | null {
    if (this.left < 1) return null;
    return this.buf[this.pos++]!;
  }
  u16(): number | null {
    if (this.left < 2) return null;
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  take(n: number): Buffer | null {
    if (n > this.left) return null;
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  /** opaque<..2^8-1>: a 1-byte length, then that many bytes. */
  vec8(): Buffer | null {
    const n = this.u8();
    return n === null ? null : this.take(n);
  }
  /** opaque<..2^16-1>: a 2-byte length, then that many bytes. */
  vec16(): Buffer | null {
    const n = this.u16();
    return n === null ? null : this.take(n);
  }
}

/**
 * Parses the ClientHello at the start of `buf`. Bytes after the records that carry the hello
 * (e.g. TLS 1.3 early data) are left alone; `consumed` says where they start.
 */
export function parseClientHello(buf: Buffer, maxBytes: number = MAX_HELLO_BYTES): HelloParse {
  return new HelloScanner(maxBytes).scan(buf);
}

/**
 * The same parse, resumable over a growing buffer: `scan()` is called with longer and longer
 * prefixes of one byte stream (the peek buffer as chunks arrive) and continues from the last
 * complete record instead of walking every record again. Re-parsing from the start on every
 * chunk cost O(n^2): a 54 KiB hello in 1-byte records sent 1 byte per write took ~11 s of CPU.
 * Each call returns exactly what parseClientHello() returns for the same bytes.
 */
export class HelloScanner {
  private readonly maxBytes: number;
  // A handshake message may be fragmented over any number of records (RFC 8446 s5.1), down to
  // 1-byte records. Walk the records, remember where their payloads are, and learn the 4-byte
  // handshake header (msg_type, uint24 length; RFC 8446 s4) as soon as its bytes exist, even in a
  // partial record.
  private pos = 0; // start of the current record (all records before it are complete and checked)
  private have = 0; // payload bytes of complete records so far
  private msgEnd = -1; // 4 + declared body length, once the handshake header is known
  private readonly head: number[] = [];
  private readonly frags: number[] = []; // [start, end) offsets of complete records' payloads
  private done: HelloParse | null = null;

  constructor(maxBytes: number = MAX_HELLO_BYTES) {
    this.maxBytes = maxBytes;
  }

  /** `buf` must extend the buffer of the previous call (same bytes at the same offsets). */
  scan(buf: Buffer): HelloParse {
    if (this.done) return this.done;
    const r = this.step(buf);
    if (r.kind !== 'need-more') this.done = r;
    return r;
  }

  private step(buf: Buffer): HelloParse {
    if (buf.length === 0) return NEED_MORE;
    if (buf[0] !== CT_HANDSHAKE) return classifyNotTls(buf);
    const { maxBytes, head, frags } = this;
    for (;;) {
      const pos = this.pos;
      const avail = buf.length - pos;
      // Only handshake records until the hello is complete: an alert, change_cipher_spec or
      // application_data record here cannot belong to a ClientHello (RFC 8446 s5.1: handshake
      // messages MUST NOT be interleaved with other record types).
      if (avail >= 1 && buf[pos] !== CT_HANDSHAKE) return bad('not_client_hello', `record type ${buf[pos]} at offset ${pos}`);
      if (avail >= 2 && buf[pos + 1] !== 3) return bad('bad_record_version', `record version major ${buf[pos + 1]} at offset ${pos}`);
      if (avail < RECORD_HEADER) return NEED_MORE;
      const len = buf.readUInt16BE(pos + 3);
      if (len > MAX_RECORD) return bad('record_too_long', `record length ${len} at offset ${pos}`);
      // RFC 8446 s5.1: zero-length fragments of handshake types MUST NOT be sent.
      if (len === 0) return bad('record_empty', `zero-length record at offset ${pos}`);
      const recEnd = pos + RECORD_HEADER + len;
      if (recEnd > maxBytes) return bad('too_large', `record ending at ${recEnd} exceeds ${maxBytes} bytes`);

      // Header bytes taken from a partial record on an earlier call are taken again below.
      if (head.length > this.have) head.length = Math.min(4, this.have);
      const payloadEnd = Math.min(recEnd, buf.length);
      for (let i = pos + RECORD_HEADER; head.length < 4 && i < payloadEnd; i++) head.push(buf[i]!);
      if (head.length >= 1 && head[0] !== HT_CLIENT_HELLO) return bad('not_client_hello', `handshake type ${head[0]}`);
      if (head.length === 4 && this.msgEnd < 0) this.msgEnd = 4 + ((head[1]! << 16) | (head[2]! << 8) | head[3]!);
      const msgEnd = this.msgEnd;
      if (msgEnd >= 0) {
        const missing = msgEnd - (this.have + len); // message bytes still to come after this record
        // The record that ends the hello must end with it: nothing else belongs in this flight.
        if (missing < 0) return bad('trailing_bytes', `${-missing} bytes after the hello in the record at offset ${pos}`);
        // Each missing byte needs a byte on the wire plus a header per record of at most MAX_RECORD.
        const needed = recEnd + missing + Math.ceil(missing / MAX_RECORD) * RECORD_HEADER;
        if (needed > maxBytes) return bad('too_large', `hello of ${msgEnd - 4} bytes needs at least ${needed} > ${maxBytes} bytes`);
      }
      if (recEnd > buf.length) return NEED_MORE;

      frags.push(pos + RECORD_HEADER, recEnd);
      this.have += len;
      this.pos = recEnd;
      if (this.have === msgEnd) break;
    }
    const have = this.have;
    let msg: Buffer;
    if (frags.length === 2) msg = buf.subarray(frags[0]!, frags[1]!);
    else {
      msg = Buffer.allocUnsafe(have);
      for (let i = 0, at = 0; i < frags.length; i += 2) at += buf.copy(msg, at, frags[i]!, frags[i + 1]!);
    }
    const hello = parseBody(msg.subarray(4), buf.readUInt16BE(1));
    if (hello instanceof Bad) return bad(hello.code, hello.detail);
    return { kind: 'hello', hello, consumed: this.pos };
  }
}

function classifyNotTls(buf: Buffer): HelloParse {
  const b0 = buf[0]!;
  // SSL 2.0 CLIENT-HELLO (RFC 6101 appendix E.2): a 2-byte record header with the high bit set,
  // then msg_type 1. Telling it apart from other binary needs byte 2; it is not-TLS either way.
  if (b0 & 0x80) {
    if (buf.length < 3) return NEED_MORE;
    return { kind: 'not-tls', reason: buf[2] === 1 ? 'sslv2' : 'not-handshake' };
  }
  // Printable ASCII or line whitespace: a text protocol (EHLO, GET /, a CAPABILITY, PROXY ...).
  if ((b0 >= 0x20 && b0 <= 0x7e) || b0 === 0x09 || b0 === 0x0a || b0 === 0x0d) return { kind: 'not-tls', reason: 'plaintext' };
  return { kind: 'not-tls', reason: 'not-handshake' };
}

/** The ClientHello body (RFC 8446 s4.1.2; RFC 5246 s7.4.1.2 for pre-1.3 clients). */
function parseBody(body: Buffer, recordVersion: number): ClientHello | Bad {
  const r = new Reader(body);
  const legacyVersion = r.u16();
  if (legacyVersion === null || r.take(32) === null) return new Bad('length_overrun', 'body shorter than version and random');
  const sessionId = r.vec8();
  if (sessionId === null) return new Bad('length_overrun', 'legacy_session_id overruns the body');
  if (sessionId.length > 32) return new Bad('length_overrun', `legacy_session_id of ${sessionId.length} bytes (max 32)`);
  const suites = r.vec16();
  if (suites === null) return new Bad('length_overrun', 'cipher_suites overruns the body');
  // cipher_suites<2..2^16-2>: whole 2-byte suites, at least one.
  if (suites.length < 2 || suites.length % 2 !== 0) return new Bad('length_overrun', `cipher_suites of ${suites.length} bytes`);
  const cipherSuites: number[] = [];
  for (let i = 0; i < suites.length; i += 2) cipherSuites.push(suites.readUInt16BE(i));
  const compression = r.vec8();
  if (compression === null) return new Bad('length_overrun', 'legacy_compression_methods overruns the body');
  if (compression.length < 1) return new Bad('length_overrun', 'empty legacy_compression_methods');

  const hello: ClientHello = {
    recordVersion,
    legacyVersion,
    serverName: null,
    alpn: null,
    supportedVersions: null,
    cipherSuites,
    extensionTypes: [],
    ticketName: null,
  };
  // Very old clients end the hello here; RFC 5246 s7.4.1.2 lets servers detect that. An empty
  // block is accepted too (TLS 1.2 allows extensions<0..2^16-1>; only 1.3 says <8..>).
  if (r.left === 0) return hello;
  const block = r.vec16();
  if (block === null) return new Bad('length_overrun', 'extensions overrun the body');
  if (r.left > 0) return new Bad('trailing_bytes', `${r.left} bytes after the extensions`);

  const seen = new Set<number>();
  const ext = new Reader(block);
  while (ext.left > 0) {
    const type = ext.u16();
    const data = ext.vec16();
    if (type === null || data === null) return new Bad('length_overrun', `extension at offset ${ext.pos} overruns the extensions block`);
    // RFC 8446 s4.2: there MUST NOT be more than one extension of the same type.
    if (seen.has(type)) return new Bad('duplicate_extension', `extension ${type} appears twice`);
    seen.add(type);
    hello.extensionTypes.push(type);
    if (type === EXT_SERVER_NAME) {
      const v = parseServerName(data);
      if (v instanceof Bad) return v;
      hello.serverName = v;
    } else if (type === EXT_ALPN) {
      const v = parseAlpn(data);
      if (v instanceof Bad) return v;
      hello.alpn = v;
    } else if (type === EXT_SUPPORTED_VERSIONS) {
      const v = parseSupportedVersions(data);
      if (v instanceof Bad) return v;
      hello.supportedVersions = v;
    } else if (type === EXT_PRE_SHARED_KEY) {
      // The PSK (TLS 1.3) wins over a SessionTicket extension sent alongside for TLS 1.2.
      hello.ticketName = pskTicketName(data) ?? hello.ticketName;
    } else if (type === EXT_SESSION_TICKET && hello.ticketName === null && data.length >= TICKET_NAME) {
      hello.ticketName = Buffer.from(data.subarray(0, TICKET_NAME));
    }
  }
  return hello;
}

/**
 * RFC 6066 s3: ServerNameList server_name_list<1..2^16-1>, each entry name_type(1) plus
 * HostName opaque<1..2^16-1>. "The ServerNameList MUST NOT contain more than one name of the
 * same name_type": two host names are refused, never first-wins, so postern and OpenSSL can
 * never disagree about which name was asked for. Entries of other name types are skipped
 * (parsed as opaque<1..2^16-1>, as the brief for this parser asks; OpenSSL is stricter and
 * refuses them; a list of only such entries yields null). Returns a copy, so the result does not pin the socket buffer.
 */
function parseServerName(data: Buffer): Buffer | null | Bad {
  // An empty extension body is the server's acknowledgement form (RFC 6066 s3), never a client's.
  if (data.length === 0) return new Bad('bad_server_name', 'empty server_name extension');
  const r = new Reader(data);
  const list = r.vec16();
  if (list === null || r.left > 0) return new Bad('bad_server_name', 'server_name_list does not fit the extension');
  if (list.length === 0) return new Bad('bad_server_name', 'empty server_name_list');
  const entries = new Reader(list);
  let host: Buffer | null = null;
  while (entries.left > 0) {
    const nameType = entries.u8();
    const name = entries.vec16();
    if (nameType === null || name === null) return new Bad('bad_server_name', 'server_name entry overruns the list');
    if (name.length === 0) return new Bad('bad_server_name', `empty name of name_type ${nameType}`);
    if (nameType !== 0) continue;
    if (host !== null) return new Bad('bad_server_name', 'more than one host_name');
    host = name;
  }
  return host === null ? null : Buffer.from(host);
}

/** RFC 7301 s3.1: ProtocolName protocol_name_list<2..2^16-1>, ProtocolName opaque<1..2^8-1>. */
function parseAlpn(data: Buffer): string[] | Bad {
  const r = new Reader(data);
  const list = r.vec16();
  if (list === null || r.left > 0) return new Bad('bad_alpn', 'protocol_name_list does not fit the extension');
  if (list.length < 2) return new Bad('bad_alpn', `protocol_name_list of ${list.length} bytes`);
  const names = new Reader(list);
  const out: string[] = [];
  while (names.left > 0) {
    const name = names.vec8();
    if (name === null) return new Bad('bad_alpn', 'protocol name overruns the list');
    // RFC 7301 s3.1: empty strings MUST NOT be included.
    if (name.length === 0) return new Bad('bad_alpn', 'empty protocol name');
    out.push(name.toString('latin1'));
  }
  return out;
}

/**
 * RFC 8446 s4.2.11: OfferedPsks { PskIdentity identities<7..2^16-1>; binders }, PskIdentity
 * { opaque identity<1..2^16-1>; uint32 obfuscated_ticket_age }. The first identity's first 16
 * bytes, or null. Only a key hint: a malformed extension is OpenSSL's to refuse, not ours.
 */
function pskTicketName(data: Buffer): Buffer | null {
  const r = new Reader(data);
  const identities = r.vec16();
  if (identities === null) return null;
  const first = new Reader(identities).vec16();
  return first !== null && first.length >= TICKET_NAME ? Buffer.from(first.subarray(0, TICKET_NAME)) : null;
}

/** RFC 8446 s4.2.1, ClientHello form: ProtocolVersion versions<2..254>. */
function parseSupportedVersions(data: Buffer): number[] | Bad {
  const r = new Reader(data);
  const list = r.vec8();
  if (list === null || r.left > 0) return new Bad('bad_supported_versions', 'versions do not fit the extension');
  if (list.length < 2 || list.length % 2 !== 0) return new Bad('bad_supported_versions', `versions of ${list.length} bytes`);
  const out: number[] = [];
  for (let i = 0; i < list.length; i += 2) out.push(list.readUInt16BE(i));
  return out;
}
