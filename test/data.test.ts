// Tests for the data pipeline: sources (src/data/datasets.ts, tar.ts), the loader
// (src/data/loader.ts) and its worker (src/data/worker.ts). All data is generated here in a
// temporary folder: small PNGs/JPEGs written with sharp, caption tables, a tar shard.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import * as tar from 'tar-stream';
import {
  captionTable,
  imageFolder,
  parsePromptTemplates,
  shuffleBuffer,
  webDataset,
  type IndexedSource,
  type Sample,
  type Source,
} from '../src/data/datasets.js';
import { augmentClip, CLIP_MEAN, CLIP_STD, preprocessClip } from '../src/data/image.js';
import { DataLoader, type Batch, type LoaderOptions } from '../src/data/loader.js';
import { expandBraces, splitKey } from '../src/data/tar.js';
import { decodeRgb, jpegInfo } from '../src/data/worker.js';
import { Rng } from '../src/nn/init.js';
import { trainBpe, type ClipTokenizer } from '../src/tokenizer/index.js';
import type { ClipBatch } from '../src/train/clip-trainer.js';

// ---- fixtures ------------------------------------------------------------------------

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
let dir: string;
let tokenizer: ClipTokenizer;

/** Seeded noise image of w×h, encoded as `format`. */
async function noiseImage(w: number, h: number, seed: number, format: 'png' | 'jpeg' | 'webp'): Promise<Buffer> {
  const r = new Rng(seed);
  const raw = Buffer.alloc(w * h * 3);
  // Smooth gradients plus noise: enough structure that crops and flips change the pixels.
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < 3; c++) raw[(y * w + x) * 3 + c] = (x * 7 + y * 3 * (c + 1) + r.int(40)) & 255;
    }
  }
  const img = sharp(raw, { raw: { width: w, height: h, channels: 3 } });
  return format === 'png' ? img.png().toBuffer() : format === 'webp' ? img.webp({ lossless: true }).toBuffer() : img.jpeg({ quality: 90 }).toBuffer();
}

/** A tar archive of `files` (name → bytes or text). */
async function makeTar(files: [string, Uint8Array | string][]): Promise<Buffer> {
  const pack = tar.pack();
  for (const [name, data] of files) pack.entry({ name }, typeof data === 'string' ? data : Buffer.from(data));
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

// Folder dataset: 3 classes × 4 images (mixed formats and sizes), one corrupt JPEG in "cat".
const FOLDER_CLASSES = ['cat', 'dog_breed', 'frog'];
let corruptJpeg: Buffer;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'clipkit-data-'));
  tokenizer = trainBpe(['a photo of a cat', 'a photo of the dog', 'a blurry photo', 'red green blue'], { vocabSize: 600 });
  const formats = ['png', 'jpeg', 'webp', 'jpeg'] as const;
  for (const [ci, cls] of FOLDER_CLASSES.entries()) {
    await mkdir(join(dir, 'folder', cls), { recursive: true });
    for (let i = 0; i < 4; i++) {
      const f = formats[i]!;
      const w = 20 + 3 * i + ci;
      const h = 18 + 2 * ci;
      await writeFile(join(dir, 'folder', cls, `${i}.${f === 'jpeg' ? 'jpg' : f}`), await noiseImage(w, h, ci * 10 + i, f));
    }
  }
  await writeFile(join(dir, 'folder', 'cat', 'notes.txt'), 'not an image');
  const good = await noiseImage(24, 24, 99, 'jpeg');
  corruptJpeg = good.subarray(0, Math.floor(good.length / 2));
  await mkdir(join(dir, 'corrupt', 'cat'), { recursive: true });
  await mkdir(join(dir, 'corrupt', 'dog'), { recursive: true });
  for (let i = 0; i < 6; i++) {
    await writeFile(join(dir, 'corrupt', i % 2 ? 'dog' : 'cat', `${i}.png`), await noiseImage(16 + i, 16, 200 + i, 'png'));
  }
  await writeFile(join(dir, 'corrupt', 'cat', 'bad.jpg'), corruptJpeg);
}, { timeout: 30_000 });

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function loader(source: Source, opts: Partial<LoaderOptions> = {}): DataLoader {
  return new DataLoader(source, { batchSize: 4, imageSize: 16, train: true, tokenizer, contextLength: 12, seed: 7, ...opts });
}

async function collect(dl: DataLoader, epoch: number, start = 0): Promise<Batch[]> {
  const out: Batch[] = [];
  for await (const b of dl.batches(epoch, start)) out.push(b);
  return out;
}

/** Everything of a batch that must be reproducible, in a comparable form. */
function fingerprint(batches: Batch[]): unknown[] {
  return batches.map((b) => ({
    index: b.index,
    keys: b.keys,
    captions: b.captions,
    labels: [...b.labels],
    tokens: [...b.tokens.data],
    shape: b.pixels.shape,
    pixels: Buffer.from(b.pixels.data.buffer, b.pixels.data.byteOffset, b.pixels.data.byteLength).toString('base64'),
  }));
}

// ---- sources ---------------------------------------------------------------------------

describe('imageFolder', () => {
  test('labels follow sorted class folders; captions fill templates with class names', async () => {
    const src = await imageFolder(join(dir, 'folder'), { classNames: { frog: 'tree frog' } });
    assert.deepEqual(src.classes, ['cat', 'dog breed', 'tree frog']);
    assert.equal(src.size, 12); // notes.txt is not an image
    const ctx = { epoch: 0, seed: 1, shuffle: true };
    const s0 = src.get(0, ctx);
    assert.equal(s0.key, 'cat/0.png');
    assert.equal(s0.label, 0);
    assert.deepEqual(s0.image, { path: join(dir, 'folder', 'cat', '0.png') });
    const s5 = src.get(5, ctx);
    assert.equal(s5.key, 'dog_breed/1.jpg');
    assert.equal(s5.label, 1);
    assert.ok(src.templates.some((t) => t.replace('{}', 'dog breed') === s5.caption), s5.caption);
    assert.equal(src.get(11, ctx).label, 2);
    assert.match(src.get(11, ctx).caption, /tree frog/);
  });

  test('templates are drawn from (seed, epoch, index): stable per epoch, varying across epochs', async () => {
    const templates = ['a {}', 'the {}', 'one {}', 'some {}', 'my {}'];
    const src = await imageFolder(join(dir, 'folder'), { templates });
    const caps = (epoch: number, seed = 1): string[] => Array.from({ length: src.size }, (_, i) => src.get(i, { epoch, seed, shuffle: true }).caption);
    assert.deepEqual(caps(0), caps(0));
    assert.notDeepEqual(caps(0), caps(1));
    assert.notDeepEqual(caps(0), caps(0, 2));
    await assert.rejects(imageFolder(join(dir, 'folder'), { templates: ['no placeholder'] }), /has no \{\}/);
    await assert.rejects(imageFolder(join(dir, 'missing')), /cannot list/);
  });

  test('parsePromptTemplates reads a clip-prompts.md section', () => {
    const md = [
      '# Prompts', '', '## CIFAR10', '', '```bash', 'classes = [', "    'airplane',", "    'automobile',", ']', '',
      'templates = [', "    'a photo of a {}.',", '    "a photo of the {}\'s shape.",', ']', '```', '',
      '## FacialEmotionRecognition2013', '```bash', 'classes = [', "    ['angry'],", "    ['happy', 'smiling'],", ']',
      'templates = [', "    'a face that looks {}.',", ']', '```',
    ].join('\n');
    assert.deepEqual(parsePromptTemplates(md, 'CIFAR10'), {
      classes: ['airplane', 'automobile'],
      templates: ['a photo of a {}.', "a photo of the {}'s shape."],
    });
    assert.deepEqual(parsePromptTemplates(md, 'FacialEmotionRecognition2013').classes, ['angry', 'happy']);
    assert.throws(() => parsePromptTemplates(md, 'CIFAR100'), /no "## CIFAR100" section/);
  });

  const promptsFile = join(repoRoot, '..', 'shared', 'data', 'clip-prompts.md');
  test('parsePromptTemplates on the shared clip-prompts.md: CIFAR-10 has 10 classes, 18 templates', { skip: !existsSync(promptsFile) && `no ${promptsFile}` }, async () => {
    const { classes, templates } = parsePromptTemplates(await readFile(promptsFile, 'utf8'), 'CIFAR10');
    assert.equal(classes.length, 10);
    assert.equal(classes[0], 'airplane');
    assert.equal(templates.length, 18);
    assert.ok(templates.every((t) => t.includes('{}')));
  });
});

describe('captionTable', () => {
  test('CSV: auto-detected columns, quoted fields, paths relative to the file or to root', async () => {
    const file = join(dir, 'pairs.csv');
    await writeFile(
      file,
      ['Filepath,Title,label', 'folder/cat/0.png,"a cat, sitting",3', `${join(dir, 'folder', 'frog', '1.jpg')},a "green" frog,0`, ''].join('\n'),
    );
    const src = await captionTable(file);
    assert.equal(src.size, 2);
    const ctx = { epoch: 0, seed: 0, shuffle: false };
    assert.deepEqual(src.get(0, ctx), { key: 'folder/cat/0.png', image: { path: join(dir, 'folder', 'cat', '0.png') }, caption: 'a cat, sitting', label: 3 });
    assert.equal(src.get(1, ctx).caption, 'a "green" frog');
    assert.deepEqual(src.get(1, ctx).image, { path: join(dir, 'folder', 'frog', '1.jpg') });
    const rooted = await captionTable(file, { root: join(dir, 'elsewhere') });
    assert.deepEqual(rooted.get(0, ctx).image, { path: join(dir, 'elsewhere', 'folder', 'cat', '0.png') });
  });

  test('TSV and JSONL, with explicit keys', async () => {
    const tsv = join(dir, 'pairs.tsv');
    await writeFile(tsv, 'file\ttext\tother\nfolder/cat/1.jpg\ta tab-separated caption\tx\n');
    const t = await captionTable(tsv);
    assert.equal(t.get(0, { epoch: 0, seed: 0, shuffle: false }).caption, 'a tab-separated caption');
    const jsonl = join(dir, 'pairs.jsonl');
    await writeFile(jsonl, '{"img": "folder/cat/2.webp", "desc": "a webp cat"}\n\n{"img": "folder/cat/3.jpg", "desc": "another"}\n');
    const j = await captionTable(jsonl, { imageKey: 'img', captionKey: 'desc' });
    assert.equal(j.size, 2);
    assert.equal(j.get(1, { epoch: 0, seed: 0, shuffle: false }).key, 'folder/cat/3.jpg');
    await assert.rejects(captionTable(jsonl), /no image column \(looked for image, filepath, path, file; has img, desc\)/);
  });

  test('a malformed row is an error naming the file and line', async () => {
    const csv = join(dir, 'bad.csv');
    await writeFile(csv, 'image,caption\na.png,fine\nb.png,too,many\n');
    await assert.rejects(captionTable(csv), (err: Error) => err.message.includes(csv) && /line 3/.test(err.message));
    const csv2 = join(dir, 'bad2.csv');
    await writeFile(csv2, 'image,caption\na.png,fine\n,missing image\n');
    await assert.rejects(captionTable(csv2), new RegExp(`${csv2.replace(/[\\^$.*+?()[\]{}|]/g, '\\$&')}: line 3: empty or missing "image"`));
    const jsonl = join(dir, 'bad.jsonl');
    await writeFile(jsonl, '{"image": "a.png", "caption": "ok"}\n{"image": "b.png", "caption": \n');
    await assert.rejects(captionTable(jsonl), /bad\.jsonl: line 2: not valid JSON/);
    await assert.rejects(captionTable(join(dir, 'pairs.txt')), /expected a \.csv, \.tsv or \.jsonl/);
    await assert.rejects(captionTable(join(dir, 'missing.csv')), /cannot read .*missing\.csv/);
  });
});

describe('webDataset', () => {
  let shard0: string;
  before(async () => {
    const files: [string, Uint8Array | string][] = [];
    for (let i = 0; i < 6; i++) {
      const key = `s/${String(i).padStart(4, '0')}`;
      files.push([`${key}.jpg`, await noiseImage(20 + i, 20, 300 + i, 'jpeg')], [`${key}.txt`, `caption ${i}\n`], [`${key}.cls`, String(i % 2)]);
    }
    files.push(['s/0006.txt', 'caption without image']); // incomplete
    files.push(['s/0007.png', await noiseImage(16, 16, 307, 'png')]); // incomplete
    files.push(['s/0008.png', await noiseImage(18, 16, 308, 'png')], ['s/0008.txt', 'a png sample']);
    shard0 = join(dir, 'shard-000.tar');
    await writeFile(shard0, await makeTar(files));
    const more: [string, Uint8Array | string][] = [];
    for (let i = 0; i < 5; i++) more.push([`t${i}.webp`, await noiseImage(16, 17, 400 + i, 'webp')], [`t${i}.txt`, `webp ${i}`]);
    await writeFile(join(dir, 'shard-001.tar'), await makeTar(more));
  });

  test('groups files by key, skips and counts incomplete samples', async () => {
    const ds = webDataset([shard0]);
    const got: Sample[] = [];
    for await (const s of ds.stream({ epoch: 0, seed: 0, shuffle: false })) got.push(s);
    assert.deepEqual(got.map((s) => s.key), ['shard-000.tar/s/0000', 'shard-000.tar/s/0001', 'shard-000.tar/s/0002', 'shard-000.tar/s/0003', 'shard-000.tar/s/0004', 'shard-000.tar/s/0005', 'shard-000.tar/s/0008']);
    assert.equal(got[2]!.caption, 'caption 2');
    assert.equal(got[3]!.label, 1);
    assert.equal(got[6]!.label, undefined);
    assert.ok('bytes' in got[0]!.image && got[0]!.image.bytes.length > 100);
    assert.equal(ds.stats.incomplete, 2);
  });

  test('brace patterns; shuffled order is seeded per epoch', async () => {
    const ds = webDataset(join(dir, 'shard-{000..001}.tar'), { shuffleBuffer: 4 });
    assert.equal(ds.shards.length, 2);
    const keys = async (ctx: { epoch: number; seed: number; shuffle: boolean }): Promise<string[]> => {
      const out: string[] = [];
      for await (const s of ds.stream(ctx)) out.push(s.key);
      return out;
    };
    const plain = await keys({ epoch: 0, seed: 1, shuffle: false });
    const a = await keys({ epoch: 0, seed: 1, shuffle: true });
    assert.equal(plain.length, 12);
    assert.deepEqual([...a].sort(), [...plain].sort());
    assert.notDeepEqual(a, plain);
    assert.deepEqual(await keys({ epoch: 0, seed: 1, shuffle: true }), a);
    assert.notDeepEqual(await keys({ epoch: 1, seed: 1, shuffle: true }), a);
  });

  test('loader over shards: resume, dropLast, a missing shard is an error', async () => {
    const ds = webDataset([shard0, join(dir, 'shard-001.tar')], { shuffleBuffer: 5 });
    const dl = loader(ds, { batchSize: 5, workers: 0 });
    try {
      const full = await collect(dl, 3);
      assert.equal(full.length, 2); // 12 samples: two full batches of 5, the rest dropped
      assert.deepEqual(fingerprint(await collect(dl, 3, 1)), fingerprint(full.slice(1)));
      const evalDl = loader(ds, { batchSize: 5, train: false, workers: 0 });
      const ev = await collect(evalDl, 0);
      assert.deepEqual(ev.map((b) => b.keys.length), [5, 5, 2]);
    } finally {
      await dl.close();
    }
    // A corrupt image in a stream is replaced by the next samples of the stream.
    const bad: [string, Uint8Array | string][] = [];
    for (let i = 0; i < 7; i++) bad.push([`b${i}.jpg`, i === 1 ? corruptJpeg : await noiseImage(16, 16, 500 + i, 'jpeg')], [`b${i}.txt`, `b ${i}`]);
    await writeFile(join(dir, 'bad-000.tar'), await makeTar(bad));
    const skipped: string[] = [];
    const bdl = loader(webDataset(join(dir, 'bad-000.tar')), { batchSize: 3, shuffle: false, workers: 1, onSkip: (key) => skipped.push(key) });
    try {
      const full = await collect(bdl, 0);
      assert.deepEqual(full.map((b) => b.keys.map((k) => k.split('/')[1])), [['b0', 'b3', 'b2'], ['b3', 'b4', 'b5']]);
      assert.deepEqual(skipped, ['bad-000.tar/b1']);
      assert.deepEqual(fingerprint(await collect(bdl, 0, 1)), fingerprint(full.slice(1)));
    } finally {
      await bdl.close();
    }
    const missing = loader(webDataset(join(dir, 'nope.tar')), { workers: 0 });
    await assert.rejects(collect(missing, 0), /nope\.tar/);
  });
});

test('expandBraces, splitKey, shuffleBuffer', async () => {
  assert.deepEqual(expandBraces('data-{000..003}.tar'), ['data-000.tar', 'data-001.tar', 'data-002.tar', 'data-003.tar']);
  assert.deepEqual(expandBraces('{a,b}-{8..10}'), ['a-8', 'a-9', 'a-10', 'b-8', 'b-9', 'b-10']);
  assert.deepEqual(expandBraces('plain.tar'), ['plain.tar']);
  assert.deepEqual(splitKey('dir/sub/000123.seg.jpg'), { key: 'dir/sub/000123', ext: 'seg.jpg' });
  async function* nums(): AsyncGenerator<number> {
    for (let i = 0; i < 50; i++) yield i;
  }
  const out: number[] = [];
  for await (const x of shuffleBuffer(nums(), 10, new Rng(3))) out.push(x);
  assert.deepEqual([...out].sort((a, b) => a - b), Array.from({ length: 50 }, (_, i) => i));
  assert.notDeepEqual(out, Array.from({ length: 50 }, (_, i) => i));
});

// ---- loader ----------------------------------------------------------------------------

describe('DataLoader', () => {
  let folder: IndexedSource;
  before(async () => {
    folder = await imageFolder(join(dir, 'folder'));
  });

  test('shapes, value ranges, labels, tokens', async () => {
    const dl = loader(folder, { batchSize: 5, workers: 1 });
    try {
      const batches = await collect(dl, 0);
      assert.equal(batches.length, 2); // 12 images, dropLast
      assert.equal(dl.batchesPerEpoch, 2);
      const b = batches[0]!;
      const forTrainer: ClipBatch = { ...b, groups: b.labels }; // what trainer.step takes
      assert.equal(forTrainer.pixels, b.pixels);
      assert.deepEqual(b.pixels.shape, [5, 3, 16, 16]);
      assert.equal(b.pixels.data.length, 5 * 3 * 16 * 16);
      assert.deepEqual(b.tokens.shape, [5, 12]);
      assert.equal(b.labels.length, 5);
      for (let i = 0; i < 5; i++) {
        assert.equal(b.labels[i], FOLDER_CLASSES.indexOf(b.keys[i]!.split('/')[0]!));
        assert.equal(b.tokens.data[i * 12], tokenizer.sotToken);
        assert.ok(b.captions[i]!.length > 0);
      }
      // ToTensor + Normalize: every value within [(0 - mean) / std, (1 - mean) / std] per channel.
      const plane = 16 * 16;
      for (let i = 0; i < b.pixels.data.length; i++) {
        const c = Math.floor(i / plane) % 3;
        const v = b.pixels.data[i]!;
        assert.ok(v >= -CLIP_MEAN[c]! / CLIP_STD[c]! - 1e-6 && v <= (1 - CLIP_MEAN[c]!) / CLIP_STD[c]! + 1e-6, `value ${v}`);
      }
      assert.deepEqual(dl.stats.skipped, 0);
      assert.equal(dl.stats.batches, 2);
      assert.equal(dl.stats.samples, 10);
      const all = new Set(batches.flatMap((x) => x.keys));
      assert.equal(all.size, 10); // no duplicates within an epoch
    } finally {
      await dl.close();
    }
    await assert.rejects(collect(dl, 0), /closed/);
  });

  test('deterministic: same seed → same batches (workers 0, 1, 2); other seed or epoch → other order', async () => {
    const runs: unknown[][] = [];
    for (const workers of [1, 2, 0]) {
      const dl = loader(folder, { workers, prefetch: 3 });
      try {
        runs.push(fingerprint(await collect(dl, 1)));
      } finally {
        await dl.close();
      }
    }
    assert.deepEqual(runs[1], runs[0]);
    assert.deepEqual(runs[2], runs[0]);
    const other = loader(folder, { workers: 0, seed: 8 });
    const keysOf = (f: unknown[]): string[] => f.flatMap((b) => (b as { keys: string[] }).keys);
    assert.notDeepEqual(keysOf(fingerprint(await collect(other, 1))), keysOf(runs[0]!));
    assert.notDeepEqual(keysOf(fingerprint(await collect(other, 2))), keysOf(fingerprint(await collect(other, 1))));
  });

  test('resume: batches(epoch, k) is the tail of the full epoch', async () => {
    const dl = loader(folder, { batchSize: 3, workers: 1 });
    try {
      const full = await collect(dl, 4);
      assert.equal(full.length, 4);
      const tail = await collect(dl, 4, 2);
      assert.deepEqual(tail.map((b) => b.index), [2, 3]);
      assert.deepEqual(fingerprint(tail), fingerprint(full.slice(2)));
    } finally {
      await dl.close();
    }
  });

  test('an unreadable image is skipped, counted and reported; batches stay full and resumable', async () => {
    const src = await imageFolder(join(dir, 'corrupt')); // 7 images, cat/bad.jpg is truncated
    const skipped: string[] = [];
    const dl = loader(src, { batchSize: 3, workers: 1, onSkip: (key, err) => skipped.push(`${key}: ${err.message}`) });
    try {
      for (const epoch of [0, 1, 2]) {
        const full = await collect(dl, epoch);
        assert.equal(full.length, 2);
        for (const b of full) {
          assert.equal(b.keys.length, 3);
          assert.ok(!b.keys.includes('cat/bad.jpg'));
          assert.equal(new Set(b.keys).size, 3);
        }
        for (let k = 1; k < full.length; k++) assert.deepEqual(fingerprint(await collect(dl, epoch, k)), fingerprint(full.slice(k)));
      }
      assert.ok(dl.stats.skipped >= 1);
      assert.ok(skipped.length === dl.stats.skipped && skipped.every((s) => s.startsWith('cat/bad.jpg: ') && /corrupt|premature|cannot decode/i.test(s)), skipped.join('\n'));
    } finally {
      await dl.close();
    }
    // Without dropLast the epoch covers every readable image exactly once... plus fills.
    const ev = loader(src, { batchSize: 3, train: false, workers: 0 });
    const keys = (await collect(ev, 0)).flatMap((b) => b.keys);
    assert.deepEqual([...new Set(keys)].sort(), ['cat/0.png', 'cat/2.png', 'cat/4.png', 'dog/1.png', 'dog/3.png', 'dog/5.png']);
    assert.equal(ev.stats.skipped, 1);
  });

  test('eval transform has no randomness and is CLIP preprocessing (PIL-exact)', async () => {
    const a = loader(folder, { train: false, workers: 0, decoder: 'sharp', imageSize: 24 });
    const b = loader(folder, { train: false, workers: 0, decoder: 'sharp', imageSize: 24, seed: 99 });
    const [ea, eb] = [await collect(a, 0), await collect(b, 5)];
    assert.deepEqual(fingerprint(ea).map((x) => ({ ...(x as object), captions: 0, tokens: 0 })), fingerprint(eb).map((x) => ({ ...(x as object), captions: 0, tokens: 0 })));
    assert.deepEqual(ea[0]!.keys, ['cat/0.png', 'cat/1.jpg', 'cat/2.webp', 'cat/3.jpg']); // unshuffled
    const per = 3 * 24 * 24;
    for (const [i, key] of ea[0]!.keys.entries()) {
      const ref = await preprocessClip(join(dir, 'folder', key), { size: 24 });
      assert.deepEqual(ea[0]!.pixels.data.subarray(i * per, (i + 1) * per), ref, key);
    }
  });

  test('train augmentation is augmentClip seeded per sample; cached equals uncached', async () => {
    const opts = { batchSize: 6, workers: 0, decoder: 'sharp' as const, scale: [0.5, 1] as [number, number] };
    const dl = loader(folder, opts);
    const [first] = await collect(dl, 2);
    const per = 3 * 16 * 16;
    for (const [i, key] of first!.keys.entries()) {
      const index = [...Array(folder.size).keys()].find((j) => folder.get(j, { epoch: 2, seed: 7, shuffle: true }).key === key)!;
      const rng = new Rng(`aug:7:2:${index}`);
      const ref = await augmentClip(join(dir, 'folder', key), { size: 16, rng: () => rng.next(), scale: [0.5, 1] });
      assert.deepEqual(first!.pixels.data.subarray(i * per, (i + 1) * per), ref, key);
    }
    const progress: number[] = [];
    const cached = loader(folder, { ...opts, workers: 2, cacheDecoded: true, onProgress: (done, total) => progress.push(done / total) });
    try {
      await cached.prepare();
      assert.equal(cached.stats.cached, 12);
      assert.equal(progress.at(-1), 1);
      assert.deepEqual(fingerprint(await collect(cached, 2)), fingerprint(await collect(dl, 2)));
    } finally {
      await cached.close();
    }
  });

  test('jpeg-js and sharp decode JPEGs alike; non-JPEGs and unusual JPEGs go to sharp', async () => {
    const jpg = await noiseImage(24, 20, 5, 'jpeg');
    assert.deepEqual(jpegInfo(jpg), { width: 24, height: 20 });
    assert.equal(jpegInfo(await noiseImage(8, 8, 5, 'png')), undefined);
    assert.equal(jpegInfo(await sharp(jpg).withMetadata({ orientation: 6 }).jpeg().toBuffer()), undefined); // EXIF
    const a = await decodeRgb({ bytes: jpg }, 'jpeg-js');
    const b = await decodeRgb({ bytes: jpg }, 'sharp');
    assert.equal(a.width, 24);
    assert.equal(a.height, 20);
    let sum = 0;
    for (let i = 0; i < a.data.length; i++) sum += Math.abs(a.data[i]! - b.data[i]!);
    assert.ok(sum / a.data.length < 4, `mean difference ${sum / a.data.length}`); // chroma upsampling differs
    await assert.rejects(decodeRgb({ bytes: corruptJpeg }, 'jpeg-js'), /cannot decode image/);
    await assert.rejects(decodeRgb({ path: join(dir, 'nope.jpg') }), /cannot read image .*nope\.jpg: no such file/);
  });

  test('prefetch: `prefetch` batches are prepared while the consumer works; stopping early is clean', async () => {
    const asked: number[] = [];
    const spy: IndexedSource = { kind: 'indexed', size: folder.size, get: (i, ctx) => (asked.push(i), folder.get(i, ctx)) };
    const dl = loader(spy, { batchSize: 2, train: false, workers: 1, prefetch: 2 }); // unshuffled: index = position
    const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
    try {
      const waits: number[] = [];
      const it = dl.batches(0)[Symbol.asyncIterator]();
      for (;;) {
        const t = performance.now();
        const r = await it.next();
        waits.push(performance.now() - t);
        if (r.done) break;
        if (r.value.index === 0) {
          // While batch 0 is held, batches 1 and 2 (positions 2..5) are being made, and no more.
          await sleep(150);
          assert.equal(Math.max(...asked), 5);
        }
        await sleep(80); // "the training step"
      }
      // After the first batch (worker start-up) the next ones are ready, or nearly, when asked for.
      const later = waits.slice(1, -1);
      assert.ok(later.reduce((a, b) => a + b, 0) < 80 * later.length * 0.5, `waits ${waits.map((w) => w.toFixed(1)).join(', ')} ms`);
      for await (const b of dl.batches(1)) {
        assert.equal(b.index, 0);
        break; // abandons the prefetched batches in flight
      }
      assert.equal((await collect(dl, 1, 5)).length, 1);
    } finally {
      await dl.close();
    }
  });

  test('errors other than unreadable images surface with the sample key', async () => {
    const broken: IndexedSource = {
      kind: 'indexed',
      size: 4,
      get: (i) => ({ key: `item-${i}`, image: { bytes: 42 as unknown as Uint8Array }, caption: 'x' }),
    };
    for (const workers of [0, 1]) {
      const dl = loader(broken, { workers });
      try {
        await assert.rejects(collect(dl, 0), /worker failed on sample item-\d/);
      } finally {
        await dl.close();
      }
    }
    assert.throws(() => loader(webDataset('x.tar'), { cacheDecoded: true }), /cacheDecoded needs an indexed source/);
  });
});
