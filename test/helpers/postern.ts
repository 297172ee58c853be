// Starts a real postern daemon in this process from YAML text, the same path `postern run`
// takes (load -> validate -> certificates -> listeners), with log lines captured for assertions.
import { Writable } from 'node:stream';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfigText, formatConfigError } from '../../src/config/load.ts';
import { checkCertificates } from '../../src/config/certificates.ts';
import { createLogger } from '../../src/log.ts';
import { Daemon } from '../../src/daemon.ts';
import { preludeFor as standardPreludes } from '../../src/starttls/protocols.ts';
import type { SessionEnv } from '../../src/session.ts';
import type { Prelude } from '../../src/starttls/prelude.ts';

export interface LogLine {
  level: string;
  msg: string;
  [k: string]: unknown;
}

export interface RunningPostern {
  daemon: Daemon;
  port(listener: string): number;
  logs: LogLine[];
  /** Resolves with the summary line of the next closed connection matching `pred`. */
  summary(pred?: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  stop(): Promise<void>;
}

/** `preludeFor` replaces the standard STARTTLS preludes (tests that inject faults). */
export async function startPostern(dir: string, yaml: string, opts: { preludeFor?: (env: SessionEnv) => Prelude | null } = {}): Promise<RunningPostern> {
  const file = join(dir, `postern-${Date.now()}-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, yaml);
  const loaded = loadConfigText(yaml, file);
  if (!loaded.ok) throw new Error(loaded.errors.map(formatConfigError).join('\n'));
  const certs = checkCertificates(loaded.loaded);
  if (!certs.store) throw new Error(certs.errors.map(formatConfigError).join('\n'));
  const logs: LogLine[] = [];
  let waiters: Array<() => void> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line) as LogLine);
      const w = waiters;
      waiters = [];
      for (const f of w) f();
      cb();
    },
  });
  const log = createLogger(loaded.loaded.config.log.level, sink);
  const daemon = await Daemon.start({ config: loaded.loaded.config, store: certs.store, log, preludeFor: opts.preludeFor ?? standardPreludes });
  const seen = new Set<LogLine>();
  return {
    daemon,
    logs,
    port: (name) => daemon.listener(name).port,
    async summary(pred = () => true, timeoutMs = 5000) {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const hit = logs.find((l) => l.msg === 'connection closed' && !seen.has(l) && pred(l));
        if (hit) {
          seen.add(hit);
          return hit;
        }
        if (Date.now() > until) throw new Error(`no matching summary line; logs:\n${logs.map((l) => JSON.stringify(l)).join('\n')}`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 50);
        });
      }
    },
    stop: () => daemon.stop(),
  };
}
