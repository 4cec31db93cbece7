// The Vision Transformer (chapter 5.2; Dosovitskiy et al.), with CLIP's image-tower details.
// A [N, 3, H, W] image is cut into p×p×3 patches, each flattened to 3p² and mapped to the model
// width by one linear layer (OpenAI's stride-p conv1, computed here as reshape + matmul), a class
// token is prepended, position embeddings are added, and a pre-LN Transformer encoder runs.
// Pooling: the class token, the mean of the tokens, or attention pooling with a learned query (the
// "weighted tokens" variant); then ln_post and an optional projection (CLIP) or class head.
// Parameter names follow OpenAI's `visual.*` state dict.
import type { Graph, Tensor } from '../graph/graph.js';
import * as o from '../graph/ops.js';
import { type Activation, activate, crossAttention, layerNorm, linearWith, mlp, transformer } from '../nn/layers.js';

export interface VitConfig {
  imageSize: number;
  patchSize: number;
  width: number;
  layers: number;
  heads: number;
  mlpRatio: number;
  act: Activation;
  posEmbed: 'learned' | 'sincos';
  pool: 'cls' | 'mean' | 'attn';
  /** OpenAI CLIP normalises the embedded tokens before the encoder. */
  lnPre: boolean;
  /** CLIP's output projection width (visual.proj, no bias); 0 for none. */
  outputDim: number;
  /** Classification head (head.weight/bias); 0 for none. */
  numClasses: number;
  /**
   * Optional convolutional stem (the hybrid of ViT §3.1, as in CCT): 3×3 stride-1 convolutions
   * with these output channels, each followed by the activation, before the patch embedding.
   * Absent or empty: the plain ViT.
   */
  convStem?: number[];
  /**
   * Patch dropout in training (OpenCLIP's patch_dropout, FLIP): this fraction of the patch tokens
   * of each image is dropped at random after the position embedding, so a step costs less; the
   * class token is kept. Inference graphs use every patch. The kept indices are the graph input
   * `patch_keep` [N, kept, 1] (int64), one random subset per image (see `patchKeepIndices`).
   */
  patchDropout?: number;
}

export function vitDefaults(c: Partial<VitConfig> & Pick<VitConfig, 'imageSize' | 'patchSize' | 'width' | 'layers'>): VitConfig {
  return {
    heads: Math.max(1, Math.round(c.width / 64)),
    mlpRatio: 4,
    act: 'gelu',
    posEmbed: 'learned',
    pool: 'cls',
    lnPre: true,
    outputDim: 0,
    numClasses: 0,
    ...c,
  };
}

export function validateVit(c: VitConfig): void {
  const bad = (why: string): never => {
    throw new Error(`ViT config: ${why}`);
  };
  for (const k of ['imageSize', 'patchSize', 'width', 'layers', 'heads'] as const) {
    if (!Number.isInteger(c[k]) || c[k] < 1) bad(`${k} must be a positive integer, got ${c[k]}`);
  }
  if (c.convStem !== undefined && (!Array.isArray(c.convStem) || c.convStem.some((k) => !Number.isInteger(k) || k < 1))) bad(`convStem must be a list of positive channel counts, got ${JSON.stringify(c.convStem)}`);
  if (c.patchDropout !== undefined && !(c.patchDropout >= 0 && c.patchDropout < 1)) bad(`patchDropout must be in [0, 1), got ${c.patchDropout}`);
  if (c.imageSize % c.patchSize !== 0) bad(`imageSize ${c.imageSize} is not a multiple of patchSize ${c.patchSize}`);
  if (c.width % c.heads !== 0) bad(`width ${c.width} is not divisible by heads ${c.heads}`);
  if (!(c.mlpRatio > 0)) bad(`mlpRatio must be > 0`);
  if (!['cls', 'mean', 'attn'].includes(c.pool)) bad(`pool must be cls, mean or attn, got ${c.pool}`);
  if (!['learned', 'sincos'].includes(c.posEmbed)) bad(`posEmbed must be learned or sincos, got ${c.posEmbed}`);
}

/** Tokens per image: the patches, plus one class token when pooling by it. */
export function vitTokens(c: VitConfig): number {
  return (c.imageSize / c.patchSize) ** 2 + (c.pool === 'cls' ? 1 : 0);
}

/** Patch tokens kept per image under patch dropout (at least one). */
export function keptPatches(c: VitConfig): number {
  const patches = (c.imageSize / c.patchSize) ** 2;
  return Math.max(1, Math.round(patches * (1 - (c.patchDropout ?? 0))));
}

/** The `patch_keep` input: for each of `n` images, `keptPatches(c)` distinct patch indices drawn by `r`. */
export function patchKeepIndices(c: VitConfig, n: number, r: { int(k: number): number }): { data: BigInt64Array; shape: [number, number, number] } {
  const patches = (c.imageSize / c.patchSize) ** 2;
  const keep = keptPatches(c);
  const out = new BigInt64Array(n * keep);
  const perm = new Int32Array(patches);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < patches; j++) perm[j] = j;
    for (let j = 0; j < keep; j++) {
      const k = j + r.int(patches - j); // partial Fisher–Yates
      [perm[j], perm[k]] = [perm[k]!, perm[j]!];
      out[i * keep + j] = BigInt(perm[j]!);
    }
  }
  return { data: out, shape: [n, keep, 1] };
}

/** MAE's fixed 2-D sine-cosine position embedding: half the width encodes the row, half the column. */
export function sincos2d(width: number, grid: number, cls: boolean): Float32Array {
  if (width % 4 !== 0) throw new Error(`sine-cosine position embedding needs width divisible by 4, got ${width}`);
  const quarter = width / 4;
  const out = new Float32Array((grid * grid + (cls ? 1 : 0)) * width);
  let row = cls ? 1 : 0; // the class token's embedding is zero
  for (let h = 0; h < grid; h++) {
    for (let w = 0; w < grid; w++, row++) {
      for (let i = 0; i < quarter; i++) {
        const omega = 1 / 10000 ** (i / quarter);
        const base = row * width;
        out[base + i] = Math.sin(w * omega);
        out[base + quarter + i] = Math.cos(w * omega);
        out[base + 2 * quarter + i] = Math.sin(h * omega);
        out[base + 3 * quarter + i] = Math.cos(h * omega);
      }
    }
  }
  return out;
}

/** [N, 3, H, W] → [N, (H/p)·(W/p), 3·p·p], flattened in (channel, row, column) order like conv1's weight. */
export function patchify(x: Tensor, p: number): Tensor {
  const [n, c, h, w] = x.shape as [number | string, number, number, number];
  const [gh, gw] = [h / p, w / p];
  const t = o.transpose(o.reshape(x, [n, c, gh, p, gw, p]), [0, 2, 4, 1, 3, 5]); // [N, gh, gw, C, p, p]
  return o.reshape(t, [n, gh * gw, c * p * p]);
}

/** Builds the tower on `pixels` [N, 3, S, S]; returns [N, outputDim | numClasses | width]. */
export function vit(g: Graph, pixels: Tensor, c: VitConfig): Tensor {
  validateVit(c);
  const [n, ch, hgt, wid] = pixels.shape;
  if (pixels.rank !== 4 || ch !== 3 || hgt !== c.imageSize || wid !== c.imageSize) {
    throw new Error(`ViT expects pixels [N, 3, ${c.imageSize}, ${c.imageSize}], got [${pixels.shape}]`);
  }
  const W = c.width;
  const p = c.patchSize;
  const grid = c.imageSize / p;
  const tokens = vitTokens(c);
  const scale = W ** -0.5; // OpenAI's init scale for class/position embeddings and proj

  let feat = pixels;
  let cin = 3;
  (c.convStem ?? []).forEach((cout, i) => {
    feat = g.scope(`stem.${i}`, () => {
      const w = g.param('weight', [cout, cin, 3, 3], { kind: 'kaiming_uniform', fanIn: cin * 9, fanOut: cout });
      const b = g.param('bias', [cout], { kind: 'zeros' });
      return activate(o.conv(feat, w, b, { pads: [1, 1, 1, 1] }), c.act);
    });
    cin = cout;
  });
  const conv1 = g.param('conv1.weight', [W, cin, p, p], { kind: 'kaiming_uniform', fanIn: cin * p * p, fanOut: W, gain: 1 });
  const dropping = g.mode === 'train' && (c.patchDropout ?? 0) > 0;
  const patches = patchify(feat, p); // [N, grid², cin·p²]
  // Without a stem, patch dropout picks the kept patches before the embedding: the patch GEMM runs
  // on the kept ones only, and pixels need no gradient (no scatter back into the full grid).
  const early = dropping && !c.convStem?.length;
  const keep = keptPatches(c);
  const idx = dropping ? g.input('patch_keep', [n!, keep, 1], 'int64') : undefined;
  const kept = early ? o.gatherElements(patches, o.expand(idx!, [n!, keep, cin * p * p]), 1) : patches;
  let x = linearWith(kept, o.reshape(conv1, [W, cin * p * p]), null); // [N, grid² | keep, W]
  const cls = c.pool === 'cls' ? g.param('class_embedding', [W], { kind: 'normal', std: scale }) : undefined;
  const pos =
    c.posEmbed === 'learned'
      ? g.param('positional_embedding', [tokens, W], { kind: 'normal', std: scale })
      : o.constant(g, sincos2d(W, grid, c.pool === 'cls'), [tokens, W]);
  if (early) {
    // Each kept token's position row, as a one-hot [N, keep, grid²] × [grid², W] product: its
    // gradient is one GEMM, where a Gather's would be an element-by-element scatter-add.
    const hot = o.cast(o.equal(idx!, o.constant(g, Array.from({ length: grid * grid }, (_, i) => i), [1, 1, grid * grid], 'int64')), 'float32');
    x = o.add(x, o.matmul(hot, cls ? o.slice(pos, 0, 1, tokens) : pos)); // [N, keep, grid²] × [grid², W]
    if (cls) {
      const first = o.reshape(o.add(cls, o.reshape(o.slice(pos, 0, 0, 1), [W])), [1, 1, W]);
      x = o.concat([o.expand(first, [n!, 1, W], x), x], 1);
    }
  } else if (dropping) {
    // Position embeddings first, then a random subset of the patch tokens per image (FLIP).
    x = o.add(x, cls ? o.slice(pos, 0, 1, tokens) : pos);
    x = o.gatherElements(x, o.expand(idx!, [n!, keep, W]), 1); // [N, keep, W]
    if (cls) {
      const first = o.reshape(o.add(cls, o.reshape(o.slice(pos, 0, 0, 1), [W])), [1, 1, W]);
      x = o.concat([o.expand(first, [n!, 1, W], x), x], 1);
    }
  } else {
    if (cls) x = o.concat([o.expand(o.reshape(cls, [1, 1, W]), [n!, 1, W], x), x], 1); // [N, grid²+1, W]
    x = o.add(x, pos);
  }
  if (c.lnPre) x = layerNorm(g, 'ln_pre', x);
  x = transformer(g, 'transformer', x, { width: W, layers: c.layers, heads: c.heads, mlpRatio: c.mlpRatio, act: c.act });

  let pooled: Tensor;
  if (c.pool === 'cls') pooled = layerNorm(g, 'ln_post', o.reshape(o.slice(x, 1, 0, 1), [n!, W]));
  else if (c.pool === 'mean') pooled = layerNorm(g, 'ln_post', o.reduceMean(x, [1]));
  else pooled = attentionPool(g, x, c);

  if (c.outputDim > 0) return o.matmul(pooled, g.param('proj', [W, c.outputDim], { kind: 'normal', std: scale }));
  if (c.numClasses > 0) {
    return g.scope('head', () =>
      linearWith(pooled, g.param('weight', [c.numClasses, W], { kind: 'normal', std: 0.02 }), g.param('bias', [c.numClasses], { kind: 'zeros' })),
    );
  }
  return pooled;
}

/**
 * Attention pooling: a learned query attends over all tokens (a weighted pooling whose weights the
 * model learns), then an MLP with a residual (timm's AttentionPoolLatent), then ln_post.
 */
function attentionPool(g: Graph, x: Tensor, c: VitConfig): Tensor {
  const n = x.shape[0]!;
  const W = c.width;
  const h = g.scope('attn_pool', () => {
    const q = o.expand(g.param('query', [1, 1, W], { kind: 'normal', std: W ** -0.5 }), [n, 1, W], x);
    const a = crossAttention(g, 'attn', q, layerNorm(g, 'ln_k', x), c.heads); // [N, 1, W]
    return o.add(a, mlp(g, 'mlp', layerNorm(g, 'ln_1', a), Math.round(W * c.mlpRatio), c.act));
  });
  return layerNorm(g, 'ln_post', o.reshape(h, [n, W]));
}
