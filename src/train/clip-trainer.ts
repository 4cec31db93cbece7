// Contrastive training of a ClipModel: one compiled step per batch shape (forward through both
// towers, the loss, our autodiff, AdamW), OpenCLIP's defaults for decay grouping and the logit-scale
// clamp. After each step `model.params` holds the updated weights, so `model.save` writes them.
import type { ClipModel } from '../models/clip-model.js';
import { fullClipGraph } from '../models/clip.js';
import type { AdamWConfig } from '../optim/adamw.js';
import type { Schedule } from '../optim/schedule.js';
import { type OptimizerState, TrainStep } from '../optim/step.js';
import type { HostTensor } from '../runtime/session.js';
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

  constructor(
    readonly model: ClipModel,
    readonly options: ClipTrainerOptions = {},
  ) {
    const loss = options.loss ?? 'clip';
    if (!['clip', 'siglip', 'multipos'].includes(loss)) throw new Error(`createClipTrainer: unknown loss '${loss}' (clip, siglip or multipos)`);
    if (loss === 'siglip' && model.config.initLogitBias === undefined) throw new Error('createClipTrainer: the SigLIP loss needs a model with a logit bias (init_logit_bias in its config)');
    if (options.lockImage && options.lockText) throw new Error('createClipTrainer: both towers are locked; nothing would train');
  }

  /** Completed optimisation steps. */
  get stepCount(): number {
    return this.last?.t ?? 0;
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
    const ts = await this.stepFor(n, len);
    const feeds: Record<string, HostTensor> = {
      pixels: { data: pixels.data, shape: pixels.shape },
      input_ids: { data: tokens.data instanceof BigInt64Array ? tokens.data : BigInt64Array.from(tokens.data, (v) => BigInt(v)), shape: tokens.shape },
    };
    if ((this.options.loss ?? 'clip') === 'multipos') {
      if (!batch.groups || batch.groups.length !== n) throw new Error('trainer.step: the multi-positive loss needs `groups` (one class or caption id per pair)');
      feeds.targets = { data: positiveTargets(batch.groups), shape: [n, n] };
    }
    const r = await ts.step(feeds);
    this.model.markUpdated();
    return { loss: r.loss, lr: r.lr, gradNorm: r.gradNorm };
  }

  /** Optimizer state for checkpoints. */
  get optimizerState(): OptimizerState | undefined {
    return this.last?.state;
  }

  async loadOptimizerState(s: OptimizerState, shape: { batch: number; textLength: number }): Promise<void> {
    const ts = await this.stepFor(shape.batch, shape.textLength);
    ts.loadState(s);
  }

  /** The compiled step for a batch shape; state moves over when the shape changes. */
  private async stepFor(n: number, len: number): Promise<TrainStep> {
    const key = `${n}x${len}`;
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
    const { g, img, txt, scale, bias } = fullClipGraph(this.model.config, n, len);
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
      frozen: (name) => (!!o.lockImage && name.startsWith('visual.')) || (!!o.lockText && !name.startsWith('visual.') && !name.startsWith('logit_')),
      clipNorm: o.clipNorm,
      schedule: o.schedule,
      clamp: { logit_scale: [0, LOGIT_SCALE_MAX] },
      threads: o.threads,
    });
  }
}

export function createClipTrainer(model: ClipModel, options: ClipTrainerOptions = {}): ClipTrainer {
  return new ClipTrainer(model, options);
}
