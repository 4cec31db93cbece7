// Int8 inference (`quantize: 'int8'`): linear layers become dynamically quantized int8 GEMMs. The
// features must stay close to fp32's on a real trained model (the shipped CIFAR-10 CLIP), every
// linear layer must actually be quantized, and a bad option is refused.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DEFAULT_MODEL_DIR } from '../src/cli/default-model.js';
import { rowCosines } from '../src/eval/cosine.js';
import { Graph } from '../src/graph/graph.js';
import { encodeImageGraph, encodeTextGraph } from '../src/models/clip.js';
import { fromOpenClip } from '../src/models/config.js';
import { loadClip } from '../src/models/load.js';
import { loadTokenizer } from '../src/tokenizer/load.js';
import { randn, rng } from './helpers.js';

test('int8 towers of the shipped model give features close to fp32 (cosine > 0.98, mean > 0.99) and the same zero-shot answers', async () => {
  const fp32 = await loadClip(DEFAULT_MODEL_DIR, { threads: 1 });
  const int8 = await loadClip(DEFAULT_MODEL_DIR, { threads: 1, quantize: 'int8' });
  const s = fp32.config.vision.imageSize;
  const n = 32;
  // Smooth random images (a coarse 4×4 grid per channel, upsampled) normalised like CLIP's inputs.
  const r = rng(3);
  const coarse = randn(r, n * 3 * 16);
  const pixels = new Float32Array(n * 3 * s * s);
  for (let i = 0; i < n * 3; i++) {
    for (let y = 0; y < s; y++) for (let x = 0; x < s; x++) pixels[i * s * s + y * s + x] = coarse[i * 16 + Math.floor((y * 4) / s) * 4 + Math.floor((x * 4) / s)]!;
  }
  const img = { data: pixels, shape: [n, 3, s, s] };
  const [a, b] = [await fp32.encodeImage(img), await int8.encodeImage(img)];
  const d = fp32.config.embedDim;
  const ci = rowCosines(a.data, b.data, d);
  const mean = (xs: number[]): number => xs.reduce((p, q) => p + q, 0) / xs.length;
  assert.ok(Math.min(...ci) > 0.98 && mean(ci) > 0.99, `image feature cosines: min ${Math.min(...ci).toFixed(4)}, mean ${mean(ci).toFixed(4)}`);

  const tok = await loadTokenizer(DEFAULT_MODEL_DIR);
  const classes = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck'];
  const ids = tok.encode(classes.map((c) => `a photo of a ${c}.`), { contextLength: fp32.config.text.contextLength });
  const [ta, tb] = [await fp32.encodeText(ids), await int8.encodeText(ids)];
  const ct = rowCosines(ta.data, tb.data, d);
  assert.ok(Math.min(...ct) > 0.98 && mean(ct) > 0.99, `text feature cosines: min ${Math.min(...ct).toFixed(4)}, mean ${mean(ct).toFixed(4)}`);

  // Zero-shot answers: the argmax class of each image under both models.
  const argmaxes = (img: Float32Array, txt: Float32Array): number[] =>
    Array.from({ length: n }, (_, i) => {
      let best = 0;
      let bestV = -Infinity;
      for (let c = 0; c < classes.length; c++) {
        let v = 0;
        for (let j = 0; j < d; j++) v += img[i * d + j]! * txt[c * d + j]!;
        v /= Math.hypot(...txt.subarray(c * d, (c + 1) * d));
        if (v > bestV) [best, bestV] = [c, v];
      }
      return best;
    });
  const pa = argmaxes(a.data, ta.data);
  const pb = argmaxes(b.data, tb.data);
  const agree = pa.filter((p, i) => p === pb[i]).length;
  assert.ok(agree >= n - 2, `zero-shot answers agree on ${agree}/${n}`);
});

test('int8 graphs quantize every linear layer and keep no float MatMul on a weight', () => {
  const c = fromOpenClip({
    embed_dim: 16,
    quick_gelu: true,
    vision_cfg: { image_size: 16, layers: 2, width: 64, patch_size: 8 },
    text_cfg: { context_length: 8, vocab_size: 50, width: 64, heads: 1, layers: 2 },
  });
  for (const kind of ['image', 'text'] as const) {
    const g = new Graph();
    g.mode = 'infer';
    g.quantize = 'int8';
    if (kind === 'image') encodeImageGraph(g, g.input('pixels', ['N', 3, 16, 16]), c);
    else encodeTextGraph(g, g.input('input_ids', ['N', 8], 'int64'), c);
    const q = g.nodes.filter((n) => n.op === 'DynamicQuantizeMatMul').length;
    // Per block: attention in-projection, out-projection, c_fc, c_proj; plus the patch embedding for images.
    assert.equal(q, 2 * 4 + (kind === 'image' ? 1 : 0), `${kind}: ${q} quantized GEMMs`);
    const params = new Set([...g.params.values()].map((p) => p.tensor));
    const floatOnWeight = g.nodes.filter((n) => n.op === 'MatMul' && n.inputs.some((t) => t?.producer?.op === 'Transpose' && params.has(t.producer.inputs[0]!)));
    assert.equal(floatOnWeight.length, 0, `${kind}: a float MatMul on a transposed weight remains`);
  }
});

test('a quantize option other than none or int8 is refused with a clear error', async () => {
  await assert.rejects(() => loadClip(DEFAULT_MODEL_DIR, { quantize: 'int4' as 'int8' }), /quantize must be 'none' or 'int8', got 'int4'/);
});
