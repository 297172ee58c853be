// The session's "ended" signal: the part of an AbortSignal the stages use (`aborted`, and the
// STARTTLS prelude's 'abort' listener), without an AbortController per connection. A Node 24
// AbortController with its AbortSignal (an EventTarget) cost ~10-20 us per connection, 1.3-3.5% of
// a bare full handshake's CPU, measured with two servers side by side on one core (bench/NOTES.md,
// 2026-12-06).
// An AbortSignal still fits wherever an EndSignal is asked for (tests pass their own).

export interface EndSignal {
  readonly aborted: boolean;
  addEventListener(type: 'abort', listener: () => void): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

export class SessionEnd implements EndSignal {
  aborted = false;
  private listeners: Array<() => void> | null = null;

  addEventListener(_type: 'abort', listener: () => void): void {
    if (this.aborted) return;
    (this.listeners ??= []).push(listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    const l = this.listeners;
    const i = l ? l.indexOf(listener) : -1;
    if (i >= 0) l!.splice(i, 1);
  }

  /**
   * Once: sets `aborted`, then calls each listener once, in order. As with an AbortSignal, a
   * listener removed by an earlier one during the abort is not called, and one added is not.
   */
  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    const l = this.listeners;
    if (l) while (l.length > 0) l.shift()!();
    this.listeners = null;
  }
}
