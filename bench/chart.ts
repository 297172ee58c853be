// Redraws bench/results/latest.svg from a results file (the chart `npm run bench` writes), e.g.
// after a partial run overwrote it:  node bench/chart.ts bench/results/<date>.json
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { svgChart, type TargetSummary } from './lib/report.ts';

const REPO_DIR = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const file = process.argv[2];
if (!file) {
  console.error('usage: node bench/chart.ts bench/results/<date>.json');
  process.exit(2);
}
interface Result {
  date: string; mode: string; settings: { runs: number; proxyCore: number; clientCore: number };
  environment: { cpuModel: string; cpus: number; kernel: string };
  versions: Record<string, string>; descriptions: Record<string, string>;
  summary: Record<string, TargetSummary['summary']>;
}
const r = JSON.parse(fs.readFileSync(file, 'utf8')) as Result;
const targets: TargetSummary[] = Object.entries(r.summary).map(([name, summary]) => ({ name, summary }));
const versions = Object.entries(r.versions).filter(([name]) => name !== 'direct').map(([name, v]) => `${name} ${v.split(' (')[0]}`).join(', ');
const out = path.join(REPO_DIR, 'bench', 'results', 'latest.svg');
fs.writeFileSync(out, svgChart(targets,
  `TLS termination, one core each, TLS 1.3, ECDSA P-256 (${r.mode === 'quick' ? 'QUICK MODE, not a baseline' : `median of ${r.settings.runs} runs`})`,
  [
    `${r.date.slice(0, 10)}, ${r.environment.cpuModel}, ${r.environment.cpus} CPUs, Linux ${r.environment.kernel}; proxies on core ${r.settings.proxyCore}, wrk/backend/clients on core ${r.settings.clientCore}.`,
    versions,
    `direct = the backend in plaintext without a proxy (the ceiling). Data: ${path.relative(REPO_DIR, path.resolve(file))}`,
  ]));
console.log(`Wrote ${path.relative(process.cwd(), out)}`);
