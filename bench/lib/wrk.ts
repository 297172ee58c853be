// wrk runs and their output. wrk is the load generator for the handshake and keep-alive figures.
import { runCapture } from './proc.ts';

export interface WrkResult {
  requests: number;
  seconds: number;
  reqPerSec: number;
  /** Latency percentiles in milliseconds (wrk --latency), null when not printed. */
  p50Ms: number | null;
  p99Ms: number | null;
  errors: { connect: number; read: number; write: number; timeout: number; non2xx: number };
}

function toMs(v: string, unit: string): number {
  const x = Number(v);
  return unit === 'us' ? x / 1000 : unit === 's' ? x * 1000 : unit === 'm' ? x * 60_000 : x;
}

export function parseWrk(out: string): WrkResult {
  const req = /(\d+) requests in ([\d.]+)(us|ms|s|m)/.exec(out);
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
  if (!req || !rps) throw new Error(`cannot parse wrk output: ${out.slice(0, 400)}`);
  const pct = (p: string): number | null => {
    const m = new RegExp(`^\\s*${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(out);
    return m ? toMs(m[1]!, m[2]!) : null;
  };
  const se = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  return {
    requests: Number(req[1]),
    seconds: toMs(req[2]!, req[3]!) / 1000,
    reqPerSec: Number(rps[1]),
    p50Ms: pct('50'),
    p99Ms: pct('99'),
    errors: {
      connect: Number(se?.[1] ?? 0), read: Number(se?.[2] ?? 0), write: Number(se?.[3] ?? 0),
      timeout: Number(se?.[4] ?? 0), non2xx: Number(non2xx?.[1] ?? 0),
    },
  };
}

export interface WrkOptions {
  url: string;
  connections: number;
  seconds: number;
  close: boolean;
  /** The LD_PRELOAD shim (full handshakes, SNI); null for plaintext. */
  shim: string | null;
  sni: string;
  /** A Lua script (wrk -s), e.g. the paced load's delay(). */
  script?: string;
}

export async function runWrk(wrk: string, o: WrkOptions): Promise<WrkResult> {
  const args = ['-t1', `-c${o.connections}`, `-d${o.seconds}s`, '--latency', '--timeout', '5s'];
  if (o.close) args.push('-H', 'Connection: close');
  if (o.script) args.push('-s', o.script);
  args.push(o.url);
  const env: NodeJS.ProcessEnv = { ...process.env, BENCH_SNI: o.sni };
  if (o.shim) env.LD_PRELOAD = o.shim;
  const r = await runCapture(wrk, args, { env, timeoutMs: (o.seconds + 20) * 1000 });
  if (r.code !== 0) throw new Error(`wrk exited ${r.code}: ${(r.stderr || r.stdout).slice(0, 400)}`);
  return parseWrk(r.stdout);
}

export function wrkErrorCount(r: WrkResult): number {
  const e = r.errors;
  return e.connect + e.read + e.write + e.timeout + e.non2xx;
}
