// The protocol registry: for each mail protocol its pre-TLS dialogue, its after-TLS filter and its
// words; the prelude a listener runs (none for implicit TLS), with a capability probe of the
// backend; and the filter an implicit TLS session of a mail protocol runs.
import type { SessionEnv } from '../session.ts';
import type { Protocol } from '../config/types.ts';
import { StarttlsPrelude, type Prelude, type ProtocolMachines } from './prelude.ts';
import { CapabilityProbe } from './probe.ts';
import type { ProtocolWords, SessionFilter } from './types.ts';
import type { ListenerConfig } from '../config/types.ts';
import { smtpDialogue, smtpWords } from './smtp-dialogue.ts';
import { imapDialogue, imapWords } from './imap-dialogue.ts';
import { pop3Dialogue, pop3Words } from './pop3-dialogue.ts';
import { smtpFilter } from './smtp-filter.ts';
import { imapFilter } from './imap-filter.ts';
import { pop3Filter } from './pop3-filter.ts';

export const MACHINES: Record<Exclude<Protocol, 'tls'>, ProtocolMachines> = {
  smtp: { dialogue: smtpDialogue, filter: smtpFilter, words: smtpWords },
  imap: { dialogue: imapDialogue, filter: imapFilter, words: imapWords },
  pop3: { dialogue: pop3Dialogue, filter: pop3Filter, words: pop3Words },
};

/** The protocol's words for a listener's hostname; none for protocol tls (no words of its own). */
export function wordsFor(protocol: Protocol, hostname: string): ProtocolWords | null {
  return protocol === 'tls' ? null : MACHINES[protocol].words(hostname);
}

export function preludeFor(env: SessionEnv): Prelude | null {
  const l = env.listener;
  if (l.tls === 'implicit' || l.protocol === 'tls') return null;
  return new StarttlsPrelude(MACHINES[l.protocol], new CapabilityProbe(() => env.listener, env.log));
}

/**
 * Implicit TLS (465, 993, 995): the same after-TLS filter a STARTTLS session gets (the backend
 * knows TLS only from the PROXY header, and would announce and accept STARTTLS/STLS), except that
 * the backend's greeting is forwarded: postern has not greeted. None for protocol tls (raw).
 */
export function implicitFilterFor(l: ListenerConfig): SessionFilter | null {
  if (l.tls !== 'implicit' || l.protocol === 'tls') return null;
  return MACHINES[l.protocol].filter({ swallow: 0, tls: true, forwardGreeting: true });
}
