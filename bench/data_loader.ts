// Data pipeline throughput on CIFAR-10 JPEGs (32×32): the JPEG decoders alone, then the
// DataLoader end to end (decode + augment + tokenize, batches of 256) with 1 and 2 workers,
// uncached and cached, and CLIP's 224 px eval preprocessing.
//
// Needs ../shared/data/cifar10-train.tar.gz beside the repository (or CLIPKIT_CIFAR10_TAR); a
// subset is extracted into a temporary folder with `tar` and removed afterwards. The tokenizer
// is OpenAI's vocabulary from ../shared/data/clip-bpe when present, else a tiny trained one.
//
// Run alone: `node dist/bench/data_loader.js [--quick]`.

import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import jpeg from 'jpeg-js';
import sharp from 'sharp';
import type { Bench } from './bench.js';
import { imageFolder, type IndexedSource } from '../src/data/datasets.js';
import { DataLoader, type LoaderOptions, type TextTokenizer } from '../src/data/loader.js';
import { decodeImage } from '../src/data/image.js';
import { loadTokenizer, trainBpe } from '../src/tokenizer/index.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const sharedData = join(repoRoot, '..', 'shared', 'data');

interface Row {
  case: string;
  /** Items per second of wall-clock time. */
  perSec: number;
  /** Items per second of CPU time of the whole process (all threads): shows the cost of the work
   *  even when other processes share the cores, which skews wall-clock rates. */
  perCpuSec: number;
  note: string;
}

/** Wall and process CPU time of `fn`, in seconds. */
async function timed(fn: () => Promise<void> | void): Promise<{ wall: number; cpu: number }> {
  const c = process.cpuUsage();
  const t = performance.now();
  await fn();
  const d = process.cpuUsage(c);
  return { wall: (performance.now() - t) / 1e3, cpu: (d.user + d.system) / 1e6 };
}

export async function run(opts: { quick: boolean }): Promise<void> {
  const archive = process.env.CLIPKIT_CIFAR10_TAR ?? join(sharedData, 'cifar10-train.tar.gz');
  if (!existsSync(archive)) {
    console.log(`data loader benchmark skipped: no CIFAR-10 archive at ${archive} (set CLIPKIT_CIFAR10_TAR)`);
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), 'clipkit-bench-data-'));
  try {
    // Files are train/<class>/NNNN.jpg, 5000 per class: 0[0-4]* takes 500 of each (5000 in all).
    const pattern = opts.quick ? 'train/*/00[0-9]*.jpg' : 'train/*/0[0-4]*.jpg';
    execFileSync('tar', ['-xzf', archive, '-C', dir, '--wildcards', pattern]);
    const source = await imageFolder(join(dir, 'train'));
    const tokenizer = await benchTokenizer();
    console.log(`\ndata: ${source.size} CIFAR-10 JPEGs (32×32); load average now ${loadavg().map((x) => x.toFixed(2)).join(', ')}`);

    printRows('JPEG decoding, one thread (32×32 CIFAR-10 files read from memory)', await decoders(source, opts.quick ? 500 : 2000));
    printRows(`Tokenizing captions on the main thread`, await tokenizing(tokenizer));

    const rows: Row[] = [];
    const base = { batchSize: 256, tokenizer, seed: 0 };
    const add = async (name: string, src: IndexedSource, o: Partial<LoaderOptions>): Promise<void> => {
      rows.push(await throughput(name, src, { ...base, imageSize: 32, train: true, ...o } as LoaderOptions));
    };
    for (const workers of [1, 2]) await add(`train 32 px, uncached, ${workers} worker${workers > 1 ? 's' : ''}`, source, { workers });
    if (!opts.quick) for (const workers of [1, 2]) await add(`  same, decoder: 'sharp', ${workers} worker${workers > 1 ? 's' : ''}`, source, { workers, decoder: 'sharp' });
    for (const workers of [1, 2]) await add(`train 32 px, cached, ${workers} worker${workers > 1 ? 's' : ''}`, source, { workers, cacheDecoded: true });
    // 224 px output is 150× the pixels of 32 px: a subset keeps the run short.
    const small = subset(source, opts.quick ? 256 : 1024);
    for (const workers of [1, 2]) await add(`eval 224 px (CLIP preprocessing), ${workers} worker${workers > 1 ? 's' : ''}`, small, { workers, imageSize: 224, train: false, batchSize: 128 });
    printRows('DataLoader images/s (batches of 256; 224 px: 128), one epoch after a warm-up', rows);
    console.log('per CPU-second: CPU time of all of the process\'s threads; with an idle machine, wall-clock rates approach it × cores used.');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** For bench/run.ts. */
export const DATA: Bench[] = [{ name: 'loader', group: 'data', title: 'data loader throughput on CIFAR-10 (decode, augment, tokenize)', run }];

// ---------------------------------------------------------------------------------------

async function benchTokenizer(): Promise<TextTokenizer> {
  const bpe = join(sharedData, 'clip-bpe');
  if (existsSync(bpe)) return loadTokenizer(bpe);
  return trainBpe(['a photo of a cat', 'a blurry photo of the dog'], { vocabSize: 600 });
}

function subset(source: IndexedSource, n: number): IndexedSource {
  // Every k-th sample, so all classes are present.
  const k = Math.max(1, Math.floor(source.size / n));
  return { kind: 'indexed', size: Math.min(n, source.size), get: (i, ctx) => source.get(i * k, ctx) };
}

async function decoders(source: IndexedSource, n: number): Promise<Row[]> {
  const ctx = { epoch: 0, seed: 0, shuffle: false };
  const step = Math.max(1, Math.floor(source.size / n));
  const files = Array.from({ length: Math.min(n, source.size) }, (_, i) => {
    const img = source.get(i * step, ctx).image;
    return readFileSync('path' in img ? img.path : '');
  });
  const time = async (fn: (b: Buffer) => unknown): Promise<{ wall: number; cpu: number }> => {
    for (const f of files.slice(0, 50)) await fn(f); // warm-up
    const t = await timed(async () => {
      for (const f of files) await fn(f);
    });
    return { wall: files.length / t.wall, cpu: files.length / t.cpu };
  };
  const viaSharp = await time((b) => decodeImage(b));
  const viaJs = await time((b) => jpeg.decode(b, { useTArray: true, formatAsRGBA: false }));
  // How different the pixels are (jpeg-js replicates 4:2:0 chroma, libjpeg-turbo interpolates).
  let sum = 0;
  let count = 0;
  let over3 = 0;
  for (const f of files.slice(0, 200)) {
    const a = (await sharp(f).raw().toBuffer()) as Uint8Array;
    const b = jpeg.decode(f, { useTArray: true, formatAsRGBA: false }).data;
    for (let i = 0; i < a.length; i++) {
      const d = Math.abs(a[i]! - b[i]!);
      sum += d;
      if (d > 3) over3++;
    }
    count += a.length;
  }
  const diff = `vs sharp: mean |Δ| ${(sum / count).toFixed(2)} levels, ${((100 * over3) / count).toFixed(1)}% of values off by > 3`;
  return [
    { case: 'sharp (decodeImage)', perSec: viaSharp.wall, perCpuSec: viaSharp.cpu, note: `${(1e6 / viaSharp.wall).toFixed(0)} µs/image` },
    { case: 'jpeg-js 0.4.4', perSec: viaJs.wall, perCpuSec: viaJs.cpu, note: `${(1e6 / viaJs.wall).toFixed(0)} µs/image; ${diff}` },
  ];
}

async function tokenizing(tokenizer: TextTokenizer): Promise<Row[]> {
  // Distinct captions (the BPE caches words, so CIFAR's 180 prompt captions would be free).
  const words = ['red', 'small', 'photograph', 'of', 'a', 'dog', 'running', 'across', 'the', 'beach', 'at', 'sunset', 'with', 'friends', 'city', 'street', 'mountain', 'lake'];
  const captions = Array.from({ length: 2048 }, (_, i) => Array.from({ length: 12 }, (_, j) => words[(i * 7 + j * 13 + ((i * j) % 5)) % words.length]! + (j === 3 ? String(i) : '')).join(' '));
  const t = await timed(() => {
    for (let i = 0; i < captions.length; i += 256) tokenizer.encode(captions.slice(i, i + 256), { contextLength: 77, truncate: true });
  });
  const perSec = captions.length / t.wall;
  return [{ case: '12-word captions, partly new words', perSec, perCpuSec: captions.length / t.cpu, note: `${((256 / perSec) * 1e3).toFixed(1)} ms per batch of 256` }];
}

async function throughput(name: string, source: IndexedSource, opts: LoaderOptions): Promise<Row> {
  const dl = new DataLoader(source, opts);
  try {
    const t0 = performance.now();
    await dl.prepare();
    const prepMs = performance.now() - t0;
    // Warm-up: start the workers and the JIT on the epoch's last two batches.
    const nb = dl.batchesPerEpoch ?? 1;
    for await (const b of dl.batches(0, Math.max(0, nb - 2))) void b;
    let n = 0;
    const t = await timed(async () => {
      for await (const b of dl.batches(1)) n += b.keys.length;
    });
    const perSec = n / t.wall;
    const notes = [`${((opts.batchSize / perSec) * 1e3).toFixed(0)} ms/batch`];
    if (opts.cacheDecoded) notes.push(`caching took ${(prepMs / 1e3).toFixed(1)} s (${((source.size / prepMs) * 1e3).toFixed(0)} images/s)`);
    return { case: name, perSec, perCpuSec: n / t.cpu, note: notes.join('; ') };
  } finally {
    await dl.close();
  }
}

function printRows(title: string, rows: Row[]): void {
  const cells = rows.map((r) => [r.case, r.perSec.toFixed(0), r.perCpuSec.toFixed(0), r.note]);
  const header = ['case', 'per second', 'per CPU-second', 'notes'];
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]): string => c.map((x, i) => (i === 1 || i === 2 ? x.padStart(widths[i]!) : x.padEnd(widths[i]!))).join('  ').trimEnd();
  console.log(`\n${title}`);
  console.log(line(header));
  console.log(line(widths.map((w) => '-'.repeat(w))));
  for (const c of cells) console.log(line(c));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await run({ quick: process.argv.includes('--quick') });
}
