// Feeds a STARTTLS session filter a script of client ('c') and backend ('b') bytes, whole and
// one byte at a time; both runs must give the same output (the filters keep partial lines).
// Client bytes the filter hands back (`rest`: it waits for the backend) are held and offered
// again once it is ready, as the driver (src/filtered-pipe.ts) does.
import { expect } from 'vitest';
import type { SessionFilter } from '../../src/starttls/types.ts';

export type Step = ['c' | 'b', string];

export function runScript(make: () => SessionFilter, steps: Step[], bytewise: boolean) {
  const f = make();
  let toClient = '';
  let toBackend = '';
  let held: Buffer[] = [];
  const feed = () => {
    while (held.length > 0 && f.ready() && !f.passthrough()) {
      const chunk = held.shift()!;
      const r = f.fromClient(chunk);
      toBackend += r.toBackend?.toString('latin1') ?? '';
      toClient += r.toClient?.toString('latin1') ?? '';
      if (r.rest && r.rest.length > 0) held.unshift(r.rest);
    }
    if (f.passthrough() && held.length > 0) {
      // Raw from here on: held bytes go as they are.
      for (const c of held) toBackend += f.fromClient(c).toBackend?.toString('latin1') ?? '';
      held = [];
    }
  };
  for (const [side, data] of steps) {
    const bytes = Buffer.from(data, 'latin1');
    const pieces = bytewise ? [...bytes].map((b) => Buffer.from([b])) : [bytes];
    for (const p of pieces) {
      if (side === 'b') toClient += f.fromBackend(p)?.toString('latin1') ?? '';
      else held.push(p);
      feed();
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
