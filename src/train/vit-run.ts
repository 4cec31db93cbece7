// ViT image classification (chapter 5.2): a ViT with a class head, cross-entropy with label
// smoothing, optional mixup/cutmix, AdamW + warmup-cosine, on the shared training loop. It can start
// from the image tower of a CLIP model (fine-tuning).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type IndexedSource, imageFolder } from '../data/datasets.js';
import { DataLoader } from '../data/loader.js';
import { Graph } from '../graph/graph.js';
import * as o from '../graph/ops.js';
import { listPresets, preset } from '../models/config.js';
import { loadClip } from '../models/load.js';
import { type VitConfig, keptPatches, patchKeepIndices, validateVit, vit, vitTokens } from '../models/vit.js';
import type { HostTensor } from '../runtime/session.js';
import { Rng, initParams } from '../nn/init.js';
import { TrainStep } from '../optim/step.js';
import { warmupCosine } from '../optim/schedule.js';
import { compile } from '../runtime/compile.js';
import { writeSafetensors, SafetensorsFile } from '../checkpoint/safetensors.js';
import { saveCheckpoint } from './checkpoint.js';
import { openClipExcluded } from './clip-trainer.js';
import { openRunDir, trainLoop } from './loop.js';
import { holdOut } from './split.js';

export interface VitRunConfig {
  data: string;
  out: string;
  /** A CLIP preset (its vision tower), a ViT config .json, or a CLIP model to fine-tune. */
  model: string;
  pool?: 'cls' | 'mean' | 'attn';
  /** Overrides the model's patch dropout (training only). */
  patchDropout?: number;
  /** The last fraction of the steps trains on every patch (FLIP's unmasked tuning); default 0. */
  unmaskedTune?: number;
  epochs?: number;
  minutes?: number;
  maxSteps?: number;
  batchSize: number;
  lr: number;
  weightDecay: number;
  warmup: number;
  clipNorm?: number;
  labelSmoothing: number;
  mixup: number;
  cutmix: number;
  holdout: number;
  evalEvery: number;
  saveEvery: number;
  seed: number;
  workers: number;
  threads?: number;
  cacheImages: boolean;
  augmentScale: [number, number];
}

/** The classifier's graph: pixels → logits, with a soft-target cross-entropy for mixup/cutmix. */
export function vitClassifierGraph(c: VitConfig, batch: number | string, mode: 'train' | 'infer' = 'train') {
  const g = new Graph('vit');
  g.mode = mode;
  const pixels = g.input('pixels', [batch, 3, c.imageSize, c.imageSize]);
  const logits = g.scope('visual', () => vit(g, pixels, c));
  return { g, pixels, logits };
}

async function buildVit(cfg: VitRunConfig, classes: number): Promise<{ config: VitConfig; params: Map<string, Float32Array> }> {
  let config: VitConfig;
  let init = new Map<string, Float32Array>();
  if (listPresets().includes(cfg.model)) config = { ...preset(cfg.model).vision };
  else if (cfg.model.endsWith('.json')) config = JSON.parse(readFileSync(cfg.model, 'utf8')) as VitConfig;
  else {
    // Fine-tuning: the image tower of a CLIP model, without its projection, plus a new head.
    const clip = await loadClip(cfg.model);
    config = { ...clip.config.vision };
    for (const [k, v] of clip.params) if (k.startsWith('visual.') && k !== 'visual.proj') init.set(k, v);
  }
  const fromCls = config.pool === 'cls';
  config = { ...config, outputDim: 0, numClasses: classes, pool: cfg.pool ?? config.pool };
  if (cfg.patchDropout !== undefined) config.patchDropout = cfg.patchDropout;
  validateVit(config);
  const { g } = vitClassifierGraph(config, 1);
  if (init.size) {
    // A change of pooling changes the token count: the class token's position row goes or comes.
    const pe = init.get('visual.positional_embedding');
    const toCls = config.pool === 'cls';
    if (pe && fromCls && !toCls) init.set('visual.positional_embedding', pe.slice(config.width));
    if (pe && !fromCls && toCls) {
      const withRow = new Float32Array(pe.length + config.width);
      withRow.set(pe, config.width);
      init.set('visual.positional_embedding', withRow);
    }
    // Keep what the new graph has with the same size; the rest (head, new pooling) starts fresh.
    init = new Map(
      [...init].filter(([k, v]) => {
        const p = g.params.get(k);
        return p !== undefined && p.shape.reduce((a, b) => a * (b as number), 1) === v.length;
      }),
    );
  }
  return { config, params: initParams(g, cfg.seed, init) };
}

/** Mixup or CutMix on a batch in place (pixels NCHW, targets one-hot rows), drawn from `r`. */
export function mixBatch(pixels: Float32Array, targets: Float32Array, b: number, s: number, classes: number, r: Rng, mixup: number, cutmix: number): void {
  const useCut = cutmix > 0 && (mixup === 0 || r.next() < 0.5);
  const alpha = useCut ? cutmix : mixup;
  if (alpha <= 0) return;
  const lam0 = betaSample(r, alpha);
  const perm = r.shuffle([...Array(b).keys()]);
  const src = Float32Array.from(pixels);
  const srcT = Float32Array.from(targets);
  const per = 3 * s * s;
  let lam = lam0;
  let box = [0, 0, 0, 0];
  if (useCut) {
    const cut = Math.sqrt(1 - lam0);
    const [ch, cw] = [Math.round(s * cut), Math.round(s * cut)];
    const [cy, cx] = [r.int(s), r.int(s)];
    box = [Math.max(cy - (ch >> 1), 0), Math.min(cy + (ch >> 1), s), Math.max(cx - (cw >> 1), 0), Math.min(cx + (cw >> 1), s)];
    lam = 1 - ((box[1]! - box[0]!) * (box[3]! - box[2]!)) / (s * s);
  }
  for (let i = 0; i < b; i++) {
    const j = perm[i]!;
    if (useCut) {
      for (let c = 0; c < 3; c++) for (let y = box[0]!; y < box[1]!; y++) for (let x = box[2]!; x < box[3]!; x++) pixels[i * per + c * s * s + y * s + x] = src[j * per + c * s * s + y * s + x]!;
    } else {
      for (let k = 0; k < per; k++) pixels[i * per + k] = lam * src[i * per + k]! + (1 - lam) * src[j * per + k]!;
    }
    for (let c = 0; c < classes; c++) targets[i * classes + c] = lam * srcT[i * classes + c]! + (1 - lam) * srcT[j * classes + c]!;
  }
}

/** Beta(α, α) from two Gamma(α) draws (Marsaglia–Tsang; α < 1 boosted). */
function betaSample(r: Rng, a: number): number {
  const gamma = (k: number): number => {
    if (k < 1) return gamma(k + 1) * r.next() ** (1 / k);
    const d = k - 1 / 3;
    const c = 1 / Math.sqrt(9 * d);
    for (;;) {
      let x: number, v: number;
      do {
        x = r.normal();
        v = 1 + c * x;
      } while (v <= 0);
      v = v * v * v;
      const u = r.next();
      if (u < 1 - 0.0331 * x ** 4 || Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v;
    }
  };
  const x = gamma(a);
  return x / (x + gamma(a));
}

export interface VitRunResult {
  steps: number;
  seconds: number;
  finalLoss: number;
  top1?: number;
  top5?: number;
  modelPath: string;
}

export async function runVitTraining(cfg: VitRunConfig, resume = false, log: (s: string) => void = (s) => process.stderr.write(`${s}\n`)): Promise<VitRunResult> {
  const { ckptPath, resumed } = await openRunDir(cfg.out, cfg, resume, 'vit');

  const src = await imageFolder(cfg.data, { templates: ['{}'] });
  const C = src.classes.length;
  const { train, held } = cfg.holdout > 0 ? holdOut(src, cfg.holdout) : { train: src as IndexedSource, held: undefined };
  const built = resumed ? { config: resumed.modelConfig as VitConfig, params: resumed.params } : await buildVit(cfg, C);
  const { config, params } = built;
  const S = config.imageSize;
  const B = cfg.batchSize;
  const noText = { encode: (t: readonly string[]) => ({ data: new Int32Array(t.length), shape: [t.length, 1] as [number, number] }) };
  const loader = new DataLoader(train, { batchSize: B, imageSize: S, train: true, tokenizer: noText, contextLength: 1, seed: cfg.seed, workers: cfg.workers, cacheDecoded: cfg.cacheImages, scale: cfg.augmentScale, onSkip: (k, e) => log(`skipped unreadable image ${k}: ${e.message}`) });

  let total = cfg.maxSteps ?? (cfg.epochs && loader.batchesPerEpoch ? Math.round(cfg.epochs * loader.batchesPerEpoch) : undefined);
  if (resumed?.extra.totalSteps) total = resumed.extra.totalSteps as number;
  if (!total && !cfg.minutes) throw new Error('give --epochs, --max-steps or --minutes');
  let schedule = warmupCosine(cfg.lr, Math.min(cfg.warmup, total ?? cfg.warmup), total ?? Math.max(cfg.warmup, 1));
  // Training graph: soft targets so mixup/cutmix and label smoothing share one loss. One per patch
  // dropout: unmasked tuning switches to the every-patch graph for the last steps.
  const makeStep = (dropout: number): Promise<TrainStep> => {
    const { g, logits } = vitClassifierGraph({ ...config, patchDropout: dropout }, B);
    const targets = g.input('targets', [B, C]);
    const loss = o.neg(o.reduceMean(o.reduceSum(o.mul(o.logSoftmax(logits, -1), targets), [-1])));
    return TrainStep.create(g, loss, params, {
      optimizer: { lr: cfg.lr, betas: [0.9, 0.999], eps: 1e-8, weightDecay: cfg.weightDecay },
      weightDecayOf: (n, shape) => (openClipExcluded(n, shape) || n.endsWith('positional_embedding') || n.endsWith('class_embedding') ? 0 : cfg.weightDecay),
      clipNorm: cfg.clipNorm,
      schedule: (s) => schedule(s),
      threads: cfg.threads,
    });
  };
  let dropout = config.patchDropout ?? 0;
  // Unmasked tuning: the last steps see every patch, at about tokens(all) / tokens(kept) the cost.
  const unmasked = cfg.unmaskedTune ?? 0;
  const costRatio = vitTokens(config) / (keptPatches(config) + (config.pool === 'cls' ? 1 : 0));
  const unmaskedCost = unmasked > 0 && dropout > 0 ? (s: number, T: number): number => (dropout === 0 || s > (1 - unmasked) * T ? costRatio : 1) : undefined;
  let ts = await makeStep(dropout);
  if (resumed) ts.loadState(resumed.optimizer);

  const evalLoader = held ? new DataLoader(held, { batchSize: 250, imageSize: S, train: false, tokenizer: noText, contextLength: 1, workers: cfg.workers, cacheDecoded: cfg.cacheImages }) : undefined;
  const evaluate = async (): Promise<Record<string, number> | undefined> => (evalLoader ? (await evaluateVit(config, params, evalLoader, C, cfg.threads)).metrics : undefined);

  let result;
  try {
    result = await trainLoop({
      out: cfg.out,
      loader,
      batchSize: B,
      totalSteps: total,
      timeBudgetMs: total ? undefined : cfg.minutes! * 60_000,
      evalEvery: cfg.evalEvery,
      saveEvery: cfg.saveEvery,
      start: { step: ts.t, epoch: resumed?.position.epoch ?? 0, batch: resumed?.position.batch ?? 0, elapsedMs: (resumed?.extra.elapsedMs as number | undefined) ?? 0 },
      step: async (b) => {
        if (unmasked > 0 && dropout > 0 && total !== undefined && ts.t >= (1 - unmasked) * total) {
          log(`step ${ts.t}: unmasked tuning — every patch from here on`);
          const next = await makeStep(0);
          next.loadState(ts.state);
          await ts.close();
          [ts, dropout] = [next, 0];
        }
        const t = new Float32Array(B * C).fill(cfg.labelSmoothing / C);
        b.labels.forEach((l, i) => (t[i * C + l] = 1 - cfg.labelSmoothing + cfg.labelSmoothing / C));
        // Mixing draws from a stream keyed by the step, so a resumed run mixes identically.
        if (cfg.mixup > 0 || cfg.cutmix > 0) mixBatch(b.pixels.data, t, B, S, C, new Rng(`mix:${cfg.seed}:${ts.t}`), cfg.mixup, cfg.cutmix);
        const feeds: Record<string, HostTensor> = { pixels: b.pixels, targets: { data: t, shape: [B, C] } };
        if (dropout > 0) feeds.patch_keep = patchKeepIndices(config, B, new Rng(`patch:${cfg.seed}:${ts.t}`));
        return ts.step(feeds);
      },
      stepCost: unmaskedCost,
      onTotal: (t) => {
        total = t;
        schedule = warmupCosine(cfg.lr, Math.min(cfg.warmup, t), t);
      },
      evaluate,
      evalKey: 'top1',
      evalTitle: 'held-out top-1',
      save: (st) =>
        saveCheckpoint(ckptPath, { kind: 'vit', modelConfig: { ...config, classes: src.classes }, params, optimizer: ts.state, position: { epoch: st.epoch, batch: st.batch }, extra: { totalSteps: st.totalSteps, elapsedMs: st.elapsedMs } }),
      log,
    });
  } finally {
    await loader.close();
    await evalLoader?.close();
    await ts.close();
  }
  const modelPath = join(cfg.out, 'vit.safetensors');
  await saveVit(modelPath, config, src.classes, params);
  return { steps: result.steps, seconds: result.seconds, finalLoss: result.finalLoss, top1: result.lastEval?.top1, top5: result.lastEval?.top5, modelPath };
}

export async function saveVit(path: string, config: VitConfig, classes: readonly string[], params: Map<string, Float32Array>): Promise<void> {
  const { g } = vitClassifierGraph(config, 1);
  const tensors = [...g.params.values()].map((p) => ({ name: p.name, shape: [...p.shape], data: params.get(p.name)! }));
  await writeSafetensors(path, tensors, { format: 'pt', 'clipkit.kind': 'vit', 'clipkit.vit_config': JSON.stringify(config), 'clipkit.classes': JSON.stringify(classes) });
}

export async function loadVit(path: string): Promise<{ config: VitConfig; classes: string[]; params: Map<string, Float32Array> }> {
  const st = await SafetensorsFile.open(path);
  try {
    if (st.metadata['clipkit.kind'] !== 'vit') throw new Error(`${path} is not a clipkit ViT classifier (no clipkit.kind=vit metadata)`);
    const config = JSON.parse(st.metadata['clipkit.vit_config']!) as VitConfig;
    validateVit(config);
    const classes = JSON.parse(st.metadata['clipkit.classes'] ?? '[]') as string[];
    const params = new Map<string, Float32Array>();
    for (const n of st.names()) params.set(n, await st.readFloat32(n));
    return { config, classes, params };
  } finally {
    await st.close();
  }
}

/**
 * Top-1/top-5 and the confusion matrix (rows: true class, columns: predicted) of the classifier on
 * `loader`'s images. With `tta: 'flip'`
 * each image is also classified mirrored left-right and the two logit vectors are averaged
 * (test-time augmentation; twice the compute).
 */
export async function evaluateVit(
  config: VitConfig,
  params: Map<string, Float32Array>,
  loader: DataLoader,
  classes: number,
  threads?: number,
  tta: 'none' | 'flip' = 'none',
): Promise<{ metrics: Record<string, number>; confusion: number[][]; images: number }> {
  const { g, logits } = vitClassifierGraph(config, 'N', 'infer');
  const c = await compile(g, { logits }, { paramValues: params, threads, cacheKey: false });
  const confusion = Array.from({ length: classes }, () => new Array<number>(classes).fill(0));
  let [n, top1, top5] = [0, 0, 0];
  for await (const b of loader.batches(0)) {
    const out = (await c.run({ pixels: b.pixels })).logits!.data as Float32Array;
    if (tta === 'flip') {
      const mirrored = (await c.run({ pixels: { data: flipWidth(b.pixels.data as Float32Array, b.pixels.shape[3]!), shape: b.pixels.shape } })).logits!.data as Float32Array;
      for (let i = 0; i < out.length; i++) out[i] = (out[i]! + mirrored[i]!) / 2;
    }
    b.labels.forEach((label, i) => {
      const row = out.subarray(i * classes, (i + 1) * classes);
      const order = [...row.keys()].sort((p, q) => row[q]! - row[p]! || p - q);
      confusion[label]![order[0]!]!++;
      top1 += order[0] === label ? 1 : 0;
      top5 += order.slice(0, 5).includes(label) ? 1 : 0;
      n++;
    });
  }
  return { metrics: { top1: top1 / n, top5: top5 / n }, confusion, images: n };
}

/** A copy of NCHW (or any …W) pixels mirrored along the last axis. */
export function flipWidth(px: Float32Array, width: number): Float32Array {
  const out = new Float32Array(px.length);
  for (let row = 0; row < px.length; row += width) {
    for (let x = 0; x < width; x++) out[row + x] = px[row + width - 1 - x]!;
  }
  return out;
}
