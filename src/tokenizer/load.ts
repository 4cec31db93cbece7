// loadTokenizer: read a BPE vocabulary in any of the formats CLIP models ship:
//
//  - OpenAI's bpe_simple_vocab_16e6.txt.gz (gzip or plain): a header line,
//    then one merge per line; CLIP uses only the first 49152 - 256 - 2 merges,
//    so that with 512 byte symbols and two special tokens the vocab has 49408.
//  - Hugging Face's vocab.json (token -> id) + merges.txt ("#version" header).
//  - A Hugging Face tokenizer.json (model.vocab and model.merges).
//  - clipkit's own JSON, written by ClipTokenizer.save.
//
// A directory is searched for those files in that order.

import { existsSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { ClipTokenizer, type Merge, type SavedTokenizer } from './bpe.js';

export const OPENAI_VOCAB_FILE = 'bpe_simple_vocab_16e6.txt.gz';
const OPENAI_MERGE_COUNT = 49152 - 256 - 2;

function parseMergeLine(line: string, where: string): Merge {
  const parts = line.trim().split(/\s+/);
  if (parts.length !== 2) throw new Error(`${where}: expected "left right", got ${JSON.stringify(line)}`);
  return [parts[0]!, parts[1]!];
}

/** OpenAI's merges text: skip the header, keep the first 48894 merges. */
export function parseOpenAiMerges(text: string, where = 'merges'): Merge[] {
  const lines = text.split('\n').slice(1, OPENAI_MERGE_COUNT + 1);
  return lines.filter((l) => l.trim() !== '').map((l) => parseMergeLine(l, where));
}

/** Hugging Face merges.txt: every merge in the file, minus "#version" header. */
export function parseHfMerges(text: string, where = 'merges.txt'): Merge[] {
  return text
    .split('\n')
    .filter((l, i) => l.trim() !== '' && !(i === 0 && l.startsWith('#version')))
    .map((l) => parseMergeLine(l, where));
}

function vocabMap(obj: unknown, where: string): Map<string, number> {
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw new Error(`${where}: vocab must be an object`);
  const map = new Map<string, number>();
  for (const [token, id] of Object.entries(obj)) {
    if (!Number.isInteger(id) || (id as number) < 0) throw new Error(`${where}: bad id for ${JSON.stringify(token)}`);
    map.set(token, id as number);
  }
  return map;
}

/** A tokenizer from a parsed JSON file: clipkit's format or HF tokenizer.json. */
function fromJson(json: unknown, where: string): ClipTokenizer {
  const obj = json as Partial<SavedTokenizer> & { model?: { vocab?: unknown; merges?: unknown } };
  if (obj.format === 'clipkit-bpe') {
    if (!Array.isArray(obj.merges)) throw new Error(`${where}: "merges" must be an array`);
    const merges = obj.merges.map((m) => parseMergeLine(String(m), where));
    return new ClipTokenizer(merges, obj.vocab ? vocabMap(obj.vocab, where) : undefined);
  }
  if (obj.model && Array.isArray(obj.model.merges)) {
    // Newer tokenizers versions store merges as pairs, older as "a b" strings.
    const merges = obj.model.merges.map((m: unknown): Merge =>
      Array.isArray(m) ? [String(m[0]), String(m[1])] : parseMergeLine(String(m), where),
    );
    return new ClipTokenizer(merges, vocabMap(obj.model.vocab, where));
  }
  throw new Error(`${where}: neither a clipkit vocabulary nor a tokenizer.json with model.vocab/model.merges`);
}

async function loadFile(path: string): Promise<ClipTokenizer> {
  const raw = await readFile(path);
  const gzipped = raw.length >= 2 && raw[0] === 0x1f && raw[1] === 0x8b;
  const text = (gzipped ? gunzipSync(raw) : raw).toString('utf8');
  if (!gzipped && text.trimStart().startsWith('{')) {
    return fromJson(JSON.parse(text), path);
  }
  return new ClipTokenizer(parseOpenAiMerges(text, path));
}

/**
 * Load a tokenizer from a vocabulary file, or a directory holding one
 * (bpe_simple_vocab_16e6.txt.gz, vocab.json + merges.txt, or tokenizer.json).
 */
export async function loadTokenizer(path: string): Promise<ClipTokenizer> {
  if (!existsSync(path)) throw new Error(`tokenizer vocabulary not found: ${path}`);
  if (!statSync(path).isDirectory()) return loadFile(path);

  const openai = join(path, OPENAI_VOCAB_FILE);
  if (existsSync(openai)) return loadFile(openai);

  const vocabJson = join(path, 'vocab.json');
  const mergesTxt = join(path, 'merges.txt');
  if (existsSync(vocabJson) && existsSync(mergesTxt)) {
    const vocab = vocabMap(JSON.parse(await readFile(vocabJson, 'utf8')), vocabJson);
    const merges = parseHfMerges(await readFile(mergesTxt, 'utf8'), mergesTxt);
    return new ClipTokenizer(merges, vocab);
  }

  const tokenizerJson = join(path, 'tokenizer.json');
  if (existsSync(tokenizerJson)) return loadFile(tokenizerJson);

  throw new Error(
    `no tokenizer vocabulary in ${path}: expected ${OPENAI_VOCAB_FILE}, vocab.json + merges.txt, or tokenizer.json`,
  );
}
