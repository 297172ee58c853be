// threats.md "ClientHello parsing", fuzzing: postern's own parse of a ClientHello must agree with
// what OpenSSL reports for the same bytes (servername and ALPN). Generated parameter sets (SNI
// from a safe alphabet, mixed case included; random ALPN lists) go through real clients (Node's
// tls.connect, i.e. its bundled OpenSSL 3.5, and the system's `openssl s_client`) to a small
// capture proxy on loopback, which records the first flight and parses it with
// src/tls/clienthello.ts, then on to a Node tls server whose SNICallback and ALPNCallback record
// what OpenSSL saw.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import net from 'node:net';
import tls from 'node:tls';
import fc from 'fast-check';
import { makePki, type CertFiles } from '../helpers/certs.ts';
import { HelloScanner, type HelloParse } from '../../src/tls/clienthello.ts';

export const RUNS = { node: 150, opensslCli: 20 } as const;

interface Seen {
  servername: string | null;
  alpn: string[] | null;
}

let cert: CertFiles;
let server: tls.Server;
let proxy: net.Server;
let proxyPort: number;
/** What the TLS server (OpenSSL) saw, per connection in order. */
const opensslSaw: Seen[] = [];
/** What postern's parser made of the captured bytes, per connection in order. */
const posternParsed: HelloParse[] = [];
const handshakes: Array<() => void> = [];

beforeAll(async () => {
  const pki = await makePki();
  cert = await pki.issue('any', { names: ['mail.example.org'] });
  const ctx = tls.createSecureContext({ cert: cert.certPem, key: cert.keyPem });
  let current: Seen | null = null;
  server = tls.createServer({
    cert: cert.certPem,
    key: cert.keyPem,
    SNICallback: (servername, cb) => {
      current ??= { servername: null, alpn: null };
      current.servername = servername;
      cb(null, ctx);
    },
    ALPNCallback: ({ protocols }) => {
      current ??= { servername: null, alpn: null };
      current.alpn = [...protocols];
      return protocols[0];
    },
  });
  server.on('secureConnection', (s) => {
    opensslSaw.push(current ?? { servername: null, alpn: null });
    current = null;
    s.on('error', () => {});
    s.end();
    handshakes.shift()?.();
  });
  server.on('tlsClientError', () => {
    current = null;
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const tlsPort = (server.address() as net.AddressInfo).port;

  proxy = net.createServer((client) => {
    const upstream = net.connect(tlsPort, '127.0.0.1');
    const scanner = new HelloScanner();
    let seen = Buffer.alloc(0);
    let parsed = false;
    client.on('data', (chunk: Buffer) => {
      if (!parsed) {
        seen = Buffer.concat([seen, chunk]);
        const r = scanner.scan(seen);
        if (r.kind !== 'need-more') {
          parsed = true;
          posternParsed.push(r);
        }
      }
      upstream.write(chunk);
    });
    upstream.on('data', (d: Buffer) => client.write(d));
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  proxyPort = (proxy.address() as net.AddressInfo).port;
});

afterAll(async () => {
  await new Promise((r) => proxy.close(r));
  await new Promise((r) => server.close(r));
});

const label = fc.stringMatching(/^[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?$/);
const servername = fc.array(label, { minLength: 2, maxLength: 5 }).map((ls) => ls.join('.'));
/** Printable ALPN names (the server callback hands them over as strings). */
const alpnName = fc.stringMatching(/^[\x21-\x2b\x2d-\x7e]{1,30}$/); // no comma: s_client -alpn splits on it
const params = fc.record({
  servername: fc.option(servername, { nil: null, freq: 5 }),
  alpn: fc.option(fc.uniqueArray(alpnName, { minLength: 1, maxLength: 6 }), { nil: null, freq: 5 }),
});

function serverSaw(): Promise<void> {
  return new Promise((resolve) => handshakes.push(resolve));
}

function agree(index: number, sent: { servername: string | null; alpn: string[] | null }) {
  const r = posternParsed[index];
  if (r?.kind !== 'hello') throw new Error(`connection ${index}: postern parsed ${JSON.stringify(r)}`);
  const ours: Seen = { servername: r.hello.serverName?.toString('latin1') ?? null, alpn: r.hello.alpn };
  // Agreement with OpenSSL, and both equal to what the client was asked to send.
  expect(ours).toEqual(opensslSaw[index]);
  expect(ours).toEqual(sent);
}

describe('postern\'s ClientHello parse agrees with OpenSSL', () => {
  it(`Node tls.connect (bundled OpenSSL), ${RUNS.node} generated SNI/ALPN sets`, async () => {
    const sets = fc.sample(params, { numRuns: RUNS.node, seed: 7 });
    for (const p of sets) {
      const index = opensslSaw.length;
      const saw = serverSaw();
      const s = tls.connect({ port: proxyPort, host: '127.0.0.1', servername: p.servername ?? '', ALPNProtocols: p.alpn ?? undefined, rejectUnauthorized: false });
      s.on('error', () => {});
      await saw;
      s.destroy();
      agree(index, p);
    }
  });

  it(`openssl s_client (system OpenSSL 3), ${RUNS.opensslCli} generated SNI/ALPN sets`, async () => {
    const sets = fc.sample(params, { numRuns: RUNS.opensslCli, seed: 11 });
    for (const p of sets) {
      const index = opensslSaw.length;
      const saw = serverSaw();
      const args = ['s_client', '-connect', `127.0.0.1:${proxyPort}`, '-brief'];
      // Without -servername s_client sends none when connecting to an IP; -noservername makes it explicit.
      if (p.servername) args.push('-servername', p.servername);
      else args.push('-noservername');
      if (p.alpn) args.push('-alpn', p.alpn.join(','));
      const child = spawn('openssl', args, { stdio: ['pipe', 'ignore', 'ignore'] });
      await saw;
      child.stdin.end();
      await new Promise((r) => child.once('exit', r));
      agree(index, p);
    }
  }, 60_000);
});
