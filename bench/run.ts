// `npm run bench [-- FILTER…] [--quick] [--list]`: runs the benchmarks whose name or group contains
// one of the filters (all when none is given), each beside the same work in PyTorch.
// --quick: fewer repetitions and the smaller sizes only (well under a minute), for a smoke test.
import { performance } from 'node:perf_hooks';
import type { Bench } from './bench.js';
import { ENGINE } from './engine.js';
import { CLIP } from './clip.js';
import { DATA } from './data_loader.js';
import { run as runIndex } from './index.js';
import { run as runServe } from './serve.js';
import { cpuSnapshot, otherCores, otherTicks } from './cpu.js';
import { loadAverage, printMachine } from './machine.js';
import { torchWindows } from './torch.js';

/** The table of benchmarks. Other groups append their own lists here. */
const BENCHES: Bench[] = [
  ...ENGINE,
  ...CLIP,
  ...DATA,
  { name: 'serve', group: 'serve', title: 'HTTP serving: throughput and p50/p99 under 1, 8, 64 clients, micro-batching on/off', run: runServe },
  { name: 'index', group: 'index', title: 'vector index: build time, latency, ANN recall@10 at 100k and 1M', run: runIndex },
];

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const quick = args.includes('--quick');
  const filters = args.filter((a) => !a.startsWith('--'));
  const chosen = BENCHES.filter((b) => filters.length === 0 || filters.some((f) => b.name.includes(f) || b.group.includes(f)));
  if (args.includes('--list') || chosen.length === 0) {
    if (chosen.length === 0) console.log(`no benchmark matches ${filters.join(', ')}`);
    for (const b of BENCHES) console.log(`${b.group.padEnd(8)} ${b.name.padEnd(10)} ${b.title}`);
    process.exitCode = chosen.length === 0 ? 1 : 0;
    return;
  }
  console.log(`clipkit benchmarks${quick ? ' (--quick)' : ''}: ${chosen.map((b) => b.name).join(', ')}`);
  printMachine();
  console.log('Times are wall-clock per call; "ours/PyTorch" is the ratio of median times (above 1: we are slower); @Nt: thread count.');
  console.log('CPU/call: median process CPU time per call (all threads, spin-waits included); at 1 thread, wall ≫ CPU means we waited for a core.');
  const t0 = performance.now();
  const c0 = cpuSnapshot();
  for (const b of chosen) {
    const t = performance.now();
    const c = cpuSnapshot();
    torchWindows.length = 0;
    await b.run({ quick });
    // Interference: other processes' CPU use while PyTorch ran, and during the rest (our measurements).
    const all = otherTicks(c, cpuSnapshot());
    const theirs = torchWindows.map(([x, y]) => otherTicks(x, y)).reduce((p, q) => ({ other: p.other + q.other, total: p.total + q.total }), { other: 0, total: 0 });
    const ours = { other: all.other - theirs.other, total: all.total - theirs.total };
    const secs = ((performance.now() - t) / 1e3).toFixed(1);
    console.log(`(${b.name}: ${secs} s; cores kept busy by other processes: ${otherCores(ours)} while we ran, ${otherCores(theirs)} while PyTorch ran)`);
  }
  const total = ((performance.now() - t0) / 1e3).toFixed(1);
  console.log(`\nload average at end: ${loadAverage()}   total: ${total} s; other processes kept ${otherCores(otherTicks(c0, cpuSnapshot()))} cores busy on average`);
}

await main();
