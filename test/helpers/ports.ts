// Loopback ports for listeners that must be named in YAML before the daemon binds them.
import net from 'node:net';

/**
 * Ports handed out here lie below Linux's ephemeral range (ip_local_port_range, 32768-60999 by
 * default), where the kernel never picks the local port of an outgoing connection or of a
 * listen(0). A port from listen(0) is itself ephemeral: between our close and the daemon's bind,
 * any connect() on the machine (a backend dial, a test client, a parallel CI step) could take it,
 * and did (EADDRINUSE in CI). Below that range only another caller of this function competes,
 * and the random choice spreads those over 12,768 ports.
 */
const LOW = 20_000;
const HIGH = 32_768;

function tryListen(port: number, host: string): Promise<number | null> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', (err: NodeJS.ErrnoException) => (err.code === 'EADDRINUSE' || err.code === 'EACCES' ? resolve(null) : reject(err)));
    server.listen({ port, host, exclusive: true }, () => {
      const address = server.address();
      server.close(() => {
        if (address && typeof address === 'object') resolve(address.port);
        else reject(new Error(`listen(${port}) returned no port`));
      });
    });
  });
}

/** A port free on `host` at the time of the call, below the ephemeral range (see above). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let attempt = 0; attempt < 64; attempt++) {
    const port = await tryListen(LOW + Math.floor(Math.random() * (HIGH - LOW)), host);
    if (port !== null) return port;
  }
  // 64 taken ports in a row: something holds most of the range; let the kernel choose.
  const port = await tryListen(0, host);
  if (port === null) throw new Error('no free port');
  return port;
}

/** Distinct free ports (the kernel may hand the same one out twice across close and listen). */
export async function freePorts(count: number, host = '127.0.0.1'): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) ports.add(await freePort(host));
  return [...ports];
}
