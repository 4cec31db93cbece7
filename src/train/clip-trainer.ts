// Contrastive training of a ClipModel: one compiled step per batch shape (forward through both
// towers, the loss, our autodiff, AdamW), OpenCLIP's defaults for decay grouping and the logit-scale
// clamp. After each step `model.params` holds the updated weights, so `model.save` writes them.
import type { ClipModel } from '../models/clip-model.js';
import { fullClipGraph } from '../models/clip.js';
import { type VitConfig, patchKeepIndices } from '../models/vit.js';
import { Rng } from '../nn/init.js';
import type { AdamWConfig } from '../optim/adamw.js';
import type { Schedule } from '../optim/schedule.js';
import { type OptimizerState, TrainStep } from '../optim/step.js';
import type { HostTensor } from '../runtime/session.js';
import { GradCache, applyAdamW } from './gradcache.js';
import { type ContrastiveLoss, clipLoss, multiPositiveLoss, positiveTargets, sigLipLoss } from './losses.js';

export interface ClipTrainerOptions {
  optimizer?: Partial<AdamWConfig>;
  loss?: ContrastiveLoss;
  schedule?: Schedule;
  /** Global gradient-norm clipping (off by default). */
  clipNorm?: number;
  /** LiT: keep the image tower fixed (and/or the text tower). */
  lockImage?: boolean;
  lockText?: boolean;
  /** Override OpenCLIP's decay grouping: the weight decay of each parameter. */
  weightDecayOf?: (name: string, shape: readonly number[]) => number;
  threads?: number;
  /**
   * Split each batch into this many micro-batches and accumulate with GradCache: the loss and its
   * gradient stay those of the full batch, memory that of one micro-batch (OpenCLIP's --accum-freq).
   */
  accumFreq?: number;
  /**
   * Patch dropout for the image tower in training (FLIP; OpenCLIP's patch_dropout): this fraction of
   * each image's patch tokens is dropped at random, per step. Default: the model config's, else 0.
   */
  patchDropout?: number;
  /** Seed of the patch-dropout draws (default 0); the draw of step t depends only on (seed, t). */
  seed?: number | string;
  /** Write ONNX Runtime's per-op profile of the training step with this file prefix (see `endProfiling`). */
  profile?: string;
}

export interface ClipBatch {
  pixels: { data: Float32Array; shape: readonly number[] };
  tokens: { data: Int32Array | BigInt64Array; shape: readonly number[] };
  /** Class or caption ids per pair, for the multi-positive loss. */
  groups?: ArrayLike<number>;
}

/** OpenCLIP's defaults (open_clip_train/params.py for ViT models). */
export const OPENCLIP_ADAMW: AdamWConfig = { lr: 5e-4, betas: [0.9, 0.98], eps: 1e-6, weightDecay: 0.2 };

/** OpenCLIP's exclusion rule: no weight decay for gains, biases, embeddings of ndim < 2 and logit_scale. */
export function openClipExcluded(name: string, shape: readonly number[]): boolean {
  return shape.length < 2 || /bn|ln|bias|logit_scale/.test(name);
}

export const LOGIT_SCALE_MAX = Math.log(100);

export class ClipTrainer {
  private steps = new Map<string, Promise<TrainStep>>();
  private last: TrainStep | undefined;
  private caches = new Map<string, Promise<GradCache>>();
  /** Optimizer state of the accumulation path (AdamW runs in place there). */
  private acc: OptimizerState = { step: 0, m: new Map(), v: new Map() };

  constructor(
    readonly model: ClipModel,
    readonly options: ClipTrainerOptions = {},
  ) {
    const loss = options.loss ?? 'clip';
    if (!['clip', 'siglip', 'multipos'].includes(loss)) throw new Error(`createClipTrainer: unknown loss '${loss}' (clip, siglip or multipos)`);
    if (loss === 'siglip' && model.config.initLogitBias === undefined) throw new Error('createClipTrainer: the SigLIP loss needs a model with a logit bias (init_logit_bias in its config)');
    if (options.lockImage && options.lockText) throw new Error('createClipTrainer: both towers are locked; nothing would train');
    const k = options.accumFreq ?? 1;
    if (!Number.isInteger(k) || k < 1) throw new Error(`createClipTrainer: accumFreq must be a positive integer, got ${k}`);
  }

  /** Completed optimisation steps. */
  get stepCount(): number {
    return (this.options.accumFreq ?? 1) > 1 ? this.acc.step : (this.last?.t ?? 0);
  }

  /** One step on a batch of N pairs; resolves to the loss before the update. */
  async step(batch: ClipBatch): Promise<{ loss: number; lr: number; gradNorm?: number }> {
    const { pixels, tokens } = batch;
    const s = this.model.config.vision.imageSize;
    const n = pixels.shape[0]!;
    if (pixels.shape.length !== 4 || pixels.shape[1] !== 3 || pixels.shape[2] !== s || pixels.shape[3] !== s) {
      throw new Error(`trainer.step: pixels must be [N, 3, ${s}, ${s}], got [${pixels.shape}]`);
    }
    if (tokens.shape.length !== 2 || tokens.shape[0] !== n) throw new Error(`trainer.step: tokens must be [${n}, L], got [${tokens.shape}]`);
    if (n < 2) throw new Error('trainer.step: a contrastive batch needs at least 2 pairs');
    const len = tokens.shape[1]!;
    if ((this.options.accumFreq ?? 1) > 1) {
      if (this.patchDropout > 0) throw new Error('trainer.step: patch dropout with accumFreq > 1 (GradCache) is not supported; use one or the other');
      return this.accumulatedStep(batch, n, len);
    }
    const ts = await this.stepFor(n, len);
    const feeds: Record<string, HostTensor> = {
      pixels: { data: pixels.data, shape: pixels.shape },
      input_ids: { data: tokens.data instanceof BigInt64Array ? tokens.data : BigInt64Array.from(tokens.data, (v) => BigInt(v)), shape: tokens.shape },
    };
    if ((this.options.loss ?? 'clip') === 'multipos') {
      if (!batch.groups || batch.groups.length !== n) throw new Error('trainer.step: the multi-positive loss needs `groups` (one class or caption id per pair)');
      feeds.targets = { data: positiveTargets(batch.groups), shape: [n, n] };
    }
    if (this.patchDropout > 0) feeds.patch_keep = patchKeepIndices(this.trainVision, n, new Rng(`patch:${this.options.seed ?? 0}:${ts.t}`));
    const r = await ts.step(feeds);
    this.model.markUpdated();
    return { loss: r.loss, lr: r.lr, gradNorm: r.gradNorm };
  }

  private async accumulatedStep(batch: ClipBatch, n: number, len: number): Promise<{ loss: number; lr: number; gradNorm: number }> {
    const o = this.options;
    const k = o.accumFreq!;
    if (n % k !== 0) throw new Error(`trainer.step: batch ${n} is not divisible into ${k} micro-batches`);
    const key = `${n}x${len}`;
    let p = this.caches.get(key);
    if (!p) {
      p = GradCache.create(this.model, { micro: n / k, batch: n, textLength: len, loss: o.loss ?? 'clip', frozen: this.frozen, threads: o.threads });
      this.caches.set(key, p);
    }
    const gc = await p;
    if ((o.loss ?? 'clip') === 'multipos' && (!batch.groups || batch.groups.length !== n)) throw new Error('trainer.step: the multi-positive loss needs `groups`');
    const ids = batch.tokens.data instanceof BigInt64Array ? batch.tokens.data : BigInt64Array.from(batch.tokens.data, (v) => BigInt(v));
    const loss = await gc.run(batch.pixels.data, ids, batch.groups);
    const cfg = { ...OPENCLIP_ADAMW, ...o.optimizer };
    const lr = o.schedule ? o.schedule(this.acc.step) : cfg.lr;
    const shapes = this.shapes();
    const wdOf = (name: string): number => (o.weightDecayOf ?? ((nm, sh) => (openClipExcluded(nm, sh) ? 0 : cfg.weightDecay)))(name, shapes.get(name)!);
    const gradNorm = applyAdamW(this.model.params, gc.grads, this.acc.m, this.acc.v, cfg, lr, this.acc.step + 1, wdOf, o.clipNorm);
    const ls = this.model.params.get('logit_scale')!;
    ls[0] = Math.min(Math.max(ls[0]!, 0), LOGIT_SCALE_MAX);
    this.acc.step++;
    this.model.markUpdated();
    return { loss, lr, gradNorm };
  }

  /**
   * The patch dropout of the next steps. Setting it (e.g. to 0 for FLIP's unmasked tuning at the end
   * of a run) compiles the step for the new token count on first use; the optimizer state carries over.
   */
  get patchDropout(): number {
    return this.options.patchDropout ?? this.model.config.vision.patchDropout ?? 0;
  }

  set patchDropout(p: number) {
    if (!(p >= 0 && p < 1)) throw new Error(`patchDropout must be in [0, 1), got ${p}`);
    this.options.patchDropout = p;
  }

  /** The image tower's config in training graphs (the trainer's patch dropout applied). */
  private get trainVision(): VitConfig {
    return { ...this.model.config.vision, patchDropout: this.patchDropout };
  }

  private shapeMap?: Map<string, readonly number[]>;
  private shapes(): Map<string, readonly number[]> {
    return (this.shapeMap ??= new Map([...fullClipGraph(this.model.config).g.params.values()].map((p) => [p.name, p.shape])));
  }

  private readonly frozen = (name: string): boolean =>
    (!!this.options.lockImage && name.startsWith('visual.')) || (!!this.options.lockText && !name.startsWith('visual.') && !name.startsWith('logit_'));

  /** Optimizer state for checkpoints. */
  get optimizerState(): OptimizerState | undefined {
    return (this.options.accumFreq ?? 1) > 1 ? this.acc : this.last?.state;
  }

  async loadOptimizerState(s: OptimizerState, shape: { batch: number; textLength: number }): Promise<void> {
    if ((this.options.accumFreq ?? 1) > 1) {
      this.acc = { step: s.step, m: new Map([...s.m].map(([k, v]) => [k, Float32Array.from(v)])), v: new Map([...s.v].map(([k, v]) => [k, Float32Array.from(v)])) };
      return;
    }
    const ts = await this.stepFor(shape.batch, shape.textLength);
    ts.loadState(s);
  }

  /** The compiled step for a batch shape; state moves over when the shape changes. */
  private async stepFor(n: number, len: number): Promise<TrainStep> {
    const key = `${n}x${len}x${this.patchDropout}`;
    let p = this.steps.get(key);
    if (!p) {
      p = this.build(n, len);
      this.steps.set(key, p);
    }
    const ts = await p;
    if (this.last && this.last !== ts) ts.loadState(this.last.state);
    this.last = ts;
    return ts;
  }

  private async build(n: number, len: number): Promise<TrainStep> {
    const o = this.options;
    const { g, img, txt, scale, bias } = fullClipGraph({ ...this.model.config, vision: this.trainVision }, n, len);
    const kind = o.loss ?? 'clip';
    const { loss } =
      kind === 'siglip'
        ? sigLipLoss(img, txt, scale, bias!)
        : kind === 'multipos'
          ? multiPositiveLoss(img, txt, scale, g.input('targets', [n, n]))
          : clipLoss(img, txt, scale);
    const optimizer = { ...OPENCLIP_ADAMW, ...o.optimizer };
    return TrainStep.create(g, loss, this.model.params, {
      optimizer,
      weightDecayOf: o.weightDecayOf ?? ((name, shape) => (openClipExcluded(name, shape) ? 0 : optimizer.weightDecay)),
      frozen: this.frozen,
      clipNorm: o.clipNorm,
      schedule: o.schedule,
      clamp: { logit_scale: [0, LOGIT_SCALE_MAX] },
      threads: o.threads,
      profile: o.profile,
    });
  }

  /** Ends ONNX Runtime profiling of the current step (trainers created with `profile`); writes the JSON. */
  endProfiling(): void {
    this.last?.endProfiling();
  }
}

export function createClipTrainer(model: ClipModel, options: ClipTrainerOptions = {}): ClipTrainer {
  return new ClipTrainer(model, { ...options });
}
