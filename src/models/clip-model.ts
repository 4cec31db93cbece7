// A CLIP model with weights: encodeImage / encodeText on ONNX Runtime, load and save in OpenAI or
// Hugging Face naming. The towers are compiled separately (the chapter's loose coupling: images
// and texts are embedded independently, offline, and compared only at query time).
import { mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Graph } from '../graph/graph.js';
import { hfSourceOf, transpose2d } from '../checkpoint/naming.js';
import { writeSafetensors } from '../checkpoint/safetensors.js';
import { type ParamValues, initParams } from '../nn/init.js';
import { type Compiled, compile } from '../runtime/compile.js';
import { type ClipConfig, encodeImageGraph, encodeTextGraph, fullClipGraph, validateClip } from './clip.js';
import { toHfConfig, toOpenClip } from './config.js';
import { type ExportMetadata, type ExportOptions, exportClip } from './export.js';

export interface Features {
  data: Float32Array;
  shape: [number, number];
}

export interface ClipModelOptions {
  threads?: number;
  /** Largest batch run through one session call (bounds activation memory). */
  maxBatch?: number;
  /**
   * 'int8': run the towers' linear layers as dynamically quantized int8 GEMMs (weights per output
   * channel, activations per tensor) — faster on CPUs, features close to but not equal to fp32's.
   * The activation scale is taken over the whole batch, so an item's features also vary slightly
   * with the batch it runs in (as with any ONNX Runtime dynamic quantization).
   */
  quantize?: 'none' | 'int8';
}

export class ClipModel {
  /** Bumped whenever the weights change (training), so compiled towers are rebuilt. */
  private version = 0;
  private compiled = new Map<string, { version: number; c: Promise<Compiled> }>();

  constructor(
    readonly config: ClipConfig,
    readonly params: ParamValues,
    readonly options: ClipModelOptions = {},
  ) {
    const q = options.quantize ?? 'none';
    if (q !== 'none' && q !== 'int8') throw new Error(`CLIP model: quantize must be 'none' or 'int8', got '${String(q)}'`);
    validateClip(config);
    const shapes = ClipModel.paramShapes(config);
    for (const [name, shape] of shapes) {
      const v = params.get(name);
      const n = shape.reduce((a, b) => a * b, 1);
      if (!v) throw new Error(`CLIP model: missing parameter '${name}' [${shape}]`);
      if (v.length !== n) throw new Error(`CLIP model: parameter '${name}' has ${v.length} values, expected [${shape}] = ${n}`);
    }
  }

  /** A freshly initialised model (OpenAI's initialisation), seeded. */
  static random(config: ClipConfig, seed = 0, options?: ClipModelOptions): ClipModel {
    return new ClipModel(config, initParams(fullClipGraph(config).g, seed), options);
  }

  /** Every parameter name and shape of an architecture. */
  static paramShapes(config: ClipConfig): Map<string, readonly number[]> {
    return new Map([...fullClipGraph(config).g.params.values()].map((p) => [p.name, p.shape]));
  }

  get logitScale(): number {
    return this.params.get('logit_scale')![0]!;
  }

  /** Call after changing weights in place. */
  markUpdated(): void {
    this.version++;
  }

  /** images [N, 3, S, S] (CLIP-normalised) → features [N, embedDim], projected, not normalised. */
  async encodeImage(images: { data: Float32Array; shape: readonly number[] }): Promise<Features> {
    const s = this.config.vision.imageSize;
    const { data, shape } = images;
    if (!(data instanceof Float32Array)) throw new Error('encodeImage: data must be a Float32Array');
    if (shape.length !== 4 || shape[1] !== 3 || shape[2] !== s || shape[3] !== s || !(shape[0]! >= 1)) {
      throw new Error(`encodeImage: expected shape [N, 3, ${s}, ${s}], got [${shape}]`);
    }
    if (data.length !== shape.reduce((a, b) => a * b, 1)) throw new Error(`encodeImage: ${data.length} values for shape [${shape}]`);
    const per = 3 * s * s;
    return this.batched('image', shape[0]!, this.options.maxBatch ?? 64, (lo, hi) => ({
      pixels: { data: data.subarray(lo * per, hi * per), shape: [hi - lo, 3, s, s] },
    }));
  }

  /** token ids [N, L] (L ≤ context length) → features [N, embedDim], projected, not normalised. */
  async encodeText(tokens: { data: Int32Array | BigInt64Array; shape: readonly number[] }): Promise<Features> {
    const { data, shape } = tokens;
    const t = this.config.text;
    if (!(data instanceof Int32Array) && !(data instanceof BigInt64Array)) throw new Error('encodeText: data must be an Int32Array or a BigInt64Array');
    if (shape.length !== 2 || !(shape[0]! >= 1) || !(shape[1]! >= 1) || shape[1]! > t.contextLength) {
      throw new Error(`encodeText: expected shape [N, L] with 1 ≤ L ≤ ${t.contextLength}, got [${shape}]`);
    }
    if (data.length !== shape[0]! * shape[1]!) throw new Error(`encodeText: ${data.length} values for shape [${shape}]`);
    const ids = data instanceof BigInt64Array ? data : BigInt64Array.from(data, (v) => BigInt(v));
    for (let i = 0; i < ids.length; i++) {
      if (ids[i]! < 0n || ids[i]! >= BigInt(t.vocabSize)) {
        throw new Error(`encodeText: token id ${ids[i]} at [${Math.floor(i / shape[1]!)}, ${i % shape[1]!}] is outside the vocabulary [0, ${t.vocabSize})`);
      }
    }
    // The tower is causal and reads the features at the end token (the largest id), so positions
    // after the last end token in the batch cannot change the result: trim them.
    let last = 0;
    for (let r = 0; r < shape[0]!; r++) {
      let best = 0;
      for (let c = 1; c < shape[1]!; c++) if (ids[r * shape[1]! + c]! > ids[r * shape[1]! + best]!) best = c;
      last = Math.max(last, best);
    }
    const len = last + 1;
    const trimmed = len === shape[1] ? ids : trimColumns(ids, shape[0]!, shape[1]!, len);
    return this.batched(`text:${len}`, shape[0]!, this.options.maxBatch ?? 256, (lo, hi) => ({
      input_ids: { data: trimmed.subarray(lo * len, hi * len), shape: [hi - lo, len] },
    }));
  }

  private async batched(kind: string, n: number, maxBatch: number, feed: (lo: number, hi: number) => Record<string, { data: Float32Array | BigInt64Array; shape: number[] }>): Promise<Features> {
    const c = await this.tower(kind);
    const out = new Float32Array(n * this.config.embedDim);
    for (let lo = 0; lo < n; lo += maxBatch) {
      const hi = Math.min(n, lo + maxBatch);
      const res = await c.run(feed(lo, hi), {
        features: { data: out.subarray(lo * this.config.embedDim, hi * this.config.embedDim), shape: [hi - lo, this.config.embedDim] },
      });
      void res;
    }
    return { data: out, shape: [n, this.config.embedDim] };
  }

  /** The compiled image tower ('image') or text tower for length L ('text:L'), weights baked in. */
  private tower(kind: string): Promise<Compiled> {
    const hit = this.compiled.get(kind);
    if (hit && hit.version === this.version) return hit.c;
    const g = new Graph(kind === 'image' ? 'clip-image' : 'clip-text');
    g.mode = 'infer';
    g.quantize = this.options.quantize ?? 'none';
    const s = this.config.vision.imageSize;
    const out =
      kind === 'image'
        ? encodeImageGraph(g, g.input('pixels', ['N', 3, s, s]), this.config)
        : encodeTextGraph(g, g.input('input_ids', ['N', Number(kind.split(':')[1])], 'int64'), this.config);
    const c = compile(g, { features: out }, { paramValues: this.params, threads: this.options.threads, cacheKey: false });
    this.compiled.set(kind, { version: this.version, c });
    return c;
  }

  /**
   * Writes the towers as standalone ONNX models, `<dir>/vision.onnx` (pixels → image_embeds) and
   * `<dir>/text.onnx` (input_ids → text_embeds), with `<dir>/clipkit-export.json` describing them.
   */
  exportOnnx(dir: string, o?: ExportOptions): Promise<ExportMetadata> {
    return exportClip(this, dir, o);
  }

  /**
   * Saves the weights as safetensors in OpenAI/OpenCLIP names (`naming: 'openai'`, the default) or
   * Hugging Face CLIPModel names. A path ending in .safetensors is one file (the architecture goes in
   * its metadata); any other path is a directory in OpenCLIP's or Hugging Face's hub layout.
   */
  async save(path: string, o: { naming?: 'openai' | 'hf' } = {}): Promise<void> {
    const naming = o.naming ?? 'openai';
    if (naming !== 'openai' && naming !== 'hf') throw new Error(`save: naming must be 'openai' or 'hf', got '${String(naming)}'`);
    if (naming === 'hf' && this.config.vision.convStem?.length) throw new Error("save: Hugging Face's CLIPModel has no convolutional stem; save this model with naming 'openai'");
    const shapes = ClipModel.paramShapes(this.config);
    const tensors: { name: string; shape: number[]; data: Float32Array }[] = [];
    for (const [name, shape] of shapes) {
      const v = this.params.get(name)!;
      if (naming === 'openai') {
        tensors.push({ name, shape: [...shape], data: v });
        continue;
      }
      const src = hfSourceOf(name);
      if (src.transpose) tensors.push({ name: src.names[0]!, shape: [shape[1]!, shape[0]!], data: transpose2d(v, shape[0]!, shape[1]!) });
      else {
        const rows = shape[0]! / src.names.length;
        const per = v.length / src.names.length;
        src.names.forEach((n, i) => tensors.push({ name: n, shape: src.names.length > 1 ? [rows, ...shape.slice(1)] : [...shape], data: v.slice(i * per, (i + 1) * per) }));
      }
    }
    const openclip = toOpenClip(this.config);
    const meta = { format: 'pt', 'clipkit.naming': naming, 'clipkit.config': JSON.stringify(openclip) };
    if (path.endsWith('.safetensors')) return writeSafetensors(path, tensors, meta);
    if (existsAsFile(path)) throw new Error(`save: '${path}' is a file; give a .safetensors path or a directory`);
    mkdirSync(path, { recursive: true });
    if (naming === 'openai') {
      writeFileSync(join(path, 'open_clip_config.json'), JSON.stringify({ model_cfg: openclip, preprocess_cfg: {} }, null, 2));
      await writeSafetensors(join(path, 'open_clip_model.safetensors'), tensors, meta);
    } else {
      writeFileSync(join(path, 'config.json'), JSON.stringify(toHfConfig(this.config), null, 2));
      await writeSafetensors(join(path, 'model.safetensors'), tensors, meta);
    }
  }
}

function existsAsFile(p: string): boolean {
  try {
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

function trimColumns(ids: BigInt64Array, rows: number, cols: number, keep: number): BigInt64Array {
  const out = new BigInt64Array(rows * keep);
  for (let r = 0; r < rows; r++) out.set(ids.subarray(r * cols, r * cols + keep), r * keep);
  return out;
}
