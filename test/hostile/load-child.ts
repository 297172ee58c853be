// Child process of load.test.ts (run with `node`, types stripped), so that neither the test
// process nor postern has to hold the other side's descriptors:
//   node load-child.ts backend   an echo server behind postern (skips postern's PROXY v2 header)
//   node load-child.ts clients   opens and holds TLS sessions, floods with garbage (IPC commands)
// Every answer goes back over the IPC channel.
import net from 'node:net';
import tls from 'node:tls';
import { randomBytes } from 'node:crypto';

export type ChildCommand =
  | { cmd: 'hold'; port: number; n: number; parallel: number; caPem: string; servername: string; timeoutMs: number }
  | { cmd: 'release' }
  | { cmd: 'flood'; port: number; n: number; hello: string; timeoutMs: number };

export type ChildReport =
  | { type: 'backend'; port: number }
  | { type: 'held'; ok: number; failed: number; errors: Record<string, number>; ms: number }
  | { type: 'released'; ms: number }
  | { type: 'flooded'; n: number; byKind: Record<string, number>; closedByPostern: number; stillOpen: number; ms: number };

const send = (m: ChildReport) => process.send!(m);

function backend(): void {
  const server = net.createServer({ noDelay: true }, (s) => {
    s.on('error', () => {});
    let head: Buffer | null = Buffer.alloc(0);
    s.on('data', (chunk: Buffer) => {
      if (head !== null) {
        // PROXY v2: 12-byte signature, version/command, family, 2-byte length, then that much.
        head = Buffer.concat([head, chunk]);
        if (head.length < 16) return;
        const len = 16 + head.readUInt16BE(14);
        if (head.length < len) return;
        chunk = head.subarray(len);
        head = null;
        if (chunk.length === 0) return;
      }
      s.write(chunk);
    });
  });
  server.listen({ host: '127.0.0.1', port: 0, backlog: 4096 }, () => send({ type: 'backend', port: (server.address() as net.AddressInfo).port }));
  process.on('disconnect', () => process.exit(0));
}

function clients(): void {
  let held: tls.TLSSocket[] = [];

  const one = (c: Extract<ChildCommand, { cmd: 'hold' }>, i: number): Promise<tls.TLSSocket> =>
    new Promise((resolve, reject) => {
      const token = `ping-${i}\n`;
      const s = tls.connect({ host: '127.0.0.1', port: c.port, servername: c.servername, ca: c.caPem });
      let settled = false;
      let got = '';
      const fail = (e: NodeJS.ErrnoException) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        s.destroy();
        reject(e);
      };
      const timer = setTimeout(() => fail(new Error('timeout')), c.timeoutMs);
      s.on('error', fail);
      s.once('close', () => fail(new Error('closed')));
      s.once('secureConnect', () => s.write(token));
      const onData = (d: Buffer) => {
        got += d.toString('latin1');
        if (got === token && !settled) {
          settled = true;
          clearTimeout(timer);
          s.off('data', onData);
          resolve(s);
        }
      };
      s.on('data', onData);
    });

  const hold = async (c: Extract<ChildCommand, { cmd: 'hold' }>) => {
    const t0 = Date.now();
    let next = 0;
    let ok = 0;
    let failed = 0;
    const errors: Record<string, number> = {};
    const worker = async () => {
      while (next < c.n) {
        const i = next++;
        try {
          held.push(await one(c, i));
          ok++;
        } catch (e) {
          failed++;
          const k = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
          errors[k] = (errors[k] ?? 0) + 1;
        }
      }
    };
    await Promise.all(Array.from({ length: c.parallel }, worker));
    send({ type: 'held', ok, failed, errors, ms: Date.now() - t0 });
  };

  const release = async () => {
    const t0 = Date.now();
    const all = held;
    held = [];
    await Promise.all(
      all.map(
        (s) =>
          new Promise<void>((r) => {
            if (s.destroyed) return r();
            s.once('close', () => r());
            s.destroy();
          }),
      ),
    );
    send({ type: 'released', ms: Date.now() - t0 });
  };

  // 1,000 at once: a third random bytes, a third plaintext commands, a third half ClientHellos
  // that then stay silent (postern closes them at its handshake deadline).
  const flood = async (c: Extract<ChildCommand, { cmd: 'flood' }>) => {
    const t0 = Date.now();
    const hello = Buffer.from(c.hello, 'base64');
    const plain = ['EHLO flood.example\r\n', 'GET / HTTP/1.1\r\nHost: x\r\n\r\n', 'a CAPABILITY\r\n', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n'];
    const byKind: Record<string, number> = {};
    let closedByPostern = 0;
    const sockets: net.Socket[] = [];
    const waits: Promise<void>[] = [];
    for (let i = 0; i < c.n; i++) {
      const kind = i % 3 === 0 ? 'random' : i % 3 === 1 ? 'plaintext' : 'half-hello';
      byKind[kind] = (byKind[kind] ?? 0) + 1;
      const s = net.connect({ host: '127.0.0.1', port: c.port });
      sockets.push(s);
      s.on('error', () => {});
      s.on('data', () => {});
      waits.push(
        new Promise<void>((r) => {
          s.once('close', () => {
            closedByPostern++;
            r();
          });
        }),
      );
      s.once('connect', () => {
        if (kind === 'random') s.write(randomBytes(1 + Math.floor(Math.random() * 3000)));
        else if (kind === 'plaintext') s.write(plain[i % plain.length]!);
        else s.write(hello.subarray(0, 1 + Math.floor(Math.random() * (hello.length - 2))));
      });
    }
    await Promise.race([Promise.all(waits), new Promise((r) => setTimeout(r, c.timeoutMs))]);
    const stillOpen = sockets.filter((s) => !s.destroyed).length;
    for (const s of sockets) s.destroy();
    send({ type: 'flooded', n: c.n, byKind, closedByPostern, stillOpen, ms: Date.now() - t0 });
  };

  process.on('message', (m: ChildCommand) => {
    if (m.cmd === 'hold') void hold(m);
    else if (m.cmd === 'release') void release();
    else if (m.cmd === 'flood') void flood(m);
  });
  process.on('disconnect', () => process.exit(0));
}

if (process.argv[2] === 'backend') backend();
else if (process.argv[2] === 'clients') clients();
else {
  console.error('usage: node load-child.ts backend|clients');
  process.exit(2);
}
