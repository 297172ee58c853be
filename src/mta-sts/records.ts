// The DNS records an admin publishes for MTA-STS (RFC 8461 section 3.1), TLS-RPT (RFC 8460
// section 3) and DANE (RFC 7672 section 3.1), computed from the configuration and the keys in
// service: what `postern records` prints and `postern records --check` compares with DNS.
import type { PosternConfig } from '../config/types.ts';
import type { CertStore } from '../tls/certstore.ts';
import { mxHostnames } from '../config/load.ts';
import { spkiSha256, spkiSha256OfKey } from './tlsa.ts';

export type RecordKind = 'mta-sts' | 'tls-rpt' | 'tlsa';

export interface DnsRecord {
  kind: RecordKind;
  /** Owner name, without the trailing dot. */
  name: string;
  type: 'TXT' | 'TLSA';
  /** TXT: the string; TLSA: "3 1 1 <hex>". */
  value: string;
  /** Why it is there, for the admin. */
  note: string;
}

/** TLSA for the next key of a planned rollover: published before it is used. */
export interface NextKey {
  hostname: string;
  keyPem: string;
}

export function recordsFor(config: PosternConfig, store: CertStore, next: NextKey[] = []): DnsRecord[] {
  const out: DnsRecord[] = [];
  const sts = config.mtaSts;
  for (const d of sts?.domains ?? []) {
    out.push({ kind: 'mta-sts', name: `_mta-sts.${d}`, type: 'TXT', value: `v=STSv1; id=${sts!.id}`, note: `policy at https://mta-sts.${d}/.well-known/mta-sts.txt (mode ${sts!.mode}); mta-sts.${d} must point at this host` });
    if (sts!.tlsRpt.length > 0) out.push({ kind: 'tls-rpt', name: `_smtp._tls.${d}`, type: 'TXT', value: `v=TLSRPTv1; rua=${sts!.tlsRpt.join(',')}`, note: 'where senders send TLS reports (RFC 8460)' });
  }
  const daneHosts = new Set(config.listeners.filter((l) => l.role === 'mx' && l.dane).map((l) => l.hostname));
  for (const host of mxHostnames(config.listeners)) {
    const unit = store.lookup(host)?.unit;
    const seen = new Set<string>();
    for (const e of unit?.entries ?? []) {
      const sha = spkiSha256(e.certPem);
      if (seen.has(sha)) continue;
      seen.add(sha);
      out.push({ kind: 'tlsa', name: `_25._tcp.${host}`, type: 'TLSA', value: `3 1 1 ${sha}`, note: `${e.keyType} key of ${e.certFile}${daneHosts.has(host) ? '' : ' (publish only with dane: true on the listener)'}` });
    }
    for (const n of next.filter((x) => x.hostname === host)) {
      const sha = spkiSha256OfKey(n.keyPem);
      if (seen.has(sha)) continue;
      seen.add(sha);
      out.push({ kind: 'tlsa', name: `_25._tcp.${host}`, type: 'TLSA', value: `3 1 1 ${sha}`, note: 'the NEXT key (planned rollover): publish it now, beside the current one' });
    }
  }
  return out;
}

/** Zone-file lines, ready to paste. */
export function zoneLines(records: DnsRecord[]): string {
  return records.map((r) => `${r.name}. IN ${r.type} ${r.type === 'TXT' ? JSON.stringify(r.value) : r.value}    ; ${r.note}`).join('\n') + (records.length ? '\n' : '');
}
