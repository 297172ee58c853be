// A tiny plaintext line server for `postern demo`: it reads the PROXY header postern sends,
// then greets with what it learned (client address, SNI), and answers a few SMTP-ish commands.
// Demo only; real deployments put Postfix, Exim or Dovecot here.
import net from 'node:net';

const V2_SIGNATURE = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');

export interface ProxyInfo {
  client: string;
  authority: string | null;
  tls: boolean;
}

/** Reads a PROXY v1/v2 header at the start of buf; null while incomplete. Demo-grade, lenient. */
export function readProxyHeader(buf: Buffer): { info: ProxyInfo; length: number } | null {
  if (buf.length >= 16 && buf.subarray(0, 12).equals(V2_SIGNATURE)) {
    const len = buf.readUInt16BE(14);
    if (buf.length < 16 + len) return null;
    const fam = buf[13]!;
    let client = 'unknown';
    let off = 16;
    if (fam >> 4 === 1) {
      client = `${[...buf.subarray(16, 20)].join('.')}:${buf.readUInt16BE(24)}`;
      off = 28;
    } else if (fam >> 4 === 2) {
      const parts: string[] = [];
      for (let i = 0; i < 16; i += 2) parts.push(buf.readUInt16BE(16 + i).toString(16));
      client = `[${parts.join(':')}]:${buf.readUInt16BE(48)}`;
      off = 52;
    }
    let authority: string | null = null;
    let tls = false;
    while (off + 3 <= 16 + len) {
      const type = buf[off]!;
      const l = buf.readUInt16BE(off + 1);
      if (type === 0x02) authority = buf.toString('latin1', off + 3, off + 3 + l);
      if (type === 0x20) tls = (buf[off + 3]! & 1) === 1;
      off += 3 + l;
    }
    return { info: { client, authority, tls }, length: 16 + len };
  }
  const crlf = buf.indexOf('\r\n');
  if (buf.subarray(0, 6).toString() === 'PROXY ' && crlf > 0) {
    const f = buf.toString('latin1', 0, crlf).split(' ');
    return { info: { client: `${f[2]}:${f[4]}`, authority: null, tls: false }, length: crlf + 2 };
  }
  return buf.length > 107 || (buf.length >= 6 && !buf.subarray(0, 6).equals(V2_SIGNATURE.subarray(0, 6)) && buf.subarray(0, 6).toString() !== 'PROXY ') ? { info: { client: 'no header', authority: null, tls: false }, length: 0 } : null;
}

export function startDemoBackend(host: string, port: number, name: string): Promise<net.Server> {
  const server = net.createServer((socket) => {
    let buf = Buffer.alloc(0);
    let greeted = false;
    socket.on('error', () => {});
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (!greeted) {
        const h = readProxyHeader(buf);
        if (!h) return;
        greeted = true;
        buf = buf.subarray(h.length);
        socket.write(`220 ${name} ESMTP demo backend; client ${h.info.client}, sni ${h.info.authority ?? '-'}, tls ${h.info.tls}\r\n`);
      }
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.toString('latin1', 0, nl).replace(/\r$/, '');
        buf = buf.subarray(nl + 1);
        const verb = line.split(' ')[0]!.toUpperCase();
        if (verb === 'EHLO') socket.write(`250-${name} greets ${line.slice(5)}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10240000\r\n`);
        else if (verb === 'QUIT') socket.end('221 2.0.0 bye\r\n');
        else socket.write(`250 2.0.0 ok: ${line.slice(0, 60)}\r\n`);
      }
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}
