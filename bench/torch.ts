// The PyTorch side of each benchmark: bench/torch_engine.py, run in a child process just before our
// own measurement of the same benchmark, so both see about the same machine load. The script prints
// one JSON object: raw wall and CPU samples (seconds) per case and thread count; the statistics are
// computed here, with the same code as ours.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { type CpuSnapshot, cpuSnapshot } from './cpu.js';
import { type Stats, summarize } from './stats.js';

/** The interpreter with Debian's PyTorch; override with CLIPKIT_BENCH_PYTHON. */
const PYTHON = process.env.CLIPKIT_BENCH_PYTHON ?? '/usr/bin/python3';
// dist/bench/torch.js → bench/torch_engine.py (the script is not compiled, so it stays in bench/).
const SCRIPT = fileURLToPath(new URL('../../bench/torch_engine.py', import.meta.url));

export interface TorchInfo {
  version: string;
  /** The BLAS library torch's matmuls actually went to (Debian's torch uses the libblas.so.3 alternative). */
  blas: string;
  threadsDefault: number;
}

let probed: TorchInfo | null | undefined;

/** Imports torch once; null (and a printed note) when it cannot be imported. */
export function torchInfo(): TorchInfo | null {
  if (probed !== undefined) return probed;
  const r = spawnSync(PYTHON, [SCRIPT, 'info'], { encoding: 'utf8' });
  if (r.status !== 0 || r.error) {
    const why = (r.error?.message ?? r.stderr ?? '').trim().split('\n').pop();
    console.log(`PyTorch not importable (${PYTHON}: ${why}); showing only our numbers.`);
    probed = null;
  } else {
    probed = JSON.parse(r.stdout) as TorchInfo;
  }
  return probed;
}

/** A case measured at one thread count. */
export interface TorchCase extends Stats {
  threads: number;
}

/**
 * Runs one benchmark of torch_engine.py. Returns, per case name, one entry per thread count tried,
 * or null when torch is unavailable or the script failed (its error is printed, not thrown: our
 * numbers are still worth showing).
 */
export function runTorch(bench: string, args: Record<string, unknown> = {}): Map<string, TorchCase[]> | null {
  if (!torchInfo()) return null;
  const argv = [SCRIPT, bench, JSON.stringify(args)];
  const before = cpuSnapshot();
  const r = spawnSync(PYTHON, argv, { encoding: 'utf8', maxBuffer: 64 << 20 });
  torchWindows.push([before, cpuSnapshot()]);
  if (r.status !== 0 || r.error) {
    console.log(`  (PyTorch side of '${bench}' failed: ${(r.error?.message ?? r.stderr).trim().split('\n').slice(-3).join(' | ')})`);
    return null;
  }
  const raw = JSON.parse(r.stdout) as { cases: Record<string, { threads: number; samples: number[]; cpu: number[] }[]>; notes?: Record<string, unknown> };
  const out = new Map<string, TorchCase[]>();
  for (const [name, runs] of Object.entries(raw.cases)) {
    out.set(name, runs.map((x) => ({ ...summarize(x.samples, x.cpu), threads: x.threads })));
  }
  if (raw.notes) torchNotes.set(bench, raw.notes);
  return out;
}

/**
 * CPU snapshots around each PyTorch child process, so the driver can tell how busy the other
 * processes on the machine were while PyTorch ran and while we ran (run.ts empties it per benchmark).
 */
export const torchWindows: [CpuSnapshot | undefined, CpuSnapshot | undefined][] = [];

/** Free-form values the script reported beside its timings (e.g. losses), by benchmark. */
export const torchNotes = new Map<string, Record<string, unknown>>();

/** The fastest thread count's result for a case ("at its best thread count"). */
export function best(runs: TorchCase[] | undefined): TorchCase | undefined {
  if (!runs?.length) return undefined;
  return runs.reduce((a, b) => (b.median < a.median ? b : a));
}

/** The result at one thread count. */
export function at(runs: TorchCase[] | undefined, threads: number): TorchCase | undefined {
  return runs?.find((r) => r.threads === threads);
}
