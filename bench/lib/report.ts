// Medians, the text tables, the target check and the SVG chart.
import type { CpuUse } from './proc.ts';

export type MetricKey =
  | 'handshakesPerSec' | 'keepAliveReqPerSec' | 'keepAliveP50Ms' | 'keepAliveP99Ms'
  | 'uploadMBps' | 'downloadMBps' | 'idleSessionKB' | 'starttlsPerSec'
  | 'handshakesPerCoreSec' | 'keepAlivePerCoreSec' | 'uploadMBPerCoreSec' | 'downloadMBPerCoreSec' | 'starttlsPerCoreSec'
  // issue 17: resumption
  | 'resumedPerSec' | 'resumedPerCoreSec' | 'reuseRatio' | 'ticketsPerResumed' | 'singleUseReuseRatio'
  | 'clientFullPerSec' | 'clientFullPerCoreSec'
  // issue 17: workers (CPU seconds of the whole process tree per 1,000 full handshakes)
  | 'cpuPer1000Full' | 'pacedPerSec' | 'pacedCpuPer1000'
  // issue 17, target 1: keep-alive requests at a paced load (CPU seconds per 1,000 requests)
  | 'pacedKeepAlivePerSec' | 'pacedKeepAliveCpuPer1000'
  // issue 17: mail sessions, STARTTLS against implicit TLS (starttlsPerSec is smtp-starttls)
  | 'smtpsPerSec' | 'smtpsPerCoreSec' | 'imapStarttlsPerSec' | 'imapStarttlsPerCoreSec' | 'imapsPerSec' | 'imapsPerCoreSec'
  | 'smtpStarttlsIdleKB' | 'smtpsIdleKB' | 'imapStarttlsIdleKB' | 'imapsIdleKB';

export interface Metric {
  key: MetricKey;
  label: string;
  unit: string;
  better: 'higher' | 'lower';
  digits: number;
  /**
   * `measured`: what the load reached; `perCore`: per CPU-second the proxy used (its capacity on
   * one core); `resumption`, `workers` and `mail`: the tables of issue 17.
   */
  table: 'measured' | 'perCore' | 'resumption' | 'workers' | 'mail';
  /** The issue's target for postern: a ratio to HAProxy, or an absolute limit. */
  target?: { kind: 'ratio' | 'absolute'; op: '>=' | '<='; value: number };
}

const RATIO_1 = { kind: 'ratio', op: '>=', value: 1.0 } as const;
const RATIO_95 = { kind: 'ratio', op: '>=', value: 0.95 } as const;

export const METRICS: Metric[] = [
  { key: 'handshakesPerSec', label: 'handshakes/s', unit: '/s', better: 'higher', digits: 0, table: 'measured', target: RATIO_1 },
  { key: 'keepAliveReqPerSec', label: 'keep-alive req/s', unit: '/s', better: 'higher', digits: 0, table: 'measured', target: RATIO_1 },
  { key: 'keepAliveP50Ms', label: 'p50 ms', unit: 'ms', better: 'lower', digits: 2, table: 'measured' },
  { key: 'keepAliveP99Ms', label: 'p99 ms', unit: 'ms', better: 'lower', digits: 2, table: 'measured', target: { kind: 'ratio', op: '<=', value: 1.2 } },
  { key: 'uploadMBps', label: 'upload MB/s', unit: 'MB/s', better: 'higher', digits: 0, table: 'measured', target: RATIO_95 },
  { key: 'downloadMBps', label: 'download MB/s', unit: 'MB/s', better: 'higher', digits: 0, table: 'measured', target: RATIO_95 },
  { key: 'idleSessionKB', label: 'KB/idle session', unit: 'KB', better: 'lower', digits: 1, table: 'measured', target: { kind: 'absolute', op: '<=', value: 20 } },
  { key: 'starttlsPerSec', label: 'STARTTLS/s', unit: '/s', better: 'higher', digits: 0, table: 'measured' },
  { key: 'handshakesPerCoreSec', label: 'handshakes', unit: '/core-s', better: 'higher', digits: 0, table: 'perCore', target: RATIO_1 },
  { key: 'keepAlivePerCoreSec', label: 'keep-alive req', unit: '/core-s', better: 'higher', digits: 0, table: 'perCore', target: RATIO_1 },
  { key: 'uploadMBPerCoreSec', label: 'upload MB', unit: 'MB/core-s', better: 'higher', digits: 0, table: 'perCore', target: RATIO_95 },
  { key: 'downloadMBPerCoreSec', label: 'download MB', unit: 'MB/core-s', better: 'higher', digits: 0, table: 'perCore', target: RATIO_95 },
  { key: 'starttlsPerCoreSec', label: 'STARTTLS sessions', unit: '/core-s', better: 'higher', digits: 0, table: 'perCore' },
  { key: 'clientFullPerSec', label: 'full/s (node client)', unit: '/s', better: 'higher', digits: 0, table: 'resumption' },
  { key: 'clientFullPerCoreSec', label: 'full /core-s (node client)', unit: '/core-s', better: 'higher', digits: 0, table: 'resumption' },
  { key: 'resumedPerSec', label: 'resumed/s', unit: '/s', better: 'higher', digits: 0, table: 'resumption' },
  { key: 'resumedPerCoreSec', label: 'resumed /core-s', unit: '/core-s', better: 'higher', digits: 0, table: 'resumption' },
  { key: 'reuseRatio', label: 'reuse ratio', unit: '', better: 'higher', digits: 3, table: 'resumption' },
  { key: 'ticketsPerResumed', label: 'new tickets per resumption', unit: '', better: 'higher', digits: 2, table: 'resumption' },
  { key: 'singleUseReuseRatio', label: 'reuse ratio, single-use tickets', unit: '', better: 'higher', digits: 3, table: 'resumption' },
  { key: 'cpuPer1000Full', label: 'CPU s per 1,000 (saturated)', unit: 's', better: 'lower', digits: 3, table: 'workers' },
  { key: 'pacedPerSec', label: 'paced handshakes/s', unit: '/s', better: 'higher', digits: 0, table: 'workers' },
  { key: 'pacedCpuPer1000', label: 'CPU s per 1,000 (paced)', unit: 's', better: 'lower', digits: 3, table: 'workers' },
  { key: 'pacedKeepAlivePerSec', label: 'paced keep-alive req/s', unit: '/s', better: 'higher', digits: 0, table: 'workers' },
  { key: 'pacedKeepAliveCpuPer1000', label: 'CPU s per 1,000 keep-alive req (paced)', unit: 's', better: 'lower', digits: 4, table: 'workers' },
  { key: 'smtpsPerSec', label: 'SMTP implicit/s', unit: '/s', better: 'higher', digits: 0, table: 'mail' },
  { key: 'smtpsPerCoreSec', label: 'SMTP implicit', unit: '/core-s', better: 'higher', digits: 0, table: 'mail' },
  { key: 'imapStarttlsPerSec', label: 'IMAP STARTTLS/s', unit: '/s', better: 'higher', digits: 0, table: 'mail' },
  { key: 'imapStarttlsPerCoreSec', label: 'IMAP STARTTLS', unit: '/core-s', better: 'higher', digits: 0, table: 'mail' },
  { key: 'imapsPerSec', label: 'IMAP implicit/s', unit: '/s', better: 'higher', digits: 0, table: 'mail' },
  { key: 'imapsPerCoreSec', label: 'IMAP implicit', unit: '/core-s', better: 'higher', digits: 0, table: 'mail' },
  { key: 'smtpStarttlsIdleKB', label: 'KB/idle SMTP STARTTLS', unit: 'KB', better: 'lower', digits: 1, table: 'mail' },
  { key: 'smtpsIdleKB', label: 'KB/idle SMTP implicit', unit: 'KB', better: 'lower', digits: 1, table: 'mail' },
  { key: 'imapStarttlsIdleKB', label: 'KB/idle IMAP STARTTLS', unit: 'KB', better: 'lower', digits: 1, table: 'mail' },
  { key: 'imapsIdleKB', label: 'KB/idle IMAP implicit', unit: 'KB', better: 'lower', digits: 1, table: 'mail' },
];

/** The mail-session figures per kind (bench/lib/mail-sessions.ts), for the run and the tables. */
export const MAIL_METRICS = {
  'smtp-starttls': { perSec: 'starttlsPerSec', perCore: 'starttlsPerCoreSec', idle: 'smtpStarttlsIdleKB' },
  'smtp-implicit': { perSec: 'smtpsPerSec', perCore: 'smtpsPerCoreSec', idle: 'smtpsIdleKB' },
  'imap-starttls': { perSec: 'imapStarttlsPerSec', perCore: 'imapStarttlsPerCoreSec', idle: 'imapStarttlsIdleKB' },
  'imap-implicit': { perSec: 'imapsPerSec', perCore: 'imapsPerCoreSec', idle: 'imapsIdleKB' },
} as const satisfies Record<string, { perSec: MetricKey; perCore: MetricKey; idle: MetricKey }>;

export type Limit = 'proxy' | 'client' | 'neither';

export interface Measurement {
  value: number;
  /** CPU over the measurement: the proxy tree, each CPU's busy share, other users' processes. */
  cpu: CpuUse | null;
  /** What saturated: the proxy's core, the load generator + backend core, or neither. */
  limitedBy: Limit;
  /** Other processes on the machine used more than a tenth of a core meanwhile. */
  disturbed: boolean;
  /** Tries (a disturbed measurement is repeated in full mode). */
  attempts?: number;
  detail?: Record<string, unknown>;
}

export interface RunRecord {
  run: number;
  position: number;
  startedAt: string;
  sanity: { protocol: string | null; cipher: string | null; tls12Refused: boolean | null } | null;
  measurements: Partial<Record<MetricKey, Measurement>>;
  errors: string[];
}

export interface Summary {
  median: number;
  min: number;
  max: number;
  runs: number;
  /** Runs in which the load generator core, not the proxy, was the limit. */
  clientBound: number;
  /** Runs disturbed by other processes on the machine. */
  disturbed: number;
  /** The figure does not exist for this target (e.g. it never resumed a session): why. */
  notApplicable?: string;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function summarize(runs: RunRecord[]): Partial<Record<MetricKey, Summary>> {
  const out: Partial<Record<MetricKey, Summary>> = {};
  for (const m of METRICS) {
    const all = runs.map((r) => r.measurements[m.key]).filter((x): x is Measurement => x !== undefined);
    const ms = all.filter((x) => Number.isFinite(x.value));
    if (!ms.length) {
      const na = all.map((x) => x.detail?.notApplicable).find((x): x is string => typeof x === 'string');
      if (na !== undefined) out[m.key] = { median: NaN, min: NaN, max: NaN, runs: 0, clientBound: 0, disturbed: 0, notApplicable: na };
      continue;
    }
    const v = ms.map((x) => x.value);
    out[m.key] = {
      median: median(v), min: Math.min(...v), max: Math.max(...v), runs: v.length,
      clientBound: ms.filter((x) => x.limitedBy === 'client').length,
      disturbed: ms.filter((x) => x.disturbed).length,
    };
  }
  return out;
}

function flags(s: Summary): string {
  return (s.clientBound * 2 > s.runs ? '*' : '') + (s.disturbed * 2 > s.runs ? '~' : '');
}

function fmt(x: number | undefined, digits: number): string {
  if (x === undefined || !Number.isFinite(x)) return '-';
  return digits === 0 ? Math.round(x).toLocaleString('en-US') : x.toFixed(digits);
}

function table(header: string[], rows: string[][]): string {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  return [line(header), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n');
}

export interface TargetSummary {
  name: string;
  summary: Partial<Record<MetricKey, Summary>>;
}

export function absoluteTable(targets: TargetSummary[], which: Metric['table']): string {
  const ms = METRICS.filter((m) => m.table === which);
  const header = ['target', ...ms.map((m) => (which === 'perCore' ? `${m.label} ${m.unit}` : m.label))];
  const rows = targets.map((t) => [t.name, ...ms.map((m) => {
    const s = t.summary[m.key];
    return s ? fmt(s.median, m.digits) + flags(s) : '-';
  })]);
  return table(header, rows);
}

export function ratioTable(targets: TargetSummary[], base: TargetSummary, which: Metric['table']): string {
  const ms = METRICS.filter((m) => m.table === which);
  const header = ['target / ' + base.name, ...ms.map((m) => (which === 'perCore' ? `${m.label} ${m.unit}` : m.label))];
  const rows = targets.map((t) => [t.name, ...ms.map((m) => {
    const a = t.summary[m.key]?.median, b = base.summary[m.key]?.median;
    return a !== undefined && b ? `${(a / b).toFixed(2)}x` : '-';
  })]);
  return table(header, rows);
}

export interface TargetCheck { metric: string; value: string; target: string; met: boolean | null }

/** postern against the issue's targets (ratios to HAProxy, the memory limit). */
export function checkTargets(p: TargetSummary, haproxy: TargetSummary | undefined): TargetCheck[] {
  const out: TargetCheck[] = [];
  for (const m of METRICS) {
    if (!m.target) continue;
    const v = p.summary[m.key]?.median;
    const t = m.target;
    const label = m.table === 'perCore' ? `${m.label} per core-s` : m.label;
    if (t.kind === 'absolute') {
      out.push({ metric: label, value: v === undefined ? '-' : `${fmt(v, m.digits)} ${m.unit}`, target: `${t.op} ${t.value} ${m.unit}`,
        met: v === undefined ? null : t.op === '>=' ? v >= t.value : v <= t.value });
      continue;
    }
    const b = haproxy?.summary[m.key]?.median;
    const r = v !== undefined && b ? v / b : undefined;
    out.push({ metric: label, value: r === undefined ? '-' : `${r.toFixed(2)}x HAProxy`, target: `${t.op} ${t.value.toFixed(2)}x`,
      met: r === undefined ? null : t.op === '>=' ? r >= t.value : r <= t.value });
  }
  return out;
}

/** postern against the bare Node.js terminator: within 5% on every figure. */
export function checkAgainstNode(p: TargetSummary, node: TargetSummary): TargetCheck[] {
  const out: TargetCheck[] = [];
  for (const m of METRICS) {
    if (m.table !== 'measured' && m.table !== 'perCore') continue;
    const v = p.summary[m.key]?.median, b = node.summary[m.key]?.median;
    if (v === undefined || b === undefined || !b) continue;
    const r = v / b;
    const met = m.better === 'higher' ? r >= 0.95 : r <= 1.05;
    out.push({ metric: m.table === 'perCore' ? `${m.label} per core-s` : m.label, value: `${r.toFixed(2)}x node`, target: m.better === 'higher' ? '>= 0.95x' : '<= 1.05x', met });
  }
  return out;
}

/**
 * Issue 17's resumption table: per target, full and resumed handshakes per proxy CPU-second, the
 * reuse ratio (resumed / connections), new tickets per resumed handshake, the reuse ratio of a
 * client that uses each ticket once, and resumed / full per core-s (against wrk's full-handshake
 * figure and against the same Node client doing full handshakes).
 */
export function resumptionTable(targets: TargetSummary[]): string {
  const v = (t: TargetSummary, k: MetricKey): number | undefined => {
    const x = t.summary[k]?.median;
    return x !== undefined && Number.isFinite(x) ? x : undefined;
  };
  const cell = (t: TargetSummary, k: MetricKey, digits: number): string => {
    const s = t.summary[k];
    if (!s) return '-';
    if (s.notApplicable !== undefined) return 'n/a';
    return fmt(s.median, digits) + flags(s);
  };
  const ratio = (a: number | undefined, b: number | undefined): string => (a !== undefined && b ? `${(a / b).toFixed(2)}x` : '-');
  const header = ['target', 'full /core-s (wrk)', 'full /core-s (node client)', 'resumed/s', 'resumed /core-s', 'reuse ratio',
    'new tickets per resumption', 'reuse, single-use tickets', 'resumed / full (wrk)', 'resumed / full (node client)'];
  const rows = targets.filter((t) => t.summary.resumedPerSec || t.summary.reuseRatio).map((t) => [
    t.name, cell(t, 'handshakesPerCoreSec', 0), cell(t, 'clientFullPerCoreSec', 0), cell(t, 'resumedPerSec', 0), cell(t, 'resumedPerCoreSec', 0),
    cell(t, 'reuseRatio', 3), cell(t, 'ticketsPerResumed', 2), cell(t, 'singleUseReuseRatio', 3),
    t.summary.resumedPerCoreSec?.notApplicable !== undefined ? 'n/a' : ratio(v(t, 'resumedPerCoreSec'), v(t, 'handshakesPerCoreSec')),
    t.summary.resumedPerCoreSec?.notApplicable !== undefined ? 'n/a' : ratio(v(t, 'resumedPerCoreSec'), v(t, 'clientFullPerCoreSec')),
  ]);
  const na = targets.flatMap((t) => {
    const why = t.summary.resumedPerCoreSec?.notApplicable;
    return why === undefined ? [] : [`  ${t.name}: n/a, ${why}`];
  });
  return [table(header, rows), ...na].join('\n');
}

/** Issue 17's workers table: the targets that name a `workers` setting, and each against the first. */
export function workersTable(targets: TargetSummary[]): string {
  const keys: MetricKey[] = ['handshakesPerSec', 'handshakesPerCoreSec', 'cpuPer1000Full', 'pacedPerSec', 'pacedCpuPer1000'];
  const ms = keys.map((k) => METRICS.find((m) => m.key === k)!);
  const header = ['target', ...ms.map((m) => (m.table === 'perCore' ? `${m.label} ${m.unit}` : m.label))];
  const rows = targets.map((t) => [t.name, ...ms.map((m) => {
    const s = t.summary[m.key];
    return s ? fmt(s.median, m.digits) + flags(s) : '-';
  })]);
  const base = targets[0];
  if (base) {
    for (const t of targets.slice(1)) {
      rows.push([`${t.name} / ${base.name}`, ...ms.map((m) => {
        const a = t.summary[m.key]?.median, b = base.summary[m.key]?.median;
        return a !== undefined && b ? `${(a / b).toFixed(2)}x` : '-';
      })]);
    }
  }
  return table(header, rows);
}

/**
 * Issue 17's targets: postern's resumed handshakes >= 1.5x its full handshakes per core-s, and
 * CPU per handshake with workers: 2 (supervisor included) within 10% of workers: 1.
 */
export function checkIssue17(postern: TargetSummary | undefined, w2: TargetSummary | undefined, w2all?: TargetSummary): TargetCheck[] {
  const out: TargetCheck[] = [];
  const med = (t: TargetSummary | undefined, k: MetricKey): number | undefined => {
    const x = t?.summary[k]?.median;
    return x !== undefined && Number.isFinite(x) ? x : undefined;
  };
  const row = (metric: string, a: number | undefined, b: number | undefined, op: '>=' | '<=', limit: number, unit: string): void => {
    const r = a !== undefined && b ? a / b : undefined;
    out.push({ metric, value: r === undefined ? '-' : `${r.toFixed(2)}x ${unit}`, target: `${op} ${limit.toFixed(2)}x`,
      met: r === undefined ? null : op === '>=' ? r >= limit : r <= limit });
  };
  row('postern resumed / full handshakes per core-s (full: wrk)', med(postern, 'resumedPerCoreSec'), med(postern, 'handshakesPerCoreSec'), '>=', 1.5, 'full');
  row('postern resumed / full handshakes per core-s (full: same node client)', med(postern, 'resumedPerCoreSec'), med(postern, 'clientFullPerCoreSec'), '>=', 1.5, 'full');
  row('CPU per 1,000 full handshakes, workers: 2 / workers: 1 (saturated)', med(w2, 'cpuPer1000Full'), med(postern, 'cpuPer1000Full'), '<=', 1.1, 'workers: 1');
  row('CPU per 1,000 full handshakes, workers: 2 / workers: 1 (paced)', med(w2, 'pacedCpuPer1000'), med(postern, 'pacedCpuPer1000'), '<=', 1.1, 'workers: 1');
  row('CPU per 1,000 full handshakes, workers: 2 on all cores / workers: 1 (paced)', med(w2all, 'pacedCpuPer1000'), med(postern, 'pacedCpuPer1000'), '<=', 1.1, 'workers: 1');
  // Target 2: a STARTTLS session within 15% of the same session over implicit TLS.
  for (const proto of ['smtp', 'imap'] as const) {
    const st = MAIL_METRICS[`${proto}-starttls`], im = MAIL_METRICS[`${proto}-implicit`];
    const P = proto.toUpperCase();
    row(`${P} STARTTLS / implicit TLS sessions per core-s`, med(postern, st.perCore), med(postern, im.perCore), '>=', 0.85, 'implicit');
    row(`${P} STARTTLS / implicit TLS KB per idle session`, med(postern, st.idle), med(postern, im.idle), '<=', 1.15, 'implicit');
  }
  return out;
}

/** Issue 17, target 2: postern's mail sessions, STARTTLS against implicit TLS, per protocol. */
export function mailTable(t: TargetSummary): string {
  const cell = (k: MetricKey, digits: number): string => {
    const s = t.summary[k];
    return s ? fmt(s.median, digits) + flags(s) : '-';
  };
  const rows: string[][] = [];
  for (const kind of Object.keys(MAIL_METRICS) as (keyof typeof MAIL_METRICS)[]) {
    const m = MAIL_METRICS[kind];
    rows.push([kind, cell(m.perSec, 0), cell(m.perCore, 0), cell(m.idle, 1)]);
  }
  return table(['session', 'sessions/s', 'sessions /core-s', 'KB per idle session'], rows);
}

export function checksTable(checks: TargetCheck[]): string {
  return table(['figure', 'measured', 'target', ''], checks.map((c) => [c.metric, c.value, c.target, c.met === null ? 'n/a' : c.met ? 'met' : 'MISSED']));
}

// ---- SVG ------------------------------------------------------------------------------------

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function color(name: string): string {
  if (name.startsWith('postern')) return '#e8590c';
  if (name === 'haproxy') return '#1971c2';
  if (name === 'direct') return '#adb5bd';
  if (name === 'node') return '#2f9e44';
  return '#495057';
}

/** What the chart's title and footer say about a run (also read back from a results file). */
export interface ChartRun {
  date: string;
  mode: string;
  runs: number;
  cpuModel: string;
  cpus: number;
  kernel: string;
  proxyCore: number;
  clientCore: number;
  /** Version per target name; `direct` (the ceiling) is left out of the footer. */
  versions: Record<string, string>;
  /** The results file, relative to the repository. */
  dataFile: string;
}

/** The benchmark's chart: the same from `npm run bench` and from `bench/chart.ts`. */
export function benchChart(targets: TargetSummary[], r: ChartRun): string {
  const versions = Object.entries(r.versions).filter(([name]) => name !== 'direct').map(([name, v]) => `${name} ${v.split(' (')[0]}`).join(', ');
  return svgChart(targets,
    `TLS termination, one core each, TLS 1.3, ECDSA P-256 (${r.mode === 'quick' ? 'QUICK MODE, not a baseline' : `median of ${r.runs} runs`})`,
    [
      `${r.date.slice(0, 10)}, ${r.cpuModel}, ${r.cpus} CPUs, Linux ${r.kernel}; proxies on core ${r.proxyCore}, wrk/backend/clients on core ${r.clientCore}.`,
      versions,
      `direct = the backend in plaintext without a proxy (the ceiling). Data: ${r.dataFile}`,
    ]);
}

/** Small multiples: one horizontal bar panel per figure, absolute medians, ratio to HAProxy. */
export function svgChart(targets: TargetSummary[], title: string, footer: string[]): string {
  const keys: MetricKey[] = ['handshakesPerSec', 'handshakesPerCoreSec', 'keepAliveReqPerSec', 'keepAlivePerCoreSec',
    'keepAliveP99Ms', 'idleSessionKB', 'uploadMBps', 'downloadMBps'];
  const metrics = keys.map((k) => METRICS.find((m) => m.key === k)!).filter((m) => targets.some((t) => t.summary[m.key] !== undefined));
  const cols = 2;
  const panelW = 470, barH = 18, gap = 4, labelW = 90, valueW = 130;
  const maxRows = targets.length;
  const panelH = 34 + maxRows * (barH + gap) + 8;
  const rowsOfPanels = Math.ceil(metrics.length / cols);
  const top = 48;
  const width = cols * panelW + 20;
  const height = top + rowsOfPanels * panelH + 18 * footer.length + 24;
  const base = targets.find((t) => t.name === 'haproxy');
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif" font-size="12">`);
  parts.push(`<rect width="100%" height="100%" fill="#ffffff"/>`);
  parts.push(`<text x="10" y="22" font-size="16" font-weight="bold" fill="#212529">${esc(title)}</text>`);
  parts.push(`<text x="10" y="40" fill="#495057">median of the runs; bar length is the absolute figure; (x) = ratio to HAProxy; * = load generator core saturated (a lower bound); ~ = other processes were busy</text>`);
  metrics.forEach((m, i) => {
    const x0 = 10 + (i % cols) * panelW;
    const y0 = top + Math.floor(i / cols) * panelH;
    const vals = targets.map((t) => t.summary[m.key]?.median ?? NaN);
    const max = Math.max(...vals.filter(Number.isFinite), 1e-9);
    const title = m.table === 'perCore' ? `${m.label} per proxy CPU-second` : m.label;
    parts.push(`<text x="${x0}" y="${y0 + 20}" font-weight="bold" fill="#212529">${esc(title)} (${m.better} is better)</text>`);
    targets.forEach((t, j) => {
      const y = y0 + 30 + j * (barH + gap);
      const v = vals[j]!;
      const s = t.summary[m.key];
      parts.push(`<text x="${x0 + labelW - 6}" y="${y + 13}" text-anchor="end" fill="#212529">${esc(t.name)}</text>`);
      if (!Number.isFinite(v)) {
        parts.push(`<text x="${x0 + labelW}" y="${y + 13}" fill="#868e96">n/a</text>`);
        return;
      }
      const w = Math.max(1, ((panelW - labelW - valueW) * v) / max);
      parts.push(`<rect x="${x0 + labelW}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${color(t.name)}"/>`);
      const b = base?.summary[m.key]?.median;
      const ratio = b && t.name !== 'haproxy' ? ` (${(v / b).toFixed(2)}x)` : '';
      const flag = s ? flags(s) : '';
      parts.push(`<text x="${(x0 + labelW + w + 4).toFixed(1)}" y="${y + 13}" fill="#212529">${esc(fmt(v, m.digits) + flag + ratio)}</text>`);
    });
  });
  footer.forEach((f, i) => {
    parts.push(`<text x="10" y="${top + rowsOfPanels * panelH + 16 + i * 18}" fill="#495057" font-size="11">${esc(f)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}

/**
 * A distribution-free confidence interval for the median of `xs` (the sign test's order
 * statistics): [x(k), x(n-k+1)] with k the largest rank such that P(Binomial(n, 1/2) < k) <=
 * alpha / 2, so the interval covers the true median with probability >= 1 - alpha whatever the
 * distribution. Null below 6 values (no such k exists for alpha 0.05); `coverage` is the exact one.
 */
export function medianInterval(xs: number[], alpha = 0.05): { median: number; low: number; high: number; coverage: number } | null {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  const n = s.length;
  if (n === 0) return null;
  // cdf[j] = P(Binomial(n, 1/2) <= j)
  let pj = 2 ** -n, cdf = 0, k = 0, tail = 0;
  for (let j = 0; j < n; j++) {
    cdf += pj;
    if (cdf > alpha / 2) break;
    k = j + 1;
    tail = cdf;
    pj = (pj * (n - j)) / (j + 1);
  }
  if (k === 0) return null;
  return { median: median(s), low: s[k - 1]!, high: s[n - k]!, coverage: 1 - 2 * tail };
}

export interface PairedRow { metric: string; ratios: number[]; median: number; low: number | null; high: number | null; coverage: number | null; target: string; met: boolean | null }

/**
 * Target 1 of issue 17 judged by pairs: each run measures both targets back to back (the order
 * alternating), so a run's ratio A / B cancels what the machine did to both in that minute; the
 * verdict needs the whole 95% interval of the median ratio on one side of the limit (within 5%).
 */
export function pairedRows(a: RunRecord[], b: RunRecord[], limit = 0.05): PairedRow[] {
  const keys: MetricKey[] = ['pacedCpuPer1000', 'pacedKeepAliveCpuPer1000', 'handshakesPerCoreSec', 'keepAlivePerCoreSec', 'cpuPer1000Full'];
  const out: PairedRow[] = [];
  for (const key of keys) {
    const m = METRICS.find((x) => x.key === key)!;
    const ratios: number[] = [];
    for (const ra of a) {
      const rb = b.find((x) => x.run === ra.run);
      const va = ra.measurements[key]?.value, vb = rb?.measurements[key]?.value;
      if (va !== undefined && vb !== undefined && Number.isFinite(va) && Number.isFinite(vb) && vb > 0) ratios.push(va / vb);
    }
    if (!ratios.length) continue;
    const ci = medianInterval(ratios);
    const higher = m.better === 'higher';
    const bound = higher ? 1 - limit : 1 + limit;
    const met = !ci ? null
      : higher ? (ci.low >= bound ? true : ci.high < bound ? false : null)
        : (ci.high <= bound ? true : ci.low > bound ? false : null);
    out.push({ metric: m.table === 'perCore' ? `${m.label} per core-s` : m.label, ratios, median: median(ratios), low: ci?.low ?? null, high: ci?.high ?? null,
      coverage: ci?.coverage ?? null, target: `${higher ? '>=' : '<='} ${bound.toFixed(2)}x`, met });
  }
  return out;
}

export function pairedTable(rows: PairedRow[]): string {
  return table(['metric', 'runs', 'median ratio', 'interval (coverage)', 'target', 'verdict', 'ratios by run'], rows.map((r) => [
    r.metric, String(r.ratios.length), `${r.median.toFixed(3)}x`,
    r.low === null ? 'n/a (< 6 runs)' : `${r.low.toFixed(3)}-${r.high!.toFixed(3)} (${Math.round(r.coverage! * 1000) / 10}%)`,
    r.target, r.met === null ? (r.low === null ? '-' : 'undecided') : r.met ? 'met' : 'not met',
    r.ratios.map((x) => x.toFixed(2)).join(' '),
  ]));
}
