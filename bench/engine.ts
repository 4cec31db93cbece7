// The engine benchmarks (`npm run bench -- engine`): what one Session.run costs, how fast ONNX
// Runtime multiplies matrices for us, a ViT-B/16 block forward and backward, where the AdamW update
// should run, and a whole training step — each beside PyTorch doing the same work in the same run.
import type { Bench, Ctx } from './bench.js';
import { buffer, host, randn } from './data.js';
import { adamwBench } from './engine_adamw.js';
import { blockBench } from './engine_block.js';
import { trainBench } from './engine_train.js';
import { type Row, gflops, printTable } from './report.js';
import { measure } from './stats.js';
import { at, best, runTorch } from './torch.js';
import { Graph } from '../src/graph/graph.js';
import * as o from '../src/graph/ops.js';
import { compile } from '../src/runtime/compile.js';

/** 1. The fixed cost of a call: feeds wrapped, the native call, the promise, outputs copied out. */
async function overhead(ctx: Ctx): Promise<void> {
  const reps = ctx.quick ? { warmup: 200, reps: 1000 } : { warmup: 1000, reps: 5000 };
  const g = new Graph('add4');
  const y = o.add(g.input('a', [4]), g.input('b', [4]));
  const feeds = { a: host(randn(4, 1), [4]), b: host(randn(4, 2), [4]) };
  const rows: Row[] = [];
  const t = runTorch('overhead', reps);
  for (const threads of [1, 2]) {
    const c = await compile(g, { y }, { threads, cacheKey: false });
    const fresh = await measure(() => c.run(feeds), reps);
    const into = { y: buffer([4]) };
    const pre = await measure(() => c.run(feeds, into), reps);
    rows.push({ case: `Session.run, Add [4]+[4], ${threads} thread(s), output returned`, ours: fresh, torch: best(t?.get('add')), note: 'PyTorch: torch.add(a, b)' });
    rows.push({ case: `Session.run, Add [4]+[4], ${threads} thread(s), output into buffer`, ours: pre, torch: best(t?.get('add_out')), note: 'PyTorch: torch.add(a, b, out=c)' });
    await c.session.release();
  }
  printTable('1. Per-run overhead (one tiny op per call)', rows);
}

/** 2. A projection-sized GEMM: the kernel that dominates every transformer here. */
async function matmulBench(ctx: Ctx): Promise<void> {
  const [M, K, N] = [512, 768, 768];
  const flops = 2 * M * K * N;
  const reps = ctx.quick ? { warmup: 2, reps: 8 } : { warmup: 5, reps: 30 };
  const a = randn(M * K, 'a');
  const b = randn(K * N, 'b');
  // B as a graph input (as weights are in training) and B baked in as an initializer (inference:
  // ORT pre-packs a constant B into its GEMM's panel layout once, at session creation).
  const gIn = new Graph('mm');
  const yIn = o.matmul(gIn.input('a', [M, K]), gIn.input('b', [K, N]));
  const gBaked = new Graph('mm_baked');
  const yBaked = o.matmul(gBaked.input('a', [M, K]), gBaked.param('b', [K, N], { kind: 'zeros' }));
  const t = runTorch('matmul', { ...reps, M, K, N });
  const rows: Row[] = [];
  for (const threads of [1, 2]) {
    const into = { y: buffer([M, N]) };
    const cIn = await compile(gIn, { y: yIn }, { threads, cacheKey: false });
    const sIn = await measure(() => cIn.run({ a: host(a, [M, K]), b: host(b, [K, N]) }, into), reps);
    const cBaked = await compile(gBaked, { y: yBaked }, { threads, cacheKey: false, paramValues: new Map([['b', b]]) });
    const sBaked = await measure(() => cBaked.run({ a: host(a, [M, K]) }, into), reps);
    const tc = at(t?.get('mm'), threads);
    const vs = (s: typeof sIn): string => `${gflops(flops, s)} GFLOP/s vs ${gflops(flops, tc)}`;
    rows.push({ case: `${M}×${K} @ ${K}×${N}, B an input, ${threads} thread(s)`, ours: sIn, torch: tc, note: vs(sIn) });
    rows.push({ case: `${M}×${K} @ ${K}×${N}, B baked in, ${threads} thread(s)`, ours: sBaked, torch: tc, note: vs(sBaked) });
    await cIn.session.release();
    await cBaked.session.release();
  }
  printTable('2. MatMul float32 (PyTorch: torch.matmul(a, b, out=c) at the same thread count)', rows);
}

export const ENGINE: Bench[] = [
  { group: 'engine', name: 'overhead', title: 'per-run overhead of Session.run on a tiny graph', run: overhead },
  { group: 'engine', name: 'matmul', title: 'MatMul 512×768 @ 768×768 GFLOP/s at 1 and 2 threads', run: matmulBench },
  { group: 'engine', name: 'block', title: 'one ViT-B/16 transformer block, batch 8×197: forward, forward+backward', run: blockBench },
  { group: 'engine', name: 'adamw', title: 'AdamW update: in-graph (pre-allocated / fresh outputs) vs TypeScript loop', run: adamwBench },
  { group: 'engine', name: 'train', title: 'training step of a 4-layer width-256 transformer classifier', run: trainBench },
];
