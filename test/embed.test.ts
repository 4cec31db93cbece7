// clipkit embed end to end on a tiny random model: a folder by class, a caption table and tar shards;
// rows equal to the in-process towers; the output loads with `clipkit index`; sharded runs merge to
// the unsharded result; float16; and a run killed with SIGKILL mid-way resumes without losing or
// duplicating an item.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import * as tar from 'tar-stream';
import { preprocessClip } from '../src/data/image.js';
import { normalizeRows } from '../src/eval/zeroshot.js';
import { NpyReader, readNpy } from '../src/index/npy.js';
import { VectorStore } from '../src/index/store.js';
import { ClipModel } from '../src/models/clip-model.js';
import { fromOpenClip } from '../src/models/config.js';
import { trainBpe } from '../src/tokenizer/index.js';

const work = mkdtempSync(join(tmpdir(), 'clipkit-embed-'));
after(() => rmSync(work, { recursive: true, force: true }));
const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const env = { ...process.env, CLIPKIT_CACHE: join(work, 'cache'), CLIPKIT_THREADS: '1' };
const run = (cmd: string, ...args: string[]) => spawnSync(process.execPath, [CLI, cmd, ...args], { encoding: 'utf8', timeout: 120_000, env });
const modelDir = join(work, 'model');
const data = join(work, 'data');
const CLASSES = { red: [220, 30, 30], green: [30, 200, 40], blue: [20, 40, 230] } as const;
const PER_CLASS = 8;
let model: ClipModel;
const tokenizer = trainBpe(
  Array.from({ length: 90 }, (_, i) => `a photo of a ${Object.keys(CLASSES)[i % 3]} thing.`),
  { vocabSize: 600 },
);

async function pngOf(rgb: readonly number[], w: number, h: number, seed: number): Promise<Buffer> {
  const px = Buffer.alloc(w * h * 3);
  for (let i = 0; i < px.length; i++) px[i] = (rgb[i % 3]! + ((i * 31 + seed * 7) % 45)) & 255;
  return sharp(px, { raw: { width: w, height: h, channels: 3 } }).png().toBuffer();
}

before(async () => {
  const config = fromOpenClip({
    embed_dim: 16,
    vision_cfg: { image_size: 32, layers: 1, width: 32, patch_size: 8, head_width: 32 },
    text_cfg: { context_length: 16, vocab_size: tokenizer.vocabSize, width: 32, heads: 2, layers: 1 },
  });
  model = ClipModel.random(config, 2, { threads: 1 });
  await model.save(modelDir);
  tokenizer.save(join(modelDir, 'tokenizer.json'));
  for (const [name, rgb] of Object.entries(CLASSES)) {
    mkdirSync(join(data, name), { recursive: true });
    for (let k = 0; k < PER_CLASS; k++) writeFileSync(join(data, name, `${k}.png`), await pngOf(rgb, 30 + 2 * k, 24 + k, k));
  }
  writeFileSync(join(data, 'green', 'broken.png'), 'this is not a png'); // sorts after 0–7.png
});

const N = 3 * PER_CLASS; // decodable images

interface Meta {
  index: number;
  key: string;
  path?: string;
  shard?: string;
  caption?: string;
  width: number;
  height: number;
  label?: number;
  class?: string;
}
const metaOf = (dir: string): Meta[] =>
  readFileSync(join(dir, 'metadata.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Meta);

test('a folder by class with captions: rows equal the towers, metadata, failures, index loads it', async () => {
  const out = join(work, 'out-folder');
  const res = run('embed', data, '--out', out, '--model', modelDir, '--captions', '--batch-size', '4', '--part-rows', '5');
  assert.equal(res.status, 0, res.stderr);
  assert.match(res.stderr, /embed: \d+\/25 \(100\.0%\) · [\d.]+ images\/s .*1 unreadable/);
  assert.match(res.stdout, /embedded 24 images, 1 unreadable/);
  assert.match(res.stdout, /clipkit index/);

  const img = readNpy(join(out, 'embeddings.npy'));
  const txt = readNpy(join(out, 'text_embeddings.npy'));
  assert.deepEqual(img.shape, [N, 16]);
  assert.deepEqual(txt.shape, [N, 16]);
  const meta = metaOf(out);
  assert.equal(meta.length, N);
  assert.deepEqual(meta.map((m) => m.index), [...Array(8).keys(), ...Array.from({ length: 8 }, (_, i) => 8 + i), ...Array.from({ length: 8 }, (_, i) => 17 + i)]); // 16 = broken.png
  const m0 = meta.find((m) => m.key === 'blue/3.png')!;
  assert.deepEqual({ ...m0, path: undefined }, { index: 3, key: 'blue/3.png', path: undefined, caption: 'a photo of a blue.', width: 36, height: 27, label: 0, class: 'blue' });
  assert.equal(m0.path, join(data, 'blue', '3.png'));

  // Row 3 equals the in-process tower's unit vector; so does its caption's.
  const want = normalizeRows(await model.encodeImage({ data: await preprocessClip(m0.path!, { size: 32 }), shape: [1, 3, 32, 32] })).data;
  for (let j = 0; j < 16; j++) assert.ok(Math.abs(img.data[3 * 16 + j]! - want[j]!) < 1e-4);
  const wantText = normalizeRows(await model.encodeText(tokenizer.encode(['a photo of a blue.'], { contextLength: 16 }))).data;
  for (let j = 0; j < 16; j++) assert.ok(Math.abs(txt.data[3 * 16 + j]! - wantText[j]!) < 1e-4);

  const info = JSON.parse(readFileSync(join(out, 'embed-info.json'), 'utf8')) as { rows: number; failed: { index: number; key: string; error: string }[] };
  assert.equal(info.rows, N);
  assert.equal(info.failed.length, 1);
  assert.equal(info.failed[0]!.key, 'green/broken.png');
  assert.match(info.failed[0]!.error, /broken\.png/);

  // `clipkit index <out>` picks embeddings.npy + metadata.jsonl.
  const db = join(work, 'db');
  const ix = run('index', out, '--db', db, '--json');
  assert.equal(ix.status, 0, ix.stderr);
  const store = await VectorStore.open(db);
  try {
    assert.equal(await store.count(), N);
    const [hit] = await store.search(want, 1);
    assert.equal(hit!.path, m0.path);
    assert.equal(hit!.caption, 'a photo of a blue.');
  } finally {
    store.close();
  }

  // A rerun of a finished job is a no-op (but re-merges); other settings on the same --out are refused.
  const again = run('embed', data, '--out', out, '--model', modelDir, '--captions', '--batch-size', '4', '--part-rows', '5');
  assert.equal(again.status, 0, again.stderr);
  assert.match(again.stdout, /embedded 0 images; 25 done by an earlier run/);
  const other = run('embed', data, '--out', out, '--model', modelDir, '--captions', '--dtype', 'float16');
  assert.equal(other.status, 1);
  assert.match(other.stderr, /other settings \(dtype: "float32" → "float16"\)/);
});

test('--shard i/n: the merged shards equal the unsharded run; float16', () => {
  const one = join(work, 'out-one');
  assert.equal(run('embed', data, '--out', one, '--model', modelDir, '--batch-size', '5').status, 0);
  const sharded = join(work, 'out-sharded');
  const a = run('embed', data, '--out', sharded, '--model', modelDir, '--shard', '1/3', '--batch-size', '3');
  assert.equal(a.status, 0, a.stderr);
  assert.match(a.stdout, /merging waits for shard\(s\) 0\/3, 2\/3/);
  assert.ok(!existsSync(join(sharded, 'embeddings.npy')));
  assert.equal(run('embed', data, '--out', sharded, '--model', modelDir, '--shard', '0/3', '--workers', '2', '--batch-size', '2').status, 0);
  const last = run('embed', data, '--out', sharded, '--model', modelDir, '--shard', '2/3', '--json');
  assert.equal(last.status, 0, last.stderr);
  assert.equal((JSON.parse(last.stdout) as { merged: { rows: number } }).merged.rows, N);
  // Shard 1/3 holds items 1, 4, 7, …: exactly index % 3 == 1.
  const m1 = readFileSync(join(sharded, 'parts', 's1of3-000000.jsonl'), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as Meta).index);
  assert.ok(m1.every((i) => i % 3 === 1));
  const x = readNpy(join(one, 'embeddings.npy'));
  const y = readNpy(join(sharded, 'embeddings.npy'));
  assert.deepEqual(y.shape, x.shape);
  for (let i = 0; i < x.data.length; i++) assert.ok(Math.abs(x.data[i]! - y.data[i]!) < 1e-6);
  assert.deepEqual(metaOf(sharded), metaOf(one));
  // --merge alone rewrites the same outputs.
  assert.equal(run('embed', '--merge', '--out', sharded).status, 0);
  assert.deepEqual(readNpy(join(sharded, 'embeddings.npy')).data, y.data);

  const half = join(work, 'out-f16');
  assert.equal(run('embed', data, '--out', half, '--model', modelDir, '--dtype', 'float16').status, 0);
  const r = NpyReader.open(join(half, 'embeddings.npy'));
  assert.equal(r.header.dtype, 'float16');
  const h = r.readRows(0, r.rows);
  r.close();
  for (let i = 0; i < x.data.length; i++) assert.ok(Math.abs(x.data[i]! - h[i]!) < 1e-3);
});

test('killed with SIGKILL mid-run, a rerun finishes with every item exactly once', async () => {
  const out = join(work, 'out-killed');
  const args = [CLI, 'embed', data, '--out', out, '--model', modelDir, '--batch-size', '2', '--part-rows', '2'];
  const child = spawn(process.execPath, args, { env: { ...env, CLIPKIT_TEST_EMBED_DELAY_MS: '150' }, stdio: 'ignore' });
  const manifest = join(out, 'parts', 's0of1.json');
  const parts = (): number => {
    try {
      return (JSON.parse(readFileSync(manifest, 'utf8')) as { parts: unknown[] }).parts.length;
    } catch {
      return 0;
    }
  };
  const t0 = Date.now();
  while (parts() < 3 && Date.now() - t0 < 60_000) await new Promise((r) => setTimeout(r, 20));
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
  const m = JSON.parse(readFileSync(manifest, 'utf8')) as { done: boolean; nextIndex: number; parts: unknown[] };
  assert.equal(m.done, false, 'the child finished before it was killed: the test proves nothing');
  assert.ok(m.nextIndex < 25);
  assert.ok(!existsSync(join(out, 'embeddings.npy')));
  // Debris a crash can leave: a part the manifest never listed, a half-written file.
  writeFileSync(join(out, 'parts', 's0of1-000099.npy'), 'orphan');
  writeFileSync(join(out, 'parts', 's0of1-000100.jsonl.tmp'), 'partial');

  const res = run('embed', data, '--out', out, '--model', modelDir, '--batch-size', '2', '--part-rows', '2', '--json');
  assert.equal(res.status, 0, res.stderr);
  const s = JSON.parse(res.stdout) as { embedded: number; failed: number; resumed: number; merged: { rows: number } };
  assert.ok(s.resumed >= 6, `resumed ${s.resumed}`);
  assert.equal(s.resumed + s.embedded + s.failed, 25);
  assert.equal(s.merged.rows, N);
  const meta = metaOf(out);
  assert.deepEqual(meta.map((x) => x.index), metaOf(join(work, 'out-one')).map((x) => x.index));
  const x = readNpy(join(work, 'out-one', 'embeddings.npy'));
  const y = readNpy(join(out, 'embeddings.npy'));
  for (let i = 0; i < x.data.length; i++) assert.ok(Math.abs(x.data[i]! - y.data[i]!) < 1e-6);
  const left = readdirSync(join(out, 'parts'));
  assert.ok(!left.includes('s0of1-000099.npy') && !left.some((f) => f.endsWith('.tmp')), left.join(' '));
});

test('tar shards and a caption table', async () => {
  const shards: string[] = [];
  for (let s = 0; s < 2; s++) {
    const pack = tar.pack();
    for (let k = 0; k < 3; k++) {
      pack.entry({ name: `s${s}k${k}.png` }, await pngOf([40 * k, 100, 200 - 50 * s], 20, 20, k));
      pack.entry({ name: `s${s}k${k}.txt` }, `caption ${s} ${k}`);
    }
    pack.entry({ name: `s${s}lonely.png` }, await pngOf([1, 2, 3], 8, 8, 0)); // no caption: not a sample
    pack.finalize();
    const chunks: Buffer[] = [];
    for await (const c of pack) chunks.push(c as Buffer);
    shards.push(join(work, `shard-${s}.tar`));
    writeFileSync(shards.at(-1)!, Buffer.concat(chunks));
  }
  const out = join(work, 'out-tar');
  const res = run('embed', ...shards, '--out', out, '--model', modelDir, '--captions', '--shard', '0/1');
  assert.equal(res.status, 0, res.stderr);
  const meta = metaOf(out);
  assert.equal(meta.length, 6);
  assert.deepEqual(meta[4], { index: 4, key: 'shard-1.tar/s1k1', shard: shards[1], caption: 'caption 1 1', width: 20, height: 20 });
  assert.deepEqual(readNpy(join(out, 'text_embeddings.npy')).shape, [6, 16]);

  const table = join(work, 'pairs.jsonl');
  writeFileSync(table, ['{"image": "data/red/0.png", "caption": "first"}', '{"image": "data/blue/1.png", "caption": "second"}'].join('\n'));
  const tout = join(work, 'out-table');
  const t = run('embed', table, '--out', tout, '--model', modelDir, '--captions');
  assert.equal(t.status, 0, t.stderr);
  assert.deepEqual(metaOf(tout).map((m) => [m.caption, m.path]), [
    ['first', join(work, 'data', 'red', '0.png')],
    ['second', join(work, 'data', 'blue', '1.png')],
  ]);
});

test('usage errors', () => {
  assert.equal(run('embed', data).status, 2); // no --out
  assert.match(run('embed', data, '--out', join(work, 'x'), '--shard', '3/3').stderr, /--shard must be i\/n with 0 ≤ i < n/);
  assert.match(run('embed', join(work, 'nope'), '--out', join(work, 'x'), '--model', modelDir).stderr, /does not exist/);
  const flat = join(work, 'flat');
  mkdirSync(flat);
  writeFileSync(join(flat, 'a.png'), readFileSync(join(data, 'red', '0.png')));
  assert.match(run('embed', flat, '--out', join(work, 'x'), '--model', modelDir, '--captions').stderr, /--captions: this input has no captions/);
  const ok = run('embed', flat, '--out', join(work, 'out-flat'), '--model', modelDir, '--json');
  assert.equal(ok.status, 0, ok.stderr);
  assert.equal(metaOf(join(work, 'out-flat'))[0]!.key, 'a.png');
  assert.match(run('embed', '--merge', '--out', join(work, 'nothing')).stderr, /has no embedding parts/);
});
