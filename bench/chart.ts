// Redraws bench/results/latest.svg from a results file (the chart `npm run bench` writes), e.g.
// after a partial run overwrote it:  node bench/chart.ts bench/results/<date>.json
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchChart, type TargetSummary } from './lib/report.ts';

const REPO_DIR = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const file = process.argv[2];
if (!file) {
  console.error('usage: node bench/chart.ts bench/results/<date>.json');
  process.exit(2);
}
interface Result {
  date: string; mode: string; settings: { runs: number; proxyCore: number; clientCore: number };
  environment: { cpuModel: string; cpus: number; kernel: string };
  versions: Record<string, string>;
  summary: Record<string, TargetSummary['summary']>;
}
const r = JSON.parse(fs.readFileSync(file, 'utf8')) as Result;
const out = path.join(REPO_DIR, 'bench', 'results', 'latest.svg');
fs.writeFileSync(out, benchChart(Object.entries(r.summary).map(([name, summary]) => ({ name, summary })), {
  date: r.date, mode: r.mode, ...r.environment, ...r.settings,
  versions: r.versions, dataFile: path.relative(REPO_DIR, path.resolve(file)),
}));
console.log(`Wrote ${path.relative(process.cwd(), out)}`);
