// Sources of (image, caption) pairs for contrastive training.
//
// Two kinds, because they are read differently:
//  - indexed (imageFolder, captionTable): the size is known and any sample can be fetched by
//    index, so the loader shuffles with a seeded permutation and can start anywhere;
//  - streamed (webDataset): tar shards read front to back, size unknown until the end, shuffled
//    by shard order plus a seeded shuffle buffer.
// Both are deterministic functions of (seed, epoch): the same arguments give the same samples in
// the same order, which is what makes the loader's batches reproducible and resumable.

import { createReadStream } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { basename, dirname, extname, isAbsolute, join, resolve } from 'node:path';
import { CsvError, parse as parseCsv } from 'csv-parse';
import { Rng } from '../nn/init.js';
import { expandBraces, groupByKey, readTar } from './tar.js';

/** One training pair. `image` is a file to read or the encoded bytes (PNG/JPEG/WebP…). */
export interface Sample {
  /** Names the sample in logs and errors: a relative path or a shard member's key. */
  key: string;
  image: { path: string } | { bytes: Uint8Array };
  caption: string;
  /** Class index, when the source has classes (imageFolder, a table's label column, .cls). */
  label?: number;
}

/** What a source needs to know to produce an epoch's samples. */
export interface EpochContext {
  epoch: number;
  seed: number | string;
  /** Shuffle (streamed sources; indexed ones are permuted by the loader). */
  shuffle: boolean;
}

export interface IndexedSource {
  readonly kind: 'indexed';
  readonly size: number;
  /** Sample `index` as seen in this epoch (captions may vary between epochs). */
  get(index: number, ctx: EpochContext): Sample;
  /** Class names by label, when the source has classes. */
  readonly classes?: readonly string[];
}

export interface StreamSource {
  readonly kind: 'stream';
  /** This epoch's samples in order. Stopping early (return()) releases open files. */
  stream(ctx: EpochContext): AsyncIterable<Sample>;
  readonly classes?: readonly string[];
}

export type Source = IndexedSource | StreamSource;

// ---------------------------------------------------------------------------------------
// Image folders

const IMAGE_EXTS = new Set(['.jpg', '.jpeg', '.png', '.webp']);

/** A few of CLIP's ImageNet/CIFAR templates, used when none are given. */
export const DEFAULT_TEMPLATES: readonly string[] = Object.freeze([
  'a photo of a {}.',
  'a blurry photo of a {}.',
  'a photo of the {}.',
  'a good photo of a {}.',
  'a bad photo of a {}.',
  'a photo of a small {}.',
  'a photo of a big {}.',
  'a close-up photo of a {}.',
]);

export interface ImageFolderOptions {
  /** Caption templates with `{}` for the class name; default DEFAULT_TEMPLATES. */
  templates?: readonly string[];
  /** Display names by folder name; others are the folder name with `_` → space. */
  classNames?: Readonly<Record<string, string>>;
}

export interface ImageFolderSource extends IndexedSource {
  readonly classes: readonly string[];
  readonly templates: readonly string[];
}

/**
 * `root/<class>/*.{jpg,jpeg,png,webp}`: classes in sorted folder order, label = class index,
 * caption = a template filled with the class name. Each sample's template is drawn from
 * (seed, epoch, index), so a sample is captioned differently from one epoch to the next but
 * identically in any rerun.
 */
export async function imageFolder(root: string, opts: ImageFolderOptions = {}): Promise<ImageFolderSource> {
  const templates = [...(opts.templates ?? DEFAULT_TEMPLATES)];
  if (templates.length === 0) throw new Error('imageFolder: templates is empty');
  for (const t of templates) if (!t.includes('{}')) throw new Error(`imageFolder: template ${JSON.stringify(t)} has no {}`);
  const entries = await readdir(root, { withFileTypes: true }).catch((err: unknown) => {
    throw new Error(`imageFolder: cannot list ${root}: ${(err as Error).message}`, { cause: err });
  });
  // Byte order, not locale order, so that labels do not depend on the machine's locale.
  // Hidden folders (.git, .cache) are not classes.
  const folders = entries.filter((e) => e.isDirectory() && !e.name.startsWith('.')).map((e) => e.name).sort(byCodePoint);
  const files: string[] = [];
  const labels: number[] = [];
  for (const [label, folder] of folders.entries()) {
    const names = (await readdir(join(root, folder))).filter((n) => IMAGE_EXTS.has(extname(n).toLowerCase())).sort(byCodePoint);
    for (const n of names) {
      files.push(`${folder}/${n}`);
      labels.push(label);
    }
  }
  if (files.length === 0) throw new Error(`imageFolder: no images in ${root}/<class>/ (looked for ${[...IMAGE_EXTS].join(', ')})`);
  const classes = folders.map((f) => opts.classNames?.[f] ?? f.replaceAll('_', ' '));
  return {
    kind: 'indexed',
    size: files.length,
    classes,
    templates,
    get(index, ctx) {
      const key = files[checkIndex(index, files.length)]!;
      const label = labels[index]!;
      const t = templates.length === 1 ? 0 : new Rng(`caption:${ctx.seed}:${ctx.epoch}:${index}`).int(templates.length);
      return { key, image: { path: join(root, key) }, caption: templates[t]!.replaceAll('{}', classes[label]!), label };
    },
  };
}

/**
 * The `classes` and `templates` lists of one dataset's section (`## CIFAR10`) of a
 * clip-prompts.md file (OpenAI CLIP's data/prompts.md). A class given as several names
 * (`['happy', 'smiling']`) is represented by its first.
 */
export function parsePromptTemplates(markdown: string, dataset: string): { classes: string[]; templates: string[] } {
  const lines = markdown.split('\n');
  const start = lines.findIndex((l) => /^##\s/.test(l) && l.slice(2).trim().toLowerCase() === dataset.trim().toLowerCase());
  if (start < 0) throw new Error(`parsePromptTemplates: no "## ${dataset}" section`);
  let end = lines.findIndex((l, i) => i > start && /^##\s/.test(l));
  if (end < 0) end = lines.length;
  const section = lines.slice(start + 1, end).join('\n');
  const list = (name: string): (string | string[])[] => {
    const m = new RegExp(`\\b${name}\\s*=\\s*\\[`).exec(section);
    if (!m) throw new Error(`parsePromptTemplates: section ${dataset} has no "${name} = [...]"`);
    return parsePythonStrings(section, m.index + m[0].length, `${dataset}.${name}`);
  };
  const classes = list('classes').map((c) => (Array.isArray(c) ? c[0]! : c));
  const templates = list('templates').map((t) => (Array.isArray(t) ? t[0]! : t));
  return { classes, templates };
}

// A Python list of string literals (or of lists of them) starting after its `[`.
function parsePythonStrings(text: string, from: number, where: string): (string | string[])[] {
  const out: (string | string[])[] = [];
  let inner: string[] | undefined;
  for (let i = from; i < text.length; i++) {
    const c = text[i]!;
    if (c === "'" || c === '"') {
      let s = '';
      for (i++; i < text.length && text[i] !== c; i++) s += text[i] === '\\' ? text[++i] : text[i];
      if (i >= text.length) break;
      (inner ?? out).push(s);
    } else if (c === '[') {
      if (inner) throw new Error(`parsePromptTemplates: ${where} is nested too deeply`);
      inner = [];
    } else if (c === ']') {
      if (!inner) return out;
      if (inner.length > 0) out.push(inner);
      inner = undefined;
    } else if (c === '#') {
      while (i < text.length && text[i] !== '\n') i++; // a comment
    }
  }
  throw new Error(`parsePromptTemplates: ${where} is not a closed list of strings`);
}

// ---------------------------------------------------------------------------------------
// Caption tables

export interface CaptionTableOptions {
  /** Folder that relative image paths are relative to; default the table's folder. */
  root?: string;
  /** Column (CSV/TSV header) or field (JSONL) of the image path; default auto-detected. */
  imageKey?: string;
  /** Column or field of the caption; default auto-detected. */
  captionKey?: string;
  /** Column or field of an integer class label; default `label` when present. */
  labelKey?: string;
}

const IMAGE_KEYS = ['image', 'filepath', 'path', 'file'];
const CAPTION_KEYS = ['caption', 'text', 'title'];

interface Row {
  image: string;
  caption: string;
  label?: number;
}

/**
 * Image–caption pairs listed in a .csv, .tsv (header row first) or .jsonl file (one object per
 * line). Relative image paths are resolved against the table's folder, or `root`. A malformed
 * row is an error naming the file and line: silently dropping rows would hide a broken export.
 */
export async function captionTable(file: string, opts: CaptionTableOptions = {}): Promise<IndexedSource> {
  const ext = extname(file).toLowerCase();
  let rows: Row[];
  if (ext === '.jsonl' || ext === '.ndjson') rows = await readJsonl(file, opts);
  else if (ext === '.csv' || ext === '.tsv') rows = await readDelimited(file, ext === '.tsv' ? '\t' : ',', opts);
  else throw new Error(`captionTable: ${file}: expected a .csv, .tsv or .jsonl file`);
  if (rows.length === 0) throw new Error(`captionTable: ${file} has no rows`);
  const root = resolve(opts.root ?? dirname(file));
  const paths = rows.map((r) => (isAbsolute(r.image) ? r.image : join(root, r.image)));
  return {
    kind: 'indexed',
    size: rows.length,
    get(index) {
      const r = rows[checkIndex(index, rows.length)]!;
      const s: Sample = { key: r.image, image: { path: paths[index]! }, caption: r.caption };
      if (r.label !== undefined) s.label = r.label;
      return s;
    },
  };
}

function pickKey(available: readonly string[], given: string | undefined, candidates: readonly string[], what: string, file: string): string {
  if (given !== undefined) {
    if (!available.includes(given)) throw new Error(`captionTable: ${file} has no ${what} column "${given}" (has ${available.join(', ')})`);
    return given;
  }
  const lower = available.map((a) => a.toLowerCase());
  for (const c of candidates) {
    const i = lower.indexOf(c);
    if (i >= 0) return available[i]!;
  }
  throw new Error(`captionTable: ${file}: no ${what} column (looked for ${candidates.join(', ')}; has ${available.join(', ')})`);
}

function toRow(rec: Record<string, unknown>, keys: { image: string; caption: string; label?: string }, where: string): Row {
  const image = rec[keys.image];
  const caption = rec[keys.caption];
  if (typeof image !== 'string' || image.trim() === '') throw new Error(`${where}: empty or missing "${keys.image}"`);
  if (typeof caption !== 'string') throw new Error(`${where}: missing "${keys.caption}"`);
  const row: Row = { image: image.trim(), caption };
  if (keys.label !== undefined) {
    const v = rec[keys.label];
    const label = typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v) : NaN;
    if (!Number.isInteger(label) || label < 0) throw new Error(`${where}: "${keys.label}" must be a non-negative integer, got ${JSON.stringify(v)}`);
    row.label = label;
  }
  return row;
}

async function readDelimited(file: string, delimiter: string, opts: CaptionTableOptions): Promise<Row[]> {
  // Quoting as pandas reads and writes it (open_clip reads its CSV/TSV files with pandas); and
  // captions often contain quotes mid-field (`a "big" dog`): only a field-leading quote quotes.
  const parser = parseCsv({ delimiter, bom: true, info: true, skip_empty_lines: true, relax_quotes: true });
  const input = createReadStream(file);
  input.on('error', (err) => parser.destroy(err)); // pipe() does not forward a missing file
  input.pipe(parser);
  const rows: Row[] = [];
  let header: string[] | undefined;
  let keys: { image: string; caption: string; label?: string } | undefined;
  try {
    for await (const { record, info } of parser as AsyncIterable<{ record: string[]; info: { lines: number } }>) {
      if (!header) {
        header = record.map((h) => h.trim());
        keys = {
          image: pickKey(header, opts.imageKey, IMAGE_KEYS, 'image', file),
          caption: pickKey(header, opts.captionKey, CAPTION_KEYS, 'caption', file),
        };
        const label = opts.labelKey ?? header.find((h) => h.toLowerCase() === 'label');
        if (label !== undefined) keys.label = pickKey(header, label, [], 'label', file);
        continue;
      }
      const rec = Object.fromEntries(header.map((h, i) => [h, record[i]]));
      rows.push(toRow(rec, keys!, `captionTable: ${file}: line ${info.lines}`));
    }
  } catch (err) {
    // csv-parse's own errors (CsvError, code CSV_…) carry the line, counted from 1 as editors do.
    if (err instanceof CsvError) throw new Error(`captionTable: ${file}: line ${err.lines ?? '?'}: ${err.message}`, { cause: err });
    if ((err as NodeJS.ErrnoException).syscall !== undefined) throw new Error(`captionTable: cannot read ${file}: ${(err as Error).message}`, { cause: err });
    throw err;
  }
  return rows;
}

async function readJsonl(file: string, opts: CaptionTableOptions): Promise<Row[]> {
  const text = await readFile(file, 'utf8').catch((err: unknown) => {
    throw new Error(`captionTable: cannot read ${file}: ${(err as Error).message}`, { cause: err });
  });
  const rows: Row[] = [];
  let keys: { image: string; caption: string; label?: string } | undefined;
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '') continue;
    const where = `captionTable: ${file}: line ${i + 1}`;
    let rec: unknown;
    try {
      rec = JSON.parse(line);
    } catch (err) {
      throw new Error(`${where}: not valid JSON (${(err as Error).message})`, { cause: err });
    }
    if (typeof rec !== 'object' || rec === null || Array.isArray(rec)) throw new Error(`${where}: expected a JSON object`);
    const obj = rec as Record<string, unknown>;
    if (!keys) {
      // Detected on the first object; every later line must have the same fields.
      const fields = Object.keys(obj);
      keys = {
        image: pickKey(fields, opts.imageKey, IMAGE_KEYS, 'image', file),
        caption: pickKey(fields, opts.captionKey, CAPTION_KEYS, 'caption', file),
      };
      const label = opts.labelKey ?? fields.find((f) => f.toLowerCase() === 'label');
      if (label !== undefined) keys.label = pickKey(fields, label, [], 'label', file);
    }
    rows.push(toRow(obj, keys, where));
  }
  return rows;
}

// ---------------------------------------------------------------------------------------
// WebDataset shards

export interface WebDatasetOptions {
  /** Samples held for shuffling a stream; default 1000. 0 or 1: no shuffle buffer. */
  shuffleBuffer?: number;
  /** Extensions tried for the caption, in order; default ['txt']. */
  captionExts?: readonly string[];
  /** Class names by label, when the shards carry `.cls` files. */
  classes?: readonly string[];
}

export interface WebDatasetSource extends StreamSource {
  readonly shards: readonly string[];
  /** Samples skipped for lacking an image or a caption, over all epochs read so far. */
  readonly stats: { incomplete: number };
}

const WDS_IMAGE_EXTS = ['jpg', 'jpeg', 'png', 'webp'];
const utf8 = new TextDecoder();

/**
 * Samples from WebDataset tar shards (`key.jpg|jpeg|png|webp` + `key.txt`, optional `key.cls`
 * with an integer label), streamed without extraction. Shard paths may be brace patterns
 * (`data-{000..009}.tar`). When shuffling, the shard order is permuted per epoch and samples pass
 * through a seeded shuffle buffer; otherwise they come in storage order.
 */
export function webDataset(shards: readonly string[] | string, opts: WebDatasetOptions = {}): WebDatasetSource {
  const list = (typeof shards === 'string' ? [shards] : [...shards]).flatMap(expandBraces);
  if (list.length === 0) throw new Error('webDataset: no shards');
  const bufferSize = opts.shuffleBuffer ?? 1000;
  const captionExts = opts.captionExts ?? ['txt'];
  const stats = { incomplete: 0 };

  async function* samples(ctx: EpochContext): AsyncGenerator<Sample> {
    const order = ctx.shuffle ? new Rng(`shards:${ctx.seed}:${ctx.epoch}`).shuffle([...list]) : list;
    for (const shard of order) {
      const name = basename(shard);
      for await (const { key, files } of groupByKey(readTar(shard))) {
        const imageExt = WDS_IMAGE_EXTS.find((e) => files.has(e));
        const capExt = captionExts.find((e) => files.has(e));
        if (!imageExt || !capExt) {
          stats.incomplete++;
          continue;
        }
        const s: Sample = { key: `${name}/${key}`, image: { bytes: files.get(imageExt)! }, caption: utf8.decode(files.get(capExt)).trim() };
        const cls = files.get('cls');
        if (cls) {
          const label = Number(utf8.decode(cls).trim());
          if (Number.isInteger(label) && label >= 0) s.label = label;
        }
        yield s;
      }
    }
  }

  return {
    kind: 'stream',
    shards: list,
    stats,
    ...(opts.classes ? { classes: [...opts.classes] } : {}),
    stream(ctx) {
      return ctx.shuffle && bufferSize > 1 ? shuffleBuffer(samples(ctx), bufferSize, new Rng(`buffer:${ctx.seed}:${ctx.epoch}`)) : samples(ctx);
    },
  };
}

/**
 * WebDataset's shuffle buffer: fill up to `size` items, then for each new item emit a random
 * held one and keep the new one in its place; at the end emit the rest in random order.
 * Memory is bounded by `size` samples; order depends only on the input order and `rng`.
 */
export async function* shuffleBuffer<T>(items: AsyncIterable<T>, size: number, rng: Rng): AsyncGenerator<T> {
  const buf: T[] = [];
  for await (const item of items) {
    if (buf.length < size) {
      buf.push(item);
      continue;
    }
    const j = rng.int(size);
    const out = buf[j]!;
    buf[j] = item;
    yield out;
  }
  rng.shuffle(buf);
  yield* buf;
}

// ---------------------------------------------------------------------------------------

function byCodePoint(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function checkIndex(index: number, size: number): number {
  if (!Number.isInteger(index) || index < 0 || index >= size) throw new RangeError(`sample index ${index} is outside [0, ${size})`);
  return index;
}
