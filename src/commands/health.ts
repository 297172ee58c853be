// `postern health`: the container's HEALTHCHECK (node:24-bookworm-slim has no curl or wget).
// GET /healthz on the admin endpoint, exit 0 on a 200. The address comes from `admin.listen` in
// the configuration file (read as YAML only: the certificates are not loaded, so the probe stays
// cheap and works whatever state they are in); a wildcard address is probed on loopback. With
// no admin endpoint configured there is nothing to probe: it says so and exits 0, so one
// HEALTHCHECK line serves every configuration.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { parse } from 'yaml';
import { parseHostPort } from '../config/schema.ts';

export interface HealthOptions {
  url?: string | undefined;
  timeoutMs: number;
}

/** The /healthz URL for an `admin.listen` value; a wildcard address becomes loopback. */
export function healthUrl(listen: string): string | null {
  const p = parseHostPort(listen, false);
  if (!p.ok) return null;
  const host = p.value.host === '0.0.0.0' ? '127.0.0.1' : p.value.host === '::' ? '::1' : p.value.host;
  return `http://${host.includes(':') ? `[${host}]` : host}:${p.value.port}/healthz`;
}

export async function healthCommand(file: string, opts: HealthOptions, out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): Promise<number> {
  let url = opts.url;
  if (url === undefined) {
    let doc: unknown;
    try {
      doc = parse(readFileSync(file, 'utf8'));
    } catch (e) {
      err.write(`postern health: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}\n`);
      return 1;
    }
    const listen = (doc as { admin?: { listen?: unknown } } | null)?.admin?.listen;
    if (listen === undefined) {
      out.write(`postern health: no admin endpoint in ${file}; nothing to probe\n`);
      return 0;
    }
    const u = typeof listen === 'string' ? healthUrl(listen) : null;
    if (u === null) {
      err.write(`postern health: admin.listen in ${file} is not host:port: ${JSON.stringify(listen)}\n`);
      return 1;
    }
    url = u;
  }
  const status = await new Promise<number | string>((resolve) => {
    const req = http.get(url, { timeout: opts.timeoutMs, agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => {
      req.destroy();
      resolve(`no answer within ${opts.timeoutMs} ms`);
    });
    req.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
  if (status === 200) {
    out.write(`postern health: ${url} 200\n`);
    return 0;
  }
  err.write(`postern health: ${url} ${typeof status === 'number' ? `answered ${status}` : status}\n`);
  return 1;
}
