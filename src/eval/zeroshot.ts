// Zero-shot classification as in CLIP's paper and OpenAI's "Prompt Engineering for ImageNet"
// notebook: each class is embedded through several prompt templates, the L2-normalised text
// embeddings are averaged and renormalised into one classifier row, and an image is assigned the
// class whose row has the largest dot product with its features.
//
// Also the small feature-matrix helpers shared with retrieval and the linear probe: row
// normalisation, a blocked score matrix (one Gemm in ONNX Runtime, not a JS triple loop, because
// ImageNet-sized evaluations are 10^10–10^11 multiply-adds) and a tie-stable rank.
import type { ClipTokenizer } from '../tokenizer/index.js';
import type { ClipModel, Features } from '../models/clip-model.js';
import { Graph } from '../graph/graph.js';
import * as o from '../graph/ops.js';
import { type Compiled, compile } from '../runtime/compile.js';

/** Prompt templates; "{}" is replaced by the class name. */
export const TEMPLATES: Readonly<Record<'simple' | 'cifar10', readonly string[]>> = {
  simple: ['a photo of a {}.'],
  // CLIP's prompts for CIFAR-10 (the paper's prompts file, section CIFAR10).
  cifar10: [
    'a photo of a {}.',
    'a blurry photo of a {}.',
    'a black and white photo of a {}.',
    'a low contrast photo of a {}.',
    'a high contrast photo of a {}.',
    'a bad photo of a {}.',
    'a good photo of a {}.',
    'a photo of a small {}.',
    'a photo of a big {}.',
    'a photo of the {}.',
    'a blurry photo of the {}.',
    'a black and white photo of the {}.',
    'a low contrast photo of the {}.',
    'a high contrast photo of the {}.',
    'a bad photo of the {}.',
    'a good photo of the {}.',
    'a photo of the small {}.',
    'a photo of the big {}.',
  ],
};

// ------------------------------------------------------------------------ feature helpers

/** A copy with every row scaled to unit L2 norm (all-zero rows stay zero). */
export function normalizeRows(f: Features): Features {
  const [n, d] = f.shape;
  const out = new Float32Array(n * d);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let j = 0; j < d; j++) s += f.data[i * d + j]! ** 2;
    const inv = s > 0 ? 1 / Math.sqrt(s) : 0;
    for (let j = 0; j < d; j++) out[i * d + j] = f.data[i * d + j]! * inv;
  }
  return { data: out, shape: [n, d] };
}

/** Checks that `f` is a [N, D] matrix with matching data length; returns [N, D]. */
export function checkFeatures(what: string, f: Features, d?: number): [number, number] {
  const [n, dd] = f.shape;
  if (f.shape.length !== 2 || !Number.isInteger(n) || !Number.isInteger(dd) || n < 0 || dd < 1) throw new Error(`${what}: expected a [N, D] matrix, got [${f.shape}]`);
  if (f.data.length !== n * dd) throw new Error(`${what}: ${f.data.length} values for shape [${f.shape}]`);
  if (d !== undefined && dd !== d) throw new Error(`${what}: feature dimension ${dd}, expected ${d}`);
  return [n, dd];
}

const scorers = new Map<number, Promise<Compiled>>();

/** a [N, D] · b [M, D]ᵀ as one Gemm session per D (symbolic N and M), compiled once per process. */
function scorer(d: number): Promise<Compiled> {
  let c = scorers.get(d);
  if (!c) {
    const g = new Graph('scores');
    const a = g.input('a', ['N', d]);
    const b = g.input('b', ['M', d]);
    c = compile(g, { scores: o.gemm(a, b, null, { transB: true }) }, { cacheKey: false });
    scorers.set(d, c);
  }
  return c;
}

/**
 * Calls `fn(lo, hi, scores)` for consecutive row blocks of a·bᵀ: `scores` is [(hi−lo), M] row-major.
 * Blocks are sized to about 16M scores so memory stays bounded whatever N and M are. Every score of
 * a row comes from the same computation, so equal scores within a row are really equal (ties).
 */
export async function forEachScoreBlock(a: Features, b: Features, fn: (lo: number, hi: number, scores: Float32Array) => void): Promise<void> {
  const [n, d] = checkFeatures('scores (rows)', a);
  const [m] = checkFeatures('scores (columns)', b, d);
  if (n === 0) return;
  if (m === 0) {
    fn(0, n, new Float32Array(0));
    return;
  }
  const c = await scorer(d);
  const rows = Math.max(1, Math.min(n, Math.floor((1 << 24) / m)));
  for (let lo = 0; lo < n; lo += rows) {
    const hi = Math.min(n, lo + rows);
    const res = await c.run({ a: { data: a.data.subarray(lo * d, hi * d), shape: [hi - lo, d] }, b: { data: b.data, shape: [m, d] } });
    fn(lo, hi, res.scores!.data as Float32Array);
  }
}

/** NaN sorts last (a broken feature must never count as a hit). */
const key = (x: number): number => (x !== x ? -Infinity : x);

/** Whether entry a of row[off…] comes before entry b: higher score first, ties to the lower index. */
export function ahead(row: Float32Array, off: number, a: number, b: number): boolean {
  const x = key(row[off + a]!);
  const y = key(row[off + b]!);
  return x > y || (x === y && a < b);
}

/**
 * 0-based rank of entry `target` in row[off, off+len) under the order of `ahead` (a stable argsort
 * of −score, and what argmax picks): how many entries come before it.
 */
export function rankOf(row: Float32Array, off: number, len: number, target: number): number {
  let r = 0;
  for (let j = 0; j < len; j++) if (ahead(row, off, j, target)) r++;
  return r;
}

/** Index of the largest entry of row[off, off+len), the lowest index among ties. */
export function argmaxOf(row: Float32Array, off: number, len: number): number {
  let best = 0;
  for (let j = 1; j < len; j++) if (ahead(row, off, j, best)) best = j;
  return best;
}

// ------------------------------------------------------------------------ prompt ensembles

/** The prompts of one class: every template with "{}" replaced by the class name. */
export function promptsFor(className: string, templates: readonly string[]): string[] {
  return templates.map((t) => t.replaceAll('{}', className));
}

/**
 * Classifier rows from prompt embeddings: `text` is [C·T, D] with class c's T prompts in rows
 * c·T … c·T+T−1. Each row is L2-normalised, the T rows of a class averaged, the mean renormalised.
 */
export function promptEnsemble(text: Features, classes: number, templates: number): Features {
  const [n, d] = checkFeatures('promptEnsemble', text);
  if (n !== classes * templates) throw new Error(`promptEnsemble: ${n} rows, expected ${classes} classes × ${templates} templates`);
  const unit = normalizeRows(text).data;
  const mean = new Float32Array(classes * d);
  for (let c = 0; c < classes; c++) {
    for (let t = 0; t < templates; t++) {
      const row = (c * templates + t) * d;
      for (let j = 0; j < d; j++) mean[c * d + j]! += unit[row + j]! / templates;
    }
  }
  return normalizeRows({ data: mean, shape: [classes, d] });
}

export interface ClassifierOptions {
  /** Prompts per text-encoder call (bounds memory); default 256. */
  batchSize?: number;
}

/**
 * The zero-shot classifier [C, D] (rows unit-norm) for `classNames` under `templates` (each must
 * contain "{}"). Prompts are tokenized at the model's context length (too-long prompts truncated)
 * and then cut to the longest prompt: the text tower is causal and pools at the end token, so the
 * padding after it cannot change the result, and 77 → ~12 positions is several times less work.
 */
export async function classifierWeights(
  model: Pick<ClipModel, 'encodeText' | 'config'>,
  tokenizer: Pick<ClipTokenizer, 'encode'>,
  classNames: readonly string[],
  templates: readonly string[],
  o: ClassifierOptions = {},
): Promise<Features> {
  if (classNames.length === 0) throw new Error('classifierWeights: no class names');
  if (templates.length === 0) throw new Error('classifierWeights: no templates');
  const bad = templates.find((t) => !t.includes('{}'));
  if (bad !== undefined) throw new Error(`classifierWeights: template ${JSON.stringify(bad)} has no "{}" for the class name`);
  const T = templates.length;
  const D = model.config.embedDim;
  // Whole classes per call, so each call's rows can be averaged on their own.
  const perCall = Math.max(1, Math.floor((o.batchSize ?? 256) / T));
  const out = new Float32Array(classNames.length * D);
  for (let lo = 0; lo < classNames.length; lo += perCall) {
    const names = classNames.slice(lo, lo + perCall);
    const ids = tokenizer.encode(names.flatMap((c) => promptsFor(c, templates)), { contextLength: model.config.text.contextLength, truncate: true });
    const text = await model.encodeText(trimTokens(ids));
    out.set(promptEnsemble(text, names.length, T).data, lo * D);
  }
  return { data: out, shape: [classNames.length, D] };
}

/**
 * Text features [N, D] (projected, not normalised) of arbitrary texts, `batchSize` per call, each
 * call's token rows trimmed after the last end token as in classifierWeights.
 */
export async function encodeTexts(
  model: Pick<ClipModel, 'encodeText' | 'config'>,
  tokenizer: Pick<ClipTokenizer, 'encode'>,
  texts: readonly string[],
  o: ClassifierOptions = {},
): Promise<Features> {
  const D = model.config.embedDim;
  const per = o.batchSize ?? 256;
  const out = new Float32Array(texts.length * D);
  for (let lo = 0; lo < texts.length; lo += per) {
    const ids = tokenizer.encode(texts.slice(lo, lo + per), { contextLength: model.config.text.contextLength, truncate: true });
    out.set((await model.encodeText(trimTokens(ids))).data, lo * D);
  }
  return { data: out, shape: [texts.length, D] };
}

/** Token rows cut after the last position any row pools at (its largest id: the end token). */
function trimTokens(t: { data: Int32Array; shape: [number, number] }): { data: Int32Array; shape: [number, number] } {
  const [n, len] = t.shape;
  let keep = 1;
  for (let i = 0; i < n; i++) keep = Math.max(keep, argmaxInt(t.data, i * len, len) + 1);
  if (keep === len) return t;
  const data = new Int32Array(n * keep);
  for (let i = 0; i < n; i++) data.set(t.data.subarray(i * len, i * len + keep), i * keep);
  return { data, shape: [n, keep] };
}

function argmaxInt(a: Int32Array, off: number, len: number): number {
  let best = 0;
  for (let j = 1; j < len; j++) if (a[off + j]! > a[off + best]!) best = j;
  return best;
}

// ------------------------------------------------------------------------ scoring

export interface ZeroShotOptions {
  /** Also return the confusion matrix (C × C counts); default false. */
  confusion?: boolean;
}

export interface ZeroShotResult {
  /** Fraction of images whose top-scoring class is their label. */
  top1: number;
  /** Fraction whose label is among the `topK` best classes. */
  top5: number;
  /** The k of top5: min(5, classes). */
  topK: number;
  images: number;
  /** Top-1 per class (recall); null for a class with no images. */
  perClass: (number | null)[];
  /** confusion[true][predicted] counts, when asked for. */
  confusion?: number[][];
}

/**
 * Zero-shot accuracy of image features [N, D] against classifier rows [C, D] (from
 * classifierWeights). Scores are plain dot products; an image's own scale never changes its ranking,
 * so its features need not be normalised. Ties go to the lower class index (as argmax).
 */
export async function zeroShot(imageFeatures: Features, weights: Features, labels: Int32Array, o: ZeroShotOptions = {}): Promise<ZeroShotResult> {
  const [C, D] = checkFeatures('zeroShot weights', weights);
  const [N] = checkFeatures('zeroShot image features', imageFeatures, D);
  if (N === 0) throw new Error('zeroShot: no images');
  if (labels.length !== N) throw new Error(`zeroShot: ${labels.length} labels for ${N} images`);
  for (const l of labels) if (!(l >= 0 && l < C)) throw new Error(`zeroShot: label ${l} outside [0, ${C})`);
  const topK = Math.min(5, C);
  let hit1 = 0;
  let hit5 = 0;
  const seen = new Array<number>(C).fill(0);
  const right = new Array<number>(C).fill(0);
  const confusion = o.confusion ? Array.from({ length: C }, () => new Array<number>(C).fill(0)) : undefined;
  await forEachScoreBlock(imageFeatures, weights, (lo, hi, s) => {
    for (let i = lo; i < hi; i++) {
      const y = labels[i]!;
      const r = rankOf(s, (i - lo) * C, C, y);
      seen[y]!++;
      if (r === 0) (hit1++, right[y]!++);
      if (r < topK) hit5++;
      if (confusion) confusion[y]![argmaxOf(s, (i - lo) * C, C)]!++;
    }
  });
  return {
    top1: hit1 / N,
    top5: hit5 / N,
    topK,
    images: N,
    perClass: seen.map((n, c) => (n === 0 ? null : right[c]! / n)),
    ...(confusion ? { confusion } : {}),
  };
}
