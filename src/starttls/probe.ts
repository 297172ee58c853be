// Learns the backend's real capabilities (SMTP EHLO keywords, IMAP CAPABILITY, POP3 CAPA) so that
// the pre-TLS dialogue can announce them: connect, read the greeting, ask, quit. At start and
// every probeInterval; the configured fallback list is used until a probe succeeds and while
// the backend is unreachable.
import net from 'node:net';
import type { ListenerConfig } from '../config/types.ts';
import type { Logger } from '../log.ts';
import { encodeProxyV1, encodeProxyV2 } from '../backend/proxy-protocol.ts';
import { parseSmtpEhlo, parseImapCapability, parsePop3Capa } from './capabilities.ts';

interface Step {
  send: string | null;
  /** True when the text received since this step began holds the complete answer. */
  done(text: string): boolean;
}

const SMTP_FINAL = /(^|\n)\d{3} [^\n]*\n/;
const LINE = /\n/;

function script(listener: ListenerConfig): { steps: Step[]; parse(answer: string): string[]; quit: string } {
  switch (listener.protocol) {
    case 'smtp':
      return {
        steps: [{ send: null, done: (t) => SMTP_FINAL.test(t) }, { send: `EHLO ${listener.hostname}\r\n`, done: (t) => SMTP_FINAL.test(t) }],
        parse: parseSmtpEhlo,
        quit: 'QUIT\r\n',
      };
    case 'imap':
      return {
        steps: [{ send: null, done: (t) => LINE.test(t) }, { send: 'p1 CAPABILITY\r\n', done: (t) => /(^|\n)p1 (OK|NO|BAD)[^\n]*\n/.test(t) }],
        parse: parseImapCapability,
        quit: 'p2 LOGOUT\r\n',
      };
    default:
      return {
        steps: [{ send: null, done: (t) => LINE.test(t) }, { send: 'CAPA\r\n', done: (t) => /(^|\n)\.\r?\n/.test(t) || t.startsWith('-ERR') }],
        parse: parsePop3Capa,
        quit: 'QUIT\r\n',
      };
  }
}

/**
 * The PROXY header of a probe names the probe's own endpoints. (v1 UNKNOWN and v2 LOCAL would be
 * the spec's health-check forms, but Postfix 3.7 answers "421 4.3.0 Server local error" to
 * UNKNOWN; a header with real addresses works everywhere.) Backends behind `haproxy = yes` drop
 * connections that send no header.
 */
function probeHeader(listener: ListenerConfig, socket: net.Socket): Buffer | null {
  const ep = { clientAddress: socket.localAddress ?? '', clientPort: socket.localPort ?? 0, localAddress: socket.remoteAddress ?? '', localPort: socket.remotePort ?? 0 };
  switch (listener.backend.proxyProtocol) {
    case 'v1':
      return encodeProxyV1(ep);
    case 'v2':
      return encodeProxyV2(ep, null);
    case 'none':
      return null;
  }
}

export function probeOnce(listener: ListenerConfig, timeoutMs: number): Promise<string[]> {
  const { steps, parse, quit } = script(listener);
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: listener.backend.address.host, port: listener.backend.address.port });
    let text = '';
    let step = 0;
    const timer = setTimeout(() => fail(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('backend closed the connection')));
    socket.once('connect', () => {
      const header = probeHeader(listener, socket);
      if (header) socket.write(header);
    });
    socket.setEncoding('latin1');
    const onData = (chunk: string) => {
      text += chunk;
      if (text.length > 65536) return fail(new Error('answer too long'));
      if (!steps[step]!.done(text)) return;
      if (step === 0 && !/^(2\d\d|\* OK|\+OK)/.test(text)) return fail(new Error(`backend greeting refused: ${text.slice(0, 80).trim()}`));
      if (++step === steps.length) {
        clearTimeout(timer);
        socket.removeAllListeners('close');
        // The reply to QUIT/LOGOUT is of no interest.
        socket.off('data', onData);
        socket.resume();
        socket.end(quit);
        socket.setTimeout(1000, () => socket.destroy());
        const caps = parse(text);
        // A refused EHLO/CAPABILITY/CAPA parses to nothing: keep the last good (or fallback) list.
        if (caps.length === 0) reject(new Error(`no capabilities in the answer: ${text.slice(0, 80).trim()}`));
        else resolve(caps);
        return;
      }
      text = '';
      socket.write(steps[step]!.send!);
    };
    socket.on('data', onData);
  });
}

export class CapabilityProbe {
  private current: string[];
  private timer: NodeJS.Timeout | null = null;
  /** Read at every probe: a reload may move the backend. */
  private readonly config: () => ListenerConfig;
  private readonly log: Logger;
  /** Resolves when the first probe has finished (either way). */
  readonly first: Promise<void>;

  constructor(config: () => ListenerConfig, log: Logger) {
    this.config = config;
    const listener = config();
    this.log = log;
    this.current = listener.starttls!.fallbackCapabilities;
    this.first = this.run();
    this.timer = setInterval(() => void this.run(), listener.starttls!.probeIntervalMs);
    this.timer.unref();
  }

  capabilities(): string[] {
    return this.current;
  }

  private async run(): Promise<void> {
    try {
      const listener = this.config();
      const caps = await probeOnce(listener, listener.timeouts.connectMs);
      if (caps.join('\n') !== this.current.join('\n')) this.log.info({ listener: listener.name, capabilities: caps }, 'backend capabilities');
      this.current = caps;
    } catch (err) {
      this.log.warn({ listener: this.config().name, reason: 'probe_failed', error: (err as Error).message }, 'backend capability probe failed; announcing the fallback list');
    }
  }

  stop() {
    if (this.timer) clearInterval(this.timer);
  }
}
