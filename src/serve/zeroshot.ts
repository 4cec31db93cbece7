// Zero-shot classification as a service: label lists and templates from user input (validated, with
// errors that say what is wrong), class embeddings cached in memory and on disk (building them runs
// the text tower over labels × templates prompts: the slow part of a one-image classify), and
// top-k probabilities: softmax over logit_scale · cos(image, class).
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { TEMPLATES, promptEnsemble, promptsFor } from '../eval/zeroshot.js';
import { readNpy, writeNpy } from '../index/npy.js';

export const MAX_LABELS = 1000;
export const MAX_LABEL_LENGTH = 200;
export const MAX_TEMPLATES = 100;

/** A problem with user input (labels, templates, an image): a 400 in the server, exit 2 in the CLI. */
export class InputError extends Error {
  override name = 'InputError';
}

/** "cat, dog,car" or ['cat', 'dog'] → ['cat', 'dog', 'car']: trimmed, non-empty, unique. */
export function parseLabels(input: unknown): string[] {
  let list: unknown[];
  if (input === undefined || input === null) throw new InputError('no labels: give at least one (e.g. "cat,dog")');
  if (typeof input === 'string') list = input.split(',');
  else if (Array.isArray(input)) list = input;
  else throw new InputError('labels must be a comma-separated string or an array of strings');
  const labels: string[] = [];
  for (const l of list) {
    if (typeof l !== 'string') throw new InputError(`labels must be strings, got ${JSON.stringify(l)}`);
    const t = l.trim();
    if (t === '') {
      if (typeof input === 'string') continue; // "a,,b" or a trailing comma: tolerated
      throw new InputError('labels must not be empty strings');
    }
    if (t.length > MAX_LABEL_LENGTH) throw new InputError(`label '${t.slice(0, 40)}…' is longer than ${MAX_LABEL_LENGTH} characters`);
    if (labels.includes(t)) throw new InputError(`label '${t}' is given twice`);
    labels.push(t);
  }
  if (labels.length === 0) throw new InputError('no labels: give at least one (e.g. "cat,dog")');
  if (labels.length > MAX_LABELS) throw new InputError(`${labels.length} labels; at most ${MAX_LABELS}`);
  return labels;
}

/** 'simple' | 'cifar10' | a list of templates with "{}" (never a file: this takes request input). */
export function parseTemplates(input: unknown): readonly string[] {
  if (input === undefined || input === null || input === 'simple') return TEMPLATES.simple;
  if (input === 'cifar10') return TEMPLATES.cifar10;
  if (!Array.isArray(input)) throw new InputError(`templates must be 'simple', 'cifar10' or a list of templates containing "{}"`);
  return checkTemplates(input, 'templates');
}

function checkTemplates(list: unknown[], where: string): string[] {
  if (list.length === 0) throw new InputError(`${where}: no templates`);
  if (list.length > MAX_TEMPLATES) throw new InputError(`${where}: ${list.length} templates; at most ${MAX_TEMPLATES}`);
  return list.map((t, i) => {
    if (typeof t !== 'string' || !t.includes('{}')) throw new InputError(`${where}: template ${i + 1} (${JSON.stringify(t)}) has no "{}" for the label`);
    return t;
  });
}

/** The CLI's --templates: 'simple', 'cifar10', or a file with one template per line. */
export function readTemplatesOption(spec: string): readonly string[] {
  if (spec === 'simple' || spec === 'cifar10') return TEMPLATES[spec];
  if (!existsSync(spec) || !statSync(spec).isFile()) throw new InputError(`--templates must be 'simple', 'cifar10' or a file with one template per line; '${spec}' is none of these`);
  const lines = readFileSync(spec, 'utf8')
    .split('\n')
    .map((l) => l.replace(/\r$/, ''))
    .filter((l) => l.trim() !== '');
  return checkTemplates(lines, spec);
}

/** Text features [n, D] for a list of prompts (any tower: in-process or a worker pool). */
export type EncodeTexts = (prompts: string[]) => Promise<Float32Array>;

/**
 * Class embeddings ([C, D], rows unit-norm: the prompt-ensemble mean of each label), cached per
 * (model, labels, templates): in memory (LRU) and, when `dir` is given, as .npy files that survive
 * restarts and are shared between `classify` runs and the server.
 */
export class ClassifierCache {
  private memory = new Map<string, Promise<Float32Array>>();

  constructor(
    private readonly dir: string | undefined,
    private readonly maxEntries = 64,
  ) {}

  static key(modelKey: string, labels: readonly string[], templates: readonly string[]): string {
    return createHash('sha256').update(JSON.stringify([modelKey, labels, templates])).digest('hex').slice(0, 32);
  }

  async get(modelKey: string, labels: readonly string[], templates: readonly string[], dim: number, encode: EncodeTexts): Promise<Float32Array> {
    const key = ClassifierCache.key(modelKey, labels, templates);
    const hit = this.memory.get(key);
    if (hit) {
      this.memory.delete(key); // re-insert: Map order is the LRU order
      this.memory.set(key, hit);
      return hit;
    }
    const p = this.load(key, labels.length, dim) ?? this.compute(key, labels, templates, dim, encode);
    this.memory.set(key, p);
    p.catch(() => this.memory.delete(key)); // a failure is not cached
    while (this.memory.size > this.maxEntries) this.memory.delete(this.memory.keys().next().value!);
    return p;
  }

  private file(key: string): string | undefined {
    return this.dir ? join(this.dir, `${key}.npy`) : undefined;
  }

  private load(key: string, classes: number, dim: number): Promise<Float32Array> | undefined {
    const f = this.file(key);
    if (!f || !existsSync(f)) return undefined;
    try {
      const a = readNpy(f);
      if (a.shape[0] === classes && a.shape[1] === dim) return Promise.resolve(a.data);
    } catch {
      // a damaged cache file is recomputed and overwritten
    }
    return undefined;
  }

  private async compute(key: string, labels: readonly string[], templates: readonly string[], dim: number, encode: EncodeTexts): Promise<Float32Array> {
    const prompts = labels.flatMap((l) => promptsFor(l, templates));
    const text = await encode(prompts);
    const weights = promptEnsemble({ data: text, shape: [prompts.length, dim] }, labels.length, templates.length).data;
    const f = this.file(key);
    if (f) {
      try {
        mkdirSync(this.dir!, { recursive: true });
        const tmp = `${f}.${process.pid}.tmp`;
        writeNpy(tmp, { data: weights, shape: [labels.length, dim] });
        renameSync(tmp, f); // atomic: a concurrent reader sees the old file or the whole new one
      } catch (e) {
        console.error(`warning: cannot write the class-embedding cache ${f}: ${(e as Error).message}`);
      }
    }
    return weights;
  }
}

export interface LabelScore {
  label: string;
  /** softmax over the labels of logitScale · cos(image, label). */
  probability: number;
  /** cos(image, label). */
  score: number;
}

/**
 * The k most probable labels of one image. `image` need not be normalised (it is here); `weights`
 * rows are unit-norm. `logitScale` is the exponentiated temperature (100 for trained CLIP models).
 */
export function topLabels(image: Float32Array, weights: Float32Array, labels: readonly string[], logitScale: number, k: number): LabelScore[] {
  const D = image.length;
  const C = labels.length;
  let norm = 0;
  for (let j = 0; j < D; j++) norm += image[j]! * image[j]!;
  const inv = norm > 0 ? 1 / Math.sqrt(norm) : 0;
  const cos = new Float64Array(C);
  for (let c = 0; c < C; c++) {
    let s = 0;
    for (let j = 0; j < D; j++) s += image[j]! * weights[c * D + j]!;
    cos[c] = s * inv;
  }
  // Softmax with the maximum subtracted, so exp never overflows at logit scale 100.
  let max = -Infinity;
  for (let c = 0; c < C; c++) max = Math.max(max, logitScale * cos[c]!);
  let sum = 0;
  const e = cos.map((x) => {
    const v = Math.exp(logitScale * x - max);
    sum += v;
    return v;
  });
  const order = Array.from({ length: C }, (_, c) => c).sort((a, b) => cos[b]! - cos[a]! || a - b);
  return order.slice(0, Math.max(1, Math.min(k, C))).map((c) => ({ label: labels[c]!, probability: e[c]! / sum, score: cos[c]! }));
}
