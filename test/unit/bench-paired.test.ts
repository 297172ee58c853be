// The benchmark's paired verdict (bench/lib/report.ts): the sign-test interval of a median and
// the within-5% verdict, which decide whether issue 17's target 1 reads "met", "not met" or
// "undecided". Pure arithmetic, checked against binomial tables.
import { describe, expect, it } from 'vitest';
import { medianInterval, pairedRows, type RunRecord } from '../../bench/lib/report.ts';

function runs(values: number[], key: 'pacedCpuPer1000' | 'handshakesPerCoreSec'): RunRecord[] {
  return values.map((value, i) => ({
    run: i + 1, position: 1, startedAt: '', sanity: null, errors: [],
    measurements: { [key]: { value, cpu: null, limitedBy: 'neither', disturbed: false } },
  }));
}

describe('medianInterval', () => {
  it('has no 95% interval below 6 values (all on one side has probability 1/16 at n = 5)', () => {
    expect(medianInterval([1, 2, 3, 4, 5])).toBeNull();
    expect(medianInterval([])).toBeNull();
  });

  it('uses the extremes at n = 6 (coverage 1 - 2/64)', () => {
    const ci = medianInterval([6, 1, 5, 2, 4, 3])!;
    expect(ci).toEqual({ median: 3.5, low: 1, high: 6, coverage: 1 - 2 / 64 });
  });

  it('uses the 3rd and 10th of 12 (P(Bin(12, 1/2) <= 2) = 79/4096 <= 0.025 < P(<= 3))', () => {
    const xs = Array.from({ length: 12 }, (_, i) => 12 - i);
    const ci = medianInterval(xs)!;
    expect(ci.low).toBe(3);
    expect(ci.high).toBe(10);
    expect(ci.coverage).toBeCloseTo(1 - (2 * 79) / 4096, 12);
  });

  it('uses the 6th and 15th of 20 (P(Bin(20, 1/2) <= 5) = 0.0207)', () => {
    const ci = medianInterval(Array.from({ length: 20 }, (_, i) => i + 1))!;
    expect([ci.low, ci.high]).toEqual([6, 15]);
    expect(ci.coverage).toBeGreaterThanOrEqual(0.95);
  });

  it('ignores values that are not finite', () => {
    expect(medianInterval([1, 2, 3, 4, 5, 6, NaN])).toEqual(medianInterval([1, 2, 3, 4, 5, 6]));
  });
});

describe('pairedRows', () => {
  it('pairs by run number and says met only when the whole interval is within 5%', () => {
    const node = runs([1, 2, 1, 2, 1, 2], 'pacedCpuPer1000');
    const met = pairedRows(runs([1.01, 2.02, 1.03, 2, 1.04, 2.08], 'pacedCpuPer1000'), node);
    expect(met).toHaveLength(1);
    expect(met[0]!.met).toBe(true);
    expect(met[0]!.ratios.map((x) => Math.round(x * 100))).toEqual([101, 101, 103, 100, 104, 104]);
    const notMet = pairedRows(runs([1.2, 2.4, 1.3, 2.5, 1.1, 2.2], 'pacedCpuPer1000'), node);
    expect(notMet[0]!.met).toBe(false);
    const straddles = pairedRows(runs([1, 2.4, 1, 2.5, 1, 2.2], 'pacedCpuPer1000'), node);
    expect(straddles[0]!.met).toBeNull();
  });

  it('reads rates the other way round (higher is better: >= 0.95x)', () => {
    const node = runs([100, 100, 100, 100, 100, 100], 'handshakesPerCoreSec');
    expect(pairedRows(runs([96, 97, 99, 100, 98, 101], 'handshakesPerCoreSec'), node)[0]!.met).toBe(true);
    expect(pairedRows(runs([60, 70, 80, 90, 70, 75], 'handshakesPerCoreSec'), node)[0]!.met).toBe(false);
  });

  it('has no verdict with fewer than 6 pairs, and skips runs one side lacks', () => {
    const a = runs([1, 1, 1, 1, 1, 1], 'pacedCpuPer1000');
    const b = runs([1, 1, 1, 1, 1], 'pacedCpuPer1000');
    const rows = pairedRows(a, b);
    expect(rows[0]!.ratios).toHaveLength(5);
    expect(rows[0]!.met).toBeNull();
    expect(rows[0]!.low).toBeNull();
  });
});
