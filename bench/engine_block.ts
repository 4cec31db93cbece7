// 3. One ViT-B/16 transformer block (pre-LN, width 768, 12 heads, MLP 3072, exact GELU) on a batch
// of 8 images × 197 tokens: forward, and forward+backward through our autodiff with gradients for
// every parameter and for x — the unit of work that CLIP/ViT training repeats 12–24 times per step.
import type { Ctx } from './bench.js';
import { buffer, host, randn } from './data.js';
import { type Row, gflops, printTable } from './report.js';
import { type Stats, measure } from './stats.js';
import { at, best, runTorch } from './torch.js';
import { gradients } from '../src/autodiff/grad.js';
import { Graph, type Tensor } from '../src/graph/graph.js';
import { liveNodes } from '../src/graph/onnx.js';
import * as o from '../src/graph/ops.js';
import { initParams } from '../src/nn/init.js';
import { transformer } from '../src/nn/layers.js';
import { compile } from '../src/runtime/compile.js';
import type { HostTensor } from '../src/runtime/session.js';

const [B, T, D, H, F] = [8, 197, 768, 12, 3072];

/** Matmul FLOPs only: QKV + out projection (4·D²) and the MLP (2·D·F) per token, plus QKᵀ and A·V. */
export const BLOCK_FWD_FLOPS = 2 * B * T * (4 * D * D + 2 * D * F) + 2 * 2 * B * H * T * T * (D / H);
/** Backward does two matmuls per forward matmul (dX and dW). */
export const BLOCK_FWDBWD_FLOPS = 3 * BLOCK_FWD_FLOPS;

/** The block as the brief fixes it; mode 'infer' lets selfAttention use the fused com.microsoft.Attention kernel. */
function build(mode: 'train' | 'infer' = 'train'): { g: Graph; x: Tensor; y: Tensor } {
  const g = new Graph('vit_b16_block');
  g.mode = mode;
  const x = g.input('x', [B, T, D]);
  const y = transformer(g, 'blk', x, { width: D, layers: 1, heads: H, mlpRatio: 4, act: 'gelu' });
  return { g, x, y };
}

/** Op counts of the nodes ONNX will see, most frequent first: a quick look at what autodiff emitted. */
function opHistogram(g: Graph, outputs: Tensor[]): string {
  const counts = new Map<string, number>();
  const nodes = liveNodes(g, outputs);
  for (const n of nodes) counts.set(n.op, (counts.get(n.op) ?? 0) + 1);
  const top = [...counts].sort((a, b) => b[1] - a[1]).map(([op, k]) => `${op} ${k}`);
  return `${nodes.length} nodes: ${top.join(', ')}`;
}

export async function blockBench(ctx: Ctx): Promise<void> {
  const threadCounts = ctx.quick ? [2] : [2, 1];
  const fwdReps = ctx.quick ? { warmup: 1, reps: 3 } : { warmup: 2, reps: 7 };
  const bwdReps = ctx.quick ? { warmup: 1, reps: 2 } : { warmup: 1, reps: 5 };
  const x = host(randn(B * T * D, 'x'), [B, T, D]);
  const r = host(randn(B * T * D, 'R'), [B, T, D]);

  // Forward graph; its parameter values serve every session below.
  const fwd = build();
  const values = initParams(fwd.g, 0);
  const paramFeeds: Record<string, HostTensor> = {};
  for (const p of fwd.g.params.values()) paramFeeds[p.name] = host(values.get(p.name)!, p.shape);

  // Forward+backward: loss = Σ y⊙R, gradients for x and every parameter, all fetched.
  const bw = build();
  const params = [...bw.g.params.values()];
  const loss = o.reduceSum(o.mul(bw.y, bw.g.input('R', [B, T, D])));
  const grads = gradients(loss, [bw.x, ...params.map((p) => p.tensor)]);
  const outputs: Record<string, Tensor> = { loss, 'grad.x': grads[0]! };
  params.forEach((p, i) => (outputs[`grad.${p.name}`] = grads[i + 1]!));
  const into: Record<string, HostTensor> = { 'grad.x': buffer([B, T, D]) };
  for (const p of params) into[`grad.${p.name}`] = buffer(p.shape);
  console.log(`\n(forward graph: ${opHistogram(fwd.g, [fwd.y])})`);
  console.log(`(forward+backward graph: ${opHistogram(bw.g, Object.values(outputs))})`);

  // PyTorch tries both thread counts (its best is the baseline); --quick keeps it to one thread.
  const t = runTorch('block', { B, T, D, H, F, threads: ctx.quick ? [1] : [1, 2], fwd: fwdReps, bwd: bwdReps });

  // Forward variants: weights baked in (inference: ORT pre-packs them), the inference models' graph
  // (same weights, attention as one fused kernel), weights fed as inputs (as in training).
  const inf = build('infer');
  const forwards = [
    { label: 'weights baked in', g: fwd.g, y: fwd.y, opts: { paramValues: values }, feeds: { x } },
    { label: "mode 'infer' (fused Attention)", g: inf.g, y: inf.y, opts: { paramValues: values }, feeds: { x } },
    { label: 'weights as inputs', g: fwd.g, y: fwd.y, opts: { paramsAsInputs: true }, feeds: { x, ...paramFeeds } },
  ].slice(0, ctx.quick ? 1 : 3);
  const yBuf = { y: buffer([B, T, D]) };
  const rows: Row[] = [];
  for (const threads of threadCounts) {
    // The baseline: PyTorch at its best thread count for our 2-thread rows, at 1 thread for our 1-thread rows.
    const pick = (name: string) => (threads === 1 ? at(t?.get(name), 1) : best(t?.get(name)));
    const note = (flops: number, ours: Stats, base: Stats | undefined): string => `${gflops(flops, ours)} GFLOP/s vs ${gflops(flops, base)}`;
    for (const f of forwards) {
      const c = await compile(f.g, { y: f.y }, { threads, cacheKey: false, ...f.opts });
      const s = await measure(() => c.run(f.feeds, yBuf), fwdReps);
      await c.session.release();
      rows.push({ case: `forward, ${f.label}, ${threads} thread(s)`, ours: s, torch: pick('fwd'), note: note(BLOCK_FWD_FLOPS, s, pick('fwd')) });
    }
    const train = await compile(bw.g, outputs, { threads, cacheKey: false });
    const s = await measure(() => train.run({ x, R: r, ...paramFeeds }, into), bwdReps);
    await train.session.release();
    rows.push({ case: `forward+backward, ${threads} thread(s)`, ours: s, torch: pick('fwdbwd'), note: note(BLOCK_FWDBWD_FLOPS, s, pick('fwdbwd')) });
  }
  printTable(
    `3. ViT-B/16 block, batch ${B}×${T} (${(BLOCK_FWD_FLOPS / 1e9).toFixed(1)} GFLOP forward, ${(BLOCK_FWDBWD_FLOPS / 1e9).toFixed(1)} forward+backward)`,
    rows,
  );
}
