// loadClip: a .safetensors file, or a directory in OpenCLIP's hub layout (open_clip_config.json +
// open_clip_model.safetensors) or Hugging Face's (config.json + model.safetensors). Tensors are read
// one at a time (never the whole file at once) and checked against the architecture's shapes.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { detectNaming, hfSourceOf, transpose2d } from '../checkpoint/naming.js';
import { SafetensorsFile } from '../checkpoint/safetensors.js';
import type { ClipConfig } from './clip.js';
import { ClipModel, type ClipModelOptions } from './clip-model.js';
import { fromHfConfig, fromOpenClip, fromShapes } from './config.js';

export interface LoadClipOptions extends ClipModelOptions {
  /** An OpenCLIP model config; wins over whatever the files say. */
  config?: unknown;
}

/** Tensors that checkpoints carry but that are not parameters (recomputed buffers, JIT leftovers). */
const IGNORED = /(^|\.)(position_ids|attn_mask|input_resolution|context_length|vocab_size)$/;

export async function loadClip(path: string, o: LoadClipOptions = {}): Promise<ClipModel> {
  if (!existsSync(path)) throw new Error(`loadClip: '${path}' does not exist`);
  let file = path;
  let fileConfig: (() => ClipConfig) | undefined;
  if (statSync(path).isDirectory()) {
    if (existsSync(join(path, 'open_clip_model.safetensors'))) {
      file = join(path, 'open_clip_model.safetensors');
      const cfgPath = join(path, 'open_clip_config.json');
      if (existsSync(cfgPath)) fileConfig = () => fromOpenClip(modelCfg(readJson(cfgPath)));
    } else if (existsSync(join(path, 'model.safetensors'))) {
      file = join(path, 'model.safetensors');
      const cfgPath = join(path, 'config.json');
      if (existsSync(cfgPath)) fileConfig = () => fromHfConfig(readJson(cfgPath) as Record<string, unknown>);
    } else {
      throw new Error(`loadClip: '${path}' holds neither open_clip_model.safetensors (+ open_clip_config.json) nor model.safetensors (+ config.json)`);
    }
  } else if (!path.endsWith('.safetensors')) {
    throw new Error(`loadClip: '${path}' is not a .safetensors file or a model directory`);
  }

  const st = await SafetensorsFile.open(file);
  try {
    const names = [...st.tensors.keys()].map((n) => n.replace(/^module\./, ''));
    const naming = detectNaming(names);
    const raw = new Map<string, string>([...st.tensors.keys()].map((n) => [n.replace(/^module\./, ''), n]));
    const meta = st.metadata['clipkit.config'];
    const config: ClipConfig =
      o.config !== undefined
        ? fromOpenClip(modelCfg(o.config))
        : meta // our own files carry the exact architecture (pooling, position embedding, …)
          ? fromOpenClip(JSON.parse(meta))
          : fileConfig
            ? fileConfig()
            : fromShapes(openaiShapes(st, raw, naming));

    const params = new Map<string, Float32Array>();
    const used = new Set<string>();
    for (const [name, shape] of ClipModel.paramShapes(config)) {
      const want = shape.reduce((a, b) => a * b, 1);
      const read = async (n: string): Promise<Float32Array> => {
        const key = raw.get(n);
        if (!key) throw new Error(`loadClip: ${file} lacks '${n}' (needed for parameter '${name}' [${shape}])`);
        used.add(n);
        return st.readFloat32(key);
      };
      let v: Float32Array;
      if (naming === 'openai') v = await read(name);
      else {
        const src = hfSourceOf(name);
        const parts = await Promise.all(src.names.map(read));
        v = parts.length === 1 ? parts[0]! : concat(parts);
        if (src.transpose) v = transpose2d(v, shape[1]!, shape[0]!);
      }
      if (v.length !== want) {
        throw new Error(`loadClip: '${name}' has ${v.length} values in ${file}, but the architecture needs [${shape}] = ${want} (is the config right?)`);
      }
      params.set(name, v);
    }
    const extra = [...raw.keys()].filter((n) => !used.has(n) && !IGNORED.test(n));
    if (extra.length) throw new Error(`loadClip: ${file} has tensors this architecture does not use: ${extra.slice(0, 8).join(', ')}${extra.length > 8 ? ', …' : ''}`);
    return new ClipModel(config, params, o);
  } finally {
    await st.close();
  }
}

function readJson(p: string): unknown {
  try {
    return JSON.parse(readFileSync(p, 'utf8'));
  } catch (e) {
    throw new Error(`loadClip: cannot read ${p}: ${(e as Error).message}`);
  }
}

/** open_clip_config.json wraps the model config in {model_cfg, preprocess_cfg}. */
function modelCfg(c: unknown): unknown {
  return c && typeof c === 'object' && 'model_cfg' in c ? (c as { model_cfg: unknown }).model_cfg : c;
}

function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Tensor shapes under OpenAI names (HF shapes mapped back) for architecture inference. */
function openaiShapes(st: SafetensorsFile, raw: Map<string, string>, naming: 'openai' | 'hf'): Map<string, readonly number[]> {
  const shapes = new Map<string, readonly number[]>();
  if (naming === 'openai') {
    for (const [n, key] of raw) shapes.set(n, st.tensors.get(key)!.shape);
    return shapes;
  }
  // Walk the OpenAI names an HF checkpoint can hold and translate each shape.
  const hfShape = (n: string) => (raw.has(n) ? st.tensors.get(raw.get(n)!)!.shape : undefined);
  const candidates = ['visual.conv1.weight', 'visual.class_embedding', 'visual.positional_embedding', 'visual.ln_pre.weight', 'text_projection', 'ln_final.weight', 'positional_embedding', 'token_embedding.weight', 'logit_bias'];
  for (const prefix of ['visual.transformer.resblocks.', 'transformer.resblocks.']) {
    for (let i = 0; hfShape(hfSourceOf(`${prefix}${i}.ln_1.weight`).names[0]!); i++) {
      candidates.push(`${prefix}${i}.ln_1.weight`, `${prefix}${i}.mlp.c_fc.weight`);
    }
  }
  for (const n of candidates) {
    const src = hfSourceOf(n);
    const s = hfShape(src.names[0]!);
    if (!s) continue;
    shapes.set(n, src.transpose ? [s[1]!, s[0]!] : s);
  }
  return shapes;
}
