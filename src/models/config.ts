// Architecture configs: OpenCLIP's JSON form (the presets in configs/ are kept in it), Hugging Face's
// CLIPConfig, and reading the architecture back from a state dict's shapes (OpenAI's build_model).
import { readdirSync, readFileSync } from 'node:fs';
import type { Activation } from '../nn/layers.js';
import { type ClipConfig, validateClip } from './clip.js';
import { vitDefaults } from './vit.js';

/** OpenCLIP's model config (model_configs/*.json), with the vision/text keys we support. */
export interface OpenClipConfig {
  embed_dim: number;
  quick_gelu?: boolean;
  init_logit_bias?: number;
  vision_cfg: {
    image_size: number;
    layers: number;
    width: number;
    patch_size: number;
    head_width?: number;
    mlp_ratio?: number;
    pool_type?: 'tok' | 'avg';
    attentional_pool?: boolean;
    pos_embed_type?: 'learnable' | 'sin_cos_2d';
    no_ln_pre?: boolean;
    /** clipkit's extension: 3×3 convolutions (output channels) before the patch embedding. */
    conv_stem?: number[];
    /** OpenCLIP's patch dropout (training only). */
    patch_dropout?: number;
  };
  text_cfg: { context_length?: number; vocab_size?: number; width?: number; heads?: number; layers?: number; mlp_ratio?: number };
}

const VISION_KEYS = ['image_size', 'layers', 'width', 'patch_size', 'head_width', 'mlp_ratio', 'pool_type', 'attentional_pool', 'pos_embed_type', 'no_ln_pre', 'conv_stem', 'patch_dropout'];
const TEXT_KEYS = ['context_length', 'vocab_size', 'width', 'heads', 'layers', 'mlp_ratio'];
const TOP_KEYS = ['embed_dim', 'quick_gelu', 'init_logit_bias', 'vision_cfg', 'text_cfg'];
/** OpenCLIP keys that select an architecture we do not implement: refuse rather than load wrongly. */
const UNSUPPORTED = ['timm_model_name', 'hf_model_name', 'layers_per_stage', 'custom_text', 'no_causal_mask', 'proj_type', 'pool_type:argmax'];

function checkKeys(where: string, obj: Record<string, unknown>, allowed: string[]): void {
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw new Error(`${where} must be an object`);
  for (const k of Object.keys(obj)) {
    if (UNSUPPORTED.includes(k)) throw new Error(`${where}.${k}: this architecture is not supported by clipkit`);
    if (!allowed.includes(k)) throw new Error(`${where}: unknown key '${k}' (known: ${allowed.join(', ')})`);
  }
}

function num(where: string, v: unknown, dflt?: number): number {
  if (v === undefined && dflt !== undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`${where} must be a number, got ${JSON.stringify(v)}`);
  return v;
}

export function fromOpenClip(raw: unknown): ClipConfig {
  const c = raw as OpenClipConfig & Record<string, unknown>;
  checkKeys('model config', c, TOP_KEYS);
  checkKeys('model config.vision_cfg', c.vision_cfg as never, VISION_KEYS);
  checkKeys('model config.text_cfg', (c.text_cfg ?? {}) as never, TEXT_KEYS);
  const v = c.vision_cfg;
  const t = c.text_cfg ?? {};
  const act: Activation = c.quick_gelu ? 'quick_gelu' : 'gelu';
  const embedDim = num('embed_dim', c.embed_dim);
  const width = num('vision_cfg.width', v.width);
  const cfg: ClipConfig = {
    embedDim,
    vision: vitDefaults({
      imageSize: num('vision_cfg.image_size', v.image_size),
      patchSize: num('vision_cfg.patch_size', v.patch_size),
      width,
      layers: num('vision_cfg.layers', v.layers),
      heads: width / num('vision_cfg.head_width', v.head_width, 64),
      mlpRatio: num('vision_cfg.mlp_ratio', v.mlp_ratio, 4),
      act,
      pool: v.attentional_pool ? 'attn' : v.pool_type === 'avg' ? 'mean' : 'cls',
      posEmbed: v.pos_embed_type === 'sin_cos_2d' ? 'sincos' : 'learned',
      lnPre: !v.no_ln_pre,
      outputDim: embedDim,
      ...(v.conv_stem?.length ? { convStem: v.conv_stem } : {}),
      ...(v.patch_dropout ? { patchDropout: num('vision_cfg.patch_dropout', v.patch_dropout) } : {}),
    }),
    text: {
      contextLength: num('text_cfg.context_length', t.context_length, 77),
      vocabSize: num('text_cfg.vocab_size', t.vocab_size, 49408),
      width: num('text_cfg.width', t.width, 512),
      heads: num('text_cfg.heads', t.heads, 8),
      layers: num('text_cfg.layers', t.layers, 12),
      mlpRatio: num('text_cfg.mlp_ratio', t.mlp_ratio, 4),
      act,
    },
  };
  if (c.init_logit_bias !== undefined) cfg.initLogitBias = num('init_logit_bias', c.init_logit_bias);
  validateClip(cfg);
  return cfg;
}

export function toOpenClip(c: ClipConfig): OpenClipConfig {
  const v = c.vision;
  const out: OpenClipConfig = {
    embed_dim: c.embedDim,
    quick_gelu: v.act === 'quick_gelu',
    vision_cfg: {
      image_size: v.imageSize,
      layers: v.layers,
      width: v.width,
      patch_size: v.patchSize,
      head_width: v.width / v.heads,
      mlp_ratio: v.mlpRatio,
      ...(v.pool === 'mean' ? { pool_type: 'avg' as const } : {}),
      ...(v.pool === 'attn' ? { attentional_pool: true } : {}),
      ...(v.posEmbed === 'sincos' ? { pos_embed_type: 'sin_cos_2d' as const } : {}),
      ...(v.lnPre ? {} : { no_ln_pre: true }),
      ...(v.convStem?.length ? { conv_stem: [...v.convStem] } : {}),
      ...(v.patchDropout ? { patch_dropout: v.patchDropout } : {}),
    },
    text_cfg: {
      context_length: c.text.contextLength,
      vocab_size: c.text.vocabSize,
      width: c.text.width,
      heads: c.text.heads,
      layers: c.text.layers,
      mlp_ratio: c.text.mlpRatio,
    },
  };
  if (c.initLogitBias !== undefined) out.init_logit_bias = c.initLogitBias;
  return out;
}

/** Hugging Face's CLIPConfig (config.json of a CLIPModel). */
export function fromHfConfig(raw: Record<string, any>): ClipConfig {
  const v = raw.vision_config ?? {};
  const t = raw.text_config ?? {};
  const act = (a: unknown): Activation => {
    if (a === undefined || a === 'quick_gelu') return 'quick_gelu';
    if (a === 'gelu') return 'gelu';
    if (a === 'gelu_new' || a === 'gelu_pytorch_tanh') return 'gelu_tanh';
    throw new Error(`config.json: unsupported hidden_act '${String(a)}'`);
  };
  const embedDim = num('projection_dim', raw.projection_dim, 512);
  const vw = num('vision_config.hidden_size', v.hidden_size, 768);
  const tw = num('text_config.hidden_size', t.hidden_size, 512);
  const cfg: ClipConfig = {
    embedDim,
    vision: vitDefaults({
      imageSize: num('vision_config.image_size', v.image_size, 224),
      patchSize: num('vision_config.patch_size', v.patch_size, 32),
      width: vw,
      layers: num('vision_config.num_hidden_layers', v.num_hidden_layers, 12),
      heads: num('vision_config.num_attention_heads', v.num_attention_heads, 12),
      mlpRatio: num('vision_config.intermediate_size', v.intermediate_size, 3072) / vw,
      act: act(v.hidden_act),
      outputDim: embedDim,
    }),
    text: {
      contextLength: num('text_config.max_position_embeddings', t.max_position_embeddings, 77),
      vocabSize: num('text_config.vocab_size', t.vocab_size, 49408),
      width: tw,
      heads: num('text_config.num_attention_heads', t.num_attention_heads, 8),
      layers: num('text_config.num_hidden_layers', t.num_hidden_layers, 12),
      mlpRatio: num('text_config.intermediate_size', t.intermediate_size, 2048) / tw,
      act: act(t.hidden_act),
    },
  };
  validateClip(cfg);
  return cfg;
}

export function toHfConfig(c: ClipConfig): Record<string, unknown> {
  const hfAct = (a: Activation): string => ({ quick_gelu: 'quick_gelu', gelu: 'gelu', gelu_tanh: 'gelu_pytorch_tanh', relu: 'relu' })[a];
  return {
    architectures: ['CLIPModel'],
    model_type: 'clip',
    projection_dim: c.embedDim,
    logit_scale_init_value: 2.6592,
    vision_config: {
      hidden_size: c.vision.width,
      intermediate_size: Math.round(c.vision.width * c.vision.mlpRatio),
      num_attention_heads: c.vision.heads,
      num_hidden_layers: c.vision.layers,
      image_size: c.vision.imageSize,
      patch_size: c.vision.patchSize,
      hidden_act: hfAct(c.vision.act),
      layer_norm_eps: 1e-5,
    },
    text_config: {
      hidden_size: c.text.width,
      intermediate_size: Math.round(c.text.width * c.text.mlpRatio),
      num_attention_heads: c.text.heads,
      num_hidden_layers: c.text.layers,
      max_position_embeddings: c.text.contextLength,
      vocab_size: c.text.vocabSize,
      hidden_act: hfAct(c.text.act),
      layer_norm_eps: 1e-5,
    },
  };
}

/**
 * The architecture from OpenAI-named tensor shapes, as model.py's build_model reads it: widths from
 * the weights, layer counts from the block names, heads = width / 64, QuickGELU.
 */
export function fromShapes(shapes: Map<string, readonly number[]>): ClipConfig {
  const need = (k: string): readonly number[] => {
    const s = shapes.get(k);
    if (!s) throw new Error(`cannot infer the architecture: the checkpoint has no '${k}'`);
    return s;
  };
  const count = (prefix: string): number => {
    const re = new RegExp(`^${prefix.replace(/\./g, '\\.')}(\\d+)\\.`);
    const ids = new Set<number>();
    for (const k of shapes.keys()) {
      const m = re.exec(k);
      if (m) ids.add(Number(m[1]));
    }
    return ids.size;
  };
  const [vw, , , patch] = need('visual.conv1.weight') as number[];
  const hasCls = shapes.has('visual.class_embedding');
  const posRows = need('visual.positional_embedding')[0]! - (hasCls ? 1 : 0);
  const grid = Math.round(Math.sqrt(posRows));
  if (grid * grid !== posRows) throw new Error(`visual.positional_embedding has ${posRows} patch rows, not a square grid`);
  const embedDim = need('text_projection')[1]!;
  const tw = need('ln_final.weight')[0]!;
  const cfg: ClipConfig = {
    embedDim,
    vision: vitDefaults({
      imageSize: grid * patch!,
      patchSize: patch!,
      width: vw!,
      layers: count('visual.transformer.resblocks.'),
      heads: Math.max(1, vw! / 64),
      mlpRatio: need('visual.transformer.resblocks.0.mlp.c_fc.weight')[0]! / vw!,
      act: 'quick_gelu',
      pool: hasCls ? 'cls' : shapes.has('visual.attn_pool.query') ? 'attn' : 'mean',
      lnPre: shapes.has('visual.ln_pre.weight'),
      outputDim: embedDim,
      ...(shapes.has('visual.stem.0.weight') ? { convStem: Array.from({ length: count('visual.stem.') }, (_, i) => need(`visual.stem.${i}.weight`)[0]!) } : {}),
    }),
    text: {
      contextLength: need('positional_embedding')[0]!,
      vocabSize: need('token_embedding.weight')[0]!,
      width: tw,
      heads: Math.max(1, tw / 64),
      layers: count('transformer.resblocks.'),
      mlpRatio: need('transformer.resblocks.0.mlp.c_fc.weight')[0]! / tw,
      act: 'quick_gelu',
    },
  };
  if (shapes.has('logit_bias')) cfg.initLogitBias = -10;
  validateClip(cfg);
  return cfg;
}

const PRESET_DIR = new URL('./configs/', import.meta.url);

/** Names of the architecture presets (src/models/configs/*.json). */
export function listPresets(): string[] {
  return readdirSync(PRESET_DIR)
    .filter((f) => f.endsWith('.json'))
    .map((f) => f.slice(0, -5))
    .sort();
}

export function preset(name: string): ClipConfig {
  if (!listPresets().includes(name)) throw new Error(`unknown model preset '${name}' (known: ${listPresets().join(', ')})`);
  return fromOpenClip(JSON.parse(readFileSync(new URL(`${name}.json`, PRESET_DIR), 'utf8')));
}
