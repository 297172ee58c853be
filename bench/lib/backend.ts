// The benchmark's plaintext backend, run on the load generator's core (`taskset -c 1`).
//   HTTP (--http PORT):  GET /            -> 200 "ok" (keep-alive, or close on `Connection: close`
//                                            and on HTTP/1.0)
//                        GET /bytes/N     -> 200 with N bytes (the download test)
//                        POST /sink       -> reads Content-Length bytes, then 200 (the upload test)
//   SMTP (--smtp PORT):  220 greeting, EHLO/HELO, QUIT, anything else 250.
//   IMAP (--imap PORT):  * OK greeting, CAPABILITY, LOGOUT, anything else "tag OK".
// Both strip a PROXY v1/v2 header at the start of a connection if one is sent (postern-v2 and
// postern's STARTTLS listener send one). Deliberately tiny: raw `net`, no `http` module, so that
// it is not the bottleneck (the harness measures it directly as the ceiling).
import net from 'node:net';

const OK = Buffer.from('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok');
const OK_CLOSE = Buffer.from('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok');
const CRLFCRLF = Buffer.from('\r\n\r\n');
const V2_SIG = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const CHUNK = Buffer.alloc(256 * 1024, 0x61);
const MAX_HEAD = 64 * 1024;

/** Length of a PROXY header at the start of buf: 0 none, -1 need more bytes. */
function proxyHeaderLength(buf: Buffer): number {
  if (buf.length >= 6 && buf.toString('latin1', 0, 6) === 'PROXY ') {
    const nl = buf.indexOf('\r\n');
    return nl < 0 ? (buf.length > 107 ? 0 : -1) : nl + 2;
  }
  if (buf.length >= 12 && buf.subarray(0, 12).equals(V2_SIG)) {
    return buf.length < 16 ? -1 : 16 + buf.readUInt16BE(14);
  }
  if (buf.length < 12 && (V2_SIG.subarray(0, buf.length).equals(buf) || 'PROXY '.startsWith(buf.toString('latin1', 0, Math.min(buf.length, 6))))) return -1;
  return 0;
}

function serveHttp(socket: net.Socket): void {
  socket.setNoDelay(true);
  socket.on('error', () => {});
  let pending: Buffer | null = null; // unparsed bytes
  let first = true;
  let bodyLeft = 0; // POST /sink bytes still to read
  let bodyClose = false;
  let streaming = false; // a download is being written: hold further requests

  const onRequest = (head: string): boolean => {
    // Returns false when the connection ends (close) or a body/stream takes over.
    const sp1 = head.indexOf(' ');
    const sp2 = head.indexOf(' ', sp1 + 1);
    const method = head.slice(0, sp1);
    const path = head.slice(sp1 + 1, sp2);
    const lower = head.toLowerCase();
    const http10 = head.slice(sp2 + 1, sp2 + 9) === 'HTTP/1.0';
    const close = lower.includes('\r\nconnection: close') || (http10 && !lower.includes('\r\nconnection: keep-alive'));
    if (method === 'POST') {
      const m = /\r\ncontent-length:\s*(\d+)/.exec(lower);
      bodyLeft = m ? Number(m[1]) : 0;
      bodyClose = close;
      if (bodyLeft === 0) return respond(close);
      return false;
    }
    if (path.startsWith('/bytes/')) {
      const n = Number(path.slice(7)) || 0;
      socket.write(`HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ${n}\r\n${close ? 'Connection: close\r\n' : ''}\r\n`);
      streaming = true;
      let left = n;
      const pump = (): void => {
        while (left > 0) {
          const c = left >= CHUNK.length ? CHUNK : CHUNK.subarray(0, left);
          left -= c.length;
          if (!socket.write(c)) { socket.once('drain', pump); return; }
        }
        streaming = false;
        if (close) socket.end();
        else if (pending) { const p = pending; pending = null; onData(p); }
      };
      pump();
      return false;
    }
    return respond(close);
  };
  const respond = (close: boolean): boolean => {
    if (close) { socket.end(OK_CLOSE); return false; }
    socket.write(OK);
    return true;
  };
  const onData = (chunk: Buffer): void => {
    if (first) {
      const all: Buffer = pending ? Buffer.concat([pending, chunk]) : chunk;
      const n = proxyHeaderLength(all);
      if (n < 0) { pending = all; return; }
      first = false;
      pending = null;
      chunk = all.subarray(n);
    }
    if (bodyLeft > 0) {
      const n = Math.min(bodyLeft, chunk.length);
      bodyLeft -= n;
      chunk = chunk.subarray(n);
      if (bodyLeft > 0) return;
      if (!respond(bodyClose)) return;
      if (chunk.length === 0) return;
    }
    let buf: Buffer = pending ? Buffer.concat([pending, chunk]) : chunk;
    pending = null;
    if (streaming) { pending = buf; return; }
    for (;;) {
      const end = buf.indexOf(CRLFCRLF);
      if (end < 0) {
        if (buf.length > MAX_HEAD) { socket.destroy(); return; }
        if (buf.length > 0) pending = Buffer.from(buf); // copy: do not pin a large chunk
        return;
      }
      const head = buf.toString('latin1', 0, end + 2);
      buf = buf.subarray(end + 4);
      if (!onRequest(head)) {
        if (bodyLeft > 0 && buf.length > 0) { onData(buf); return; }
        if (streaming && buf.length > 0) pending = Buffer.from(buf);
        return;
      }
      if (buf.length === 0) return;
    }
  };
  socket.on('data', onData);
}

/**
 * A line protocol after an optional PROXY header: `onLine` answers each line and returns false
 * once the session is over.
 */
function serveLines(socket: net.Socket, greeting: string, onLine: (line: string) => boolean): void {
  socket.setNoDelay(true);
  socket.on('error', () => {});
  socket.write(greeting);
  let pending = '';
  let first = true;
  let head: Buffer = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    if (first) {
      head = head.length ? Buffer.concat([head, chunk]) : chunk;
      const n = proxyHeaderLength(head);
      if (n < 0) return;
      first = false;
      chunk = head.subarray(n);
    }
    pending += chunk.toString('latin1');
    if (pending.length > MAX_HEAD) { socket.destroy(); return; }
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl).replace(/\r$/, '');
      pending = pending.slice(nl + 1);
      if (!onLine(line)) return;
    }
  });
}

function serveSmtp(socket: net.Socket): void {
  serveLines(socket, '220 backend.bench.test ESMTP bench backend\r\n', (line) => {
    const verb = line.slice(0, 4).toUpperCase();
    if (verb === 'EHLO') socket.write('250-backend.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 10240000\r\n250 ENHANCEDSTATUSCODES\r\n');
    else if (verb === 'HELO') socket.write('250 backend.bench.test\r\n');
    else if (verb === 'QUIT') { socket.end('221 2.0.0 bye\r\n'); return false; }
    else socket.write('250 2.0.0 ok\r\n');
    return true;
  });
}

function serveImap(socket: net.Socket): void {
  serveLines(socket, '* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] bench backend ready\r\n', (line) => {
    const sp = line.indexOf(' ');
    const tag = sp > 0 ? line.slice(0, sp) : '*';
    const verb = line.slice(sp + 1).split(' ')[0]!.toUpperCase();
    if (verb === 'CAPABILITY') socket.write(`* CAPABILITY IMAP4rev1 AUTH=PLAIN IDLE\r\n${tag} OK done\r\n`);
    else if (verb === 'LOGOUT') { socket.end(`* BYE bench backend\r\n${tag} OK bye\r\n`); return false; }
    else socket.write(`${tag} OK done\r\n`);
    return true;
  });
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const host = arg('--host') ?? '127.0.0.1';
const servers: Promise<void>[] = [];
for (const [flag, handler] of [['--http', serveHttp], ['--smtp', serveSmtp], ['--imap', serveImap]] as const) {
  const port = arg(flag);
  if (!port) continue;
  const server = net.createServer({ noDelay: true }, handler);
  server.maxConnections = 1_000_000;
  servers.push(new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port: Number(port), host, backlog: 4096 }, () => resolve());
  }));
}
Promise.all(servers).then(
  () => process.stdout.write('ready\n'),
  (err: Error) => { process.stderr.write(`backend: ${err.message}\n`); process.exit(1); },
);
process.on('SIGTERM', () => process.exit(0));
