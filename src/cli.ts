// Command line: parses flags and calls into run / check / demo. Nothing else lives here.
// Each command's module is loaded when that command runs: the demo's certificate authority
// (@peculiar/x509 and its dependencies) alone is ~4 MB of V8 heap, which a running daemon would
// otherwise carry and walk through in every full GC.
import { Command, Option } from 'commander';

const configOption = () =>
  new Option('-c, --config <file>', 'configuration file').env('POSTERN_CONFIG').default('./postern.yaml');

const program = new Command()
  .name('postern')
  .description('A TLS front door for mail servers: per-listener SNI policy, STARTTLS, PROXY protocol to the backend.')
  .version(process.env.npm_package_version ?? '0.1.0');

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

await program.parseAsync(process.argv);
