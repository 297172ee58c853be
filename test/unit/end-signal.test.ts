// SessionEnd (src/net/end-signal.ts) stands in for an AbortController per session: the stages
// rely on AbortSignal's semantics for `aborted` and 'abort' listeners, checked here side by side
// with a real AbortController.
import { describe, expect, it } from 'vitest';
import { SessionEnd, type EndSignal } from '../../src/net/end-signal.ts';

function behaviour(signal: EndSignal, abort: () => void): string[] {
  const seen: string[] = [];
  const a = () => seen.push('a');
  const b = () => seen.push('b');
  const removed = () => seen.push('removed');
  signal.addEventListener('abort', a);
  signal.addEventListener('abort', removed);
  signal.addEventListener('abort', b);
  signal.removeEventListener('abort', removed);
  signal.removeEventListener('abort', () => seen.push('never added'));
  seen.push(`before ${signal.aborted}`);
  abort();
  seen.push(`after ${signal.aborted}`);
  abort();
  // A listener added after the abort is never called (AbortSignal does not call it either).
  signal.addEventListener('abort', () => seen.push('late'));
  abort();
  return seen;
}

describe('SessionEnd', () => {
  it('behaves as an AbortSignal: listeners in order, once, removed ones never, late ones never', () => {
    const ac = new AbortController();
    const expected = behaviour(ac.signal, () => ac.abort());
    expect(expected).toEqual(['before false', 'a', 'b', 'after true']);
    const end = new SessionEnd();
    expect(behaviour(end, () => end.abort())).toEqual(expected);
  });

  it('skips a listener that an earlier one removed during the abort, as AbortSignal does', () => {
    const run = (signal: EndSignal, abort: () => void): string[] => {
      const seen: string[] = [];
      const second = () => seen.push('second');
      signal.addEventListener('abort', () => {
        seen.push('first');
        signal.removeEventListener('abort', second);
        signal.addEventListener('abort', () => seen.push('added while aborting'));
      });
      signal.addEventListener('abort', second);
      abort();
      abort();
      return seen;
    };
    const ac = new AbortController();
    const expected = run(ac.signal, () => ac.abort());
    expect(expected).toEqual(['first']);
    const end = new SessionEnd();
    expect(run(end, () => end.abort())).toEqual(expected);
  });
});
