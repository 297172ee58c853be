// Property tests (fast-check) for the ClientHello parser and the peek path's reassembly
// (threats.md "ClientHello parsing": random and mutated hellos never throw or hang; splits across
// records and TCP segments give the same result as unsplit; bytes are replayed unchanged).
// Bounded: a few seconds in all. The run counts are in RUNS (reported with issue 7).
import { PassThrough } from 'node:stream';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { HelloScanner, parseClientHello, MAX_HELLO_BYTES, type HelloParse } from '../../src/tls/clienthello.ts';
import { peekClientHello, type PeekOutcome } from '../../src/tls/peek.ts';
import { buildHandshake, ext, record, unwrapRecords, type HelloSpec } from '../helpers/hello-builder.ts';
import { checkChunked, checkParse, fixtures, lengthFields, readLength, setLength } from '../helpers/fuzz-hello.ts';

export const RUNS = {
  randomBytes: 10_000,
  handshakeShaped: 5000,
  mutatedCaptures: 10_000,
  lengthTampering: 5000,
  builtRoundTrip: 1000,
  recordSplits: 1000,
  scannerChunkings: 2000,
  peekChunkings: 300,
  largeHellos: 60,
} as const;

const FIXTURES = fixtures();

// ---------------------------------------------------------------------------------------------
// Arbitraries

const bytes = (max: number) => fc.uint8Array({ maxLength: max }).map((a) => Buffer.from(a));

/** A DNS name from a safe alphabet: 2..4 labels of [a-z0-9-], no leading/trailing hyphen. */
const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$/);
const hostName = fc.array(label, { minLength: 2, maxLength: 4 }).map((ls) => ls.join('.')).filter((n) => n.length <= 253);

/** ALPN protocol names: 1..40 arbitrary bytes (RFC 7301 allows any octets), as latin1 strings. */
const alpnName = fc.uint8Array({ minLength: 1, maxLength: 40 }).map((a) => Buffer.from(a).toString('latin1'));
const alpnList = fc.array(alpnName, { minLength: 1, maxLength: 6 });

const helloSpec: fc.Arbitrary<HelloSpec> = fc.record({
  sni: fc.option(hostName, { nil: null }),
  alpn: fc.option(alpnList, { nil: null }),
  versions: fc.option(fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 1, maxLength: 8 }), { nil: null }),
  cipherSuites: fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 1, maxLength: 30 }),
  sessionId: fc.uint8Array({ maxLength: 32 }).map((a) => Buffer.from(a)),
  extensions: fc.uniqueArray(
    fc.record({ type: fc.integer({ min: 1, max: 0xffff }).filter((t) => t !== 0 && t !== 16 && t !== 43), data: bytes(64) }),
    { maxLength: 5, selector: (e) => e.type },
  ),
});

/** Record payload sizes, used in turn (cycling) to fragment a handshake message. */
const recordSizes = fc.array(fc.integer({ min: 1, max: 400 }), { minLength: 1, maxLength: 12 });

function fragment(message: Buffer, sizes: number[], version = 0x0301): Buffer {
  const out: Buffer[] = [];
  for (let i = 0, k = 0; i < message.length; k++) {
    const n = sizes[k % sizes.length]!;
    out.push(record(message.subarray(i, i + n), { version }));
    i += n;
  }
  return Buffer.concat(out);
}

/** Cut points for TCP-style chunking: up to 40 offsets, or every byte. */
function cutsFor(len: number): fc.Arbitrary<number[]> {
  return fc.oneof(
    fc.array(fc.integer({ min: 1, max: Math.max(1, len - 1) }), { maxLength: 40 }),
    fc.constant(Array.from({ length: len }, (_, i) => i + 1)),
  );
}

type Mutation =
  | { op: 'flip'; at: number; bit: number }
  | { op: 'truncate'; at: number }
  | { op: 'insert'; at: number; data: Uint8Array }
  | { op: 'delete'; at: number; n: number }
  | { op: 'set'; at: number; value: number }
  | { op: 'dup'; at: number; n: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('insert' as const), at: fc.nat(), data: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  fc.record({ op: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 16 }) }),
  fc.record({ op: fc.constant('set' as const), at: fc.nat(), value: fc.constantFrom(0, 1, 0x7f, 0x80, 0xff) }),
  fc.record({ op: fc.constant('dup' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 64 }) }),
);

function mutate(input: Buffer, muts: Mutation[]): Buffer {
  let b = Buffer.from(input);
  for (const m of muts) {
    if (b.length === 0) break;
    const at = m.at % b.length;
    switch (m.op) {
      case 'flip':
        b[at]! ^= 1 << m.bit;
        break;
      case 'truncate':
        b = b.subarray(0, at);
        break;
      case 'insert':
        b = Buffer.concat([b.subarray(0, at), m.data, b.subarray(at)]);
        break;
      case 'delete':
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.n)]);
        break;
      case 'set':
        b[at] = m.value;
        break;
      case 'dup':
        b = Buffer.concat([b.subarray(0, at + m.n), b.subarray(at)]);
        break;
    }
  }
  return b;
}

const fixtureIndex = fc.integer({ min: 0, max: FIXTURES.length - 1 });
/** A well-formed single-record hello: a capture or a built one. */
const wellFormed: fc.Arbitrary<Buffer> = fc.oneof(
  fixtureIndex.map((i) => FIXTURES[i]!),
  helloSpec.map((s) => record(buildHandshake(s))),
);

// ---------------------------------------------------------------------------------------------

describe('ClientHello parser: arbitrary input never throws, always a defined result, bounded time', () => {
  it(`random bytes (${RUNS.randomBytes} runs)`, () => {
    fc.assert(fc.property(bytes(3000), (b) => void checkParse(b)), { numRuns: RUNS.randomBytes });
  });

  it(`random bodies behind a plausible record and handshake header (${RUNS.handshakeShaped} runs)`, () => {
    const shaped = fc
      .tuple(fc.integer({ min: 0, max: 4 }), fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffffff }), bytes(600), fc.boolean())
      .map(([minor, recLen, hsLen, body, honest]) => {
        const hs = Buffer.concat([Buffer.from([1, hsLen >> 16, (hsLen >> 8) & 0xff, hsLen & 0xff]), body]);
        const len = honest ? hs.length : recLen;
        return Buffer.concat([Buffer.from([0x16, 3, minor, len >> 8, len & 0xff]), hs]);
      });
    fc.assert(fc.property(shaped, (b) => void checkParse(b)), { numRuns: RUNS.handshakeShaped });
  });

  it(`captured real hellos with bit flips, truncation, insertions, deletions (${RUNS.mutatedCaptures} runs)`, () => {
    fc.assert(
      fc.property(fixtureIndex, fc.array(mutation, { minLength: 1, maxLength: 8 }), (i, muts) => void checkParse(mutate(FIXTURES[i]!, muts))),
      { numRuns: RUNS.mutatedCaptures },
    );
  });

  it(`length fields of captured and built hellos tampered with (${RUNS.lengthTampering} runs)`, () => {
    const interesting = (orig: number) => fc.constantFrom(0, 1, 2, orig - 1, orig + 1, orig + 2, 0xff, 0x100, 0x4100, 0x4101, 0xffff, 0xffffff);
    fc.assert(
      fc.property(
        wellFormed.chain((w) => {
          const fields = lengthFields(w);
          return fc.tuple(fc.constant(w), fc.integer({ min: 0, max: fields.length - 1 }).chain((k) => fc.tuple(fc.constant(fields[k]!), interesting(readLength(w, fields[k]!)))));
        }),
        ([wire, [field, value]]) => {
          const tampered = setLength(wire, field, value);
          const r = checkParse(tampered);
          // The record and handshake lengths frame the hello: changed, it cannot parse as one.
          if (field.offset <= 6 && readLength(tampered, field) !== readLength(wire, field)) expect(r.kind).not.toBe('hello');
        },
      ),
      { numRuns: RUNS.lengthTampering },
    );
  });

  it(`hellos around and over the 64 KiB budget, fragmented into records of random sizes (${RUNS.largeHellos} runs)`, () => {
    fc.assert(
      fc.property(fc.integer({ min: 40_000, max: 70_000 }), fc.array(fc.integer({ min: 1, max: 16384 }), { minLength: 1, maxLength: 6 }), (pad, sizes) => {
        const msg = buildHandshake({ sni: 'mail.example.org', extensions: [ext(21, Buffer.alloc(Math.min(pad, 0xffff - 100)))] });
        const wire = fragment(msg, sizes);
        const r = checkParse(wire);
        if (wire.length <= MAX_HELLO_BYTES) expect(r.kind).toBe('hello');
        else expect(r).toMatchObject({ kind: 'malformed', code: 'too_large' });
      }),
      { numRuns: RUNS.largeHellos },
    );
  });
});

describe('valid hellos from hello-builder', () => {
  it(`SNI and ALPN come out as they went in (${RUNS.builtRoundTrip} runs)`, () => {
    fc.assert(
      fc.property(helloSpec, (spec) => {
        const wire = record(buildHandshake(spec));
        const r = checkParse(wire);
        if (r.kind !== 'hello') throw new Error(`not a hello: ${JSON.stringify(r)}`);
        expect(r.consumed).toBe(wire.length);
        expect(r.hello.serverName?.toString('latin1') ?? null).toBe(spec.sni ?? null);
        expect(r.hello.alpn).toEqual(spec.alpn ?? null);
        expect(r.hello.supportedVersions).toEqual(spec.versions ?? null);
        expect(r.hello.cipherSuites).toEqual(spec.cipherSuites);
        expect(r.hello.extensionTypes).toEqual([
          ...(spec.sni ? [0] : []),
          ...(spec.alpn ? [16] : []),
          ...(spec.versions ? [43] : []),
          ...spec.extensions!.map((e) => e.type),
        ]);
      }),
      { numRuns: RUNS.builtRoundTrip },
    );
  });

  it(`the same hello split into records of random sizes (down to 1 byte) parses the same as unsplit (${RUNS.recordSplits} runs)`, () => {
    fc.assert(
      fc.property(wellFormed, recordSizes, fc.constantFrom(0x0301, 0x0303), (wire, sizes, version) => {
        const whole = parseClientHello(wire);
        if (whole.kind !== 'hello') throw new Error('well-formed input did not parse');
        const split = fragment(unwrapRecords(wire), sizes, version);
        const r = checkParse(split);
        if (r.kind !== 'hello') throw new Error(`split: ${JSON.stringify(r)}`);
        expect({ ...r.hello, recordVersion: 0 }).toEqual({ ...whole.hello, recordVersion: 0 });
        expect(r.hello.recordVersion).toBe(version);
        expect(r.consumed).toBe(split.length);
        // Bytes after the hello (early data, a second flight) are left alone.
        const more = Buffer.concat([split, Buffer.from([0x17, 3, 3, 0, 1, 0])]);
        expect(parseClientHello(more)).toMatchObject({ kind: 'hello', consumed: split.length });
      }),
      { numRuns: RUNS.recordSplits },
    );
  });
});

describe('incremental reassembly (HelloScanner, as peek.ts runs it)', () => {
  const anyInput = fc.oneof(
    { weight: 3, arbitrary: fc.tuple(wellFormed, recordSizes).map(([w, s]) => fragment(unwrapRecords(w), s)) },
    { weight: 3, arbitrary: fc.tuple(fixtureIndex, fc.array(mutation, { minLength: 1, maxLength: 4 }), recordSizes).map(([i, m, s]) => mutate(fragment(unwrapRecords(FIXTURES[i]!), s), m)) },
    { weight: 1, arbitrary: bytes(500) },
  );

  it(`at every chunk boundary the scanner answers what a fresh parse of that prefix answers (${RUNS.scannerChunkings} runs)`, () => {
    fc.assert(
      fc.property(anyInput.chain((b) => fc.tuple(fc.constant(b), cutsFor(b.length))), ([b, cuts]) => void checkChunked(b, cuts)),
      { numRuns: RUNS.scannerChunkings },
    );
  });

  it('a 54 KiB hello in 1-byte records fed 1 byte at a time stays linear (was ~11 s of CPU)', () => {
    const msg = buildHandshake({ sni: 'mail.example.org', extensions: [ext(21, Buffer.alloc(9000))] });
    const wire = fragment(msg, [1]);
    const t = performance.now();
    const cuts = Array.from({ length: wire.length }, (_, i) => i + 1);
    expect(checkChunked(wire, cuts.filter((c) => c % 101 === 0)).kind).toBe('hello');
    const s = new HelloScanner();
    let r: HelloParse = { kind: 'need-more' };
    for (const c of cuts) r = s.scan(wire.subarray(0, c));
    expect(r.kind).toBe('hello');
    expect(performance.now() - t).toBeLessThan(2000);
  });

  it(`peekClientHello over a stream chunked at random: same outcome as unsplit, bytes given back unchanged (${RUNS.peekChunkings} runs)`, async () => {
    await fc.assert(
      fc.asyncProperty(anyInput.chain((b) => fc.tuple(fc.constant(b), cutsFor(b.length))), async ([input, cuts]) => {
        const whole = parseClientHello(input);
        const outcome = await peekChunked(input, cuts);
        const { kind } = outcome.result;
        switch (whole.kind) {
          case 'need-more':
            expect(kind).toBe('closed');
            break;
          case 'hello':
            if (outcome.result.kind !== 'hello') throw new Error(`peek: ${kind}`);
            expect(outcome.result.hello).toEqual(whole.hello);
            // Everything the client sent is replayed to TLS unchanged, in order.
            expect(outcome.replayed.equals(input)).toBe(true);
            break;
          case 'malformed':
            expect(outcome.result).toEqual({ kind: 'malformed', code: whole.code, detail: whole.detail });
            break;
          case 'not-tls':
            expect(outcome.result).toMatchObject({ kind: 'not-tls', reason: whole.reason });
            break;
        }
      }),
      { numRuns: RUNS.peekChunkings },
    );
  });
});

/**
 * Feeds `input` cut at `cuts` to peekClientHello over a stream (one 'data' event per chunk),
 * ends the stream when all is sent; returns the outcome and what the peek gave back plus the
 * rest of the stream (what a TLSSocket over it would read).
 */
async function peekChunked(input: Buffer, cuts: number[]): Promise<{ result: PeekOutcome; replayed: Buffer }> {
  const stream = new PassThrough();
  let result: PeekOutcome | null = null;
  const done = peekClientHello(stream as unknown as Socket).then((r) => (result = r));
  const ends = [...new Set(cuts.filter((c) => c > 0 && c < input.length))].sort((a, b) => a - b);
  ends.push(input.length);
  let at = 0;
  for (const end of ends) {
    if (result) break;
    stream.write(input.subarray(at, end));
    at = end;
    await new Promise((r) => setImmediate(r));
  }
  if (!result) stream.end();
  await done;
  const rest = input.subarray(at);
  const chunks: Buffer[] = [];
  for (let c = stream.read() as Buffer | null; c; c = stream.read() as Buffer | null) chunks.push(c);
  return { result: result!, replayed: Buffer.concat([...chunks, rest]) };
}
