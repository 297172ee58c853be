// One pino logger for the process. Log lines are JSON on stdout (what a container runtime
// collects); remote-caused trouble is logged lower than local faults (mox does the same).
import { pino, type Logger } from 'pino';
import type { LogLevel } from './config/types.ts';

export type { Logger };

export function createLogger(level: LogLevel, destination: NodeJS.WritableStream | number = 1): Logger {
  // Lines are batched (written once 4 KiB have gathered, or every 200 ms): one write(2) per line
  // cost ~7% of a core at 1,000 connections/s (bench/NOTES.md). pino flushes synchronously on
  // process exit, so a normal stop or a crash loses nothing; only SIGKILL can lose <= 200 ms.
  const dest = typeof destination === 'number'
    ? pino.destination({ dest: destination, sync: false, minLength: 4096, periodicFlush: 200 })
    : destination;
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } }, dest);
}
