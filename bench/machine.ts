// What the numbers were measured on: printed before every run, since on a small shared machine the
// hardware and the background load explain much of the spread.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { torchInfo } from './torch.js';

function cpuModel(): string {
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) return m[1]!.trim();
  } catch {
    // not Linux: fall through
  }
  return cpus()[0]?.model ?? 'unknown';
}

function ortVersion(): string {
  // onnxruntime-node has no "exports" map, so its package.json sits beside its resolved entry's dist/.
  const require = createRequire(import.meta.url);
  const main = require.resolve('onnxruntime-node');
  const pkg = JSON.parse(readFileSync(join(dirname(main), '..', 'package.json'), 'utf8')) as { version: string };
  return pkg.version;
}

export function loadAverage(): string {
  return loadavg()
    .map((x) => x.toFixed(2))
    .join(', ');
}

export function printMachine(): void {
  const t = torchInfo();
  console.log(`cores: ${availableParallelism()}   CPU: ${cpuModel()}   RAM: ${(totalmem() / 2 ** 30).toFixed(1)} GiB`);
  console.log(`Node ${process.version}   onnxruntime-node ${ortVersion()}   ` + (t ? `PyTorch ${t.version} (BLAS: ${t.blas})` : 'PyTorch: not importable'));
  if (t && /netlib|reference/i.test(t.blas)) {
    console.log(
      'WARNING: PyTorch is using the reference (netlib) BLAS, ~30× slower than an optimized one: its matmul numbers are not a fair\n' +
        '         baseline. On Debian: apt-get install libopenblas0-openmp (it becomes the libblas.so.3 alternative).',
    );
  } else if (t && /pthread/.test(t.blas)) {
    console.log(
      "NOTE: PyTorch's OpenBLAS is the pthread build, which ignores torch.set_num_threads: PyTorch's '1 thread' matmuls may use\n" +
        '      every core. For per-thread baselines select the OpenMP build (libopenblas0-openmp) as the libblas.so.3 alternative.',
    );
  }
  console.log(`load average (1, 5, 15 min) at start: ${loadAverage()}`);
}
