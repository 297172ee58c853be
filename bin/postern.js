#!/usr/bin/env node
// The compiled CLI lives in dist/ (built by `npm run build`, and by the prepare/prepack scripts).
//
// First, the Node.js version: package.json's engines.node is the minimum (process.execve below
// needs 22.15). This file and node-version.js stay in syntax old Node releases parse, and load
// nothing modern before the check, so Node 20 prints this message instead of a syntax error.
import { existsSync, readFileSync } from 'node:fs';
import { tooOld } from './node-version.js';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
const refusal = tooOld(process.version, pkg.engines.node);
if (refusal) {
  process.stderr.write(refusal);
  process.exit(1);
}
if (!existsSync(new URL('../dist/cli.js', import.meta.url))) {
  process.stderr.write('postern: dist/ is missing. In a checkout, run `npm ci && npm run build`; to install, use the tarball `npm pack` builds (README.md, Install).\n');
  process.exit(1);
}

// Two V8 defaults misjudge a proxy like postern (bench/NOTES.md has the measurements):
// - allocation-site pretenuring: after the config and certificates are loaded, short-lived
//   stream objects get allocated in the old generation, and a keep-alive load then runs a full
//   mark-compact every ~200 ms (p99 latency 16 ms instead of 4 ms, ~10% fewer requests/s);
// - the young generation's cap, raised from 8 to 32 MB in V8 13.6 (Node 24): V8 scavenges for
//   young ArrayBuffer memory only after 2 x that cap, later than its 64 MB external-memory
//   limit, so the Buffers of a TLS stream are freed by full mark-compacts instead of cheap
//   scavenges (nodejs/node#61967).
// Flags cannot be changed once V8 runs, so the process replaces itself (execve: same pid, same
// descriptors) with them set. Set POSTERN_V8_DEFAULTS=1 to keep V8's defaults. (NODE_OPTIONS
// could not do this: Node ignores it when node has a file capability, as in the Docker image.)
const FLAGS = ['--no-allocation-site-pretenuring', '--scavenger-max-new-space-capacity-mb=8'];
const missing = FLAGS.filter((f) => !process.execArgv.includes(f));
if (missing.length > 0 && !process.env.POSTERN_V8_DEFAULTS) {
  process.execve(process.execPath, [process.execPath, ...missing, ...process.execArgv, ...process.argv.slice(1)], process.env);
}
await import('../dist/cli.js');
