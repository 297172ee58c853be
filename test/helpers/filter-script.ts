// Feeds a STARTTLS session filter a script of client ('c') and backend ('b') bytes, whole and
// one byte at a time; both runs must give the same output (the filters keep partial lines).
import { expect } from 'vitest';
import type { SessionFilter } from '../../src/starttls/types.ts';

export type Step = ['c' | 'b', string];

export function runScript(make: () => SessionFilter, steps: Step[], bytewise: boolean) {
  const f = make();
  let toClient = '';
  let toBackend = '';
  for (const [side, data] of steps) {
    const bytes = Buffer.from(data, 'latin1');
    const pieces = bytewise ? [...bytes].map((b) => Buffer.from([b])) : [bytes];
    for (const p of pieces) {
      if (side === 'b') toClient += f.fromBackend(p)?.toString('latin1') ?? '';
      else {
        const r = f.fromClient(p);
        toBackend += r.toBackend?.toString('latin1') ?? '';
        toClient += r.toClient?.toString('latin1') ?? '';
      }
    }
  }
  return { toClient, toBackend };
}

/** Runs the script whole and byte by byte, asserts both agree, returns the output. */
export function sessionOf(make: () => SessionFilter, steps: Step[]) {
  const whole = runScript(make, steps, false);
  expect(runScript(make, steps, true)).toEqual(whole);
  return whole;
}
