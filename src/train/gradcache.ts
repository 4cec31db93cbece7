// Large contrastive batches on small memory (GradCache; OpenCLIP's --accum-freq). The loss couples
// every pair in the batch, so plain gradient accumulation would change it. Instead:
//   1. embed each of the k micro-batches without keeping activations, and cache the features;
//   2. compute the full-batch loss on the cached features, and its gradient w.r.t. each feature
//      (and w.r.t. logit_scale / logit_bias, which only the loss touches);
//   3. for each micro-batch, re-run its forward with activations and back-propagate the cached
//      feature gradients (the surrogate Σ f·∂L/∂f has exactly those gradients), summing the
//      parameter gradients in the graph (acc_out = acc_in + g);
//   4. one AdamW update with the summed gradients.
// The result equals the single large-batch gradient up to float rounding; peak memory is one
// micro-batch's activations plus the B×D features.
import { gradients } from '../autodiff/grad.js';
import { Graph } from '../graph/graph.js';
import * as o from '../graph/ops.js';
import { encodeImageGraph, encodeTextGraph, fullClipGraph, logitParams } from '../models/clip.js';
import type { ClipModel } from '../models/clip-model.js';
import type { Tensor } from '../graph/graph.js';
import { type AdamWConfig, adamwInPlace } from '../optim/adamw.js';
import { type Compiled, compile } from '../runtime/compile.js';
import type { HostTensor } from '../runtime/session.js';
import { type ContrastiveLoss, clipLoss, multiPositiveLoss, positiveTargets, sigLipLoss } from './losses.js';

export interface GradCacheOptions {
  micro: number;
  batch: number;
  textLength: number;
  loss: ContrastiveLoss;
  frozen: (name: string) => boolean;
  threads?: number;
}

/** Full-batch gradients by micro-batches. `run` returns the loss and writes gradients into `grads`. */
export class GradCache {
  readonly grads = new Map<string, Float32Array>();
  private constructor(
    private readonly model: ClipModel,
    private readonly o: GradCacheOptions,
    private readonly embed: Compiled,
    private readonly lossC: Compiled,
    private readonly back: Compiled,
    private readonly trainable: Set<string>,
    private readonly towerParams: string[],
    private readonly shapes: Map<string, readonly number[]>,
  ) {
    for (const n of trainable) this.grads.set(n, new Float32Array(model.params.get(n)!.length));
  }

  static async create(model: ClipModel, opt: GradCacheOptions): Promise<GradCache> {
    if (opt.batch % opt.micro !== 0) throw new Error(`accumulation: batch ${opt.batch} is not a multiple of the micro-batch ${opt.micro}`);
    const cfg = model.config;
    const D = cfg.embedDim;
    const shapes = new Map([...fullClipGraph(cfg).g.params.values()].map((p) => [p.name, p.shape]));
    const frozenValues = new Map([...shapes.keys()].filter(opt.frozen).map((n) => [n, model.params.get(n)!]));

    // 1. Embedding graph for one micro-batch (no gradients, so ORT frees activations as it goes).
    const ge = new Graph('gc-embed');
    const s = cfg.vision.imageSize;
    const pe = ge.input('pixels', [opt.micro, 3, s, s]);
    const ie = ge.input('input_ids', [opt.micro, opt.textLength], 'int64');
    const embed = await compile(ge, { img: encodeImageGraph(ge, pe, cfg), txt: encodeTextGraph(ge, ie, cfg) }, { paramValues: frozenValues, threads: opt.threads, cacheKey: false });

    // 2. Loss on the cached features of the whole batch, and its gradients.
    const gl = new Graph('gc-loss');
    const fi = gl.input('img', [opt.batch, D]);
    const ft = gl.input('txt', [opt.batch, D]);
    const { scale, bias } = logitParams(gl, cfg);
    const loss =
      opt.loss === 'siglip'
        ? sigLipLoss(fi, ft, scale, bias!).loss
        : opt.loss === 'multipos'
          ? multiPositiveLoss(fi, ft, scale, gl.input('targets', [opt.batch, opt.batch])).loss
          : clipLoss(fi, ft, scale).loss;
    const lossWrt = [fi, ft, scale, ...(bias ? [bias] : [])];
    const lg = gradients(loss, lossWrt);
    const lossOut: Record<string, Tensor> = { loss: o.reshape(loss, []), d_img: lg[0]!, d_txt: lg[1]! };
    lossOut['grad.logit_scale'] = lg[2]!;
    if (bias) lossOut['grad.logit_bias'] = lg[3]!;
    const lossC = await compile(gl, lossOut, { threads: opt.threads, cacheKey: false });

    // 3. Backward of one micro-batch against the cached feature gradients, accumulating in-graph.
    const gb = new Graph('gc-back');
    const pb = gb.input('pixels', [opt.micro, 3, s, s]);
    const ib = gb.input('input_ids', [opt.micro, opt.textLength], 'int64');
    const img = encodeImageGraph(gb, pb, cfg);
    const txt = encodeTextGraph(gb, ib, cfg);
    const surrogate = o.add(o.reduceSum(o.mul(img, gb.input('d_img', [opt.micro, D]))), o.reduceSum(o.mul(txt, gb.input('d_txt', [opt.micro, D]))));
    const towerParams = [...gb.params.values()].map((p) => p.name).filter((n) => !opt.frozen(n));
    const tg = gradients(surrogate, towerParams.map((n) => gb.params.get(n)!.tensor));
    const backOut: Record<string, Tensor> = {};
    towerParams.forEach((n, i) => (backOut[`acc.${n}`] = o.add(gb.input(`acc_in.${n}`, shapes.get(n)!), tg[i]!)));
    const back = await compile(gb, backOut, { paramValues: frozenValues, threads: opt.threads, cacheKey: false });

    const trainable = new Set([...shapes.keys()].filter((n) => !opt.frozen(n)));
    return new GradCache(model, opt, embed, lossC, back, trainable, towerParams, shapes);
  }

  /** Computes the loss of the whole batch and the summed gradients (in `this.grads`). */
  async run(pixels: Float32Array, ids: BigInt64Array, groups?: ArrayLike<number>): Promise<number> {
    const { micro, batch, textLength: L } = this.o;
    const cfg = this.model.config;
    const D = cfg.embedDim;
    const per = 3 * cfg.vision.imageSize ** 2;
    const S = cfg.vision.imageSize;
    const params = (names: Iterable<string>): Record<string, HostTensor> => {
      const f: Record<string, HostTensor> = {};
      for (const n of names) if (this.trainable.has(n)) f[n] = { data: this.model.params.get(n)!, shape: this.shapeOf(n) };
      return f;
    };
    const microFeeds = (j: number): Record<string, HostTensor> => ({
      pixels: { data: pixels.subarray(j * micro * per, (j + 1) * micro * per), shape: [micro, 3, S, S] },
      input_ids: { data: ids.subarray(j * micro * L, (j + 1) * micro * L), shape: [micro, L] },
    });
    // 1. cache features
    const img = new Float32Array(batch * D);
    const txt = new Float32Array(batch * D);
    const towerFeeds = params(this.towerParams);
    for (let j = 0; j < batch / micro; j++) {
      await this.embed.run(
        { ...microFeeds(j), ...towerFeeds },
        { img: { data: img.subarray(j * micro * D, (j + 1) * micro * D), shape: [micro, D] }, txt: { data: txt.subarray(j * micro * D, (j + 1) * micro * D), shape: [micro, D] } },
      );
    }
    // 2. loss and feature gradients
    const lf: Record<string, HostTensor> = { img: { data: img, shape: [batch, D] }, txt: { data: txt, shape: [batch, D] }, ...params(['logit_scale', 'logit_bias']) };
    if (this.o.loss === 'multipos') lf.targets = { data: positiveTargets(groups!), shape: [batch, batch] };
    const lr = await this.lossC.run(lf);
    for (const k of ['logit_scale', 'logit_bias']) if (this.grads.has(k) && lr[`grad.${k}`]) this.grads.get(k)!.set(lr[`grad.${k}`]!.data as Float32Array);
    const dImg = lr.d_img!.data as Float32Array;
    const dTxt = lr.d_txt!.data as Float32Array;
    // 3. backward per micro-batch, accumulating into two ping-pong buffers per parameter
    let acc = new Map(this.towerParams.map((n) => [n, this.grads.get(n)!.fill(0)]));
    let other = new Map(this.towerParams.map((n) => [n, (this.spare.get(n) ?? this.spare.set(n, new Float32Array(this.grads.get(n)!.length)).get(n))!]));
    for (let j = 0; j < batch / micro; j++) {
      const feeds: Record<string, HostTensor> = {
        ...microFeeds(j),
        ...towerFeeds,
        d_img: { data: dImg.subarray(j * micro * D, (j + 1) * micro * D), shape: [micro, D] },
        d_txt: { data: dTxt.subarray(j * micro * D, (j + 1) * micro * D), shape: [micro, D] },
      };
      const into: Record<string, HostTensor> = {};
      for (const n of this.towerParams) {
        feeds[`acc_in.${n}`] = { data: acc.get(n)!, shape: this.shapeOf(n) };
        into[`acc.${n}`] = { data: other.get(n)!, shape: this.shapeOf(n) };
      }
      await this.back.run(feeds, into);
      [acc, other] = [other, acc];
    }
    for (const n of this.towerParams) if (acc.get(n) !== this.grads.get(n)) this.grads.get(n)!.set(acc.get(n)!);
    return Number(lr.loss!.data[0]);
  }

  private spare = new Map<string, Float32Array>();
  private shapeOf(n: string): readonly number[] {
    return this.shapes.get(n)!;
  }
}

/** AdamW over gradient buffers (used after accumulation), with optional global-norm clipping. */
export function applyAdamW(params: Map<string, Float32Array>, grads: Map<string, Float32Array>, m: Map<string, Float32Array>, v: Map<string, Float32Array>, cfg: AdamWConfig, lr: number, t: number, wdOf: (n: string) => number, clipNorm?: number): number {
  let sq = 0;
  for (const g of grads.values()) for (let i = 0; i < g.length; i++) sq += g[i]! * g[i]!;
  const norm = Math.sqrt(sq);
  if (clipNorm !== undefined) {
    const scale = Math.min(1, clipNorm / (norm + 1e-6));
    if (scale < 1) for (const g of grads.values()) for (let i = 0; i < g.length; i++) g[i]! *= scale;
  }
  for (const [n, g] of grads) {
    if (!m.has(n)) m.set(n, new Float32Array(g.length));
    if (!v.has(n)) v.set(n, new Float32Array(g.length));
    adamwInPlace(params.get(n)!, g, m.get(n)!, v.get(n)!, cfg, lr, t, wdOf(n));
  }
  return norm;
}
