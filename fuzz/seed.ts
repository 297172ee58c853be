// Writes the seed corpus (run once; the outputs are committed under fuzz/corpus/):
//   clienthello: the captured hellos of test/fixtures/hellos, and hello-builder hellos (no SNI,
//     two names, duplicate extensions, 1-byte and 100-byte records, TLS 1.2 only, no extensions).
//   starttls: one byte selecting the setup (see fuzz/targets.ts), then a client script.
//   node fuzz/seed.ts
import { mkdirSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { fixtures } from '../test/helpers/fuzz-hello.ts';
import { buildClientHello, buildHandshake, ext, serverNameExt, supportedVersionsExt, wrapRecords } from '../test/helpers/hello-builder.ts';

const dir = (t: string) => {
  const d = join(import.meta.dirname, 'corpus', t);
  mkdirSync(d, { recursive: true });
  return d;
};
const put = (t: string, b: Buffer) => writeFileSync(join(dir(t), createHash('sha1').update(b).digest('hex')), b);

for (const f of fixtures()) put('clienthello', f);
put('clienthello', buildClientHello({ sni: 'mail.example.org', alpn: ['smtp', 'imap'] }, { recordSize: 100 }));
put('clienthello', buildClientHello({ sni: 'a.example.org' }, { recordSize: 1 }));
put('clienthello', buildClientHello({ alpn: ['h2', 'http/1.1'], versions: null }));
put('clienthello', buildClientHello({ noExtensions: true }));
put('clienthello', buildClientHello({ extensions: [serverNameExt([{ name: 'a.example.org' }, { name: 'b.example.org' }])] }));
put('clienthello', buildClientHello({ sni: 'x.example.org', extensions: [supportedVersionsExt([0x0304])] }));
put('clienthello', buildClientHello({ sni: 'MAIL.Example.ORG.' }));
put('clienthello', buildClientHello({ sni: Buffer.from('a\x00b.example.org', 'latin1') }));
put('clienthello', wrapRecords(buildHandshake({ sni: '192.0.2.1', extensions: [ext(21, Buffer.alloc(300))] }), { recordSize: 16384 }));
put('clienthello', Buffer.from([0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15]));
put('clienthello', Buffer.from('EHLO x\r\n'));

const scripts: Array<[number, string]> = [
  [0x00, 'EHLO client.example\r\nSTARTTLS\r\n'],
  [0x04, 'EHLO c\r\nAUTH PLAIN x\r\nMAIL FROM:<a@b>\r\nSTARTTLS x\r\nQUIT\r\n'],
  [0x08, 'HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n'],
  [0x0c, `EHLO ${'x'.repeat(600)}\r\nNOOP\r\nSTARTTLS\r\nEHLO injected\r\n`],
  [0x01, 'a CAPABILITY\r\na STARTTLS\r\nb LOGIN u p\r\n'],
  [0x05, 'a LOGIN {5+}\r\nhello\r\nb NOOP\r\n* bad\r\na SELECT inbox\r\n'],
  [0x09, 'a NOOP\r\na LOGOUT\r\n'],
  [0x02, 'CAPA\r\nSTLS\r\nUSER x\r\n'],
  [0x06, 'USER x\r\nPASS y\r\nUTF8\r\nQUIT\r\n'],
  [0x0a, 'CAPA\nSTLS now\nNOOP\n'],
  [0x03, '\x16\x03\x01\x00\x05hello'],
];
for (const [b0, s] of scripts) put('starttls', Buffer.concat([Buffer.from([b0]), Buffer.from(s, 'latin1')]));
console.log('seed corpus written');
