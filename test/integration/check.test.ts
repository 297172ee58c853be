// `postern check` and `check --json` show every effective value of every listener: what the file
// says and every default it got (the role-dependent sni and requireTls included), so an admin
// can see what an smtp listener on 2525 will do without reading the source.
import { beforeAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { makePki, type TestPki } from '../helpers/certs.ts';
import { checkCommand } from '../../src/commands/check.ts';

let pki: TestPki;
let file: string;

beforeAll(async () => {
  pki = await makePki();
  await pki.issue('mail', { names: ['mail.example.org'] });
  await pki.issue('www', { names: ['www.example.com'] });
  file = join(pki.dir, 'check.yaml');
  // mx: defaults only (on 2525, as behind -p 25:2525); sub: every value written; imaps, https:
  // the one-role protocols.
  writeFileSync(
    file,
    `certificates:
  - { cert: mail.pem, key: mail.key }
  - { cert: www.pem, key: www.key }
limits: { maxConnectionsPerClient: 20 }
listeners:
  - name: mx
    listen: "0.0.0.0:2525"
    protocol: smtp
    role: mx
    tls: starttls
    hostname: mail.example.org
    backend: { address: "127.0.0.1:10025", proxyProtocol: v2 }
  - name: sub
    listen: "[::]:587"
    protocol: smtp
    role: submission
    tls: starttls
    hostname: mail.example.org
    sni: fallback
    serverNames: ["*.example.org"]
    alpn: [smtp, x-test]
    minVersion: TLSv1.3
    requireTls: false
    greeting: "mail.example.org ESMTP hello"
    capabilities: { probeInterval: 90s, fallback: [PIPELINING, "SIZE 1000"] }
    timeouts: { handshake: 1500ms, connect: 2s, idle: 1h, starttls: 30s, backendReply: 1d }
    limits: { maxConnections: 7, maxConnectionsPerClient: 3 }
    backend: { address: "postfix:10587", proxyProtocol: v1 }
    routes:
      - serverNames: [other.example.org, "*.example.net"]
        backend: { address: "[::1]:10588", proxyProtocol: none }
    acceptProxyProtocol: { from: ["10.0.0.0/8", "2001:db8::/32"] }
  - name: imaps
    listen: "127.0.0.1:993"
    protocol: imap
    tls: implicit
    hostname: mail.example.org
    backend: { address: "127.0.0.1:10993", proxyProtocol: v2 }
  - name: https
    listen: "127.0.0.1:443"
    protocol: tls
    tls: implicit
    hostname: www.example.com
    backend: { address: "127.0.0.1:8080", proxyProtocol: none }
`,
  );
});

function check(json: boolean, path = file): { code: number; out: string } {
  let out = '';
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      out += chunk.toString();
      cb();
    },
  });
  const code = checkCommand(path, { json }, sink);
  return { code, out };
}

describe('postern check --json', () => {
  it('prints every effective value of every listener, defaults by role included', () => {
    const r = check(true);
    expect(r.code, r.out).toBe(0);
    const doc = JSON.parse(r.out) as { ok: boolean; warnings: string[]; listeners: Array<Record<string, unknown>> };
    expect(doc.ok).toBe(true);
    expect(doc.warnings).toEqual([]);
    const strip = (l: Record<string, unknown>) => ({ ...l, certificates: (l.certificates as Array<{ subject: string; match: string }>).map((c) => `${c.subject} (${c.match})`) });
    expect(doc.listeners.map(strip)).toEqual([
      {
        name: 'mx',
        listen: '0.0.0.0:2525',
        protocol: 'smtp',
        tls: 'starttls',
        role: 'mx',
        hostname: 'mail.example.org',
        sni: 'fallback',
        serverNames: null,
        alpn: ['smtp'],
        minVersion: 'TLSv1.2',
        requireTls: false,
        greeting: 'mail.example.org ESMTP',
        capabilities: { probeIntervalMs: 300_000, fallback: ['PIPELINING', 'SIZE 10240000', '8BITMIME', 'ENHANCEDSTATUSCODES', 'SMTPUTF8', 'CHUNKING'] },
        timeouts: { handshakeMs: 10_000, connectMs: 5_000, idleMs: 600_000, starttlsMs: 60_000, backendReplyMs: 120_000 },
        limits: { maxConnections: 10_000, maxConnectionsPerClient: 20 },
        backend: { address: '127.0.0.1:10025', proxyProtocol: 'v2' },
        routes: [],
        acceptProxyProtocol: null,
        certificates: ['CN=mail.example.org (exact)'],
      },
      {
        name: 'sub',
        listen: '[::]:587',
        protocol: 'smtp',
        tls: 'starttls',
        role: 'submission',
        hostname: 'mail.example.org',
        sni: 'fallback',
        serverNames: ['*.example.org'],
        alpn: ['smtp', 'x-test'],
        minVersion: 'TLSv1.3',
        requireTls: false,
        greeting: 'mail.example.org ESMTP hello',
        capabilities: { probeIntervalMs: 90_000, fallback: ['PIPELINING', 'SIZE 1000'] },
        timeouts: { handshakeMs: 1_500, connectMs: 2_000, idleMs: 3_600_000, starttlsMs: 30_000, backendReplyMs: 86_400_000 },
        limits: { maxConnections: 7, maxConnectionsPerClient: 3 },
        backend: { address: 'postfix:10587', proxyProtocol: 'v1' },
        routes: [{ serverNames: ['other.example.org', '*.example.net'], backend: { address: '[::1]:10588', proxyProtocol: 'none' } }],
        acceptProxyProtocol: { from: ['10.0.0.0/8', '2001:db8::/32'] },
        certificates: ['CN=mail.example.org (exact)'],
      },
      {
        name: 'imaps',
        listen: '127.0.0.1:993',
        protocol: 'imap',
        tls: 'implicit',
        role: null,
        hostname: 'mail.example.org',
        sni: 'strict',
        serverNames: null,
        alpn: ['imap'],
        minVersion: 'TLSv1.2',
        requireTls: null,
        greeting: null,
        capabilities: null,
        timeouts: { handshakeMs: 10_000, connectMs: 5_000, idleMs: 600_000, starttlsMs: 60_000, backendReplyMs: 120_000 },
        limits: { maxConnections: 10_000, maxConnectionsPerClient: 20 },
        backend: { address: '127.0.0.1:10993', proxyProtocol: 'v2' },
        routes: [],
        acceptProxyProtocol: null,
        certificates: ['CN=mail.example.org (exact)'],
      },
      expect.objectContaining({ name: 'https', protocol: 'tls', role: null, sni: 'strict', alpn: null, requireTls: null, backend: { address: '127.0.0.1:8080', proxyProtocol: 'none' }, certificates: ['CN=www.example.com (exact)'] }),
    ]);
  });

  it('an mx that requires TLS is reported as a warning (RFC 3207 section 4); the file still checks OK', () => {
    const warned = join(pki.dir, 'warned.yaml');
    writeFileSync(
      warned,
      `certificates:
  - { cert: mail.pem, key: mail.key }
listeners:
  - name: mx
    listen: "0.0.0.0:25"
    protocol: smtp
    role: mx
    tls: starttls
    hostname: mail.example.org
    requireTls: true
    backend: { address: "127.0.0.1:10025", proxyProtocol: v2 }
`,
    );
    const json = check(true, warned);
    expect(json.code).toBe(0);
    const doc = JSON.parse(json.out) as { warnings: string[]; listeners: Array<{ requireTls: boolean }> };
    expect(doc.listeners[0]!.requireTls).toBe(true);
    expect(doc.warnings).toEqual([expect.stringMatching(/warned\.yaml:10:17 listeners\[0\]\.requireTls: requireTls: true on role: mx: .*RFC 3207 section 4/)]);
    const text = check(false, warned);
    expect(text.code).toBe(0);
    expect(text.out).toMatch(/^warning: \S*warned\.yaml:10:17 listeners\[0\]\.requireTls: requireTls: true on role: mx: /m);
  });

  it('an smtp listener without role fails the check with the message that says what to write', () => {
    const old = join(pki.dir, 'old.yaml');
    writeFileSync(old, `certificates:\n  - { cert: mail.pem, key: mail.key }\nlisteners:\n  - name: mx\n    listen: "0.0.0.0:2525"\n    protocol: smtp\n    tls: starttls\n    hostname: mail.example.org\n    backend: { address: "127.0.0.1:10025", proxyProtocol: v2 }\n`);
    const r = check(true, old);
    expect(r.code).toBe(1);
    expect((JSON.parse(r.out) as { errors: string[] }).errors).toEqual([
      expect.stringMatching(/old\.yaml:4:5 listeners\[0\]\.role: required for smtp listeners: write role: mx \(.*\) or role: submission \(.*\)\. The port number no longer decides the defaults$/),
    ]);
  });
});

describe('postern check (text)', () => {
  it('one block per listener with every effective value', () => {
    const r = check(false);
    expect(r.code, r.out).toBe(0);
    const blocks = r.out.split(/^(?=listener )/m).map((b) => b.replace(/^  certificate [\s\S]*/m, ''));
    expect(blocks[0]).toBe(
      [
        'listener mx: 0.0.0.0:2525 smtp/starttls role=mx',
        '  hostname            mail.example.org',
        '  sni                 fallback',
        '  serverNames         any loaded certificate',
        '  alpn                smtp',
        '  minVersion          TLSv1.2',
        '  requireTls          false',
        '  greeting            "mail.example.org ESMTP"',
        '  capabilities        probe every 5m; fallback PIPELINING, SIZE 10240000, 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8, CHUNKING',
        '  timeouts            handshake 10s, connect 5s, idle 10m, starttls 1m, backendReply 2m',
        '  limits              maxConnections 10000, maxConnectionsPerClient 20',
        '  backend             127.0.0.1:10025 (proxyProtocol v2)',
        '  routes              none',
        '  acceptProxyProtocol none',
        '',
      ].join('\n'),
    );
    expect(blocks[1]).toBe(
      [
        'listener sub: [::]:587 smtp/starttls role=submission',
        '  hostname            mail.example.org',
        '  sni                 fallback',
        '  serverNames         *.example.org',
        '  alpn                smtp, x-test',
        '  minVersion          TLSv1.3',
        '  requireTls          false',
        '  greeting            "mail.example.org ESMTP hello"',
        '  capabilities        probe every 90s; fallback PIPELINING, SIZE 1000',
        '  timeouts            handshake 1500ms, connect 2s, idle 1h, starttls 30s, backendReply 1d',
        '  limits              maxConnections 7, maxConnectionsPerClient 3',
        '  backend             postfix:10587 (proxyProtocol v1)',
        '  route               other.example.org, *.example.net -> [::1]:10588 (proxyProtocol none)',
        '  acceptProxyProtocol from 10.0.0.0/8, 2001:db8::/32',
        '',
      ].join('\n'),
    );
    // Implicit listeners have no STARTTLS lines; imap and tls have no role.
    expect(blocks[2]).toBe(
      [
        'listener imaps: 127.0.0.1:993 imap/implicit',
        '  hostname            mail.example.org',
        '  sni                 strict',
        '  serverNames         any loaded certificate',
        '  alpn                imap',
        '  minVersion          TLSv1.2',
        '  timeouts            handshake 10s, connect 5s, idle 10m, starttls 1m, backendReply 2m',
        '  limits              maxConnections 10000, maxConnectionsPerClient 20',
        '  backend             127.0.0.1:10993 (proxyProtocol v2)',
        '  routes              none',
        '  acceptProxyProtocol none',
        '',
      ].join('\n'),
    );
    expect(blocks[3]).toMatch(/^listener https: 127\.0\.0\.1:443 tls\/implicit\n  hostname +www\.example\.com\n  sni +strict\n  serverNames +any loaded certificate\n  alpn +off\n/);
    expect(r.out).toMatch(/^  certificate \S+mail\.pem \(exact match\)\n    subject CN=mail\.example\.org; names mail\.example\.org\n    issuer .+ \(\d+ days left\)$/m);
    expect(r.out.trimEnd().endsWith(`${file}: OK`)).toBe(true);
  });
});
