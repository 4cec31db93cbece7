// Interference accounting: how much CPU other processes used while a benchmark ran, from the
// kernel's counters (Linux only; elsewhere the numbers print as '?').
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

/** CPU time counters (clock ticks) of the whole machine and of this process with its waited-for children. */
export interface CpuSnapshot {
  busy: number;
  total: number;
  self: number;
}

export function cpuSnapshot(): CpuSnapshot | undefined {
  try {
    // cpu  user nice system idle iowait irq softirq steal …
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const busy = f[0]! + f[1]! + f[2]! + f[5]! + f[6]!;
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
    // /proc/self/stat: utime stime cutime cstime are fields 14–17 (after the parenthesised name).
    const s = readFileSync('/proc/self/stat', 'utf8');
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ').map(Number);
    const self = rest[11]! + rest[12]! + rest[13]! + rest[14]!;
    return { busy, total, self };
  } catch {
    return undefined;
  }
}

/** Ticks of CPU time used by other processes, and ticks elapsed (summed over cores), between two snapshots. */
export function otherTicks(a: CpuSnapshot | undefined, b: CpuSnapshot | undefined): { other: number; total: number } {
  if (!a || !b) return { other: 0, total: 0 };
  return { other: Math.max(0, b.busy - a.busy - (b.self - a.self)), total: b.total - a.total };
}

/**
 * How many cores, on average over some windows, were busy with work that was neither this process
 * nor the PyTorch children it waited for: the interference the numbers were measured under.
 */
export function otherCores(t: { other: number; total: number }): string {
  if (t.total <= 0) return '?';
  return ((t.other / t.total) * availableParallelism()).toFixed(2);
}
