// An evaluation set laid out as root/<class>/<image>, read directly (no data-pipeline dependency):
// listing the images by class, and decoding a list of them with CLIP's eval transform while
// skipping the ones that do not decode instead of failing the whole run.
import { readdirSync, statSync } from 'node:fs';
import { extname, join } from 'node:path';
import { preprocessBatch } from '../data/image.js';

/** Image files we pick up (compared case-insensitively). */
export const IMAGE_EXTENSIONS: readonly string[] = ['.jpg', '.jpeg', '.png'];

export interface ImageFolder {
  root: string;
  /** Class folder names, sorted by code point (torchvision's ImageFolder order): label i is classes[i]. */
  classes: string[];
  /** Image paths, in listing order (or interleaved by class when limited). */
  files: string[];
  /** labels[i] is the class index of files[i]. */
  labels: Int32Array;
}

export interface ListOptions {
  /** Keep at most this many images, taken round-robin over the classes so every class is represented. */
  limit?: number;
}

/** A class folder's name as a prompt word: `golden_retriever` → `golden retriever`. */
export function classNameOf(folder: string): string {
  return folder.replace(/_/g, ' ').trim();
}

/**
 * Lists root/<class>/*.{jpg,jpeg,png}. Hidden entries are ignored; files directly in root are
 * ignored too (they belong to no class). Errors name what is wrong: a missing root, no class
 * folders, or class folders without images (a likely typo rather than a class to score against).
 */
export function listImageFolder(root: string, o: ListOptions = {}): ImageFolder {
  if (!isDir(root)) throw new Error(`data folder '${root}' does not exist or is not a directory`);
  const classes = readdirSync(root)
    .filter((n) => !n.startsWith('.') && isDir(join(root, n)))
    .sort(byCodePoint);
  if (classes.length === 0) throw new Error(`'${root}' has no class folders: expected ${root}/<class>/<image>.{jpg,jpeg,png}`);

  const byClass = classes.map((c) =>
    readdirSync(join(root, c))
      .filter((n) => !n.startsWith('.') && IMAGE_EXTENSIONS.includes(extname(n).toLowerCase()))
      .sort(byCodePoint)
      .map((n) => join(root, c, n))
      .filter((p) => !isDir(p)),
  );
  const empty = classes.filter((_, i) => byClass[i]!.length === 0);
  if (empty.length === classes.length) throw new Error(`no images (${IMAGE_EXTENSIONS.join(', ')}) in the class folders of '${root}'`);
  if (empty.length > 0) throw new Error(`class folder(s) without images in '${root}': ${empty.slice(0, 10).join(', ')}${empty.length > 10 ? ', …' : ''}`);

  const files: string[] = [];
  const labels: number[] = [];
  const total = byClass.reduce((a, f) => a + f.length, 0);
  const limit = o.limit !== undefined && o.limit > 0 ? Math.min(o.limit, total) : total;
  if (limit === total) {
    byClass.forEach((fs, c) => fs.forEach((f) => (files.push(f), labels.push(c))));
  } else {
    // Round-robin: the first images of every class before the second of any, so a small --limit
    // still measures every class instead of only the alphabetically first ones.
    for (let i = 0; files.length < limit; i++) {
      for (let c = 0; c < classes.length && files.length < limit; c++) {
        const f = byClass[c]![i];
        if (f !== undefined) (files.push(f), labels.push(c));
      }
    }
  }
  return { root, classes, files, labels: Int32Array.from(labels) };
}

export interface DecodedBatch {
  /** [ok.length, 3, size, size], CLIP-normalised. */
  data: Float32Array;
  shape: [number, number, number, number];
  /** Indices (into the input list) of the images that decoded, in order: row r is files[ok[r]]. */
  ok: number[];
  /** The inputs that did not decode, with the reason. */
  failed: { file: string; reason: string }[];
}

/**
 * CLIP's eval transform over a list of files. preprocessBatch stops at the first undecodable input,
 * so when a batch fails we decode its files one by one to keep the good ones; the fast path (one
 * preprocessBatch call) is taken whenever every file is fine.
 */
export async function decodeFiles(files: readonly string[], size: number): Promise<DecodedBatch> {
  const per = 3 * size * size;
  try {
    const t = await preprocessBatch([...files], { size });
    return { data: t.data, shape: [files.length, 3, size, size], ok: files.map((_, i) => i), failed: [] };
  } catch {
    // fall through to per-file decoding
  }
  const parts = await Promise.all(
    files.map((f) =>
      preprocessBatch([f], { size, parallel: 1 }).then(
        (t) => ({ data: t.data }),
        (e: unknown) => ({ reason: (e as Error).message ?? String(e) }),
      ),
    ),
  );
  const ok: number[] = [];
  const failed: { file: string; reason: string }[] = [];
  parts.forEach((p, i) => ('data' in p ? ok.push(i) : failed.push({ file: files[i]!, reason: p.reason })));
  const data = new Float32Array(ok.length * per);
  ok.forEach((i, r) => data.set((parts[i] as { data: Float32Array }).data, r * per));
  return { data, shape: [ok.length, 3, size, size], ok, failed };
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function byCodePoint(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
