// Evaluation: zero-shot scoring on hand-made features with known answers, prompt ensembles against a
// direct per-prompt computation, retrieval recall on a constructed case with known ranks, the linear
// probe on separable and on shuffled synthetic data, and `clipkit eval` end to end on a tiny model.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import type { Features } from '../src/models/clip-model.js';
import { ClipModel } from '../src/models/clip-model.js';
import { fromOpenClip } from '../src/models/config.js';
import { trainBpe } from '../src/tokenizer/index.js';
import { classNameOf, classifierWeights, decodeFiles, encodeTexts, linearProbe, listImageFolder, normalizeRows, promptEnsemble, promptsFor, retrieval, stratifiedSplit, takeRows, TEMPLATES, zeroShot } from '../src/eval/index.js';
import { Rng } from '../src/nn/init.js';

const feats = (rows: number[][]): Features => ({ data: Float32Array.from(rows.flat()), shape: [rows.length, rows[0]!.length] });
const identity = (n: number): Features => feats(Array.from({ length: n }, (_, i) => Array.from({ length: n }, (_, j) => (i === j ? 1 : 0))));
const close = (a: number, b: number, tol = 1e-6): boolean => Math.abs(a - b) <= tol;

// ------------------------------------------------------------------------ zero-shot scoring

test('zeroShot: known top-1, top-k with fewer than 5 classes, per-class accuracy and confusion', async () => {
  // Weights = identity, so an image's scores are its own coordinates.
  const images = feats([
    [0.9, 0.1, 0.0], // label 0: rank 0
    [0.2, 0.9, 0.1], // label 2: rank 2 (0.9 and 0.2 ahead)
    [0.0, 0.3, 0.8], // label 2: rank 0
    [0.5, 0.4, 0.1], // label 1: rank 1
  ]);
  const r = await zeroShot(images, identity(3), Int32Array.of(0, 2, 2, 1), { confusion: true });
  assert.equal(r.top1, 2 / 4);
  assert.equal(r.topK, 3); // min(5, C)
  assert.equal(r.top5, 1); // every label is within the top 3 of 3 classes
  assert.deepEqual(r.perClass, [1, 0, 0.5]);
  assert.deepEqual(r.confusion, [
    [1, 0, 0],
    [1, 0, 0],
    [0, 1, 1],
  ]);
  // Image scale never changes the ranking.
  const scaled = { data: images.data.map((v) => 7 * v), shape: images.shape };
  assert.equal((await zeroShot(scaled, identity(3), Int32Array.of(0, 2, 2, 1))).top1, 0.5);
  // A class without images has no accuracy.
  assert.deepEqual((await zeroShot(feats([[1, 0, 0]]), identity(3), Int32Array.of(0))).perClass, [1, null, null]);
});

test('zeroShot: top-5 counts ranks 0..4 among 7 classes; ties go to the lower class index', async () => {
  const scores = [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]; // class c has rank c
  const images = feats([scores, scores, scores]);
  const r = await zeroShot(images, identity(7), Int32Array.of(4, 5, 0));
  assert.equal(r.topK, 5);
  assert.ok(close(r.top1, 1 / 3));
  assert.ok(close(r.top5, 2 / 3)); // ranks 4 and 0 hit, rank 5 misses

  // Exact ties: classes 0 and 1 score the same; class 0 comes first.
  const tied = feats([
    [1, 1, 0],
    [1, 1, 0],
  ]);
  const t = await zeroShot(tied, identity(3), Int32Array.of(0, 1), { confusion: true });
  assert.equal(t.top1, 0.5);
  assert.deepEqual(t.confusion![1], [1, 0, 0]);
});

test('zeroShot rejects mismatched inputs', async () => {
  await assert.rejects(zeroShot(feats([[1, 0]]), identity(3), Int32Array.of(0)), /feature dimension 2, expected 3/);
  await assert.rejects(zeroShot(feats([[1, 0, 0]]), identity(3), Int32Array.of(3)), /label 3 outside/);
  await assert.rejects(zeroShot(feats([[1, 0, 0]]), identity(3), Int32Array.of(0, 1)), /2 labels for 1 images/);
});

// ------------------------------------------------------------------------ prompt ensembles

test('promptEnsemble averages the normalised prompt embeddings, then renormalises', () => {
  // Class 0: [3, 0] and [0, 4] → unit [1, 0], [0, 1] → mean [.5, .5] → [√½, √½]
  // (the mean of the raw rows would give [0.6, 0.8]). Class 1: one direction twice.
  const w = promptEnsemble(feats([[3, 0], [0, 4], [0, -2], [0, -5]]), 2, 2);
  assert.deepEqual(w.shape, [2, 2]);
  assert.ok(close(w.data[0]!, Math.SQRT1_2) && close(w.data[1]!, Math.SQRT1_2));
  assert.ok(close(w.data[2]!, 0) && close(w.data[3]!, -1));
  assert.deepEqual(promptsFor('cat', ['a {}.', '{} and {}']), ['a cat.', 'cat and cat']);
});

/** A tiny CLIP with a BPE vocabulary trained on a few captions (vocab sizes match). */
function tinyModelAndTokenizer() {
  const words = ['red thing', 'green', 'blue', 'cat', 'dog', 'photo', 'picture'];
  const corpus = Array.from({ length: 200 }, (_, i) => `a ${i % 2 ? 'photo' : 'picture'} of a ${words[i % words.length]}.`);
  const tokenizer = trainBpe(corpus, { vocabSize: 560 });
  const config = fromOpenClip({
    embed_dim: 16,
    vision_cfg: { image_size: 32, layers: 1, width: 32, patch_size: 8, head_width: 16 },
    text_cfg: { context_length: 32, vocab_size: tokenizer.vocabSize, width: 32, heads: 2, layers: 1 },
  });
  return { model: ClipModel.random(config, 3, { threads: 1 }), tokenizer };
}

test('classifierWeights equals the per-prompt computation (full context, one prompt at a time)', async () => {
  const { model, tokenizer } = tinyModelAndTokenizer();
  const classes = ['cat', 'dog', 'red thing'];
  const templates = TEMPLATES.cifar10.slice(0, 4);
  // batchSize 8 → two classes per call, so the chunking is exercised too.
  const w = await classifierWeights(model, tokenizer, classes, templates, { batchSize: 8 });
  const D = model.config.embedDim;
  assert.deepEqual(w.shape, [3, D]);
  for (let c = 0; c < classes.length; c++) {
    const mean = new Float64Array(D);
    for (const p of promptsFor(classes[c]!, templates)) {
      const ids = tokenizer.encode([p], { contextLength: model.config.text.contextLength, truncate: true });
      const unit = normalizeRows(await model.encodeText(ids)).data;
      for (let j = 0; j < D; j++) mean[j]! += unit[j]! / templates.length;
    }
    const norm = Math.hypot(...mean);
    let worst = 0;
    for (let j = 0; j < D; j++) worst = Math.max(worst, Math.abs(w.data[c * D + j]! - mean[j]! / norm));
    assert.ok(worst < 1e-5, `class ${c}: max difference ${worst}`);
  }
  await assert.rejects(classifierWeights(model, tokenizer, ['cat'], ['no placeholder']), /has no "\{\}"/);
});

// ------------------------------------------------------------------------ retrieval

test('retrieval: recall@k both ways on a constructed case with known ranks and several texts per image', async () => {
  // Images are scaled unit vectors e0..e3 (D = 5); texts are unit vectors whose first three
  // coordinates are their cosines with images 0, 1, 2 (the fifth fills the norm). Image 3 has no text.
  const unit = (a: number, b: number, c: number): number[] => [a, b, c, 0, Math.sqrt(1 - a * a - b * b - c * c)];
  const text = feats([
    unit(0.1, 0.9, 0.0), // t0 → image 0: images 1 ahead → rank 1
    unit(0.8, 0.1, 0.2), // t1 → image 0: rank 0
    unit(0.5, 0.3, 0.6), // t2 → image 1: images 2 and 0 ahead → rank 2
    unit(0.5, 0.3, 0.6), // t3 → image 2 (the same vector as t2): rank 0
    unit(0.0, 0.0, 0.9), // t4 → image 2: rank 0
  ]);
  const images = feats([0, 1, 2, 3].map((i) => [0, 1, 2, 3, 4].map((j) => (i === j ? 3 : 0))));
  const r = await retrieval(images, text, Int32Array.of(0, 0, 1, 2, 2), { ks: [1, 2, 5] });
  // Text → image ranks: 1, 0, 2, 0, 0.
  assert.deepEqual(r.textToImage, { 1: 3 / 5, 2: 4 / 5, 5: 1 });
  // Image → text, best caption: image 0 via t1 (rank 0); image 1 via t2 (0.3, tied with t3 at the
  // same score but first by index; only t0 is ahead: rank 1); image 2 via t4 (rank 0).
  assert.deepEqual(r.imageToText, { 1: 2 / 3, 2: 1, 5: 1 });
  assert.equal(r.imageQueries, 3);
  assert.equal(r.textQueries, 5);
  // Default ks.
  assert.deepEqual(Object.keys((await retrieval(images, text, Int32Array.of(0, 0, 1, 2, 2))).imageToText), ['1', '5', '10']);
  await assert.rejects(retrieval(images, text, Int32Array.of(0, 0, 1, 2, 9)), /outside \[0, 4\)/);
});

// ------------------------------------------------------------------------ linear probe

/** Gaussian clusters around random class means; labels optionally shuffled (no signal left). */
function clusters(n: number, C: number, D: number, seed: number, shuffle: boolean) {
  const m = new Rng(99); // the same class means for every split
  const means = Array.from({ length: C * D }, () => m.normal());
  const r = new Rng(seed);
  const data = new Float32Array(n * D);
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    labels[i] = i % C;
    for (let j = 0; j < D; j++) data[i * D + j] = means[(i % C) * D + j]! + 0.8 * r.normal();
  }
  if (shuffle) r.shuffle([...labels]).forEach((v, i) => (labels[i] = v));
  return { features: { data, shape: [n, D] as [number, number] }, labels };
}

test('linearProbe separates separable features and is at chance on shuffled labels', async () => {
  const sep = await linearProbe(clusters(200, 4, 32, 1, false), clusters(400, 4, 32, 2, false));
  assert.ok(sep.top1 > 0.95, `separable: top-1 ${sep.top1}`);
  assert.ok(sep.trainTop1 > 0.95);
  assert.equal(sep.weight.length, 4 * 32);
  const shuffled = await linearProbe(clusters(200, 4, 32, 1, true), clusters(800, 4, 32, 2, true));
  assert.ok(Math.abs(shuffled.top1 - 0.25) < 0.08, `shuffled: top-1 ${shuffled.top1}, chance 0.25`);
});

test('linearProbe with mini-batches is deterministic for a seed; stratifiedSplit keeps every class', async () => {
  const all = clusters(120, 3, 16, 5, false);
  const { train, test: held } = stratifiedSplit(all.labels, 0.25, 1);
  assert.equal(train.length + held.length, 120);
  assert.deepEqual([0, 1, 2].map((c) => held.filter((i) => all.labels[i] === c).length), [10, 10, 10]);
  const run = () => linearProbe(takeRows(all, train), takeRows(all, held), { batchSize: 16, epochs: 10, seed: 4, weightDecay: 0.01 });
  const [a, b] = [await run(), await run()];
  assert.deepEqual(a.weight, b.weight);
  assert.equal(a.top1, b.top1);
  assert.ok(a.top1 > 0.9, `top-1 ${a.top1}`);
});

// ------------------------------------------------------------------------ image folder and CLI

const work = mkdtempSync(join(tmpdir(), 'clipkit-eval-'));
after(() => rmSync(work, { recursive: true, force: true }));
const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

async function makeDataset(root: string): Promise<void> {
  const colours: Record<string, [number, number, number]> = { red_thing: [220, 30, 30], green: [30, 200, 40], blue: [20, 40, 230] };
  const r = new Rng(8);
  for (const [cls, rgb] of Object.entries(colours)) {
    mkdirSync(join(root, cls), { recursive: true });
    for (let k = 0; k < 4; k++) {
      const [w, h] = [24 + 8 * k, 40 - 4 * k]; // assorted sizes and aspect ratios
      const px = Buffer.alloc(w * h * 3);
      for (let i = 0; i < px.length; i++) px[i] = Math.max(0, Math.min(255, rgb[i % 3]! + Math.round(20 * r.normal())));
      await sharp(px, { raw: { width: w, height: h, channels: 3 } }).png().toFile(join(root, cls, `${k}.png`));
    }
  }
  writeFileSync(join(root, 'green', 'broken.png'), 'not a png'); // unreadable: skipped and counted
  writeFileSync(join(root, 'green', 'notes.txt'), 'ignored'); // not an image extension
}

const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, 'eval', ...args], { encoding: 'utf8', timeout: 60_000 });

test('listImageFolder: classes sorted, labels, round-robin limit, clear errors', async () => {
  const root = join(work, 'list');
  await makeDataset(root);
  const f = listImageFolder(root);
  assert.deepEqual(f.classes, ['blue', 'green', 'red_thing']);
  assert.equal(f.files.length, 13);
  assert.deepEqual([...f.labels.slice(0, 4)], [0, 0, 0, 0]);
  assert.equal(classNameOf('red_thing'), 'red thing');
  const few = listImageFolder(root, { limit: 4 });
  assert.deepEqual([...few.labels], [0, 1, 2, 0]);
  assert.throws(() => listImageFolder(join(work, 'missing')), /does not exist/);
  mkdirSync(join(work, 'empty', 'a'), { recursive: true });
  assert.throws(() => listImageFolder(join(work, 'empty')), /no images/);
});

test('clipkit eval end to end on a tiny random model: JSON shape, skipped images, table, errors', async () => {
  const { model, tokenizer } = tinyModelAndTokenizer();
  const modelDir = join(work, 'model');
  await model.save(modelDir);
  tokenizer.save(join(modelDir, 'tokenizer.json'));
  const data = join(work, 'data');
  await makeDataset(data);

  const res = cli('--model', modelDir, '--data', data, '--json', '--batch-size', '5');
  assert.equal(res.status, 0, res.stderr);
  const out = JSON.parse(res.stdout);
  assert.equal(out.model, modelDir);
  assert.equal(out.data, data);
  assert.equal(out.images, 12);
  assert.equal(out.skipped, 1);
  assert.equal(out.classes, 3);
  assert.equal(out.templates, 1);
  for (const v of [out.zeroShot.top1, out.zeroShot.top5]) assert.ok(typeof v === 'number' && v >= 0 && v <= 1, `fraction ${v}`);
  assert.equal(out.zeroShot.top5, 1); // top-3 of 3 classes always hits
  assert.deepEqual(Object.keys(out.zeroShot.perClass), ['blue', 'green', 'red_thing']);
  assert.ok(out.seconds > 0 && out.imagesPerSecond > 0);
  assert.match(res.stderr, /skipping .*broken\.png/);

  const table = cli('--model', modelDir, '--data', data, '--templates', 'cifar10', '--limit', '6');
  assert.equal(table.status, 0, table.stderr);
  assert.match(table.stdout, /6 images in 3 classes/);
  assert.match(table.stdout, /templates +18/);
  assert.match(table.stdout, /top-1 +\d+\.\d\d%/);

  const unknown = cli('--model', modelDir, '--data', data, '--frobnicate');
  assert.equal(unknown.status, 2);
  assert.match(unknown.stderr, /eval: .*frobnicate/);
  const missing = cli('--model', modelDir, '--data', join(work, 'nope'));
  assert.notEqual(missing.status, 0);
  assert.match(missing.stderr, /does not exist/);
  const noTok = cli('--model', join(modelDir, 'open_clip_model.safetensors'), '--data', data, '--tokenizer', join(work, 'nope.json'));
  assert.notEqual(noTok.status, 0);
  assert.match(noTok.stderr, /tokenizer vocabulary not found/);
  mkdirSync(join(work, 'bare'));
  await model.save(join(work, 'bare', 'tiny.safetensors'));
  const bare = cli('--model', join(work, 'bare', 'tiny.safetensors'), '--data', data);
  assert.notEqual(bare.status, 0);
  assert.match(bare.stderr, /no tokenizer next to the model .*pass --tokenizer/);
});

test('clipkit eval on a caption table: retrieval recall equal to the direct computation; one image with two captions; unreadable image left out', async () => {
  const { model, tokenizer } = tinyModelAndTokenizer();
  const modelDir = join(work, 'model-r');
  await model.save(modelDir);
  tokenizer.save(join(modelDir, 'tokenizer.json'));
  const root = join(work, 'table');
  await makeDataset(root);
  const rows: [string, string][] = [
    ['red_thing/0.png', 'a photo of a red thing.'],
    ['green/1.png', 'a picture of a green.'],
    ['blue/2.png', 'a photo of a blue.'],
    ['red_thing/0.png', 'a picture of a cat.'], // the same image again: one candidate, two captions
    ['green/2.png', 'a photo of a dog.'],
    ['green/broken.png', 'a photo of a green.'], // unreadable: its caption cannot be retrieved
  ];
  const csv = join(root, 'pairs.csv');
  writeFileSync(csv, `image,caption\n${rows.map(([i, c]) => `${i},"${c}"`).join('\n')}\n`);
  const res = cli('--model', modelDir, '--data', csv, '--json');
  assert.equal(res.status, 0, res.stderr);
  const out = JSON.parse(res.stdout);
  assert.equal(out.images, 4);
  assert.equal(out.captions, 5);
  assert.equal(out.skipped, 1);

  // Direct: the four distinct images, the five captions, retrieval() with captions 0 and 3 on image 0.
  const files = ['red_thing/0.png', 'green/1.png', 'blue/2.png', 'green/2.png'].map((f) => join(root, f));
  const img = await model.encodeImage(await decodeFiles(files, 32));
  const txt = await encodeTexts(model, tokenizer, rows.slice(0, 5).map(([, c]) => c));
  const r = await retrieval(img, txt, Int32Array.from([0, 1, 2, 0, 3]));
  for (const k of ['1', '5', '10']) {
    assert.ok(close(out.retrieval.imageToText[k], r.imageToText[Number(k)]!), `i2t@${k}`);
    assert.ok(close(out.retrieval.textToImage[k], r.textToImage[Number(k)]!), `t2i@${k}`);
  }
  assert.equal(out.retrieval.textToImage['5'], 1); // 4 candidates: every caption's image is in the top 5

  const table = cli('--model', modelDir, '--data', csv);
  assert.equal(table.status, 0, table.stderr);
  assert.match(table.stdout, /text→image +\d+\.\d\d%/);
  const bad = join(root, 'bad.csv');
  writeFileSync(bad, 'picture,text\na.png,x\n');
  const badRes = cli('--model', modelDir, '--data', bad);
  assert.notEqual(badRes.status, 0);
  assert.match(badRes.stderr, /no image column \(looked for image, .*has picture, text\)/);
});
