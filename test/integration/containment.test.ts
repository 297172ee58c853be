// One session's fault never costs the process or another session (threats.md: "Any exception
// inside one session"). The daemon runs in this process with real sockets; a fault is injected
// into the real STARTTLS prelude (a dialogue that throws on one line) and into the real after-TLS
// filter (a filter that throws on one line), through the daemon's injectable preludeFor. The
// session ends with internal_error (the stack logged, postern_internal_errors_total, the
// protocol's "try later"), the backend connection is closed, and a second listener and the
// same listener keep serving.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import net from 'node:net';
import tls from 'node:tls';
import { makePki, type TestPki, type CertFiles } from '../helpers/certs.ts';
import { startPostern, type RunningPostern } from '../helpers/postern.ts';
import { freePort } from '../helpers/ports.ts';
import { startMailBackend, readStream } from '../hostile/harness.ts';
import type { RecordingBackend } from '../helpers/backend.ts';
import { StarttlsPrelude, type ProtocolMachines } from '../../src/starttls/prelude.ts';
import { CapabilityProbe } from '../../src/starttls/probe.ts';
import { MACHINES, preludeFor } from '../../src/starttls/protocols.ts';
import type { SessionFilter } from '../../src/starttls/types.ts';

let pki: TestPki;
let mail: CertFiles;
let backend: RecordingBackend;
let p: RunningPostern;

/** The real SMTP machines, except that the dialogue throws on "NOOP boom" and the filter on "NOOP BOOM". */
const faulty: ProtocolMachines = {
  ...MACHINES.smtp,
  dialogue: (opts) => {
    const d = MACHINES.smtp.dialogue(opts);
    return {
      ...d,
      onLine: (line) => {
        if (line.toString('latin1') === 'NOOP boom') throw new Error('injected fault in the dialogue');
        return d.onLine(line);
      },
    };
  },
  filter: (opts) => {
    const f = MACHINES.smtp.filter(opts);
    const wrapped: SessionFilter = {
      fromClient: (chunk) => {
        if (chunk.includes('NOOP BOOM')) throw new Error('injected fault in the filter');
        return f.fromClient(chunk);
      },
      fromBackend: (chunk) => f.fromBackend(chunk),
      ready: () => f.ready(),
      greeted: () => f.greeted(),
      passthrough: () => f.passthrough(),
    };
    return wrapped;
  },
};

beforeAll(async () => {
  pki = await makePki();
  mail = await pki.issue('mail', { names: ['mail.example.org'] });
  backend = await startMailBackend('smtp');
  const listener = async (name: string) => `  - name: ${name}
    listen: "127.0.0.1:${await freePort()}"
    protocol: smtp
    role: mx
    tls: starttls
    hostname: mail.example.org
    backend: { address: "127.0.0.1:${backend.port}", proxyProtocol: v2 }
`;
  p = await startPostern(
    pki.dir,
    `log: { level: info }
certificates:
  - { cert: ${mail.cert}, key: ${mail.key} }
listeners:
${await listener('faulty')}${await listener('good')}`,
    { preludeFor: (env) => (env.listener.name === 'faulty' ? new StarttlsPrelude(faulty, new CapabilityProbe(() => env.listener, env.log)) : preludeFor(env)) },
  );
}, 60_000);

afterAll(async () => {
  await p?.stop();
  await backend?.close();
});

async function plain(listener: string) {
  const socket = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port: p.port(listener) }, () => resolve(s));
    s.once('error', reject);
  });
  socket.on('error', () => {});
  const reader = readStream(socket);
  await reader.readUntil(/^220 [^\r\n]*\r\n/m);
  return { socket, reader, localPort: socket.localPort! };
}

/** A whole STARTTLS session with a NOOP the backend answers: proof the listener still serves. */
async function serves(listener: string) {
  const c = await plain(listener);
  c.socket.write('EHLO good.example\r\n');
  await c.reader.readUntil(/^250 [^\r\n]*\r\n/m);
  c.socket.write('STARTTLS\r\n');
  await c.reader.readUntil(/^220 2\.0\.0[^\r\n]*\r\n/m);
  c.reader.detach();
  const s = tls.connect({ socket: c.socket, servername: 'mail.example.org', ca: pki.ca.certPem });
  await new Promise<void>((resolve, reject) => {
    s.once('secureConnect', () => resolve());
    s.once('error', reject);
  });
  const r = readStream(s);
  s.write('EHLO good.example\r\nNOOP token-ok\r\n');
  await r.readUntil(/250 2\.0\.0 OK token-ok\r\n/);
  s.destroy();
  return p.summary((l) => l.clientPort === c.localPort);
}

/** Resolves when postern has closed the connection. */
function closed(s: net.Socket): Promise<void> {
  return new Promise((resolve) => (s.closed ? resolve() : s.once('close', () => resolve())));
}

const internalErrors = async (listener: string) => (await p.daemon.metrics.internalErrors.get()).values.find((v) => v.labels.listener === listener)?.value ?? 0;

describe('a fault inside one session ends that session only', () => {
  it('a dialogue that throws: the client gets 421 4.3.0, the session ends with internal_error (stack logged, counted), the other listener serves meanwhile', async () => {
    const c = await plain('faulty');
    c.socket.write('EHLO x.example\r\n');
    await c.reader.readUntil(/^250 [^\r\n]*\r\n/m);
    c.socket.write('NOOP boom\r\n');
    const words = await c.reader.readUntil(/\r\n/);
    expect(words).toContain('421 4.3.0 mail.example.org Internal error, try again later\r\n');
    await closed(c.socket);
    const summary = await p.summary((l) => l.clientPort === c.localPort);
    expect(summary).toMatchObject({ closeReason: 'internal_error', side: 'local', detail: 'injected fault in the dialogue' });
    const logged = p.logs.find((l) => l.msg === 'session ended by an internal error' && String(l.error).includes('injected fault in the dialogue'));
    expect(logged).toMatchObject({ level: 'error', reason: 'internal_error', listener: 'faulty' });
    expect(String(logged!.error)).toMatch(/at .*containment\.test\.ts/);
    expect(await internalErrors('faulty')).toBe(1);
    expect(await serves('good')).toMatchObject({ closeReason: expect.any(String), tlsVersion: 'TLSv1.3' });
  });

  it('a filter that throws after TLS: the client gets 421 4.3.0 inside TLS, the backend connection is closed, the same listener serves the next client', async () => {
    const c = await plain('faulty');
    c.socket.write('EHLO x.example\r\nSTARTTLS\r\n');
    await c.reader.readUntil(/^220 2\.0\.0[^\r\n]*\r\n/m);
    c.reader.detach();
    const s = tls.connect({ socket: c.socket, servername: 'mail.example.org', ca: pki.ca.certPem });
    s.on('error', () => {});
    await new Promise<void>((resolve, reject) => {
      s.once('secureConnect', () => resolve());
      s.once('error', reject);
    });
    const r = readStream(s);
    s.write('EHLO x.example\r\n');
    await r.readUntil(/^250 [^\r\n]*\r\n/m);
    const before = await internalErrors('faulty');
    s.write('NOOP BOOM\r\n');
    expect(await r.readUntil(/421 [^\r\n]*\r\n/)).toContain('421 4.3.0 mail.example.org Internal error, try again later\r\n');
    await closed(s);
    const summary = await p.summary((l) => l.clientPort === c.localPort);
    expect(summary).toMatchObject({ closeReason: 'internal_error', detail: 'injected fault in the filter', tlsVersion: 'TLSv1.3' });
    expect(await internalErrors('faulty')).toBe(before + 1);
    const mine = backend.connections.filter((b) => b.header?.source?.port === c.localPort);
    expect(mine).toHaveLength(1);
    await mine[0]!.closed;
    expect(mine[0]!.data.toString('latin1')).not.toContain('BOOM');
    expect(await serves('faulty')).toMatchObject({ tlsVersion: 'TLSv1.3' });
  });
});
