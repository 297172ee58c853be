// One pino logger for the process. Every log line goes to stdout (what a container runtime
// collects), in the configured format; stderr carries only what `postern run` prints before it
// has a valid configuration (the config errors, then exit 1) and Node's own crash report after
// the fatal log line (docs/operations.md "Logs"). Remote-caused trouble is logged lower than
// local faults (mox does the same).
import { pino, type Logger } from 'pino';
import type { LogFormat, LogLevel } from './config/types.ts';

export type { Logger };

export function createLogger(level: LogLevel, destination: NodeJS.WritableStream | number = 1, format: LogFormat = 'json'): Logger {
  // Lines are batched (written once 4 KiB have gathered, or every 200 ms): one write(2) per line
  // cost ~7% of a core at 1,000 connections/s (bench/NOTES.md). pino flushes synchronously on
  // process exit, so a normal stop or a crash loses nothing; only SIGKILL can lose <= 200 ms.
  // A write is at most 4 KiB of whole lines (maxWrite = PIPE_BUF; sonic-boom wants minLength
  // below it): workers share the supervisor's stdout, and a pipe keeps each such write in one
  // piece, so lines of two workers never interleave mid-line (one line over 4 KiB still could).
  const dest = typeof destination === 'number'
    ? pino.destination({ dest: destination, sync: false, minLength: 4095, maxWrite: 4096, periodicFlush: 200 })
    : destination;
  return pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      // text: the same line, rewritten just before it joins the batch; same destination, same
      // batching and exit flush.
      ...(format === 'text' ? { hooks: { streamWrite: textLine } } : {}),
    },
    dest,
  );
}

/** Values written bare in a text line; anything else is quoted as a JSON string. */
const BARE = /^[A-Za-z0-9._:/@+,\[\]-]+$/;

function textValue(v: unknown): string {
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  if (typeof v === 'string' && BARE.test(s)) return s;
  // JSON escapes quotes, backslashes and control characters (a line break stays "\n"); beyond
  // ASCII is escaped too, so no attacker-chosen SNI or command becomes a line break (U+2028,
  // NEL) or a look-alike in a terminal.
  return JSON.stringify(s).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/**
 * One pino JSON line -> `<time> <LEVEL> <msg> key=value ...\n`, the keys in pino's order, fields
 * without a value (null) left out, a nested object's fields as `key.sub=value` (an error:
 * `err.message=... err.stack="..."`), a list of names as `a,b`, any other list as one quoted
 * JSON string. Line breaks inside values
 * stay escaped, so an event is always one line.
 */
export function textLine(json: string): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json; // not one JSON object (never from pino): passed on as it came
  }
  const { time, level, msg, ...rest } = o;
  let line = `${typeof time === 'string' ? time : new Date().toISOString()} ${String(level ?? 'info').toUpperCase()}`;
  if (msg !== undefined) line += ` ${typeof msg === 'string' ? msg.replace(/[\x00-\x1f\x7f]/g, ' ') : textValue(msg)}`;
  return `${line}${fields('', rest)}\n`;
}

/** ` key=value` for each field; a nested object's fields as `key.sub=value`. */
function fields(prefix: string, o: Record<string, unknown>): string {
  let out = '';
  for (const [k, v] of Object.entries(o)) {
    if (v === null || v === undefined) continue;
    if (Array.isArray(v) && v.every((x) => typeof x === 'string' || typeof x === 'number')) out += ` ${prefix}${k}=${textValue(v.join(','))}`;
    else if (typeof v === 'object' && !Array.isArray(v)) out += fields(`${prefix}${k}.`, v as Record<string, unknown>);
    else out += ` ${prefix}${k}=${textValue(v)}`;
  }
  return out;
}
