// `postern demo`: everything in one process on loopback, nothing to configure. A throwaway CA and
// certificates made with the openssl command (in a temporary folder, so that openssl s_client can
// verify against the CA), small built-in backends, and listeners that show the strict and the
// fallback policy.
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfigText, formatConfigError } from '../config/load.ts';
import { checkCertificates } from '../config/certificates.ts';
import { makeDemoCertificates } from '../demo/ca.ts';
import { createLogger } from '../log.ts';
import { Daemon } from '../daemon.ts';
import { startDemoBackend } from '../demo/backend.ts';
import { preludeFor } from '../starttls/protocols.ts';

export interface DemoOptions {
  host: string;
  /** Ports: base+0 backend, +1 strict, +2 fallback, +3 SMTP STARTTLS. */
  basePort?: number;
}

export interface DemoHandle {
  daemon: Daemon;
  dir: string;
  stop(): Promise<void>;
}

export async function startDemo(opts: DemoOptions, logDestination: NodeJS.WritableStream | number = 1): Promise<DemoHandle> {
  const dir = mkdtempSync(join(tmpdir(), 'postern-demo-'));
  try {
    makeDemoCertificates(dir, [
      { file: 'mail', names: ['mail.example.org'] },
      { file: 'wild', names: ['*.example.com'] },
    ]);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  const base = opts.basePort ?? 8460;
  const at = (n: number) => base + n;
  const backend = await startDemoBackend(opts.host, at(0), 'backend.example.org');
  const backendPort = (backend.address() as { port: number }).port;

  // The demo goes through the same YAML loader as `postern run`, so its defaults are the real ones.
  const listenerYaml = (name: string, port: number, extra: string) => `
  - name: ${name}
    listen: "${opts.host}:${port}"
    protocol: smtp
    role: ${name === 'smtp-starttls' ? 'mx' : 'submission'}
    hostname: mail.example.org
    backend: { address: "${opts.host}:${backendPort}", proxyProtocol: v2 }
${extra}`;
  const yaml = `log: { level: debug }
certificates:
  - { cert: mail.pem, key: mail.key }
  - { cert: wild.pem, key: wild.key }
listeners:${listenerYaml('strict', at(1), '    tls: implicit\n    sni: strict')}${listenerYaml('fallback', at(2), '    tls: implicit\n    sni: fallback')}${listenerYaml('smtp-starttls', at(3), '    tls: starttls\n    greeting: mail.example.org ESMTP postern demo')}`;
  const file = join(dir, 'postern.yaml');
  writeFileSync(file, yaml);
  const loaded = loadConfigText(yaml, file);
  if (!loaded.ok) throw new Error(`demo configuration: ${loaded.errors.map(formatConfigError).join('; ')}`);
  const certs = checkCertificates(loaded.loaded);
  if (!certs.store) throw new Error(`demo certificates did not load: ${certs.errors.map(formatConfigError).join('; ')}`);
  const config = loaded.loaded.config;
  const log = createLogger('debug', logDestination);
  const daemon = await Daemon.start({ config, store: certs.store, log, preludeFor });
  log.info({ ca: join(dir, 'ca.pem') }, 'demo started');
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
  smtp-starttls  ${h}:${p('smtp-starttls')}          STARTTLS, role: mx (sni fallback, plaintext allowed)

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

  # STARTTLS, as an MTA delivering on port 25 does (sends the bare domain as SNI)
  openssl s_client -brief -starttls smtp -connect ${h}:${p('smtp-starttls')} -servername example.org -CAfile ${ca}

Ctrl-C stops the demo.
`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await demo.stop();
  return 0;
}
