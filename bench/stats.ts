// Timing and summary statistics. Every benchmark reports the median of repeated runs with the 10th
// and 90th percentiles beside it: on a shared 2-core machine the mean is dragged around by whatever
// else is running, while the median of enough runs is stable.
import { performance } from 'node:perf_hooks';

export interface Stats {
  /** Wall-clock seconds per call. */
  median: number;
  p10: number;
  p90: number;
  n: number;
  /**
   * Median CPU seconds the process used per call (all its threads, spin-waiting included). With one
   * thread, a wall time well above it means the run waited for a core that another process held.
   */
  cpu?: number;
}

/** Linear-interpolated percentile of sorted values (q in [0, 1]). */
function percentile(sorted: readonly number[], q: number): number {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

export function summarize(samples: readonly number[], cpu?: readonly number[]): Stats {
  if (samples.length === 0) throw new Error('summarize: no samples');
  const s = [...samples].sort((a, b) => a - b);
  const c = cpu?.length ? percentile([...cpu].sort((a, b) => a - b), 0.5) : undefined;
  return { median: percentile(s, 0.5), p10: percentile(s, 0.1), p90: percentile(s, 0.9), n: s.length, cpu: c };
}

export interface Reps {
  warmup: number;
  reps: number;
}

/**
 * Times `fn` `reps` times after `warmup` untimed calls, one wall-clock and one CPU-time sample per
 * call. The first calls of an ONNX Runtime session allocate its memory arena and pick kernels, so
 * warmup is never zero.
 */
export async function measure(fn: () => Promise<unknown> | unknown, r: Reps): Promise<Stats> {
  return (await measureInterleaved([fn], r))[0]!;
}

/**
 * Like `measure` for several variants at once, round-robin: one call of each per round, so slow
 * drift in the machine's load (other processes starting or stopping) hits every variant alike.
 * Use it where the variants are close and the order of measuring would otherwise decide.
 */
export async function measureInterleaved(fns: (() => Promise<unknown> | unknown)[], r: Reps): Promise<Stats[]> {
  for (let i = 0; i < r.warmup; i++) for (const fn of fns) await fn();
  const wall: number[][] = fns.map(() => []);
  const cpu: number[][] = fns.map(() => []);
  for (let i = 0; i < r.reps; i++) {
    for (const [k, fn] of fns.entries()) {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      await fn();
      wall[k]!.push((performance.now() - t0) / 1e3);
      const c = process.cpuUsage(c0);
      cpu[k]!.push((c.user + c.system) / 1e6);
    }
  }
  return fns.map((_, k) => summarize(wall[k]!, cpu[k]!));
}
