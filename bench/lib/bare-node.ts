// The reference terminator from the issue: a bare Node.js tls.createServer + net.connect + pipe,
// no peek, no policy, no PROXY header, no logging. postern should cost no more than this.
// Usage: node bare-node.ts --listen HOST:PORT --backend HOST:PORT --cert FILE --key FILE [--ticket-key FILE]
// --ticket-key: the 48-byte session ticket key (raw bytes; tls.createServer's ticketKeys), as an
// operator sharing tickets between processes would set it. Without it Node makes a random one.
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';

function arg(name: string): string {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? process.argv[i + 1] : undefined;
  if (!v) throw new Error(`missing ${name}`);
  return v;
}
function optionalArg(name: string): string | null {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] ?? null : null;
}
function hostPort(s: string): { host: string; port: number } {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i), port: Number(s.slice(i + 1)) };
}

const listen = hostPort(arg('--listen'));
const backend = hostPort(arg('--backend'));
const ticketKeyFile = optionalArg('--ticket-key');
const ticketKeys = ticketKeyFile ? fs.readFileSync(ticketKeyFile) : null;
if (ticketKeys && ticketKeys.length !== 48) throw new Error(`${ticketKeyFile}: a ticket key is 48 bytes, got ${ticketKeys.length}`);
const server = tls.createServer(
  { cert: fs.readFileSync(arg('--cert')), key: fs.readFileSync(arg('--key')), minVersion: 'TLSv1.3', ...(ticketKeys ? { ticketKeys } : {}) },
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
