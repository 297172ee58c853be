// A tiny plaintext line server for `postern demo`: it reads the PROXY header postern sends,
// then greets with what it learned (client address, SNI), and answers a few SMTP-ish commands.
// Demo only; real deployments put Postfix, Exim or Dovecot here.
import net from 'node:net';
import { decodeProxyHeader } from '../backend/proxy-decode.ts';

export function startDemoBackend(host: string, port: number, name: string): Promise<net.Server> {
  const server = net.createServer((socket) => {
    let buf = Buffer.alloc(0);
    let greeted = false;
    socket.on('error', () => {});
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (!greeted) {
        const d = decodeProxyHeader(buf);
        if (d.kind === 'need-more') return;
        greeted = true;
        const h = d.kind === 'header' ? d.header : null;
        if (h) buf = buf.subarray(h.length);
        const client = h?.source ? `${h.source.address}:${h.source.port}` : 'unknown (no PROXY header)';
        socket.write(`220 ${name} ESMTP demo backend; client ${client}, sni ${h?.authority ?? '-'}, tls ${h?.ssl ? h.ssl.version : 'no'}\r\n`);
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
