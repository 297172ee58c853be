// One pino logger for the process. Log lines are JSON on stdout (what a container runtime
// collects); remote-caused trouble is logged lower than local faults (mox does the same).
import { pino, type Logger } from 'pino';
import type { LogLevel } from './config/types.ts';

export type { Logger };

export function createLogger(level: LogLevel, destination: NodeJS.WritableStream | number = 1): Logger {
  const dest = typeof destination === 'number' ? pino.destination({ dest: destination, sync: false }) : destination;
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } }, dest);
}
