#!/usr/bin/env node
// The compiled CLI lives in dist/ (built by `npm ci` through the prepare script).
//
// V8's allocation-site pretenuring misjudges postern: after the config and certificates are
// loaded, short-lived stream objects get allocated in the old generation, and a keep-alive load
// then runs a full mark-compact every ~200 ms (p99 latency 16 ms instead of 4 ms, ~10% fewer
// requests per second; bench/NOTES.md). The flag cannot be changed once V8 runs, so the process
// replaces itself (execve: same pid, same descriptors) with the flag set. Set
// POSTERN_V8_DEFAULTS=1 to keep V8's defaults.
const FLAG = '--no-allocation-site-pretenuring';
if (!process.execArgv.includes(FLAG) && !process.env.POSTERN_V8_DEFAULTS && typeof process.execve === 'function') {
  process.execve(process.execPath, [process.execPath, FLAG, ...process.execArgv, ...process.argv.slice(1)], process.env);
}
await import('../dist/cli.js');
