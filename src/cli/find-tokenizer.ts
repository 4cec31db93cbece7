// The tokenizer that goes with a model: --tokenizer when given, else a vocabulary file in the model's
// directory (or next to a .safetensors file). Shared by every command that embeds text.
import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { ClipConfig } from '../models/clip.js';
import { type ClipTokenizer, loadTokenizer, OPENAI_VOCAB_FILE } from '../tokenizer/index.js';
import { UsageError } from './args.js';

/** The directory a model's side files (tokenizer, config) live in. */
export function modelDirOf(modelPath: string): string {
  return statSync(modelPath).isDirectory() ? modelPath : dirname(modelPath);
}

/**
 * Loads the tokenizer for `modelPath` and checks it against the model's vocabulary size: a larger
 * tokenizer would produce ids the model cannot embed (an error); a smaller one is legal but suspect.
 */
export async function findTokenizer(cmd: string, modelPath: string, given: string | undefined, model: { config: ClipConfig }): Promise<ClipTokenizer> {
  let tok: ClipTokenizer;
  if (given !== undefined) tok = await loadTokenizer(given);
  else {
    const dir = modelDirOf(modelPath);
    const candidates = [OPENAI_VOCAB_FILE, 'tokenizer.json', 'vocab.json'];
    if (!candidates.some((f) => existsSync(join(dir, f)))) {
      throw new UsageError(`${cmd}: no tokenizer next to the model in '${dir}' (looked for ${OPENAI_VOCAB_FILE}, tokenizer.json, vocab.json + merges.txt); pass --tokenizer <file or directory>`);
    }
    tok = await loadTokenizer(dir);
  }
  const v = model.config.text.vocabSize;
  if (tok.vocabSize > v) throw new Error(`${cmd}: the tokenizer has ${tok.vocabSize} tokens but the model's vocabulary has ${v}: wrong --tokenizer?`);
  if (tok.vocabSize < v) console.error(`${cmd}: warning: the tokenizer has ${tok.vocabSize} tokens, the model ${v}`);
  return tok;
}
