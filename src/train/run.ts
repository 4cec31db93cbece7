// A CLIP training run: data → trainer → periodic zero-shot evaluation, metrics (JSONL), curves (SVG),
// atomic checkpoints and exact resume. The run folder holds config.json, metrics.jsonl, curves.svg,
// checkpoint.safetensors and, at the end, model/ (OpenCLIP layout + tokenizer.json).
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type IndexedSource, type Source, captionTable, imageFolder, webDataset } from '../data/datasets.js';
import { DataLoader } from '../data/loader.js';
import { retrieval } from '../eval/retrieval.js';
import { classifierWeights, zeroShot, normalizeRows } from '../eval/zeroshot.js';
import { ClipModel } from '../models/clip-model.js';
import { fromOpenClip, listPresets, preset, toOpenClip } from '../models/config.js';
import { loadClip } from '../models/load.js';
import { Rng } from '../nn/init.js';
import { constantLr, warmupCosine } from '../optim/schedule.js';
import { type ClipTokenizer, loadTokenizer, trainBpe } from '../tokenizer/index.js';
import { saveCheckpoint } from './checkpoint.js';
import { createClipTrainer } from './clip-trainer.js';
import { openRunDir, trainLoop } from './loop.js';
import { holdOut } from './split.js';

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
  /** Patch dropout in training (FLIP); default: the model's. */
  patchDropout?: number;
  /** The last fraction of the steps trains on every patch (FLIP's unmasked tuning); default 0. */
  unmaskedTune?: number;
  /** Fraction of an image folder held out per class for evaluation. */
  holdout: number;
  /** A caption table (.csv/.tsv/.jsonl) evaluated by image↔text retrieval every `evalEvery` steps. */
  evalData?: string;
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
  /** Recall@k on --eval-data at the last evaluation. */
  retrieval?: { textToImage: Record<number, number>; imageToText: Record<number, number> };
  modelDir: string;
}

export async function runClipTraining(cfg: RunConfig, resume = false, log: (s: string) => void = (s) => process.stderr.write(`${s}\n`)): Promise<RunResult> {
  const { ckptPath, resumed } = await openRunDir(cfg.out, cfg, resume, 'clip');

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

  const model = resumed ? new ClipModel(fromOpenClip(resumed.modelConfig), resumed.params, { threads: cfg.threads }) : await buildModel(cfg, tok.vocabSize);
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
    patchDropout: cfg.patchDropout,
    seed: cfg.seed,
    threads: cfg.threads,
    schedule: (s) => schedule(s),
  });
  if (resumed) await trainer.loadOptimizerState(resumed.optimizer, { batch: cfg.batchSize, textLength: ctxLen });

  // Held-out evaluation: zero-shot top-1/top-5 with the run's templates as the prompt ensemble.
  const evalLoader = split.held
    ? new DataLoader(split.held, { batchSize: 256, imageSize: S, train: false, tokenizer: tok, contextLength: ctxLen, workers: cfg.workers, cacheDecoded: cfg.cacheImages })
    : undefined;
  // Retrieval on a caption table: each row's caption against each row's image (recall@1/5/10).
  const retrievalLoader = cfg.evalData
    ? new DataLoader(await captionTable(cfg.evalData), { batchSize: 256, imageSize: S, train: false, tokenizer: tok, contextLength: ctxLen, workers: cfg.workers, cacheDecoded: cfg.cacheImages })
    : undefined;
  const evalRetrieval = async (): Promise<Record<string, number>> => {
    const img: Float32Array[] = [];
    const txt: Float32Array[] = [];
    for await (const b of retrievalLoader!.batches(0)) {
      img.push((await model.encodeImage(b.pixels)).data);
      txt.push((await model.encodeText(b.tokens)).data);
    }
    const I = concatRows(img, model.config.embedDim);
    const r = await retrieval(I, concatRows(txt, model.config.embedDim), Int32Array.from({ length: I.shape[0] }, (_, i) => i));
    const out: Record<string, number> = {};
    for (const k of [1, 5, 10]) (out[`t2i_r${k}`] = r.textToImage[k]!), (out[`i2t_r${k}`] = r.imageToText[k]!);
    return out;
  };
  const evaluate = async (): Promise<Record<string, number> | undefined> => {
    const extra = retrievalLoader ? await evalRetrieval() : undefined;
    if (!evalLoader || !split.classes) return extra;
    const w = await classifierWeights(model, tok, [...split.classes], cfg.templates);
    const feats: Float32Array[] = [];
    const labels: number[] = [];
    for await (const b of evalLoader.batches(0)) {
      feats.push((await model.encodeImage(b.pixels)).data);
      labels.push(...b.labels);
    }
    const r = await zeroShot(normalizeRows(concatRows(feats, model.config.embedDim)), w, Int32Array.from(labels));
    return { top1: r.top1, top5: r.top5, ...extra };
  };

  const groupsOf = (labels: Int32Array, captions: string[]): ArrayLike<number> => {
    if (labels.every((l) => l >= 0)) return labels;
    const ids = new Map<string, number>();
    return captions.map((c) => ids.get(c) ?? ids.set(c, ids.size).get(c)!);
  };
  let result;
  try {
    result = await trainLoop({
      out: cfg.out,
      loader,
      batchSize: cfg.batchSize,
      totalSteps: total,
      timeBudgetMs: total ? undefined : timeBudget,
      evalEvery: cfg.evalEvery,
      saveEvery: cfg.saveEvery,
      start: { step: trainer.stepCount, epoch: resumed?.position.epoch ?? 0, batch: resumed?.position.batch ?? 0, elapsedMs: (resumed?.extra.elapsedMs as number | undefined) ?? 0 },
      step: (b) => {
        if (cfg.unmaskedTune && trainer.patchDropout > 0 && total !== undefined && trainer.stepCount >= (1 - cfg.unmaskedTune) * total) {
          log(`step ${trainer.stepCount}: unmasked tuning — every patch from here on`);
          trainer.patchDropout = 0;
        }
        return trainer.step({ pixels: b.pixels, tokens: b.tokens, groups: groupsOf(b.labels, b.captions) });
      },
      onTotal: (t) => {
        total = t;
        schedule = warmupCosine(cfg.lr, Math.min(cfg.warmup, t), t);
      },
      evaluate,
      evalKey: split.held ? 'top1' : 't2i_r1',
      evalTitle: split.held ? 'held-out zero-shot top-1' : 'text→image recall@1 (--eval-data)',
      save: async (st) => {
        const state = trainer.optimizerState ?? { step: st.step, m: new Map(), v: new Map() };
        await saveCheckpoint(ckptPath, {
          kind: 'clip',
          modelConfig: toOpenClip(model.config),
          params: model.params,
          optimizer: state,
          position: { epoch: st.epoch, batch: st.batch },
          extra: { totalSteps: st.totalSteps, elapsedMs: st.elapsedMs, seed: cfg.seed },
        });
      },
      log,
    });
  } finally {
    await loader.close();
    await evalLoader?.close();
    await retrievalLoader?.close();
  }
  const modelDir = join(cfg.out, 'model');
  await model.save(modelDir);
  tok.save(join(modelDir, 'tokenizer.json'));
  const z = result.lastEval;
  return {
    steps: result.steps,
    seconds: result.seconds,
    finalLoss: result.finalLoss,
    zeroShot: z?.top1 !== undefined ? { top1: z.top1, top5: z.top5! } : undefined,
    retrieval: z?.t2i_r1 !== undefined ? { textToImage: { 1: z.t2i_r1, 5: z.t2i_r5!, 10: z.t2i_r10! }, imageToText: { 1: z.i2t_r1!, 5: z.i2t_r5!, 10: z.i2t_r10! } } : undefined,
    modelDir,
  };
}

/** Batches of feature rows (each [n_i, d], flattened) as one [Σn_i, d] matrix. */
function concatRows(parts: Float32Array[], d: number): { data: Float32Array; shape: [number, number] } {
  const data = new Float32Array(parts.reduce((a, f) => a + f.length, 0));
  let at = 0;
  for (const f of parts) (data.set(f, at), (at += f.length));
  return { data, shape: [data.length / d, d] };
}
