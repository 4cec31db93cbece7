// A CLIP training run: data → trainer → periodic zero-shot evaluation, metrics (JSONL), curves (SVG),
// atomic checkpoints and exact resume. The run folder holds config.json, metrics.jsonl, curves.svg,
// checkpoint.safetensors and, at the end, model/ (OpenCLIP layout + tokenizer.json).
import { existsSync, mkdirSync, readFileSync, writeFileSync, appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { type IndexedSource, type Source, captionTable, imageFolder, webDataset } from '../data/datasets.js';
import { DataLoader } from '../data/loader.js';
import { classifierWeights, zeroShot, normalizeRows } from '../eval/zeroshot.js';
import { ClipModel } from '../models/clip-model.js';
import { fromOpenClip, listPresets, preset } from '../models/config.js';
import { loadClip } from '../models/load.js';
import { Rng } from '../nn/init.js';
import { constantLr, warmupCosine } from '../optim/schedule.js';
import { type ClipTokenizer, loadTokenizer, trainBpe } from '../tokenizer/index.js';
import { loadCheckpoint, saveCheckpoint } from './checkpoint.js';
import { createClipTrainer } from './clip-trainer.js';
import { curvesSvg } from './plot.js';
import { Progress } from './progress.js';

export interface RunConfig {
  data: string;
  out: string;
  /** A preset name, a model path (fine-tuning), or an OpenCLIP config JSON file. */
  model: string;
  /** A tokenizer path; or train a BPE vocabulary of `vocabSize` on the captions. */
  tokenizer?: string;
  vocabSize?: number;
  templates: string[];
  epochs?: number;
  minutes?: number;
  maxSteps?: number;
  batchSize: number;
  accum: number;
  lr: number;
  weightDecay: number;
  warmup: number;
  clipNorm?: number;
  loss: 'clip' | 'siglip' | 'multipos';
  lockImage: boolean;
  /** Fraction of an image folder held out per class for evaluation. */
  holdout: number;
  evalEvery: number;
  saveEvery: number;
  seed: number;
  workers: number;
  threads?: number;
  cacheImages: boolean;
  augmentScale: [number, number];
}

interface Split {
  train: IndexedSource | Source;
  held?: IndexedSource;
  classes?: readonly string[];
}

/** Deterministic per-class hold-out: the last `fraction` of each class in file order. */
function holdOut(src: IndexedSource, fraction: number): { train: IndexedSource; held: IndexedSource } {
  const byLabel = new Map<number, number[]>();
  const ctx = { epoch: 0, seed: 0, shuffle: false };
  for (let i = 0; i < src.size; i++) {
    const l = src.get(i, ctx).label ?? 0;
    (byLabel.get(l) ?? byLabel.set(l, []).get(l)!).push(i);
  }
  const train: number[] = [];
  const held: number[] = [];
  for (const idx of byLabel.values()) {
    const k = Math.round(idx.length * fraction);
    train.push(...idx.slice(0, idx.length - k));
    held.push(...idx.slice(idx.length - k));
  }
  const sub = (ids: number[]): IndexedSource => ({ kind: 'indexed', size: ids.length, classes: src.classes, get: (i, c) => src.get(ids[i]!, c) });
  return { train: sub(train), held: sub(held) };
}

async function openData(cfg: RunConfig): Promise<Split> {
  if (/\.(csv|tsv|jsonl)$/i.test(cfg.data)) return { train: await captionTable(cfg.data) };
  if (/\.tar$|\{.*\}/.test(cfg.data)) return { train: webDataset(cfg.data) };
  const src = await imageFolder(cfg.data, { templates: cfg.templates });
  if (cfg.holdout <= 0) return { train: src, classes: src.classes };
  return { ...holdOut(src, cfg.holdout), classes: src.classes };
}

function corpus(split: Split, templates: string[], cfg: RunConfig): string[] {
  if (split.classes) return split.classes.flatMap((c) => templates.map((t) => t.replaceAll('{}', c)));
  const src = split.train;
  if (src.kind !== 'indexed') throw new Error('training a tokenizer needs an indexed source (a folder or a caption table); pass --tokenizer for tar shards');
  const out: string[] = [];
  const r = new Rng(cfg.seed);
  for (let i = 0; i < Math.min(src.size, 200_000); i++) out.push(src.get(r.int(src.size), { epoch: 0, seed: cfg.seed, shuffle: false }).caption);
  return out;
}

async function buildModel(cfg: RunConfig, vocab: number): Promise<ClipModel> {
  const threads = { threads: cfg.threads };
  if (listPresets().includes(cfg.model)) {
    const c = preset(cfg.model);
    c.text.vocabSize = vocab;
    return ClipModel.random(c, cfg.seed, threads);
  }
  if (cfg.model.endsWith('.json')) {
    const c = fromOpenClip(JSON.parse(readFileSync(cfg.model, 'utf8')));
    c.text.vocabSize = vocab;
    return ClipModel.random(c, cfg.seed, threads);
  }
  const m = await loadClip(cfg.model, threads);
  if (m.config.text.vocabSize < vocab) throw new Error(`the tokenizer has ${vocab} tokens but the model's vocabulary has ${m.config.text.vocabSize}`);
  return m;
}

export interface RunResult {
  steps: number;
  seconds: number;
  finalLoss: number;
  zeroShot?: { top1: number; top5: number };
  modelDir: string;
}

export async function runClipTraining(cfg: RunConfig, resume = false, log: (s: string) => void = (s) => process.stderr.write(`${s}\n`)): Promise<RunResult> {
  mkdirSync(cfg.out, { recursive: true });
  const ckptPath = join(cfg.out, 'checkpoint.safetensors');
  const resumed = resume ? await loadCheckpoint(ckptPath) : undefined;
  if (resume && !resumed) throw new Error(`--resume: no checkpoint in ${cfg.out}`);
  if (!resume) writeFileSync(join(cfg.out, 'config.json'), JSON.stringify(cfg, null, 2));

  const split = await openData(cfg);
  // Tokenizer: given, resumed from the run folder, or trained on the captions.
  let tok: ClipTokenizer;
  const tokPath = join(cfg.out, 'tokenizer.json');
  if (cfg.tokenizer) tok = await loadTokenizer(cfg.tokenizer);
  else if (resume && existsSync(tokPath)) tok = await loadTokenizer(tokPath);
  else {
    tok = trainBpe(corpus(split, cfg.templates, cfg), { vocabSize: cfg.vocabSize ?? 1024 });
    tok.save(tokPath);
    log(`trained a BPE vocabulary of ${tok.vocabSize} tokens → ${tokPath}`);
  }

  const model = resumed ? new ClipModel(resumed.config, resumed.params, { threads: cfg.threads }) : await buildModel(cfg, tok.vocabSize);
  const ctxLen = model.config.text.contextLength;
  const S = model.config.vision.imageSize;
  const loader = new DataLoader(split.train, {
    batchSize: cfg.batchSize,
    imageSize: S,
    train: true,
    tokenizer: tok,
    contextLength: ctxLen,
    seed: cfg.seed,
    workers: cfg.workers,
    cacheDecoded: cfg.cacheImages && split.train.kind === 'indexed',
    scale: cfg.augmentScale,
    onSkip: (key, e) => log(`skipped unreadable image ${key}: ${e.message}`),
    onProgress: (d, t) => d % 5000 === 0 || d === t ? log(`decoding images into memory: ${d}/${t}`) : undefined,
  });
  const perEpoch = loader.batchesPerEpoch;
  let total = cfg.maxSteps ?? (cfg.epochs && perEpoch ? cfg.epochs * perEpoch : undefined);
  if (resumed?.extra.totalSteps) total = resumed.extra.totalSteps as number;
  const timeBudget = cfg.minutes ? cfg.minutes * 60_000 : undefined;
  if (!total && !timeBudget) throw new Error('give --epochs, --max-steps or --minutes');

  let schedule = total ? warmupCosine(cfg.lr, Math.min(cfg.warmup, total), total) : constantLr(cfg.lr, cfg.warmup);
  const trainer = createClipTrainer(model, {
    optimizer: { lr: cfg.lr, weightDecay: cfg.weightDecay },
    loss: cfg.loss,
    clipNorm: cfg.clipNorm,
    lockImage: cfg.lockImage,
    accumFreq: cfg.accum,
    threads: cfg.threads,
    schedule: (s) => schedule(s),
  });
  if (resumed) await trainer.loadOptimizerState(resumed.optimizer, { batch: cfg.batchSize, textLength: ctxLen });

  // Held-out evaluation: zero-shot top-1/top-5 with the run's templates as the prompt ensemble.
  const evalLoader = split.held
    ? new DataLoader(split.held, { batchSize: 256, imageSize: S, train: false, tokenizer: tok, contextLength: ctxLen, workers: cfg.workers, cacheDecoded: cfg.cacheImages })
    : undefined;
  const evaluate = async (): Promise<{ top1: number; top5: number } | undefined> => {
    if (!evalLoader || !split.classes) return undefined;
    const w = await classifierWeights(model, tok, [...split.classes], cfg.templates);
    const feats: Float32Array[] = [];
    const labels: number[] = [];
    for await (const b of evalLoader.batches(0)) {
      feats.push((await model.encodeImage(b.pixels)).data);
      labels.push(...b.labels);
    }
    const all = new Float32Array(feats.reduce((a, f) => a + f.length, 0));
    let at = 0;
    for (const f of feats) (all.set(f, at), (at += f.length));
    const r = await zeroShot(normalizeRows({ data: all, shape: [labels.length, model.config.embedDim] }), w, Int32Array.from(labels));
    return { top1: r.top1, top5: r.top5 };
  };

  const metricsPath = join(cfg.out, 'metrics.jsonl');
  const history = resumed ? readHistory(metricsPath, resumed.optimizer.step) : { loss: [] as [number, number][], acc: [] as [number, number][] };
  const writeCurves = (): void =>
    writeFileSync(join(cfg.out, 'curves.svg'), curvesSvg([{ title: 'training loss', points: history.loss }, { title: 'held-out zero-shot top-1', points: history.acc, yRange: [0, 1] }]));

  let step = trainer.stepCount;
  let { epoch, batch: startBatch } = resumed?.position ?? { epoch: 0, batch: 0 };
  const started = Date.now() - ((resumed?.extra.elapsedMs as number | undefined) ?? 0);
  const progress = new Progress(total);
  let lastLoss = NaN;
  let lastEval: { top1: number; top5: number } | undefined;
  const save = async (): Promise<void> => {
    const state = trainer.optimizerState ?? { step, m: new Map(), v: new Map() };
    await saveCheckpoint(ckptPath, { config: model.config, params: model.params, optimizer: state, position: { epoch, batch: startBatch }, extra: { totalSteps: total, elapsedMs: Date.now() - started, seed: cfg.seed } });
  };

  try {
    outer: for (;;) {
      for await (const b of loader.batches(epoch, startBatch)) {
        const t0 = Date.now();
        const r = await trainer.step({ pixels: b.pixels, tokens: b.tokens, groups: b.labels });
        step = trainer.stepCount;
        startBatch = b.index + 1;
        lastLoss = r.loss;
        const elapsed = Date.now() - started;
        // With a time budget, fix the schedule's length once the step time is known (step 20).
        if (!total && timeBudget && step === 20) {
          total = Math.max(step + 1, Math.floor((timeBudget / elapsed) * step));
          schedule = warmupCosine(cfg.lr, Math.min(cfg.warmup, total), total);
          progress.total = total;
          log(`time budget ${cfg.minutes} min → ${total} steps`);
        }
        const rec = { step, epoch, loss: r.loss, lr: r.lr, gradNorm: r.gradNorm, samplesPerSec: cfg.batchSize / ((Date.now() - t0) / 1e3), elapsedSec: elapsed / 1e3, skipped: loader.stats.skipped };
        appendFileSync(metricsPath, `${JSON.stringify(rec)}\n`);
        history.loss.push([step, r.loss]);
        progress.update(step, { loss: r.loss, lr: r.lr, samplesPerSec: (step * cfg.batchSize) / (elapsed / 1e3) });
        const done = (total !== undefined && step >= total) || (timeBudget !== undefined && !total && elapsed >= timeBudget);
        if (cfg.evalEvery > 0 && (step % cfg.evalEvery === 0 || done)) {
          lastEval = await evaluate();
          if (lastEval) {
            history.acc.push([step, lastEval.top1]);
            appendFileSync(metricsPath, `${JSON.stringify({ step, eval: { zeroShot: lastEval } })}\n`);
            progress.note(`step ${step}: held-out zero-shot top-1 ${(lastEval.top1 * 100).toFixed(1)}%, top-5 ${(lastEval.top5 * 100).toFixed(1)}%`);
          }
        }
        if (step % cfg.saveEvery === 0 || done) {
          await save();
          writeCurves();
        }
        if (done) break outer;
      }
      epoch++;
      startBatch = 0;
    }
  } finally {
    progress.end();
    await loader.close();
    await evalLoader?.close();
  }
  const modelDir = join(cfg.out, 'model');
  await model.save(modelDir);
  tok.save(join(modelDir, 'tokenizer.json'));
  writeCurves();
  return { steps: step, seconds: (Date.now() - started) / 1e3, finalLoss: lastLoss, zeroShot: lastEval, modelDir };
}

function readHistory(path: string, upTo: number): { loss: [number, number][]; acc: [number, number][] } {
  const h = { loss: [] as [number, number][], acc: [] as [number, number][] };
  if (!existsSync(path)) return h;
  const kept: string[] = [];
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    const r = JSON.parse(line) as { step: number; loss?: number; eval?: { zeroShot: { top1: number } } };
    if (r.step > upTo) continue; // steps after the checkpoint are replayed
    kept.push(line);
    if (r.loss !== undefined) h.loss.push([r.step, r.loss]);
    if (r.eval) h.acc.push([r.step, r.eval.zeroShot.top1]);
  }
  writeFileSync(path, kept.map((l) => `${l}\n`).join(''));
  return h;
}
