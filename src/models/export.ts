// Export of a CLIP model as two standalone ONNX models (the towers are used apart: images are
// embedded offline, texts at query time) plus a JSON file with everything a consumer needs to feed
// them: input names and shapes, CLIP's preprocessing constants, the context length, the logit scale.
// The graphs are the inference graphs ClipModel itself runs (`mode = 'infer'`, weights as
// initializers), so the exported files give the features encodeImage / encodeText give.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLIP_MEAN, CLIP_STD } from '../data/transforms.js';
import { type ExternalDataMode, type WrittenOnnx, opsetProblems, writeOnnx } from '../graph/export.js';
import { type Dim, Graph, type Tensor } from '../graph/graph.js';
import { Rng } from '../nn/init.js';
import { Session } from '../runtime/session.js';
import { encodeImageGraph, encodeTextGraph } from './clip.js';
import type { ClipModel } from './clip-model.js';
import { type OpenClipConfig, toOpenClip } from './config.js';

export const METADATA_FILE = 'clipkit-export.json';

export interface ExportOptions {
  /** 'dynamic' (default): a symbolic batch dimension 'N'; a number fixes it. */
  batch?: 'dynamic' | number;
  /** Token sequence length L of the text model; default: the model's context length. */
  textLength?: number;
  externalData?: ExternalDataMode;
  /** Passed to writeOnnx (tests shrink it to exercise the switch to external data). */
  limit?: number;
  /**
   * 'int8': linear layers as com.microsoft DynamicQuantizeMatMul (see ClipModelOptions.quantize).
   * The files keep fp32 weights; ONNX Runtime quantizes them once when it loads the model.
   */
  quantize?: 'none' | 'int8';
}

interface IoSpec {
  name: string;
  dtype: 'float32' | 'int64';
  shape: Dim[];
}

export interface ExportedModel extends Omit<WrittenOnnx, 'path' | 'data'> {
  file: string;
  externalData: { file: string; bytes: number; tensors: number } | null;
  inputs: IoSpec[];
  outputs: IoSpec[];
}

export interface ExportMetadata {
  format: 'clipkit-export';
  formatVersion: 1;
  embedDim: number;
  /** The outputs are the projected features, not L2-normalised (as OpenAI's encode_image/encode_text). */
  normalized: false;
  /** exp(logit_scale): logits = logitScale · cos(image, text) (+ logitBias for SigLIP). */
  logitScale: number;
  logitBias?: number;
  image: { size: number; mean: readonly number[]; std: readonly number[]; layout: string };
  text: { contextLength: number; length: number; vocabSize: number; pooling: string };
  models: { vision: ExportedModel; text: ExportedModel };
  config: OpenClipConfig;
  /** Present when the towers run int8 linear layers. */
  quantize?: 'int8';
}

/** Writes `<dir>/vision.onnx`, `<dir>/text.onnx` (+ `.data` side files if needed) and the metadata. */
export async function exportClip(model: ClipModel, dir: string, o: ExportOptions = {}): Promise<ExportMetadata> {
  const c = model.config;
  const batch = o.batch ?? 'dynamic';
  const n: Dim = batch === 'dynamic' ? 'N' : batch;
  if (batch !== 'dynamic' && !(Number.isInteger(batch) && batch >= 1)) throw new Error(`export: batch must be 'dynamic' or a positive integer, got ${String(batch)}`);
  const len = o.textLength ?? c.text.contextLength;
  if (!Number.isInteger(len) || len < 1 || len > c.text.contextLength) {
    throw new Error(`export: text length must be an integer in [1, ${c.text.contextLength}] (the model's context length), got ${len}`);
  }
  mkdirSync(dir, { recursive: true });
  const s = c.vision.imageSize;

  const tower = async (file: string, input: IoSpec, output: string, build: (g: Graph, x: Tensor) => Tensor): Promise<ExportedModel> => {
    const g = new Graph(file.replace(/\.onnx$/, ''));
    g.mode = 'infer'; // fused contrib kernels (Attention, Gelu, QuickGelu): ORT's CPU and wasm builds run them
    g.quantize = o.quantize ?? 'none';
    const out = g.rename(build(g, g.input(input.name, input.shape, input.dtype)), output);
    const w = await writeOnnx(join(dir, file), g, { outputs: [out], paramValues: model.params, externalData: o.externalData, limit: o.limit, docString: `clipkit CLIP ${file}` });
    return {
      file,
      bytes: w.bytes,
      externalData: w.data ? { file: w.data.location, bytes: w.data.bytes, tensors: w.data.tensors } : null,
      inputs: [input],
      outputs: [{ name: output, dtype: 'float32', shape: [n, c.embedDim] }],
      opsets: w.opsets,
      ops: w.ops,
    };
  };
  const vision = await tower('vision.onnx', { name: 'pixels', dtype: 'float32', shape: [n, 3, s, s] }, 'image_embeds', (g, x) => encodeImageGraph(g, x, c));
  const text = await tower('text.onnx', { name: 'input_ids', dtype: 'int64', shape: [n, len] }, 'text_embeds', (g, x) => encodeTextGraph(g, x, c));

  const bias = model.params.get('logit_bias');
  const meta: ExportMetadata = {
    format: 'clipkit-export',
    formatVersion: 1,
    embedDim: c.embedDim,
    normalized: false,
    logitScale: Math.exp(model.logitScale),
    ...(bias ? { logitBias: bias[0]! } : {}),
    ...(o.quantize === 'int8' ? { quantize: 'int8' as const } : {}),
    image: {
      size: s,
      mean: CLIP_MEAN,
      std: CLIP_STD,
      layout: 'NCHW RGB in [0, 1] after a bicubic resize of the short side and a centre crop, then (x - mean) / std per channel',
    },
    text: {
      contextLength: c.text.contextLength,
      length: len,
      vocabSize: c.text.vocabSize,
      pooling: 'the features at the position of the largest id in each row (the end-of-text token), as OpenAI’s text.argmax(-1)',
    },
    models: { vision, text },
    config: toOpenClip(c),
  };
  writeFileSync(join(dir, METADATA_FILE), `${JSON.stringify(meta, null, 2)}\n`);
  return meta;
}

export interface ExportCheck {
  problems: string[];
  /** Largest |exported − in-process| feature difference on a random batch, per tower. */
  vision: number;
  text: number;
}

/**
 * Checks an export: its ops against the declared opsets, then loads the written files by path in
 * ONNX Runtime (external data included) and compares their features with the model's encoders.
 */
export async function checkExport(model: ClipModel, dir: string, meta: ExportMetadata, seed = 0): Promise<ExportCheck> {
  const problems = [...opsetProblems(meta.models.vision), ...opsetProblems(meta.models.text)];
  const rng = new Rng(seed);
  const n = typeof meta.models.vision.inputs[0]!.shape[0] === 'number' ? (meta.models.vision.inputs[0]!.shape[0] as number) : 2;
  const s = meta.image.size;
  const pixels = { data: Float32Array.from({ length: n * 3 * s * s }, () => rng.normal()), shape: [n, 3, s, s] };
  const L = meta.text.length;
  const V = meta.text.vocabSize;
  const ids = new BigInt64Array(n * L);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < L; j++) ids[i * L + j] = BigInt(rng.int(V - 1));
    // The end-of-text token (the largest id). int8 towers quantize activations with one scale per
    // tensor, so trimming the batch after its last end token (which encodeText does and a plain ONNX
    // run does not) changes their numerics a little: there, row 0 ends at the last position.
    const end = rng.int(L);
    ids[i * L + (meta.quantize === 'int8' && i === 0 ? L - 1 : end)] = BigInt(V - 1);
  }
  const tokens = { data: ids, shape: [n, L] };

  const run = async (file: string, input: string, output: string, x: { data: Float32Array | BigInt64Array; shape: number[] }): Promise<Float32Array> => {
    const session = await Session.create(join(dir, file), { cacheKey: false });
    try {
      return (await session.run({ [input]: x }))[output]!.data as Float32Array;
    } finally {
      await session.release();
    }
  };
  const vision = maxAbsDiff(await run('vision.onnx', 'pixels', 'image_embeds', pixels), (await model.encodeImage(pixels)).data);
  const text = maxAbsDiff(await run('text.onnx', 'input_ids', 'text_embeds', tokens), (await model.encodeText(tokens)).data);
  return { problems, vision, text };
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}
