// `postern check`: validate the configuration and certificates without binding anything, and
// show every effective value of every listener (what was written and every default it got, the
// role-dependent ones included) with the certificate that serves its hostname.
import { validateFile, printProblems } from './load.ts';
import { formatConfigError } from '../config/load.ts';
import { acmeBlock, acmeRows } from './acme.ts';
import { recordsFor, zoneLines } from '../mta-sts/records.ts';
import { nextKeys } from './records.ts';
import type { CertEntry, CertStore } from '../tls/certstore.ts';
import type { BackendConfig, HostPort, ListenerConfig } from '../config/types.ts';

export function describeEntry(e: CertEntry, match: string, now: number) {
  return {
    file: e.certFile,
    match,
    subject: e.subject,
    names: e.names,
    issuer: e.issuer,
    keyType: e.keyType,
    notAfter: e.notAfter.toISOString(),
    daysLeft: Math.floor((e.notAfter.getTime() - now) / 86_400_000),
    /** Obtained and renewed by postern itself (from the acme storage). */
    acme: e.source === 'acme.storage',
  };
}

const hostPort = (h: HostPort) => `${h.host.includes(':') ? `[${h.host}]` : h.host}:${h.port}`;
const backendOf = (b: BackendConfig) => ({ address: hostPort(b.address), proxyProtocol: b.proxyProtocol });

const UNITS: Array<[string, number]> = [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]];

/** Milliseconds back in the config's own form: 600000 -> "10m", 1500 -> "1500ms". */
export function formatDuration(ms: number): string {
  for (const [unit, size] of UNITS) if (ms % size === 0) return `${ms / size}${unit}`;
  return `${ms}ms`;
}

/**
 * Every effective value of one listener, as `check --json` prints it. Durations are in
 * milliseconds (the `...Ms` keys); the STARTTLS-only values are null on implicit listeners, and
 * `role` is null for imap, pop3 and tls listeners (they serve only your own users).
 */
export function effectiveListener(l: ListenerConfig, store: CertStore, now: number) {
  // Null only for a name ACME has not obtained yet (any other uncovered name fails the check).
  const m = store.lookup(l.hostname);
  return {
    name: l.name,
    listen: hostPort(l.listen),
    protocol: l.protocol,
    tls: l.tls,
    role: l.role,
    hostname: l.hostname,
    sni: l.sni,
    serverNames: l.serverNames,
    alpn: l.alpn,
    minVersion: l.minVersion,
    requireTls: l.starttls?.requireTls ?? null,
    greeting: l.starttls?.greeting ?? null,
    capabilities: l.starttls ? { probeIntervalMs: l.starttls.probeIntervalMs, fallback: l.starttls.fallbackCapabilities } : null,
    timeouts: { ...l.timeouts },
    limits: { ...l.limits },
    backend: backendOf(l.backend),
    routes: l.routes.map((r) => ({ serverNames: r.serverNames, backend: backendOf(r.backend) })),
    acceptProxyProtocol: l.acceptProxyProtocol ? { from: l.acceptProxyProtocol.from.map((c) => c.text) } : null,
    certificates: m ? m.unit.entries.map((e) => describeEntry(e, m.match, now)) : [],
  };
}

type Effective = ReturnType<typeof effectiveListener>;

/** One block per listener: a header line, then one line per setting. */
export function listenerBlock(l: Effective): string {
  const row = (key: string, value: string) => `  ${key.padEnd(20)}${value}\n`;
  const backend = (b: { address: string; proxyProtocol: string }) => `${b.address} (proxyProtocol ${b.proxyProtocol})`;
  const t = l.timeouts;
  let out = `listener ${l.name}: ${l.listen} ${l.protocol}/${l.tls}${l.role ? ` role=${l.role}` : ''}\n`;
  out += row('hostname', l.hostname);
  out += row('sni', l.sni);
  out += row('serverNames', l.serverNames?.join(', ') ?? 'any loaded certificate');
  out += row('alpn', l.alpn?.join(', ') ?? 'off');
  out += row('minVersion', l.minVersion);
  if (l.tls === 'starttls') {
    out += row('requireTls', String(l.requireTls));
    out += row('greeting', JSON.stringify(l.greeting));
    out += row('capabilities', `probe every ${formatDuration(l.capabilities!.probeIntervalMs)}; fallback ${l.capabilities!.fallback.join(', ') || '(none)'}`);
  }
  out += row(
    'timeouts',
    `handshake ${formatDuration(t.handshakeMs)}, connect ${formatDuration(t.connectMs)}, idle ${formatDuration(t.idleMs)}, starttls ${formatDuration(t.starttlsMs)}, backendReply ${formatDuration(t.backendReplyMs)}`,
  );
  out += row('limits', `maxConnections ${l.limits.maxConnections}, maxConnectionsPerClient ${l.limits.maxConnectionsPerClient}`);
  out += row('backend', backend(l.backend));
  if (l.routes.length === 0) out += row('routes', 'none');
  for (const r of l.routes) out += row('route', `${r.serverNames.join(', ')} -> ${backend(r.backend)}`);
  out += row('acceptProxyProtocol', l.acceptProxyProtocol ? `from ${l.acceptProxyProtocol.from.join(', ')}` : 'none');
  if (l.certificates.length === 0) out += row('certificate', 'none yet: obtained by acme at start');
  for (const c of l.certificates) {
    out +=
      `  certificate ${c.file} (${c.match} match${c.acme ? ', acme-managed' : ''})\n` +
      `    subject ${c.subject}; names ${c.names.join(', ')}\n` +
      `    issuer ${c.issuer}; ${c.keyType}; not after ${c.notAfter} (${c.daysLeft} days left)\n`;
  }
  return out;
}

export function checkCommand(file: string, opts: { json: boolean }, out: NodeJS.WritableStream = process.stdout): number {
  const v = validateFile(file);
  if (!v.ok) {
    if (opts.json) out.write(JSON.stringify({ ok: false, errors: v.errors.map(formatConfigError), warnings: v.warnings.map(formatConfigError) }, null, 2) + '\n');
    else {
      printProblems(v.errors, v.warnings, out);
      out.write(`${file}: ${v.errors.length} error(s)\n`);
    }
    return 1;
  }
  const now = Date.now();
  const listeners = v.config.listeners.map((l) => effectiveListener(l, v.store, now));
  // The DNS records this configuration needs (MTA-STS, TLS-RPT, TLSA of every key in service,
  // and of a planned rollover's next key): what `postern records` prints.
  const records = recordsFor(v.config, v.store, nextKeys(v.config));
  const acme = v.config.acme;
  const acmeRowsNow = acme ? acmeRows(acme, new Date(now)) : null;
  if (opts.json) {
    const acmeJson = acme ? { directory: acme.directory, challenge: acme.challenge, storage: acme.storage, keyTypes: acme.keyTypes, names: acme.names, certificates: acmeRowsNow } : null;
    const sts = v.config.mtaSts;
    const mtaSts = sts ? { listen: `${sts.listen.host}:${sts.listen.port}`, domains: sts.domains, mode: sts.mode, mx: sts.mx, maxAge: sts.maxAgeS, id: sts.id, policy: sts.text } : null;
    out.write(JSON.stringify({ ok: true, listeners, acme: acmeJson, mtaSts, records, warnings: v.warnings.map(formatConfigError) }, null, 2) + '\n');
    return 0;
  }
  for (const l of listeners) out.write(listenerBlock(l));
  if (acme) out.write(acmeBlock(acme, acmeRowsNow!));
  if (v.config.mtaSts || v.config.listeners.some((l) => l.dane)) out.write(`DNS records to publish (postern records --check looks them up):\n${zoneLines(records).trimEnd().replace(/^/gm, '  ')}\n`);
  printProblems([], v.warnings, out);
  out.write(`${file}: OK\n`);
  return 0;
}
