// Config loading: every error kind with its exact message and position, defaults, compilation.
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { formatConfigError, loadConfigFile, loadConfigText } from '../../src/config/load.ts';
import type { LoadedConfig } from '../../src/config/load.ts';
import { configJsonSchema } from '../../src/config/schema.ts';
import type { ListenerConfig } from '../../src/config/types.ts';

let dir: string;
let file: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'postern-config-'));
  file = join(dir, 'postern.yaml');
  mkdirSync(join(dir, 'certs'));
  writeFileSync(join(dir, 'certs', 'fullchain.pem'), 'dummy');
  writeFileSync(join(dir, 'certs', 'privkey.pem'), 'dummy');
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Lines 1-3 of most documents below; the first listener starts on line 5. */
const CERTS = `certificates:
  - cert: certs/fullchain.pem
    key: certs/privkey.pem
`;

/** The formatted errors, with the temp folder cut off the front: "postern.yaml:5:7 path: message". */
function errorsOf(yaml: string): string[] {
  const r = loadConfigText(yaml, file);
  if (r.ok) throw new Error('expected errors, the config loaded');
  return r.errors.map((e) => formatConfigError(e).replace(`${dir}/`, ''));
}

function load(yaml: string): LoadedConfig {
  const r = loadConfigText(yaml, file);
  if (!r.ok) throw new Error(r.errors.map(formatConfigError).join('\n'));
  return r.loaded;
}

/** One listener from lines of YAML (indented under "- "), after CERTS. */
function oneListener(...lines: string[]): string {
  return `${CERTS}listeners:\n${lines.map((l, i) => (i === 0 ? `  - ${l}` : `    ${l}`)).join('\n')}\n`;
}

const BASE = ['name: l', 'listen: "127.0.0.1:465"', 'protocol: smtp', 'tls: implicit', 'hostname: mail.example.org', 'backend: { address: "127.0.0.1:10465", proxyProtocol: v2 }'];

/** BASE with some lines replaced (matched by their key) or added. */
function listenerWith(changes: Record<string, string | null>): string {
  const out: string[] = [];
  for (const line of BASE) {
    const key = line.slice(0, line.indexOf(':'));
    if (!(key in changes)) out.push(line);
    else if (changes[key] !== null) out.push(`${key}: ${changes[key]}`);
  }
  for (const [key, value] of Object.entries(changes)) if (!BASE.some((l) => l.startsWith(`${key}:`)) && value !== null) out.push(`${key}: ${value}`);
  // An smtp listener needs a role; it goes last so that every other line keeps its number. A
  // test of the role itself says `role: ...` (or null for none).
  if ((changes.protocol ?? 'smtp') === 'smtp' && !('role' in changes)) out.push('role: submission');
  return oneListener(...out);
}

function listenerOf(changes: Record<string, string | null>): ListenerConfig {
  return load(listenerWith(changes)).config.listeners[0]!;
}

const LISTENER_KEYS = 'name, listen, protocol, role, tls, hostname, sni, serverNames, alpn, minVersion, backend, routes, acceptProxyProtocol, limits, timeouts, greeting, requireTls, capabilities, dane';

describe('config errors', () => {
  it('a bad enum value names the allowed values and the value given', () => {
    expect(errorsOf(listenerWith({ sni: 'lenient' }))).toEqual(['postern.yaml:11:10 listeners[0].sni: expected "strict" or "fallback", got "lenient"']);
  });

  it('a bad enum value with more than two choices', () => {
    expect(errorsOf(listenerWith({ protocol: 'http' }))).toEqual(['postern.yaml:7:15 listeners[0].protocol: expected "smtp", "imap", "pop3" or "tls", got "http"']);
  });

  it('an unknown key names the key and the allowed keys, pointing at the key', () => {
    expect(errorsOf(listenerWith({ sniff: 'strict' }))).toEqual([`postern.yaml:11:5 listeners[0].sniff: unknown key "sniff" (did you mean "sni"?); allowed keys: ${LISTENER_KEYS}`]);
  });

  it('an unknown key suggests the spelling that differs only in case or separators', () => {
    expect(errorsOf(listenerWith({ backend: '{ address: "127.0.0.1:10465", proxy_protocol: v2 }' }))).toEqual([
      'postern.yaml:10:14 listeners[0].backend.proxyProtocol: required but missing: choose none, v1 or v2 explicitly: there is no default because with none the backend sees every client as postern\'s own address, and Postfix treats 127.0.0.0/8 as mynetworks (an open relay if chosen by accident)',
      'postern.yaml:10:44 listeners[0].backend.proxy_protocol: unknown key "proxy_protocol" (did you mean "proxyProtocol"?); allowed keys: address, proxyProtocol',
    ]);
  });

  it('an unknown top-level key', () => {
    expect(errorsOf(`${CERTS}listener: []\n`)).toEqual([
      'postern.yaml:1:1 listeners: required but missing',
      'postern.yaml:4:1 listener: unknown key "listener" (did you mean "listeners"?); allowed keys: log, certificates, acme, listeners, admin, backendChecks, shutdown, limits, mtaSts, sessionTickets, workers',
    ]);
  });

  it('a wrong type says what was expected and what was given', () => {
    expect(errorsOf(listenerWith({ tls: 'starttls', requireTls: '"yes"' }))).toEqual(['postern.yaml:11:17 listeners[0].requireTls: expected true or false, got "yes"']);
  });

  it('a listener that is not a mapping', () => {
    expect(errorsOf(`${CERTS}listeners:\n  - smtp\n`)).toEqual(['postern.yaml:5:5 listeners[0]: expected a mapping (key: value), got "smtp"']);
  });

  it('an empty value is named as such, pointing at its key', () => {
    expect(errorsOf(listenerWith({ hostname: '' }))).toEqual(['postern.yaml:9:5 listeners[0].hostname: expected a DNS name such as mail.example.org, got an empty value']);
  });

  it('a missing required key points at its mapping', () => {
    expect(errorsOf(listenerWith({ listen: null }))).toEqual(['postern.yaml:5:5 listeners[0].listen: required but missing']);
  });

  it('proxyProtocol has no default, and the message says why', () => {
    expect(errorsOf(listenerWith({ backend: '\n      address: "127.0.0.1:10465"' }))).toEqual([
      'postern.yaml:11:7 listeners[0].backend.proxyProtocol: required but missing: choose none, v1 or v2 explicitly: there is no default because with none the backend sees every client as postern\'s own address, and Postfix treats 127.0.0.0/8 as mynetworks (an open relay if chosen by accident)',
    ]);
  });

  it('empty certificate and listener lists', () => {
    expect(errorsOf('certificates: []\nlisteners: []\n')).toEqual([
      'postern.yaml:1:15 certificates: at least one certificate is required (or leave certificates out and use acme)',
      'postern.yaml:2:12 listeners: at least one listener is required',
    ]);
  });

  it('an empty file', () => {
    expect(errorsOf('')).toEqual(['postern.yaml:1:1 the file is empty: expected a mapping with certificates and listeners']);
  });

  describe('addresses', () => {
    it('a listen address without a port', () => {
      expect(errorsOf(listenerWith({ listen: '"127.0.0.1"' }))).toEqual(['postern.yaml:6:13 listeners[0].listen: expected host:port, e.g. "0.0.0.0:465" or "[::]:465", got "127.0.0.1" (no port)']);
    });

    it('a port alone', () => {
      expect(errorsOf(listenerWith({ listen: '"465"' }))).toEqual(['postern.yaml:6:13 listeners[0].listen: expected host:port, e.g. "0.0.0.0:465" or "[::]:465", got "465" (no address)']);
    });

    it('a YAML number as the address', () => {
      expect(errorsOf(listenerWith({ listen: '465' }))).toEqual(['postern.yaml:6:13 listeners[0].listen: expected host:port, e.g. "0.0.0.0:465" or "[::]:465", got 465']);
    });

    it('a host name as the listen address', () => {
      expect(errorsOf(listenerWith({ listen: 'mail.example.org:465' }))).toEqual([
        'postern.yaml:6:13 listeners[0].listen: "mail.example.org" is not an IP address: listen takes an address to bind, e.g. "0.0.0.0:465" or "[::]:465"; host names are not allowed here',
      ]);
    });

    it('an IPv6 address without brackets', () => {
      expect(errorsOf(listenerWith({ listen: '"::1:465"' }))).toEqual(['postern.yaml:6:13 listeners[0].listen: an IPv6 address needs brackets: "[::1]:465"']);
    });

    it('a bad IPv4 address', () => {
      expect(errorsOf(listenerWith({ listen: '"300.1.1.1:465"' }))).toEqual(['postern.yaml:6:13 listeners[0].listen: "300.1.1.1" is not a valid IPv4 address']);
    });

    it('a port out of range', () => {
      expect(errorsOf(listenerWith({ listen: '"0.0.0.0:70000"' }))).toEqual(['postern.yaml:6:13 listeners[0].listen: port 70000 is out of range (1-65535)']);
    });

    it('port 0 is out of range', () => {
      expect(errorsOf(listenerWith({ backend: '{ address: "127.0.0.1:0", proxyProtocol: v2 }' }))).toEqual(['postern.yaml:10:25 listeners[0].backend.address: port 0 is out of range (1-65535)']);
    });

    it('a bad backend address', () => {
      expect(errorsOf(listenerWith({ backend: '{ address: "postfix", proxyProtocol: v2 }' }))).toEqual([
        'postern.yaml:10:25 listeners[0].backend.address: expected host:port, e.g. "127.0.0.1:10465", "[::1]:10465" or "postfix:10465", got "postfix" (no port)',
      ]);
    });

    it('backends may be IPv6 or host names (docker compose services)', () => {
      expect(listenerOf({ backend: '{ address: "[::1]:10465", proxyProtocol: v2 }' }).backend.address).toEqual({ host: '::1', port: 10465 });
      expect(listenerOf({ backend: '{ address: "Postfix:10025", proxyProtocol: v1 }' }).backend).toEqual({ address: { host: 'postfix', port: 10025 }, proxyProtocol: 'v1' });
    });
  });

  describe('listener names and listen addresses', () => {
    const two = (a: string[], b: string[]) => `${CERTS}listeners:\n${[a, b].map((l) => l.map((x, i) => (i === 0 ? `  - ${x}` : `    ${x}`)).join('\n')).join('\n')}\n`;
    const tail = [...BASE.slice(2), 'role: submission'];

    it('duplicate listener names', () => {
      expect(errorsOf(two(['name: smtp', 'listen: "127.0.0.1:25"', ...tail], ['name: smtp', 'listen: "127.0.0.1:26"', ...tail]))).toEqual([
        'postern.yaml:12:11 listeners[1].name: duplicate listener name "smtp": already used by listeners[0] (line 5)',
      ]);
    });

    it('the same listen address twice', () => {
      expect(errorsOf(two(['name: a', 'listen: "127.0.0.1:465"', ...tail], ['name: b', 'listen: "127.0.0.1:465"', ...tail]))).toEqual([
        'postern.yaml:13:13 listeners[1].listen: "127.0.0.1:465" is already used by listener "a" (listeners[0], line 6)',
      ]);
    });

    it('0.0.0.0 conflicts with a specific IPv4 address on the same port', () => {
      expect(errorsOf(two(['name: a', 'listen: "0.0.0.0:465"', ...tail], ['name: b', 'listen: "127.0.0.1:465"', ...tail]))).toEqual([
        'postern.yaml:13:13 listeners[1].listen: "127.0.0.1:465" conflicts with "0.0.0.0:465" of listener "a" (listeners[0], line 6): 0.0.0.0 already covers every IPv4 address on port 465',
      ]);
    });

    it('[::] conflicts with 0.0.0.0 on the same port (Linux dual-stack)', () => {
      expect(errorsOf(two(['name: a', 'listen: "0.0.0.0:465"', ...tail], ['name: b', 'listen: "[::]:465"', ...tail]))).toEqual([
        'postern.yaml:13:13 listeners[1].listen: "[::]:465" conflicts with "0.0.0.0:465" of listener "a" (listeners[0], line 6): [::] also accepts IPv4 connections on port 465 (dual-stack, the Linux default)',
      ]);
    });

    it('IPv6 addresses are compared in canonical form', () => {
      expect(errorsOf(two(['name: a', 'listen: "[::1]:465"', ...tail], ['name: b', 'listen: "[0:0:0:0:0:0:0:1]:465"', ...tail]))).toEqual([
        'postern.yaml:13:13 listeners[1].listen: "[0:0:0:0:0:0:0:1]:465" is already used by listener "a" (listeners[0], line 6)',
      ]);
    });

    it('different ports, or distinct specific addresses, do not conflict', () => {
      expect(load(two(['name: a', 'listen: "0.0.0.0:465"', ...tail], ['name: b', 'listen: "[::]:587"', ...tail])).config.listeners).toHaveLength(2);
      expect(load(two(['name: a', 'listen: "127.0.0.1:465"', ...tail], ['name: b', 'listen: "[::1]:465"', ...tail])).config.listeners).toHaveLength(2);
    });

    it('a listener name that is not a metric label', () => {
      expect(errorsOf(listenerWith({ name: 'Sub Missions' }))).toEqual([
        'postern.yaml:5:11 listeners[0].name: expected a name of lowercase letters, digits, "-" and "_", starting with a letter or digit (it is used as a metric label), got "Sub Missions"',
      ]);
    });
  });

  describe('host names', () => {
    it('a trailing dot is refused', () => {
      expect(errorsOf(listenerWith({ hostname: 'mail.example.org.' }))).toEqual(['postern.yaml:9:15 listeners[0].hostname: "mail.example.org.": remove the trailing dot']);
    });

    it('a wildcard hostname is refused', () => {
      expect(errorsOf(listenerWith({ hostname: '"*.example.org"' }))).toEqual(['postern.yaml:9:15 listeners[0].hostname: "*.example.org": a wildcard is not allowed here; give the exact name']);
    });

    it('an IP address is not a hostname', () => {
      expect(errorsOf(listenerWith({ hostname: '192.0.2.1' }))).toEqual(['postern.yaml:9:15 listeners[0].hostname: "192.0.2.1" is an IP address: expected a DNS name such as mail.example.org']);
    });

    it('a name without a dot is refused', () => {
      expect(errorsOf(listenerWith({ hostname: 'mail' }))).toEqual(['postern.yaml:9:15 listeners[0].hostname: "mail" has no dot: expected a fully qualified name such as mail.example.org']);
    });

    it('illegal characters are refused', () => {
      expect(errorsOf(listenerWith({ hostname: 'mail_1.example.org' }))).toEqual(['postern.yaml:9:15 listeners[0].hostname: "mail_1.example.org" is not a valid DNS name (letters, digits, "-" and dots only)']);
    });

    it('a partial wildcard in serverNames is refused', () => {
      expect(errorsOf(listenerWith({ serverNames: '[mail.example.org, "f*.example.org"]' }))).toEqual([
        'postern.yaml:11:37 listeners[0].serverNames[1]: "f*.example.org": partial wildcards are not supported; a wildcard is a whole leftmost label, as in "*.example.org" (RFC 6125 section 7.2)',
      ]);
    });

    it('a wildcard right below a top-level domain is refused', () => {
      expect(errorsOf(listenerWith({ serverNames: '["*.org"]' }))).toEqual(['postern.yaml:11:19 listeners[0].serverNames[0]: "*.org": a wildcard must sit below a domain of at least two labels']);
    });

    it('an empty serverNames list is refused', () => {
      expect(errorsOf(listenerWith({ serverNames: '[]' }))).toEqual(['postern.yaml:11:18 listeners[0].serverNames: an empty list allows no name: leave serverNames out to allow every loaded certificate']);
    });

    it('names are lowercased and Unicode becomes A-labels', () => {
      const l = listenerOf({ hostname: 'Mail.Bücher.Example', serverNames: '["*.BÜCHER.example", Mail.Example.ORG]' });
      expect(l.hostname).toBe('mail.xn--bcher-kva.example');
      expect(l.serverNames).toEqual(['*.xn--bcher-kva.example', 'mail.example.org']);
    });
  });

  describe('durations', () => {
    it('a bare number asks for a unit', () => {
      expect(errorsOf(listenerWith({ timeouts: '{ handshake: 10 }' }))).toEqual(['postern.yaml:11:28 listeners[0].timeouts.handshake: got a bare number (10): use a unit, e.g. 10s (units: ms, s, m, h, d)']);
    });

    it('a bare number in quotes asks for a unit too', () => {
      expect(errorsOf(listenerWith({ timeouts: '{ idle: "600" }' }))).toEqual(['postern.yaml:11:23 listeners[0].timeouts.idle: got a bare number (600): use a unit, e.g. 10s (units: ms, s, m, h, d)']);
    });

    it('an unknown unit', () => {
      expect(errorsOf(listenerWith({ timeouts: '{ connect: 5sec }' }))).toEqual(['postern.yaml:11:26 listeners[0].timeouts.connect: expected a duration such as 250ms, 10s, 5m, 1h or 1d, got "5sec"']);
    });

    it('zero', () => {
      expect(errorsOf(listenerWith({ timeouts: '{ connect: 0s }' }))).toEqual(['postern.yaml:11:26 listeners[0].timeouts.connect: expected a duration greater than zero, got "0s"']);
    });

    it('more than a timer can hold', () => {
      expect(errorsOf(listenerWith({ timeouts: '{ idle: 30d }' }))).toEqual(['postern.yaml:11:23 listeners[0].timeouts.idle: "30d" is too long: at most 24d']);
    });

    it('units', () => {
      expect(listenerOf({ timeouts: '{ handshake: 250ms, connect: 2m, idle: 1d }' }).timeouts).toEqual({ handshakeMs: 250, connectMs: 120_000, idleMs: 86_400_000, starttlsMs: 60_000, backendReplyMs: 120_000 });
      expect(listenerOf({ timeouts: '{ idle: 1h }' }).timeouts.idleMs).toBe(3_600_000);
    });
  });

  describe('alpn', () => {
    it('true is neither a list nor false', () => {
      expect(errorsOf(listenerWith({ alpn: 'true' }))).toEqual(['postern.yaml:11:11 listeners[0].alpn: expected a list of ALPN protocol names, or false for no ALPN handling, got true']);
    });

    it('an empty list is refused (false turns ALPN off)', () => {
      expect(errorsOf(listenerWith({ alpn: '[]' }))).toEqual(['postern.yaml:11:11 listeners[0].alpn: an empty list would refuse every client that offers ALPN: write false to turn ALPN handling off']);
    });

    it('a protocol name longer than 255 bytes', () => {
      expect(errorsOf(listenerWith({ alpn: `[smtp, ${'x'.repeat(256)}]` }))).toEqual(['postern.yaml:11:18 listeners[0].alpn[1]: an ALPN protocol name is 1 to 255 bytes, got 256']);
    });
  });

  describe('STARTTLS options', () => {
    it('are refused on an implicit TLS listener, each at its key', () => {
      expect(errorsOf(listenerWith({ greeting: 'hello', requireTls: 'true', capabilities: '{ probeInterval: 1m }' }))).toEqual([
        'postern.yaml:11:5 listeners[0].greeting: "greeting" only applies to tls: starttls listeners; this one is tls: implicit',
        'postern.yaml:12:5 listeners[0].requireTls: "requireTls" only applies to tls: starttls listeners; this one is tls: implicit',
        'postern.yaml:13:5 listeners[0].capabilities: "capabilities" only applies to tls: starttls listeners; this one is tls: implicit',
      ]);
    });

    it('tls: starttls needs a mail protocol', () => {
      expect(errorsOf(listenerWith({ protocol: 'tls', tls: 'starttls' }))).toEqual([
        'postern.yaml:8:10 listeners[0].tls: starttls needs protocol smtp, imap or pop3: protocol tls has no STARTTLS command (use tls: implicit)',
      ]);
    });

    it('a greeting must be one printable line', () => {
      expect(errorsOf(listenerWith({ tls: 'starttls', greeting: '"hi\\r\\nMAIL FROM:<x>"' }))).toEqual([
        'postern.yaml:11:15 listeners[0].greeting: the greeting must be printable ASCII on one line, got "hi\\r\\nMAIL FROM:<x>"',
      ]);
    });
  });

  describe('files', () => {
    it('a missing certificate file is named by its resolved path', () => {
      expect(errorsOf(`certificates:\n  - cert: certs/fullchain.pem\n    key: certs/missing.pem\n${listenerWith({}).slice(CERTS.length)}`)).toEqual([
        `postern.yaml:3:10 certificates[0].key: file not found: ${join(dir, 'certs', 'missing.pem')}`,
      ]);
    });

    it('a folder is not a certificate file', () => {
      expect(errorsOf(`certificates:\n  - cert: certs\n    key: certs/privkey.pem\n${listenerWith({}).slice(CERTS.length)}`)).toEqual([
        `postern.yaml:2:11 certificates[0].cert: not a regular file: ${join(dir, 'certs')}`,
      ]);
    });

    it('a missing configuration file is one error at 1:1', () => {
      const missing = join(dir, 'nope.yaml');
      const r = loadConfigFile(missing);
      expect(r.ok).toBe(false);
      if (!r.ok) expect(r.errors.map(formatConfigError)).toEqual([`${missing}:1:1 cannot read the configuration file ${missing}: no such file`]);
    });
  });

  describe('YAML', () => {
    it('syntax errors carry their line and column', () => {
      expect(errorsOf(`${CERTS}listeners: [\n  { name: a\n`)).toEqual([
        'postern.yaml:6:1 YAML syntax error: Flow map in block collection must be sufficiently indented and end with a }',
        'postern.yaml:6:1 YAML syntax error: Flow sequence in block collection must be sufficiently indented and end with a ]',
      ]);
    });

    it('duplicate keys are errors, at the second key', () => {
      expect(errorsOf(listenerWith({ sni: 'strict', 'tls ': 'implicit' }).replace('tls : implicit', 'tls: implicit'))).toEqual([
        'postern.yaml:12:5 listeners[0].tls: duplicate key "tls": a key may appear only once in a mapping',
      ]);
    });
  });

  describe('role (smtp listeners)', () => {
    it('an smtp listener without role (the old shape) is refused at its mapping, naming both roles and saying what to write', () => {
      expect(errorsOf(listenerWith({ tls: 'starttls', listen: '"0.0.0.0:25"', role: null }))).toEqual([
        'postern.yaml:5:5 listeners[0].role: required for smtp listeners: write role: mx (mail from other servers, usually port 25: plaintext allowed, sni fallback) or role: submission (your users, usually 587 and 465: sni strict, TLS required). The port number no longer decides the defaults',
      ]);
    });

    it('role on an imap, pop3 or tls listener is refused at its key', () => {
      expect(errorsOf(listenerWith({ protocol: 'imap', tls: 'starttls', role: 'submission' }))).toEqual([
        'postern.yaml:11:5 listeners[0].role: "role" only applies to protocol: smtp listeners; an imap listener has one role (sni strict, TLS required): remove it',
      ]);
      expect(errorsOf(listenerWith({ protocol: 'pop3', role: 'mx' }))).toEqual([
        'postern.yaml:11:5 listeners[0].role: "role" only applies to protocol: smtp listeners; a pop3 listener has one role (sni strict, TLS required): remove it',
      ]);
      expect(errorsOf(listenerWith({ protocol: 'tls', role: 'mx' }))).toEqual([
        'postern.yaml:11:5 listeners[0].role: "role" only applies to protocol: smtp listeners; a tls listener has one role (sni strict): remove it',
      ]);
    });

    it('role: mx with tls: implicit is refused with the reason', () => {
      expect(errorsOf(listenerWith({ role: 'mx' }))).toEqual([
        'postern.yaml:11:11 listeners[0].role: role: mx needs tls: starttls: other servers deliver to an MX on port 25 in plaintext and upgrade with STARTTLS (RFC 3207); SMTP with implicit TLS (port 465) is submission (RFC 8314 section 3.3): write role: submission, or tls: starttls for an MX',
      ]);
    });

    it('a role that is neither mx nor submission names both', () => {
      expect(errorsOf(listenerWith({ tls: 'starttls', role: 'relay' }))).toEqual(['postern.yaml:11:11 listeners[0].role: expected "mx" or "submission", got "relay"']);
    });

    it('role: mx with requireTls: true loads, with a warning at requireTls (RFC 3207 section 4)', () => {
      const loaded = load(listenerWith({ tls: 'starttls', role: 'mx', requireTls: 'true' }));
      expect(loaded.config.listeners[0]!.starttls?.requireTls).toBe(true);
      expect(loaded.warnings.map((w) => formatConfigError(w).replace(`${dir}/`, ''))).toEqual([
        'postern.yaml:12:17 listeners[0].requireTls: requireTls: true on role: mx: senders without STARTTLS get 530 before MAIL, a permanent error, and their mail bounces; RFC 3207 section 4: a publicly-referenced SMTP server must not require STARTTLS. Keep it only if no MX record points here',
      ]);
      expect(load(listenerWith({ tls: 'starttls', role: 'mx' })).warnings).toEqual([]);
      expect(load(listenerWith({ tls: 'starttls', role: 'submission', requireTls: 'true' })).warnings).toEqual([]);
    });
  });

  it('every error in a file is reported, sorted by line', () => {
    const yaml = `log: { level: loud }
certificates:
  - cert: certs/fullchain.pem
    key: certs/nokey.pem
listeners:
  - name: a
    listen: "0.0.0.0:465"
    protocol: smtp
    tls: implicit
    hostname: mail.example.org
    sni: lenient
    backend: { address: "127.0.0.1:10465", proxyProtocol: v2 }
    timeouts: { idle: 10 }
  - name: a
    listen: "[::]:465"
    protocol: imap
    tls: implicit
    hostname: imap.example.org
    backend: { address: "127.0.0.1:10993" }
    greeting: hi
`;
    expect(errorsOf(yaml)).toEqual([
      'postern.yaml:1:15 log.level: expected "fatal", "error", "warn", "info", "debug" or "trace", got "loud"',
      `postern.yaml:4:10 certificates[0].key: file not found: ${join(dir, 'certs', 'nokey.pem')}`,
      expect.stringMatching(/^postern\.yaml:6:5 listeners\[0\]\.role: required for smtp listeners: write role: mx /),
      'postern.yaml:11:10 listeners[0].sni: expected "strict" or "fallback", got "lenient"',
      'postern.yaml:13:23 listeners[0].timeouts.idle: got a bare number (10): use a unit, e.g. 10s (units: ms, s, m, h, d)',
      'postern.yaml:14:11 listeners[1].name: duplicate listener name "a": already used by listeners[0] (line 6)',
      'postern.yaml:15:13 listeners[1].listen: "[::]:465" conflicts with "0.0.0.0:465" of listener "a" (listeners[0], line 7): [::] also accepts IPv4 connections on port 465 (dual-stack, the Linux default)',
      expect.stringMatching(/^postern\.yaml:19:14 listeners\[1\]\.backend\.proxyProtocol: required but missing: choose none, v1 or v2 explicitly/),
      'postern.yaml:20:5 listeners[1].greeting: "greeting" only applies to tls: starttls listeners; this one is tls: implicit',
    ]);
  });

  it('formatConfigError shows a file under the working directory relative to it', () => {
    const e = { file: join(process.cwd(), 'postern.yaml'), line: 14, col: 7, path: 'listeners[1].sni', message: 'expected "strict" or "fallback", got "lenient"' };
    expect(formatConfigError(e)).toBe('postern.yaml:14:7 listeners[1].sni: expected "strict" or "fallback", got "lenient"');
    expect(formatConfigError({ ...e, file: 'conf/postern.yaml' })).toBe('conf/postern.yaml:14:7 listeners[1].sni: expected "strict" or "fallback", got "lenient"');
    expect(formatConfigError({ ...e, path: '', message: 'the file is empty' })).toBe('postern.yaml:14:7 the file is empty');
  });
});

describe('config defaults', () => {
  it('sni by role: fallback for role: mx, strict for submission, imap, pop3 and tls; an sni key overrides', () => {
    expect(listenerOf({ tls: 'starttls', role: 'mx' }).sni).toBe('fallback');
    expect(listenerOf({ tls: 'starttls', role: 'submission' }).sni).toBe('strict');
    expect(listenerOf({ role: 'submission' }).sni).toBe('strict');
    expect(listenerOf({ protocol: 'imap', tls: 'starttls' }).sni).toBe('strict');
    expect(listenerOf({ protocol: 'pop3', tls: 'starttls' }).sni).toBe('strict');
    expect(listenerOf({ protocol: 'tls' }).sni).toBe('strict');
    expect(listenerOf({ tls: 'starttls', role: 'mx', sni: 'strict' }).sni).toBe('strict');
    expect(listenerOf({ tls: 'starttls', role: 'submission', sni: 'fallback' }).sni).toBe('fallback');
  });

  it('role is compiled for smtp listeners, null for the others', () => {
    expect(listenerOf({ tls: 'starttls', role: 'mx' }).role).toBe('mx');
    expect(listenerOf({}).role).toBe('submission');
    expect(listenerOf({ protocol: 'imap' }).role).toBeNull();
    expect(listenerOf({ protocol: 'tls' }).role).toBeNull();
  });

  it('alpn by protocol; none for tls', () => {
    expect(listenerOf({}).alpn).toEqual(['smtp']);
    expect(listenerOf({ protocol: 'imap' }).alpn).toEqual(['imap']);
    expect(listenerOf({ protocol: 'pop3' }).alpn).toEqual(['pop3']);
    expect(listenerOf({ protocol: 'tls' }).alpn).toBeNull();
    expect(listenerOf({ protocol: 'tls', alpn: '[h2, http/1.1]' }).alpn).toEqual(['h2', 'http/1.1']);
  });

  it('alpn: false turns ALPN handling off', () => {
    expect(listenerOf({ alpn: 'false' }).alpn).toBeNull();
  });

  it('requireTls by role, never by port: false for role: mx, true for submission, imap and pop3; a requireTls key overrides', () => {
    for (const port of [25, 2525, 587, 10025]) {
      expect(listenerOf({ tls: 'starttls', role: 'mx', listen: `"0.0.0.0:${port}"` }).starttls?.requireTls, `mx on ${port}`).toBe(false);
      expect(listenerOf({ tls: 'starttls', role: 'submission', listen: `"0.0.0.0:${port}"` }).starttls?.requireTls, `submission on ${port}`).toBe(true);
    }
    expect(listenerOf({ tls: 'starttls', protocol: 'imap', listen: '"0.0.0.0:143"' }).starttls?.requireTls).toBe(true);
    expect(listenerOf({ tls: 'starttls', protocol: 'pop3', listen: '"0.0.0.0:110"' }).starttls?.requireTls).toBe(true);
    expect(listenerOf({ tls: 'starttls', role: 'mx', requireTls: 'true' }).starttls?.requireTls).toBe(true);
    expect(listenerOf({ tls: 'starttls', role: 'submission', requireTls: 'false' }).starttls?.requireTls).toBe(false);
  });

  it('greeting: "<hostname> ESMTP" for smtp, "ready" for imap and pop3', () => {
    expect(listenerOf({ tls: 'starttls', hostname: 'MX.Example.org' }).starttls?.greeting).toBe('mx.example.org ESMTP');
    expect(listenerOf({ tls: 'starttls', protocol: 'imap' }).starttls?.greeting).toBe('ready');
    expect(listenerOf({ tls: 'starttls', protocol: 'pop3' }).starttls?.greeting).toBe('ready');
    expect(listenerOf({ tls: 'starttls', greeting: '"mx ESMTP Postfix"' }).starttls?.greeting).toBe('mx ESMTP Postfix');
  });

  it('STARTTLS probe interval and fallback capabilities by protocol', () => {
    expect(listenerOf({ tls: 'starttls' }).starttls).toEqual({
      greeting: 'mail.example.org ESMTP',
      requireTls: true,
      probeIntervalMs: 300_000,
      fallbackCapabilities: ['PIPELINING', 'SIZE 10240000', '8BITMIME', 'ENHANCEDSTATUSCODES', 'SMTPUTF8', 'CHUNKING'],
    });
    expect(listenerOf({ tls: 'starttls', protocol: 'imap' }).starttls?.fallbackCapabilities).toEqual(['IMAP4rev1', 'LITERAL+', 'SASL-IR', 'ID', 'ENABLE', 'IDLE', 'AUTH=PLAIN']);
    expect(listenerOf({ tls: 'starttls', protocol: 'pop3' }).starttls?.fallbackCapabilities).toEqual(['TOP', 'UIDL', 'RESP-CODES', 'PIPELINING', 'USER', 'SASL PLAIN']);
    expect(listenerOf({ tls: 'starttls', capabilities: '{ probeInterval: 30s, fallback: [PIPELINING] }' }).starttls).toMatchObject({ probeIntervalMs: 30_000, fallbackCapabilities: ['PIPELINING'] });
  });

  it('implicit TLS listeners have no STARTTLS settings', () => {
    expect(listenerOf({}).starttls).toBeNull();
  });

  it('timeouts: handshake 10s, connect 5s, idle 10m; each on its own', () => {
    expect(listenerOf({}).timeouts).toEqual({ handshakeMs: 10_000, connectMs: 5_000, idleMs: 600_000, starttlsMs: 60_000, backendReplyMs: 120_000 });
    expect(listenerOf({ timeouts: '{ connect: 1s }' }).timeouts).toEqual({ handshakeMs: 10_000, connectMs: 1_000, idleMs: 600_000, starttlsMs: 60_000, backendReplyMs: 120_000 });
  });

  it('log level info, minVersion TLSv1.2, serverNames any', () => {
    const { config } = load(listenerWith({}));
    expect(config.log).toEqual({ level: 'info', format: 'json' });
    expect(config.backendChecks).toEqual({ intervalMs: 30_000 });
    expect(config.listeners[0]).toMatchObject({ minVersion: 'TLSv1.2', serverNames: null });
  });
});

describe('config compilation', () => {
  it('a full valid config compiles', () => {
    const yaml = `log:
  level: debug
certificates:
  - cert: certs/fullchain.pem
    key: certs/privkey.pem
listeners:
  - name: smtp
    listen: "[::]:25"
    protocol: smtp
    role: mx
    tls: starttls
    hostname: mail.example.org
    sni: fallback
    serverNames: ["*.example.org", mail.example.net]
    alpn: [smtp]
    minVersion: TLSv1.3
    backend:
      address: "postfix:10025"
      proxyProtocol: v1
    timeouts: { handshake: 20s, connect: 3s, idle: 5m }
    greeting: "mx.example.org ESMTP ready"
    requireTls: false
    capabilities:
      probeInterval: 1m
      fallback: [PIPELINING, "SIZE 52428800"]
`;
    expect(load(yaml).config).toEqual({
      file,
      log: { level: 'debug', format: 'json' },
      admin: null,
      backendChecks: { intervalMs: 30_000 },
      shutdown: { drainTimeoutMs: 30_000 },
      workers: 1,
      acme: null,
      mtaSts: null,
      sessionTickets: { keyFile: null, rotateMs: 12 * 3_600_000 },
      certificates: [{ cert: join(dir, 'certs', 'fullchain.pem'), key: join(dir, 'certs', 'privkey.pem'), path: 'certificates[0]' }],
      listeners: [
        {
          name: 'smtp',
          listen: { host: '::', port: 25 },
          protocol: 'smtp',
          tls: 'starttls',
          role: 'mx',
          hostname: 'mail.example.org',
          sni: 'fallback',
          serverNames: ['*.example.org', 'mail.example.net'],
          alpn: ['smtp'],
          minVersion: 'TLSv1.3',
          backend: { address: { host: 'postfix', port: 10025 }, proxyProtocol: 'v1' },
          timeouts: { handshakeMs: 20_000, connectMs: 3_000, idleMs: 300_000, starttlsMs: 60_000, backendReplyMs: 120_000 },
          limits: { maxConnections: 10_000, maxConnectionsPerClient: 50 },
          routes: [],
          acceptProxyProtocol: null,
          starttls: { greeting: 'mx.example.org ESMTP ready', requireTls: false, probeIntervalMs: 60_000, fallbackCapabilities: ['PIPELINING', 'SIZE 52428800'] },
          dane: false,
          path: 'listeners[0]',
        },
      ],
    });
  });

  it('relative certificate paths resolve against the YAML file, not the working directory', () => {
    const sub = join(dir, 'etc', 'postern');
    mkdirSync(join(sub, 'tls'), { recursive: true });
    writeFileSync(join(sub, 'tls', 'a.pem'), 'x');
    writeFileSync(join(sub, 'tls', 'a.key'), 'x');
    writeFileSync(join(sub, 'postern.yaml'), listenerWith({}).replace(CERTS, 'certificates:\n  - cert: tls/a.pem\n    key: ../postern/tls/a.key\n'));
    const r = loadConfigFile(relative(process.cwd(), join(sub, 'postern.yaml')));
    if (!r.ok) throw new Error(r.errors.map(formatConfigError).join('\n'));
    expect(r.loaded.config.file).toBe(join(sub, 'postern.yaml'));
    expect(r.loaded.config.certificates).toEqual([{ cert: join(sub, 'tls', 'a.pem'), key: join(sub, 'tls', 'a.key'), path: 'certificates[0]' }]);
  });

  it('position() finds a path, and falls back to the nearest existing parent', () => {
    const loaded = load(listenerWith({ sni: 'strict' }));
    expect(loaded.position('listeners[0].sni')).toEqual({ line: 11, col: 10 });
    expect(loaded.position('certificates[0].cert')).toEqual({ line: 2, col: 11 });
    expect(loaded.position('certificates[0]')).toEqual({ line: 2, col: 5 });
    expect(loaded.position('listeners[0].timeouts.idle')).toEqual({ line: 5, col: 5 });
    expect(loaded.position('listeners[3]')).toEqual({ line: 5, col: 3 });
    expect(loaded.position('')).toEqual({ line: 1, col: 1 });
  });

  it('the example from the issue compiles', () => {
    mkdirSync(join(dir, 'certs', 'mail.example.org'));
    writeFileSync(join(dir, 'certs', 'mail.example.org', 'fullchain.pem'), 'x');
    writeFileSync(join(dir, 'certs', 'mail.example.org', 'privkey.pem'), 'x');
    const yaml = `log:
  level: info                      # fatal | error | warn | info | debug | trace
certificates:                      # PEM pairs; the names each serves come from its SANs
  - cert: certs/mail.example.org/fullchain.pem   # paths relative to this file
    key: certs/mail.example.org/privkey.pem
listeners:
  - name: submissions              # unique; used in logs and metrics
    listen: "0.0.0.0:465"          # host:port; "[::]:465" for IPv6
    protocol: smtp                 # smtp | imap | pop3 | tls
    role: submission               # smtp only: mx | submission
    tls: implicit                  # implicit | starttls (starttls: next issue)
    hostname: mail.example.org     # this listener's own name
    sni: strict                    # strict | fallback
    serverNames: ["*.example.org"] # optional: names this listener may serve (default: any loaded cert)
    alpn: [smtp]                   # optional, see below
    backend:
      address: "127.0.0.1:10465"
      proxyProtocol: v2            # none | v1 | v2
    timeouts: { handshake: 10s, connect: 5s, idle: 10m }
`;
    expect(load(yaml).config.listeners).toEqual([
      {
        name: 'submissions',
        listen: { host: '0.0.0.0', port: 465 },
        protocol: 'smtp',
        tls: 'implicit',
        role: 'submission',
        hostname: 'mail.example.org',
        sni: 'strict',
        serverNames: ['*.example.org'],
        alpn: ['smtp'],
        minVersion: 'TLSv1.2',
        backend: { address: { host: '127.0.0.1', port: 10465 }, proxyProtocol: 'v2' },
        timeouts: { handshakeMs: 10_000, connectMs: 5_000, idleMs: 600_000, starttlsMs: 60_000, backendReplyMs: 120_000 },
        limits: { maxConnections: 10_000, maxConnectionsPerClient: 50 },
        routes: [],
        acceptProxyProtocol: null,
        starttls: null,
        dane: false,
        path: 'listeners[0]',
      },
    ]);
  });

  it('config.example.yaml compiles when its certificate files exist', () => {
    mkdirSync(join(dir, 'certs', 'mail.example.org'));
    writeFileSync(join(dir, 'certs', 'mail.example.org', 'fullchain.pem'), 'x');
    writeFileSync(join(dir, 'certs', 'mail.example.org', 'privkey.pem'), 'x');
    copyFileSync(new URL('../../config.example.yaml', import.meta.url), join(dir, 'config.example.yaml'));
    const r = loadConfigFile(join(dir, 'config.example.yaml'));
    if (!r.ok) throw new Error(r.errors.map(formatConfigError).join('\n'));
    const { config } = r.loaded;
    expect(config.certificates).toEqual([
      { cert: join(dir, 'certs', 'mail.example.org', 'fullchain.pem'), key: join(dir, 'certs', 'mail.example.org', 'privkey.pem'), path: 'certificates[0]' },
    ]);
    expect(config.listeners.map((l) => [l.name, l.listen.port, l.protocol, l.tls, l.role, l.sni, l.alpn, l.starttls?.requireTls ?? null])).toEqual([
      ['smtp', 25, 'smtp', 'starttls', 'mx', 'fallback', ['smtp'], false],
      ['submission', 587, 'smtp', 'starttls', 'submission', 'strict', ['smtp'], true],
      ['submissions', 465, 'smtp', 'implicit', 'submission', 'strict', ['smtp'], null],
      ['imap', 143, 'imap', 'starttls', null, 'strict', ['imap'], true],
      ['imaps', 993, 'imap', 'implicit', null, 'strict', ['imap'], null],
      ['pop3s', 995, 'pop3', 'implicit', null, 'strict', ['pop3'], null],
      ['https', 443, 'tls', 'implicit', null, 'strict', ['h2', 'http/1.1'], null],
    ]);
    expect(r.loaded.warnings).toEqual([]);
    expect(config.listeners.every((l) => l.backend.proxyProtocol === 'v2' && l.backend.address.host === '127.0.0.1')).toBe(true);
  });

  it('a JSON Schema of the document for editors', () => {
    const schema = configJsonSchema() as { type: string; required: string[]; additionalProperties: boolean; properties: Record<string, unknown> };
    // certificates may be left out when acme obtains them (the loader says which one is missing).
    expect(schema).toMatchObject({ type: 'object', additionalProperties: false, required: ['listeners'] });
    expect(Object.keys(schema.properties)).toEqual(['log', 'certificates', 'acme', 'listeners', 'admin', 'backendChecks', 'shutdown', 'limits', 'mtaSts', 'sessionTickets', 'workers']);
    expect(JSON.stringify(schema)).toContain('"required":["name","listen","protocol","tls","hostname","backend"]');
  });
});

describe('certificate sources', () => {
  const LISTENER = `listeners:\n  - ${[...BASE, 'role: submission'].join('\n    ')}\n`;
  it('a certbot live/ folder and a combined pem file compile to absolute paths', () => {
    mkdirSync(join(dir, 'live'));
    const c = load(`certificates:\n  - dir: live\n  - pem: certs/fullchain.pem\n${LISTENER}`).config.certificates;
    expect(c).toEqual([
      { dir: join(dir, 'live'), path: 'certificates[0]' },
      { pem: join(dir, 'certs', 'fullchain.pem'), path: 'certificates[1]' },
    ]);
  });
  it('a missing live/ folder is named', () => {
    expect(errorsOf(`certificates:\n  - dir: nowhere\n${LISTENER}`)).toEqual([`postern.yaml:2:10 certificates[0].dir: folder not found: ${join(dir, 'nowhere')}`]);
  });
  it('mixing forms in one entry is refused', () => {
    expect(errorsOf(`certificates:\n  - cert: certs/fullchain.pem\n    key: certs/privkey.pem\n    pem: certs/fullchain.pem\n${LISTENER}`)).toEqual([
      'postern.yaml:2:5 certificates[0]: give either cert and key, or dir (a certbot live/ folder), or pem (key, certificate and chain in one file)',
    ]);
  });
  it('a cert without its key is refused', () => {
    expect(errorsOf(`certificates:\n  - cert: certs/fullchain.pem\n${LISTENER}`)).toEqual(['postern.yaml:2:5 certificates[0].key: required but missing: key goes with cert']);
  });
});

describe('operations settings', () => {
  it('admin, shutdown, global limits and workers compile; a listener overrides the global limits', () => {
    const yaml = `${CERTS}admin: { listen: "127.0.0.1:9900" }
shutdown: { drainTimeout: 5s }
limits: { maxConnections: 500, maxConnectionsPerClient: 7 }
workers: 2
listeners:
  - ${[...BASE, 'role: submission'].join('\n    ')}
    limits: { maxConnectionsPerClient: 3 }
    routes:
      - serverNames: [www.example.com, "*.example.net"]
        backend: { address: "127.0.0.1:8080", proxyProtocol: none }
    acceptProxyProtocol: { from: ["10.0.0.0/8", "2001:db8::/32", 192.0.2.7] }
`;
    const c = load(yaml).config;
    expect(c.admin).toEqual({ listen: { host: '127.0.0.1', port: 9900 } });
    expect(c.shutdown).toEqual({ drainTimeoutMs: 5000 });
    expect(c.workers).toBe(2);
    const l = c.listeners[0]!;
    expect(l.limits).toEqual({ maxConnections: 500, maxConnectionsPerClient: 3 });
    expect(l.routes).toEqual([{ serverNames: ['www.example.com', '*.example.net'], backend: { address: { host: '127.0.0.1', port: 8080 }, proxyProtocol: 'none' }, path: 'listeners[0].routes[0]' }]);
    expect(l.acceptProxyProtocol!.from.map((n) => [n.family, n.prefix, n.bytes.toString('hex')])).toEqual([
      [4, 8, '0a000000'],
      [6, 32, '20010db8000000000000000000000000'],
      [4, 32, 'c0000207'],
    ]);
  });
  it('log.format and backendChecks.interval compile; off and false turn the checks off', () => {
    const listeners = `listeners:\n  - ${[...BASE, 'role: submission'].join('\n    ')}\n`;
    const c = load(`${CERTS}log: { format: text }\nbackendChecks: { interval: 2m }\n${listeners}`).config;
    expect(c.log).toEqual({ level: 'info', format: 'text' });
    expect(c.backendChecks).toEqual({ intervalMs: 120_000 });
    expect(load(`${CERTS}backendChecks: { interval: off }\n${listeners}`).config.backendChecks).toEqual({ intervalMs: null });
    expect(load(`${CERTS}backendChecks: { interval: false }\n${listeners}`).config.backendChecks).toEqual({ intervalMs: null });
    expect(load(`${CERTS}backendChecks: { interval: 1s }\n${listeners}`).config.backendChecks).toEqual({ intervalMs: 1000 });
  });

  it('bad log.format and backendChecks values are named with file:line and path', () => {
    const listeners = `listeners:\n  - ${[...BASE, 'role: submission'].join('\n    ')}\n`;
    expect(errorsOf(`${CERTS}log: { format: pretty }\n${listeners}`)).toEqual(['postern.yaml:4:16 log.format: expected "json" or "text", got "pretty"']);
    expect(errorsOf(`${CERTS}backendChecks:\n  interval: 500ms\n${listeners}`)).toEqual([
      'postern.yaml:5:13 backendChecks.interval: "500ms" is too often: at least 1s (each check is a connection in the backend\'s log), or off',
    ]);
    expect(errorsOf(`${CERTS}backendChecks:\n  interval: 30\n${listeners}`)).toEqual([
      'postern.yaml:5:13 backendChecks.interval: expected a duration such as 30s, or off to turn the checks off, got 30',
    ]);
    expect(errorsOf(`${CERTS}backendChecks:\n  interval: true\n${listeners}`)).toEqual([
      'postern.yaml:5:13 backendChecks.interval: expected a duration such as 30s, or off to turn the checks off, got true',
    ]);
    expect(errorsOf(`${CERTS}backendChecks:\n  interval: often\n${listeners}`)).toEqual([
      'postern.yaml:5:13 backendChecks.interval: expected a duration such as 250ms, 10s, 5m, 1h or 1d, got "often"; or off to turn the checks off',
    ]);
    expect(errorsOf(`${CERTS}backendChecks:\n  every: 30s\n${listeners}`)).toEqual([
      'postern.yaml:5:3 backendChecks.every: unknown key "every"; allowed keys: interval',
    ]);
  });

  it('workers: auto is one per CPU; bad values are named', () => {
    expect(load(`${CERTS}workers: auto\nlisteners:\n  - ${[...BASE, 'role: submission'].join('\n    ')}\n`).config.workers).toBeGreaterThanOrEqual(1);
    expect(errorsOf(`${CERTS}workers: lots\nlisteners:\n  - ${[...BASE, 'role: submission'].join('\n    ')}\n`)).toEqual(['postern.yaml:4:10 workers: expected "auto" or a number of processes, got "lots"']);
  });
  it('a bad network in acceptProxyProtocol is named', () => {
    expect(errorsOf(listenerWith({ acceptProxyProtocol: '{ from: ["10.0.0.0/33"] }' }))).toEqual(['postern.yaml:11:35 listeners[0].acceptProxyProtocol.from[0]: "10.0.0.0/33": the prefix must be 0-32']);
  });
});
