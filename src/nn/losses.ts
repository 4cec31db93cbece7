// Losses as graph functions.
import type { Tensor } from '../graph/graph.js';
import * as o from '../graph/ops.js';

/**
 * Mean cross-entropy of logits [B, C] against int64 labels [B], with optional label smoothing
 * (torch.nn.functional.cross_entropy(label_smoothing=s): target = (1−s)·onehot + s/C).
 */
export function crossEntropy(logits: Tensor, labels: Tensor, smoothing = 0): Tensor {
  if (logits.rank !== 2 || labels.rank !== 1) throw new Error(`crossEntropy: logits must be [B, C] and labels [B], got [${logits.shape}] and [${labels.shape}]`);
  if (smoothing < 0 || smoothing >= 1) throw new Error(`crossEntropy: label smoothing must be in [0, 1), got ${smoothing}`);
  const lp = o.logSoftmax(logits, -1);
  const nll = o.neg(o.reduceMean(o.gatherElements(lp, o.unsqueeze(o.cast(labels, 'int64'), [1]), 1)));
  if (smoothing === 0) return nll;
  const uniform = o.neg(o.reduceMean(lp));
  return o.add(o.mul(nll, 1 - smoothing), o.mul(uniform, smoothing));
}

/** Fraction of rows whose arg-max equals the label. */
export function accuracy(logits: Tensor, labels: Tensor): Tensor {
  return o.reduceMean(o.cast(o.equal(o.argMax(logits, -1), o.cast(labels, 'int64')), 'float32'));
}
