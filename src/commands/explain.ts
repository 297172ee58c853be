// `postern explain`: what postern would do for a given ClientHello (SNI, ALPN) on each listener,
// computed by the same pure policy function the daemon runs for every connection.
import { validateFile, printProblems } from './load.ts';
import { decide } from '../tls/sni-policy.ts';
import { ALERT_NAMES } from '../tls/alerts.ts';
import { describeEntry } from './check.ts';

export interface ExplainOptions {
  listener?: string;
  /** The SNI to try; undefined means a ClientHello without SNI. */
  sni?: string;
  alpn?: string[];
  json: boolean;
}

export function explainCommand(file: string, opts: ExplainOptions, out: NodeJS.WritableStream = process.stdout): number {
  const v = validateFile(file);
  if (!v.ok) {
    printProblems(v.errors, v.warnings);
    return 1;
  }
  const listeners = opts.listener === undefined ? v.config.listeners : v.config.listeners.filter((l) => l.name === opts.listener);
  if (listeners.length === 0) {
    process.stderr.write(`postern explain: no listener named "${opts.listener}" (have: ${v.config.listeners.map((l) => l.name).join(', ')})\n`);
    return 1;
  }
  const input = { serverName: opts.sni === undefined ? null : Buffer.from(opts.sni, 'latin1'), alpn: opts.alpn ?? null };
  const rows = listeners.map((l) => {
    const r = decide(l, input, v.store);
    return r.action === 'serve'
      ? { listener: l.name, policy: l.sni, sniClass: r.sniClass, decision: r.decision, reason: r.reason, alpn: r.alpn, certificates: r.unit.entries.map((e) => describeEntry(e, r.sniClass, Date.now())), alert: null }
      : { listener: l.name, policy: l.sni, sniClass: r.sniClass, decision: r.decision, reason: r.detail, alpn: null, certificates: null, alert: `${ALERT_NAMES[r.alert]} (${r.alert})` };
  });
  if (opts.json) {
    out.write(JSON.stringify(rows, null, 2) + '\n');
    return 0;
  }
  const asked = `sni ${opts.sni === undefined ? '(none)' : JSON.stringify(opts.sni)}${opts.alpn ? `, alpn ${opts.alpn.join(',')}` : ''}`;
  for (const r of rows) {
    const what = r.certificates
      ? `${r.decision}: ${r.certificates.map((c) => `${c.file} (${c.names.join(', ')}; ${c.keyType}; not after ${c.notAfter})`).join(' + ')}${r.alpn ? `, alpn ${r.alpn}` : ''}`
      : `refused: alert ${r.alert}`;
    out.write(`${r.listener} [${r.policy}] ${asked}: class ${r.sniClass ?? '-'}${r.reason ? ` (${r.reason})` : ''} -> ${what}\n`);
  }
  return 0;
}
