// One mapping table between OpenAI/OpenCLIP state-dict names (ours) and Hugging Face CLIPModel names.
// A rule maps one OpenAI tensor to one or more HF tensors: the packed attention in_proj is HF's
// q/k/v projections stacked along dim 0, and the output projections are stored transposed.

export interface HfSource {
  /** HF tensor names; several are concatenated along dim 0. */
  names: string[];
  /** HF stores this matrix transposed (nn.Linear weight [out, in] vs OpenAI's [in, out]). */
  transpose: boolean;
}

const BLOCK: [RegExp, (m: RegExpMatchArray) => string[]][] = [
  [/^ln_1\.(weight|bias)$/, (m) => [`layer_norm1.${m[1]}`]],
  [/^ln_2\.(weight|bias)$/, (m) => [`layer_norm2.${m[1]}`]],
  [/^attn\.in_proj_weight$/, () => ['q', 'k', 'v'].map((x) => `self_attn.${x}_proj.weight`)],
  [/^attn\.in_proj_bias$/, () => ['q', 'k', 'v'].map((x) => `self_attn.${x}_proj.bias`)],
  [/^attn\.out_proj\.(weight|bias)$/, (m) => [`self_attn.out_proj.${m[1]}`]],
  [/^mlp\.c_fc\.(weight|bias)$/, (m) => [`mlp.fc1.${m[1]}`]],
  [/^mlp\.c_proj\.(weight|bias)$/, (m) => [`mlp.fc2.${m[1]}`]],
];

const TOP: [RegExp, (m: RegExpMatchArray) => string, boolean?][] = [
  [/^visual\.conv1\.weight$/, () => 'vision_model.embeddings.patch_embedding.weight'],
  [/^visual\.class_embedding$/, () => 'vision_model.embeddings.class_embedding'],
  [/^visual\.positional_embedding$/, () => 'vision_model.embeddings.position_embedding.weight'],
  [/^visual\.ln_pre\.(weight|bias)$/, (m) => `vision_model.pre_layrnorm.${m[1]}`], // sic: HF's spelling
  [/^visual\.ln_post\.(weight|bias)$/, (m) => `vision_model.post_layernorm.${m[1]}`],
  [/^visual\.proj$/, () => 'visual_projection.weight', true],
  [/^token_embedding\.weight$/, () => 'text_model.embeddings.token_embedding.weight'],
  [/^positional_embedding$/, () => 'text_model.embeddings.position_embedding.weight'],
  [/^ln_final\.(weight|bias)$/, (m) => `text_model.final_layer_norm.${m[1]}`],
  [/^text_projection$/, () => 'text_projection.weight', true],
  [/^logit_scale$/, () => 'logit_scale'],
  [/^logit_bias$/, () => 'logit_bias'],
];

/** Where an OpenAI-named tensor lives in a Hugging Face CLIPModel state dict. */
export function hfSourceOf(name: string): HfSource {
  const block = /^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$/.exec(name);
  if (block) {
    const prefix = `${block[1] ? 'vision_model' : 'text_model'}.encoder.layers.${block[2]}.`;
    for (const [re, f] of BLOCK) {
      const m = re.exec(block[3]!);
      if (m) return { names: f(m).map((x) => prefix + x), transpose: false };
    }
  }
  for (const [re, f, transpose] of TOP) {
    const m = re.exec(name);
    if (m) return { names: [f(m)], transpose: !!transpose };
  }
  throw new Error(`no Hugging Face name for parameter '${name}' (this architecture has no CLIPModel equivalent)`);
}

/** Which naming a checkpoint uses, from its tensor names. */
export function detectNaming(names: Iterable<string>): 'openai' | 'hf' {
  for (const n of names) {
    if (n.startsWith('vision_model.') || n.startsWith('text_model.')) return 'hf';
    if (n.startsWith('visual.')) return 'openai';
  }
  throw new Error('unrecognised checkpoint: neither OpenAI/OpenCLIP (visual.*) nor Hugging Face CLIPModel (vision_model.*) names');
}

/** Rows ↔ columns of a 2-D matrix [r, c]. */
export function transpose2d(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = data[i * cols + j]!;
  return out;
}
