// The soak's clients: good SMTP deliveries over STARTTLS, good IMAP sessions over implicit TLS,
// their slow variants, the hostile connections, and issue 14's attackers. Each returns an
// outcome; none throws.
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { MAILBOX, MAILBOX_SHA256 } from './backends.ts';

export const HOST = '127.0.0.1';
export const HOSTNAME = 'mail.example.org';

export interface Endpoints {
  smtpPort: number;
  imapPort: number;
  /** IMAP and POP3 STARTTLS listeners (the attackers' pre-TLS dialogues and after-TLS filters). */
  imapStarttlsPort: number;
  pop3Port: number;
  /** Asks the SMTP backend to greet late / answer DATA late for the connection from this client port. */
  slowBackend(clientPort: number, plan: { greetMs: number; dataMs: number }): void;
  /** The CA every client verifies against. */
  caPem: string;
  /** Served certificate fingerprints (SHA-256) seen by clients, with how often. */
  served: Map<string, number>;
}

/** Thrown by a step: the connection closed, the step timed out, or TLS failed. */
class StepError extends Error {
  readonly kind: 'drop' | 'timeout' | 'tls';
  constructor(kind: 'drop' | 'timeout' | 'tls', message: string) {
    super(message);
    this.kind = kind;
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(Math.random() * xs.length)]!;

/** Text received on a socket (latin1: one char per byte), read step by step. */
class Reader {
  text = '';
  private pos = 0;
  private closed = false;
  private wake: (() => void) | null = null;
  private sock: net.Socket | null = null;
  error: string | null = null;
  private readonly onData = (d: Buffer) => {
    this.text += d.toString('latin1');
    this.notify();
  };
  private readonly onClose = () => {
    this.closed = true;
    this.notify();
  };
  private readonly onError = (e: NodeJS.ErrnoException) => {
    this.error ??= e.code ?? e.message;
  };

  constructor(sock: net.Socket) {
    this.attach(sock);
  }

  attach(sock: net.Socket) {
    this.sock = sock;
    this.closed = false;
    sock.on('data', this.onData);
    sock.on('close', this.onClose);
    sock.on('end', this.onClose);
    sock.on('error', this.onError);
  }

  /** Stops reading (before STARTTLS); returns what was unread. */
  detach(): string {
    const s = this.sock!;
    s.off('data', this.onData);
    s.off('close', this.onClose);
    s.off('end', this.onClose);
    const rest = this.text.slice(this.pos);
    this.text = '';
    this.pos = 0;
    return rest;
  }

  private notify() {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** Resolves with the text up to the end returned by `find` (index after the match, or -1). */
  async until(find: (rest: string) => number, timeoutMs: number, what: string): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const rest = this.text.slice(this.pos);
      const end = find(rest);
      if (end >= 0) {
        this.pos += end;
        if (this.pos > 1 << 20) {
          this.text = this.text.slice(this.pos);
          this.pos = 0;
        }
        return rest.slice(0, end);
      }
      if (this.closed) throw new StepError('drop', `${what}: closed (${this.error ?? 'fin'}) after ${JSON.stringify(rest.slice(0, 80))}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new StepError('timeout', `${what}: no answer in ${timeoutMs} ms`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 500));
        this.wake = () => {
          clearTimeout(t);
          r();
        };
      });
    }
  }

  /** One SMTP reply (multi-line replies included): "NNN text". */
  async smtp(timeoutMs: number, what: string): Promise<string> {
    const r = await this.until((rest) => {
      const m = /(^|\n)\d{3}( [^\n]*)?\n/.exec(rest);
      return m ? m.index + m[0].length : -1;
    }, timeoutMs, what);
    const last = r.trimEnd().split('\n').pop()!;
    return last.replace(/\r$/, '');
  }

  line(timeoutMs: number, what: string): Promise<string> {
    return this.until((rest) => {
      const i = rest.indexOf('\n');
      return i < 0 ? -1 : i + 1;
    }, timeoutMs, what);
  }

  /** Everything until a line starting with `tag `. */
  tagged(tag: string, timeoutMs: number, what: string): Promise<string> {
    return this.until((rest) => {
      const m = new RegExp(`(^|\\n)${tag} [^\\n]*\\n`).exec(rest);
      return m ? m.index + m[0].length : -1;
    }, timeoutMs, what);
  }

  get isClosed() {
    return this.closed;
  }
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: HOST, port, noDelay: true });
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', (e) => reject(new StepError('drop', `connect: ${(e as NodeJS.ErrnoException).code ?? e.message}`)));
  });
}

/** TLS verified against the CA for HOSTNAME, whatever SNI was sent (fallback serves HOSTNAME's certificate). */
function tlsOptions(ep: Endpoints, sni: string | null): tls.ConnectionOptions {
  return {
    ca: ep.caPem,
    // No servername: a hello without SNI (Node sends none for an IP literal host).
    ...(sni ? { servername: sni } : {}),
    rejectUnauthorized: true,
    checkServerIdentity: (_host, cert) => tls.checkServerIdentity(HOSTNAME, cert),
  };
}

function secure(ep: Endpoints, opts: tls.ConnectionOptions, timeoutMs: number): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: HOST, ...opts });
    const t = setTimeout(() => {
      s.destroy();
      reject(new StepError('timeout', 'tls: handshake timed out'));
    }, timeoutMs);
    s.once('secureConnect', () => {
      clearTimeout(t);
      s.off('error', onError);
      s.on('error', () => {});
      const fp = s.getPeerCertificate().fingerprint256;
      ep.served.set(fp, (ep.served.get(fp) ?? 0) + 1);
      resolve(s);
    });
    const onError = (e: NodeJS.ErrnoException) => {
      clearTimeout(t);
      s.destroy();
      // A connection cut while the handshake runs (the socket was closed or reset) is a drop; a
      // certificate that does not verify, or an alert, is a TLS failure.
      const code = e.code ?? e.message;
      reject(new StepError(/ECONNRESET|EPIPE|socket disconnected|ERR_SSL_WRONG_VERSION/.test(code + e.message) && !/certificate|verify|ALTNAME/i.test(code) ? 'drop' : 'tls', `tls: ${code} ${e.message}`));
    };
    s.once('error', onError);
  });
}

async function write(s: net.Socket, data: string | Buffer, slow: boolean): Promise<void> {
  if (!slow) {
    // A socket already closed never emits 'drain' nor 'close' again: waiting on it would never end.
    if (s.destroyed) throw new StepError('drop', 'write: closed');
    if (!s.write(data)) await new Promise<void>((r) => {
      const done = () => {
        s.off('drain', done);
        s.off('close', done);
        r();
      };
      s.once('drain', done);
      s.once('close', done);
    });
    return;
  }
  // A slow client: one byte every 100 ms.
  const b = typeof data === 'string' ? Buffer.from(data, 'latin1') : data;
  for (let i = 0; i < b.length; i++) {
    if (s.destroyed) throw new StepError('drop', 'slow write: closed');
    s.write(b.subarray(i, i + 1));
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------------------------
// SMTP delivery

export interface Delivery {
  id: string;
  sha256: string;
  /** ok: 250 after DATA. temp: a 4xx or a drop before it. perm: a 5xx (never allowed). hung: no answer in time. tls: a good client could not verify/complete TLS. aborted: the client itself reset mid-DATA (hostile). */
  result: 'ok' | 'temp' | 'perm' | 'hung' | 'tls' | 'aborted';
  /** For failures: `<reply code or drop>@<step>`. */
  kind: string;
  detail: string;
  variant: 'normal' | 'slow' | 'slow-backend' | 'plaintext' | 'reset';
}

export interface DeliveryOptions {
  variant?: Delivery['variant'];
  sni?: string | null;
  size?: number;
}

const SMTP_SNIS = [HOSTNAME, HOSTNAME, 'example.org.recipient.test', 'other-domain.example.net', null] as const;

function makeMessage(id: string, size: number, slowBackend: boolean): { text: string; sha256: string } {
  const lines: string[] = [];
  const noise = randomBytes(Math.ceil(size * 0.75) + 100).toString('base64');
  let n = 0;
  for (let i = 0; n < size; i += 76) {
    let l = noise.slice(i % (noise.length - 76), (i % (noise.length - 76)) + 76);
    // Some lines start with a dot: they must be dot-stuffed on the way and unstuffed at the end.
    if (i % 1976 === 0) l = `.${l}`;
    lines.push(l);
    n += l.length + 2;
  }
  const body = lines.map((l) => `${l}\r\n`).join('');
  const sha256 = createHash('sha256').update(body, 'latin1').digest('hex');
  const head = [
    `From: <sender@soak.test>`,
    `To: <rcpt@example.org>`,
    `Subject: soak ${id}`,
    `Message-ID: <${id}@soak.test>`,
    `X-Soak-Id: ${id}`,
    `X-Soak-SHA256: ${sha256}`,
    ...(slowBackend ? ['X-Soak-Slow: 1'] : []),
  ];
  const stuffed = lines.map((l) => (l.startsWith('.') ? `.${l}` : l));
  return { text: `${head.join('\r\n')}\r\n\r\n${stuffed.join('\r\n')}\r\n.\r\n`, sha256 };
}

export async function smtpDelivery(ep: Endpoints, opts: DeliveryOptions = {}): Promise<Delivery> {
  const variant = opts.variant ?? 'normal';
  const slow = variant === 'slow';
  const id = `soak-${randomUUID()}`;
  const size = opts.size ?? (variant === 'slow-backend' ? 600_000 + Math.floor(Math.random() * 600_000) : Math.floor(200 + Math.random() * Math.random() * 200_000));
  const msg = makeMessage(id, size, variant === 'slow-backend');
  const sni = opts.sni === undefined ? pick(SMTP_SNIS) : opts.sni;
  const out: Delivery = { id, sha256: msg.sha256, result: 'ok', kind: 'ok', detail: '', variant };
  let step = 'connect';
  let raw: net.Socket | null = null;
  let sock: tls.TLSSocket | null = null;
  const T = slow ? 30_000 : 20_000;
  try {
    raw = await connect(ep.smtpPort);
    const r = new Reader(raw);
    const expect = async (code: RegExp) => {
      const reply = await r.smtp(step === 'body' ? 60_000 : T, step);
      if (code.test(reply)) return reply;
      const c = reply.slice(0, 3);
      out.result = c.startsWith('4') ? 'temp' : c.startsWith('5') ? 'perm' : 'perm';
      out.kind = `${reply.slice(0, 9).trim()}@${step}`;
      out.detail = reply;
      throw null; // settled
    };
    step = 'greeting';
    await expect(/^220 /);
    step = 'ehlo1';
    await write(raw, 'EHLO client.soak.test\r\n', slow);
    await expect(/^250 /);
    if (!/STARTTLS/.test(r.text)) {
      out.result = 'perm';
      out.kind = 'no-starttls@ehlo1';
      throw null;
    }
    // Port 25 takes plaintext too (requireTls: false): postern hands the session to the backend.
    const plaintext = variant === 'plaintext';
    if (!plaintext) {
      step = 'starttls';
      await write(raw, 'STARTTLS\r\n', slow);
      await expect(/^220 /);
      const leftover = r.detach();
      if (leftover !== '') throw new StepError('drop', `bytes after the 220: ${JSON.stringify(leftover)}`);
      step = 'tls';
      sock = await secure(ep, { socket: raw, ...tlsOptions(ep, sni) }, 15_000);
      r.attach(sock);
      step = 'ehlo2';
      await write(sock, 'EHLO client.soak.test\r\n', slow);
      await expect(/^250 /);
      if (/STARTTLS/.test(r.text.slice(-400))) {
        out.result = 'perm';
        out.kind = 'starttls-after-tls@ehlo2';
        throw null;
      }
    }
    const conn: net.Socket = sock ?? raw;
    step = 'mail';
    await write(conn, 'MAIL FROM:<sender@soak.test>\r\n', slow);
    await expect(/^250 /);
    step = 'rcpt';
    await write(conn, 'RCPT TO:<rcpt@example.org>\r\n', slow);
    await expect(/^250 /);
    step = 'data';
    await write(conn, 'DATA\r\n', slow);
    await expect(/^354 /);
    step = 'body';
    if (variant === 'reset') {
      // Hostile: an abrupt reset in the middle of the message text.
      const cut = Math.floor(msg.text.length * (0.1 + Math.random() * 0.8));
      await write(conn, msg.text.slice(0, cut), false);
      await sleep(Math.random() * 50);
      raw.resetAndDestroy();
      out.result = 'aborted';
      out.kind = 'client-reset@body';
      return out;
    }
    // Message text in chunks: a slow client trickles it (4 KiB every 20 ms).
    const chunk = slow ? 4096 : 65536;
    for (let i = 0; i < msg.text.length; i += chunk) {
      if (conn.destroyed) throw new StepError('drop', 'closed while sending the message');
      await write(conn, msg.text.slice(i, i + chunk), false);
      if (slow) await sleep(20);
    }
    await expect(/^250 /);
    // Accepted: from here on the outcome is "ok" whatever QUIT does.
    step = 'quit';
    try {
      await write(conn, 'QUIT\r\n', false);
      await r.smtp(5000, 'quit');
    } catch {
      // The message is accepted; a lost 221 changes nothing.
    }
    out.result = 'ok';
    out.kind = 'ok';
  } catch (err) {
    if (err instanceof StepError) {
      out.result = err.kind === 'timeout' ? 'hung' : err.kind === 'tls' ? 'tls' : 'temp';
      out.kind = `${err.kind}@${step}`;
      out.detail = err.message;
    } else if (err !== null) {
      out.result = 'temp';
      out.kind = `error@${step}`;
      out.detail = String(err);
    }
  } finally {
    sock?.destroy();
    raw?.destroy();
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// IMAP session

export interface ImapSession {
  /** ok; temp (BYE or a drop: the client retries); corrupt (a literal that does not match: never allowed); hung; tls. */
  result: 'ok' | 'temp' | 'corrupt' | 'hung' | 'tls' | 'aborted';
  kind: string;
  detail: string;
  variant: 'normal' | 'slow-reader' | 'reset';
}

export async function imapSession(ep: Endpoints, variant: ImapSession['variant'] = 'normal'): Promise<ImapSession> {
  const out: ImapSession = { result: 'ok', kind: 'ok', detail: '', variant };
  let step = 'tls';
  let sock: tls.TLSSocket | null = null;
  let throttle: NodeJS.Timeout | null = null;
  try {
    sock = await secure(ep, { port: ep.imapPort, ...tlsOptions(ep, Math.random() < 0.8 ? HOSTNAME : null) }, 15_000);
    const r = new Reader(sock);
    step = 'greeting';
    const greeting = await r.line(15_000, step);
    if (greeting.startsWith('* BYE')) {
      out.result = 'temp';
      out.kind = /UNAVAILABLE/.test(greeting) ? 'BYE-unavailable@greeting' : 'BYE@greeting';
      out.detail = greeting.trim();
      return out;
    }
    if (!greeting.startsWith('* OK')) throw new StepError('drop', `greeting ${JSON.stringify(greeting)}`);
    const cmd = async (tag: string, text: string) => {
      step = text.split(' ')[0]!.toLowerCase();
      sock!.write(`${tag} ${text}\r\n`);
    };
    await cmd('a1', 'LOGIN soak secret');
    const login = await r.tagged('a1', 15_000, step);
    if (!/\na1 OK|^a1 OK/.test(login)) throw new StepError('drop', `login: ${login}`);
    await cmd('a2', 'SELECT INBOX');
    await r.tagged('a2', 15_000, step);
    const n = variant === 'normal' ? 1 : 2;
    await cmd('a3', `FETCH ${n} BODY[]`);
    if (variant === 'slow-reader') {
      // Reads in small bursts: postern must hold the backend back, not buffer 2 MB.
      sock.pause();
      const s = sock;
      throttle = setInterval(() => {
        s.resume();
        setImmediate(() => s.pause());
      }, 40);
    }
    if (variant === 'reset') {
      await r.until((rest) => (rest.length > 100_000 ? rest.length : -1), 15_000, 'fetch (partial)');
      // Closed with the rest of the literal unread: the kernel answers with a reset.
      sock.destroy();
      out.result = 'aborted';
      out.kind = 'client-reset@fetch';
      return out;
    }
    const head = await r.until((rest) => {
      const m = /\* \d+ FETCH \(BODY\[\] \{(\d+)\}\r\n/.exec(rest);
      return m ? m.index + m[0].length : -1;
    }, 15_000, 'fetch');
    const len = Number(/\{(\d+)\}/.exec(head)![1]);
    const literal = await r.until((rest) => (rest.length >= len ? len : -1), 60_000, 'fetch literal');
    await r.tagged('a3', 15_000, 'fetch');
    if (throttle) {
      clearInterval(throttle);
      throttle = null;
      sock.resume();
    }
    const got = createHash('sha256').update(literal, 'latin1').digest('hex');
    if (got !== MAILBOX_SHA256[n - 1] || len !== MAILBOX[n - 1]!.length) {
      out.result = 'corrupt';
      out.kind = 'literal-mismatch@fetch';
      out.detail = `${len} bytes, sha256 ${got}`;
      return out;
    }
    await cmd('a4', 'LOGOUT');
    step = 'logout';
    try {
      await r.tagged('a4', 5000, step);
    } catch {
      // The mail was read; a lost LOGOUT reply changes nothing.
    }
  } catch (err) {
    if (err instanceof StepError) {
      out.result = err.kind === 'timeout' ? 'hung' : err.kind === 'tls' ? 'tls' : 'temp';
      out.kind = `${err.kind}@${step}`;
      out.detail = err.message;
    } else {
      out.result = 'temp';
      out.kind = `error@${step}`;
      out.detail = String(err);
    }
  } finally {
    if (throttle) clearInterval(throttle);
    sock?.destroy();
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Hostile connections

export const HOSTILE_KINDS = [
  'garbage-smtp',
  'garbage-tls',
  'plaintext-on-tls',
  'starttls-injection',
  'oversized-line',
  'truncated-hello-tls',
  'truncated-hello-starttls',
  'hello-before-starttls',
  'unknown-sni-strict',
  'silent',
  'reset-mid-data',
  'reset-mid-fetch',
] as const;
export type HostileKind = (typeof HOSTILE_KINDS)[number];

export interface HostileOutcome {
  kind: HostileKind | AttackerKind;
  /** False when postern did something it must never do (the detail says what). */
  ok: boolean;
  detail: string;
  /** Set for reset-mid-data: the message id, which the backend must not hold complete. */
  delivery?: Delivery;
  /** Attackers that do not read: the bytes postern took from them meanwhile. */
  unread?: number;
}

let helloCache: Buffer | null = null;

/** A real ClientHello (Node's), captured once from a local socket. */
export async function realClientHello(): Promise<Buffer> {
  if (helloCache) return helloCache;
  helloCache = await new Promise<Buffer>((resolve) => {
    const server = net.createServer((s) => {
      s.once('data', (d: Buffer) => {
        resolve(Buffer.from(d));
        s.destroy();
        server.close();
      });
    });
    server.listen(0, HOST, () => {
      const c = tls.connect({ host: HOST, port: (server.address() as net.AddressInfo).port, servername: HOSTNAME, rejectUnauthorized: false });
      c.on('error', () => {});
    });
  });
  return helloCache;
}

/** Sends `data`, then waits (bounded) for postern to close; returns what came back and whether postern closed. */
async function sendAndWatch(port: number, data: Buffer | string | null, waitMs: number, opts: { endAfter?: boolean } = {}): Promise<{ reply: string; closedByPeer: boolean }> {
  const s = await connect(port);
  const r = new Reader(s);
  if (data !== null) s.write(data);
  if (opts.endAfter) s.end();
  const deadline = Date.now() + waitMs;
  while (!r.isClosed && Date.now() < deadline) await sleep(50);
  const closedByPeer = r.isClosed;
  s.destroy();
  return { reply: r.text, closedByPeer };
}

export async function hostile(ep: Endpoints, kind: HostileKind): Promise<HostileOutcome> {
  const o: HostileOutcome = { kind, ok: true, detail: '' };
  try {
    switch (kind) {
      case 'garbage-smtp': {
        // Random bytes into the pre-TLS dialogue: errors or a close; never a 2xx/3xx to them.
        const { reply } = await sendAndWatch(ep.smtpPort, randomBytes(64 + Math.floor(Math.random() * 4000)), 2000);
        const replies = reply.split('\n').slice(1).filter((l) => /^[23]\d\d/.test(l));
        if (replies.length > 0) (o.ok = false), (o.detail = `answered garbage with ${JSON.stringify(replies[0])}`);
        else o.detail = reply.includes('421') ? 'closed with 421' : 'errors';
        break;
      }
      case 'garbage-tls': {
        const g = randomBytes(16 + Math.floor(Math.random() * 2000));
        if (g[0] === 0x16) g[0] = 0x17;
        const { reply, closedByPeer } = await sendAndWatch(ep.imapPort, g, 3000);
        if (!closedByPeer) (o.ok = false), (o.detail = 'garbage on the TLS port not closed within 3 s');
        else if (/\* OK/.test(reply)) (o.ok = false), (o.detail = 'backend greeting reached a garbage client');
        break;
      }
      case 'plaintext-on-tls': {
        const { reply, closedByPeer } = await sendAndWatch(ep.imapPort, `a CAPABILITY PLAINTEXT-${randomUUID().slice(0, 8)}\r\n`, 3000);
        if (!closedByPeer) (o.ok = false), (o.detail = 'plaintext on the TLS port not closed within 3 s');
        else if (reply.length > 0) (o.ok = false), (o.detail = `answered plaintext: ${JSON.stringify(reply.slice(0, 60))}`);
        break;
      }
      case 'starttls-injection': {
        // STARTTLS and an injected command in one write (CVE-2011-0411): the 220 comes, the
        // injected line is never answered nor forwarded; TLS then works as usual.
        const raw = await connect(ep.smtpPort);
        const r = new Reader(raw);
        try {
          await r.smtp(15_000, 'greeting');
          raw.write('EHLO hostile.soak.test\r\n');
          await r.smtp(15_000, 'ehlo');
          raw.write(`STARTTLS\r\nEHLO INJECTED-${randomUUID().slice(0, 8)}\r\n`);
          const reply = await r.smtp(15_000, 'starttls');
          if (!reply.startsWith('220')) {
            o.detail = `STARTTLS answered ${reply}`;
            break;
          }
          const extra = r.detach();
          if (extra !== '') (o.ok = false), (o.detail = `injected line answered: ${JSON.stringify(extra)}`);
          const s = await secure(ep, { socket: raw, ...tlsOptions(ep, HOSTNAME) }, 15_000);
          const r2 = new Reader(s);
          s.write('EHLO hostile.soak.test\r\n');
          const first = await r2.smtp(15_000, 'ehlo after tls');
          // Postern's 421 when the backend is down is fine; an answer to the injected EHLO is not.
          if (!/^(250|421) /.test(first)) (o.ok = false), (o.detail = `after TLS: ${first}`);
          s.write('QUIT\r\n');
          await r2.smtp(5000, 'quit').catch(() => '');
          s.destroy();
        } finally {
          raw.destroy();
        }
        break;
      }
      case 'oversized-line': {
        const raw = await connect(ep.smtpPort);
        const r = new Reader(raw);
        try {
          await r.smtp(15_000, 'greeting');
          raw.write(`EHLO ${'x'.repeat(2000 + Math.floor(Math.random() * 20_000))}\r\n`);
          const reply = await r.smtp(15_000, 'overlong');
          if (!/^500 5\.5\.6/.test(reply)) (o.ok = false), (o.detail = `overlong line answered ${reply}`);
          raw.write('QUIT\r\n');
          await r.smtp(5000, 'quit').catch(() => '');
        } finally {
          raw.destroy();
        }
        break;
      }
      case 'truncated-hello-tls': {
        const h = await realClientHello();
        const cut = 1 + Math.floor(Math.random() * (h.length - 2));
        // Half the time the client leaves at once (FIN), else it stays silent until postern's
        // handshake deadline (or our patience) ends it.
        const leave = Math.random() < 0.5;
        const { reply } = await sendAndWatch(ep.imapPort, h.subarray(0, cut), leave ? 500 : 6500, { endAfter: leave });
        if (/\* OK/.test(reply)) (o.ok = false), (o.detail = 'backend reached by a truncated hello');
        o.detail ||= `${cut}/${h.length} bytes, ${leave ? 'FIN' : 'silent'}`;
        break;
      }
      case 'truncated-hello-starttls': {
        const h = await realClientHello();
        const raw = await connect(ep.smtpPort);
        const r = new Reader(raw);
        try {
          await r.smtp(15_000, 'greeting');
          raw.write('EHLO hostile.soak.test\r\n');
          await r.smtp(15_000, 'ehlo');
          raw.write('STARTTLS\r\n');
          await r.smtp(15_000, 'starttls');
          raw.write(h.subarray(0, 1 + Math.floor(Math.random() * (h.length - 2))));
          await sleep(Math.random() * 1000);
          raw.resetAndDestroy();
        } finally {
          raw.destroy();
        }
        break;
      }
      case 'hello-before-starttls': {
        const h = await realClientHello();
        const { reply, closedByPeer } = await sendAndWatch(ep.smtpPort, h, 3000);
        if (!closedByPeer) (o.ok = false), (o.detail = 'ClientHello before STARTTLS not closed within 3 s');
        else if (reply.split('\n').length > 2) (o.ok = false), (o.detail = `answered a ClientHello: ${JSON.stringify(reply)}`);
        break;
      }
      case 'unknown-sni-strict': {
        try {
          const s = await secure(ep, { port: ep.imapPort, ...tlsOptions(ep, `unknown-${randomUUID().slice(0, 6)}.example.net`) }, 10_000);
          s.destroy();
          o.ok = false;
          o.detail = 'strict listener completed a handshake for an unknown name';
        } catch (err) {
          o.detail = (err as Error).message.includes('unrecognized name') || /UNRECOGNIZED_NAME/i.test((err as Error).message) ? 'alert unrecognized_name' : (err as Error).message;
        }
        break;
      }
      case 'silent': {
        await sendAndWatch(pick([ep.smtpPort, ep.imapPort]), null, 500 + Math.random() * 1500);
        break;
      }
      case 'reset-mid-data': {
        const d = await smtpDelivery(ep, { variant: 'reset', size: 100_000 + Math.floor(Math.random() * 300_000) });
        o.delivery = d;
        o.detail = d.kind;
        break;
      }
      case 'reset-mid-fetch': {
        const s = await imapSession(ep, 'reset');
        o.detail = s.kind;
        if (s.result === 'corrupt') o.ok = false;
        break;
      }
    }
  } catch (err) {
    // A hostile client being dropped is no failure of postern's.
    o.detail = `dropped: ${(err as Error)?.message ?? String(err)}`;
  }
  return o;
}

// ---------------------------------------------------------------------------------------------
// Attackers of issue 14 ("One client against everyone"): each runs next to the good mail and
// may be refused or closed; what it must never do is hurt the others (the soak's invariants),
// get a refused command to a backend (the backends record those), or get postern to read
// without limit while it cannot pass the bytes on (the bytes an attacker managed to write while
// it did not read are its outcome's detail, and bounded).

export const ATTACKER_KINDS = [
  'unicode-pretls',
  'unicode-tls',
  'noread-flood-pretls',
  'noread-flood-tls',
  'rush-greeting',
  'rush-data',
  'padded-xclient',
] as const;
export type AttackerKind = (typeof ATTACKER_KINDS)[number];

type MailProto = 'smtp' | 'imap' | 'pop3';

/**
 * Bytes an attacker that does not read may get out before postern stops reading it: this
 * process's send buffer and postern's receive buffer in the kernel (their largest sizes,
 * tcp_wmem and tcp_rmem), plus postern's own caps (HOLD_LIMIT, a line, its answers) and some
 * slack; far below the gigabytes of issue 14's findings 2 and 4. Postern's memory itself is
 * the soak's RSS check.
 */
export const UNREAD_LIMIT = (() => {
  const max = (f: string, dflt: number) => {
    try {
      return Number(readFileSync(f, 'utf8').trim().split(/\s+/)[2]) || dflt;
    } catch {
      return dflt;
    }
  };
  return max('/proc/sys/net/ipv4/tcp_rmem', 6 << 20) + max('/proc/sys/net/ipv4/tcp_wmem', 4 << 20) + (8 << 20);
})();

/** Lines with what breaks regexes and decoders: U+2028, U+2029, NEL, BOM, lone and overlong bytes (UTF-8 as latin1). */
const ODD_TEXT = ['\xe2\x80\xa8', '\xe2\x80\xa9', '\xc2\x85', '\xef\xbb\xbf', '\x80', '\xc0\xaf', '\xff', '\xed\xa0\x80', '\xf0\x9f\x92\xa9'];
const odd = () => pick(ODD_TEXT);
const ODD_LINES: Record<MailProto, Array<() => string>> = {
  smtp: [() => `NOOP x${odd()}`, () => `EHLO a${odd()}b`, () => `${odd()}EHLO x`, () => `RSET${odd()}`, () => `NOOP ${odd().repeat(40)}`, () => `VRFY <${odd()}@example.org>`],
  imap: [() => `a NOOP ${odd()}`, () => `a${odd()} CAPABILITY`, () => `a CAPABILITY${odd()}`, () => `${odd()}a NOOP`, () => `a NOOP ${odd().repeat(40)}`],
  pop3: [() => `NOOP ${odd()}`, () => `CAPA${odd()}`, () => `${odd()}CAPA`, () => `USER a${odd()}`, () => `STAT ${odd().repeat(40)}`],
};
const REPLY: Record<MailProto, (r: Reader, ms: number, what: string) => Promise<string>> = {
  smtp: (r, ms, what) => r.smtp(ms, what),
  imap: (r, ms, what) => r.line(ms, what),
  pop3: (r, ms, what) => r.line(ms, what),
};
const GREETING_RE: Record<MailProto, RegExp> = { smtp: /^220 /, imap: /^\* OK/, pop3: /^\+OK/ };

function portOf(ep: Endpoints, proto: MailProto): number {
  return proto === 'smtp' ? ep.smtpPort : proto === 'imap' ? ep.imapStarttlsPort : ep.pop3Port;
}

/** Connects to the protocol's STARTTLS listener and reads the greeting (a 421/BYE/-ERR greeting ends it). */
async function greeted(ep: Endpoints, proto: MailProto): Promise<{ raw: net.Socket; r: Reader }> {
  const raw = await connect(portOf(ep, proto));
  const r = new Reader(raw);
  const g = proto === 'smtp' ? await r.smtp(15_000, 'greeting') : await r.line(15_000, 'greeting');
  if (!GREETING_RE[proto].test(g)) {
    raw.destroy();
    throw new StepError('drop', `greeting ${JSON.stringify(g.slice(0, 60))}`);
  }
  return { raw, r };
}

/** Greeting, STARTTLS, handshake (and EHLO again for SMTP): the session through postern's after-TLS filter. */
async function starttls(ep: Endpoints, proto: MailProto): Promise<{ raw: net.Socket; sock: tls.TLSSocket; r: Reader }> {
  const { raw, r } = await greeted(ep, proto);
  try {
    if (proto === 'smtp') {
      raw.write('EHLO attacker.soak.test\r\n');
      await r.smtp(15_000, 'ehlo');
    }
    raw.write(proto === 'smtp' ? 'STARTTLS\r\n' : proto === 'imap' ? 'a STARTTLS\r\n' : 'STLS\r\n');
    const reply = await REPLY[proto](r, 15_000, 'starttls');
    if (!/^(220|a OK|\+OK)/.test(reply)) throw new StepError('drop', `STARTTLS answered ${JSON.stringify(reply.slice(0, 60))}`);
    r.detach();
    const sock = await secure(ep, { socket: raw, ...tlsOptions(ep, HOSTNAME) }, 15_000);
    r.attach(sock);
    if (proto === 'smtp') {
      sock.write('EHLO attacker.soak.test\r\n');
      const ehlo = await r.smtp(15_000, 'ehlo after tls');
      if (!ehlo.startsWith('250')) throw new StepError('drop', `EHLO after TLS answered ${ehlo}`);
    }
    return { raw, sock, r };
  } catch (err) {
    raw.destroy();
    throw err;
  }
}

/**
 * Stops reading and writes `data` again and again for up to `ms` (or `maxBytes`), waiting for
 * 'drain' when the socket is full: how much got out is how much postern (and the kernel) took.
 */
async function writeWithoutReading(s: net.Socket, data: string, maxBytes: number, ms: number): Promise<number> {
  s.pause();
  const one = Buffer.from(data.repeat(Math.max(1, Math.floor(16384 / data.length))), 'latin1');
  const until = Date.now() + ms;
  let written = 0;
  while (written < maxBytes && Date.now() < until && !s.destroyed) {
    if (s.writableNeedDrain) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(t);
          s.off('drain', done);
          s.off('close', done);
          resolve();
        };
        const t = setTimeout(done, Math.max(1, Math.min(200, until - Date.now())));
        s.once('drain', done);
        s.once('close', done);
      });
      continue;
    }
    s.write(one);
    written += one.length;
    await new Promise((r) => setImmediate(r));
  }
  // Bytes still queued in this process were not taken by postern.
  return written - s.writableLength;
}

function judgeUnread(o: HostileOutcome, written: number, what: string) {
  o.unread = written;
  o.detail = `${what}: ${(written / 1048576).toFixed(1)} MB taken while not reading`;
  if (written > UNREAD_LIMIT) {
    o.ok = false;
    o.detail += ` (over ${(UNREAD_LIMIT / 1048576).toFixed(0)} MB: postern kept reading a client it could not answer)`;
  }
}

export async function attacker(ep: Endpoints, kind: AttackerKind): Promise<HostileOutcome> {
  const o: HostileOutcome = { kind, ok: true, detail: '' };
  const proto: MailProto = pick(['smtp', 'imap', 'pop3'] as const);
  let raw: net.Socket | null = null;
  let sock: tls.TLSSocket | null = null;
  try {
    switch (kind) {
      case 'unicode-pretls':
      case 'unicode-tls': {
        // Every line gets an answer (an error, or the backend's) or the connection ends: never silence.
        let r: Reader;
        let out: net.Socket;
        if (kind === 'unicode-pretls') {
          ({ raw, r } = await greeted(ep, proto));
          out = raw;
        } else {
          ({ raw, sock, r } = await starttls(ep, proto));
          out = sock;
        }
        const n = 1 + Math.floor(Math.random() * 4);
        for (let i = 0; i < n; i++) {
          const l = pick(ODD_LINES[proto])();
          out.write(`${l}\r\n`);
          try {
            await REPLY[proto](r, 10_000, 'odd line');
          } catch (err) {
            if (err instanceof StepError && err.kind === 'timeout') {
              o.ok = false;
              o.detail = `${proto}: no answer to ${JSON.stringify(l)} within 10 s`;
              return o;
            }
            break; // closed: a close is an answer
          }
        }
        o.detail = `${proto}: ${n} line(s)`;
        break;
      }
      case 'noread-flood-pretls': {
        // Commands postern answers itself, to a client that never reads its answers.
        ({ raw } = await greeted(ep, proto));
        const cmd = pick({ smtp: ['EHLO x\r\n', 'NOOP\r\n', 'RSET\r\n'], imap: ['a CAPABILITY\r\n', 'a NOOP\r\n'], pop3: ['CAPA\r\n', 'NOOP\r\n'] }[proto]);
        judgeUnread(o, await writeWithoutReading(raw, cmd, 64 * 1024 * 1024, 1000 + Math.random() * 2000), `${proto} ${cmd.trim()} flood before TLS`);
        break;
      }
      case 'noread-flood-tls': {
        // After TLS: commands the filter refuses itself (a second STARTTLS, XCLIENT).
        ({ raw, sock } = await starttls(ep, proto));
        const cmd = pick({ smtp: ['STARTTLS\r\n', 'XCLIENT NAME=x\r\n', 'XFORWARD ADDR=192.0.2.1\r\n'], imap: ['a STARTTLS\r\n'], pop3: ['STLS\r\n'] }[proto]);
        judgeUnread(o, await writeWithoutReading(sock, cmd, 64 * 1024 * 1024, 1000 + Math.random() * 2000), `${proto} ${cmd.trim()} flood after TLS`);
        break;
      }
      case 'rush-greeting': {
        // The backend greets late (postscreen's greet_wait): postern holds the client, which
        // writes without pause. Port 25 plaintext handoff, or after STARTTLS.
        const handoff = Math.random() < 0.5;
        // It writes for less time than the backend takes to greet: all it got into postern, postern holds.
        raw = await connect(ep.smtpPort);
        ep.slowBackend(raw.localPort!, { greetMs: 2500 + Math.random() * 1000, dataMs: 0 });
        const r = new Reader(raw);
        await r.smtp(15_000, 'greeting');
        raw.write('EHLO attacker.soak.test\r\n');
        await r.smtp(15_000, 'ehlo');
        let out: net.Socket = raw;
        if (handoff) raw.write('MAIL FROM:<rush@soak.test>\r\n');
        else {
          raw.write('STARTTLS\r\n');
          await r.smtp(15_000, 'starttls');
          r.detach();
          sock = await secure(ep, { socket: raw, ...tlsOptions(ep, HOSTNAME) }, 15_000);
          out = sock;
        }
        judgeUnread(o, await writeWithoutReading(out, 'NOOP rush\r\n', 64 * 1024 * 1024, 1500), `rush before the backend's greeting (${handoff ? 'plaintext handoff' : 'after TLS'})`);
        break;
      }
      case 'rush-data': {
        // DATA, then the message without waiting for a 354 that comes late. Never a "." line:
        // nothing of it may be held as a message.
        // It writes for less time than the backend takes to answer DATA (after that the message
        // would flow on to the backend, as it should).
        raw = await connect(ep.smtpPort);
        ep.slowBackend(raw.localPort!, { greetMs: 0, dataMs: 2500 + Math.random() * 1000 });
        const r = new Reader(raw);
        await r.smtp(15_000, 'greeting');
        raw.write('EHLO attacker.soak.test\r\nSTARTTLS\r\n');
        await r.smtp(15_000, 'ehlo');
        await r.smtp(15_000, 'starttls');
        r.detach();
        sock = await secure(ep, { socket: raw, ...tlsOptions(ep, HOSTNAME) }, 15_000);
        sock.write('EHLO attacker.soak.test\r\nMAIL FROM:<rush@soak.test>\r\nRCPT TO:<rcpt@example.org>\r\nDATA\r\n');
        judgeUnread(o, await writeWithoutReading(sock, `${'x'.repeat(998)}\r\n`, 64 * 1024 * 1024, 1500), 'rush after DATA, before the 354');
        break;
      }
      case 'padded-xclient': {
        // XCLIENT / XFORWARD padded past the filter's 4096-byte command limit (issue 14 finding 8),
        // padding before or after the verb, its LF with it or later: 500 or 550, never forwarded.
        const handoff = Math.random() < 0.3;
        let r: Reader;
        let out: net.Socket;
        if (handoff) {
          ({ raw, r } = await greeted(ep, 'smtp'));
          raw.write('EHLO attacker.soak.test\r\nMAIL FROM:<pad@soak.test>\r\n');
          await r.smtp(15_000, 'ehlo');
          const mail = await r.smtp(15_000, 'mail');
          if (!mail.startsWith('250')) throw new StepError('drop', `MAIL answered ${mail}`);
          out = raw;
        } else {
          ({ raw, sock, r } = await starttls(ep, 'smtp'));
          out = sock;
        }
        const verb = pick(['XCLIENT', 'XFORWARD', 'xclient']);
        const pad = 4097 + Math.floor(Math.random() * 8000);
        const form = Math.floor(Math.random() * 3);
        if (form === 0) out.write(`${verb} NAME=padded.soak.test${' '.repeat(pad)}\r\n`);
        else if (form === 1) out.write(`${' '.repeat(pad)}${verb} NAME=padded.soak.test\r\n`);
        else {
          out.write(`${verb} ${'A'.repeat(pad)}`);
          await sleep(50);
          out.write(' NAME=padded.soak.test\r\n');
        }
        const reply = await r.smtp(15_000, 'padded xclient');
        o.detail = `${handoff ? 'handoff' : 'after TLS'}, form ${form}: ${reply.slice(0, 40)}`;
        if (!/^(500|550) /.test(reply)) {
          o.ok = false;
          o.detail = `padded ${verb} (form ${form}) answered ${JSON.stringify(reply)}`;
        }
        break;
      }
    }
  } catch (err) {
    // An attacker being dropped is no failure of postern's.
    o.detail = `${proto}: dropped: ${(err as Error)?.message ?? String(err)}`;
  } finally {
    sock?.destroy();
    raw?.destroy();
  }
  return o;
}
