// Fuzz targets: each takes one input (bytes), runs the code under test and checks its invariants,
// throwing on a broken one. `modules` names the source files whose block coverage guides the
// fuzzer; `dictionary` holds tokens the mutator splices in.
import { createHash } from 'node:crypto';
import { checkChunked, checkParse } from '../test/helpers/fuzz-hello.ts';
import { checkEvents, runPrelude, PROTOS, type Setup } from '../test/helpers/fuzz-starttls.ts';
import { checkSniBytes, escapeForLog } from '../src/tls/names.ts';

export interface Target {
  name: string;
  /** Substrings of script URLs whose coverage counts. */
  modules: string[];
  maxLen: number;
  dictionary: Buffer[];
  run(input: Buffer): void;
}

/** Cut points derived from the input itself (deterministic, so a saved crash replays). */
function cutsOf(input: Buffer): number[] {
  const h = createHash('sha1').update(input).digest();
  const step = 1 + (h[0]! % 23);
  const cuts: number[] = [];
  for (let i = step; i < input.length; i += step + (h[(i / step) % 20 | 0]! % 7)) cuts.push(i);
  return cuts;
}

function fail(msg: string): never {
  throw new Error(msg);
}

const clienthello: Target = {
  name: 'clienthello',
  modules: ['/src/tls/clienthello.ts', '/src/tls/names.ts'],
  maxLen: 20_000,
  dictionary: [
    Buffer.from([0x16, 0x03, 0x01]), Buffer.from([0x16, 0x03, 0x03]), Buffer.from([0x01, 0x00, 0x00]),
    Buffer.from([0x00, 0x00]), Buffer.from([0x00, 0x10]), Buffer.from([0x00, 0x2b]), Buffer.from([0x00, 0x33]),
    Buffer.from([0x03, 0x04]), Buffer.from([0x41, 0x00]), Buffer.from([0xff, 0xff]), Buffer.from([0x41, 0x01]),
    Buffer.from('mail.example.org'), Buffer.from('\x02h2\x08http/1.1'), Buffer.from([0x80, 0x2e, 0x01]),
  ],
  run(input) {
    const r = checkParse(input);
    checkChunked(input, cutsOf(input));
    checkChunked(input, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    if (r.kind === 'hello' && r.hello.serverName) {
      // The name rules run on whatever bytes a client sends: never throw, always classify.
      const c = checkSniBytes(r.hello.serverName);
      if (typeof c.ok !== 'boolean' || typeof c.name !== 'string') fail('checkSniBytes result');
      const logged = escapeForLog(r.hello.serverName);
      if (!/^[\x20-\x7e]*$/.test(logged)) fail('escapeForLog left a raw byte');
    }
  },
};

const starttls: Target = {
  name: 'starttls',
  modules: ['/src/starttls/prelude.ts', '/src/starttls/lines.ts', '/src/starttls/smtp-dialogue.ts', '/src/starttls/imap-dialogue.ts', '/src/starttls/pop3-dialogue.ts'],
  maxLen: 12_000,
  dictionary: [
    'EHLO x\r\n', 'HELO x\r\n', 'STARTTLS\r\n', 'MAIL FROM:<a@b>\r\n', 'AUTH PLAIN\r\n', 'QUIT\r\n', 'NOOP\r\n', 'RSET\r\n',
    'a CAPABILITY\r\n', 'a STARTTLS\r\n', 'a LOGIN u p\r\n', 'a LOGIN {5+}\r\n', ' {3+}\r\n', 'a LOGOUT\r\n', 'a SELECT x\r\n',
    'CAPA\r\n', 'STLS\r\n', 'USER x\r\n', 'PASS y\r\n', 'UTF8\r\n', '\r\n', '\n', '\r', '\x00', '\xc3\xa9', 'x'.repeat(256),
  ].map((s) => Buffer.from(s, 'latin1')),
  // Byte 0 picks the setup (protocol, requireTls, tlsAvailable, capabilities); the rest is what
  // the client sends.
  run(input) {
    if (input.length === 0) return;
    const b0 = input[0]!;
    const caps = [['PIPELINING', 'AUTH PLAIN', 'SIZE 100'], ['IDLE', 'LITERAL+', 'AUTH=PLAIN'], ['USER', 'SASL PLAIN', 'UIDL']][(b0 >> 4) % 3]!;
    const setup: Setup = { proto: PROTOS[b0 % 3]!, requireTls: (b0 & 4) !== 0, tlsAvailable: (b0 & 8) !== 0, capabilities: caps };
    const stream = input.subarray(1);
    const whole = runPrelude(setup, stream, []);
    checkEvents(setup.proto, stream, whole);
    const split = runPrelude(setup, stream, cutsOf(stream));
    checkEvents(setup.proto, stream, split);
    if (JSON.stringify(split) !== JSON.stringify(whole)) fail(`chunked transcript differs:\n${JSON.stringify(split).slice(0, 500)}\n${JSON.stringify(whole).slice(0, 500)}`);
  },
};

export const TARGETS: Record<string, Target> = { clienthello, starttls };
