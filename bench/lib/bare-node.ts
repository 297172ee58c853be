// The reference terminator from the issue: a bare Node.js tls.createServer + net.connect + pipe,
// no peek, no policy, no PROXY header, no logging. postern should cost no more than this.
// Usage: node bare-node.ts --listen HOST:PORT --backend HOST:PORT --cert FILE --key FILE
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';

function arg(name: string): string {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? process.argv[i + 1] : undefined;
  if (!v) throw new Error(`missing ${name}`);
  return v;
}
function hostPort(s: string): { host: string; port: number } {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i), port: Number(s.slice(i + 1)) };
}

const listen = hostPort(arg('--listen'));
const backend = hostPort(arg('--backend'));
const server = tls.createServer(
  { cert: fs.readFileSync(arg('--cert')), key: fs.readFileSync(arg('--key')), minVersion: 'TLSv1.3' },
  (client) => {
    const upstream = net.connect(backend.port, backend.host);
    const done = (): void => { client.destroy(); upstream.destroy(); };
    client.on('error', done);
    upstream.on('error', done);
    client.pipe(upstream);
    upstream.pipe(client);
  },
);
server.on('tlsClientError', () => {});
server.listen(listen.port, listen.host, () => process.stdout.write('ready\n'));
process.on('SIGTERM', () => process.exit(0));
