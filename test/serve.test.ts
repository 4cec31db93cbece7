// clipkit serve: every route of the HTTP API on a tiny random model and a small vector store, in
// process on port 0 — answers equal to the in-process model, micro-batching observed under concurrent
// requests, 503 from a full queue, 413 past the size limit, 400 for bad input, the image route's
// safety — and the batcher on its own with a fake pool (deterministic batch sizes).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { preprocessClip } from '../src/data/image.js';
import { normalizeRows } from '../src/eval/zeroshot.js';
import { VectorStore } from '../src/index/store.js';
import { ClipModel } from '../src/models/clip-model.js';
import { fromOpenClip } from '../src/models/config.js';
import { MicroBatcher, QueueFullError } from '../src/serve/batcher.js';
import { Engine } from '../src/serve/engine.js';
import { modelKey } from '../src/serve/model-key.js';
import { packTokens } from '../src/serve/tokens.js';
import type { Lease } from '../src/serve/pool.js';
import { type RunningServer, startServe } from '../src/serve/start.js';
import { trainBpe } from '../src/tokenizer/index.js';

const work = mkdtempSync(join(tmpdir(), 'clipkit-serve-'));
const modelDir = join(work, 'model');
const dbDir = join(work, 'db');
const cacheRoot = join(work, 'cache');
const COLOURS = { red: [220, 30, 30], green: [30, 200, 40], blue: [20, 40, 230], yellow: [230, 220, 20] } as const;
const tokenizer = trainBpe(
  Array.from({ length: 120 }, (_, i) => `a photo of a ${Object.keys(COLOURS)[i % 4]} thing.`),
  { vocabSize: 600 },
);
let model: ClipModel;
let server: RunningServer;
const png: Record<string, Buffer> = {};

before(async () => {
  const config = fromOpenClip({
    embed_dim: 16,
    vision_cfg: { image_size: 32, layers: 1, width: 32, patch_size: 8, head_width: 32 },
    text_cfg: { context_length: 16, vocab_size: tokenizer.vocabSize, width: 32, heads: 2, layers: 1 },
  });
  model = ClipModel.random(config, 11, { threads: 1 });
  await model.save(modelDir);
  tokenizer.save(join(modelDir, 'tokenizer.json'));
  // A store of the four images, embedded in process, plus an item with no image file.
  const store = await VectorStore.open(dbDir, { dim: 16 });
  for (const [name, rgb] of Object.entries(COLOURS)) {
    const px = Buffer.alloc(48 * 36 * 3);
    for (let i = 0; i < px.length; i++) px[i] = (rgb[i % 3]! + ((i * 53) % 40)) & 255;
    png[name] = await sharp(px, { raw: { width: 48, height: 36, channels: 3 } }).png().toBuffer();
    const path = join(work, `${name}.png`);
    await sharp(png[name]).toFile(path);
    const f = await model.encodeImage({ data: await preprocessClip(path, { size: 32 }), shape: [1, 3, 32, 32] });
    await store.add([{ id: name, vector: f.data, path, caption: `a ${name} thing` }]);
  }
  await store.add([{ id: 'in-a-tar', vector: Float32Array.from({ length: 16 }, (_, i) => i + 1), caption: 'no file' }]);
  store.close();
  server = await startServe({ modelPath: modelDir, cacheRoot, db: dbDir, port: 0, workers: 1, threads: 1, maxBatch: 32, windowMs: 10, maxBody: 200 * 1024 });
});
after(async () => {
  await server?.close();
  rmSync(work, { recursive: true, force: true });
});

const post = (path: string, body: unknown, base = server.url) => fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
const b64 = (b: Buffer) => b.toString('base64');
const unit = (v: Float32Array) => normalizeRows({ data: v, shape: [1, v.length] }).data;
const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => Math.max(...Array.from(a, (x, i) => Math.abs(x - b[i]!)));

test('GET / (the page), /health, /stats', async () => {
  const page = await fetch(server.url + '/');
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-type')!, /text\/html/);
  assert.match(await page.text(), /<title>clipkit<\/title>/);
  const h = (await (await fetch(server.url + '/health')).json()) as { status: string; model: { embedDim: number; imageSize: number }; db: { rows: number }; defaultLabels: null };
  assert.equal(h.status, 'ok');
  assert.equal(h.model.embedDim, 16);
  assert.equal(h.model.imageSize, 32);
  assert.deepEqual(h.db, { rows: 5 });
  assert.equal(h.defaultLabels, null);
  const s = (await (await fetch(server.url + '/stats')).json()) as { workers: number; image: { batches: number } };
  assert.equal(s.workers, 1);
  assert.equal(typeof s.image.batches, 'number');
});

test('POST /classify: JSON and multipart give the in-process probabilities', async () => {
  const labels = ['red', 'green', 'blue'];
  const res = await post('/classify', { image: b64(png.red!), labels: 'red, green, blue', k: 3 });
  assert.equal(res.status, 200, await res.clone().text());
  assert.ok(Number(res.headers.get('x-batch-size')) >= 1);
  const out = (await res.json()) as { labels: { label: string; probability: number }[] };
  assert.equal(out.labels.length, 3);
  assert.ok(Math.abs(out.labels.reduce((a, l) => a + l.probability, 0) - 1) < 1e-6);

  // In process: class rows from the prompt 'a photo of a {}.', softmax of exp(logit_scale) · cos.
  const ids = tokenizer.encode(labels.map((l) => `a photo of a ${l}.`), { contextLength: 16, truncate: true });
  const w = normalizeRows(await model.encodeText(ids)).data;
  const img = unit((await model.encodeImage({ data: await preprocessClip(png.red!, { size: 32 }), shape: [1, 3, 32, 32] })).data);
  const logits = labels.map((_, c) => Math.exp(model.logitScale) * img.reduce((a, x, j) => a + x * w[c * 16 + j]!, 0));
  const z = logits.reduce((a, l) => a + Math.exp(l), 0);
  for (const [c, l] of labels.entries()) {
    const got = out.labels.find((x) => x.label === l)!.probability;
    assert.ok(Math.abs(got - Math.exp(logits[c]!) / z) < 1e-3, `${l}: ${got}`);
  }

  const form = new FormData();
  form.append('image', new Blob([new Uint8Array(png.red!)], { type: 'image/png' }), 'red.png');
  form.append('labels', 'red,green,blue');
  form.append('k', '2');
  const mp = await fetch(server.url + '/classify', { method: 'POST', body: form });
  assert.equal(mp.status, 200, await mp.clone().text());
  const mout = (await mp.json()) as typeof out;
  assert.equal(mout.labels.length, 2);
  assert.equal(mout.labels[0]!.label, out.labels[0]!.label);
  assert.ok(Math.abs(mout.labels[0]!.probability - out.labels[0]!.probability) < 1e-6);

  const cifar = await post('/classify', { image: b64(png.blue!), labels: ['red', 'blue'], templates: 'cifar10' });
  assert.equal(cifar.status, 200);
  const custom = await post('/classify', { image: `data:image/png;base64,${b64(png.blue!)}`, labels: ['red', 'blue'], templates: ['{}!', 'a {} one'] });
  assert.equal(custom.status, 200, await custom.clone().text());
});

test('POST /embed: images and texts, unit rows equal to the in-process towers', async () => {
  const res = await post('/embed', { images: [b64(png.green!), b64(png.yellow!)], texts: ['a green thing', 'a yellow thing', 'x'] });
  assert.equal(res.status, 200, await res.clone().text());
  const out = (await res.json()) as { dim: number; image_embeddings: number[][]; text_embeddings: number[][] };
  assert.equal(out.dim, 16);
  assert.equal(out.image_embeddings.length, 2);
  assert.equal(out.text_embeddings.length, 3);
  const img = unit((await model.encodeImage({ data: await preprocessClip(png.yellow!, { size: 32 }), shape: [1, 3, 32, 32] })).data);
  assert.ok(maxDiff(out.image_embeddings[1]!, img) < 1e-4);
  const txt = unit((await model.encodeText(tokenizer.encode(['a yellow thing'], { contextLength: 16 }))).data);
  assert.ok(maxDiff(out.text_embeddings[1]!, txt) < 1e-4);

  const form = new FormData();
  form.append('images', new Blob([new Uint8Array(png.green!)]), 'g.png');
  form.append('texts', 'one');
  form.append('texts', 'two');
  const mp = (await (await fetch(server.url + '/embed', { method: 'POST', body: form })).json()) as typeof out;
  assert.ok(maxDiff(mp.image_embeddings[0]!, out.image_embeddings[0]!) < 1e-6);
  assert.equal(mp.text_embeddings.length, 2);
});

test('GET|POST /search and the image route', async () => {
  const res = await fetch(`${server.url}/search?q=${encodeURIComponent('a red thing')}&k=3`);
  assert.equal(res.status, 200, await res.clone().text());
  const { hits } = (await res.json()) as { hits: { id: string; score: number; path?: string; caption?: string; image: string | null }[] };
  assert.equal(hits.length, 3);
  for (let i = 1; i < hits.length; i++) assert.ok(hits[i - 1]!.score >= hits[i]!.score);

  // By image: the image itself is the nearest item, at cosine ~1.
  const byImage = (await (await post('/search', { image: b64(png.blue!), k: 2 })).json()) as { hits: typeof hits };
  assert.equal(byImage.hits[0]!.id, 'blue');
  assert.ok(byImage.hits[0]!.score > 0.999);
  assert.equal(byImage.hits[0]!.image, '/image/blue');
  const form = new FormData();
  form.append('image', new Blob([new Uint8Array(png.yellow!)]), 'y.png');
  const mp = (await (await fetch(server.url + '/search', { method: 'POST', body: form })).json()) as { hits: typeof hits };
  assert.equal(mp.hits[0]!.id, 'yellow');

  const file = await fetch(server.url + '/image/blue');
  assert.equal(file.status, 200);
  assert.equal(file.headers.get('content-type'), 'image/png');
  assert.deepEqual(Buffer.from(await file.arrayBuffer()), readFileSync(join(work, 'blue.png')));
  const thumb = await fetch(server.url + '/image/blue?w=16');
  assert.equal(thumb.headers.get('content-type'), 'image/jpeg');
  const meta = await sharp(Buffer.from(await thumb.arrayBuffer())).metadata();
  assert.equal(meta.width, 16);
  // Only stored ids map to files; an id is never a path.
  assert.equal((await fetch(server.url + '/image/in-a-tar')).status, 404);
  assert.equal((await fetch(server.url + '/image/nope')).status, 404);
  assert.equal((await fetch(server.url + '/image/' + encodeURIComponent('../../../etc/passwd'))).status, 404);
  assert.equal((await fetch(server.url + '/image/blue?w=99999')).status, 400);
});

test('concurrent requests are stacked into micro-batches', async () => {
  const before = ((await (await fetch(server.url + '/stats')).json()) as { image: { largestBatch: number } }).image.largestBatch;
  const names = Object.keys(png);
  const responses = await Promise.all(Array.from({ length: 24 }, (_, i) => post('/embed', { image: b64(png[names[i % 4]!]!) })));
  assert.ok(responses.every((r) => r.status === 200));
  const sizes = responses.map((r) => Number(r.headers.get('x-batch-size')));
  assert.ok(Math.max(...sizes) > 1, `batch sizes ${sizes}`);
  const stats = (await (await fetch(server.url + '/stats')).json()) as { image: { largestBatch: number; sizes: Record<string, number> } };
  assert.ok(stats.image.largestBatch >= Math.max(before, ...sizes));
  // Results are not mixed up between the requests of a batch.
  const rows = await Promise.all(responses.map(async (r) => ((await r.json()) as { image_embeddings: number[][] }).image_embeddings[0]!));
  for (let i = 4; i < rows.length; i++) assert.ok(maxDiff(rows[i]!, rows[i % 4]!) < 1e-5);
});

test('400s: bad images, labels, fields and bodies say what is wrong', async () => {
  const cases: [unknown, RegExp][] = [
    [{ image: 'not base64 !!', labels: 'a,b' }, /image is not valid base64/],
    [{ image: b64(Buffer.from('hello, not an image')), labels: 'a,b' }, /cannot decode image/],
    [{ image: b64(png.red!) }, /no labels/],
    [{ image: b64(png.red!), labels: 'a,a' }, /given twice/],
    [{ image: b64(png.red!), labels: [1, 2] }, /must be strings/],
    [{ image: b64(png.red!), labels: 'a,b', k: 0 }, /k must be an integer in \[1, 1000\]/],
    [{ image: b64(png.red!), labels: 'a,b', templates: ['no slot'] }, /has no "\{\}"/],
    [{ labels: 'a,b' }, /no image/],
    [{ images: [b64(png.red!), b64(png.red!)], labels: 'a' }, /one image per/],
  ];
  for (const [body, re] of cases) {
    const res = await post('/classify', body);
    assert.equal(res.status, 400, JSON.stringify(body).slice(0, 80));
    assert.match(((await res.json()) as { error: string }).error, re);
  }
  const bad = await post('/embed', { images: [b64(png.red!), b64(Buffer.from('GIF89a junk'))] });
  assert.equal(bad.status, 400);
  assert.match(((await bad.json()) as { error: string }).error, /^image 2: cannot decode image/);
  assert.equal((await post('/embed', {})).status, 400);
  assert.equal((await post('/embed', { texts: [''] })).status, 400);
  assert.equal((await post('/embed', [1, 2])).status, 400);
  const notJson = await fetch(server.url + '/embed', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"texts": [' });
  assert.equal(notJson.status, 400);
  assert.equal((await fetch(server.url + '/search')).status, 400);
  assert.equal((await fetch(server.url + '/search?q=x&k=0')).status, 400);
  assert.equal((await post('/search', { text: 'x', image: b64(png.red!) })).status, 400);
  const emptyFile = new FormData();
  emptyFile.append('image', new Blob([]), 'empty.png');
  emptyFile.append('labels', 'a,b');
  assert.equal((await fetch(server.url + '/classify', { method: 'POST', body: emptyFile })).status, 400);
});

test('413 past the body limit (JSON and multipart)', async () => {
  const big = Buffer.alloc(300 * 1024, 7);
  const json = await post('/embed', { image: b64(big) });
  assert.equal(json.status, 413);
  assert.match(((await json.json()) as { error: string }).error, /larger than the limit of 204800 bytes/);
  const form = new FormData();
  form.append('image', new Blob([new Uint8Array(big)]), 'big.png');
  form.append('labels', 'a,b');
  const mp = await fetch(server.url + '/classify', { method: 'POST', body: form });
  assert.equal(mp.status, 413);
});

test('503 with Retry-After when the queue is full; no --db: /search is a 404', async () => {
  const tiny = await startServe({ modelPath: modelDir, cacheRoot, port: 0, workers: 1, threads: 1, maxBatch: 1, maxQueue: 1 });
  try {
    const responses = await Promise.all(
      Array.from({ length: 30 }, () => fetch(tiny.url + '/embed', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image: b64(png.red!) }) })),
    );
    const codes = responses.map((r) => r.status);
    assert.ok(codes.includes(503), `codes ${codes}`);
    assert.ok(codes.includes(200), `codes ${codes}`);
    assert.ok(codes.every((c) => c === 200 || c === 503), `codes ${codes}`);
    const refused = responses.find((r) => r.status === 503)!;
    assert.equal(refused.headers.get('retry-after'), '1');
    assert.match(((await refused.json()) as { error: string }).error, /queue is full/);
    // Without batching every batch has one item.
    const stats = (await (await fetch(tiny.url + '/stats')).json()) as { image: { largestBatch: number; rejected: number } };
    assert.equal(stats.image.largestBatch, 1);
    assert.ok(stats.image.rejected >= 1);
    const s = await fetch(tiny.url + '/search?q=x');
    assert.equal(s.status, 404);
    assert.match(((await s.json()) as { error: string }).error, /--db/);
    assert.equal(((await (await fetch(tiny.url + '/health')).json()) as { db: null }).db, null);
  } finally {
    await tiny.close();
  }
});

test('MicroBatcher: batches fill while the worker is busy, window collects, bounded queue', async () => {
  // A fake pool of one worker whose runs finish when the test says so.
  let idle = 1;
  const waiting: ((l: Lease) => void)[] = [];
  const runs: number[][] = [];
  let finish: (() => void)[] = [];
  const lease: Lease = {
    run: async () => ({ features: new Float32Array(0) }),
    release: () => {
      const w = waiting.shift();
      if (w) w(lease);
      else idle++;
    },
  };
  const pool = {
    get idle() {
      return idle;
    },
    acquire: () => (idle > 0 ? (idle--, Promise.resolve(lease)) : new Promise<Lease>((r) => waiting.push(r))),
  };
  const b = new MicroBatcher<number, number>(pool, {
    maxBatch: 4,
    maxQueue: 6,
    windowMs: 5,
    run: async (_l, items) => {
      runs.push(items);
      await new Promise<void>((r) => finish.push(r));
      return items.map((x) => (x < 0 ? new Error(`bad ${x}`) : x * 10));
    },
  });
  const first = b.submit([1]); // starts a batch after the window
  await new Promise((r) => setTimeout(r, 30));
  assert.deepEqual(runs, [[1]]);
  // While it runs, 6 items queue (the limit); a 7th is refused and nothing of it is queued.
  const more = [...b.submit([2, 3]), ...b.submit([4, -5, 6, 7])];
  const moreSettled = Promise.allSettled(more); // handled from the start: one of them fails
  assert.throws(() => b.submit([8]), QueueFullError);
  assert.equal(b.stats.rejected, 1);
  finish.shift()!();
  assert.deepEqual(await first[0], { value: 10, batchSize: 1 });
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(runs[1], [2, 3, 4, -5]); // up to maxBatch, in arrival order
  finish.shift()!();
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(runs[2], [6, 7]);
  finish.shift()!();
  const settled = await moreSettled;
  assert.deepEqual(settled[0], { status: 'fulfilled', value: { value: 20, batchSize: 4 } });
  assert.equal(settled[3]!.status, 'rejected'); // its own error, the others unaffected
  assert.deepEqual(settled[5], { status: 'fulfilled', value: { value: 70, batchSize: 2 } });
  assert.deepEqual(b.stats.sizes, { 1: 1, 4: 1, 2: 1 });
  finish = [];
});

test('clipkit serve as a command: options, listening line, /health, clean exit on SIGTERM', async () => {
  const cli = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
  const child = spawn(process.execPath, [cli, 'serve', '--model', modelDir, '--port', '0', '--threads', '1', '--labels', 'red,blue', '--max-batch', '8'], {
    env: { ...process.env, CLIPKIT_CACHE: cacheRoot },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', r));
  const t0 = Date.now();
  while (!/listening on (http:\S+)/.test(stderr) && child.exitCode === null && Date.now() - t0 < 60_000) await new Promise((r) => setTimeout(r, 50));
  const url = /listening on (http:\S+)/.exec(stderr)?.[1];
  assert.ok(url, stderr);
  const h = (await (await fetch(url + '/health')).json()) as { defaultLabels: string[]; db: null };
  assert.deepEqual(h.defaultLabels, ['red', 'blue']);
  const c = (await (await post('/classify', { image: b64(png.red!) }, url)).json()) as { labels: { label: string }[] };
  assert.equal(c.labels.length, 2);
  child.kill('SIGTERM');
  assert.equal(await exited, 0, stderr);
  assert.match(stderr, /shutting down/);
});

test('text towers by length: short texts use the 16-token tower, long ones the full one; same features', async () => {
  const config = fromOpenClip({
    embed_dim: 16,
    vision_cfg: { image_size: 32, layers: 1, width: 32, patch_size: 8, head_width: 32 },
    text_cfg: { context_length: 40, vocab_size: tokenizer.vocabSize, width: 32, heads: 2, layers: 1 },
  });
  const long = ClipModel.random(config, 12, { threads: 1 });
  const dir = join(work, 'model-ctx40');
  await long.save(dir);
  tokenizer.save(join(dir, 'tokenizer.json'));
  const texts = ['a red thing', 'a blue thing a blue thing a blue thing a blue thing a blue thing a blue thing'];
  assert.equal(packTokens(tokenizer, [texts[0]!], [16, 40]).length, 16);
  assert.equal(packTokens(tokenizer, texts, [16, 40]).length, 2 * 40); // the long row decides for the batch
  const engine = await Engine.create({ modelPath: dir, cacheRoot, threads: 1 });
  assert.ok(existsSync(join(cacheRoot, 'onnx', modelKey(dir), 'text-16.onnx')));
  try {
    for (const batch of [[texts[0]!], [texts[1]!], texts]) {
      const got = await engine.embedTexts(batch);
      const want = normalizeRows(await long.encodeText(tokenizer.encode(batch, { contextLength: 40, truncate: true }))).data;
      got.rows.forEach((r, i) => assert.ok(maxDiff(r, want.subarray(i * 16, (i + 1) * 16)) < 1e-4));
    }
  } finally {
    await engine.close();
  }
});

test('int8 towers (serve/embed --int8): cached apart from the fp32 ones, features equal to the in-process int8 model', async () => {
  const fp32 = await Engine.create({ modelPath: modelDir, cacheRoot, threads: 1 });
  const q8 = await Engine.create({ modelPath: modelDir, cacheRoot, threads: 1, quantize: 'int8' });
  try {
    const meta = JSON.parse(readFileSync(join(cacheRoot, 'onnx', `${modelKey(modelDir)}-int8`, 'clipkit-export.json'), 'utf8')) as { quantize?: string; models: { vision: { ops: Record<string, string[]> } } };
    assert.equal(meta.quantize, 'int8');
    assert.ok(meta.models.vision.ops['com.microsoft']?.includes('DynamicQuantizeMatMul'));
    const inProcess = new ClipModel(model.config, model.params, { threads: 1, quantize: 'int8' });
    const s = model.config.vision.imageSize;
    const want = unit((await inProcess.encodeImage({ data: await preprocessClip(png.red!, { size: s }), shape: [1, 3, s, s] })).data);
    const got = (await q8.embedImages([png.red!])).rows[0]!;
    assert.ok(maxDiff(got, want) < 1e-5, `int8 engine vs in-process int8: ${maxDiff(got, want)}`);
    const full = (await fp32.embedImages([png.red!])).rows[0]!;
    assert.ok(maxDiff(got, full) > 0, 'int8 features should not be bit-equal to fp32');
  } finally {
    await fp32.close();
    await q8.close();
  }
});
