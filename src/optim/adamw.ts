// AdamW (Loshchilov & Hutter), exactly as torch.optim.AdamW computes it, in two forms: as graph ops
// (the update runs inside the training step's ONNX session) and in place on Float32Arrays.
//
// For each parameter p with gradient g, at step t (1-based), with lr, β1, β2, ε, weight decay λ:
//   p ← p − lr·λ·p                      decoupled weight decay (not added to g)
//   m ← β1·m + (1 − β1)·g               first moment
//   v ← β2·v + (1 − β2)·g²              second moment
//   m̂ = m / (1 − β1ᵗ),  v̂ = v / (1 − β2ᵗ)   bias corrections
//   p ← p − lr · m̂ / (√v̂ + ε)
import type { Tensor } from '../graph/graph.js';
import * as o from '../graph/ops.js';

export interface AdamWConfig {
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
}

export const ADAMW_DEFAULTS: AdamWConfig = { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.01 };

/** Per-step scalars, fed as graph inputs so a schedule never forces a recompile. */
export interface AdamWScalars {
  /** lr for this step (after the schedule). */
  lr: Tensor;
  /** 1 / (1 − β1ᵗ) */
  bc1: Tensor;
  /** 1 / √(1 − β2ᵗ) */
  bc2: Tensor;
}

export function adamwScalarValues(cfg: AdamWConfig, lr: number, t: number): { lr: number; bc1: number; bc2: number } {
  return { lr, bc1: 1 / (1 - cfg.betas[0] ** t), bc2: 1 / Math.sqrt(1 - cfg.betas[1] ** t) };
}

/** The update as ops: returns the new parameter and moments. `wd` is this parameter's group decay. */
export function adamwGraph(p: Tensor, g: Tensor, m: Tensor, v: Tensor, s: AdamWScalars, cfg: AdamWConfig, wd: number): { p: Tensor; m: Tensor; v: Tensor } {
  const [b1, b2] = cfg.betas;
  const m2 = o.add(o.mul(m, b1), o.mul(g, 1 - b1));
  const v2 = o.add(o.mul(v, b2), o.mul(o.square(g), 1 - b2));
  // √v̂ + ε = √v·bc2 + ε;  step = lr·bc1·m / (√v·bc2 + ε)
  const denom = o.add(o.mul(o.sqrt(v2), s.bc2), cfg.eps);
  const step = o.div(o.mul(m2, o.mul(s.lr, s.bc1)), denom);
  const decayed = wd === 0 ? p : o.sub(p, o.mul(p, o.mul(s.lr, wd)));
  return { p: o.sub(decayed, step), m: m2, v: v2 };
}

/** The same update in place, in TypeScript (for the measured alternative; see BENCHMARKS.md). */
export function adamwInPlace(p: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, cfg: AdamWConfig, lr: number, t: number, wd: number): void {
  const [b1, b2] = cfg.betas;
  const { bc1, bc2 } = adamwScalarValues(cfg, lr, t);
  const decay = 1 - lr * wd;
  const stepSize = lr * bc1;
  for (let i = 0; i < p.length; i++) {
    const gi = g[i]!;
    const mi = b1 * m[i]! + (1 - b1) * gi;
    const vi = b2 * v[i]! + (1 - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i]! * decay - (stepSize * mi) / (Math.sqrt(vi) * bc2 + cfg.eps);
  }
}

/**
 * Global gradient-norm clipping as ops: every gradient is scaled by min(1, maxNorm / (‖g‖ + 1e-6)),
 * where ‖g‖ is the norm of all gradients together (torch.nn.utils.clip_grad_norm_). Returns the
 * scaled gradients and the norm before clipping.
 */
export function clipGradNorm(grads: Tensor[], maxNorm: Tensor): { grads: Tensor[]; norm: Tensor } {
  const sq = grads.map((g) => o.reshape(o.reduceSum(o.square(g)), [1]));
  const norm = o.sqrt(o.reduceSum(o.concat(sq, 0)));
  const scale = o.min(o.div(maxNorm, o.add(norm, 1e-6)), 1);
  return { grads: grads.map((g) => o.mul(g, scale)), norm };
}
