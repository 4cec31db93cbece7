// clipkit eval: zero-shot accuracy of a CLIP model on an image folder laid out by class
// (root/<class>/<image>), with the class folder names as labels and a prompt-template ensemble; or
// image↔text retrieval recall@1/5/10 on a caption table (.csv/.tsv/.jsonl of image, caption).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { captionTable } from '../../data/datasets.js';
import { retrieval } from '../../eval/retrieval.js';
import { classifierWeights, encodeTexts, TEMPLATES, zeroShot } from '../../eval/zeroshot.js';
import { classNameOf, decodeFiles, listImageFolder } from '../../eval/folder.js';
import type { ClipModel } from '../../models/clip-model.js';
import { loadClip } from '../../models/load.js';
import { OPENAI_VOCAB_FILE } from '../../tokenizer/index.js';
import { parse, usage, UsageError, INT8_OPTION, quantizeOf } from '../args.js';
import { findTokenizer } from '../find-tokenizer.js';
import type { Command } from '../main.js';

const SPECS = {
  model: { type: 'string', help: 'model: a .safetensors file or a model directory (OpenCLIP or Hugging Face layout)' },
  data: { type: 'string', help: 'image folder by class (<data>/<class>/*.{jpg,jpeg,png}): zero-shot accuracy; or a .csv/.tsv/.jsonl of (image, caption): retrieval recall@1/5/10' },
  tokenizer: { type: 'string', help: `tokenizer vocabulary (${OPENAI_VOCAB_FILE}, tokenizer.json, or a directory); default: the model's directory` },
  templates: { type: 'string', default: 'simple', help: "prompt templates: 'simple' (a photo of a {}.), 'cifar10' (CLIP's 18), or a file with one template per line" },
  'batch-size': { type: 'int', default: 64, min: 1, help: 'images decoded and encoded per batch' },
  limit: { type: 'int', min: 1, help: 'evaluate at most this many images, taken round-robin over the classes' },
  json: { type: 'boolean', help: 'print one JSON object' },
  int8: INT8_OPTION,
  help: { type: 'boolean', short: 'h', help: 'show this help' },
} as const;

const evalCommand: Command = {
  summary: 'zero-shot accuracy on an image folder by class, or retrieval recall on a caption table',
  async run(argv) {
    const started = performance.now();
    const { opts, positionals } = parse('eval', argv, SPECS);
    if (opts.help) return console.log(usage('eval', this.summary, SPECS));
    if (positionals.length > 0) throw new UsageError(`eval: unexpected argument '${positionals[0]}' (options are --model, --data, …)`);
    if (!opts.model) throw new UsageError('eval: --model <path> is required');
    if (!opts.data) throw new UsageError('eval: --data <folder by class> is required');
    if (/\.(csv|tsv|jsonl|ndjson)$/i.test(opts.data)) return evalRetrieval(opts.model, opts.data, opts.tokenizer, opts['batch-size'], opts.limit, opts.json === true, started, quantizeOf(opts.int8));
    const templates = readTemplates(opts.templates);
    // The folder is listed before the model loads, so a wrong path fails in milliseconds.
    const folder = listImageFolder(opts.data, { limit: opts.limit });
    const classNames = folder.classes.map(classNameOf);

    const model = await loadClip(opts.model, { quantize: quantizeOf(opts.int8) });
    const tokenizer = await findTokenizer('eval', opts.model, opts.tokenizer, model);
    const weights = await classifierWeights(model, tokenizer, classNames, templates);

    const pass = await encodeImages(model, folder.files, opts['batch-size']);
    if (pass.fileIndex.length === 0) throw new Error(`eval: none of the ${folder.files.length} images could be decoded (${pass.firstError})`);
    const labels = Int32Array.from(pass.fileIndex, (i) => folder.labels[i]!);
    const zs = await zeroShot(pass.features, weights, labels);

    const out = {
      model: opts.model,
      data: opts.data,
      images: labels.length,
      skipped: pass.skipped,
      classes: folder.classes.length,
      templates: templates.length,
      zeroShot: {
        top1: zs.top1,
        top5: zs.top5,
        topK: zs.topK,
        perClass: Object.fromEntries(folder.classes.map((c, i) => [c, zs.perClass[i]])),
      },
      seconds: (performance.now() - started) / 1000,
      // Over the image pass only (decode + encode): the number a batch size or thread count changes.
      imagesPerSecond: labels.length / pass.seconds,
    };
    if (opts.json) return console.log(JSON.stringify(out, null, 2));
    const pct = (v: number | null): string => (v === null ? '—' : `${(100 * v).toFixed(2)}%`);
    const counts = new Array<number>(folder.classes.length).fill(0);
    for (const l of labels) counts[l]!++;
    const w = Math.max(5, ...folder.classes.map((c) => c.length));
    console.log(
      [
        `model      ${out.model}`,
        `data       ${out.data}: ${out.images} images in ${out.classes} classes${out.skipped ? ` (${out.skipped} unreadable, skipped)` : ''}`,
        `templates  ${out.templates}`,
        `top-1      ${pct(zs.top1)}`,
        `top-${zs.topK}      ${pct(zs.top5)}`,
        `time       ${out.seconds.toFixed(1)} s (${out.imagesPerSecond.toFixed(1)} images/s)`,
        '',
        `${'class'.padEnd(w)}  images   top-1`,
        ...folder.classes.map((c, i) => `${c.padEnd(w)}  ${String(counts[i]).padStart(6)}  ${pct(zs.perClass[i] ?? null).padStart(7)}`),
      ].join('\n'),
    );
  },
};
export default evalCommand;

/**
 * Retrieval on a caption table: every distinct image is a candidate for every caption and the
 * reverse (an image with several rows has several captions; any of them is a hit for the image).
 */
async function evalRetrieval(modelPath: string, data: string, tokenizerPath: string | undefined, batchSize: number, limit: number | undefined, json: boolean, started: number, quantize: 'none' | 'int8'): Promise<void> {
  const table = await captionTable(data);
  const ctx = { epoch: 0, seed: 0, shuffle: false };
  const rows = Array.from({ length: Math.min(table.size, limit ?? Infinity) }, (_, i) => table.get(i, ctx));
  const files: string[] = [];
  const imageIndex = new Map<string, number>();
  const imageOfRow = rows.map((r) => {
    const path = 'path' in r.image ? r.image.path : r.key;
    let i = imageIndex.get(path);
    if (i === undefined) imageIndex.set(path, (i = files.push(path) - 1));
    return i;
  });
  const model = await loadClip(modelPath, { quantize });
  const tokenizer = await findTokenizer('eval', modelPath, tokenizerPath, model);
  const pass = await encodeImages(model, files, batchSize);
  if (pass.fileIndex.length === 0) throw new Error(`eval: none of the ${files.length} images could be decoded (${pass.firstError})`);
  // Captions of undecodable images are left out (they cannot be retrieved).
  const featureRow = new Int32Array(files.length).fill(-1);
  pass.fileIndex.forEach((f, r) => (featureRow[f] = r));
  const kept = rows.map((_, j) => j).filter((j) => featureRow[imageOfRow[j]!]! >= 0);
  const text = await encodeTexts(model, tokenizer, kept.map((j) => rows[j]!.caption));
  const r = await retrieval(pass.features, text, Int32Array.from(kept, (j) => featureRow[imageOfRow[j]!]!));
  const out = {
    model: modelPath,
    data,
    images: pass.fileIndex.length,
    captions: kept.length,
    skipped: pass.skipped,
    retrieval: { imageToText: r.imageToText, textToImage: r.textToImage },
    seconds: (performance.now() - started) / 1000,
  };
  if (json) return console.log(JSON.stringify(out, null, 2));
  const pct = (v: number | undefined): string => (v === undefined ? '—' : `${(100 * v).toFixed(2)}%`.padStart(8));
  console.log(
    [
      `model      ${modelPath}`,
      `data       ${data}: ${out.images} images, ${out.captions} captions${out.skipped ? ` (${out.skipped} unreadable images skipped)` : ''}`,
      '',
      '               R@1      R@5     R@10',
      `image→text ${pct(r.imageToText[1])} ${pct(r.imageToText[5])} ${pct(r.imageToText[10])}`,
      `text→image ${pct(r.textToImage[1])} ${pct(r.textToImage[5])} ${pct(r.textToImage[10])}`,
      `time       ${out.seconds.toFixed(1)} s`,
    ].join('\n'),
  );
}

/** 'simple' and 'cifar10' are built in; anything else is a file with one template per line. */
function readTemplates(spec: string): readonly string[] {
  if (spec === 'simple' || spec === 'cifar10') return TEMPLATES[spec];
  if (!existsSync(spec) || !statSync(spec).isFile()) throw new UsageError(`eval: --templates must be 'simple', 'cifar10' or a file with one template per line; '${spec}' is none of these`);
  const lines = readFileSync(spec, 'utf8')
    .split('\n')
    .map((l) => l.replace(/\r$/, ''))
    .filter((l) => l.trim() !== '');
  if (lines.length === 0) throw new UsageError(`eval: the templates file '${spec}' has no templates`);
  const bad = lines.findIndex((l) => !l.includes('{}'));
  if (bad >= 0) throw new UsageError(`eval: ${spec}:${bad + 1}: template ${JSON.stringify(lines[bad])} has no "{}" for the class name`);
  return lines;
}

interface ImagePass {
  features: { data: Float32Array; shape: [number, number] };
  /** Index into the file list of each feature row (unreadable files are left out). */
  fileIndex: number[];
  skipped: number;
  firstError: string;
  seconds: number;
}

/**
 * Decodes and encodes the images batch by batch. The next batch is decoded (sharp, libuv pool)
 * while the current one runs through the image tower (ONNX Runtime's own threads).
 */
async function encodeImages(model: ClipModel, files: string[], batchSize: number): Promise<ImagePass> {
  const t0 = performance.now();
  const size = model.config.vision.imageSize;
  const D = model.config.embedDim;
  const features = new Float32Array(files.length * D);
  const fileIndex: number[] = [];
  let skipped = 0;
  let firstError = '';
  const progress = makeProgress(files.length, t0);
  const decode = (lo: number) => decodeFiles(files.slice(lo, lo + batchSize), size);
  let next = decode(0);
  for (let lo = 0; lo < files.length; lo += batchSize) {
    const batch = await next;
    if (lo + batchSize < files.length) next = decode(lo + batchSize);
    for (const f of batch.failed) {
      if (skipped < 5) console.error(`eval: skipping ${f.file}: ${f.reason}`);
      if (!firstError) firstError = `${f.file}: ${f.reason}`;
      skipped++;
    }
    if (batch.ok.length > 0) {
      const emb = await model.encodeImage(batch);
      features.set(emb.data, fileIndex.length * D);
      fileIndex.push(...batch.ok.map((i) => lo + i));
    }
    progress(Math.min(files.length, lo + batchSize));
  }
  if (skipped > 5) console.error(`eval: skipped ${skipped} unreadable images in all`);
  progress.done();
  return { features: { data: features.subarray(0, fileIndex.length * D), shape: [fileIndex.length, D] }, fileIndex, skipped, firstError, seconds: (performance.now() - t0) / 1000 };
}

/** "images done / total, images/s" on stderr at most once a second (one updating line on a terminal). */
function makeProgress(total: number, t0: number): ((done: number) => void) & { done(): void } {
  const tty = process.stderr.isTTY;
  let last = t0;
  let shown = false;
  const line = (done: number): string => `eval: ${done}/${total} images, ${(done / ((performance.now() - t0) / 1000)).toFixed(1)} images/s`;
  let latest = 0;
  const f = (done: number): void => {
    latest = done;
    const now = performance.now();
    if (now - last < 1000) return;
    last = now;
    shown = true;
    process.stderr.write(tty ? `\r${line(done)}` : `${line(done)}\n`);
  };
  return Object.assign(f, {
    done(): void {
      if (shown) process.stderr.write(tty ? `\r${line(latest)}\n` : `${line(latest)}\n`);
    },
  });
}
