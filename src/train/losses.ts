// Contrastive losses over a batch's image-text similarity matrix (chapter 5.1): the true pairs are on
// the diagonal and every other entry is an in-batch negative.
import type { Tensor } from '../graph/graph.js';
import * as o from '../graph/ops.js';
import { normalize } from '../models/clip.js';

export type ContrastiveLoss = 'clip' | 'siglip' | 'multipos';

/** Cross-entropy of each row of `logits` [B, B] against a soft target distribution [B, B]. */
function softCrossEntropy(logits: Tensor, targets: Tensor): Tensor {
  return o.neg(o.reduceMean(o.reduceSum(o.mul(o.logSoftmax(logits, -1), targets), [-1])));
}

/**
 * CLIP's symmetric InfoNCE: logits = exp(t)·norm(img)·norm(txt)ᵀ; the mean of the image→text and
 * text→image cross-entropies with the diagonal as the labels (OpenAI / OpenCLIP ClipLoss).
 */
export function clipLoss(img: Tensor, txt: Tensor, logitScale: Tensor): { loss: Tensor; logits: Tensor } {
  const b = img.shape[0];
  if (typeof b !== 'number') throw new Error('clipLoss: the batch size must be static');
  const logits = o.mul(o.matmul(normalize(img), o.transpose(normalize(txt), [1, 0])), o.exp(logitScale));
  const eye = new Float32Array(b * b);
  for (let i = 0; i < b; i++) eye[i * b + i] = 1;
  const I = o.constant(img.graph, eye, [b, b]);
  const loss = o.mul(o.add(softCrossEntropy(logits, I), softCrossEntropy(o.transpose(logits, [1, 0]), I)), 0.5);
  return { loss, logits };
}

/**
 * The multi-positive loss: `targets` [B, B] holds, for each row, a distribution over the pairs that
 * count as positive (every pair sharing a class or caption, normalised to sum to 1). Under plain
 * InfoNCE such duplicates are false negatives; here they are positives.
 */
export function multiPositiveLoss(img: Tensor, txt: Tensor, logitScale: Tensor, targets: Tensor): { loss: Tensor; logits: Tensor } {
  const logits = o.mul(o.matmul(normalize(img), o.transpose(normalize(txt), [1, 0])), o.exp(logitScale));
  // The positive relation is symmetric, so the same targets serve both directions.
  const loss = o.mul(o.add(softCrossEntropy(logits, targets), softCrossEntropy(o.transpose(logits, [1, 0]), targets)), 0.5);
  return { loss, logits };
}

/** log σ(z) computed stably: min(z, 0) − log(1 + e^{−|z|}). */
function logSigmoid(z: Tensor): Tensor {
  return o.sub(o.min(z, 0), o.log(o.add(o.exp(o.neg(o.abs(z))), 1)));
}

/**
 * SigLIP's sigmoid loss (Zhai et al. 2023): each pair is a binary problem, +1 on the diagonal and −1
 * elsewhere; logits = exp(t)·cos + b; loss = −Σ log σ(label·logit) / B.
 */
export function sigLipLoss(img: Tensor, txt: Tensor, logitScale: Tensor, logitBias: Tensor): { loss: Tensor; logits: Tensor } {
  const b = img.shape[0];
  if (typeof b !== 'number') throw new Error('sigLipLoss: the batch size must be static');
  const logits = o.add(o.mul(o.matmul(normalize(img), o.transpose(normalize(txt), [1, 0])), o.exp(logitScale)), logitBias);
  const sign = new Float32Array(b * b).fill(-1);
  for (let i = 0; i < b; i++) sign[i * b + i] = 1;
  const loss = o.div(o.neg(o.reduceSum(logSigmoid(o.mul(logits, o.constant(img.graph, sign, [b, b]))))), b);
  return { loss, logits };
}

/** Soft targets for the multi-positive loss from per-pair group ids (class ids or caption ids). */
export function positiveTargets(groups: ArrayLike<number | bigint>): Float32Array {
  const b = groups.length;
  const t = new Float32Array(b * b);
  for (let i = 0; i < b; i++) {
    let n = 0;
    for (let j = 0; j < b; j++) if (groups[i] === groups[j]) n++;
    for (let j = 0; j < b; j++) if (groups[i] === groups[j]) t[i * b + j] = 1 / n;
  }
  return t;
}
