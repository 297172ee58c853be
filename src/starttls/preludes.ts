// Chooses the pre-TLS dialogue for a listener: none for implicit TLS.
import type { Prelude } from '../listener.ts';
import type { SessionEnv } from '../session.ts';

export function preludeFor(env: SessionEnv): Prelude | null {
  if (env.listener.tls === 'implicit') return null;
  throw new Error(`listener ${env.listener.name}: tls: starttls is not implemented yet`);
}
