// The admin endpoint's connection policy (AdminGate) and its rate-limited refusal log, as pure
// values: which connection is closed to make room, and when the new one is refused instead.
import { describe, it, expect, vi, afterEach } from 'vitest';
import { Writable } from 'node:stream';
import { AdminGate, RefusalLog } from '../../src/admin.ts';
import { createLogger } from '../../src/log.ts';

describe('AdminGate', () => {
  it('admits up to the per-client limit, then closes that client\'s connection idle the longest for the new one', () => {
    const g = new AdminGate<string>({ perClient: 3, total: 10 });
    for (const [i, c] of ['a1', 'a2', 'a3'].entries()) expect(g.admit(c, 'A', i)).toEqual({ admitted: true, refused: null, evict: [] });
    expect(g.admit('a4', 'A', 10)).toEqual({ admitted: true, refused: null, evict: [{ conn: 'a1', key: 'A', reason: 'too_many_from_client' }] });
    expect(g.size).toBe(3);
    // Another client is not affected by A's limit.
    expect(g.admit('b1', 'B', 11).evict).toEqual([]);
  });

  it('never closes a connection that is answering a request; refuses the new one when all of the client\'s are', () => {
    const g = new AdminGate<string>({ perClient: 2, total: 10 });
    g.admit('a1', 'A', 0);
    g.admit('a2', 'A', 1);
    g.busy('a1');
    expect(g.admit('a3', 'A', 2).evict.map((e) => e.conn)).toEqual(['a2']);
    g.busy('a3');
    expect(g.admit('a4', 'A', 3)).toEqual({ admitted: false, refused: 'too_many_from_client', evict: [] });
    // A finished response makes the connection idle again, from that moment.
    g.idle('a1', 4);
    expect(g.admit('a5', 'A', 5).evict.map((e) => e.conn)).toEqual(['a1']);
  });

  it('at the total, the client holding the most connections gives up its longest-idle one', () => {
    const g = new AdminGate<string>({ perClient: 4, total: 6 });
    g.admit('b1', 'B', 0); // the oldest of all, but B holds one connection only
    for (const [i, c] of ['a1', 'a2', 'a3'].entries()) g.admit(c, 'A', 1 + i);
    g.admit('c1', 'C', 5);
    g.admit('c2', 'C', 6);
    expect(g.admit('p', 'P', 7).evict).toEqual([{ conn: 'a1', key: 'A', reason: 'too_many_connections' }]);
    // Now A and C hold two each: the longest idle of those goes.
    expect(g.admit('q', 'Q', 8).evict).toEqual([{ conn: 'a2', key: 'A', reason: 'too_many_connections' }]);
    expect(g.admit('r', 'R', 9).evict).toEqual([{ conn: 'c1', key: 'C', reason: 'too_many_connections' }]);
  });

  it('at the total with every connection busy, the new one is refused', () => {
    const g = new AdminGate<string>({ perClient: 4, total: 2 });
    g.admit('a', 'A', 0);
    g.admit('b', 'B', 0);
    g.busy('a');
    g.busy('b');
    expect(g.admit('c', 'C', 1)).toEqual({ admitted: false, refused: 'too_many_connections', evict: [] });
  });

  it('many clients with a few connections each: a probe from a new address always gets in', () => {
    const g = new AdminGate<number>({ perClient: 8, total: 128 });
    let t = 0;
    let id = 0;
    for (let k = 0; k < 60; k++) for (let j = 0; j < 4; j++) g.admit(id++, `10.0.0.${k}`, t++);
    expect(g.size).toBe(128);
    const probe = g.admit(-1, '10.9.9.9', t++);
    expect(probe.admitted).toBe(true);
    expect(probe.evict).toHaveLength(1);
    expect(g.size).toBe(128);
  });

  it('remove() forgets a closed connection (twice is harmless)', () => {
    const g = new AdminGate<string>({ perClient: 1, total: 10 });
    g.admit('a1', 'A', 0);
    g.remove('a1');
    g.remove('a1');
    expect(g.admit('a2', 'A', 1)).toEqual({ admitted: true, refused: null, evict: [] });
  });
});

describe('RefusalLog', () => {
  afterEach(() => vi.useRealTimers());

  it('logs the first refusal at once, then one summary per window while refusals go on, then nothing', () => {
    vi.useFakeTimers();
    const lines: Array<Record<string, unknown>> = [];
    const log = createLogger('info', new Writable({ write(c: Buffer, _e, cb) { for (const l of c.toString().split('\n')) if (l) lines.push(JSON.parse(l)); cb(); } }));
    const r = new RefusalLog(log, 10_000);
    for (let i = 0; i < 1000; i++) r.note('too_many_from_client', '192.0.2.1');
    r.note('request_timeout', '192.0.2.7');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 'warn', reason: 'too_many_from_client', client: '192.0.2.1' });
    vi.advanceTimersByTime(10_000);
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatchObject({ level: 'warn', reason: 'too_many_from_client', refused: { too_many_from_client: 999, request_timeout: 1 }, clients: [{ client: '192.0.2.1', refused: 999 }, { client: '192.0.2.7', refused: 1 }] });
    expect(lines[1]!.msg).toBe('admin connections refused: 1000 more in the last 10 s');
    // A quiet window ends the series; the next refusal is logged at once again.
    vi.advanceTimersByTime(10_000);
    expect(lines).toHaveLength(2);
    r.note('too_many_connections', '192.0.2.9');
    expect(lines).toHaveLength(3);
    r.stop();
  });
});
