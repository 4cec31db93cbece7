// clipkit export: the exported towers run on plain ONNX Runtime — onnxruntime-node, and
// onnxruntime-web's wasm backend in Node — and give the features of the in-process encoders (and,
// for the reference fixture, of OpenAI's PyTorch code). External data is exercised on a tiny model.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, sep } from 'node:path';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';
import onnxProto from 'onnx-proto';
import * as ortWeb from 'onnxruntime-web';
import { SafetensorsFile } from '../src/checkpoint/safetensors.js';
import { EXTERNAL_ALIGN, EXTERNAL_THRESHOLD, opsetProblems } from '../src/graph/export.js';
import { ClipModel } from '../src/models/clip-model.js';
import { fromOpenClip } from '../src/models/config.js';
import type { ExportMetadata } from '../src/models/export.js';
import { loadClip } from '../src/models/load.js';
import { Rng } from '../src/nn/init.js';
import { Session } from '../src/runtime/session.js';
import { maxAbsDiff } from './helpers.js';

const FIX = new URL('../../test/reference/fixtures/', import.meta.url).pathname;
const CLI = new URL('../src/cli/main.js', import.meta.url).pathname;

// The wasm backend loads its .mjs/.wasm from the installed package (no network): point it there
// explicitly, and keep it single-threaded so no worker threads outlive the test.
// Import onnxruntime-web's ESM entry (as here), never require() it next to onnxruntime-node: the
// CommonJS builds share one onnxruntime-common whose backend table keeps the FIRST 'cpu' backend
// registered, so a CommonJS onnxruntime-web loaded first silently takes over clipkit's sessions.
ortWeb.env.wasm.wasmPaths = pathToFileURL(dirname(createRequire(import.meta.url).resolve('onnxruntime-web')) + sep).href;
ortWeb.env.wasm.numThreads = 1;

const TINY = {
  embed_dim: 16,
  vision_cfg: { image_size: 32, layers: 2, width: 64, patch_size: 8, head_width: 32 },
  text_cfg: { context_length: 16, vocab_size: 300, width: 48, heads: 3, layers: 2 },
};

type Batch = { data: Float32Array | BigInt64Array; shape: number[] };

function randomInputs(n: number, size: number, len: number, vocab: number, seed = 1): { pixels: Batch; ids: Batch } {
  const r = new Rng(seed);
  const ids = new BigInt64Array(n * len);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < len; j++) ids[i * len + j] = BigInt(r.int(vocab - 1));
    ids[i * len + 1 + r.int(len - 1)] = BigInt(vocab - 1); // end-of-text: the largest id, pooled at
  }
  return {
    pixels: { data: Float32Array.from({ length: n * 3 * size * size }, () => r.normal()), shape: [n, 3, size, size] },
    ids: { data: ids, shape: [n, len] },
  };
}

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'clipkit-export-'));
}

/** Runs one exported model through clipkit's Session (onnxruntime-node), loading it by path. */
async function runNode(dir: string, file: string, input: string, x: Batch): Promise<Float32Array> {
  const s = await Session.create(join(dir, file), { cacheKey: false, threads: 1 });
  try {
    const res = await s.run({ [input]: x });
    return res[s.outputNames[0]!]!.data as Float32Array;
  } finally {
    await s.release();
  }
}

/** Runs one exported model on onnxruntime-web's wasm backend; external data must be named to it. */
async function runWeb(dir: string, m: ExportMetadata['models']['vision'], x: Batch): Promise<Float32Array> {
  const ext = m.externalData ? [{ path: m.externalData.file, data: join(dir, m.externalData.file) }] : undefined;
  const s = await ortWeb.InferenceSession.create(join(dir, m.file), { executionProviders: ['wasm'], ...(ext ? { externalData: ext } : {}) });
  try {
    const t = x.data instanceof Float32Array ? new ortWeb.Tensor('float32', x.data, x.shape) : new ortWeb.Tensor('int64', x.data, x.shape);
    const res = await s.run({ [m.inputs[0]!.name]: t });
    return res[m.outputs[0]!.name]!.data as Float32Array;
  } finally {
    await s.release();
  }
}

/** Both runtimes against the in-process encoders; returns the four differences. */
async function compareAll(model: ClipModel, dir: string, meta: ExportMetadata, x: { pixels: Batch; ids: Batch }) {
  const img = (await model.encodeImage(x.pixels as { data: Float32Array; shape: number[] })).data;
  const txt = (await model.encodeText(x.ids as { data: BigInt64Array; shape: number[] })).data;
  return {
    img,
    txt,
    nodeImg: await runNode(dir, 'vision.onnx', 'pixels', x.pixels),
    nodeTxt: await runNode(dir, 'text.onnx', 'input_ids', x.ids),
    webImg: await runWeb(dir, meta.models.vision, x.pixels),
    webTxt: await runWeb(dir, meta.models.text, x.ids),
  };
}

function assertClose(name: string, a: Float32Array, b: Float32Array, tol: number): void {
  const d = maxAbsDiff(a, b);
  assert.ok(d <= tol, `${name}: max abs diff ${d} > ${tol}`);
}

test('tiny model: vision.onnx and text.onnx match encodeImage/encodeText on onnxruntime-node and -web (wasm)', async () => {
  const model = ClipModel.random(fromOpenClip(TINY), 3);
  const dir = tmp();
  try {
    const meta = await model.exportOnnx(dir);
    for (const f of ['vision.onnx', 'text.onnx', 'clipkit-export.json']) assert.ok(existsSync(join(dir, f)), f);
    assert.ok(!existsSync(join(dir, 'vision.onnx.data')), 'a small model keeps its weights inline');
    const onDisk = JSON.parse(readFileSync(join(dir, 'clipkit-export.json'), 'utf8')) as ExportMetadata;
    assert.deepEqual(onDisk, JSON.parse(JSON.stringify(meta)));
    assert.deepEqual(meta.models.vision.inputs, [{ name: 'pixels', dtype: 'float32', shape: ['N', 3, 32, 32] }]);
    assert.deepEqual(meta.models.vision.outputs, [{ name: 'image_embeds', dtype: 'float32', shape: ['N', 16] }]);
    assert.deepEqual(meta.models.text.inputs, [{ name: 'input_ids', dtype: 'int64', shape: ['N', 16] }]);
    assert.deepEqual(meta.models.text.outputs, [{ name: 'text_embeds', dtype: 'float32', shape: ['N', 16] }]);
    assert.deepEqual(meta.image.mean, [0.48145466, 0.4578275, 0.40821073]);
    assert.deepEqual(meta.image.std, [0.26862954, 0.26130258, 0.27577711]);
    assert.equal(meta.image.size, 32);
    assert.equal(meta.text.contextLength, 16);
    assert.ok(Math.abs(meta.logitScale - 1 / 0.07) < 1e-4);
    assert.deepEqual(meta.models.vision.opsets, { 'ai.onnx': 17, 'com.microsoft': 1 });
    assert.deepEqual(meta.models.vision.ops['com.microsoft'], ['Attention', 'Gelu']);
    assert.deepEqual(opsetProblems(meta.models.vision), []);
    assert.deepEqual(opsetProblems(meta.models.text), []);

    const r = await compareAll(model, dir, meta, randomInputs(3, 32, 16, 300));
    assertClose('node image', r.nodeImg, r.img, 1e-5);
    assertClose('node text', r.nodeTxt, r.txt, 1e-5);
    assertClose('wasm image', r.webImg, r.img, 1e-5);
    assertClose('wasm text', r.webTxt, r.txt, 1e-5);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('external data (always): weights in <model>.onnx.data at 4096-aligned offsets; same features', async () => {
  const model = ClipModel.random(fromOpenClip(TINY), 4);
  const dir = tmp();
  try {
    const meta = await model.exportOnnx(dir, { externalData: 'always' });
    for (const [file, m] of [['vision.onnx', meta.models.vision], ['text.onnx', meta.models.text]] as const) {
      const dataFile = join(dir, `${file}.data`);
      assert.ok(existsSync(dataFile), `${file}.data exists`);
      assert.equal(m.externalData?.file, `${file}.data`);
      const dataSize = statSync(dataFile).size;
      assert.equal(dataSize, m.externalData!.bytes);
      // Every large initializer points into the side file; the .onnx keeps only small constants.
      const proto = onnxProto.onnx.ModelProto.decode(readFileSync(join(dir, file)));
      let external = 0;
      let end = 0;
      for (const t of proto.graph!.initializer!) {
        if (t.dataLocation !== onnxProto.onnx.TensorProto.DataLocation.EXTERNAL) {
          assert.ok(t.rawData!.length < EXTERNAL_THRESHOLD, `${t.name} is inline but large`);
          continue;
        }
        external++;
        const kv = Object.fromEntries(t.externalData!.map((e) => [e.key, e.value]));
        assert.equal(kv.location, `${file}.data`);
        const offset = Number(kv.offset);
        const length = Number(kv.length);
        assert.equal(offset % EXTERNAL_ALIGN, 0, `${t.name} offset ${offset}`);
        assert.ok(offset >= end, `${t.name} overlaps the previous tensor`);
        assert.equal(length, 4 * t.dims!.reduce((a, b) => a * Number(b), 1));
        assert.equal(t.rawData!.length, 0);
        end = offset + length;
      }
      assert.equal(external, m.externalData!.tensors);
      assert.equal(end, dataSize);
      assert.ok(m.bytes < 32 * 1024, `${file} is ${m.bytes} bytes`);
    }
    const r = await compareAll(model, dir, meta, randomInputs(2, 32, 16, 300, 7));
    assertClose('node image', r.nodeImg, r.img, 1e-5);
    assertClose('node text', r.nodeTxt, r.txt, 1e-5);
    assertClose('wasm image', r.webImg, r.img, 1e-5);
    assertClose('wasm text', r.webTxt, r.txt, 1e-5);

    // Exporting inline into the same directory removes the side files that no longer belong.
    await model.exportOnnx(dir, { externalData: 'never' });
    assert.ok(!existsSync(join(dir, 'vision.onnx.data')));
    assert.ok(maxAbsDiff(await runNode(dir, 'vision.onnx', 'pixels', randomInputs(2, 32, 16, 300, 7).pixels), r.img) <= 1e-5);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("external data 'auto' switches past the size limit; 'never' refuses", async () => {
  // The limit is lowered to between the two towers' sizes: no 2 GB model is built.
  const model = ClipModel.random(fromOpenClip(TINY), 5);
  const dir = tmp();
  try {
    const meta = await model.exportOnnx(dir, { limit: 380_000 });
    assert.ok(meta.models.vision.externalData, 'vision (≈ 466 KB) goes external');
    assert.equal(meta.models.text.externalData, null, 'text (≈ 296 KB) stays inline');
    await assert.rejects(model.exportOnnx(dir, { limit: 380_000, externalData: 'never' }), /vision\.onnx: about .* past protobuf's .* limit; use external data/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('reference fixture clip_a: exported models reproduce PyTorch within 1e-4 and clipkit within 1e-5', async (t) => {
  const cfg = JSON.parse(readFileSync(join(FIX, 'clip_a.json'), 'utf8')).openclip_config;
  const model = await loadClip(join(FIX, 'clip_a.safetensors'), { config: cfg });
  const st = await SafetensorsFile.open(join(FIX, 'clip_a_io.safetensors'));
  const images = { data: await st.readFloat32('images'), shape: [...st.info('images').shape] };
  const tokens = { data: await st.readInt64('tokens'), shape: [...st.info('tokens').shape] };
  const ref = { image: await st.readFloat32('image_features'), text: await st.readFloat32('text_features') };
  await st.close();
  const dir = tmp();
  try {
    const started = performance.now();
    const meta = await model.exportOnnx(dir);
    t.diagnostic(`export: ${(performance.now() - started).toFixed(0)} ms; vision.onnx ${meta.models.vision.bytes} B, text.onnx ${meta.models.text.bytes} B`);
    assert.deepEqual(meta.models.vision.ops['com.microsoft'], ['Attention', 'QuickGelu']);
    const r = await compareAll(model, dir, meta, { pixels: images, ids: tokens });
    // clipkit itself still runs on onnxruntime-node (see the note on importing onnxruntime-web).
    assertClose('clipkit image vs PyTorch', r.img, ref.image, 1e-4);
    assertClose('clipkit text vs PyTorch', r.txt, ref.text, 1e-4);
    for (const [k, a] of [['node', r.nodeImg], ['wasm', r.webImg]] as const) {
      assertClose(`${k} image vs PyTorch`, a, ref.image, 1e-4);
      assertClose(`${k} image vs clipkit`, a, r.img, 1e-5);
    }
    for (const [k, a] of [['node', r.nodeTxt], ['wasm', r.webTxt]] as const) {
      assertClose(`${k} text vs PyTorch`, a, ref.text, 1e-4);
      assertClose(`${k} text vs clipkit`, a, r.txt, 1e-5);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** A random tiny CLIP saved in `dir`, exported by the CLI with `args` and --opset-check --json. */
async function exportTiny(dir: string, args: string[]) {
  const model = ClipModel.random(fromOpenClip(TINY), 6);
  await model.save(join(dir, 'tiny.safetensors'));
  const out = join(dir, 'onnx');
  const res = await cli(['export', '--model', join(dir, 'tiny.safetensors'), '--out', out, ...args, '--opset-check', '--json']);
  assert.equal(res.code, 0, res.stderr);
  return { model, out, meta: JSON.parse(res.stdout) as ExportMetadata & { check: { problems: string[]; vision: number; text: number } } };
}

test('clipkit export: fixed batch, shorter text, external data, --opset-check', async () => {
  const dir = tmp();
  try {
    const { model, out, meta } = await exportTiny(dir, ['--batch', '3', '--text-length', '8', '--external-data', 'always']);
    assert.deepEqual(meta.check.problems, []);
    assert.ok(meta.check.vision <= 1e-5 && meta.check.text <= 1e-5);
    assert.deepEqual(meta.models.vision.inputs[0]!.shape, [3, 3, 32, 32]);
    assert.deepEqual(meta.models.text.inputs[0]!.shape, [3, 8]);
    assert.equal(meta.text.length, 8);
    assert.ok(existsSync(join(out, 'text.onnx.data')));
    const x = randomInputs(3, 32, 8, 300, 9);
    assertClose('cli text', await runNode(out, 'text.onnx', 'input_ids', x.ids), (await model.encodeText(x.ids as { data: BigInt64Array; shape: number[] })).data, 1e-5);
    // The batch is fixed: another batch size is refused by ONNX Runtime.
    await assert.rejects(runNode(out, 'vision.onnx', 'pixels', randomInputs(2, 32, 8, 300).pixels));

    const human = await cli(['export', '--model', join(dir, 'tiny.safetensors'), '--out', out]);
    assert.equal(human.code, 0, human.stderr);
    assert.match(human.stdout, /vision\.onnx .* pixels float32\[N, 3, 32, 32\] → image_embeds float32\[N, 16\]/);
    assert.match(human.stdout, /contrib ops: com\.microsoft\.Attention, com\.microsoft\.Gelu/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('clipkit export --int8: DynamicQuantizeMatMul towers that plain onnxruntime-node runs, equal to the int8 model in clipkit', async () => {
  const dir = tmp();
  try {
    const { out, meta } = await exportTiny(dir, ['--int8']);
    assert.equal(meta.quantize, 'int8');
    for (const m of [meta.models.vision, meta.models.text]) assert.ok(m.ops['com.microsoft']?.includes('DynamicQuantizeMatMul'), `${m.file}: ${JSON.stringify(m.ops)}`);
    assert.ok(meta.check.vision <= 1e-5 && meta.check.text <= 1e-5, JSON.stringify(meta.check));
    const q8 = await loadClip(join(dir, 'tiny.safetensors'), { quantize: 'int8' });
    const x = randomInputs(3, 32, 8, 300, 9);
    assertClose('int8 vision', await runNode(out, 'vision.onnx', 'pixels', x.pixels), (await q8.encodeImage(x.pixels as { data: Float32Array; shape: number[] })).data, 1e-5);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('clipkit export: malformed calls fail with a clear message and exit code 2', async () => {
  const dir = tmp();
  try {
    const m = join(dir, 'tiny.safetensors');
    await ClipModel.random(fromOpenClip(TINY), 6).save(m);
    const o = join(dir, 'o');
    const cases: [string[], RegExp, number][] = [
      [['--out', o], /export: --model <path> is required/, 2],
      [['--model', m], /export: --out <directory> is required/, 2],
      [['--model', m, '--out', o, '--bogus'], /export: Unknown option '--bogus'/, 2],
      [['--model', m, '--out', o, '--batch', '0'], /export: --batch must be 'dynamic' or a positive integer, got '0'/, 2],
      [['--model', m, '--out', o, '--batch', '2.5'], /--batch must be 'dynamic' or a positive integer, got '2\.5'/, 2],
      [['--model', m, '--out', o, '--text-length', '17'], /export: --text-length must be ≤ 16 \(the model's context length\), got 17/, 2],
      [['--model', m, '--out', o, '--text-length', '0'], /export: --text-length must be ≥ 1, got 0/, 2],
      [['--model', m, '--out', o, '--external-data', 'sometimes'], /--external-data must be one of auto, always, never, got 'sometimes'/, 2],
      [['--model', join(dir, 'missing.safetensors'), '--out', o], /loadClip: '.*missing\.safetensors' does not exist/, 1],
    ];
    const results = await Promise.all(cases.map(([args]) => cli(['export', ...args])));
    for (const [i, [args, msg, code]] of cases.entries()) {
      const res = results[i]!;
      assert.equal(res.code, code, `${args.join(' ')}: exit ${res.code}\n${res.stderr}`);
      assert.match(res.stderr, msg, args.join(' '));
    }
    assert.ok(!existsSync(o), 'nothing is written by a failed call');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('opsetProblems names ops outside the declared opsets', () => {
  const problems = opsetProblems({
    opsets: { 'ai.onnx': 17, 'com.microsoft': 1 },
    ops: { 'ai.onnx': ['Add', 'Trilu', 'Gelu'], 'com.microsoft': ['Attention', 'RotaryEmbedding'], 'org.example': ['Foo'] },
  });
  assert.equal(problems.length, 3, problems.join('\n'));
  assert.match(problems[0]!, /^Gelu: not a standard op clipkit knows/);
  assert.match(problems[1]!, /com\.microsoft\.RotaryEmbedding: not a contrib op/);
  assert.match(problems[2]!, /org\.example\.Foo: the model does not import/);
  assert.match(opsetProblems({ opsets: { 'ai.onnx': 13 }, ops: { 'ai.onnx': ['LayerNormalization'] } })[0]!, /introduced in opset 17, the model declares 13/);
});
