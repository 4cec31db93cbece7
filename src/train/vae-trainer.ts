// Training and evaluating the VAE of models/vae.ts on a folder of images: a small in-memory image
// set (decoded once to S×S RGB bytes), a held-out split, the training loop with checkpoints that
// resume exactly, metrics as JSONL, and the held-out ELBO in bits per dimension.
import { appendFileSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import { SafetensorsFile, writeSafetensors } from '../checkpoint/safetensors.js';
import { centerCropBox, decodeImage, resizeBicubic, resizeShortSide } from '../data/image.js';
import { type VaeConfig, vaeConfig, vaeDecodeGraph, vaeForward, vaeTrainGraph } from '../models/vae.js';
import { type ParamValues, Rng, initParams } from '../nn/init.js';
import { warmupCosine } from '../optim/schedule.js';
import { TrainStep } from '../optim/step.js';
import { type Compiled, compile } from '../runtime/compile.js';
import type { HostTensor } from '../runtime/session.js';

// ---------------------------------------------------------------- the image set

const EXTENSIONS = new Set(['.jpg', '.jpeg', '.png', '.webp']);

export interface ImageList {
  /** Sorted by class, then by file name (code point order). */
  files: string[];
  labels: Int32Array;
  /** Class folder names; [''] for a flat folder of images. */
  classes: string[];
}

/** root/<class>/<image> when root has class folders, otherwise root/<image>. */
export function listImages(root: string): ImageList {
  if (!existsSync(root) || !statSync(root).isDirectory()) throw new Error(`data folder '${root}' does not exist or is not a directory`);
  const entries = readdirSync(root).filter((n) => !n.startsWith('.')).sort();
  const imagesIn = (dir: string): string[] => readdirSync(dir).filter((n) => !n.startsWith('.') && EXTENSIONS.has(extname(n).toLowerCase())).sort().map((n) => join(dir, n));
  const dirs = entries.filter((n) => statSync(join(root, n)).isDirectory());
  const classes = dirs.length ? dirs : [''];
  const files: string[] = [];
  const labels: number[] = [];
  classes.forEach((c, i) => imagesIn(join(root, c)).forEach((f) => (files.push(f), labels.push(i))));
  if (files.length === 0) throw new Error(`no images (${[...EXTENSIONS].join(', ')}) in '${root}' or its class folders`);
  return { files, labels: Int32Array.from(labels), classes };
}

/**
 * The held-out split: the last ⌈fraction·n⌉ files (by name) of every class. It depends only on the
 * file names, not on the seed, so every run and every command sees the same held-out images.
 */
export function splitHoldout(list: ImageList, fraction: number): { train: number[]; holdout: number[] } {
  if (!(fraction >= 0 && fraction < 1)) throw new Error(`holdout fraction must be in [0, 1), got ${fraction}`);
  const train: number[] = [];
  const holdout: number[] = [];
  list.classes.forEach((_, c) => {
    const idx = [...list.labels.keys()].filter((i) => list.labels[i] === c);
    const k = Math.ceil(fraction * idx.length);
    train.push(...idx.slice(0, idx.length - k));
    holdout.push(...idx.slice(idx.length - k));
  });
  return { train, holdout };
}

/** Decodes files to size×size RGB (HWC bytes, image after image); images that fail are reported (and left black). */
export async function decodeImages(files: readonly string[], size: number, onProgress?: (done: number) => void): Promise<{ pixels: Uint8Array; failed: { index: number; reason: string }[] }> {
  const per = size * size * 3;
  const pixels = new Uint8Array(files.length * per);
  const failed: { index: number; reason: string }[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < files.length; i = next++) {
      try {
        const img = await decodeImage(files[i]!);
        let px = img.data;
        if (img.width !== size || img.height !== size) {
          // Not CIFAR-sized: short side to `size`, then the centre square (the eval transform's geometry).
          const [rw, rh] = resizeShortSide(img.width, img.height, size);
          px = resizeBicubic(img.data, img.width, img.height, 3, rw, rh, centerCropBox(rw, rh, size));
        }
        pixels.set(px, i * per);
      } catch (e) {
        failed.push({ index: i, reason: (e as Error).message });
      }
      if (onProgress && (i + 1) % 5000 === 0) onProgress(i + 1);
    }
  };
  await Promise.all(Array.from({ length: 4 }, worker));
  return { pixels, failed };
}

/**
 * Bytes → the model's input x ∈ [0,1], NCHW. Gaussian likelihoods see uniformly dequantised pixels
 * (v + u)/256 with u ~ U[0,1) from `noise` (u = ½, the bin centre, without it), so the continuous
 * density bounds the probability of the 8-bit image; the Bernoulli likelihood sees v/255.
 */
export function toInput(pixels: Uint8Array, idx: readonly number[], c: VaeConfig, noise?: Rng): Float32Array {
  const s = c.imageSize;
  const hw = s * s;
  const out = new Float32Array(idx.length * 3 * hw);
  const bce = c.recon === 'bce';
  idx.forEach((img, b) => {
    const src = img * hw * 3;
    for (let p = 0; p < hw; p++) {
      for (let ch = 0; ch < 3; ch++) {
        const v = pixels[src + p * 3 + ch]!;
        out[(b * 3 + ch) * hw + p] = bce ? v / 255 : (v + (noise ? noise.next() : 0.5)) / 256;
      }
    }
  });
  return out;
}

function normals(rng: Rng, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.normal();
  return out;
}

// ---------------------------------------------------------------- training

export interface VaeRunOptions {
  batchSize: number;
  epochs: number;
  /** Planned optimisation steps (the cosine schedule's length): epochs × ⌊train / batch⌋, capped by --max-steps. */
  totalSteps: number;
  lr: number;
  warmup: number;
  weightDecay: number;
  beta: number;
  /** β rises linearly from 0 to `beta` over this many steps (0: constant β). */
  betaWarmup: number;
  clipNorm?: number;
  seed: number;
  holdoutFraction: number;
}

export interface StepStats {
  step: number;
  loss: number;
  recon: number;
  kl: number;
  mse: number;
  lr: number;
  beta: number;
}

export class VaeTrainer {
  private constructor(
    readonly config: VaeConfig,
    readonly run: VaeRunOptions,
    readonly ts: TrainStep,
  ) {}

  static async create(config: VaeConfig, run: VaeRunOptions, values?: ParamValues, threads?: number): Promise<VaeTrainer> {
    const t = vaeTrainGraph(config, run.batchSize);
    const params = initParams(t.g, run.seed, values ?? new Map());
    const ts = await TrainStep.create(t.g, t.loss, params, {
      optimizer: { lr: run.lr, weightDecay: run.weightDecay },
      // PyTorch's AdamW decays every parameter; we keep biases and σ out of it (ndim < 2).
      weightDecayOf: (_n, shape) => (shape.length < 2 ? 0 : run.weightDecay),
      schedule: warmupCosine(run.lr, Math.min(run.warmup, run.totalSteps), Math.max(run.totalSteps, 1)),
      clipNorm: run.clipNorm,
      metrics: { recon: t.recon, kl: t.klMean, mse: t.mse },
      threads,
    });
    return new VaeTrainer(config, run, ts);
  }

  get params(): ParamValues {
    return this.ts.values;
  }

  betaAt(step: number): number {
    return this.run.betaWarmup > 0 ? this.run.beta * Math.min(1, (step + 1) / this.run.betaWarmup) : this.run.beta;
  }

  /**
   * One step on the images `idx` of `pixels`. ε and the dequantisation noise come from streams keyed
   * by (seed, step), so a resumed run draws exactly what the uninterrupted run would have.
   */
  async step(pixels: Uint8Array, idx: readonly number[]): Promise<StepStats> {
    const { batchSize: b, seed } = this.run;
    if (idx.length !== b) throw new Error(`a training batch has ${b} images, got ${idx.length}`);
    const step = this.ts.t;
    const beta = this.betaAt(step);
    const s = this.config.imageSize;
    const r = await this.ts.step({
      x: { data: toInput(pixels, idx, this.config, new Rng(`${seed}:noise:${step}`)), shape: [b, 3, s, s] },
      eps: { data: normals(new Rng(`${seed}:eps:${step}`), b * this.config.latent), shape: [b, this.config.latent] },
      beta: { data: Float32Array.of(beta), shape: [] },
    });
    const m = (k: string): number => Number(r.metrics[k]!.data[0]);
    return { step: step + 1, loss: r.loss, recon: m('recon'), kl: m('kl'), mse: m('mse'), lr: r.lr, beta };
  }
}

/** The image order of an epoch: a shuffle keyed by (seed, epoch). */
export function epochOrder(train: readonly number[], seed: number, epoch: number): number[] {
  return new Rng(`${seed}:epoch:${epoch}`).shuffle([...train]);
}

// ---------------------------------------------------------------- checkpoints

export const CHECKPOINT = 'checkpoint.safetensors';
const M = 'opt.m.';
const V = 'opt.v.';

export interface VaeCheckpoint {
  config: VaeConfig;
  params: ParamValues;
  run?: VaeRunOptions;
  optimizer?: { step: number; m: Map<string, Float32Array>; v: Map<string, Float32Array> };
  /** The next batch to train on. */
  position?: { epoch: number; batch: number };
  /** Number and names-hash of the training images, to refuse resuming on other data. */
  data?: { images: number; digest: string };
}

/** Weights, AdamW moments and the run state in one safetensors file, written atomically. */
export async function saveVaeCheckpoint(path: string, ck: VaeCheckpoint): Promise<void> {
  const tensors: { name: string; shape: number[]; data: Float32Array }[] = [];
  for (const [n, d] of ck.params) tensors.push({ name: n, shape: [d.length], data: d });
  for (const [n, d] of ck.optimizer?.m ?? []) tensors.push({ name: M + n, shape: [d.length], data: d });
  for (const [n, d] of ck.optimizer?.v ?? []) tensors.push({ name: V + n, shape: [d.length], data: d });
  const state = { step: ck.optimizer?.step ?? 0, run: ck.run, position: ck.position, data: ck.data };
  await writeSafetensors(path, tensors, { format: 'clipkit-vae', 'clipkit.vae.config': JSON.stringify(ck.config), 'clipkit.vae.state': JSON.stringify(state) });
}

/** Reads a checkpoint file, or `<dir>/checkpoint.safetensors` for a run directory. */
export async function loadVaeCheckpoint(pathOrDir: string): Promise<VaeCheckpoint> {
  const path = existsSync(pathOrDir) && statSync(pathOrDir).isDirectory() ? join(pathOrDir, CHECKPOINT) : pathOrDir;
  if (!existsSync(path)) throw new Error(`no VAE checkpoint at '${path}'`);
  const st = await SafetensorsFile.open(path);
  try {
    if (st.metadata.format !== 'clipkit-vae') throw new Error(`${path} is not a clipkit VAE checkpoint (format '${st.metadata.format ?? 'none'}')`);
    const config = vaeConfig(JSON.parse(st.metadata['clipkit.vae.config'] ?? '{}'));
    const state = JSON.parse(st.metadata['clipkit.vae.state'] ?? '{}');
    const params: ParamValues = new Map();
    const m = new Map<string, Float32Array>();
    const v = new Map<string, Float32Array>();
    for (const n of st.names()) {
      const d = await st.readFloat32(n);
      if (n.startsWith(M)) m.set(n.slice(M.length), d);
      else if (n.startsWith(V)) v.set(n.slice(V.length), d);
      else params.set(n, d);
    }
    return { config, params, run: state.run, optimizer: { step: state.step ?? 0, m, v }, position: state.position, data: state.data };
  } finally {
    await st.close();
  }
}

// ---------------------------------------------------------------- the training loop

export interface TrainLoopOptions {
  out: string;
  /** Stop after this many wall-clock minutes of the loop (evaluations and saves included, data loading not). */
  minutes?: number;
  /** Stop after this many steps in total (the schedule still spans run.totalSteps). */
  stopAt?: number;
  logEvery: number;
  saveEvery: number;
  evalEvery: number;
  evalImages: number;
  threads?: number;
  log: (line: string) => void;
}

export interface TrainData {
  pixels: Uint8Array;
  train: number[];
  holdout: number[];
  digest: string;
}

/** Trains from `resume` (or from scratch), logging, checkpointing and writing metrics.jsonl into `out`. */
export async function trainVae(config: VaeConfig, run: VaeRunOptions, data: TrainData, o: TrainLoopOptions, resume?: VaeCheckpoint): Promise<{ steps: number; imagesPerSecond: number; seconds: number }> {
  mkdirSync(o.out, { recursive: true });
  const trainer = await VaeTrainer.create(config, run, resume?.params, o.threads);
  let pos = resume?.position ?? { epoch: 0, batch: 0 };
  if (resume?.optimizer) trainer.ts.loadState(resume.optimizer);
  const metricsPath = join(o.out, 'metrics.jsonl');
  truncateMetrics(metricsPath, trainer.ts.t);
  const per = Math.floor(data.train.length / run.batchSize);
  if (per === 0) throw new Error(`${data.train.length} training images are fewer than one batch of ${run.batchSize}`);
  const evaluator = o.evalEvery > 0 && data.holdout.length ? await VaeModel.create(config, trainer.params, o.threads) : undefined;
  const evalIdx = data.holdout.slice(0, o.evalImages);
  const save = (): Promise<void> =>
    saveVaeCheckpoint(join(o.out, CHECKPOINT), { config, params: trainer.params, run, optimizer: trainer.ts.state, position: pos, data: { images: data.train.length, digest: data.digest } });
  const stopAt = Math.min(run.totalSteps, o.stopAt ?? Infinity);
  const started = performance.now();
  const startStep = trainer.ts.t;
  // Images/s counts step time only (batch assembly, forward, backward, update), not evaluations or saves.
  let stepSeconds = 0;
  let window = { n: 0, loss: 0, recon: 0, kl: 0, mse: 0, t: 0 };
  let order = epochOrder(data.train, run.seed, pos.epoch);
  const elapsed = (): number => (performance.now() - started) / 1000;
  const outOfTime = (): boolean => o.minutes !== undefined && elapsed() >= o.minutes * 60;
  while (trainer.ts.t < stopAt && !outOfTime()) {
    if (pos.batch >= per) {
      pos = { epoch: pos.epoch + 1, batch: 0 };
      order = epochOrder(data.train, run.seed, pos.epoch);
    }
    const t0 = performance.now();
    const s = await trainer.step(data.pixels, order.slice(pos.batch * run.batchSize, (pos.batch + 1) * run.batchSize));
    stepSeconds += (performance.now() - t0) / 1000;
    pos = { ...pos, batch: pos.batch + 1 };
    if (!Number.isFinite(s.loss)) throw new Error(`step ${s.step}: the loss is ${s.loss}; lower --lr or set --clip-norm`);
    window = { ...window, n: window.n + 1, loss: window.loss + s.loss, recon: window.recon + s.recon, kl: window.kl + s.kl, mse: window.mse + s.mse };
    const last = trainer.ts.t >= stopAt || outOfTime(); // the final step is always logged and evaluated
    if (s.step % o.logEvery === 0 || last) {
      const ips = (window.n * run.batchSize) / (stepSeconds - window.t);
      const mean = (v: number): number => v / window.n;
      const rec = { type: 'train', step: s.step, epoch: pos.epoch + pos.batch / per, loss: mean(window.loss), recon: mean(window.recon), kl: mean(window.kl), mse: mean(window.mse), beta: s.beta, lr: s.lr, imagesPerSecond: ips, seconds: elapsed() };
      appendFileSync(metricsPath, JSON.stringify(rec) + '\n');
      const stepsPerSec = (s.step - startStep) / elapsed();
      let eta = (stopAt - s.step) / stepsPerSec;
      if (o.minutes !== undefined) eta = Math.min(eta, o.minutes * 60 - elapsed());
      o.log(`step ${s.step}/${run.totalSteps}  epoch ${rec.epoch.toFixed(2)}  loss ${rec.loss.toFixed(1)}  recon ${rec.recon.toFixed(1)}  KL ${rec.kl.toFixed(1)}  mse ${rec.mse.toFixed(5)}  β ${s.beta.toFixed(2)}  lr ${s.lr.toExponential(2)}  ${ips.toFixed(0)} img/s  ETA ${fmtTime(eta)}`);
      window = { n: 0, loss: 0, recon: 0, kl: 0, mse: 0, t: stepSeconds };
    }
    if (evaluator && (s.step % o.evalEvery === 0 || last)) {
      await evaluator.setParams(trainer.params);
      const e = await evaluator.evaluate(data.pixels, evalIdx, { seed: run.seed });
      appendFileSync(metricsPath, JSON.stringify({ type: 'eval', step: s.step, ...e }) + '\n');
      o.log(`  held-out (${e.images} images): mse ${e.mse.toFixed(5)}  −ELBO ${e.negElbo.toFixed(1)} nats  ${e.bitsPerDim.toFixed(3)} bits/dim`);
    }
    if (s.step % o.saveEvery === 0) await save();
  }
  await save();
  const steps = trainer.ts.t - startStep;
  return { steps, imagesPerSecond: (steps * run.batchSize) / stepSeconds, seconds: elapsed() };
}

/** Drops metric lines past the checkpoint being resumed, so the file never holds a step twice. */
function truncateMetrics(path: string, step: number): void {
  if (!existsSync(path)) return;
  const keep = readFileSync(path, 'utf8').split('\n').filter((l) => l.trim() && (JSON.parse(l) as { step: number }).step <= step);
  writeFileSync(path, keep.map((l) => l + '\n').join(''));
}

export function fmtTime(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '?';
  const m = Math.floor(s / 60);
  return m >= 60 ? `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m` : `${m}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
}

// ---------------------------------------------------------------- inference and evaluation

export interface VaeEvaluation {
  images: number;
  /** Per-pixel squared error of the reconstruction from z = μ, on [0,1] pixels. */
  mse: number;
  /** Per image, in nats: E_q[−log p(x|z)] (one z sample), KL, and their sum −ELBO. */
  recon: number;
  kl: number;
  negElbo: number;
  /** (−ELBO + D·ln 256) / (D·ln 2) for the Gaussian likelihoods (see bitsPerDim), −ELBO/(D·ln 2) for Bernoulli. */
  bitsPerDim: number;
  /** Latent dims whose posterior mean varies across images (Var_x E[z|x] > 0.01; Burda et al. 2016). */
  activeDims: number;
}

/** A trained VAE for inference: the forward graph (x, ε → everything) and the decoder (z → image). */
export class VaeModel {
  private constructor(
    readonly config: VaeConfig,
    private fwd: Compiled,
    private dec: Compiled,
    private readonly threads?: number,
  ) {}

  static async create(config: VaeConfig, params: ParamValues, threads?: number): Promise<VaeModel> {
    const [fwd, dec] = await VaeModel.compileBoth(config, params, threads);
    return new VaeModel(config, fwd, dec, threads);
  }

  private static async compileBoth(c: VaeConfig, params: ParamValues, threads?: number): Promise<[Compiled, Compiled]> {
    const f = vaeForward(c);
    const d = vaeDecodeGraph(c);
    const pick = (names: Iterable<string>): Map<string, Float32Array> =>
      new Map([...names].map((n) => {
        const v = params.get(n);
        if (!v) throw new Error(`the VAE weights lack '${n}'`);
        return [n, v];
      }));
    return Promise.all([
      compile(f.g, { mu: f.mu, mean: f.mean, nll: f.nll, kl: f.kl, sqerr: f.sqerr }, { paramValues: pick(f.g.params.keys()), threads, cacheKey: false }),
      compile(d.g, { mean: d.mean }, { paramValues: pick(d.g.params.keys()), threads, cacheKey: false }),
    ]);
  }

  /** Re-bakes new weights (the periodic held-out evaluation during training). */
  async setParams(params: ParamValues): Promise<void> {
    [this.fwd, this.dec] = await VaeModel.compileBoth(this.config, params, this.threads);
  }

  /** The forward pass on a batch of inputs x [n,3,S,S] with ε (zeros: z = μ). */
  async forward(x: Float32Array, eps?: Float32Array): Promise<Record<string, HostTensor>> {
    const s = this.config.imageSize;
    const n = x.length / (3 * s * s);
    return this.fwd.run({ x: { data: x, shape: [n, 3, s, s] }, eps: { data: eps ?? new Float32Array(n * this.config.latent), shape: [n, this.config.latent] } });
  }

  /** z [n, L] → decoder means [n,3,S,S] in (0,1). */
  async decode(z: Float32Array): Promise<Float32Array> {
    const n = z.length / this.config.latent;
    return (await this.dec.run({ z: { data: z, shape: [n, this.config.latent] } })).mean!.data as Float32Array;
  }

  /**
   * Held-out metrics. The ELBO uses one z sample per image and dequantised pixels (toInput); the MSE
   * is of the deterministic reconstruction (z = μ, pixels at their bin centres).
   */
  async evaluate(pixels: Uint8Array, idx: readonly number[], o: { seed: number; batchSize?: number }): Promise<VaeEvaluation> {
    const c = this.config;
    const bs = o.batchSize ?? 250;
    const d = 3 * c.imageSize * c.imageSize;
    let [sq, nll, kl] = [0, 0, 0];
    const mus: Float32Array[] = [];
    for (let at = 0; at < idx.length; at += bs) {
      const part = idx.slice(at, at + bs);
      const rng = new Rng(`${o.seed}:eval:${at}`);
      const x = toInput(pixels, part, c, c.recon === 'bce' ? undefined : rng);
      const r = await this.forward(x, normals(rng, part.length * c.latent));
      nll += sum(r.nll!.data as Float32Array);
      kl += sum(r.kl!.data as Float32Array);
      const det = await this.forward(toInput(pixels, part, c));
      sq += sum(det.sqerr!.data as Float32Array);
      mus.push(det.mu!.data as Float32Array);
    }
    const n = idx.length;
    const negElbo = (nll + kl) / n;
    return { images: n, mse: sq / (n * d), recon: nll / n, kl: kl / n, negElbo, bitsPerDim: bitsPerDim(negElbo, d, c), activeDims: activeDims(mus, c.latent) };
  }
}

/**
 * Bits per dimension from −ELBO in nats per image over D = 3·S·S dimensions.
 * Gaussian ('gaussian', 'mse'): the density is over x = (v + u)/256 ∈ [0,1]^D; a bin of the 8-bit image
 * has volume 256^−D, so −log P(v) ≤ −ELBO + D·ln 256 (uniform dequantisation, Theis et al. 2016), and
 * bits/dim = (−ELBO + D·ln 256) / (D·ln 2) = −ELBO/(D·ln 2) + 8.
 * Bernoulli ('bce'): −ELBO / (D·ln 2) of a Bernoulli "likelihood" of continuous intensities, which is
 * not a probability of the 8-bit image: not comparable with published bits/dim.
 */
export function bitsPerDim(negElbo: number, d: number, c: VaeConfig): number {
  return (negElbo + (c.recon === 'bce' ? 0 : d * Math.log(256))) / (d * Math.LN2);
}

function sum(a: Float32Array): number {
  let s = 0;
  for (const v of a) s += v;
  return s;
}

function activeDims(mus: Float32Array[], latent: number): number {
  const mean = new Float64Array(latent);
  const sq = new Float64Array(latent);
  let n = 0;
  for (const m of mus) {
    for (let i = 0; i < m.length; i++) {
      mean[i % latent] += m[i]!;
      sq[i % latent] += m[i]! * m[i]!;
    }
    n += m.length / latent;
  }
  let active = 0;
  for (let j = 0; j < latent; j++) if (sq[j]! / n - (mean[j]! / n) ** 2 > 0.01) active++;
  return active;
}

/** A digest of the training file names (relative to the data folder), stored in checkpoints. */
export function digestOf(files: readonly string[]): string {
  let h = 0x811c9dc5;
  for (const f of files) for (let i = 0; i < f.length; i++) h = Math.imul(h ^ f.charCodeAt(i), 0x01000193) >>> 0;
  return `${files.length}:${h.toString(16)}`;
}
