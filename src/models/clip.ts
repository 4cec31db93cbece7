// CLIP (chapter 5.1; Radford et al. 2021), read as openai/CLIP's model.py reads: a ViT image tower
// and a causal text Transformer, each ending in a linear projection to a shared embedding space; the
// similarity of an image and a text is the scaled cosine of their embeddings. Parameter names are
// OpenAI's state-dict names, so their checkpoints load as they are.
import { Graph, type Tensor } from '../graph/graph.js';
import * as o from '../graph/ops.js';
import { type Activation, causalMask, layerNorm, transformer } from '../nn/layers.js';
import { type VitConfig, validateVit, vit } from './vit.js';

export interface TextConfig {
  contextLength: number;
  vocabSize: number;
  width: number;
  heads: number;
  layers: number;
  mlpRatio: number;
  act: Activation;
}

export interface ClipConfig {
  embedDim: number;
  vision: VitConfig;
  text: TextConfig;
  /** SigLIP's learned logit bias (init value), or undefined for CLIP. */
  initLogitBias?: number;
}

export const LOGIT_SCALE_INIT = Math.log(1 / 0.07);

export function validateClip(c: ClipConfig): void {
  validateVit(c.vision);
  const t = c.text;
  for (const k of ['contextLength', 'vocabSize', 'width', 'heads', 'layers'] as const) {
    if (!Number.isInteger(t[k]) || t[k] < 1) throw new Error(`CLIP text config: ${k} must be a positive integer, got ${t[k]}`);
  }
  if (t.width % t.heads !== 0) throw new Error(`CLIP text config: width ${t.width} is not divisible by heads ${t.heads}`);
  if (!Number.isInteger(c.embedDim) || c.embedDim < 1) throw new Error(`CLIP config: embedDim must be a positive integer, got ${c.embedDim}`);
  if (c.vision.outputDim !== c.embedDim) throw new Error(`CLIP config: the image tower projects to ${c.vision.outputDim}, not embedDim ${c.embedDim}`);
}

/** The image tower: pixels [N, 3, S, S] → image features [N, E] (projected, not normalised). */
export function encodeImageGraph(g: Graph, pixels: Tensor, c: ClipConfig): Tensor {
  return g.scope('visual', () => vit(g, pixels, c.vision));
}

/**
 * The text tower: token ids [N, L] (L ≤ context length) → text features [N, E]. Pools at the
 * position of the largest id, which is the end-of-text token (as model.py's `text.argmax(-1)`).
 */
export function encodeTextGraph(g: Graph, ids: Tensor, c: ClipConfig): Tensor {
  const t = c.text;
  const [n, len] = ids.shape as [number | string, number];
  if (ids.rank !== 2 || typeof len !== 'number' || len > t.contextLength) {
    throw new Error(`CLIP text tower expects token ids [N, L] with L ≤ ${t.contextLength}, got [${ids.shape}]`);
  }
  const W = t.width;
  // OpenAI's initialisation of the text tower (initialize_parameters in model.py).
  const projStd = W ** -0.5 * (2 * t.layers) ** -0.5;
  const tok = g.param('token_embedding.weight', [t.vocabSize, W], { kind: 'normal', std: 0.02 });
  const pos = g.param('positional_embedding', [t.contextLength, W], { kind: 'normal', std: 0.01 });
  const ids64 = o.cast(ids, 'int64');
  let x = o.add(o.gather(tok, ids64, 0), o.slice(pos, 0, 0, len)); // [N, L, W]
  x = transformer(
    g,
    'transformer',
    x,
    { width: W, layers: t.layers, heads: t.heads, mlpRatio: t.mlpRatio, act: t.act, causal: true, initStd: { attn: W ** -0.5, proj: projStd, fc: (2 * W) ** -0.5 } },
    causalMask(g, len),
  );
  x = layerNorm(g, 'ln_final', x);
  const eot = o.argMax(o.cast(ids, 'float32'), -1, true); // [N, 1]
  const at = o.expand(o.unsqueeze(eot, [2]), [n, 1, W], x); // [N, 1, W]
  const pooled = o.reshape(o.gatherElements(x, at, 1), [n, W]);
  return o.matmul(pooled, g.param('text_projection', [W, c.embedDim], { kind: 'normal', std: W ** -0.5 }));
}

/** L2-normalise rows. */
export function normalize(x: Tensor, eps = 1e-12): Tensor {
  return o.div(x, o.max(o.sqrt(o.reduceSum(o.square(x), [-1], true)), eps));
}

/** The learned temperature (and SigLIP's bias), created in `g`. */
export function logitParams(g: Graph, c: ClipConfig): { scale: Tensor; bias?: Tensor } {
  const scale = g.param('logit_scale', [], { kind: 'const', value: c.initLogitBias === undefined ? LOGIT_SCALE_INIT : Math.log(10) });
  const bias = c.initLogitBias === undefined ? undefined : g.param('logit_bias', [], { kind: 'const', value: c.initLogitBias });
  return { scale, bias };
}

/** logits_per_image [N_img, N_txt] = exp(logit_scale) · norm(img) · norm(txt)ᵀ (+ bias). */
export function clipLogits(img: Tensor, txt: Tensor, scale: Tensor, bias?: Tensor): Tensor {
  const sims = o.matmul(normalize(img), o.transpose(normalize(txt), [1, 0]));
  const logits = o.mul(sims, o.exp(scale));
  return bias ? o.add(logits, bias) : logits;
}

/** A graph holding both towers and the logit parameters: every parameter of a CLIP model. */
export function fullClipGraph(c: ClipConfig, batch: number | string = 'N', textLen = c.text.contextLength) {
  const g = new Graph('clip');
  const pixels = g.input('pixels', [batch, 3, c.vision.imageSize, c.vision.imageSize]);
  const ids = g.input('input_ids', [batch, textLen], 'int64');
  const img = encodeImageGraph(g, pixels, c);
  const txt = encodeTextGraph(g, ids, c);
  const { scale, bias } = logitParams(g, c);
  return { g, pixels, ids, img, txt, scale, bias };
}
