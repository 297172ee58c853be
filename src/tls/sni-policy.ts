// The per-listener certificate decision, made from the parsed ClientHello before OpenSSL sees a
// byte. Pure: (listener, hello, store) -> serve or refuse, with the reason. The daemon, `postern
// check` and the tests all call this one function.
import type { ListenerConfig } from '../config/types.ts';
import type { CertStore, ServeUnit } from './certstore.ts';
import { checkSniBytes, patternCovers, type InvalidReason } from './names.ts';
import { ALERT_NO_APPLICATION_PROTOCOL, ALERT_UNRECOGNIZED_NAME } from './alerts.ts';

export type SniClass = 'none' | 'exact' | 'wildcard' | 'unknown' | 'invalid';
export type Decision = 'served' | 'fallback' | 'refused';

export interface PolicyInput {
  serverName: Buffer | null;
  alpn: string[] | null;
}

export type PolicyResult =
  | {
      action: 'serve';
      /** The certificate(s) to serve: one per key algorithm. */
      unit: ServeUnit;
      sniClass: SniClass;
      decision: 'served' | 'fallback';
      /** The requested name, lowercased, or null (none or illegible). */
      sni: string | null;
      /** The name the served certificate is used for: the SNI when covered, else the listener hostname. */
      servedName: string;
      /** Why a fallback happened: "unknown", "not_allowed" or an InvalidReason. */
      reason: string | null;
      /** The ALPN protocol to select, or null when the client offered none or ALPN is off. */
      alpn: string | null;
    }
  | {
      action: 'refuse';
      alert: number;
      /** Stable reason code for logs and metrics. */
      reason: 'alpn_refused' | 'sni_refused';
      sniClass: SniClass | null;
      decision: 'refused';
      sni: string | null;
      /** Finer cause: "unknown", "not_allowed", an InvalidReason, or "no_common_alpn". */
      detail: string;
    };

export function decide(listener: ListenerConfig, input: PolicyInput, store: CertStore): PolicyResult {
  // ALPN first, before any fallback (ALPACA, Brinkmann et al. 2021): a client that offers ALPN
  // protocols none of which this listener speaks is talking another protocol, e.g. a browser
  // sent to an SMTP port. RFC 7301 section 3.2: answer no_application_protocol.
  let alpn: string | null = null;
  if (listener.alpn !== null && input.alpn !== null) {
    alpn = listener.alpn.find((p) => input.alpn!.includes(p)) ?? null;
    if (alpn === null) {
      return { action: 'refuse', alert: ALERT_NO_APPLICATION_PROTOCOL, reason: 'alpn_refused', sniClass: null, decision: 'refused', sni: null, detail: 'no_common_alpn' };
    }
  }

  const own = store.lookup(listener.hostname);
  if (input.serverName === null) {
    // Missing SNI always gets the listener's own certificate: many SMTP senders send none.
    return serveOwn(listener, own?.unit, 'none', 'served', null, null, alpn);
  }

  const check = checkSniBytes(input.serverName);
  const refuse = (sniClass: SniClass, detail: string): PolicyResult => ({
    action: 'refuse', alert: ALERT_UNRECOGNIZED_NAME, reason: 'sni_refused', sniClass, decision: 'refused', sni: check.ok ? check.name : null, detail,
  });
  if (!check.ok) {
    if (listener.sni === 'strict' || check.reason === 'illegible') return refuse('invalid', check.reason);
    return serveOwn(listener, own?.unit, 'invalid', 'fallback', null, check.reason satisfies InvalidReason, alpn);
  }

  const name = check.name;
  const found = store.lookup(name);
  const allowed = listener.serverNames === null || listener.serverNames.some((p) => patternCovers(p, name));
  if (found && allowed) {
    return { action: 'serve', unit: found.unit, sniClass: found.match, decision: 'served', sni: name, servedName: name, reason: null, alpn };
  }
  const detail = found ? 'not_allowed' : 'unknown';
  // RFC 6066 section 3: a server that does not recognise the name may abort with
  // unrecognized_name. Strict listeners do; fallback listeners (port 25) serve their own
  // certificate instead, as RFC 8461 section 5 expects of MTA-STS receivers.
  if (listener.sni === 'strict') return refuse('unknown', detail);
  return serveOwn(listener, own?.unit, 'unknown', 'fallback', name, detail, alpn);
}

function serveOwn(
  listener: ListenerConfig,
  unit: ServeUnit | undefined,
  sniClass: SniClass,
  decision: 'served' | 'fallback',
  sni: string | null,
  reason: string | null,
  alpn: string | null,
): PolicyResult {
  if (!unit) {
    // Only reachable when a reload removed the listener's certificate; config validation
    // refuses a hostname that no certificate covers.
    return { action: 'refuse', alert: ALERT_UNRECOGNIZED_NAME, reason: 'sni_refused', sniClass, decision: 'refused', sni, detail: 'no_listener_certificate' };
  }
  return { action: 'serve', unit, sniClass, decision, sni, servedName: listener.hostname, reason, alpn };
}
