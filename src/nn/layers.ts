// Layers as functions over the graph builder. Parameters are created in the graph's current scope
// with the names OpenAI / OpenCLIP checkpoints use (weight [out, in] as in PyTorch), so a state dict
// loads without a mapping.
import type { Graph, Tensor } from '../graph/graph.js';
import * as o from '../graph/ops.js';

type T = Tensor;
export type Activation = 'gelu' | 'gelu_tanh' | 'quick_gelu' | 'relu';

export function activate(x: T, act: Activation): T {
  switch (act) {
    case 'gelu':
      return o.gelu(x);
    case 'gelu_tanh':
      return o.geluTanh(x);
    case 'quick_gelu':
      return o.quickGelu(x);
    case 'relu':
      return o.relu(x);
  }
}

/** y = x·Wᵀ + b over the last axis, W: [out, in] (torch.nn.Linear), as one Gemm on a 2-D view. */
export function linear(g: Graph, name: string, x: T, outF: number, o_: { bias?: boolean; std?: number } = {}): T {
  const inF = x.shape[x.rank - 1] as number;
  return g.scope(name, () => {
    const w = g.param('weight', [outF, inF], o_.std ? { kind: 'normal', std: o_.std } : { kind: 'kaiming_uniform', fanIn: inF, fanOut: outF, gain: 1 });
    const b = o_.bias === false ? null : g.param('bias', [outF], { kind: 'zeros' });
    return linearWith(x, w, b);
  });
}

/**
 * x·Wᵀ + b with W [out, in]: MatMul against the transposed weight (ORT folds the transpose of a
 * constant weight and pre-packs it; measured faster than Gemm with transB), broadcasting over any
 * leading axes.
 */
export function linearWith(x: T, w: T, b: T | null): T {
  if (x.graph.mode === 'infer' && x.graph.quantize === 'int8') return quantizedLinear(x, w, b);
  const y = o.matmul(x, o.transpose(w, [1, 0]));
  return b ? o.add(y, b) : y;
}

/**
 * x·Wᵀ + b as an int8 GEMM (graphs with quantize 'int8'): W [out, in] quantized symmetrically per
 * output channel to 7 bits, scale = max|W[j, :]| / 63. The weight arithmetic is written as ops on
 * the parameter, which ORT constant-folds when the session is created (the weights are
 * initializers), so a run does only the quantized MatMul.
 *
 * 7 bits, not 8 ("reduce range" in ONNX Runtime's quantizer): on x86 CPUs without VNNI the uint8 ×
 * int8 kernel adds pairs of products in int16 (vpmaddubsw), and 2·255·127 overflows it; with
 * |w| ≤ 63 it cannot (2·255·63 < 32768), so AVX2 machines compute exactly what wasm and VNNI do.
 */
function quantizedLinear(x: T, w: T, b: T | null): T {
  const wt = o.transpose(w, [1, 0]); // [in, out]
  const scale = o.div(o.max(o.reduceMax(o.abs(wt), [0], false), 1e-12), 63);
  const wq = o.cast(o.min(o.max(o.round(o.div(wt, scale)), -63), 63), 'int8');
  return o.dynamicQuantizeMatMul(x, wq, scale, b);
}

export function layerNorm(g: Graph, name: string, x: T, eps = 1e-5): T {
  const d = x.shape[x.rank - 1] as number;
  return g.scope(name, () => o.layerNorm(x, g.param('weight', [d], { kind: 'ones' }), g.param('bias', [d], { kind: 'zeros' }), eps));
}

/** Transformer MLP: c_fc → activation → c_proj (OpenAI's names). */
export function mlp(g: Graph, name: string, x: T, hidden: number, act: Activation, std?: { fc?: number; proj?: number }): T {
  const d = x.shape[x.rank - 1] as number;
  return g.scope(name, () => linear(g, 'c_proj', activate(linear(g, 'c_fc', x, hidden, { std: std?.fc }), act), d, { std: std?.proj }));
}

/**
 * Multi-head self-attention with torch.nn.MultiheadAttention's parameters (in_proj_weight [3D, D],
 * in_proj_bias, out_proj.weight/bias). x: [N, T, D]; mask: additive [T, T] (e.g. causal) or null.
 */
export function selfAttention(g: Graph, name: string, x: T, heads: number, mask: T | null, std?: { in?: number; out?: number }, causal = false): T {
  if (g.mode === 'infer' && g.quantize !== 'int8' && (mask === null || causal)) {
    // Inference: one fused com.microsoft.Attention kernel (weights [D, 3D] = in_proj_weightᵀ).
    const d = x.shape[2] as number;
    return g.scope(name, () => {
      const wIn = g.param('in_proj_weight', [3 * d, d], { kind: 'zeros' });
      const bIn = g.param('in_proj_bias', [3 * d], { kind: 'zeros' });
      return linear(g, 'out_proj', o.fusedAttention(x, o.transpose(wIn, [1, 0]), bIn, heads, causal), d);
    });
  }
  return crossAttention(g, name, x, x, heads, mask, std);
}

/**
 * Multi-head attention of queries q [N, S, D] over keys/values kv [N, T, D], with the packed
 * in_proj of torch.nn.MultiheadAttention (q, k and v rows stacked in in_proj_weight).
 */
export function crossAttention(g: Graph, name: string, q: T, kv: T, heads: number, mask: T | null = null, std?: { in?: number; out?: number }): T {
  const [n, s, d] = q.shape as [number | string, number, number];
  const t = kv.shape[1] as number;
  if (d % heads !== 0) throw new Error(`attention '${g.scoped(name)}': width ${d} is not divisible by ${heads} heads`);
  const hd = d / heads;
  return g.scope(name, () => {
    const wIn = g.param('in_proj_weight', [3 * d, d], std?.in ? { kind: 'normal', std: std.in } : { kind: 'xavier_uniform', fanIn: d, fanOut: d });
    const bIn = g.param('in_proj_bias', [3 * d], { kind: 'zeros' });
    const heads4 = (z: T, len: number): T => o.transpose(o.reshape(z, [n, len, heads, hd]), [0, 2, 1, 3]); // [N, H, len, hd]
    let qh: T, kh: T, vh: T;
    if (q === kv) {
      // One matmul for q, k and v: [N, T, 3D] → [3, N, H, T, hd].
      const qkv = o.transpose(o.reshape(linearWith(q, wIn, bIn), [n, s, 3, heads, hd]), [2, 0, 3, 1, 4]);
      [qh, kh, vh] = o.split(qkv, 0, [1, 1, 1]).map((z) => o.squeeze(z, [0])) as [T, T, T];
    } else {
      const [wq, wkv] = o.split(wIn, 0, [d, 2 * d]);
      const [bq, bkv] = o.split(bIn, 0, [d, 2 * d]);
      qh = heads4(linearWith(q, wq!, bq!), s);
      const kvp = o.transpose(o.reshape(linearWith(kv, wkv!, bkv!), [n, t, 2, heads, hd]), [2, 0, 3, 1, 4]);
      [kh, vh] = o.split(kvp, 0, [1, 1]).map((z) => o.squeeze(z, [0])) as [T, T];
    }
    // [N, H, S, T] = q·kᵀ/√hd with kᵀ and the scale as GEMM flags (one FusedMatMul) in training
    // graphs; inference graphs keep standard ops (ORT fuses them; other runtimes need not know it).
    let scores =
      g.mode === 'train' ? o.fusedMatMul(qh, kh, { transB: true, alpha: 1 / Math.sqrt(hd) }) : o.matmul(o.mul(qh, 1 / Math.sqrt(hd)), o.transpose(kh, [0, 1, 3, 2]));
    if (mask) scores = o.add(scores, mask);
    const attn = o.matmul(o.softmax(scores, -1), vh); // [N, H, S, hd]
    const merged = o.reshape(o.transpose(attn, [0, 2, 1, 3]), [n, s, d]);
    return linear(g, 'out_proj', merged, d, { std: std?.out });
  });
}

/** The causal mask of OpenAI's text transformer: 0 on and below the diagonal, −∞ above. */
export function causalMask(g: Graph, t: number): T {
  const data = new Float32Array(t * t);
  for (let i = 0; i < t; i++) for (let j = i + 1; j < t; j++) data[i * t + j] = -Infinity;
  return o.constant(g, data, [t, t]);
}

export interface TransformerConfig {
  width: number;
  layers: number;
  heads: number;
  mlpRatio: number;
  act: Activation;
  /** The mask is the causal mask (lets inference graphs use a fused causal kernel). */
  causal?: boolean;
  /** Init std for attention/MLP projections (OpenAI's text tower scheme); default: PyTorch defaults. */
  initStd?: { attn?: number; proj?: number; fc?: number };
}

/** Pre-LN residual blocks, named resblocks.N (ln_1, attn, ln_2, mlp). x: [N, T, D]. */
export function transformer(g: Graph, name: string, x: T, cfg: TransformerConfig, mask: T | null = null): T {
  return g.scope(name, () => {
    let h = x;
    for (let i = 0; i < cfg.layers; i++) {
      h = g.scope(`resblocks.${i}`, () => {
        const std = cfg.initStd;
        const a = o.add(h, selfAttention(g, 'attn', layerNorm(g, 'ln_1', h), cfg.heads, mask, { in: std?.attn, out: std?.proj }, cfg.causal));
        return o.add(a, mlp(g, 'mlp', layerNorm(g, 'ln_2', a), Math.round(cfg.width * cfg.mlpRatio), cfg.act, { fc: std?.fc, proj: std?.proj }));
      });
    }
    return h;
  });
}
