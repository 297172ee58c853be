// log.format text: one pino JSON line becomes one readable line, and stays one line whatever
// the values hold (an attacker's SNI, a stack trace).
import { describe, it, expect } from 'vitest';
import { textLine } from '../../src/log.ts';

const line = (o: Record<string, unknown>) => textLine(JSON.stringify({ level: 'info', time: '2026-12-04T18:00:00.000Z', pid: 7, ...o }));

describe('textLine', () => {
  it('time, LEVEL, message, then the fields in order; nulls left out', () => {
    expect(line({ listener: 'smtp', client: '203.0.113.9', clientPort: 51234, alpn: null, tls: true, msg: 'connection closed' })).toBe(
      '2026-12-04T18:00:00.000Z INFO connection closed pid=7 listener=smtp client=203.0.113.9 clientPort=51234 tls=true\n',
    );
  });

  it('quotes values with spaces, quotes or other characters; escapes line breaks and everything beyond ASCII', () => {
    const out = line({ level: 'warn', sni: 'a b"c', head: 'EHLO x\r\nMAIL', odd: 'x\u2028y\u0085z', empty: '', msg: 'not TLS' });
    expect(out).toBe('2026-12-04T18:00:00.000Z WARN not TLS pid=7 sni="a b\\"c" head="EHLO x\\r\\nMAIL" odd="x\\u2028y\\u0085z" empty=""\n');
    expect(out.split('\n')).toHaveLength(2);
  });

  it('a nested object as key.sub fields, a list of names joined by commas, other lists as JSON', () => {
    const out = line({ level: 'error', err: { type: 'Error', message: 'boom', stack: 'Error: boom\n    at x (y.ts:1:1)' }, names: ['a.example', 'b.example'], clients: [{ client: '10.0.0.1', refused: 3 }], msg: 'failed' });
    expect(out).toBe(
      '2026-12-04T18:00:00.000Z ERROR failed pid=7 err.type=Error err.message=boom err.stack="Error: boom\\n    at x (y.ts:1:1)" names=a.example,b.example clients="[{\\"client\\":\\"10.0.0.1\\",\\"refused\\":3}]"\n',
    );
  });

  it('a message with control characters stays on one line', () => {
    expect(line({ msg: 'a\nb' })).toBe('2026-12-04T18:00:00.000Z INFO a b pid=7\n');
  });
});
