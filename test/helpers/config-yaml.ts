// Builds postern YAML for the integration tests: one place that knows the config format
// (issue 2, "Config"), so a scenario states only what differs from a plain implicit-TLS listener.
import { stringify } from 'yaml';

export interface ListenerSpec {
  name?: string;
  port: number;
  /** Defaults to 127.0.0.1. */
  host?: string;
  protocol?: 'smtp' | 'imap' | 'pop3' | 'tls';
  tls?: 'implicit' | 'starttls';
  /**
   * protocol smtp: the listener's role. Default `submission` (sni strict, TLS required): the
   * port number decides nothing, so a test that wants an MX says so. null leaves the key out (to
   * test the error for an smtp listener without one).
   */
  role?: 'mx' | 'submission' | null;
  hostname?: string;
  sni?: 'strict' | 'fallback';
  serverNames?: string[];
  /** A list, or false for no ALPN handling; undefined leaves the protocol default. */
  alpn?: string[] | false;
  minVersion?: 'TLSv1.2' | 'TLSv1.3';
  backendPort: number;
  backendHost?: string;
  proxyProtocol?: 'none' | 'v1' | 'v2';
  timeouts?: { handshake?: string; connect?: string; idle?: string };
}

export interface ConfigSpec {
  certs: Array<{ cert: string; key: string }>;
  listeners: ListenerSpec[];
  level?: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';
}

export function listenerObject(l: ListenerSpec, index = 0): Record<string, unknown> {
  const out: Record<string, unknown> = {
    name: l.name ?? (index === 0 ? 'l' : `l${index}`),
    listen: `${l.host ?? '127.0.0.1'}:${l.port}`,
    // Unstated, a listener is raw TLS that negotiates ALPN "smtp" (the old implicit smtp
    // listener's behaviour): the backends here are echo servers, not mail servers, and an implicit
    // smtp/imap/pop3 listener now filters its sessions (issue 15).
    protocol: l.protocol ?? 'tls',
    tls: l.tls ?? 'implicit',
    hostname: l.hostname ?? 'mail.example.org',
  };
  const role = l.role === undefined ? (out.protocol === 'smtp' ? 'submission' : undefined) : l.role;
  if (role) out.role = role;
  if (l.sni !== undefined) out.sni = l.sni;
  if (l.serverNames !== undefined) out.serverNames = l.serverNames;
  if (l.alpn !== undefined) out.alpn = l.alpn;
  else if (l.protocol === undefined) out.alpn = ['smtp'];
  if (l.minVersion !== undefined) out.minVersion = l.minVersion;
  out.backend = { address: `${l.backendHost ?? '127.0.0.1'}:${l.backendPort}`, proxyProtocol: l.proxyProtocol ?? 'v2' };
  if (l.timeouts !== undefined) out.timeouts = l.timeouts;
  return out;
}

/** Block-style YAML, as an admin would write it. */
export function configYaml(spec: ConfigSpec): string {
  return stringify({
    log: { level: spec.level ?? 'debug' },
    certificates: spec.certs.map((c) => ({ cert: c.cert, key: c.key })),
    listeners: spec.listeners.map(listenerObject),
  });
}
