// Mail sessions for the benchmark's `starttls` test (issue 17, target 2: "STARTTLS sessions as
// cheap as implicit TLS"): the same SMTP and IMAP session over STARTTLS and over implicit TLS, so
// that the only difference is the plaintext dialogue before the handshake.
//   smtp-starttls  greeting, EHLO, STARTTLS, handshake, EHLO          (RFC 3207)
//   smtp-implicit  handshake, greeting, EHLO                           (RFC 8314 section 3.3)
//   imap-starttls  greeting, STARTTLS, handshake, CAPABILITY           (RFC 3501 section 6.2.1)
//   imap-implicit  handshake, greeting, CAPABILITY                     (RFC 8314 section 3.3)
// then QUIT / LOGOUT, answered by the backend through postern. `openMailSession` stops before
// QUIT / LOGOUT so that the idle-memory figure holds sessions at the point where postern has
// handed the session to its after-TLS stage and the backend connection exists.
import net from 'node:net';
import tls from 'node:tls';
import { withTimeout } from './clients.ts';

export const MAIL_KINDS = ['smtp-starttls', 'smtp-implicit', 'imap-starttls', 'imap-implicit'] as const;
export type MailKind = (typeof MAIL_KINDS)[number];

export interface MailEndpoint { host: string; port: number; sni: string }

/** Longest reply line read before the session is called broken (the backends answer in one line). */
const MAX_PENDING = 16 * 1024;

/** Reads CRLF lines from one socket; `until(done)` resolves once a line satisfies `done`. */
class Lines {
  private buf = '';
  private wait: { done: (line: string) => boolean; resolve: (line: string) => void; reject: (e: Error) => void } | null = null;
  private failure: Error | null = null;
  private readonly onData = (d: Buffer): void => { this.buf += d.toString('latin1'); this.check(); };
  private readonly onError = (e: Error): void => this.fail(e);
  private readonly onClose = (): void => this.fail(new Error(`closed; pending ${JSON.stringify(this.buf.slice(0, 60))}`));
  private readonly sock: net.Socket;
  constructor(sock: net.Socket) {
    this.sock = sock;
    sock.on('data', this.onData);
    sock.on('error', this.onError);
    sock.on('close', this.onClose);
  }
  until(done: (line: string) => boolean): Promise<string> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => { this.wait = { done, resolve, reject }; this.check(); });
  }
  /** Stops reading (before the socket is handed to TLS). */
  detach(): void {
    this.sock.off('data', this.onData);
    this.sock.off('error', this.onError);
    this.sock.off('close', this.onClose);
  }
  private fail(e: Error): void {
    this.failure ??= e;
    const w = this.wait;
    this.wait = null;
    w?.reject(e);
  }
  private check(): void {
    if (this.buf.length > MAX_PENDING) { this.fail(new Error('reply too long')); return; }
    let nl: number;
    while (this.wait && (nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).replace(/\r$/, '');
      this.buf = this.buf.slice(nl + 1);
      if (this.wait.done(line)) {
        const w = this.wait;
        this.wait = null;
        w.resolve(line);
      }
    }
  }
}

/** The last line of an SMTP reply ("250 ...", not "250-..."), with the expected code. */
const smtpReply = (code: string) => (line: string): boolean => {
  if (line.length >= 4 && line[3] === '-') return false;
  if (!line.startsWith(code)) throw new Error(`expected ${code}, got ${JSON.stringify(line.slice(0, 80))}`);
  return true;
};
/** The IMAP greeting (an untagged OK) or a tagged OK for `tag`. */
const imapGreeting = (line: string): boolean => {
  if (line.startsWith('* OK')) return true;
  throw new Error(`expected an IMAP greeting, got ${JSON.stringify(line.slice(0, 80))}`);
};
const imapTagged = (tag: string) => (line: string): boolean => {
  if (!line.startsWith(`${tag} `)) return false;
  if (!line.startsWith(`${tag} OK`)) throw new Error(`expected ${tag} OK, got ${JSON.stringify(line.slice(0, 80))}`);
  return true;
};

function connected(s: net.Socket, event: 'connect' | 'secureConnect'): Promise<void> {
  return new Promise((resolve, reject) => {
    const ok = (): void => { s.off('error', bad); resolve(); };
    const bad = (e: Error): void => { s.off(event, ok); reject(e); };
    s.once(event, ok);
    s.once('error', bad);
  });
}

/** An open session after its post-TLS EHLO / CAPABILITY: `quit()` ends it the protocol's way. */
export interface MailSession {
  socket: tls.TLSSocket;
  quit(): Promise<void>;
  destroy(): void;
}

/**
 * Opens one session of `kind` up to its post-TLS EHLO / CAPABILITY. TLS 1.3, the certificate
 * not verified (the benchmark's certificate is self-signed; the peers' figures are taken the same
 * way), `tlsOpts` added (the key exchange group).
 */
export async function openMailSession(kind: MailKind, ep: MailEndpoint, tlsOpts: tls.ConnectionOptions = {}): Promise<MailSession> {
  const smtp = kind.startsWith('smtp');
  const secureOpts = { servername: ep.sni, rejectUnauthorized: false, minVersion: 'TLSv1.3' as const, ...tlsOpts };
  let plain: net.Socket | null = null;
  let secure: tls.TLSSocket;
  try {
    if (kind.endsWith('starttls')) {
      const p = net.connect(ep.port, ep.host);
      plain = p;
      p.setNoDelay(true);
      await connected(p, 'connect');
      const before = new Lines(p);
      if (smtp) {
        await before.until(smtpReply('220'));
        p.write('EHLO client.bench.test\r\n');
        await before.until(smtpReply('250'));
        p.write('STARTTLS\r\n');
        await before.until(smtpReply('220'));
      } else {
        await before.until(imapGreeting);
        p.write('a STARTTLS\r\n');
        await before.until(imapTagged('a'));
      }
      before.detach();
      secure = tls.connect({ socket: p, ...secureOpts });
    } else {
      secure = tls.connect({ host: ep.host, port: ep.port, ...secureOpts });
      secure.setNoDelay(true);
    }
  } catch (err) {
    plain?.destroy();
    throw err;
  }
  const s = secure;
  try {
    await connected(s, 'secureConnect');
    const after = new Lines(s);
    if (smtp) {
      if (kind === 'smtp-implicit') await after.until(smtpReply('220'));
      s.write('EHLO client.bench.test\r\n');
      await after.until(smtpReply('250'));
    } else {
      if (kind === 'imap-implicit') await after.until(imapGreeting);
      s.write('b CAPABILITY\r\n');
      await after.until(imapTagged('b'));
    }
    const destroy = (): void => { s.on('error', () => {}); s.destroy(); plain?.destroy(); };
    return {
      socket: s,
      destroy,
      async quit() {
        try {
          if (smtp) { s.write('QUIT\r\n'); await after.until(smtpReply('221')); }
          else { s.write('c LOGOUT\r\n'); await after.until(imapTagged('c')); }
        } finally { destroy(); }
      },
    };
  } catch (err) {
    s.on('error', () => {});
    s.destroy();
    plain?.destroy();
    throw err;
  }
}

export interface LoopResult { count: number; errors: number; perSec: number; lastError: string | null }

/** Whole sessions (open, QUIT / LOGOUT, close) of `kind` with `parallel` clients for `durationMs`. */
export async function mailSessionLoop(kind: MailKind, ep: MailEndpoint, parallel: number, durationMs: number, tlsOpts: tls.ConnectionOptions = {}): Promise<LoopResult> {
  let count = 0, errors = 0;
  let lastError: string | null = null;
  const t0 = performance.now();
  const end = t0 + durationMs;
  const worker = async (): Promise<void> => {
    while (performance.now() < end) {
      let session: MailSession | null = null;
      let late = false; // the deadline passed: whatever opens after it is closed at once
      try {
        await withTimeout((async () => {
          session = await openMailSession(kind, ep, tlsOpts);
          if (late) { session.destroy(); return; }
          await session.quit();
        })(), 10_000, `${kind} session`);
        count++;
      } catch (err) {
        late = true;
        (session as MailSession | null)?.destroy();
        errors++;
        lastError = (err as Error).message;
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  const secs = (performance.now() - t0) / 1000;
  return { count, errors, perSec: count / secs, lastError };
}

/** Opens `n` sessions of `kind` (`parallel` at a time, all within `timeoutMs`) and keeps them open. */
export async function holdMailSessions(kind: MailKind, ep: MailEndpoint, n: number, parallel: number, timeoutMs: number,
  tlsOpts: tls.ConnectionOptions = {}): Promise<{ sessions: MailSession[]; failed: number; lastError: string | null }> {
  const sessions: MailSession[] = [];
  let failed = 0, next = 0;
  let lastError: string | null = null;
  const deadline = Date.now() + timeoutMs;
  const worker = async (): Promise<void> => {
    while (next < n && Date.now() < deadline) {
      next++;
      try {
        const opening = openMailSession(kind, ep, tlsOpts);
        // Past the deadline the session still opening is closed once it opens.
        const s = await withTimeout(opening, 10_000, `${kind} session`).catch((err: Error) => {
          opening.then((late) => late.destroy(), () => {});
          throw err;
        });
        s.socket.on('error', () => {});
        sessions.push(s);
      } catch (err) {
        failed++;
        lastError = (err as Error).message;
      }
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return { sessions, failed, lastError };
}
