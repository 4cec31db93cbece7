// AdamW (Loshchilov & Hutter), exactly as torch.optim.AdamW computes it, in two forms: as graph ops
// (the update runs inside the training step's ONNX session) and in place on Float32Arrays.
//
// For each parameter p with gradient g, at step t (1-based), with lr, β1, β2, ε, weight decay λ:
//   p ← p − lr·λ·p                      decoupled weight decay (not added to g)
//   m ← β1·m + (1 − β1)·g               first moment
//   v ← β2·v + (1 − β2)·g²              second moment
//   m̂ = m / (1 − β1ᵗ),  v̂ = v / (1 − β2ᵗ)   bias corrections
//   p ← p − lr · m̂ / (√v̂ + ε)
import type { Graph, Tensor } from '../graph/graph.js';
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
  /** lr for this step (after the schedule): the decoupled weight decay multiplies p by 1 − lr·λ. */
  lr: Tensor;
  /** lr·bc1/bc2 with bc1 = 1/(1 − β1ᵗ), bc2 = 1/√(1 − β2ᵗ): the step's scale on m/√v. */
  a: Tensor;
  /** ε/bc2: ε moved inside the bias correction, so √v needs no scaling. */
  e: Tensor;
}

export function adamwScalarValues(cfg: AdamWConfig, lr: number, t: number): { lr: number; bc1: number; bc2: number; a: number; e: number } {
  const bc1 = 1 / (1 - cfg.betas[0] ** t);
  const bc2 = 1 / Math.sqrt(1 - cfg.betas[1] ** t);
  return { lr, bc1, bc2, a: (lr * bc1) / bc2, e: cfg.eps / bc2 };
}

/** The graph inputs of AdamWScalars, named `${prefix}lr`, `${prefix}a`, `${prefix}e`. */
export function adamwScalarInputs(g: Graph, prefix: string): AdamWScalars {
  return { lr: g.input(`${prefix}lr`, [], 'float32'), a: g.input(`${prefix}a`, [], 'float32'), e: g.input(`${prefix}e`, [], 'float32') };
}

/**
 * The update as ops: returns the new parameter and moments. `wd` is this parameter's group decay,
 * or a tensor of per-element decays (a flat group of parameters with different decays).
 * Thirteen elementwise passes over the parameter's size (the scalars are folded on the host):
 *   m' = β1·m + (1−β1)·g;  v' = β2·v + (1−β2)·g²;  p' = p·(1 − lr·λ) − a·m' / (√v' + e)
 * which is torch.optim.AdamW's lr·bc1·m'/(√v'·bc2 + ε) divided through by bc2.
 */
export function adamwGraph(p: Tensor, g: Tensor, m: Tensor, v: Tensor, s: AdamWScalars, cfg: AdamWConfig, wd: number | Tensor): { p: Tensor; m: Tensor; v: Tensor } {
  const [b1, b2] = cfg.betas;
  const m2 = o.add(o.mul(m, b1), o.mul(g, 1 - b1));
  const v2 = o.add(o.mul(v, b2), o.mul(o.mul(g, g), 1 - b2));
  const step = o.div(o.mul(m2, s.a), o.add(o.sqrt(v2), s.e));
  const decayed = wd === 0 ? p : o.mul(p, o.sub(1, o.mul(s.lr, wd)));
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
