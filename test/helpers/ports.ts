// Loopback ports for listeners that must be named in YAML before the daemon binds them.
import net from 'node:net';

/**
 * A port the kernel just handed out on 127.0.0.1: bind port 0, read it, close. Free at the time
 * of the call; another process could take it before it is bound again, which on a test machine
 * is rare enough not to matter.
 */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ port: 0, host, exclusive: true }, () => {
      const address = server.address();
      server.close(() => {
        if (address && typeof address === 'object') resolve(address.port);
        else reject(new Error('listen(0) returned no port'));
      });
    });
  });
}

/** Distinct free ports (the kernel may hand the same one out twice across close and listen). */
export async function freePorts(count: number, host = '127.0.0.1'): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) ports.add(await freePort(host));
  return [...ports];
}
