// Session ticket keys (src/tls/tickets.ts) and the ticket name postern reads from a ClientHello
// (src/tls/clienthello.ts): the keys are pure functions of (secret, scope, period), select()
// accepts exactly the previous, current and next period of its own scope, and the name the
// parser finds in a real client's hello (Node's tls client resuming a TLS 1.3 session: the first
// PSK identity; a TLS 1.2 session: the SessionTicket extension) is the first 16 bytes of the key
// the server made the ticket with. The hellos are captured live from Node's client, not built.
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MIN_SECRET_BYTES, TICKET_KEY_BYTES, TICKET_NAME_BYTES, TicketKeys, parseTicketSecret } from '../../src/tls/tickets.ts';
import { parseClientHello, type ClientHello } from '../../src/tls/clienthello.ts';
import { buildClientHello, ext, u16, vec16 } from '../helpers/hello-builder.ts';
import { makePki, type CertFiles, type TestPki } from '../helpers/certs.ts';

const HOUR = 3_600_000;
const EXT_PSK = 41;
const EXT_SESSION_TICKET = 35;

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

describe('TicketKeys', () => {
  const secret = Buffer.alloc(32, 7);
  const scope = 'listener-scope\0ECDSA:mail.example.org';

  it('the same secret gives the same keys (other workers, a restart, another host)', () => {
    const t = 1_800_000_000_000;
    const a = new TicketKeys(Buffer.from(secret), 12 * HOUR, () => t);
    const b = new TicketKeys(Buffer.from(secret), 12 * HOUR, () => t);
    const ka = a.select(scope, null);
    const kb = b.select(scope, null);
    expect(ka.key.length).toBe(TICKET_KEY_BYTES);
    expect(ka.key.equals(kb.key)).toBe(true);
    expect(ka.period).toBe(Math.floor(t / (12 * HOUR)));
    expect(ka.period).toBe(kb.period);
    // A different secret: different keys for the same scope and period.
    const c = new TicketKeys(Buffer.alloc(32, 8), 12 * HOUR, () => t);
    expect(c.select(scope, null).key.equals(ka.key)).toBe(false);
    // The secret is copied: changing the caller's buffer later changes nothing.
    const mine = Buffer.from(secret);
    const d = new TicketKeys(mine, 12 * HOUR, () => t);
    mine.fill(0);
    expect(d.select(scope, null).key.equals(ka.key)).toBe(true);
  });

  it('a different scope, or a different period, gives a different key (name included)', () => {
    const k = new TicketKeys(secret, 12 * HOUR, () => 0);
    const names = new Set<string>();
    for (const s of [scope, 'other-listener\0ECDSA:mail.example.org', 'listener-scope\0ECDSA:other.example.org', 'listener-scope\0ECDSA:mail.example.org|RSA:mail.example.org']) {
      for (const p of [0, 1, 2]) {
        const key = k.key(s, p);
        expect(key.length).toBe(TICKET_KEY_BYTES);
        names.add(key.subarray(0, TICKET_NAME_BYTES).toString('hex'));
      }
    }
    expect(names.size).toBe(12);
  });

  it('a secret shorter than 32 bytes is refused', () => {
    expect(() => new TicketKeys(Buffer.alloc(31), HOUR)).toThrow(/at least 32 bytes, got 31/);
    expect(TicketKeys.random(HOUR).select('s', null).key.length).toBe(TICKET_KEY_BYTES);
  });

  it('select() accepts the previous, current and next period of its own scope, nothing older, newer or from another scope', () => {
    const rotate = 3000;
    let now = 1_000 * rotate + 1500; // period 1000
    const k = new TicketKeys(secret, rotate, () => now);
    const nameOf = (s: string, p: number) => k.key(s, p).subarray(0, TICKET_NAME_BYTES);
    const current = k.select(scope, null);
    expect(current.period).toBe(1000);
    expect(current.lifetimeS).toBe(3);
    for (const p of [999, 1000, 1001]) {
      const chosen = k.select(scope, Buffer.from(nameOf(scope, p)));
      expect(chosen.period).toBe(p);
      expect(chosen.key.equals(k.key(scope, p))).toBe(true);
    }
    // Too old, too new, another scope's key of this very period, garbage: the current key, whose
    // name the ticket does not carry, so OpenSSL makes a full handshake.
    for (const name of [nameOf(scope, 998), nameOf(scope, 1002), nameOf('other', 1000), nameOf('other', 999), randomBytes(16)]) {
      const chosen = k.select(scope, Buffer.from(name));
      expect(chosen.period).toBe(1000);
      expect(chosen.key.equals(current.key)).toBe(true);
      expect(chosen.key.subarray(0, 16).equals(name)).toBe(false);
    }
    // After a rotation the old current key is the previous one: still accepted; one more
    // rotation and it is not.
    const minted = Buffer.from(current.key.subarray(0, TICKET_NAME_BYTES));
    now += rotate;
    expect(k.select(scope, minted)).toMatchObject({ period: 1000 });
    expect(k.select(scope, minted).key.equals(current.key)).toBe(true);
    now += rotate;
    expect(k.select(scope, minted).period).toBe(1002);
    expect(k.select(scope, minted).key.equals(current.key)).toBe(false);
    // The keys are recomputed, not remembered: the same key comes back for period 1000 later.
    expect(k.key(scope, 1000).equals(current.key)).toBe(true);
  });

  it('the lifetime announced is one rotation period, between 1 s and 7 days', () => {
    expect(new TicketKeys(secret, 12 * HOUR).lifetimeS).toBe(12 * 3600);
    expect(new TicketKeys(secret, 3000).lifetimeS).toBe(3);
    expect(new TicketKeys(secret, 250).lifetimeS).toBe(1);
    expect(new TicketKeys(secret, 30 * 24 * HOUR).lifetimeS).toBe(7 * 86_400);
  });
});

describe('parseTicketSecret', () => {
  it('raw bytes (openssl rand 48 > file) are the secret as they are', () => {
    // Bytes that cannot be read as base64 text (a NUL, a high byte).
    const raw = Buffer.concat([Buffer.from([0, 0xff, 0x80]), randomBytes(45)]);
    const r = parseTicketSecret(raw);
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.secret.equals(raw)).toBe(true);
  });

  it('base64 text (openssl rand -base64 48 > file), with the newline openssl writes, is decoded', () => {
    const bytes = randomBytes(48);
    for (const text of [`${bytes.toString('base64')}\n`, `${bytes.toString('base64').slice(0, 64)}\n${bytes.toString('base64').slice(64)}\n`, `  ${bytes.toString('base64url')}\r\n`]) {
      const r = parseTicketSecret(Buffer.from(text, 'latin1'));
      expect(r.ok).toBe(true);
      if (r.ok) expect(r.secret.equals(bytes)).toBe(true);
    }
  });

  it('fewer than 32 bytes either way is refused, saying how much there is', () => {
    const shortRaw = Buffer.concat([Buffer.from([0]), randomBytes(30)]);
    expect(parseTicketSecret(shortRaw)).toEqual({ ok: false, message: expect.stringMatching(/holds 31 bytes of key material; at least 32/) });
    // 40 characters of base64 are 30 bytes: long as text, too short as a key.
    const shortB64 = Buffer.from(`${randomBytes(30).toString('base64')}\n`);
    expect(shortB64.length).toBeGreaterThan(MIN_SECRET_BYTES);
    expect(parseTicketSecret(shortB64)).toEqual({ ok: false, message: expect.stringMatching(/holds 30 bytes/) });
    expect(parseTicketSecret(Buffer.alloc(0))).toMatchObject({ ok: false });
    expect(parseTicketSecret(Buffer.from('\n'))).toMatchObject({ ok: false });
    // Exactly 32 decoded bytes are enough.
    expect(parseTicketSecret(Buffer.from(randomBytes(32).toString('base64')))).toMatchObject({ ok: true });
  });
});

// ---------------------------------------------------------------------------------------------
// Real ClientHellos offering a session: a TLS server (Node, the ticket key given) hands a client a
// ticket; the client then connects to a capture server that only records its ClientHello.

let pki: TestPki;
let cert: CertFiles;
const servers: Array<net.Server> = [];

beforeAll(async () => {
  pki = await makePki();
  cert = await pki.issue('mail', { names: ['mail.example.org'] });
}, 30_000);

afterAll(async () => {
  for (const s of servers) await new Promise((r) => s.close(r));
});

async function listen(server: net.Server): Promise<number> {
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as net.AddressInfo).port;
}

/** A TLS server with this ticket key that writes "hi" and closes after each handshake. */
async function ticketServer(ticketKeys: Buffer, maxVersion: tls.SecureVersion): Promise<number> {
  return listen(
    tls.createServer({ cert: cert.certPem, key: cert.keyPem, ticketKeys, maxVersion }, (s) => {
      s.on('error', () => {});
      s.end('hi');
    }),
  );
}

/**
 * Connects, reads to the end, returns the last session (ticket) the server handed out and whether
 * the handshake resumed `session`. Rejects when a fresh handshake brought no ticket.
 */
function getSession(port: number, maxVersion: tls.SecureVersion, session?: Buffer): Promise<{ session: Buffer; reused: boolean }> {
  return new Promise((resolve, reject) => {
    let last: Buffer | null = null;
    let reused = false;
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'mail.example.org', ca: pki.ca.certPem, maxVersion, ...(session ? { session } : {}) });
    s.on('session', (b: Buffer) => (last = b));
    s.on('secureConnect', () => (reused = s.isSessionReused()));
    s.on('data', () => {});
    s.on('error', reject);
    // A resumed TLS 1.2 session gets no new ticket (the old one stays good): the offered one.
    s.on('close', () => (last ?? session ? resolve({ session: (last ?? session)!, reused }) : reject(new Error('no session ticket arrived'))));
  });
}

/** The ClientHello a client sends offering `session` (the capture server never answers). */
async function captureHello(maxVersion: tls.SecureVersion, session: Buffer | undefined): Promise<{ wire: Buffer; hello: ClientHello }> {
  let got!: (v: { wire: Buffer; hello: ClientHello }) => void;
  let failed!: (e: Error) => void;
  const result = new Promise<{ wire: Buffer; hello: ClientHello }>((res, rej) => ((got = res), (failed = rej)));
  const port = await listen(
    net.createServer((sock) => {
      let buf = Buffer.alloc(0);
      sock.on('error', () => {});
      sock.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        const r = parseClientHello(buf);
        if (r.kind === 'need-more') return;
        sock.destroy();
        if (r.kind === 'hello') got({ wire: buf, hello: r.hello });
        else failed(new Error(`captured hello did not parse: ${JSON.stringify(r)}`));
      });
    }),
  );
  const client = tls.connect({ host: '127.0.0.1', port, servername: 'mail.example.org', maxVersion, ...(session ? { session } : {}) });
  client.on('error', () => {});
  try {
    return await result;
  } finally {
    client.destroy();
  }
}

describe('the ticket name in real ClientHellos', () => {
  it('TLS 1.3: the first PSK identity starts with the name of the key that made the ticket', async () => {
    const keys = new TicketKeys(randomBytes(32), 12 * HOUR);
    const scope = 'tls13';
    const key = keys.select(scope, null).key;
    const port = await ticketServer(key, 'TLSv1.3');
    const { session } = await getSession(port, 'TLSv1.3');

    const fresh = await captureHello('TLSv1.3', undefined);
    expect(fresh.hello.extensionTypes).not.toContain(EXT_PSK);
    expect(fresh.hello.ticketName).toBeNull();

    const offer = await captureHello('TLSv1.3', session);
    expect(offer.hello.supportedVersions).toContain(0x0304);
    // RFC 8446 4.2.11: pre_shared_key is the last extension.
    expect(offer.hello.extensionTypes.at(-1)).toBe(EXT_PSK);
    expect(offer.hello.ticketName).not.toBeNull();
    expect(offer.hello.ticketName!.length).toBe(TICKET_NAME_BYTES);
    expect(offer.hello.ticketName!.equals(key.subarray(0, TICKET_NAME_BYTES))).toBe(true);
    // And select() picks that very key back out of the (current) period.
    expect(keys.select(scope, offer.hello.ticketName).key.equals(key)).toBe(true);
    // The capture is the hello a server would get: offered to the ticket's server, it resumes.
    expect((await getSession(port, 'TLSv1.3', session)).reused).toBe(true);
  });

  it('TLS 1.2: the SessionTicket extension starts with the name of the key that made the ticket', async () => {
    const keys = new TicketKeys(randomBytes(32), 12 * HOUR);
    const scope = 'tls12';
    const key = keys.select(scope, null).key;
    const port = await ticketServer(key, 'TLSv1.2');
    const { session } = await getSession(port, 'TLSv1.2');

    // Without a session the client sends an empty SessionTicket extension: no name.
    const fresh = await captureHello('TLSv1.2', undefined);
    expect(fresh.hello.extensionTypes).toContain(EXT_SESSION_TICKET);
    expect(fresh.hello.ticketName).toBeNull();

    const offer = await captureHello('TLSv1.2', session);
    expect(offer.hello.supportedVersions).toBeNull();
    expect(offer.hello.extensionTypes).not.toContain(EXT_PSK);
    expect(offer.hello.extensionTypes).toContain(EXT_SESSION_TICKET);
    expect(offer.hello.ticketName!.equals(key.subarray(0, TICKET_NAME_BYTES))).toBe(true);
    expect(keys.select(scope, offer.hello.ticketName).key.equals(key)).toBe(true);
    expect((await getSession(port, 'TLSv1.2', session)).reused).toBe(true);
  });

  it('a ticket of another key names that key, not ours: select() falls back to the current key', async () => {
    const ours = new TicketKeys(randomBytes(32), 12 * HOUR);
    const foreign = randomBytes(48);
    const port = await ticketServer(foreign, 'TLSv1.3');
    const { session } = await getSession(port, 'TLSv1.3');
    const offer = await captureHello('TLSv1.3', session);
    expect(offer.hello.ticketName!.equals(foreign.subarray(0, 16))).toBe(true);
    const chosen = ours.select('s', offer.hello.ticketName);
    expect(chosen.key.equals(ours.select('s', null).key)).toBe(true);
  });
});

describe('a malformed or odd PSK extension is never a refusal', () => {
  const identity = Buffer.concat([Buffer.alloc(16, 0xa1), Buffer.alloc(40, 0x5e)]);
  const psk = (identities: Buffer, binders: Buffer = vec16(Buffer.from([32]), Buffer.alloc(32, 9))) => ext(EXT_PSK, Buffer.concat([identities, binders]));
  const well = psk(vec16(vec16(identity), u32(1234)));
  const sessionTicket = (data: Buffer) => ext(EXT_SESSION_TICKET, data);

  function parse(extensions: ReturnType<typeof ext>[]): ClientHello {
    const r = parseClientHello(buildClientHello({ sni: 'mail.example.org', extensions }));
    if (r.kind !== 'hello') throw new Error(`expected a hello, got ${JSON.stringify(r)}`);
    return r.hello;
  }

  it('a well-formed PSK gives the first identity\'s first 16 bytes (and wins over a SessionTicket)', () => {
    expect(parse([well]).ticketName).toEqual(Buffer.alloc(16, 0xa1));
    const second = Buffer.alloc(20, 0xb2);
    expect(parse([psk(vec16(vec16(identity), u32(1), vec16(second), u32(2)))]).ticketName).toEqual(Buffer.alloc(16, 0xa1));
    expect(parse([sessionTicket(Buffer.alloc(64, 0xc3)), well]).ticketName).toEqual(Buffer.alloc(16, 0xa1));
    expect(parse([sessionTicket(Buffer.alloc(64, 0xc3))]).ticketName).toEqual(Buffer.alloc(16, 0xc3));
  });

  it.each([
    ['an empty extension', Buffer.alloc(0)],
    ['one byte', Buffer.from([0])],
    ['identities longer than the extension', Buffer.concat([u16(500), Buffer.alloc(20)])],
    ['an empty identities list', Buffer.concat([u16(0), vec16(Buffer.from([32]), Buffer.alloc(32))])],
    ['an identity longer than its list', vec16(u16(300), Buffer.alloc(10))],
    ['an identity of 15 bytes', vec16(vec16(Buffer.alloc(15, 1)), u32(0))],
    ['an empty identity', vec16(vec16(Buffer.alloc(0)), u32(0))],
    ['garbage', randomBytes(77)],
  ])('%s: a hello with ticketName null', (_what, data) => {
    const hello = parse([ext(EXT_PSK, data)]);
    expect(hello.ticketName).toBeNull();
    expect(hello.serverName?.toString()).toBe('mail.example.org');
    expect(hello.extensionTypes).toContain(EXT_PSK);
  });

  it('a broken PSK next to a SessionTicket keeps the SessionTicket\'s name; a short SessionTicket gives none', () => {
    expect(parse([sessionTicket(Buffer.alloc(64, 0xc3)), ext(EXT_PSK, Buffer.from([1, 2, 3]))]).ticketName).toEqual(Buffer.alloc(16, 0xc3));
    expect(parse([sessionTicket(Buffer.alloc(15, 0xc3))]).ticketName).toBeNull();
    expect(parse([sessionTicket(Buffer.alloc(0))]).ticketName).toBeNull();
  });

  it('the name is a copy: it does not pin or alias the socket buffer', () => {
    const wire = buildClientHello({ extensions: [well] });
    const r = parseClientHello(wire);
    if (r.kind !== 'hello') throw new Error('no hello');
    wire.fill(0);
    expect(r.hello.ticketName).toEqual(Buffer.alloc(16, 0xa1));
  });
});
