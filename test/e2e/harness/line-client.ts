// A plain TCP client for line protocols (SMTP, IMAP, POP3): optional bytes first (a PROXY
// header), then send lines and wait for replies matching a pattern.
import net from 'node:net';

export interface LineClient {
  socket: net.Socket;
  /** Everything received so far, for failure messages. */
  transcript(): string;
  send(data: string | Buffer): void;
  /** Resolves with the unread text up to and including the first match of `re`. */
  readUntil(re: RegExp, timeoutMs?: number): Promise<string>;
  /** Resolves when the server closes the connection, with whatever was still unread. */
  readToEnd(timeoutMs?: number): Promise<string>;
  close(): void;
}

export interface ConnectOptions {
  port: number;
  host?: string;
  /** Source address, e.g. '127.0.0.2' (all of 127.0.0.0/8 is local on Linux). */
  localAddress?: string;
  /** Written at once on connect, before anything else (the PROXY header). */
  first?: Buffer;
}

export function connectLineClient(opts: ConnectOptions): Promise<LineClient> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: opts.host ?? '127.0.0.1', port: opts.port, localAddress: opts.localAddress });
    let received = '';
    let consumed = 0;
    let ended = false;
    let wake: (() => void) | null = null;
    const notify = () => {
      const w = wake;
      wake = null;
      w?.();
    };
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      received += chunk;
      notify();
    });
    socket.on('close', () => {
      ended = true;
      notify();
    });
    socket.on('error', () => {}); // surfaced as a close; the transcript tells the story

    const wait = async (done: () => string | null, timeoutMs: number, what: string): Promise<string> => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const result = done();
        if (result !== null) return result;
        const left = deadline - Date.now();
        if (ended || left <= 0) {
          throw new Error(`${what}: ${ended ? 'connection closed' : `timeout after ${timeoutMs} ms`}; transcript:\n${received}`);
        }
        await new Promise<void>((r) => {
          const t = setTimeout(r, left);
          wake = () => {
            clearTimeout(t);
            r();
          };
        });
      }
    };

    const client: LineClient = {
      socket,
      transcript: () => received,
      send: (data) => {
        socket.write(data);
      },
      readUntil: (re, timeoutMs = 10_000) =>
        wait(() => {
          const rest = received.slice(consumed);
          const m = re.exec(rest);
          if (!m) return null;
          const end = m.index + m[0].length;
          consumed += end;
          return rest.slice(0, end);
        }, timeoutMs, `waiting for ${re}`),
      readToEnd: (timeoutMs = 10_000) =>
        wait(() => {
          if (!ended) return null;
          const rest = received.slice(consumed);
          consumed = received.length;
          return rest;
        }, timeoutMs, 'waiting for close'),
      close: () => {
        socket.destroy();
      },
    };

    socket.once('connect', () => {
      if (opts.first) socket.write(opts.first);
      resolve(client);
    });
    socket.once('error', reject);
  });
}
