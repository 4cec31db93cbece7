// Per-op-type time of one training step, from ONNX Runtime's profiler: where a step's time goes.
//   node dist/bench/profile_step.js [vit.json] [batch] [steps]   a ViT classifier step
//   node dist/bench/profile_step.js clip [batch] [steps]         the clip-train benchmark's CLIP step
// TOP=N also lists the N most expensive nodes; PROFILE=0 times steps with the profiler off instead;
// THREADS=n sets ONNX Runtime's threads (default 2).
import { readFileSync, readdirSync, rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as o from '../src/graph/ops.js';
import { type VitConfig, patchKeepIndices, vitDefaults } from '../src/models/vit.js';
import { Rng, initParams } from '../src/nn/init.js';
import { TrainStep } from '../src/optim/step.js';
import type { HostTensor } from '../src/runtime/session.js';
import { vitClassifierGraph } from '../src/train/vit-run.js';
import { ClipModel } from '../src/models/clip-model.js';
import { fromOpenClip } from '../src/models/config.js';
import { createClipTrainer } from '../src/train/clip-trainer.js';

interface Profiled {
  step(): Promise<unknown>;
  end(): void;
  close?(): Promise<void>;
}

/** The clip-train benchmark's model and batch (bench/clip.ts), with profiling on. */
async function clipStep(B: number, prefix: string | undefined): Promise<Profiled> {
  const c = { image: 64, patch: 8, vlayers: 6, vwidth: 256, ctx: 32, vocab: 49408, twidth: 256, theads: 4, tlayers: 4, embed: 256 };
  const cfg = fromOpenClip({
    embed_dim: c.embed,
    quick_gelu: true,
    vision_cfg: { image_size: c.image, layers: c.vlayers, width: c.vwidth, patch_size: c.patch },
    text_cfg: { context_length: c.ctx, vocab_size: c.vocab, width: c.twidth, heads: c.theads, layers: c.tlayers },
  });
  const trainer = createClipTrainer(ClipModel.random(cfg, 0), { threads: 2, optimizer: { lr: 5e-4, betas: [0.9, 0.98], eps: 1e-6, weightDecay: 0.2 }, profile: prefix });
  const pixels = { data: new Float32Array(B * 3 * c.image * c.image).map(() => Math.random() - 0.5), shape: [B, 3, c.image, c.image] };
  const ids = new Int32Array(B * c.ctx).map(() => 1 + Math.floor(Math.random() * (c.vocab - 3)));
  for (let r = 0; r < B; r++) ids[r * c.ctx + c.ctx - 1] = c.vocab - 1;
  return { step: () => trainer.step({ pixels, tokens: { data: ids, shape: [B, c.ctx] } }), end: () => trainer.endProfiling() };
}

async function vitStep(cfgPath: string | undefined, B: number, prefix: string | undefined): Promise<Profiled> {
  const config: VitConfig = cfgPath
    ? (JSON.parse(readFileSync(cfgPath, 'utf8')) as VitConfig)
    : vitDefaults({ imageSize: 32, patchSize: 4, width: 128, layers: 4, heads: 4, mlpRatio: 2, pool: 'mean', numClasses: 10 });
  const C = config.numClasses;
  const { g, logits } = vitClassifierGraph(config, B);
  const targets = g.input('targets', [B, C]);
  const loss = o.neg(o.reduceMean(o.reduceSum(o.mul(o.logSoftmax(logits, -1), targets), [-1])));
  const optimizer = { lr: 1e-3, weightDecay: 0.05 };
  const ts = await TrainStep.create(g, loss, initParams(g, 0), { optimizer, profile: prefix, threads: Number(process.env.THREADS ?? 2) });
  const S = config.imageSize;
  const pixels = { data: new Float32Array(B * 3 * S * S).map(() => Math.random() - 0.5), shape: [B, 3, S, S] };
  const t = { data: new Float32Array(B * C).fill(1 / C), shape: [B, C] };
  const feeds: Record<string, HostTensor> = { pixels, targets: t };
  if ((config.patchDropout ?? 0) > 0) feeds.patch_keep = patchKeepIndices(config, B, new Rng('profile'));
  return { step: () => ts.step(feeds), end: () => ts.endProfiling(), close: () => ts.close() };
}

async function main(): Promise<void> {
  const [what, batchArg, stepsArg] = process.argv.slice(2);
  const B = Number(batchArg ?? (what === 'clip' ? 64 : 128));
  const steps = Number(stepsArg ?? 10);
  const dir = mkdtempSync(join(tmpdir(), 'ck-prof-'));
  const profiling = process.env.PROFILE !== '0';
  const prefix = profiling ? join(dir, 'p') : undefined;
  const p = what === 'clip' ? await clipStep(B, prefix) : await vitStep(what, B, prefix);
  await p.step(); // compile and first run outside the average
  if (!profiling) {
    // PROFILE=0: wall time per step, profiler off — the median and quartiles over `steps` steps.
    const ms: number[] = [];
    for (let i = 0; i < steps; i++) {
      const t = performance.now();
      await p.step();
      ms.push(performance.now() - t);
    }
    ms.sort((a, b) => a - b);
    const q = (f: number): string => ms[Math.floor(f * (ms.length - 1))]!.toFixed(1);
    console.log(`batch ${B}: median ${q(0.5)} ms/step (quartiles ${q(0.25)}–${q(0.75)}), ${(B / Number(q(0.5)) * 1000).toFixed(0)} samples/s, profiler off`);
    rmSync(dir, { recursive: true });
    await p.close?.();
    return;
  }
  const t0 = performance.now();
  for (let i = 0; i < steps; i++) await p.step();
  const wall = (performance.now() - t0) / steps;
  p.end();
  await p.close?.();
  const file = readdirSync(dir).find((f) => f.endsWith('.json'))!;
  const events = JSON.parse(readFileSync(join(dir, file), 'utf8')) as { cat: string; name: string; ts: number; dur: number; args?: { op_name?: string; input_type_shape?: unknown; output_type_shape?: unknown } }[];
  const top = process.env.TOP ? Number(process.env.TOP) : 0;
  rmSync(dir, { recursive: true });
  const byOp = new Map<string, { us: number; n: number }>();
  let total = 0;
  const perNode = new Map<string, number>();
  // Skip the first (warm-up) run's kernels.
  const runs = events.filter((e) => e.cat === 'Session' && e.name === 'model_run').sort((a, b) => a.ts - b.ts);
  const after = runs.length > steps ? runs[0]!.ts + runs[0]!.dur : -Infinity;
  for (const e of events) {
    if (e.ts < after) continue;
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time')) continue;
    const op = e.args?.op_name ?? '?';
    const r = byOp.get(op) ?? { us: 0, n: 0 };
    r.us += e.dur;
    r.n += 1;
    byOp.set(op, r);
    total += e.dur;
    const key = `${op} ${e.name.replace(/_kernel_time$/, '')} ${JSON.stringify(e.args?.input_type_shape)}`;
    perNode.set(key, (perNode.get(key) ?? 0) + e.dur);
  }
  const big = [...perNode].filter(([k]) => k.includes('[49408,256]'));
  if (big.length) console.log(`nodes on [49408, 256] (the token embedding: its gradient and AdamW): ${(big.reduce((a, [, us]) => a + us, 0) / 1000 / steps).toFixed(1)} ms/step in ${big.length} nodes`);
  if (top) for (const [k, us] of [...perNode].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${(us / 1000 / steps).toFixed(2).padStart(7)} ms  ${k.slice(0, 200)}`);
  console.log(`batch ${B}: ${wall.toFixed(1)} ms/step wall (profiling on), kernels ${(total / 1000 / steps).toFixed(1)} ms/step, ${(B / wall * 1000).toFixed(0)} samples/s`);
  for (const [op, r] of [...byOp].sort((a, b) => b[1].us - a[1].us)) {
    console.log(`${op.padEnd(28)} ${(r.us / 1000 / steps).toFixed(2).padStart(8)} ms ${((100 * r.us) / total).toFixed(1).padStart(5)}%  ${(r.n / steps).toFixed(0).padStart(4)} nodes`);
  }
}
await main();
