// Drives the real STARTTLS prelude core (src/starttls/prelude.ts DialogueReader: line splitting,
// overlong lines, the 0x16 check, answering only while the client reads) with the real
// SMTP/IMAP/POP3 dialogues, so a byte stream cut into chunks can be replayed without sockets.
// Shared by test/unit/fuzz-starttls-lines.test.ts and the coverage-guided fuzzer (fuzz/).
import { DialogueReader, type ProtocolMachines } from '../../src/starttls/prelude.ts';
import { smtpDialogue } from '../../src/starttls/smtp-dialogue.ts';
import { imapDialogue } from '../../src/starttls/imap-dialogue.ts';
import { pop3Dialogue } from '../../src/starttls/pop3-dialogue.ts';
import type { Dialogue, DialogueOptions, SessionFilter, ProtocolWords } from '../../src/starttls/types.ts';

export type Proto = 'smtp' | 'imap' | 'pop3';
export const PROTOS: Proto[] = ['smtp', 'imap', 'pop3'];
export const DIALOGUES = { smtp: smtpDialogue, imap: imapDialogue, pop3: pop3Dialogue } as const;
export const MAX_LINE: Record<Proto, number> = { smtp: 512, imap: 8192, pop3: 255 };

export class InvariantError extends Error {}
function fail(msg: string): never {
  throw new InvariantError(msg);
}

export interface Setup {
  proto: Proto;
  requireTls: boolean;
  tlsAvailable: boolean;
  capabilities: string[];
}

export type Event = { kind: 'line'; length: number } | { kind: 'overlong' };

export type End =
  | { kind: 'open' }
  | { kind: 'abort'; reason: string; detail: string | null; lastWords: string | null }
  /** `after`: bytes that were sent after the STARTTLS line (discarded by the prelude or read by the TLS peek). */
  | { kind: 'starttls'; after: number }
  /** `stream`: what the backend will read from the client: the pending line and everything after it. */
  | { kind: 'handoff'; replay: string; stream: string };

export interface Transcript {
  /** Everything postern wrote to the client, in order. */
  written: string;
  events: Event[];
  end: End;
}

/**
 * Runs one client byte stream, cut at `cuts`, through the prelude. Never throws on its own: an
 * exception out of the prelude or a dialogue is rethrown wrapped in InvariantError. With
 * `stallEvery` N, every Nth time the reader asks whether the client reads, the answer is no (the
 * client's window is full) until the next "drain": the transcript must not change.
 */
export function runPrelude(setup: Setup, input: Buffer, cuts: number[], stallEvery = 0): Transcript {
  const maxLine = MAX_LINE[setup.proto];
  const events: Event[] = [];
  const wrap = (opts: DialogueOptions): Dialogue => {
    const d = DIALOGUES[setup.proto](opts);
    if (d.maxLine !== maxLine) fail(`${setup.proto} maxLine ${d.maxLine}`);
    return {
      maxLine: d.maxLine,
      greeting: () => d.greeting(),
      onOverlong: () => {
        events.push({ kind: 'overlong' });
        return d.onOverlong();
      },
      onLine: (line: Buffer) => {
        // A line reaches the dialogue only within the protocol's limit (CRLF included), without its LF.
        if (line.length + 1 > maxLine) fail(`onLine got ${line.length} bytes, limit ${maxLine} with CRLF`);
        if (line.includes(0x0a)) fail('onLine got a line with an LF inside');
        events.push({ kind: 'line', length: line.length });
        return d.onLine(line);
      },
    };
  };
  const noFilter = {} as SessionFilter;
  const machines: ProtocolMachines = { dialogue: wrap, filter: () => noFilter, words: () => ({}) as ProtocolWords };
  const written: string[] = [];
  let asks = 0;
  let stalled = false;
  const io = {
    write: (t: string) => void written.push(t),
    canWrite: () => {
      if (stallEvery > 0 && ++asks % stallEvery === 0) stalled = true;
      return !stalled;
    },
  };
  const dialogue = wrap({ hostname: 'mail.example.org', greeting: 'mail.example.org ready', requireTls: setup.requireTls, capabilities: setup.capabilities, tlsAvailable: setup.tlsAvailable });
  const reader = new DialogueReader(dialogue, machines, io);
  written.push(dialogue.greeting());
  const ends = [...new Set(cuts.filter((c) => c > 0 && c < input.length))].sort((a, b) => a - b);
  ends.push(input.length);
  let at = 0;
  try {
    for (const e of ends) {
      if (at >= input.length || reader.outcome) break;
      const chunk = input.subarray(at, e);
      at = e;
      reader.feed(chunk);
      // The client reads what it was sent: 'drain', and the reader goes on.
      while (reader.blocked && !reader.outcome) {
        stalled = false;
        reader.pump();
      }
    }
  } catch (err) {
    fail(`prelude threw: ${(err as Error)?.stack ?? String(err)}`);
  }
  const rest = input.subarray(at);
  const o = reader.outcome;
  let end: End = { kind: 'open' };
  if (o?.kind === 'close') end = { kind: 'abort', reason: o.reason, detail: o.detail, lastWords: o.words ? o.words.toString('latin1') : null };
  else if (o?.kind === 'starttls') end = { kind: 'starttls', after: o.discarded + rest.length };
  else if (o?.kind === 'handoff') end = { kind: 'handoff', replay: o.replay, stream: Buffer.concat([o.pending, rest]).toString('latin1') };
  const all = written.join('');
  // Replies are fixed texts (plus a validated IMAP tag): printable ASCII in CRLF-ended lines; the
  // client's bytes are never echoed.
  if (!/^(?:[\x20-\x7e]*\r\n)*$/.test(all)) fail(`reply with bytes outside printable ASCII or without CRLF: ${JSON.stringify(all.slice(0, 200))}`);
  return { written: all, events, end };
}

/**
 * What the prelude must report to the dialogue for this stream, by a line-by-line model: every
 * LF-terminated line longer than the limit (LF included) is one overlong event, every other line
 * one line event, and a final partial line longer than the limit is one overlong event. A stream
 * starting with 0x16 (a ClientHello before STARTTLS) has none. The prelude may stop early (a
 * terminal action): its events are then a prefix of these.
 */
export function expectedEvents(proto: Proto, input: Buffer): Event[] {
  if (input.length > 0 && input[0] === 0x16) return [];
  const max = MAX_LINE[proto];
  const out: Event[] = [];
  let start = 0;
  for (;;) {
    const lf = input.indexOf(0x0a, start);
    if (lf < 0) break;
    const len = lf + 1 - start;
    if (len > max) out.push({ kind: 'overlong' });
    else out.push({ kind: 'line', length: lf > start && input[lf - 1] === 0x0d ? len - 2 : len - 1 });
    start = lf + 1;
  }
  if (input.length - start > max) out.push({ kind: 'overlong' });
  return out;
}

/** Checks a transcript against the line model; returns it. */
export function checkEvents(proto: Proto, input: Buffer, t: Transcript): void {
  const want = expectedEvents(proto, input);
  const got = t.events;
  if (got.length > want.length) fail(`${got.length} events, model has ${want.length}`);
  for (let i = 0; i < got.length; i++) {
    if (JSON.stringify(got[i]) !== JSON.stringify(want[i])) fail(`event ${i}: ${JSON.stringify(got[i])} != model ${JSON.stringify(want[i])}`);
  }
  if (t.end.kind === 'open' && got.length !== want.length) fail(`dialogue still open after ${got.length} of ${want.length} events`);
}
