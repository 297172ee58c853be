// `postern demo`: everything in one process on loopback, nothing to configure. A throwaway CA and
// certificates (written to a temporary folder so that openssl can verify against the CA), small
// built-in backends, and listeners that show the strict and the fallback policy.
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ListenerConfig, PosternConfig } from '../config/types.ts';
import { createCa, issueCert } from '../pki.ts';
import { buildCertStore } from '../tls/certstore.ts';
import { createLogger } from '../log.ts';
import { Daemon } from '../daemon.ts';
import { startDemoBackend } from '../demo/backend.ts';
import { preludeFor } from '../starttls/preludes.ts';

export interface DemoOptions {
  host: string;
  /** Ports: base+0 backend, +1 strict, +2 fallback, +3 SMTP STARTTLS. 0 picks free ports. */
  basePort?: number;
}

export interface DemoHandle {
  daemon: Daemon;
  dir: string;
  stop(): Promise<void>;
}

export async function startDemo(opts: DemoOptions, logDestination: NodeJS.WritableStream | number = 1): Promise<DemoHandle> {
  const dir = mkdtempSync(join(tmpdir(), 'postern-demo-'));
  const ca = await createCa('postern demo CA');
  const mail = await issueCert(ca, { names: ['mail.example.org'] });
  const wild = await issueCert(ca, { names: ['*.example.com'] });
  writeFileSync(join(dir, 'ca.pem'), ca.certPem);
  writeFileSync(join(dir, 'mail.pem'), mail.chainPem);
  writeFileSync(join(dir, 'mail.key'), mail.keyPem, { mode: 0o600 });
  writeFileSync(join(dir, 'wild.pem'), wild.chainPem);
  writeFileSync(join(dir, 'wild.key'), wild.keyPem, { mode: 0o600 });

  const base = opts.basePort ?? 0;
  const at = (n: number) => (base === 0 ? 0 : base + n);
  const backend = await startDemoBackend(opts.host, at(0), 'backend.example.org');
  const backendPort = (backend.address() as { port: number }).port;

  const listener = (name: string, port: number, over: Partial<ListenerConfig>): ListenerConfig => ({
    name,
    listen: { host: opts.host, port },
    protocol: 'smtp',
    tls: 'implicit',
    hostname: 'mail.example.org',
    sni: 'strict',
    serverNames: null,
    alpn: ['smtp'],
    minVersion: 'TLSv1.2',
    backend: { address: { host: opts.host, port: backendPort }, proxyProtocol: 'v2' },
    timeouts: { handshakeMs: 10_000, connectMs: 5_000, idleMs: 600_000 },
    starttls: null,
    path: `listeners[${name}]`,
    ...over,
  });
  const config: PosternConfig = {
    file: '(demo)',
    log: { level: 'debug' },
    certificates: [
      { cert: join(dir, 'mail.pem'), key: join(dir, 'mail.key'), path: 'certificates[0]' },
      { cert: join(dir, 'wild.pem'), key: join(dir, 'wild.key'), path: 'certificates[1]' },
    ],
    listeners: [
      listener('strict', at(1), { sni: 'strict' }),
      listener('fallback', at(2), { sni: 'fallback' }),
    ],
  };
  const built = buildCertStore(config.certificates);
  if (!built.store) throw new Error(`demo certificates did not load: ${built.problems.map((p) => p.message).join('; ')}`);
  const log = createLogger('debug', logDestination);
  const daemon = await Daemon.start({ config, store: built.store, log, preludeFor });
  return {
    daemon,
    dir,
    async stop() {
      await daemon.stop();
      await new Promise((r) => backend.close(r));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export async function demoCommand(opts: { host: string }): Promise<number> {
  let demo: DemoHandle;
  try {
    demo = await startDemo({ host: opts.host, basePort: 8460 }, 2);
  } catch (err) {
    process.stderr.write(`postern demo: ${(err as Error).message}\n`);
    return 1;
  }
  const h = opts.host;
  const p = (name: string) => demo.daemon.listener(name).port;
  const ca = join(demo.dir, 'ca.pem');
  process.stdout.write(`
postern demo is running (logs go to stderr, one JSON line per connection).
Certificates: mail.example.org and *.example.com, from a throwaway CA: ${ca}
Listeners (all SMTP in front of a built-in backend that prints what postern told it):
  strict         ${h}:${p('strict')}          implicit TLS, sni: strict
  fallback       ${h}:${p('fallback')}          implicit TLS, sni: fallback

Try (each opens a session; type QUIT or press Ctrl-D to leave):

  # served: the SNI is covered by a certificate
  openssl s_client -brief -connect ${h}:${p('strict')} -servername mail.example.org -CAfile ${ca} -alpn smtp

  # strict refusal: unknown name -> TLS alert unrecognized_name (112), backend never contacted
  openssl s_client -brief -connect ${h}:${p('strict')} -servername unknown.example.net -CAfile ${ca}

  # fallback: the bare domain (as some senders send it) -> mail.example.org's certificate
  openssl s_client -brief -connect ${h}:${p('fallback')} -servername example.org -CAfile ${ca}

  # wildcard: *.example.com covers www.example.com
  openssl s_client -brief -connect ${h}:${p('strict')} -servername www.example.com -CAfile ${ca}

  # cross-protocol (ALPACA): a browser's ALPN on a mail port -> alert no_application_protocol (120)
  openssl s_client -brief -connect ${h}:${p('strict')} -servername mail.example.org -alpn h2,http/1.1 -CAfile ${ca}

Ctrl-C stops the demo.
`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await demo.stop();
  return 0;
}
