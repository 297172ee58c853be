// Chooses the pre-TLS dialogue for a listener: none for implicit TLS, else the protocol's
// dialogue and after-TLS filter, with a capability probe of the backend.
import type { Prelude } from '../listener.ts';
import type { SessionEnv } from '../session.ts';
import type { Protocol } from '../config/types.ts';
import { StarttlsPrelude, type ProtocolMachines } from './prelude.ts';
import { CapabilityProbe } from './probe.ts';
import { smtpDialogue } from './smtp-dialogue.ts';
import { imapDialogue } from './imap-dialogue.ts';
import { pop3Dialogue } from './pop3-dialogue.ts';
import { smtpFilter } from './smtp-filter.ts';
import { imapFilter } from './imap-filter.ts';
import { pop3Filter } from './pop3-filter.ts';

const MACHINES: Record<Exclude<Protocol, 'tls'>, ProtocolMachines> = {
  smtp: { dialogue: smtpDialogue, filter: smtpFilter },
  imap: { dialogue: imapDialogue, filter: imapFilter },
  pop3: { dialogue: pop3Dialogue, filter: pop3Filter },
};

export function preludeFor(env: SessionEnv): Prelude | null {
  const l = env.listener;
  if (l.tls === 'implicit' || l.protocol === 'tls') return null;
  return new StarttlsPrelude(env, MACHINES[l.protocol], new CapabilityProbe(() => env.listener, env.log));
}
