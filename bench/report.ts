// Printing: one table per benchmark, our median beside PyTorch's and the ratio of the two times.
import type { Stats } from './stats.js';
import type { TorchCase } from './torch.js';

export interface Row {
  case: string;
  ours?: Stats;
  torch?: TorchCase;
  /** Free text after the ratio (throughput, the baseline's thread count, …). */
  note?: string;
}

/** A time in seconds with a unit that keeps three significant digits readable. */
export function fmtTime(s: number): string {
  const [v, u] = s < 1e-3 ? [s * 1e6, 'µs'] : s < 1 ? [s * 1e3, 'ms'] : [s, 's'];
  return `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${u}`;
}

function fmtStats(s: Stats | undefined): string {
  if (!s) return '—';
  return `${fmtTime(s.median)} [${fmtTime(s.p10)}–${fmtTime(s.p90)}]`;
}

/** ours ÷ torch of the median times: above 1 we are slower. */
export function ratio(r: Row): string {
  if (!r.ours || !r.torch) return '—';
  return `${(r.ours.median / r.torch.median).toFixed(2)}×`;
}

/** Median process CPU time per call, ours / PyTorch's (see Stats.cpu). */
function fmtCpu(r: Row): string {
  const f = (s: Stats | undefined): string => (s?.cpu === undefined ? '—' : fmtTime(s.cpu));
  return r.ours || r.torch ? `${f(r.ours)} / ${f(r.torch)}` : '';
}

export function printTable(title: string, rows: Row[]): void {
  const header = ['case', 'ours: median [p10–p90]', 'PyTorch: median [p10–p90]', 'ours/PyTorch', 'CPU/call ours / PyTorch', 'notes'];
  const cells = rows.map((r) => [r.case, fmtStats(r.ours), r.torch ? `${fmtStats(r.torch)} @${r.torch.threads}t` : '—', ratio(r), fmtCpu(r), r.note ?? '']);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]): string => c.map((x, i) => x.padEnd(widths[i]!)).join('  ').trimEnd();
  console.log(`\n${title}`);
  console.log(line(header));
  console.log(line(widths.map((w) => '-'.repeat(w))));
  for (const c of cells) console.log(line(c));
}

/** GFLOP/s of `flops` done in the median time. */
export function gflops(flops: number, s: Stats | undefined): string {
  return s ? (flops / s.median / 1e9).toFixed(1) : '—';
}
