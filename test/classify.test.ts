// clipkit classify: label parsing and top-k probabilities on known numbers, then the command end to
// end on a tiny random model — probabilities equal to an in-process computation, the on-disk cache of
// class embeddings (really read back), bad images reported without stopping the others, usage errors.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { DEFAULT_MODEL_DIR } from '../src/cli/default-model.js';
import { preprocessClip } from '../src/data/image.js';
import { classifierWeights } from '../src/eval/zeroshot.js';
import { readNpy, writeNpy } from '../src/index/npy.js';
import { ClipModel } from '../src/models/clip-model.js';
import { fromOpenClip } from '../src/models/config.js';
import { ClassifierCache, parseLabels, parseTemplates, topLabels } from '../src/serve/zeroshot.js';
import { trainBpe } from '../src/tokenizer/index.js';

const work = mkdtempSync(join(tmpdir(), 'clipkit-classify-'));
after(() => rmSync(work, { recursive: true, force: true }));
const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const cache = join(work, 'cache');
const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, 'classify', ...args], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, CLIPKIT_CACHE: cache, CLIPKIT_THREADS: '1' } });

const modelDir = join(work, 'model');
let model: ClipModel;
const tokenizer = trainBpe(
  Array.from({ length: 120 }, (_, i) => `a photo of a ${['red', 'green', 'blue', 'cat', 'dog'][i % 5]} thing.`),
  { vocabSize: 600 },
);

before(async () => {
  const config = fromOpenClip({
    embed_dim: 16,
    vision_cfg: { image_size: 32, layers: 1, width: 32, patch_size: 8, head_width: 32 },
    text_cfg: { context_length: 16, vocab_size: tokenizer.vocabSize, width: 32, heads: 2, layers: 1 },
  });
  model = ClipModel.random(config, 5, { threads: 1 });
  await model.save(modelDir);
  tokenizer.save(join(modelDir, 'tokenizer.json'));
  for (const [name, rgb] of [['red', [220, 30, 30]], ['green', [30, 200, 40]], ['blue', [20, 40, 230]]] as const) {
    const px = Buffer.alloc(40 * 30 * 3);
    for (let i = 0; i < px.length; i++) px[i] = (rgb[i % 3]! + ((i * 37) % 50)) & 255;
    await sharp(px, { raw: { width: 40, height: 30, channels: 3 } }).png().toFile(join(work, `${name}.png`));
  }
  writeFileSync(join(work, 'broken.png'), 'not an image');
});

test('parseLabels / parseTemplates: trimmed, unique, clear errors', () => {
  assert.deepEqual(parseLabels(' cat, dog ,car,'), ['cat', 'dog', 'car']);
  assert.deepEqual(parseLabels(['a b', 'c']), ['a b', 'c']);
  assert.throws(() => parseLabels('cat,cat'), /given twice/);
  assert.throws(() => parseLabels(' , '), /no labels/);
  assert.throws(() => parseLabels(['a', 3]), /must be strings/);
  assert.throws(() => parseLabels(['a', '']), /empty/);
  assert.throws(() => parseLabels(42), /comma-separated/);
  assert.throws(() => parseLabels('x'.repeat(300)), /longer than/);
  assert.equal(parseTemplates('cifar10').length, 18);
  assert.deepEqual(parseTemplates(['{} here']), ['{} here']);
  assert.throws(() => parseTemplates(['no slot']), /has no "\{\}"/);
  assert.throws(() => parseTemplates('/etc/passwd'), /must be 'simple'/); // never read as a file from a request
});

test('topLabels: softmax of scale·cos, sorted, k clipped to the label count', () => {
  const weights = Float32Array.from([1, 0, 0, 1, Math.SQRT1_2, Math.SQRT1_2]); // three unit rows in 2-d
  const r = topLabels(Float32Array.of(3, 0), weights, ['x', 'y', 'xy'], 10, 5);
  assert.deepEqual(r.map((l) => l.label), ['x', 'xy', 'y']);
  const e = [Math.exp(10), Math.exp(0), Math.exp(10 * Math.SQRT1_2)];
  const z = e[0]! + e[1]! + e[2]!;
  assert.ok(Math.abs(r[0]!.probability - e[0]! / z) < 1e-6);
  assert.ok(Math.abs(r[2]!.probability - e[1]! / z) < 1e-6);
  assert.ok(Math.abs(r[1]!.score - Math.SQRT1_2) < 1e-6);
  assert.equal(topLabels(Float32Array.of(3, 0), weights, ['x', 'y', 'xy'], 100, 1).length, 1);
  // logit scale 100 does not overflow
  assert.ok(Number.isFinite(topLabels(Float32Array.of(0, 1), weights, ['x', 'y', 'xy'], 1e4, 3)[0]!.probability));
});

test('clipkit classify: probabilities match the in-process computation; the class cache is used', async () => {
  const res = cli(join(work, 'red.png'), '--model', modelDir, '--labels', 'red,green,blue', '--json', '-k', '5');
  assert.equal(res.status, 0, res.stderr);
  const out = JSON.parse(res.stdout) as { image: string; labels: { label: string; probability: number; score: number }[] };
  assert.equal(out.image, join(work, 'red.png'));
  assert.equal(out.labels.length, 3); // k clipped to the 3 labels
  assert.ok(Math.abs(out.labels.reduce((a, l) => a + l.probability, 0) - 1) < 1e-6);
  for (let i = 1; i < 3; i++) assert.ok(out.labels[i - 1]!.probability >= out.labels[i]!.probability);

  // The same numbers in process: the image tower, classifierWeights, softmax(scale · cos).
  const labels = ['red', 'green', 'blue'];
  const w = await classifierWeights(model, tokenizer, labels, ['a photo of a {}.']);
  const img = (await model.encodeImage({ data: await preprocessClip(join(work, 'red.png'), { size: 32 }), shape: [1, 3, 32, 32] })).data;
  const want = topLabels(img, w.data, labels, Math.exp(model.logitScale), 3);
  for (const l of want) {
    const got = out.labels.find((x) => x.label === l.label)!;
    assert.ok(Math.abs(got.probability - l.probability) < 1e-4, `${l.label}: ${got.probability} vs ${l.probability}`);
  }

  // One cache file, holding the class embeddings; overwrite it with the rows permuted and the
  // answer follows — so the second run really read the cache instead of recomputing.
  const files = readdirSync(join(cache, 'classifiers'));
  assert.equal(files.length, 1);
  const file = join(cache, 'classifiers', files[0]!);
  const cached = readNpy(file);
  assert.deepEqual(cached.shape, [3, 16]);
  const D = 16;
  const perm = new Float32Array(3 * D);
  perm.set(cached.data.subarray(2 * D, 3 * D), 0); // red ← blue's row
  perm.set(cached.data.subarray(D, 2 * D), D);
  perm.set(cached.data.subarray(0, D), 2 * D); // blue ← red's row
  writeNpy(file, { data: perm, shape: [3, D] });
  const again = JSON.parse(cli(join(work, 'red.png'), '--model', modelDir, '--labels', 'red,green,blue', '--json').stdout) as typeof out;
  const p = (o: typeof out, l: string) => o.labels.find((x) => x.label === l)!.probability;
  assert.ok(Math.abs(p(again, 'red') - p(out, 'blue')) < 1e-6);
  assert.ok(Math.abs(p(again, 'blue') - p(out, 'red')) < 1e-6);
  // Different templates are a different cache entry.
  assert.equal(cli(join(work, 'red.png'), '--model', modelDir, '--labels', 'red,green,blue', '--templates', 'cifar10', '--json').status, 0);
  assert.equal(readdirSync(join(cache, 'classifiers')).length, 2);
  assert.equal(ClassifierCache.key('m', ['a'], ['{}']) === ClassifierCache.key('m', ['a'], ['{}.']), false);
});

test('clipkit classify: a bad image is reported by name, the others still answered, exit 1', () => {
  const res = cli(join(work, 'green.png'), join(work, 'broken.png'), join(work, 'missing.png'), join(work, 'blue.png'), '--model', modelDir, '--labels', 'red,green', '--json');
  assert.equal(res.status, 1);
  assert.match(res.stderr, /broken\.png/);
  assert.match(res.stderr, /missing\.png: no such file/);
  assert.match(res.stderr, /2 of 4 images could not be read/);
  const out = JSON.parse(res.stdout) as ({ image: string; labels: unknown[] } | { image: string; error: string })[];
  assert.equal(out.length, 4);
  assert.ok('labels' in out[0]! && 'labels' in out[3]!);
  assert.ok('error' in out[1]! && 'error' in out[2]!);

  const single = cli(join(work, 'broken.png'), '--model', modelDir, '--labels', 'a,b');
  assert.equal(single.status, 1);
  assert.match(single.stderr, /cannot decode image .*broken\.png/);
});

test('clipkit classify: table output, usage errors, the default model', () => {
  const table = cli(join(work, 'blue.png'), join(work, 'red.png'), '--model', modelDir, '--labels', 'red, green, blue', '-k', '2');
  assert.equal(table.status, 0, table.stderr);
  const lines = table.stdout.trim().split('\n');
  assert.equal(lines[0], join(work, 'blue.png'));
  assert.match(lines[1]!, /^ +1 +(red|green|blue) +\d+\.\d\d%/);
  assert.equal(lines.length, 3 + 1 + 3); // two blocks of (name + 2 labels), a blank line between

  const noLabels = cli(join(work, 'red.png'), '--model', modelDir);
  assert.equal(noLabels.status, 2);
  assert.match(noLabels.stderr, /--labels "a,b,c" is required with --model/);
  assert.equal(cli('--model', modelDir, '--labels', 'a').status, 2); // no images
  assert.match(cli(join(work, 'red.png'), '--model', modelDir, '--labels', 'a,a').stderr, /given twice/);
  assert.match(cli(join(work, 'red.png'), '--model', modelDir, '--labels', 'a', '--templates', 'nope').stderr, /--templates must be/);
  assert.match(cli(join(work, 'red.png'), '--model', join(work, 'nope')).stderr, /does not exist/);
  const tokless = join(work, 'tokless');
  mkdirSync(tokless);
  writeFileSync(join(tokless, 'x'), '');
  assert.match(cli(join(work, 'red.png'), '--model', join(tokless, 'x'), '--labels', 'a').stderr, /not a \.safetensors file/);

  // Without --model: the shipped CIFAR-10 model and its classes, or — when this checkout has no
  // trained model yet — an error that says where it was expected.
  const dflt = cli(join(work, 'red.png'), '--json');
  if (existsSync(DEFAULT_MODEL_DIR)) {
    assert.equal(dflt.status, 0, dflt.stderr);
    const top = (JSON.parse(dflt.stdout) as { labels: { label: string; probability: number }[] }).labels;
    assert.equal(top.length, 5);
    // --int8: the same top label on the shipped model, probabilities close to fp32's.
    const q8 = cli(join(work, 'red.png'), '--json', '--int8');
    assert.equal(q8.status, 0, q8.stderr);
    const top8 = (JSON.parse(q8.stdout) as { labels: { label: string; probability: number }[] }).labels;
    assert.equal(top8[0]!.label, top[0]!.label);
    assert.ok(Math.abs(top8[0]!.probability - top[0]!.probability) < 0.05, `${top8[0]!.probability} vs ${top[0]!.probability}`);
  } else {
    assert.equal(dflt.status, 2);
    assert.match(dflt.stderr, /default model is not installed \(expected models\/cifar10-clip\//);
  }
});
