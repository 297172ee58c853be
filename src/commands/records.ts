// `postern records [--check] [--resolver ADDR] [--json]`: the DNS records to publish for
// MTA-STS, TLS-RPT and DANE; with --check, each one looked up (the system resolver, or ADDR) and
// reported present, missing or stale. Exit 0 when all are present, 1 otherwise: for cron and CI.
import { promises as dnsp } from 'node:dns';
import { validateFile, printProblems } from './load.ts';
import { recordsFor, zoneLines, type DnsRecord, type NextKey } from '../mta-sts/records.ts';
import { nextKeyAge } from '../acme/manager.ts';
import { liveDir } from '../acme/storage.ts';
import type { PosternConfig } from '../config/types.ts';

/** The next keys of planned DANE rollovers (acme), read from the storage. */
export function nextKeys(config: PosternConfig): NextKey[] {
  const acme = config.acme;
  if (!acme) return [];
  return acme.keepKey.flatMap((hostname) =>
    acme.keyTypes.flatMap((t) => {
      const next = nextKeyAge(liveDir(acme.storage, hostname, t));
      return next ? [{ hostname, keyPem: next.keyPem }] : [];
    }),
  );
}

export type Status = 'present' | 'missing' | 'stale';

export interface Checked extends DnsRecord {
  status: Status;
  /** What DNS has instead (stale), or the lookup error (missing). */
  found: string[];
}

/** TXT values that start with `prefix`, joined per record (a TXT record may be split in strings). */
async function txt(resolver: dnsp.Resolver, name: string, prefix: string): Promise<string[]> {
  const all = await resolver.resolveTxt(name);
  return all.map((parts) => parts.join('')).filter((t) => t.toLowerCase().startsWith(prefix.toLowerCase()));
}

/** "v=STSv1; id=abc" -> { v: STSv1, id: abc }: fields by name, whitespace around ";" ignored. */
function fields(record: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const part of record.split(';')) {
    const i = part.indexOf('=');
    if (i > 0) m.set(part.slice(0, i).trim().toLowerCase(), part.slice(i + 1).trim());
  }
  return m;
}

export async function checkRecord(resolver: dnsp.Resolver, r: DnsRecord): Promise<Checked> {
  try {
    if (r.type === 'TLSA') {
      const all = await resolver.resolveTlsa(r.name);
      const found = all.map((t) => `${t.certUsage} ${t.selector} ${t.match} ${Buffer.from(t.data).toString('hex')}`);
      return { ...r, status: found.includes(r.value) ? 'present' : found.length ? 'stale' : 'missing', found };
    }
    const prefix = r.kind === 'mta-sts' ? 'v=STSv1' : 'v=TLSRPTv1';
    const found = await txt(resolver, r.name, prefix);
    if (found.length === 0) return { ...r, status: 'missing', found };
    const want = fields(r.value);
    const key = r.kind === 'mta-sts' ? 'id' : 'rua';
    // rua is a list: RFC 8460 section 3 allows whitespace around its commas, and its order means nothing.
    const norm = (v: string | undefined) => (key === 'rua' ? (v ?? '').split(',').map((u) => u.trim()).sort().join(',') : v);
    // RFC 8461 section 3.1: more than one STSv1 record is as good as none.
    const ok = found.length === 1 && norm(fields(found[0]!).get(key)) === norm(want.get(key));
    return { ...r, status: ok ? 'present' : 'stale', found };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTFOUND' || code === 'ENODATA') return { ...r, status: 'missing', found: [] };
    return { ...r, status: 'missing', found: [`lookup failed: ${code ?? (err as Error).message}`] };
  }
}

export async function recordsCommand(
  file: string,
  opts: { check: boolean; resolver?: string | undefined; json: boolean },
  out: NodeJS.WritableStream = process.stdout,
  err: NodeJS.WritableStream = process.stderr,
): Promise<number> {
  const v = validateFile(file);
  if (!v.ok) {
    printProblems(v.errors, v.warnings, err);
    return 1;
  }
  const records = recordsFor(v.config, v.store, nextKeys(v.config));
  if (records.length === 0) {
    err.write(`postern records: nothing to publish: ${file} has no mtaSts section and no role: mx listener\n`);
    return 1;
  }
  if (!opts.check) {
    if (opts.json) out.write(`${JSON.stringify({ records }, null, 2)}\n`);
    else out.write(zoneLines(records));
    return 0;
  }
  const resolver = new dnsp.Resolver({ timeout: 3000, tries: 2 });
  if (opts.resolver) resolver.setServers([opts.resolver]);
  const checked = await Promise.all(records.map((r) => checkRecord(resolver, r)));
  if (opts.json) out.write(`${JSON.stringify({ records: checked }, null, 2)}\n`);
  else {
    for (const c of checked) {
      out.write(`${c.status.padEnd(8)} ${c.name} ${c.type} ${c.value}\n`);
      if (c.status !== 'present' && c.found.length) out.write(`         found: ${c.found.join(' | ')}\n`);
    }
  }
  return checked.every((c) => c.status === 'present') ? 0 : 1;
}
