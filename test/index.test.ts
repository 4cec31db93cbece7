// Tests for src/index (the LanceDB vector store and .npy files) and the `index` / `search` commands.
// Every store lives in a fresh temp directory; the CLI runs as child processes on a tiny random CLIP
// model, so no weights or data are downloaded.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { NpyFormatError, NpyReader, NpyWriter, encodeNpyHeader, floatToHalf, halfToFloat, readNpy, writeNpy } from '../src/index/npy.js';
import { VectorStore, defaultIndexParams, sqlString, type StoreItem } from '../src/index/store.js';
import { randn, rng } from './helpers.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'clipkit-index-test-'));
  dirs.push(d);
  return d;
}
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

function randomVectors(n: number, dim: number, seed: number): Float32Array[] {
  const r = rng(seed);
  return Array.from({ length: n }, () => Float32Array.from(randn(r, dim)));
}

// ---- .npy ------------------------------------------------------------------------------

describe('npy', () => {
  test('float32 round trip, any shape; header padded to 64 bytes', () => {
    const d = tempDir();
    const data = Float32Array.from(randn(rng(1), 24));
    for (const shape of [[4, 6], [24], [2, 3, 4]]) {
      writeNpy(join(d, 'a.npy'), { data, shape });
      const back = readNpy(join(d, 'a.npy'));
      assert.deepEqual(back.shape, shape);
      assert.equal(back.dtype, 'float32');
      assert.deepEqual(back.data, data);
      assert.equal(NpyReader.open(join(d, 'a.npy')).header.dataOffset % 64, 0);
    }
  });

  test('float16 round trip rounds like numpy astype(float16)', () => {
    const d = tempDir();
    // Expected halves computed with numpy 2.x: np.float16(x).view(np.uint16).
    const cases: [number, number][] = [
      [0, 0x0000], [1, 0x3c00], [-2, 0xc000], [0.1, 0x2e66], [65504, 0x7bff], [70000, 0x7c00],
      [5.96e-8, 0x0001], [2.98e-8, 0x0000], [1 / 3, 0x3555], [3.14159, 0x4248], [-0.333, 0xb554],
    ];
    for (const [x, h] of cases) assert.equal(floatToHalf(x), h, `floatToHalf(${x})`);
    // Every finite half survives half → float → half.
    for (let h = 0; h < 0x10000; h++) if (((h >> 10) & 0x1f) !== 31) assert.equal(floatToHalf(halfToFloat(h)), h);
    const data = Float32Array.from(cases.map(([x]) => x));
    writeNpy(join(d, 'h.npy'), { data, shape: [data.length] }, { dtype: 'float16' });
    const back = readNpy(join(d, 'h.npy'));
    assert.equal(back.dtype, 'float16');
    assert.deepEqual(Array.from(back.data), cases.map(([, h]) => halfToFloat(h)));
  });

  test('reads numpy-written files: v1.0 float16, v2.0 header, big-endian', () => {
    const d = tempDir();
    // np.save(f, np.arange(6, dtype=np.float16).reshape(2, 3) / 4), bytes as numpy 2.4 wrote them.
    const f16 = join(d, 'np16.npy');
    writeFileSync(f16, Buffer.concat([Buffer.from('934e554d5059' + '0100' + '7600', 'hex'), Buffer.from("{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }".padEnd(117) + '\n'), Buffer.from('000000340038003a003c003d', 'hex')]));
    assert.deepEqual(readNpy(f16), { data: Float32Array.from([0, 0.25, 0.5, 0.75, 1, 1.25]), shape: [2, 3], dtype: 'float16' });
    // np.lib.format.write_array(f, np.arange(4, dtype=np.float32).reshape(2, 2), version=(2, 0)).
    const v2 = join(d, 'v2.npy');
    writeFileSync(v2, Buffer.concat([Buffer.from('934e554d5059' + '0200' + '74000000', 'hex'), Buffer.from("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }".padEnd(115) + '\n'), Buffer.from('000000000000803f0000004000004040', 'hex')]));
    assert.deepEqual(readNpy(v2).data, Float32Array.from([0, 1, 2, 3]));
    assert.deepEqual(NpyReader.open(v2).header.version, [2, 0]);
    // A big-endian '>f4' file is converted on read.
    const be = join(d, 'be.npy');
    const header = Buffer.from(encodeNpyHeader([3], 'float32').toString('latin1').replace('<f4', '>f4'), 'latin1');
    const body = Buffer.alloc(12);
    [1.5, -2, 3].forEach((v, i) => body.writeFloatBE(v, i * 4));
    writeFileSync(be, Buffer.concat([header, body]));
    assert.deepEqual(readNpy(be).data, Float32Array.from([1.5, -2, 3]));
  });

  test('row ranges and the streaming writer', () => {
    const d = tempDir();
    const data = Float32Array.from(randn(rng(2), 5 * 3));
    const w = new NpyWriter(join(d, 's.npy'), [5, 3], 'float32');
    w.write(data.subarray(0, 6));
    w.write(data.subarray(6));
    w.close();
    const r = NpyReader.open(join(d, 's.npy'));
    assert.equal(r.rows, 5);
    assert.deepEqual(r.readRows(1, 3), data.subarray(3, 9));
    assert.throws(() => r.readRows(4, 6), /outside/);
    r.close();
    const short = new NpyWriter(join(d, 't.npy'), [5, 3]);
    short.write(data.subarray(0, 3));
    assert.throws(() => short.close(), /got 1 rows/);
    assert.throws(() => new NpyWriter(join(d, 'u.npy'), [2, 3]).write(new Float32Array(4)), /whole number of rows/);
  });

  test('malformed files give clear errors', () => {
    const d = tempDir();
    const good = Buffer.concat([encodeNpyHeader([2, 2], 'float32'), Buffer.alloc(16)]);
    const bad = (name: string, bytes: Buffer, re: RegExp): void => {
      writeFileSync(join(d, name), bytes);
      assert.throws(() => readNpy(join(d, name)), (e: Error) => e instanceof NpyFormatError && re.test(e.message), name);
    };
    const withHeader = (dict: string): Buffer => {
      const h = encodeNpyHeader([2, 2], 'float32');
      const text = dict.padEnd(h.length - 11) + '\n';
      h.write(text, 10, 'latin1');
      return Buffer.concat([h, Buffer.alloc(16)]);
    };
    bad('magic.npy', Buffer.from('not numpy at all'), /not an \.npy file/);
    bad('version.npy', Buffer.concat([good.subarray(0, 6), Buffer.from([9, 0]), good.subarray(8)]), /version 9\.0/);
    bad('truncated-header.npy', good.subarray(0, 40), /truncated header/);
    bad('truncated-data.npy', good.subarray(0, good.length - 3), /truncated: shape \[2,2\] float32 needs/);
    bad('trailing.npy', Buffer.concat([good, Buffer.alloc(4)]), /4 unexpected bytes/);
    bad('f8.npy', withHeader("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }"), /unsupported dtype '<f8'/);
    bad('fortran.npy', withHeader("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }"), /Fortran-order/);
    bad('noshape.npy', withHeader("{'descr': '<f4', 'fortran_order': False, }"), /lacks 'shape'/);
    bad('syntax.npy', withHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2 }"), /malformed header/);
    bad('negative.npy', withHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -2), }"), /bad dimension/);
  });
});

// ---- the store -------------------------------------------------------------------------

describe('VectorStore', () => {
  test('add / search / get / update / upsert / delete round trip', async () => {
    const dir = tempDir();
    const store = await VectorStore.open(dir, { dim: 8 });
    const vecs = randomVectors(40, 8, 3);
    const items: StoreItem[] = vecs.map((v, i) => ({ id: `item-${i}`, vector: v, path: `img/${i % 2 ? 'cats' : 'dogs'}/${i}.jpg`, caption: i === 7 ? "it's a cat" : undefined, split: i < 30 ? 'train' : 'val' }));
    await store.add(items);
    assert.equal(await store.count(), 40);

    // The nearest neighbour of a stored vector is itself, with cosine similarity 1; scores descend.
    for (const i of [0, 7, 39]) {
      const hits = await store.search(vecs[i]!, 5);
      assert.equal(hits[0]!.id, `item-${i}`);
      assert.ok(Math.abs(hits[0]!.score - 1) < 1e-5, `score ${hits[0]!.score}`);
      for (let j = 1; j < hits.length; j++) assert.ok(hits[j - 1]!.score >= hits[j]!.score);
    }
    // Scores are cosine similarities: check one against a direct computation; scale does not matter.
    const [a, b] = [vecs[0]!, vecs[1]!];
    const cos = a.reduce((s, x, j) => s + x * b[j]!, 0) / Math.hypot(...a) / Math.hypot(...b);
    const hit = (await store.search(a.map((x) => x * 3), 40)).find((h) => h.id === 'item-1')!;
    assert.ok(Math.abs(hit.score - cos) < 1e-5);
    // Path, caption and extra metadata come back.
    const seven = (await store.search(vecs[7]!, 1))[0]!;
    assert.deepEqual({ ...seven, score: 0 }, { id: 'item-7', path: 'img/cats/7.jpg', caption: "it's a cat", metadata: { split: 'train' }, score: 0 });

    // update: in place, without an index rebuild; unknown ids are refused before anything is written.
    const flipped = vecs[0]!.map((x) => -x);
    assert.equal(await store.update([{ id: 'item-0', vector: flipped, caption: 'flipped' }]), 1);
    assert.equal((await store.search(flipped, 1))[0]!.id, 'item-0');
    assert.equal((await store.get(['item-0']))[0]!.caption, 'flipped');
    await assert.rejects(store.update([{ id: 'item-1', vector: vecs[1]! }, { id: 'nope', vector: vecs[1]! }]), /1 id\(s\) not in the store \('nope'\)/);
    // upsert: replaces and inserts in one merge.
    const fresh = randomVectors(1, 8, 99)[0]!;
    assert.deepEqual(await store.upsert([{ id: 'item-1', vector: vecs[2]! }, { id: 'new', vector: fresh }]), { inserted: 1, updated: 1 });
    assert.equal(await store.count(), 41);
    assert.deepEqual((await store.get(['new']))[0]!.vector, fresh);
    // add refuses ids already stored.
    await assert.rejects(store.add([{ id: 'new', vector: fresh }]), /already in the store \('new'\); use upsert/);

    assert.equal(await store.delete(['item-3', 'item-4', 'never-stored']), 2);
    assert.equal(await store.count(), 39);
    assert.notEqual((await store.search(vecs[3]!, 1))[0]!.id, 'item-3');
    store.close();

    // Reopening infers the dimension; a different one is an error.
    const again = await VectorStore.open(dir);
    assert.equal(again.dim, 8);
    assert.equal(await again.count(), 39);
    again.close();
    await assert.rejects(VectorStore.open(dir, { dim: 16 }), /holds 8-d vectors, but 16-d were given/);
    await assert.rejects(VectorStore.open(tempDir()), /no store in .* \(give dim to create one\)/);
  });

  test('filters (SQL over id, path, caption, meta), quoting', async () => {
    const store = await VectorStore.open(tempDir(), { dim: 8 });
    const vecs = randomVectors(30, 8, 4);
    await store.add(vecs.map((v, i) => ({ id: `i${i}`, vector: v, path: `${i % 3 === 0 ? 'cats' : 'dogs'}/${i}.jpg`, caption: i === 5 ? "o'brien" : `c${i}` })));
    const cats = await store.search(vecs[1]!, 30, { filter: "path LIKE 'cats/%'" });
    assert.equal(cats.length, 10);
    assert.ok(cats.every((h) => h.path!.startsWith('cats/')));
    const quoted = await store.search(vecs[0]!, 5, { filter: `caption = ${sqlString("o'brien")}` });
    assert.deepEqual(quoted.map((h) => h.id), ['i5']);
    assert.equal(await store.count("path LIKE 'dogs/%'"), 20);
    store.close();
  });

  test('validation: dimension, NaN, zero vector, duplicate and bad ids', async () => {
    const store = await VectorStore.open(tempDir(), { dim: 4 });
    const v = Float32Array.from([1, 2, 3, 4]);
    await assert.rejects(store.add([{ id: 'a', vector: new Float32Array(5) }]), /item 'a': vector has 5 values, the store holds 4-d vectors/);
    await assert.rejects(store.add([{ id: 'a', vector: [1, NaN, 0, 0] }]), /item 'a': vector\[1\] is NaN/);
    await assert.rejects(store.add([{ id: 'a', vector: [1, Infinity, 0, 0] }]), /vector\[1\] is Infinity/);
    await assert.rejects(store.add([{ id: 'a', vector: new Float32Array(4) }]), /all zeros/);
    await assert.rejects(store.add([{ id: 'a', vector: v }, { id: 'b', vector: v }, { id: 'a', vector: v }]), /duplicate id 'a' \(item 2\)/);
    await assert.rejects(store.add([{ id: '', vector: v }]), /non-empty string id/);
    await assert.rejects(store.add([{ id: 'a', vector: v, path: 3 as unknown as string }]), /path must be a string/);
    await assert.rejects(store.search(new Float32Array(3), 1), /query vector: vector has 3 values/);
    await assert.rejects(store.search(v, 0), /k must be a positive integer/);
    assert.equal(await store.count(), 0, 'nothing was written by the failed adds');
    store.close();
  });

  test('IVF-PQ on 5k clustered vectors: recall@10 ≥ 0.95 (≥ 0.9 probing 3 partitions); new rows found, deleted rows gone', async (t) => {
    // 50 gaussian clusters in 64-d; queries are fresh draws from the same mixture.
    const dim = 64;
    const r = rng(5);
    const centres = Array.from({ length: 50 }, () => randn(r, dim));
    const draw = (): Float32Array => {
      const c = centres[Math.floor(r() * centres.length)]!;
      return Float32Array.from(c, (x) => x + 0.75 * randn(r, 1)[0]!);
    };
    // annThreshold 4500: the 5th add of 1000 rows crosses it and autoIndex builds the index.
    const store = await VectorStore.open(tempDir(), { dim, annThreshold: 4500 });
    for (let b = 0; b < 5; b++) {
      await store.add(Array.from({ length: 1000 }, (_, i) => ({ id: String(b * 1000 + i), vector: draw() })));
      assert.equal((await store.indexInfo()) !== undefined, b === 4, `index after batch ${b}`);
    }
    assert.deepEqual(await store.indexInfo(), { type: 'IVF_PQ', indexedRows: 5000, unindexedRows: 0 });
    assert.deepEqual(defaultIndexParams(5000, dim), { numPartitions: 19, numSubVectors: 4 });

    // Default search (nprobes 20 ≥ the 19 partitions: every partition, PQ + exact re-ranking), and
    // probing 3 of 19 partitions, where the IVF part must find the query's cluster.
    const queries = Array.from({ length: 30 }, draw);
    const recallAt10 = async (o: { nprobes?: number }): Promise<number> => {
      let hits = 0;
      for (const q of queries) {
        const exact = new Set((await store.search(q, 10, { exact: true })).map((h) => h.id));
        hits += (await store.search(q, 10, o)).filter((h) => exact.has(h.id)).length;
      }
      return hits / (10 * queries.length);
    };
    const [full, probed] = [await recallAt10({}), await recallAt10({ nprobes: 3 })];
    t.diagnostic(`recall@10 of IVF-PQ vs exact: ${full.toFixed(3)} (nprobes 20), ${probed.toFixed(3)} (nprobes 3)`);
    assert.ok(full >= 0.95, `recall@10 ${full}`);
    assert.ok(probed >= 0.9, `recall@10 at nprobes 3: ${probed}`);

    // Rows added after the build are not in the index yet, but searches still find them
    // (LanceDB scans unindexed rows exactly and merges them in).
    const late = draw();
    await store.add([{ id: 'late', vector: late }]);
    assert.equal((await store.indexInfo())!.unindexedRows, 1);
    const found = await store.search(late, 3);
    assert.equal(found[0]!.id, 'late');
    assert.ok(Math.abs(found[0]!.score - 1) < 1e-5);
    // Deleted indexed rows are masked out of index results.
    const victim = (await store.search(queries[0]!, 1))[0]!.id;
    await store.delete([victim]);
    assert.ok(!(await store.search(queries[0]!, 10)).some((h) => h.id === victim));
    // Upserting an indexed row moves it: its new vector is found, the old one is not.
    await store.upsert([{ id: '0', vector: late.map((x) => -x) }]);
    assert.equal((await store.search(late.map((x) => -x), 1))[0]!.id, '0');
    store.close();
  });
});

// ---- the CLI ---------------------------------------------------------------------------

function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

describe('clipkit index / search', () => {
  let root: string;
  let modelDir: string;
  let textVec: Float32Array;
  let imageVec: Float32Array;
  const imagePath = (): string => join(root, 'red.png');

  before(async () => {
    const { ClipModel } = await import('../src/models/clip-model.js');
    const { fromOpenClip } = await import('../src/models/config.js');
    const { trainBpe } = await import('../src/tokenizer/index.js');
    const { preprocessBatch } = await import('../src/data/image.js');
    root = tempDir();
    modelDir = join(root, 'model');
    const model = ClipModel.random(
      fromOpenClip({
        embed_dim: 16,
        vision_cfg: { image_size: 16, layers: 1, width: 32, patch_size: 8, head_width: 32 },
        text_cfg: { context_length: 8, vocab_size: 600, width: 32, heads: 2, layers: 1 },
      }),
    );
    await model.save(modelDir);
    const corpus = ['a photo of a cat', 'a photo of a dog', 'two cats on a sofa', 'the dog runs in the park', 'a red car parked outside', 'photos of cats and dogs'];
    const tok = trainBpe(Array.from({ length: 20 }, () => corpus).flat(), { vocabSize: 600 });
    tok.save(join(modelDir, 'tokenizer.json'));
    textVec = (await model.encodeText(tok.encode(['a photo of a cat'], { contextLength: 8, truncate: true }))).data;
    await sharp({ create: { width: 20, height: 24, channels: 3, background: { r: 200, g: 30, b: 40 } } }).png().toFile(imagePath());
    imageVec = (await model.encodeImage(await preprocessBatch([imagePath()], { size: 16 }))).data;

    // An embedding directory as `embed` writes it: embeddings .npy + metadata .jsonl, row for row.
    const emb = join(root, 'emb');
    const vecs = randomVectors(50, 16, 6);
    vecs[10] = textVec;
    vecs[20] = imageVec;
    const flat = new Float32Array(50 * 16);
    vecs.forEach((v, i) => flat.set(v, i * 16));
    mkdirSync(emb);
    writeNpy(join(emb, 'embeddings.npy'), { data: flat, shape: [50, 16] });
    const meta = vecs.map((_, i) => JSON.stringify({ id: `r${i}`, path: i === 20 ? 'red.png' : `img/${i}.jpg`, caption: i === 10 ? 'a cat' : `row ${i}` }));
    writeFileSync(join(emb, 'metadata.jsonl'), meta.join('\n') + '\n');
  });

  test('index a directory, then search by text and by image', async () => {
    const db = join(root, 'db');
    const idx = await cli('index', join(root, 'emb'), '--db', db, '--ids-from', 'metadata');
    assert.equal(idx.code, 0, idx.stderr);
    assert.match(idx.stdout, /indexed 50 rows \(50 new, 0 replaced\) .* 50 rows of 16-d, exact search/);
    assert.match(idx.stderr, /index: 50\/50 rows \(100%/);

    // Both searches only read the store: run them side by side.
    const [byText, byImage] = await Promise.all([
      cli('search', 'a photo of a cat', '--db', db, '--model', modelDir, '-k', '3', '--json'),
      cli('search', '--image', imagePath(), '--db', db, '--model', modelDir, '-k', '2'),
    ]);
    assert.equal(byText.code, 0, byText.stderr);
    const hits = JSON.parse(byText.stdout) as { id: string; score: number; path: string; caption: string }[];
    assert.equal(hits.length, 3);
    assert.deepEqual({ id: hits[0]!.id, caption: hits[0]!.caption }, { id: 'r10', caption: 'a cat' });
    assert.ok(hits[0]!.score > 0.9999, `score ${hits[0]!.score}`);

    assert.equal(byImage.code, 0, byImage.stderr);
    const lines = byImage.stdout.trim().split('\n');
    assert.match(lines[0]!, /#\s+score\s+id\s+path\s+caption/);
    assert.match(lines[1]!, /^\s*1\s+1\.0000\s+r20\s+red\.png\s+row 20$/);

    // Re-indexing the same ids needs --upsert.
    const again = await cli('index', join(root, 'emb', 'embeddings.npy'), '--db', db, '--metadata', join(root, 'emb', 'metadata.jsonl'), '--ids-from', 'metadata');
    assert.equal(again.code, 1);
    assert.match(again.stderr, /already in the store .* use upsert/);
    const upsert = await cli('index', join(root, 'emb'), '--db', db, '--ids-from', 'metadata', '--upsert', '--json');
    assert.equal(upsert.code, 0, upsert.stderr);
    assert.deepEqual((({ inserted, updated, total }) => ({ inserted, updated, total }))(JSON.parse(upsert.stdout)), { inserted: 0, updated: 50, total: 50 });
  });

  test('errors: model/store dimension mismatch, bad metadata, usage', async () => {
    const npy8 = join(root, 'e8.npy');
    writeNpy(npy8, { data: Float32Array.from(randn(rng(7), 5 * 8)), shape: [5, 8] });
    const db8 = join(root, 'db8');
    assert.equal((await cli('index', npy8, '--db', db8)).code, 0);
    const shortJsonl = join(root, 'short.jsonl');
    writeFileSync(shortJsonl, '{"path": "a"}\n{"path": "b"}\n');
    const badJsonl = join(root, 'bad.jsonl');
    writeFileSync(badJsonl, '{"path": "a"}\n{"path": "b"}\noops\n{}\n{}\n');
    const [mismatch, short, bad, usage, badChoice] = await Promise.all([
      cli('search', 'a cat', '--db', db8, '--model', modelDir),
      cli('index', npy8, '--db', join(root, 'db9'), '--metadata', shortJsonl),
      cli('index', npy8, '--db', join(root, 'db10'), '--metadata', badJsonl),
      cli('search', 'a cat', '--model', modelDir),
      cli('index', npy8, '--db', db8, '--ann', 'sometimes'),
    ]);
    assert.equal(mismatch.code, 1);
    assert.match(mismatch.stderr, /holds 8-d embeddings, but model .* embeds to 16-d/);
    assert.equal(short.code, 1);
    assert.match(short.stderr, /has 2 lines but the embeddings have 5 rows/);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /bad\.jsonl:3: not JSON/);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /--db <dir> is required/);
    assert.equal(badChoice.code, 2);
    assert.match(badChoice.stderr, /--ann must be one of auto, on, off/);
  });
});
