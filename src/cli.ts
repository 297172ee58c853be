// Command line: parses flags and calls into run / check / demo. Nothing else lives here.
// Each command's module is loaded when that command runs, so a running daemon carries only the
// code it runs (every module loaded is V8 heap that each full GC walks through).
import { Command, Option } from 'commander';
import { version } from './version.ts';

// `postern check | head` closes the pipe early: that is the reader's choice, not an error.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw err;
});

const configOption = () =>
  new Option('-c, --config <file>', 'configuration file').env('POSTERN_CONFIG').default('./postern.yaml');

const program = new Command()
  .name('postern')
  .description('A TLS front door for mail servers: per-listener SNI policy, STARTTLS, PROXY protocol to the backend.')
  .version(version());

program
  .command('run')
  .description('run the daemon (SIGTERM/SIGINT stop it, SIGHUP reloads certificates)')
  .addOption(configOption())
  .action(async (opts: { config: string }) => {
    const { runCommand } = await import('./commands/run.ts');
    process.exitCode = await runCommand(opts.config);
  });

program
  .command('check')
  .description('validate the configuration and certificates, and show which certificate serves each listener')
  .addOption(configOption())
  .option('--json', 'print the result as JSON')
  .action(async (opts: { config: string; json?: boolean }) => {
    const { checkCommand } = await import('./commands/check.ts');
    process.exitCode = checkCommand(opts.config, { json: opts.json === true });
  });

program
  .command('explain')
  .description('show what postern would do for a ClientHello with this SNI (and ALPN), per listener')
  .addOption(configOption())
  .option('--listener <name>', 'only this listener (default: every listener)')
  .option('--sni <name>', 'the SNI the client sends (omit for a ClientHello without SNI)')
  .option('--alpn <list>', 'comma-separated ALPN protocols the client offers')
  .option('--json', 'print the result as JSON')
  .action(async (opts: { config: string; listener?: string; sni?: string; alpn?: string; json?: boolean }) => {
    const { explainCommand } = await import('./commands/explain.ts');
    process.exitCode = explainCommand(opts.config, { listener: opts.listener, sni: opts.sni, alpn: opts.alpn?.split(',').filter(Boolean), json: opts.json === true });
  });

program
  .command('demo')
  .description('start a self-contained demo: throwaway CA, built-in backends, a strict and a fallback listener')
  .option('--host <address>', 'loopback address to listen on', '127.0.0.1')
  .action(async (opts: { host: string }) => {
    const { demoCommand } = await import('./commands/demo.ts');
    process.exitCode = await demoCommand(opts);
  });

program
  .command('schema')
  .description('print the JSON Schema of postern.yaml (for editors: the package also ships it as postern.schema.json)')
  .option('--write <file>', 'write it to this file (atomically: a temporary file, then a rename) instead of stdout')
  .action(async (opts: { write?: string }) => {
    const { configJsonSchema } = await import('./config/schema.ts');
    const text = JSON.stringify(configJsonSchema(), null, 2) + '\n';
    if (opts.write === undefined) return void process.stdout.write(text);
    const { writeFileSync, renameSync } = await import('node:fs');
    const tmp = `${opts.write}.${process.pid}.tmp`;
    writeFileSync(tmp, text);
    renameSync(tmp, opts.write);
  });

program
  .command('health')
  .description("probe the admin endpoint's /healthz (the admin address comes from the configuration); exit 0 when it answers 200")
  .addOption(configOption())
  .option('--url <url>', 'probe this URL instead of the configured admin address')
  .option('--timeout <ms>', 'give up after this many milliseconds', '3000')
  .action(async (opts: { config: string; url?: string; timeout: string }) => {
    const { healthCommand } = await import('./commands/health.ts');
    process.exitCode = await healthCommand(opts.config, { url: opts.url, timeoutMs: Number(opts.timeout) });
  });

program
  .command('records')
  .description('print the DNS records to publish for MTA-STS, TLS-RPT and DANE; --check looks each one up')
  .addOption(configOption())
  .option('--check', 'look the records up and report each as present, missing or stale (exit 1 unless all are present)')
  .option('--resolver <address>', 'DNS server to ask, e.g. 127.0.0.1 or 127.0.0.1:5353 (default: the system resolver)')
  .option('--json', 'print the result as JSON')
  .action(async (opts: { config: string; check?: boolean; resolver?: string; json?: boolean }) => {
    const { recordsCommand } = await import('./commands/records.ts');
    process.exitCode = await recordsCommand(opts.config, { check: opts.check === true, resolver: opts.resolver, json: opts.json === true });
  });

const acme = program.command('acme').description('built-in ACME: the certificates postern obtains and renews itself');
acme
  .command('status')
  .description('show each managed certificate: expiry, next renewal, last error (read from the storage; exit 1 when one is missing or expired)')
  .addOption(configOption())
  .option('--json', 'print the result as JSON')
  .action(async (opts: { config: string; json?: boolean }) => {
    const { acmeStatusCommand } = await import('./commands/acme.ts');
    process.exitCode = acmeStatusCommand(opts.config, { json: opts.json === true });
  });
acme
  .command('renew')
  .description('ask the running daemon to renew the certificates of one name now, and wait for the outcome (needs admin.listen)')
  .addOption(configOption())
  .requiredOption('--name <name>', 'a managed name (acme.hosts or a listener hostname)')
  .option('--timeout <seconds>', 'give up waiting after this many seconds', '300')
  .option('--url <url>', 'the admin endpoint, e.g. http://127.0.0.1:9090 (default: from admin.listen)')
  .action(async (opts: { config: string; name: string; timeout: string; url?: string }) => {
    const { acmeRenewCommand } = await import('./commands/acme.ts');
    process.exitCode = await acmeRenewCommand(opts.config, { name: opts.name, timeoutMs: Number(opts.timeout) * 1000, url: opts.url });
  });

acme
  .command('rollover')
  .description('DANE: have the running daemon make the next key of a name now, print its TLSA records, and use it after acme.rolloverDelay (needs admin.listen)')
  .addOption(configOption())
  .requiredOption('--name <name>', 'a managed name (the hostname of a dane: true MX listener)')
  .option('--url <url>', 'the admin endpoint (default: from admin.listen)')
  .action(async (opts: { config: string; name: string; url?: string }) => {
    const { acmeRolloverCommand } = await import('./commands/acme.ts');
    process.exitCode = await acmeRolloverCommand(opts.config, { name: opts.name, url: opts.url });
  });

await program.parseAsync(process.argv);
