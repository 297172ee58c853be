// `postern check`: validate the configuration and certificates without binding anything, and
// show, per listener, which certificate serves its hostname.
import { validateFile, printProblems } from './load.ts';
import { formatConfigError } from '../config/load.ts';
import type { CertEntry } from '../tls/certstore.ts';

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
  };
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
  const listeners = v.config.listeners.map((l) => {
    const m = v.store.lookup(l.hostname)!;
    return {
      name: l.name,
      listen: `${l.listen.host.includes(':') ? `[${l.listen.host}]` : l.listen.host}:${l.listen.port}`,
      protocol: l.protocol,
      tls: l.tls,
      sni: l.sni,
      hostname: l.hostname,
      alpn: l.alpn,
      backend: `${l.backend.address.host}:${l.backend.address.port}`,
      proxyProtocol: l.backend.proxyProtocol,
      certificates: m.unit.entries.map((e) => describeEntry(e, m.match, now)),
    };
  });
  if (opts.json) {
    out.write(JSON.stringify({ ok: true, listeners, warnings: v.warnings.map(formatConfigError) }, null, 2) + '\n');
    return 0;
  }
  for (const l of listeners) {
    out.write(`listener ${l.name}: ${l.listen} ${l.protocol}/${l.tls} sni=${l.sni} hostname=${l.hostname} alpn=${l.alpn?.join(',') ?? 'off'} -> ${l.backend} (proxy ${l.proxyProtocol})\n`);
    for (const c of l.certificates) {
      out.write(
        `  certificate ${c.file} (${c.match} match)\n` +
          `    subject ${c.subject}; names ${c.names.join(', ')}\n` +
          `    issuer ${c.issuer}; ${c.keyType}; not after ${c.notAfter} (${c.daysLeft} days left)\n`,
      );
    }
  }
  printProblems([], v.warnings, out);
  out.write(`${file}: OK\n`);
  return 0;
}
