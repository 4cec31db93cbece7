// The CLIP benchmarks (group 'clip'), each beside PyTorch 1.13 running OpenAI's own clip/model.py
// (bench/torch_clip.py; OPENAI_CLIP_DIR names the directory holding OpenAI's `clip` package).
//  clip-infer: ViT-B/32 encodeImage (224 px) and encodeText (width 512, 12 layers, context 77), vs
//    (a) PyTorch eager and (b) the same model exported by torch.onnx.export (opset 17) run by
//    onnxruntime-node with all graph optimisations — what a transformers.js user gets. Same weights
//    on all three sides: PyTorch writes its state_dict as safetensors and we load it.
//  clip-train: one training step (both towers, CLIP loss, AdamW) of a small CLIP vs PyTorch.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Bench, Ctx } from './bench.js';
import { cpuSnapshot } from './cpu.js';
import { host, randn } from './data.js';
import { fmtTime } from './report.js';
import { type Stats, measure, summarize } from './stats.js';
import { type TorchCase, best, torchInfo, torchWindows } from './torch.js';
import { Graph } from '../src/graph/graph.js';
import * as o from '../src/graph/ops.js';
import { ClipModel } from '../src/models/clip-model.js';
import { fromOpenClip } from '../src/models/config.js';
import { loadClip } from '../src/models/load.js';
import { compile } from '../src/runtime/compile.js';
import { Session } from '../src/runtime/session.js';
import { createClipTrainer } from '../src/train/clip-trainer.js';
import { rowCosines } from '../src/eval/cosine.js';

const PYTHON = process.env.CLIPKIT_BENCH_PYTHON ?? '/usr/bin/python3';
// dist/bench/clip.js → bench/torch_clip.py (the script is not compiled, so it stays in bench/).
const SCRIPT = fileURLToPath(new URL('../../bench/torch_clip.py', import.meta.url));
const THREADS = 2;

interface TorchRun {
  cases: Map<string, TorchCase[]>;
  notes: Record<string, unknown>;
}

/** Runs torch_clip.py (as bench/torch.ts runs torch_engine.py); null, with the reason printed, on failure. */
function runTorchClip(bench: string, args: Record<string, unknown>): TorchRun | null {
  if (!process.env.OPENAI_CLIP_DIR) {
    console.log("  OpenAI's model.py not found: set OPENAI_CLIP_DIR (the directory holding OpenAI's `clip` package)");
    return null;
  }
  if (!torchInfo()) return null;
  const before = cpuSnapshot();
  const r = spawnSync(PYTHON, [SCRIPT, bench, JSON.stringify(args)], { encoding: 'utf8', maxBuffer: 64 << 20 });
  torchWindows.push([before, cpuSnapshot()]);
  if (r.status !== 0 || r.error) {
    const err = (r.error?.message ?? r.stderr).trim().split('\n');
    console.log(`  (PyTorch side of '${bench}' failed: ${err.slice(-3).join(' | ')})`);
    return null;
  }
  const raw = JSON.parse(r.stdout) as { cases: Record<string, { threads: number; samples: number[]; cpu: number[] }[]>; notes?: Record<string, unknown> };
  const cases = new Map<string, TorchCase[]>();
  for (const [name, runs] of Object.entries(raw.cases)) cases.set(name, runs.map((x) => ({ ...summarize(x.samples, x.cpu), threads: x.threads })));
  return { cases, notes: raw.notes ?? {} };
}

// ---- FLOP counts (matmuls only) ----

/** A pre-LN transformer: QKV + out projection (4·D²) and MLP (2·r·D²) per token, plus QKᵀ and A·V over all T² pairs. */
function towerFlops(tokens: number, width: number, layers: number, mlpRatio = 4): number {
  return layers * (2 * tokens * (4 + 2 * mlpRatio) * width * width + 2 * 2 * tokens * tokens * width);
}
/** ViT-B/32 image tower per image: patch embedding, 50 tokens × 12 layers, projection. */
const IMAGE_FLOPS = 2 * 49 * (3 * 32 * 32) * 768 + towerFlops(50, 768, 12) + 2 * 768 * 512;
/** ViT-B/32 text tower per text over L positions, projection of the end token's features. */
const textFlops = (len: number): number => towerFlops(len, 512, 12) + 2 * 512 * 512;

/** MatMul 512×768 @ 768×768 (B baked in) at THREADS threads, as bench/engine.ts measures it: GFLOP/s. */
async function matmulPeak(quick: boolean): Promise<number> {
  const [M, K, N] = [512, 768, 768];
  const g = new Graph('mm_peak');
  const y = o.matmul(g.input('a', [M, K]), g.param('b', [K, N], { kind: 'zeros' }));
  const c = await compile(g, { y }, { threads: THREADS, cacheKey: false, paramValues: new Map([['b', randn(K * N, 'b')]]) });
  const a = host(randn(M * K, 'a'), [M, K]);
  const s = await measure(() => c.run({ a }), quick ? { warmup: 2, reps: 8 } : { warmup: 5, reps: 30 });
  await c.session.release();
  return (2 * M * K * N) / s.median / 1e9;
}

// ---- tables ----

interface Line {
  case: string;
  unit: string;
  /** Items per call. */
  items: number;
  ours?: Stats;
  oursFlops: number;
  base?: (Stats & { threads?: number }) | undefined;
  baseFlops: number;
  baseName: string;
}

function printSpeedTable(title: string, lines: Line[], peak?: number): void {
  const rate = (s: Stats | undefined, items: number) => (s ? `${(items / s.median).toFixed(items / s.median >= 100 ? 0 : 1)}` : '—');
  const gf = (flops: number, s: Stats | undefined) => {
    if (!s) return '—';
    const v = flops / s.median / 1e9;
    return peak ? `${v.toFixed(1)} (${((100 * v) / peak).toFixed(0)}%)` : v.toFixed(1);
  };
  const header = ['case', 'baseline', 'ours /s [time p10–p90]', 'baseline /s [time p10–p90]', 'speedup', 'GFLOP/s ours', 'GFLOP/s baseline'];
  const cells = lines.map((l) => [
    l.case,
    l.base ? `${l.baseName}${l.base.threads ? ` @${l.base.threads}t` : ''}` : `${l.baseName}: —`,
    `${rate(l.ours, l.items)} ${l.unit} [${l.ours ? `${fmtTime(l.ours.median)} ${fmtTime(l.ours.p10)}–${fmtTime(l.ours.p90)}` : '—'}]`,
    `${rate(l.base, l.items)} ${l.unit} [${l.base ? `${fmtTime(l.base.median)} ${fmtTime(l.base.p10)}–${fmtTime(l.base.p90)}` : '—'}]`,
    l.ours && l.base ? `${(l.base.median / l.ours.median).toFixed(2)}×` : '—',
    gf(l.oursFlops, l.ours),
    gf(l.baseFlops, l.base),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => c.map((x, i) => x.padEnd(widths[i]!)).join('  ').trimEnd();
  console.log(`\n${title}`);
  console.log(line(header));
  console.log(line(widths.map((w) => '-'.repeat(w))));
  for (const c of cells) console.log(line(c));
}

// ---- clip-infer ----

function readBin(dir: string, io: Record<string, { dtype: string; shape: number[] }>, name: string): { data: Float32Array | BigInt64Array; shape: number[] } {
  const b = readFileSync(join(dir, `${name}.bin`));
  const ab = b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
  const m = io[name]!;
  return { data: m.dtype === 'int64' ? new BigInt64Array(ab) : new Float32Array(ab), shape: m.shape };
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Number.NaN;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

function maxAbs(a: Float32Array): number {
  let m = 0;
  for (const v of a) m = Math.max(m, Math.abs(v));
  return m;
}

async function clipInfer(ctx: Ctx): Promise<void> {
  const imageBatch = ctx.quick ? 2 : 16;
  const textBatch = ctx.quick ? 2 : 64;
  const imageReps = ctx.quick ? { warmup: 1, reps: 2 } : { warmup: 1, reps: 5 };
  const textReps = ctx.quick ? { warmup: 1, reps: 2 } : { warmup: 1, reps: 3 };
  const shortReps = ctx.quick ? { warmup: 1, reps: 3 } : { warmup: 2, reps: 10 };
  // PyTorch: no untimed warmup in --quick (eager mode has little to warm up; its reference-BLAS
  // calls are slow); in the full run each case is held to ~budget seconds of timed calls (≥ 1).
  const torchImageReps = ctx.quick ? { warmup: 0, reps: 1 } : imageReps;
  const torchTextReps = ctx.quick ? { warmup: 0, reps: 1 } : textReps;
  const budget = ctx.quick ? undefined : 25;
  const threads = ctx.quick ? [THREADS] : [1, 2];
  console.log(
    `\nclip-infer: ViT-B/32, image batch ${imageBatch}, text batch ${textBatch}${ctx.quick ? ' (--quick: smaller batches than the full run\'s 16 and 64; PyTorch at 2 threads only, one timed call per case)' : ''}; random weights (seed 0) from PyTorch, same on every side`,
  );
  const dir = mkdtempSync(join(tmpdir(), 'clipkit-bench-clip-'));
  try {
    const t = runTorchClip('infer', { dir, imageBatch, textBatch, threads, imageReps: torchImageReps, textReps: torchTextReps, budget, seed: 0 });
    if (!t) {
      console.log('  clip-infer needs the PyTorch side (it writes the weights and the ONNX export); skipped.');
      return;
    }
    const io = JSON.parse(readFileSync(join(dir, 'io.json'), 'utf8')) as Record<string, { dtype: string; shape: number[] }>;
    const pixels = readBin(dir, io, 'pixels') as { data: Float32Array; shape: number[] };
    const full = readBin(dir, io, 'tokens_full') as { data: BigInt64Array; shape: number[] };
    const short = readBin(dir, io, 'tokens_short') as { data: BigInt64Array; shape: number[] };
    const ref = {
      image: readBin(dir, io, 'image_features').data as Float32Array,
      full: readBin(dir, io, 'text_full_features').data as Float32Array,
      short: readBin(dir, io, 'text_short_features').data as Float32Array,
    };
    const peak = await matmulPeak(ctx.quick);

    // (b) the torch.onnx.export model on onnxruntime-node, all graph optimisations.
    const ort: Record<string, Stats> = {};
    const diffs: string[] = [];
    {
      const vis = await Session.create(join(dir, 'vision.onnx'), { threads: THREADS, optLevel: 'all', cacheKey: false });
      const out = (await vis.run({ pixels }))['image_embeds']!.data as Float32Array;
      diffs.push(`ONNX export vs PyTorch: image ${maxAbsDiff(out, ref.image).toExponential(2)}`);
      ort.image = await measure(() => vis.run({ pixels }), imageReps);
      await vis.release();
      const txt = await Session.create(join(dir, 'text.onnx'), { threads: THREADS, optLevel: 'all', cacheKey: false });
      const of = (await txt.run({ input_ids: full }))['text_embeds']!.data as Float32Array;
      const os = (await txt.run({ input_ids: short }))['text_embeds']!.data as Float32Array;
      diffs.push(`text (77) ${maxAbsDiff(of, ref.full).toExponential(2)}, text (short) ${maxAbsDiff(os, ref.short).toExponential(2)}`);
      ort.full = await measure(() => txt.run({ input_ids: full }), textReps);
      ort.short = await measure(() => txt.run({ input_ids: short }), textReps);
      await txt.release();
    }

    // Ours: the same weights through loadClip, towers compiled with the weights baked in.
    const cfg = { embed_dim: 512, quick_gelu: true, vision_cfg: { image_size: 224, layers: 12, width: 768, patch_size: 32 }, text_cfg: { context_length: 77, vocab_size: 49408, width: 512, heads: 8, layers: 12 } };
    const model = await loadClip(join(dir, 'weights.safetensors'), { config: cfg, threads: THREADS });
    const ours: Record<string, Stats> = {};
    const fi = (await model.encodeImage(pixels)).data;
    const ff = (await model.encodeText(full)).data;
    const fs = (await model.encodeText(short)).data;
    const dImg = maxAbsDiff(fi, ref.image);
    const dFull = maxAbsDiff(ff, ref.full);
    const dShort = maxAbsDiff(fs, ref.short);
    const bad = Math.max(dImg / maxAbs(ref.image), dFull / maxAbs(ref.full), dShort / maxAbs(ref.short)) > 1e-3;
    console.log(
      `  features, max |ours − PyTorch|: image ${dImg.toExponential(2)} (|features| ≤ ${maxAbs(ref.image).toFixed(2)}), text (77) ${dFull.toExponential(2)}, text (short) ${dShort.toExponential(2)} (|features| ≤ ${maxAbs(ref.full).toFixed(2)})${bad ? '  ← MISMATCH' : ''}`,
    );
    console.log(`  ${diffs.join(', ')}`);
    ours.image = await measure(() => model.encodeImage(pixels), imageReps);
    ours.full = await measure(() => model.encodeText(full), textReps);
    ours.short = await measure(() => model.encodeText(short), shortReps);

    // Ours with int8 linear layers (quantize: 'int8'): not bit-comparable, so its distance is reported
    // as the cosine between its features and PyTorch's (random weights: a harsher case than trained ones).
    const q8 = await loadClip(join(dir, 'weights.safetensors'), { config: cfg, threads: THREADS, quantize: 'int8' });
    const qi = (await q8.encodeImage(pixels)).data;
    const qf = (await q8.encodeText(full)).data;
    console.log(`  int8: cosine to PyTorch's features, min/mean over rows: image ${cosines(qi, ref.image, 512)}, text (77) ${cosines(qf, ref.full, 512)}`);
    ours.q8image = await measure(() => q8.encodeImage(pixels), imageReps);
    ours.q8full = await measure(() => q8.encodeText(full), textReps);

    const eager = { image: best(t.cases.get('image')), full: best(t.cases.get('text_full')), short: best(t.cases.get('text_short')) };
    const shortLen = 7;
    const tried = threads.join(' and ');
    const L = (c: string, unit: string, items: number, s: Stats, oursFlops: number, baseFlops: number) => [
      { case: c, unit, items, ours: s, oursFlops, base: eager[c.startsWith('encodeImage') ? 'image' : c.includes('short') ? 'short' : 'full'], baseFlops, baseName: `(a) PyTorch eager (best of ${tried}t)` },
    ];
    const lines: Line[] = [];
    const imgCase = `encodeImage, ${imageBatch}×3×224×224`;
    const fullCase = `encodeText, ${textBatch}×77, all 77 positions used (eot last; like for like)`;
    const shortCase = `encodeText, ${textBatch}×77, short prompts (eot at 7; ours trims to 7 positions, they run 77)`;
    for (const [c, unit, n, key, of, bf] of [
      [imgCase, 'img', imageBatch, 'image', IMAGE_FLOPS * imageBatch, IMAGE_FLOPS * imageBatch],
      [fullCase, 'txt', textBatch, 'full', textFlops(77) * textBatch, textFlops(77) * textBatch],
      [shortCase, 'txt', textBatch, 'short', textFlops(shortLen) * textBatch, textFlops(77) * textBatch],
    ] as const) {
      lines.push(...L(c, unit, n, ours[key]!, of, bf));
      lines.push({ case: '', unit, items: n, ours: ours[key], oursFlops: of, base: ort[key], baseFlops: bf, baseName: `(b) torch.onnx.export → onnxruntime-node @${THREADS}t` });
    }
    for (const [c, unit, n, key, q, of] of [
      [`${imgCase}, ours int8`, 'img', imageBatch, 'image', 'q8image', IMAGE_FLOPS * imageBatch],
      [`${fullCase.replace(' (eot last; like for like)', '')}, ours int8`, 'txt', textBatch, 'full', 'q8full', textFlops(77) * textBatch],
    ] as const) {
      lines.push({ case: c, unit, items: n, ours: ours[q], oursFlops: of, base: eager[key], baseFlops: of, baseName: `(a) PyTorch eager (best of ${tried}t)` });
      lines.push({ case: '', unit, items: n, ours: ours[q], oursFlops: of, base: ort[key], baseFlops: of, baseName: `(b) torch.onnx.export → onnxruntime-node @${THREADS}t` });
    }
    printSpeedTable(
      `clip-infer: ViT-B/32 towers, ours @${THREADS}t (weights from PyTorch, quick_gelu). speedup = baseline time / our time (above 1: we are faster). ` +
        `GFLOP/s counts matmul FLOPs (image ${(IMAGE_FLOPS / 1e9).toFixed(2)} GFLOP/img, text ${(textFlops(77) / 1e9).toFixed(2)} GFLOP/text at 77 positions; ours on short prompts is counted at the 7 positions it runs) ` +
        `and is shown as % of the measured MatMul peak, 512×768 @ 768×768 at ${THREADS}t: ${peak.toFixed(1)} GFLOP/s`,
      lines,
      peak,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---- clip-train ----

async function clipTrain(ctx: Ctx): Promise<void> {
  const batch = ctx.quick ? 8 : 64;
  const reps = ctx.quick ? { warmup: 1, reps: 2 } : { warmup: 1, reps: 5 };
  const torchReps = ctx.quick ? { warmup: 0, reps: 1 } : reps;
  const threads = ctx.quick ? [THREADS] : [1, 2];
  const c = { image: 64, patch: 8, vlayers: 6, vwidth: 256, ctx: 32, vocab: 49408, twidth: 256, theads: 4, tlayers: 4, embed: 256 };
  const adamw = { lr: 5e-4, betas: [0.9, 0.98] as [number, number], eps: 1e-6, weightDecay: 0.2 };
  console.log(
    `\nclip-train: small CLIP (${c.image} px, patch ${c.patch}, vision width ${c.vwidth}×${c.vlayers} layers (${c.vwidth / 64} heads); text width ${c.twidth}×${c.tlayers} layers, ${c.theads} heads, ` +
      `context ${c.ctx}, vocab ${c.vocab}; embed ${c.embed}; quick_gelu), batch ${batch}${ctx.quick ? ' (--quick: the full run uses 64; PyTorch at 2 threads only, one timed step)' : ''}; ` +
      `CLIP loss + AdamW (lr ${adamw.lr}, betas ${adamw.betas}, eps ${adamw.eps}, wd ${adamw.weightDecay} off for gains/biases/logit_scale), logit scale clamped to log 100`,
  );
  const t = runTorchClip('train', { cfg: c, adamw, batch, threads, reps: torchReps, budget: ctx.quick ? undefined : 40, seed: 0 });

  const cfg = fromOpenClip({
    embed_dim: c.embed,
    quick_gelu: true,
    vision_cfg: { image_size: c.image, layers: c.vlayers, width: c.vwidth, patch_size: c.patch },
    text_cfg: { context_length: c.ctx, vocab_size: c.vocab, width: c.twidth, heads: c.theads, layers: c.tlayers },
  });
  const model = ClipModel.random(cfg, 0, { threads: THREADS });
  const trainer = createClipTrainer(model, { optimizer: adamw, threads: THREADS });
  const pixels = { data: randn(batch * 3 * c.image * c.image, 'pixels'), shape: [batch, 3, c.image, c.image] };
  const ids = new Int32Array(batch * c.ctx);
  const rnd = randn(ids.length, 'tokens');
  for (let i = 0; i < ids.length; i++) ids[i] = 1 + (Math.floor(Math.abs(rnd[i]!) * 1e6) % (c.vocab - 3));
  for (let r = 0; r < batch; r++) {
    ids[r * c.ctx] = c.vocab - 2;
    ids[r * c.ctx + c.ctx - 1] = c.vocab - 1; // end token last: all positions used, as on the PyTorch side
  }
  const tokens = { data: ids, shape: [batch, c.ctx] };
  const losses: number[] = [];
  const s = await measure(async () => losses.push((await trainer.step({ pixels, tokens })).loss), reps);

  const tokensV = (c.image / c.patch) ** 2 + 1;
  const fwd = batch * (2 * (c.image / c.patch) ** 2 * 3 * c.patch * c.patch * c.vwidth + towerFlops(tokensV, c.vwidth, c.vlayers) + 2 * c.vwidth * c.embed + towerFlops(c.ctx, c.twidth, c.tlayers) + 2 * c.twidth * c.embed) + 2 * batch * batch * c.embed;
  const flops = 3 * fwd; // backward: two matmuls per forward matmul
  const tried = threads.join(' and ');
  printSpeedTable(
    `clip-train: one step (forward both towers, loss, backward, AdamW), ours @${THREADS}t vs PyTorch eager at its best of ${tried} thread(s). speedup = PyTorch time / our time (above 1: we are faster); ${(flops / 1e9).toFixed(1)} GFLOP per step (matmuls, 3× forward)`,
    [{ case: `train step, batch ${batch}`, unit: 'steps', items: 1, ours: s, oursFlops: flops, base: best(t?.cases.get('step')), baseFlops: flops, baseName: `PyTorch eager` }],
  );
  const tl = t ? ` PyTorch: ${Number(t.notes.firstLoss).toFixed(4)} → ${Number(t.notes.lastLoss).toFixed(4)}.` : '';
  console.log(`  losses over the timed steps (different random init and data on the two sides, so only roughly comparable; ln ${batch} = ${Math.log(batch).toFixed(4)}): ours ${losses[0]!.toFixed(4)} → ${losses[losses.length - 1]!.toFixed(4)}.${tl}`);
}

export const CLIP: Bench[] = [
  { group: 'clip', name: 'clip-infer', title: 'ViT-B/32 encodeImage/encodeText vs PyTorch eager and its ONNX export on onnxruntime-node', run: clipInfer },
  { group: 'clip', name: 'clip-train', title: 'small CLIP training step (CLIP loss + AdamW) vs PyTorch', run: clipTrain },
];

/** "min/mean" of the row-wise cosine similarities of two [N, d] feature sets. */
function cosines(a: Float32Array, b: Float32Array, d: number): string {
  const cs = rowCosines(a, b, d);
  return `${Math.min(...cs).toFixed(4)}/${(cs.reduce((x, y) => x + y, 0) / cs.length).toFixed(4)}`;
}
