// `postern acme status` and `postern acme renew --name N`.
// status reads the storage (the certificates, and state.json that the running manager keeps),
// so it works whether or not postern runs, and from another container that mounts the storage.
// renew asks the running daemon (POST /acme/renew on the admin endpoint, from loopback) and
// waits for the outcome: only the process that holds the account and answers the challenges can
// order.
import http from 'node:http';
import { loadConfigFile, formatConfigError } from '../config/load.ts';
import type { AcmeConfig, AcmeKeyType, PosternConfig } from '../config/types.ts';
import { liveDir, readIssued, readState, type CertState } from '../acme/storage.ts';
import { daysLeft } from '../acme/schedule.ts';
import { healthUrl } from './health.ts';

export interface AcmeRow {
  name: string;
  keyType: AcmeKeyType;
  folder: string;
  notAfter: string | null;
  daysLeft: number | null;
  nextAttempt: string | null;
  lastSuccess: string | null;
  lastError: string | null;
  failures: number;
}

/** Every managed certificate as the storage holds it. */
export function acmeRows(acme: AcmeConfig, now = new Date()): AcmeRow[] {
  const state = readState(acme.storage);
  const find = (name: string, keyType: AcmeKeyType): CertState | undefined => state?.certificates.find((c) => c.name === name && c.keyType === keyType);
  return acme.names.flatMap((name) =>
    acme.keyTypes.map((keyType) => {
      const folder = liveDir(acme.storage, name, keyType);
      const issued = readIssued(folder);
      const s = find(name, keyType);
      return {
        name,
        keyType,
        folder,
        notAfter: issued?.notAfter.toISOString() ?? null,
        daysLeft: issued ? daysLeft(issued.notAfter, now) : null,
        nextAttempt: s?.nextRenewal ?? null,
        lastSuccess: s?.lastSuccess ?? null,
        lastError: s?.lastError ?? null,
        failures: s?.failures ?? 0,
      };
    }),
  );
}

export function acmeBlock(acme: AcmeConfig, rows: AcmeRow[]): string {
  let out = `acme: ${acme.directory} (${acme.challenge}${acme.http ? ` on ${acme.http.listen.host}:${acme.http.listen.port}` : ''}), storage ${acme.storage}\n`;
  for (const r of rows) {
    const have = r.notAfter === null ? 'not issued yet' : r.daysLeft! < 0 ? `EXPIRED on ${r.notAfter}` : `valid until ${r.notAfter} (${r.daysLeft} days left)`;
    out += `  ${r.name} ${r.keyType.padEnd(5)} ${have}`;
    if (r.nextAttempt) out += `; next ${r.notAfter ? 'renewal' : 'attempt'} ${r.nextAttempt}`;
    out += '\n';
    if (r.lastError) out += `    last error (${r.failures} in a row): ${r.lastError}\n`;
  }
  return out;
}

function loadAcme(file: string, err: NodeJS.WritableStream): PosternConfig | null {
  const loaded = loadConfigFile(file);
  if (!loaded.ok) {
    for (const e of loaded.errors) err.write(`error: ${formatConfigError(e)}\n`);
    return null;
  }
  if (!loaded.loaded.config.acme) {
    err.write(`postern acme: ${file} has no acme section; nothing is managed\n`);
    return null;
  }
  return loaded.loaded.config;
}

export function acmeStatusCommand(file: string, opts: { json: boolean }, out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): number {
  const config = loadAcme(file, err);
  if (!config) return 1;
  const acme = config.acme!;
  const rows = acmeRows(acme);
  if (opts.json) out.write(`${JSON.stringify({ directory: acme.directory, challenge: acme.challenge, storage: acme.storage, certificates: rows }, null, 2)}\n`);
  else out.write(acmeBlock(acme, rows));
  // Exit 1 when a managed name has no valid certificate: usable from cron and monitoring.
  return rows.every((r) => r.daysLeft !== null && r.daysLeft >= 0) ? 0 : 1;
}

function request(method: string, url: string, timeoutMs: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, timeout: timeoutMs, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body.length < 1 << 20 ? (body += d) : undefined));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/**
 * http://host:port of the running daemon's admin endpoint, from admin.listen (a wildcard address
 * on loopback); null, with the reason on `err`, without one. Only the daemon can order: it
 * holds the account and answers the challenges.
 */
function adminBase(config: PosternConfig, file: string, what: string, err: NodeJS.WritableStream): string | null {
  const listen = config.admin?.listen;
  if (!listen) {
    err.write(`postern acme ${what}: needs the running daemon's admin endpoint (admin.listen in ${file}): the daemon holds the account and answers the challenges\n`);
    return null;
  }
  return healthUrl(`${listen.host.includes(':') ? `[${listen.host}]` : listen.host}:${listen.port}`)!.replace(/\/healthz$/, '');
}

export async function acmeRenewCommand(
  file: string,
  opts: { name: string; timeoutMs: number; url?: string | undefined },
  out: NodeJS.WritableStream = process.stdout,
  err: NodeJS.WritableStream = process.stderr,
): Promise<number> {
  const config = loadAcme(file, err);
  if (!config) return 1;
  const name = opts.name.toLowerCase();
  const base = opts.url ?? adminBase(config, file, 'renew', err);
  if (base === null) return 1;
  const started = Date.now();
  let r: { status: number; body: string };
  try {
    r = await request('POST', `${base}/acme/renew?name=${encodeURIComponent(name)}`, 5000);
  } catch (e) {
    err.write(`postern acme renew: ${base}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message} (is postern running?)\n`);
    return 1;
  }
  if (r.status !== 202) {
    err.write(`postern acme renew: the daemon answered ${r.status}: ${r.body.trim()}\n`);
    return 1;
  }
  out.write(`postern acme renew: ${name} queued; waiting for the order (up to ${Math.round(opts.timeoutMs / 1000)} s)\n`);
  const deadline = started + opts.timeoutMs;
  while (Date.now() < deadline) {
    await new Promise((res) => setTimeout(res, 500));
    let s: { certificates?: Array<{ name: string; keyType: string; lastAttempt: string | null; lastSuccess: string | null; lastError: string | null; notAfter: string | null }> };
    try {
      s = JSON.parse((await request('GET', `${base}/acme`, 5000)).body);
    } catch {
      continue;
    }
    const mine = (s.certificates ?? []).filter((c) => c.name === name);
    const done = mine.filter((c) => c.lastAttempt !== null && Date.parse(c.lastAttempt) >= started - 1000 && (c.lastSuccess !== null && Date.parse(c.lastSuccess) >= Date.parse(c.lastAttempt) || c.lastError !== null));
    if (mine.length > 0 && done.length === mine.length) {
      let failed = 0;
      for (const c of mine) {
        const ok = c.lastSuccess !== null && Date.parse(c.lastSuccess) >= Date.parse(c.lastAttempt!);
        if (!ok) failed++;
        out.write(ok ? `  ${c.name} ${c.keyType}: renewed, valid until ${c.notAfter}\n` : `  ${c.name} ${c.keyType}: FAILED: ${c.lastError}\n`);
      }
      return failed === 0 ? 0 : 1;
    }
  }
  err.write(`postern acme renew: no outcome within ${Math.round(opts.timeoutMs / 1000)} s; see the daemon's log and postern acme status\n`);
  return 1;
}

/** `postern acme rollover --name N`: a new key made by the running daemon; prints its TLSA records. */
export async function acmeRolloverCommand(file: string, opts: { name: string; url?: string | undefined }, out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): Promise<number> {
  const config = loadAcme(file, err);
  if (!config) return 1;
  const base = opts.url ?? adminBase(config, file, 'rollover', err);
  if (base === null) return 1;
  let r: { status: number; body: string };
  try {
    r = await request('POST', `${base}/acme/rollover?name=${encodeURIComponent(opts.name.toLowerCase())}`, 5000);
  } catch (e) {
    err.write(`postern acme rollover: ${base}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message} (is postern running?)\n`);
    return 1;
  }
  if (r.status !== 202) {
    err.write(`postern acme rollover: the daemon answered ${r.status}: ${r.body.trim()}\n`);
    return 1;
  }
  const { planned } = JSON.parse(r.body) as { planned: Array<{ keyType: string; tlsa: string; switchAt: string; pending: boolean }> };
  out.write('Publish these TLSA records now, beside the current ones (postern records shows both):\n');
  for (const p of planned) out.write(`${p.tlsa}    ; ${p.keyType}, in service from ${p.switchAt}${p.pending ? ' (a rollover already pending: its key is kept)' : ''}\n`);
  return 0;
}
