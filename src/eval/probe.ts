// Linear probe: multinomial logistic regression on frozen, L2-normalised image features, trained with
// our own engine (a Graph with one `linear` layer and `crossEntropy`, TrainStep with AdamW) instead of
// scikit-learn's L-BFGS as in CLIP's paper. The L2 penalty is AdamW's decoupled weight decay on the
// weight matrix. Weights start at zero (the problem is convex, so no random init is needed) and
// mini-batches are drawn from a seeded shuffle, so a run is reproducible.
import type { Features } from '../models/clip-model.js';
import { Graph } from '../graph/graph.js';
import { Rng } from '../nn/init.js';
import { linear } from '../nn/layers.js';
import { crossEntropy } from '../nn/losses.js';
import { warmupCosine } from '../optim/schedule.js';
import { TrainStep } from '../optim/step.js';
import { argmaxOf, checkFeatures, forEachScoreBlock, normalizeRows } from './zeroshot.js';

export interface Split {
  features: Features;
  labels: Int32Array;
}

export interface ProbeOptions {
  /** Passes over the training split; default 100. */
  epochs?: number;
  /** Rows per step; default: the whole training split (full batch). */
  batchSize?: number;
  /** Peak learning rate of AdamW, decayed to 0 by a cosine schedule; default 0.01. */
  lr?: number;
  /** Decoupled weight decay on the weights (not the bias): the L2 strength; default 0. */
  weightDecay?: number;
  /** Seed of the mini-batch shuffle; default 0. */
  seed?: number;
  /** Number of classes; default: 1 + the largest label in either split. */
  classes?: number;
  /** ONNX Runtime threads; default 1, so reductions always sum in the same order (bit-reproducible). */
  threads?: number;
}

export interface ProbeResult {
  /** Top-1 accuracy on the held-out split (fraction). */
  top1: number;
  /** Top-1 accuracy on the training split. */
  trainTop1: number;
  /** Mean loss over the last epoch's steps. */
  loss: number;
  /** The classifier: logits = weight [C, D] · normalise(x) + bias [C]. */
  weight: Float32Array;
  bias: Float32Array;
  classes: number;
}

export async function linearProbe(train: Split, test: Split, o: ProbeOptions = {}): Promise<ProbeResult> {
  const [n, d] = checkSplit('linearProbe train', train);
  checkSplit('linearProbe test', test, d);
  if (n === 0) throw new Error('linearProbe: empty training split');
  const classes = o.classes ?? 1 + Math.max(maxOf(train.labels), maxOf(test.labels));
  for (const s of [train, test]) for (const l of s.labels) if (!(l >= 0 && l < classes)) throw new Error(`linearProbe: label ${l} outside [0, ${classes})`);
  const epochs = o.epochs ?? 100;
  const batch = Math.min(n, o.batchSize ?? n);
  const lr = o.lr ?? 0.01;
  if (!(Number.isInteger(epochs) && epochs >= 1)) throw new Error(`linearProbe: epochs must be a positive integer, got ${epochs}`);
  if (!(Number.isInteger(batch) && batch >= 1)) throw new Error(`linearProbe: batchSize must be a positive integer, got ${o.batchSize}`);

  const x = normalizeRows(train.features);
  const g = new Graph('linear-probe');
  const logits = linear(g, 'probe', g.input('x', ['N', d]), classes);
  const loss = crossEntropy(logits, g.input('y', ['N'], 'int64'));
  const values = new Map([
    ['probe.weight', new Float32Array(classes * d)],
    ['probe.bias', new Float32Array(classes)],
  ]);
  const stepsPerEpoch = Math.ceil(n / batch);
  const step = await TrainStep.create(g, loss, values, {
    optimizer: { lr, weightDecay: o.weightDecay ?? 0 },
    weightDecayOf: (name) => (name.endsWith('bias') ? 0 : (o.weightDecay ?? 0)),
    schedule: warmupCosine(lr, 0, epochs * stepsPerEpoch),
    threads: o.threads ?? 1,
  });

  const rng = new Rng(o.seed ?? 0);
  const order = Array.from({ length: n }, (_, i) => i);
  const xb = new Float32Array(batch * d);
  const yb = new BigInt64Array(batch);
  let lastEpochLoss = 0;
  for (let e = 0; e < epochs; e++) {
    // Full batch needs no shuffle (the mean loss is order-independent up to rounding).
    if (batch < n) rng.shuffle(order);
    lastEpochLoss = 0;
    for (let lo = 0; lo < n; lo += batch) {
      const rows = Math.min(batch, n - lo);
      for (let r = 0; r < rows; r++) {
        const i = order[lo + r]!;
        xb.set(x.data.subarray(i * d, (i + 1) * d), r * d);
        yb[r] = BigInt(train.labels[i]!);
      }
      const res = await step.step({ x: { data: xb.subarray(0, rows * d), shape: [rows, d] }, y: { data: yb.subarray(0, rows), shape: [rows] } });
      lastEpochLoss += res.loss / stepsPerEpoch;
    }
  }
  const weight = step.values.get('probe.weight')!.slice();
  const bias = step.values.get('probe.bias')!.slice();
  const classifier = { weight, bias, classes };
  return {
    top1: await probeAccuracy(classifier, test),
    trainTop1: await probeAccuracy(classifier, train),
    loss: lastEpochLoss,
    ...classifier,
  };
}

/** Top-1 accuracy of a trained probe on a split (features normalised as in training). */
export async function probeAccuracy(p: { weight: Float32Array; bias: Float32Array; classes: number }, s: Split): Promise<number> {
  const [n, d] = checkSplit('probeAccuracy', s, p.weight.length / p.classes);
  if (n === 0) return NaN;
  const C = p.classes;
  let right = 0;
  await forEachScoreBlock(normalizeRows(s.features), { data: p.weight, shape: [C, d] }, (lo, hi, sc) => {
    for (let i = lo; i < hi; i++) {
      const off = (i - lo) * C;
      for (let c = 0; c < C; c++) sc[off + c]! += p.bias[c]!;
      if (argmaxOf(sc, off, C) === s.labels[i]) right++;
    }
  });
  return right / n;
}

/**
 * A stratified split: within each class, a seeded shuffle, and round(testFraction · count) of its
 * items (at least one when the class has two or more) go to the test side. Returns row indices.
 */
export function stratifiedSplit(labels: Int32Array, testFraction: number, seed = 0): { train: number[]; test: number[] } {
  if (!(testFraction > 0 && testFraction < 1)) throw new Error(`stratifiedSplit: testFraction must be in (0, 1), got ${testFraction}`);
  const byClass = new Map<number, number[]>();
  labels.forEach((l, i) => (byClass.get(l) ?? byClass.set(l, []).get(l)!).push(i));
  const rng = new Rng(seed);
  const train: number[] = [];
  const test: number[] = [];
  for (const c of [...byClass.keys()].sort((a, b) => a - b)) {
    const idx = rng.shuffle(byClass.get(c)!);
    const k = idx.length < 2 ? 0 : Math.max(1, Math.round(testFraction * idx.length));
    test.push(...idx.slice(0, k));
    train.push(...idx.slice(k));
  }
  return { train: train.sort((a, b) => a - b), test: test.sort((a, b) => a - b) };
}

/** The rows `idx` of a split, as a new split. */
export function takeRows(s: Split, idx: readonly number[]): Split {
  const [, d] = s.features.shape;
  const data = new Float32Array(idx.length * d);
  idx.forEach((i, r) => data.set(s.features.data.subarray(i * d, (i + 1) * d), r * d));
  return { features: { data, shape: [idx.length, d] }, labels: Int32Array.from(idx, (i) => s.labels[i]!) };
}

function maxOf(a: Int32Array): number {
  let m = -1;
  for (const v of a) m = Math.max(m, v);
  return m;
}

function checkSplit(what: string, s: Split, d?: number): [number, number] {
  const nd = checkFeatures(what, s.features, d);
  if (s.labels.length !== nd[0]) throw new Error(`${what}: ${s.labels.length} labels for ${nd[0]} rows`);
  return nd;
}
