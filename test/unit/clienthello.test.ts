import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { MAX_HELLO_BYTES, parseClientHello } from '../../src/tls/clienthello.ts';
import type { HelloParse } from '../../src/tls/clienthello.ts';
import {
  EXT,
  alpnExt,
  buildClientHello,
  buildHandshake,
  ext,
  record,
  serverNameExt,
  supportedVersionsExt,
  u16,
  u24,
  u8,
  unwrapRecords,
  vec16,
  vec8,
  wrapRecords,
} from '../helpers/hello-builder.ts';

const fixtureDir = fileURLToPath(new URL('../fixtures/hellos/', import.meta.url));
const fixture = (name: string) => readFileSync(fixtureDir + name);

interface Expected {
  file: string;
  sni: string | null;
  alpn: string[] | null;
  versions: number[] | null;
}

const fixtures: Expected[] = [
  { file: 'node24-x25519mlkem768.bin', sni: 'mail.example.org', alpn: ['smtp'], versions: [0x0304, 0x0303] },
  { file: 'node24-nosni.bin', sni: null, alpn: null, versions: [0x0304, 0x0303] },
  { file: 'node24-tls12.bin', sni: 'mail.example.org', alpn: ['imap', 'pop3'], versions: null },
  { file: 'openssl-s_client.bin', sni: 'mail.example.org', alpn: ['imap'], versions: [0x0304, 0x0303, 0x0302, 0x0301] },
  { file: 'curl.bin', sni: 'mail.example.org', alpn: ['h2', 'http/1.1'], versions: [0x0304, 0x0303, 0x0302, 0x0301] },
];

function expectHello(r: HelloParse) {
  if (r.kind !== 'hello') throw new Error(`expected a hello, got ${JSON.stringify(r)}`);
  return r;
}

function expectMalformed(r: HelloParse, code: string) {
  expect(r).toMatchObject({ kind: 'malformed', code });
}

/** A handshake message around a raw ClientHello body, in one record. */
function wireFromBody(body: Buffer): Buffer {
  return wrapRecords(Buffer.concat([u8(1), u24(body.length), body]));
}

const version = u16(0x0303);
const random = Buffer.alloc(32, 1);
const sid = vec8(Buffer.alloc(32, 2));
const suites = vec16(u16(0x1301), u16(0x1302));
const compression = vec8(u8(0));

/** Key share groups (RFC 8446 s4.2.8) read from a handshake message, for the PQ check. */
function keyShareGroups(msg: Buffer): number[] {
  let p = 4 + 2 + 32;
  p += 1 + msg[p]!;
  p += 2 + msg.readUInt16BE(p);
  p += 1 + msg[p]!;
  const end = p + 2 + msg.readUInt16BE(p);
  for (p += 2; p + 4 <= end; p += 4 + msg.readUInt16BE(p + 2)) {
    if (msg.readUInt16BE(p) !== EXT.keyShare) continue;
    const groups: number[] = [];
    for (let q = p + 6; q + 4 <= p + 4 + msg.readUInt16BE(p + 2); q += 4 + msg.readUInt16BE(q + 2)) groups.push(msg.readUInt16BE(q));
    return groups;
  }
  return [];
}

describe('captured ClientHellos', () => {
  it.each(fixtures)('$file parses with its SNI, ALPN and versions', ({ file, sni, alpn, versions }) => {
    const wire = fixture(file);
    const r = expectHello(parseClientHello(wire));
    expect(r.consumed).toBe(wire.length);
    expect(r.hello.serverName?.toString('latin1') ?? null).toBe(sni);
    expect(r.hello.alpn).toEqual(alpn);
    expect(r.hello.supportedVersions).toEqual(versions);
    expect(r.hello.recordVersion).toBe(0x0301);
    expect(r.hello.legacyVersion).toBe(0x0303);
    expect(r.hello.cipherSuites.length).toBeGreaterThan(0);
    expect(r.hello.extensionTypes.includes(EXT.serverName)).toBe(sni !== null);
    expect(r.hello.extensionTypes.includes(EXT.alpn)).toBe(alpn !== null);
    expect(r.hello.extensionTypes.includes(EXT.supportedVersions)).toBe(versions !== null);
  });

  it('Node 24 offers an X25519MLKEM768 key share, over 1.5 KB, still in one record', () => {
    const wire = fixture('node24-x25519mlkem768.bin');
    expect(wire.length).toBeGreaterThan(1500);
    expect(wire.readUInt16BE(3)).toBe(wire.length - 5); // one record
    expect(keyShareGroups(unwrapRecords(wire))).toContain(0x11ec);
  });

  it.each(fixtures)('$file fed one byte at a time is need-more until the last byte', ({ file }) => {
    const wire = fixture(file);
    const whole = parseClientHello(wire);
    for (let n = 0; n < wire.length; n++) {
      const r = parseClientHello(wire.subarray(0, n));
      if (r.kind !== 'need-more') throw new Error(`prefix ${n}: ${JSON.stringify(r)}`);
    }
    expect(parseClientHello(Buffer.from(wire))).toEqual(whole);
  });

  it.each(fixtures)('$file re-fragmented into 1-byte records parses the same', ({ file }) => {
    const wire = fixture(file);
    const whole = expectHello(parseClientHello(wire));
    const split = wrapRecords(unwrapRecords(wire), { recordSize: 1 });
    const r = expectHello(parseClientHello(split));
    expect(r.hello).toEqual(whole.hello);
    expect(r.consumed).toBe(split.length);
    for (let n = 0; n < split.length; n += 97) expect(parseClientHello(split.subarray(0, n)).kind).toBe('need-more');
  });

  it.each(fixtures)('$file re-fragmented into N-byte records parses the same', ({ file }) => {
    const wire = fixture(file);
    const whole = expectHello(parseClientHello(wire));
    for (const size of [2, 3, 4, 5, 7, 64, 255, 512, 1000]) {
      const split = wrapRecords(unwrapRecords(wire), { recordSize: size });
      const r = expectHello(parseClientHello(split));
      expect(r.hello).toEqual(whole.hello);
      expect(r.consumed).toBe(split.length);
    }
  });

  it('leaves bytes after the hello records (early data, CCS) outside consumed', () => {
    const wire = fixture('openssl-s_client.bin');
    const ccs = record(u8(1), { type: 20, version: 0x0303 });
    const r = expectHello(parseClientHello(Buffer.concat([wire, ccs, Buffer.from([0x17, 0x03])])));
    expect(r.consumed).toBe(wire.length);
  });
});

describe('not TLS', () => {
  it.each(['EHLO x\r\n', 'GET / HTTP/1.1\r\n', 'a CAPABILITY\r\n', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n', '\r\n'])(
    '%j is plaintext',
    (text) => {
      expect(parseClientHello(Buffer.from(text))).toEqual({ kind: 'not-tls', reason: 'plaintext' });
    },
  );

  it('decides plaintext from the first byte alone', () => {
    for (const text of ['EHLO', 'GET /', 'a CAPABILITY']) {
      expect(parseClientHello(Buffer.from(text).subarray(0, 1))).toEqual({ kind: 'not-tls', reason: 'plaintext' });
    }
  });

  it('decides not-handshake from the first byte for alert, application data and binary', () => {
    for (const b of [0x00, 0x15, 0x17, 0x14, 0x7f]) {
      expect(parseClientHello(Buffer.from([b]))).toEqual({ kind: 'not-tls', reason: 'not-handshake' });
    }
  });

  it('recognises an SSLv2 CLIENT-HELLO from its first three bytes', () => {
    // 2-byte header (high bit set, length 0x2e), msg_type 1, version 0x0301, then lengths.
    const sslv2 = Buffer.from('802e0103010015000000100700c0050080030080010080060040040080020080', 'hex');
    expect(parseClientHello(sslv2.subarray(0, 1))).toEqual({ kind: 'need-more' });
    expect(parseClientHello(sslv2.subarray(0, 3))).toEqual({ kind: 'not-tls', reason: 'sslv2' });
    expect(parseClientHello(sslv2)).toEqual({ kind: 'not-tls', reason: 'sslv2' });
  });

  it('calls high-bit binary that is not an SSLv2 hello not-handshake', () => {
    expect(parseClientHello(Buffer.from([0xff, 0xff, 0xff]))).toEqual({ kind: 'not-tls', reason: 'not-handshake' });
  });

  it('answers need-more for an empty buffer', () => {
    expect(parseClientHello(Buffer.alloc(0))).toEqual({ kind: 'need-more' });
  });
});

describe('records', () => {
  it('rejects a record longer than 2^14 + 256 from its header alone', () => {
    expectMalformed(parseClientHello(Buffer.from([22, 3, 1, 0x41, 0x01])), 'record_too_long');
  });

  it('accepts a record of exactly 2^14 + 256 bytes', () => {
    const base = buildHandshake({ sni: 'a.example' }).length;
    const padLen = 16640 - base - 4; // a padding extension (RFC 7685) header is 4 bytes
    const wire = buildClientHello({ sni: 'a.example', extensions: [ext(EXT.padding, Buffer.alloc(padLen))] }, { recordSize: 20000 });
    expect(wire.readUInt16BE(3)).toBe(16640);
    expect(expectHello(parseClientHello(wire)).consumed).toBe(wire.length);
  });

  it('rejects a zero-length first record', () => {
    expectMalformed(parseClientHello(Buffer.from([22, 3, 1, 0, 0])), 'record_empty');
  });

  it('rejects a zero-length record between fragments', () => {
    const msg = buildHandshake({ sni: 'a.example' });
    const wire = Buffer.concat([record(msg.subarray(0, 10)), record(Buffer.alloc(0)), record(msg.subarray(10))]);
    expectMalformed(parseClientHello(wire), 'record_empty');
  });

  it('rejects a record version whose major is not 3, from two bytes', () => {
    expectMalformed(parseClientHello(Buffer.from([22, 2])), 'bad_record_version');
    const msg = buildHandshake();
    const wire = Buffer.concat([record(msg.subarray(0, 10)), record(msg.subarray(10), { version: 0x0201 })]);
    expectMalformed(parseClientHello(wire), 'bad_record_version');
  });

  it('rejects an alert record interleaved in the hello', () => {
    const msg = buildHandshake({ sni: 'a.example' });
    const alert = record(Buffer.from([2, 40]), { type: 21 });
    const wire = Buffer.concat([record(msg.subarray(0, 20)), alert, record(msg.subarray(20))]);
    expectMalformed(parseClientHello(wire), 'not_client_hello');
    // decided as soon as the alert's type byte arrives
    expectMalformed(parseClientHello(wire.subarray(0, 5 + 20 + 1)), 'not_client_hello');
  });

  it('rejects a change_cipher_spec record before the hello is complete', () => {
    const msg = buildHandshake();
    const wire = Buffer.concat([record(msg.subarray(0, 3)), record(u8(1), { type: 20 }), record(msg.subarray(3))]);
    expectMalformed(parseClientHello(wire), 'not_client_hello');
  });

  it('rejects another handshake type from its first payload byte', () => {
    expectMalformed(parseClientHello(Buffer.from([22, 3, 3, 0, 80, 2])), 'not_client_hello');
  });

  it('reassembles a handshake header split over 1-byte records', () => {
    const msg = buildHandshake({ sni: 'split.example', alpn: ['imap'] });
    const wire = Buffer.concat([...[0, 1, 2, 3].map((i) => record(msg.subarray(i, i + 1))), record(msg.subarray(4))]);
    const r = expectHello(parseClientHello(wire));
    expect(r.hello.serverName?.toString()).toBe('split.example');
    expect(r.consumed).toBe(wire.length);
  });

  it('rejects bytes after the hello in its last record', () => {
    const msg = buildHandshake({ sni: 'a.example' });
    const wire = record(Buffer.concat([msg, Buffer.from('junk')]));
    expectMalformed(parseClientHello(wire), 'trailing_bytes');
    // known from the lengths before the record is complete
    expectMalformed(parseClientHello(wire.subarray(0, 9)), 'trailing_bytes');
  });

  it('rejects a second handshake message in the record that ends the hello', () => {
    const msg = buildHandshake();
    const wire = record(Buffer.concat([msg, msg]));
    expectMalformed(parseClientHello(wire), 'trailing_bytes');
  });
});

describe('peek budget', () => {
  it('rejects a declared 16 MB hello from its first nine bytes', () => {
    expectMalformed(parseClientHello(Buffer.from([22, 3, 1, 0x40, 0x00, 1, 0xff, 0xff, 0xff])), 'too_large');
  });

  it('rejects a hello that cannot fit the budget once the handshake length is known', () => {
    // 70,000 bytes of hello declared in a first 4-byte record: certain after 9 bytes.
    const head = Buffer.concat([u8(1), u24(70_000)]);
    expectMalformed(parseClientHello(record(head)), 'too_large');
    expect(MAX_HELLO_BYTES).toBe(65536);
  });

  it('counts record headers: a hello in 1-byte records needs six times its size', () => {
    const msg = buildHandshake({ sni: 'a.example' });
    const wire = wrapRecords(msg, { recordSize: 1 });
    expect(wire.length).toBe(6 * msg.length);
    // With exactly enough budget no prefix is refused early (the lower bound is sound)...
    for (let n = 0; n < wire.length; n++) expect(parseClientHello(wire.subarray(0, n), wire.length).kind).toBe('need-more');
    expect(expectHello(parseClientHello(wire, wire.length)).consumed).toBe(wire.length);
    // ...and one byte less is refused once the record headers make it certain, before the end.
    expectMalformed(parseClientHello(wire.subarray(0, wire.length - 6), wire.length - 1), 'too_large');
  });

  it('accepts a hello of exactly maxBytes and refuses one byte less', () => {
    const wire = fixture('curl.bin');
    expect(parseClientHello(wire, wire.length).kind).toBe('hello');
    expectMalformed(parseClientHello(wire.subarray(0, 9), wire.length - 1), 'too_large');
  });

  it('rejects a record that reaches past the budget', () => {
    expectMalformed(parseClientHello(Buffer.from([22, 3, 1, 0x40, 0x00]), 1000), 'too_large');
  });
});

describe('hello body', () => {
  it('parses a hello without extensions (old clients) with null extensions', () => {
    const r = expectHello(parseClientHello(buildClientHello({ noExtensions: true })));
    expect(r.hello).toMatchObject({ serverName: null, alpn: null, supportedVersions: null, extensionTypes: [] });
    expect(r.hello.cipherSuites).toEqual([0x1301, 0x1302, 0x1303, 0xc02f]);
  });

  it('keeps the raw host_name bytes: no lowercasing, no validation', () => {
    const name = Buffer.from('MAIL.Example.ORG.\x00\xff', 'latin1');
    const r = expectHello(parseClientHello(buildClientHello({ sni: name })));
    expect(r.hello.serverName).toEqual(name);
  });

  it('reports extension types in order, unknown ones included', () => {
    const wire = buildClientHello({ sni: 'a.example', alpn: ['imap'], extensions: [ext(0xfe0d, Buffer.alloc(3)), ext(EXT.padding, Buffer.alloc(0))] });
    expect(expectHello(parseClientHello(wire)).hello.extensionTypes).toEqual([0, 16, 43, 0xfe0d, 21]);
  });

  it('rejects a body too short for version and random', () => {
    expectMalformed(parseClientHello(wireFromBody(Buffer.concat([version, random.subarray(0, 31)]))), 'length_overrun');
  });

  it('rejects a session id that overruns the body', () => {
    expectMalformed(parseClientHello(wireFromBody(Buffer.concat([version, random, u8(32), Buffer.alloc(5)]))), 'length_overrun');
  });

  it('rejects a session id longer than 32 bytes', () => {
    const body = Buffer.concat([version, random, vec8(Buffer.alloc(33)), suites, compression]);
    expectMalformed(parseClientHello(wireFromBody(body)), 'length_overrun');
  });

  it('rejects an odd or empty cipher_suites vector', () => {
    expectMalformed(parseClientHello(wireFromBody(Buffer.concat([version, random, sid, vec16(Buffer.alloc(3)), compression]))), 'length_overrun');
    expectMalformed(parseClientHello(wireFromBody(Buffer.concat([version, random, sid, vec16(), compression]))), 'length_overrun');
  });

  it('rejects cipher_suites that overrun the body', () => {
    expectMalformed(parseClientHello(wireFromBody(Buffer.concat([version, random, sid, u16(200), Buffer.alloc(10)]))), 'length_overrun');
  });

  it('rejects empty or missing compression methods', () => {
    expectMalformed(parseClientHello(wireFromBody(Buffer.concat([version, random, sid, suites, vec8()]))), 'length_overrun');
    expectMalformed(parseClientHello(wireFromBody(Buffer.concat([version, random, sid, suites]))), 'length_overrun');
  });

  it('rejects an extensions block that overruns the body', () => {
    const body = Buffer.concat([version, random, sid, suites, compression, u16(100), u16(0), u16(0)]);
    expectMalformed(parseClientHello(wireFromBody(body)), 'length_overrun');
  });

  it('rejects an extension whose data overruns the extensions block', () => {
    const block = vec16(u16(0xaaaa), u16(10), Buffer.alloc(4));
    expectMalformed(parseClientHello(wireFromBody(Buffer.concat([version, random, sid, suites, compression, block]))), 'length_overrun');
  });

  it('rejects a truncated extension header', () => {
    const block = vec16(u16(0xaaaa), u8(0));
    expectMalformed(parseClientHello(wireFromBody(Buffer.concat([version, random, sid, suites, compression, block]))), 'length_overrun');
  });

  it('rejects bytes after the extensions block inside the message', () => {
    const body = Buffer.concat([version, random, sid, suites, compression, vec16(), Buffer.from('xx')]);
    expectMalformed(parseClientHello(wireFromBody(body)), 'trailing_bytes');
  });

  it('rejects a handshake length shorter than its contents as an overrun', () => {
    const msg = buildHandshake({ sni: 'a.example' });
    msg.writeUIntBE(msg.length - 4 - 3, 1, 3);
    expectMalformed(parseClientHello(record(msg.subarray(0, msg.length - 3))), 'length_overrun');
  });
});

describe('extensions', () => {
  it('rejects a duplicated extension', () => {
    expectMalformed(parseClientHello(buildClientHello({ alpn: ['imap'], extensions: [alpnExt(['smtp'])] })), 'duplicate_extension');
    expectMalformed(parseClientHello(buildClientHello({ extensions: [ext(0x1234, Buffer.alloc(0)), ext(0x1234, Buffer.alloc(1))] })), 'duplicate_extension');
  });

  it('rejects two server_name extensions', () => {
    expectMalformed(parseClientHello(buildClientHello({ sni: 'a.example', extensions: [serverNameExt([{ name: 'b.example' }])] })), 'duplicate_extension');
  });

  it('rejects two host names in one server_name list, never first-wins', () => {
    const wire = buildClientHello({ extensions: [serverNameExt([{ name: 'a.example' }, { name: 'b.example' }])] });
    expectMalformed(parseClientHello(wire), 'bad_server_name');
  });

  it('rejects an empty host name', () => {
    expectMalformed(parseClientHello(buildClientHello({ sni: '' })), 'bad_server_name');
  });

  it('rejects an empty server_name extension body (the server form)', () => {
    expectMalformed(parseClientHello(buildClientHello({ extensions: [ext(EXT.serverName, Buffer.alloc(0))] })), 'bad_server_name');
  });

  it('rejects an empty server_name_list and a list that does not fit', () => {
    expectMalformed(parseClientHello(buildClientHello({ extensions: [ext(EXT.serverName, vec16())] })), 'bad_server_name');
    expectMalformed(parseClientHello(buildClientHello({ extensions: [ext(EXT.serverName, Buffer.concat([u16(30), u8(0), vec16(Buffer.from('a.example'))]))] })), 'bad_server_name');
    const extra = Buffer.concat([vec16(u8(0), vec16(Buffer.from('a.example'))), u8(0)]);
    expectMalformed(parseClientHello(buildClientHello({ extensions: [ext(EXT.serverName, extra)] })), 'bad_server_name');
  });

  it('skips entries of other name types and keeps the host name', () => {
    const wire = buildClientHello({ extensions: [serverNameExt([{ type: 7, name: 'x' }, { name: 'a.example' }])] });
    expect(expectHello(parseClientHello(wire)).hello.serverName?.toString()).toBe('a.example');
  });

  it('rejects malformed ALPN: empty list, empty name, overrunning name, extra bytes', () => {
    const bad = [
      ext(EXT.alpn, vec16()),
      alpnExt(['imap', '']),
      ext(EXT.alpn, vec16(u8(9), Buffer.from('imap'))),
      ext(EXT.alpn, Buffer.concat([vec16(vec8(Buffer.from('imap'))), u8(0)])),
      ext(EXT.alpn, Buffer.alloc(0)),
    ];
    for (const e of bad) expectMalformed(parseClientHello(buildClientHello({ extensions: [e] })), 'bad_alpn');
  });

  it('decodes ALPN names as latin1', () => {
    const wire = buildClientHello({ alpn: ['h2', Buffer.from([0xe9, 0x41]).toString('latin1')] });
    expect(expectHello(parseClientHello(wire)).hello.alpn).toEqual(['h2', '\u00e9A']);
  });

  it('rejects malformed supported_versions: odd, empty, not fitting', () => {
    const bad = [
      ext(EXT.supportedVersions, vec8(Buffer.alloc(3))),
      supportedVersionsExt([]),
      ext(EXT.supportedVersions, Buffer.alloc(0)),
      ext(EXT.supportedVersions, Buffer.concat([supportedVersionsExt([0x0304]).data, u8(0)])),
    ];
    for (const e of bad) expectMalformed(parseClientHello(buildClientHello({ versions: null, extensions: [e] })), 'bad_supported_versions');
  });
});

describe('fuzz (seeded, bounded)', () => {
  // mulberry32: small, fast, reproducible.
  function prng(seed: number) {
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }
  const kinds = new Set(['need-more', 'not-tls', 'hello', 'malformed']);

  function check(buf: Buffer, maxBytes?: number) {
    const r = parseClientHello(buf, maxBytes);
    if (!kinds.has(r.kind)) throw new Error(`unexpected result for ${buf.toString('hex')}: ${JSON.stringify(r)}`);
    if (r.kind === 'hello' && (r.consumed < 1 || r.consumed > buf.length)) throw new Error(`consumed ${r.consumed} of ${buf.length}`);
    return r;
  }

  it('never throws on 20,000 random buffers, most of them shaped like records', () => {
    const rand = prng(0x5eed);
    const int = (n: number) => Math.floor(rand() * n);
    for (let i = 0; i < 20_000; i++) {
      const body = Buffer.alloc(int(300));
      for (let j = 0; j < body.length; j++) body[j] = int(256);
      let buf: Buffer = body;
      if (i % 4 !== 0) {
        // record header + handshake header with plausible lengths, random body
        const hs = Buffer.concat([u8(i % 7 === 0 ? int(256) : 1), u24(i % 3 === 0 ? int(1 << 24) : body.length), body]);
        buf = wrapRecords(hs, { recordSize: 1 + int(hs.length + 10) });
      }
      check(buf, i % 5 === 0 ? int(2000) : undefined);
    }
  });

  it('never throws on 20,000 mutations of the fixtures and builder hellos', () => {
    const rand = prng(0xc0ffee);
    const int = (n: number) => Math.floor(rand() * n);
    const seeds = [
      ...fixtures.map((f) => fixture(f.file)),
      buildClientHello({ sni: 'a.example', alpn: ['imap'] }, { recordSize: 7 }),
      buildClientHello({ noExtensions: true }),
    ];
    const outcomes = new Set<string>();
    for (let i = 0; i < 20_000; i++) {
      const buf = Buffer.from(seeds[i % seeds.length]!);
      const edits = 1 + int(4);
      let out: Buffer = buf;
      for (let e = 0; e < edits; e++) {
        const at = int(out.length);
        switch (int(5)) {
          case 0: out[at] = int(256); break;
          case 1: out[at] = out[at]! ^ (1 << int(8)); break;
          case 2: out = out.subarray(0, at); break;
          case 3: out = Buffer.concat([out.subarray(0, at), Buffer.from([int(256)]), out.subarray(at)]); break;
          default: if (at + 1 < out.length) out.writeUInt16BE(int(65536), at); break;
        }
      }
      const r = check(out);
      outcomes.add(r.kind === 'malformed' ? r.code : r.kind);
    }
    // the mutations reach deep into the parser, not only the record layer
    expect(outcomes).toContain('hello');
    expect(outcomes).toContain('length_overrun');
    expect(outcomes).toContain('bad_server_name');
  });
});
