// ViT image classification (src/models/vit.ts, src/train/vit-run.ts, clipkit vit): graph shapes and
// parameter names for every pooling / position embedding / convolutional stem, one forward through
// ONNX Runtime, config validation, the sine-cosine table and patchify against hand computation,
// mixup/cutmix invariants, `clipkit vit train|eval` end to end on coloured squares, exact resume after
// SIGKILL, and fine-tuning that really starts from a CLIP image tower.
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { gradients } from '../src/autodiff/grad.js';
import { Graph } from '../src/graph/graph.js';
import * as o from '../src/graph/ops.js';
import { ClipModel } from '../src/models/clip-model.js';
import { fromOpenClip } from '../src/models/config.js';
import { type VitConfig, keptPatches, patchKeepIndices, patchify, sincos2d, validateVit, vit, vitDefaults, vitTokens } from '../src/models/vit.js';
import { linearWith } from '../src/nn/layers.js';
import { Rng, initParams } from '../src/nn/init.js';
import { compile } from '../src/runtime/compile.js';
import { flipWidth, loadVit, mixBatch, vitClassifierGraph } from '../src/train/vit-run.js';
import { evaluate, maxAbsDiff, randn, rng } from './helpers.js';

const CLI = new URL('../src/cli/main.js', import.meta.url).pathname;
const ENV = { ...process.env, CLIPKIT_THREADS: '1' };
const execP = promisify(execFile);
const cli = (...args: string[]) => execP(process.execPath, [CLI, 'vit', ...args], { encoding: 'utf8', env: ENV, maxBuffer: 1 << 24 });

/** The tiny model of the command-line tests (imageSize 16, 4×4 patches → 16 tokens). */
const TINY: VitConfig = { imageSize: 16, patchSize: 4, width: 32, layers: 1, heads: 2, mlpRatio: 2, pool: 'mean', lnPre: true, act: 'gelu', posEmbed: 'learned', outputDim: 0, numClasses: 3 };

let dir: string;
let data: string;
const N_IMAGES = 36;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'clipkit-vit-'));
  data = join(dir, 'data');
  // Three clearly different classes: a solid colour plus ±40 of per-pixel noise, 12 images each.
  const colours: Record<string, [number, number, number]> = { red: [220, 30, 30], green: [30, 200, 40], blue: [30, 40, 220] };
  const r = new Rng('vit-images');
  for (const [cls, rgb] of Object.entries(colours)) {
    mkdirSync(join(data, cls), { recursive: true });
    for (let i = 0; i < N_IMAGES / 3; i++) {
      const px = Buffer.alloc(16 * 16 * 3);
      for (let p = 0; p < 256; p++) for (let c = 0; c < 3; c++) px[p * 3 + c] = Math.max(0, Math.min(255, Math.round(rgb[c]! + (r.next() - 0.5) * 80)));
      await sharp(px, { raw: { width: 16, height: 16, channels: 3 } }).png().toFile(join(data, cls, `${String(i).padStart(2, '0')}.png`));
    }
  }
  writeFileSync(join(dir, 'tiny.json'), JSON.stringify(TINY));
  writeFileSync(join(dir, 'stem.json'), JSON.stringify({ ...TINY, convStem: [8] }));
});
after(() => rmSync(dir, { recursive: true, force: true }));

// ---------------------------------------------------------------- graph shapes and parameters

const base = vitDefaults({ imageSize: 16, patchSize: 4, width: 32, layers: 1, heads: 2, mlpRatio: 2, numClasses: 3 });

test('classifier graph: logits [N, classes] and parameter names/shapes for every pooling, position embedding and stem', async (t) => {
  const variants: Partial<VitConfig>[] = [
    { pool: 'cls' },
    { pool: 'mean' },
    { pool: 'attn' },
    { pool: 'cls', posEmbed: 'sincos' },
    { pool: 'attn', posEmbed: 'sincos' },
    { pool: 'mean', convStem: [8] },
    { pool: 'cls', convStem: [8, 8] },
  ];
  for (const v of variants) {
    const c: VitConfig = { ...base, ...v };
    const label = JSON.stringify(v);
    assert.equal(vitTokens(c), 16 + (c.pool === 'cls' ? 1 : 0), label);
    const { g, logits } = vitClassifierGraph(c, 2);
    assert.deepEqual(logits.shape, [2, 3], label);
    const shape = (n: string) => g.params.get(n)?.shape;
    const stem = c.convStem ?? [];
    stem.forEach((cout, i) => {
      assert.deepEqual(shape(`visual.stem.${i}.weight`), [cout, i === 0 ? 3 : stem[i - 1]!, 3, 3], `${label} stem ${i}`);
      assert.deepEqual(shape(`visual.stem.${i}.bias`), [cout], `${label} stem ${i} bias`);
    });
    assert.equal(shape(`visual.stem.${stem.length}.weight`), undefined, label);
    assert.deepEqual(shape('visual.conv1.weight'), [32, stem.at(-1) ?? 3, 4, 4], label);
    assert.deepEqual(shape('visual.class_embedding'), c.pool === 'cls' ? [32] : undefined, label);
    assert.deepEqual(shape('visual.positional_embedding'), c.posEmbed === 'learned' ? [vitTokens(c), 32] : undefined, label);
    assert.deepEqual(shape('visual.attn_pool.query'), c.pool === 'attn' ? [1, 1, 32] : undefined, label);
    assert.deepEqual(shape('visual.head.weight'), [3, 32], label);
    assert.deepEqual(shape('visual.head.bias'), [3], label);
    assert.deepEqual(shape('visual.ln_post.weight'), [32], label);
    assert.ok(g.params.has('visual.transformer.resblocks.0.attn.in_proj_weight'), label);
    assert.ok(!g.params.has('visual.proj') && !g.params.has('visual.transformer.resblocks.1.ln_1.weight'), label);
    assert.ok([...g.params.keys()].every((n) => n.startsWith('visual.')), label);

    // One forward through ONNX Runtime with a dynamic batch: [N, 3] finite logits that depend on the
    // image, and an image's logits do not depend on the other images of the batch.
    const dyn = vitClassifierGraph(c, 'N');
    dyn.g.mode = 'infer';
    assert.deepEqual(dyn.logits.shape, ['N', 3]);
    const params = initParams(dyn.g, 1);
    const run = await compile(dyn.g, { logits: dyn.logits }, { paramValues: params, threads: 1, cacheKey: false });
    const px = Float32Array.from(randn(rng(7), 2 * 3 * 16 * 16));
    const two = (await run.run({ pixels: { data: px, shape: [2, 3, 16, 16] } })).logits!;
    assert.deepEqual(two.shape, [2, 3], label);
    const out = two.data as Float32Array;
    assert.ok(out.every(Number.isFinite), `${label}: ${out}`);
    assert.ok(maxAbsDiff(out.subarray(0, 3), out.subarray(3, 6)) > 1e-4, `${label}: logits do not depend on the image`);
    const one = (await run.run({ pixels: { data: px.subarray(0, 3 * 256), shape: [1, 3, 16, 16] } })).logits!.data as Float32Array;
    assert.ok(maxAbsDiff(one, out.subarray(0, 3)) < 1e-5, `${label}: batch of 1 ${one} vs row 0 ${out.subarray(0, 3)}`);

    if (stem.length) {
      // The stem is wired in: changing its first convolution changes the logits.
      const moved = new Map(params);
      moved.set('visual.stem.0.weight', params.get('visual.stem.0.weight')!.map((w) => w * -1.5));
      const run2 = await compile(dyn.g, { logits: dyn.logits }, { paramValues: moved, threads: 1, cacheKey: false });
      const other = (await run2.run({ pixels: { data: px.subarray(0, 3 * 256), shape: [1, 3, 16, 16] } })).logits!.data as Float32Array;
      assert.ok(maxAbsDiff(other, one) > 1e-4, `${label}: the stem does not affect the output`);
    }
    t.diagnostic(`${label}: ${g.params.size} parameters, logits[0] ${[...one].map((x) => x.toFixed(3))}`);
  }
});

test('vit(): output width without a head, with a projection, and the pixel shape it expects', () => {
  const shapeOf = (c: Partial<VitConfig>, s = 16) => {
    const g = new Graph('t');
    return vit(g, g.input('pixels', ['N', 3, s, s]), { ...base, ...c }).shape;
  };
  assert.deepEqual(shapeOf({ numClasses: 0 }), ['N', 32]);
  assert.deepEqual(shapeOf({ numClasses: 0, outputDim: 12, pool: 'attn' }), ['N', 12]);
  assert.deepEqual(shapeOf({ numClasses: 5, convStem: [] }), ['N', 5]);
  assert.throws(() => shapeOf({}, 20), /ViT expects pixels \[N, 3, 16, 16\], got \[N,3,20,20\]/);
  assert.equal(vitTokens({ ...base, imageSize: 32, patchSize: 8, pool: 'cls' }), 17);
  assert.equal(vitTokens({ ...base, imageSize: 32, patchSize: 8, pool: 'attn' }), 16);
});

test('validateVit names the problem', () => {
  const ok = (c: Partial<VitConfig>) => validateVit({ ...base, ...c });
  ok({});
  ok({ convStem: [] });
  ok({ convStem: [8, 16] });
  assert.throws(() => ok({ imageSize: 18 }), /imageSize 18 is not a multiple of patchSize 4/);
  assert.throws(() => ok({ width: 30, heads: 4 }), /width 30 is not divisible by heads 4/);
  assert.throws(() => ok({ convStem: [0] }), /convStem must be a list of positive channel counts, got \[0\]/);
  assert.throws(() => ok({ convStem: [8, 1.5] }), /convStem must be a list of positive channel counts, got \[8,1\.5\]/);
  assert.throws(() => ok({ convStem: 8 as never }), /convStem must be a list of positive channel counts, got 8/);
  assert.throws(() => ok({ convStem: '8' as never }), /convStem must be a list/);
  assert.throws(() => ok({ heads: 0 }), /heads must be a positive integer, got 0/);
  assert.throws(() => ok({ pool: 'max' as never }), /pool must be cls, mean or attn, got max/);
  assert.throws(() => ok({ posEmbed: 'rope' as never }), /posEmbed must be learned or sincos, got rope/);
  assert.throws(() => ok({ mlpRatio: 0 }), /mlpRatio must be > 0/);
  // The graph builder validates too.
  assert.throws(() => vitClassifierGraph({ ...base, convStem: [0] }, 1), /convStem/);
});

// ---------------------------------------------------------------- sine-cosine table and patchify

test('sincos2d: values at hand-computed positions, zero class-token row, length', () => {
  // width 8 → quarter 2, ω = [1, 1/10000^(1/2)] = [1, 0.01]; the row (token) of patch (h, w) is
  // h·grid + w (+1 with a class token); its embedding is [sin wω, cos wω, sin hω, cos hω].
  const e = sincos2d(8, 2, true);
  assert.equal(e.length, (2 * 2 + 1) * 8);
  assert.deepEqual([...e.subarray(0, 8)], [0, 0, 0, 0, 0, 0, 0, 0]);
  const row = (r: number) => [...e.subarray(r * 8, r * 8 + 8)];
  const f = Math.fround;
  assert.deepEqual(row(1), [0, 0, 1, 1, 0, 0, 1, 1].map(f)); // (h, w) = (0, 0)
  assert.deepEqual(row(2), [Math.sin(1), Math.sin(0.01), Math.cos(1), Math.cos(0.01), 0, 0, 1, 1].map(f)); // (0, 1)
  assert.deepEqual(row(3), [0, 0, 1, 1, Math.sin(1), Math.sin(0.01), Math.cos(1), Math.cos(0.01)].map(f)); // (1, 0)
  assert.deepEqual(row(4), [Math.sin(1), Math.sin(0.01), Math.cos(1), Math.cos(0.01), Math.sin(1), Math.sin(0.01), Math.cos(1), Math.cos(0.01)].map(f)); // (1, 1)

  // Without a class token, width 16 (quarter 4, ω_i = 10000^(−i/4)), grid 3: patch (h, w) = (2, 1) is row 7.
  const e2 = sincos2d(16, 3, false);
  assert.equal(e2.length, 9 * 16);
  const omega = [1, 0.1, 0.01, 0.001];
  const want = [...omega.map((w) => Math.sin(1 * w)), ...omega.map((w) => Math.cos(1 * w)), ...omega.map((w) => Math.sin(2 * w)), ...omega.map((w) => Math.cos(2 * w))];
  assert.ok(maxAbsDiff(e2.subarray(7 * 16, 8 * 16), want) < 1e-7, `${e2.subarray(7 * 16, 8 * 16)} vs ${want}`);
  assert.ok(maxAbsDiff(e2.subarray(0, 16), [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]) === 0);
  assert.throws(() => sincos2d(6, 2, false), /width divisible by 4, got 6/);

  // The 'sincos' ViT uses this table (no learned positional_embedding).
  const { g } = vitClassifierGraph({ ...base, posEmbed: 'sincos', pool: 'cls' }, 1);
  assert.ok(!g.params.has('visual.positional_embedding'));
  const table = sincos2d(32, 4, true);
  const found = [...g.constants.values()].filter((v) => v.data.length === table.length && maxAbsDiff(v.data as Float32Array, table) === 0);
  assert.equal(found.length, 1, 'the graph holds the sincos2d(32, 4, cls) table as a constant');
});

test('patchify: (channel, row, column) order, by index arithmetic; equals the stride-p convolution', async () => {
  const check = async (n: number, c: number, s: number, p: number) => {
    const x = Float32Array.from({ length: n * c * s * s }, (_, i) => i);
    const g = new Graph('patchify');
    const xi = g.input('x', [n, c, s, s]);
    const y = patchify(xi, p);
    const gs = s / p;
    assert.deepEqual(y.shape, [n, gs * gs, c * p * p]);
    const [out] = await evaluate(g, [y], { [xi.name]: { data: x, shape: [n, c, s, s] } });
    const want = new Float32Array(n * gs * gs * c * p * p);
    for (let b = 0; b < n; b++)
      for (let gy = 0; gy < gs; gy++)
        for (let gx = 0; gx < gs; gx++)
          for (let ch = 0; ch < c; ch++)
            for (let py = 0; py < p; py++)
              for (let px = 0; px < p; px++) {
                const patch = gy * gs + gx;
                want[(b * gs * gs + patch) * c * p * p + ch * p * p + py * p + px] = x[((b * c + ch) * s + gy * p + py) * s + gx * p + px]!;
              }
    assert.deepEqual(out!.data, want, `patchify ${n}×${c}×${s}×${s}, p ${p}`);
    return out!.data as Float32Array;
  };
  // The brief's case: 1×3×4×4, patch 2. Patch 1 (top right) starts with x[0, 0, 0, 2] = 2, x[0,0,0,3] = 3,
  // x[0,0,1,2] = 6, x[0,0,1,3] = 7, then channel 1: 18, 19, 22, 23.
  const small = await check(1, 3, 4, 2);
  assert.deepEqual([...small.subarray(12, 20)], [2, 3, 6, 7, 18, 19, 22, 23]);
  await check(2, 5, 6, 3);

  // patchify + matmul with conv1 reshaped [W, C·p·p] is OpenAI's stride-p conv1.
  const r = rng(11);
  const [n, c, s, p, w] = [2, 3, 8, 4, 6];
  const g = new Graph('conv1');
  const xi = g.input('x', [n, c, s, s]);
  const wi = g.input('w', [w, c, p, p]);
  const viaConv = o.transpose(o.reshape(o.conv(xi, wi, null, { strides: [p, p] }), [n, w, (s / p) ** 2]), [0, 2, 1]);
  const viaPatch = linearWith(patchify(xi, p), o.reshape(wi, [w, c * p * p]), null);
  const [a, b] = await evaluate(g, [viaConv, viaPatch], {
    [xi.name]: { data: Float32Array.from(randn(r, n * c * s * s)), shape: [n, c, s, s] },
    [wi.name]: { data: Float32Array.from(randn(r, w * c * p * p)), shape: [w, c, p, p] },
  });
  assert.deepEqual(a!.shape, b!.shape);
  assert.ok(maxAbsDiff(a!.data as Float32Array, b!.data as Float32Array) < 1e-4);
});

// ---------------------------------------------------------------- mixup / cutmix

/** A batch of b images (s×s) with labels 0..b−1 (classes = b), label-smoothed targets. */
function batch(b: number, s: number, seed: number, smoothing = 0.1) {
  const pixels = Float32Array.from(randn(rng(seed), b * 3 * s * s));
  const targets = new Float32Array(b * b).fill(smoothing / b);
  for (let i = 0; i < b; i++) targets[i * b + i] = 1 - smoothing + smoothing / b;
  return { pixels, targets };
}

/** From mixed targets: row i's own weight λ and partner j (one-hot targets undone: u = (t − ε/C)/(1 − ε)). */
function decode(targets: Float32Array, b: number, smoothing = 0.1): { lam: number; j: number }[] {
  return Array.from({ length: b }, (_, i) => {
    const u = [...targets.subarray(i * b, (i + 1) * b)].map((t) => (t - smoothing / b) / (1 - smoothing));
    const others = u.map((v, k) => [v, k] as const).filter(([v, k]) => k !== i && v > 1e-6);
    assert.ok(others.length <= 1, `row ${i} mixes more than two images: ${u}`);
    return others.length ? { lam: u[i]!, j: others[0]![1] } : { lam: 1, j: i };
  });
}

test('mixBatch, mixup only: rows sum to 1, pixels are λ·own + (1−λ)·partner, the partner the targets name', () => {
  const [b, s] = [5, 4];
  const per = 3 * s * s;
  let mixedRows = 0;
  for (let seed = 0; seed < 5; seed++) {
    const { pixels, targets } = batch(b, s, seed);
    const src = Float32Array.from(pixels);
    mixBatch(pixels, targets, b, s, b, new Rng(seed), 0.8, 0);
    const rows = decode(targets, b);
    const lams = new Set<number>();
    rows.forEach(({ lam, j }, i) => {
      const sum = targets.subarray(i * b, (i + 1) * b).reduce((p, q) => p + q, 0);
      assert.ok(Math.abs(sum - 1) < 1e-6, `row ${i} sums to ${sum}`);
      if (j !== i) {
        mixedRows++;
        lams.add(Math.round(lam * 1e5));
      }
      for (let k = 0; k < per; k++) {
        const want = lam * src[i * per + k]! + (1 - lam) * src[j * per + k]!;
        assert.ok(Math.abs(pixels[i * per + k]! - want) < 1e-5, `seed ${seed} row ${i} pixel ${k}: ${pixels[i * per + k]} vs ${want} (λ ${lam}, partner ${j})`);
      }
    });
    assert.ok(lams.size <= 1, `one λ per batch, got ${[...lams]}`);
  }
  assert.ok(mixedRows >= 10, `only ${mixedRows} rows were mixed`);
});

test('mixBatch, cutmix only: a box of the partner pasted in, the rest untouched, target weight = box area fraction', () => {
  const [b, s] = [5, 8];
  const per = 3 * s * s;
  let boxes = 0;
  for (let seed = 0; seed < 20; seed++) {
    const { pixels, targets } = batch(b, s, 100 + seed);
    const src = Float32Array.from(pixels);
    mixBatch(pixels, targets, b, s, b, new Rng(`cut${seed}`), 0, 1);
    const rows = decode(targets, b);
    // The box: the bounding box of every pixel position that changed in any image.
    let [y0, y1, x0, x1] = [s, 0, s, 0];
    for (let i = 0; i < b; i++)
      for (let c = 0; c < 3; c++)
        for (let y = 0; y < s; y++)
          for (let x = 0; x < s; x++) {
            if (pixels[i * per + c * s * s + y * s + x] !== src[i * per + c * s * s + y * s + x]) [y0, y1, x0, x1] = [Math.min(y0, y), Math.max(y1, y + 1), Math.min(x0, x), Math.max(x1, x + 1)];
          }
    const area = y1 > y0 ? (y1 - y0) * (x1 - x0) : 0;
    if (area > 0) boxes++;
    rows.forEach(({ lam, j }, i) => {
      const sum = targets.subarray(i * b, (i + 1) * b).reduce((p, q) => p + q, 0);
      assert.ok(Math.abs(sum - 1) < 1e-6, `row ${i} sums to ${sum}`);
      if (j !== i) assert.ok(Math.abs(1 - lam - area / (s * s)) < 1e-6, `seed ${seed} row ${i}: partner weight ${1 - lam}, box area fraction ${area / (s * s)}`);
      for (let c = 0; c < 3; c++)
        for (let y = 0; y < s; y++)
          for (let x = 0; x < s; x++) {
            const k = c * s * s + y * s + x;
            const inBox = y >= y0 && y < y1 && x >= x0 && x < x1;
            assert.equal(pixels[i * per + k], src[(inBox ? j : i) * per + k], `seed ${seed} row ${i} (${c}, ${y}, ${x}) ${inBox ? 'inside' : 'outside'} the box`);
          }
    });
    if (area > 0) assert.ok(rows.some(({ j }, i) => j !== i));
  }
  assert.ok(boxes >= 8, `only ${boxes} of 20 batches got a non-empty box`);
});

test('mixBatch: α 0 changes nothing; the same Rng seed gives the same batch, another seed another; both modes are drawn', () => {
  const { pixels, targets } = batch(4, 4, 3);
  const [p0, t0] = [Float32Array.from(pixels), Float32Array.from(targets)];
  mixBatch(pixels, targets, 4, 4, 4, new Rng(1), 0, 0);
  assert.deepEqual([pixels, targets], [p0, t0]);

  const go = (seed: string, mixup: number, cutmix: number) => {
    const x = batch(6, 8, 9);
    mixBatch(x.pixels, x.targets, 6, 8, 6, new Rng(seed), mixup, cutmix);
    return x;
  };
  for (const [m, c] of [[0.5, 0], [0, 1], [0.5, 1]] as const) {
    assert.deepEqual(go('a', m, c), go('a', m, c), `mixup ${m}, cutmix ${c}`);
    assert.notDeepEqual(go('a', m, c).targets, go('b', m, c).targets, `mixup ${m}, cutmix ${c}`);
  }
  // With both on, each batch is either mixup (every pixel of a mixed image changes) or cutmix (some stay).
  let [cut, mix] = [0, 0];
  for (let k = 0; k < 20; k++) {
    const x0 = batch(6, 8, 9);
    const x = go(`both${k}`, 0.5, 1);
    const changed = x.pixels.reduce((n, v, i) => n + (v !== x0.pixels[i] ? 1 : 0), 0);
    const mixedImages = decode(x.targets, 6).filter(({ j }, i) => j !== i).length;
    if (mixedImages === 0 || changed === 0) continue;
    if (changed === mixedImages * 3 * 64) mix++;
    else cut++;
  }
  assert.ok(cut >= 3 && mix >= 3, `cutmix ${cut}, mixup ${mix} of 20`);
});

test('mixBatch: the mixup weight λ follows Beta(α, α) (mean ½, variance 1/(4(2α+1)))', (t) => {
  for (const alpha of [0.2, 1, 4]) {
    const lams: number[] = [];
    for (let k = 0; k < 3000; k++) {
      const { pixels, targets } = batch(2, 1, k, 0);
      mixBatch(pixels, targets, 2, 1, 2, new Rng(`beta${alpha}:${k}`), alpha, 0);
      if (targets[1] !== 0) lams.push(targets[0]!); // images swapped: row 0 is λ·e0 + (1−λ)·e1
    }
    const mean = lams.reduce((p, q) => p + q, 0) / lams.length;
    const variance = lams.reduce((p, q) => p + (q - mean) ** 2, 0) / lams.length;
    const want = 1 / (4 * (2 * alpha + 1));
    t.diagnostic(`α ${alpha}: ${lams.length} draws, mean ${mean.toFixed(3)}, variance ${variance.toFixed(4)} (Beta: ${want.toFixed(4)})`);
    assert.ok(lams.length > 1200);
    assert.ok(Math.abs(mean - 0.5) < 0.03, `α ${alpha}: mean ${mean}`);
    assert.ok(Math.abs(variance / want - 1) < 0.1, `α ${alpha}: variance ${variance}, Beta(α, α) has ${want}`);
  }
});

// ---------------------------------------------------------------- the command line

const metrics = (out: string) =>
  readFileSync(join(out, 'metrics.jsonl'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { step: number; loss?: number; eval?: Record<string, number> });
const losses = (out: string): Map<number, number> => new Map(metrics(out).filter((r) => r.loss !== undefined).map((r) => [r.step, r.loss!]));
const lastJson = (stdout: string) => JSON.parse(stdout.trim().split('\n').at(-1)!);
const common = ['--batch-size', '8', '--warmup', '5', '--lr', '3e-3', '--workers', '0', '--threads', '1', '--cache-images'];

for (const variant of ['tiny', 'stem'] as const) {
  test(`CLI: vit train (${variant === 'tiny' ? 'plain patch embedding' : 'convStem [8]'}) learns three colours; vit eval writes top-1/top-5 and a confusion matrix`, async (t) => {
    const out = join(dir, `run-${variant}`);
    const tr = await cli('train', data, '--out', out, '--model', join(dir, `${variant}.json`), '--max-steps', '60', '--holdout', '0.25', ...common, '--seed', '1', '--json');
    const r = lastJson(tr.stdout);
    for (const f of ['config.json', 'metrics.jsonl', 'curves.svg', 'checkpoint.safetensors', 'vit.safetensors']) assert.ok(existsSync(join(out, f)), f);
    assert.match(readFileSync(join(out, 'curves.svg'), 'utf8'), /^<svg/);
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    assert.equal(cfg.maxSteps, 60);
    assert.equal(cfg.holdout, 0.25);
    const l = [...losses(out).values()];
    assert.equal(l.length, 60);
    const mean = (a: number[]) => a.reduce((p, q) => p + q, 0) / a.length;
    const [first, last] = [mean(l.slice(0, 10)), mean(l.slice(-10))];
    assert.ok(last < first - 0.2, `loss ${first.toFixed(3)} → ${last.toFixed(3)}`);
    assert.equal(r.steps, 60);
    assert.equal(r.finalLoss, l.at(-1));
    assert.equal(r.modelPath, join(out, 'vit.safetensors'));
    // 3 of 12 per class are held out: 9 images, chance is 1/3.
    assert.ok(r.top1 >= 7 / 9, `held-out top-1 ${r.top1}`);
    assert.equal(metrics(out).at(-1)!.eval!.top1, r.top1);

    const saved = await loadVit(r.modelPath);
    assert.deepEqual(saved.classes, ['blue', 'green', 'red']);
    assert.deepEqual(saved.config.convStem, variant === 'stem' ? [8] : undefined);
    assert.deepEqual(saved.params.get('visual.conv1.weight')!.length, 32 * (variant === 'stem' ? 8 : 3) * 16);
    assert.equal(saved.params.has('visual.stem.0.weight'), variant === 'stem');
    assert.equal(saved.params.has('visual.class_embedding'), false);

    const html = join(dir, `confusion-${variant}.html`);
    const ev = lastJson((await cli('eval', '--model', r.modelPath, '--data', data, '--json', '--confusion', html)).stdout);
    assert.equal(ev.images, N_IMAGES);
    assert.ok(ev.top1 >= 0 && ev.top1 <= 1 && ev.top1 >= 0.75, `top-1 on all images ${ev.top1}`);
    assert.equal(ev.top5, 1); // 3 classes: every label is within the top 5
    const cells = [...readFileSync(html, 'utf8').matchAll(/<td[^>]*>(\d+)<\/td>/g)].map((m) => Number(m[1]));
    assert.equal(cells.length, 9);
    assert.equal(cells.reduce((p, q) => p + q, 0), N_IMAGES);
    assert.deepEqual(cells, ev.confusion.flat());
    assert.equal(ev.confusion.map((row: number[], i: number) => row[i]).reduce((p: number, q: number) => p + q, 0) / N_IMAGES, ev.top1);
    ev.confusion.forEach((row: number[]) => assert.equal(row.reduce((p, q) => p + q, 0), N_IMAGES / 3));
    // Flip test-time augmentation: these images are mirror-symmetric (one colour each), so the
    // averaged logits rank exactly as the plain ones.
    const evFlip = lastJson((await cli('eval', '--model', r.modelPath, '--data', data, '--json', '--tta', 'flip')).stdout);
    assert.equal(evFlip.tta, 'flip');
    assert.deepEqual(evFlip.confusion, ev.confusion);
    t.diagnostic(`loss ${first.toFixed(3)} → ${last.toFixed(3)}; held-out top-1 ${r.top1}; all-image top-1 ${ev.top1}`);
  });
}

test('flipWidth mirrors every row of NCHW pixels; twice is the identity', () => {
  const px = Float32Array.from({ length: 2 * 3 * 2 * 4 }, (_, i) => i);
  const f = flipWidth(px, 4);
  assert.deepEqual([...f.subarray(0, 8)], [3, 2, 1, 0, 7, 6, 5, 4]);
  assert.deepEqual([...f.subarray(44, 48)], [47, 46, 45, 44]);
  assert.deepEqual(flipWidth(f, 4), px);
});

test('CLI: bad options and paths exit non-zero with a message naming them', async () => {
  const missing = join(dir, 'no-such-folder');
  const bad = (args: string[], code: number, msg: RegExp) =>
    assert.rejects(cli(...args), (e: { code: number; stderr: string }) => {
      assert.equal(e.code, code, e.stderr);
      assert.match(e.stderr, msg);
      return true;
    });
  await Promise.all([
    bad(['train', data, '--out', join(dir, 'x1'), '--max-steps', '2', '--batch-size', '0'], 2, /--batch-size must be ≥ 1/),
    bad(['train', data, '--out', join(dir, 'x2'), '--max-steps', '2', '--bogus'], 2, /Unknown option '--bogus'/),
    bad(['train', data, '--out', join(dir, 'x3'), '--max-steps', '2', '--pool', 'max'], 2, /--pool must be one of cls, mean, attn/),
    bad(['train', data, '--out', join(dir, 'x4')], 2, /give --epochs, --minutes or --max-steps/),
    bad(['train', data, '--max-steps', '2'], 2, /--out is required/),
    bad(['train', missing, '--out', join(dir, 'x5'), '--max-steps', '2', '--model', join(dir, 'tiny.json')], 1, new RegExp(`cannot list ${missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`)),
    bad(['eval', '--data', data], 2, /--model and --data are required/),
    bad(['fly'], 2, /expected 'train' or 'eval', got 'fly'/),
  ]);
});

test('CLI: resume after SIGKILL gives the same losses and the same model as the uninterrupted run', async (t) => {
  // Mixup and cutmix on, so the per-step mixing stream has to be resumed too.
  const args = (out: string) => [CLI, 'vit', 'train', data, '--out', out, '--model', join(dir, 'tiny.json'), '--max-steps', '150', '--save-every', '20', '--eval-every', '50', '--holdout', '0.25', '--mixup', '0.4', '--cutmix', '1', ...common, '--seed', '4'];
  const full = join(dir, 'resume-full');
  await execP(process.execPath, args(full), { env: ENV });
  const want = losses(full);
  assert.equal(want.size, 150);

  const out = join(dir, 'resume-killed');
  const child: ChildProcess = spawn(process.execPath, args(out), { stdio: 'ignore', env: ENV });
  const exited = new Promise((r) => child.once('exit', r));
  // SIGKILL once a step after the first checkpoint (step 20) has been logged.
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      const m = existsSync(join(out, 'metrics.jsonl')) ? losses(out) : new Map();
      if (m.size > 20 || child.exitCode !== null) {
        clearInterval(timer);
        child.kill('SIGKILL');
        resolve();
      }
    }, 2);
  });
  await exited;
  const at = losses(out).size;
  assert.ok(at > 20 && at < 150, `killed after step ${at}: the run was not interrupted in the middle (machine too slow or too fast?)`);
  const res = lastJson((await execP(process.execPath, [CLI, 'vit', 'train', '--out', out, '--resume', '--json'], { env: ENV })).stdout);
  assert.equal(res.steps, 150);
  const got = losses(out);
  assert.equal(got.size, 150);
  for (const [step, l] of want) assert.equal(got.get(step), l, `step ${step}: ${got.get(step)} vs ${l} (killed after step ${at})`);
  assert.deepEqual(metrics(out).filter((r) => r.eval), metrics(full).filter((r) => r.eval));
  const [a, b] = [await loadVit(join(full, 'vit.safetensors')), await loadVit(join(out, 'vit.safetensors'))];
  for (const [n, v] of a.params) assert.deepEqual(b.params.get(n), v, n);
  t.diagnostic(`killed after step ${at} of 150 (checkpoints every 20 steps)`);
});

// ---------------------------------------------------------------- fine-tuning from CLIP

const clipDir = () => join(dir, 'clip');
async function saveTinyClip(): Promise<ClipModel> {
  const config = fromOpenClip({
    embed_dim: 16,
    vision_cfg: { image_size: 16, layers: 1, width: 32, patch_size: 4, head_width: 16 },
    text_cfg: { context_length: 8, vocab_size: 64, width: 32, heads: 2, layers: 1 },
  });
  const model = ClipModel.random(config, 7, { threads: 1 });
  if (!existsSync(clipDir())) await model.save(clipDir());
  return model;
}

test('CLI: vit train --model <CLIP dir> starts from the CLIP image tower (one step of lr 1e-3 away from it)', async () => {
  const clip = await saveTinyClip();
  const out = join(dir, 'finetune');
  const r = lastJson((await cli('train', data, '--out', out, '--model', clipDir(), '--max-steps', '1', '--batch-size', '8', '--lr', '1e-3', '--warmup', '0', '--holdout', '0', '--workers', '0', '--threads', '1', '--json')).stdout);
  assert.equal(r.steps, 1);
  const ft = await loadVit(r.modelPath);
  assert.deepEqual({ ...ft.config }, { ...clip.config.vision, outputDim: 0, numClasses: 3 });
  const copied = [...clip.params.keys()].filter((k) => k.startsWith('visual.') && k !== 'visual.proj');
  assert.ok(copied.includes('visual.conv1.weight') && copied.includes('visual.class_embedding') && copied.length > 10);
  assert.deepEqual(new Set([...ft.params.keys()]), new Set([...copied, 'visual.head.weight', 'visual.head.bias']));
  // One AdamW step moves a weight by at most about lr (plus lr·wd·|w|); a fresh initialisation would
  // be ~0.1 away. And the step did happen: conv1 moved by about lr.
  for (const k of copied) {
    const [a, b] = [clip.params.get(k)!, ft.params.get(k)!];
    assert.equal(a.length, b.length, k);
    const d = maxAbsDiff(a, b);
    assert.ok(d <= 1.05e-3, `${k}: max |Δ| ${d} from the CLIP weights`);
  }
  const moved = maxAbsDiff(clip.params.get('visual.conv1.weight')!, ft.params.get('visual.conv1.weight')!);
  assert.ok(moved > 5e-4, `conv1 moved by ${moved}`);
  const fresh = initParams(vitClassifierGraph(ft.config, 1).g, 0);
  assert.ok(maxAbsDiff(fresh.get('visual.conv1.weight')!, ft.params.get('visual.conv1.weight')!) > 0.05, 'not a fresh initialisation');
  assert.deepEqual([...ft.params.get('visual.head.bias')!].length, 3);
});

// ---------------------------------------------------------------- fine-tuning across poolings; resume edge cases

test(
  'CLI: fine-tuning a cls-pooled CLIP with --pool mean drops the class-token row of the position embedding',
  async () => {
    const clip = await saveTinyClip();
    const out = join(dir, 'finetune-mean');
    const r = lastJson((await cli('train', data, '--out', out, '--model', clipDir(), '--pool', 'mean', '--max-steps', '1', '--batch-size', '8', '--lr', '0', '--warmup', '0', '--holdout', '0', '--workers', '0', '--threads', '1', '--json')).stdout);
    const ft = await loadVit(r.modelPath);
    assert.equal(ft.config.pool, 'mean');
    assert.equal(ft.params.has('visual.class_embedding'), false);
    // The patch tokens' position embeddings are the CLIP's rows 1..16.
    assert.deepEqual(ft.params.get('visual.positional_embedding'), clip.params.get('visual.positional_embedding')!.slice(32));
    assert.deepEqual(ft.params.get('visual.conv1.weight'), clip.params.get('visual.conv1.weight'));
  },
);

const shortRun = (out: string) => cli('train', data, '--out', out, '--model', join(dir, 'tiny.json'), '--max-steps', '6', '--save-every', '3', '--holdout', '0', ...common, '--json');

test('CLI: resuming a finished run does not train past --max-steps', async () => {
  const out = join(dir, 'finished');
  await shortRun(out);
  cpSync(out, join(dir, 'finished-copy'), { recursive: true });
  const r = lastJson((await cli('train', '--out', out, '--resume', '--json')).stdout);
  assert.equal(r.steps, 6);
  assert.equal(losses(out).size, 6);
});

test('CLI: --resume continues the run in --out, not the folder recorded in its config.json; run-defining options are refused', async () => {
  // Needs the 'finished' run of the test above; a moved folder must still resume.
  const orig = join(dir, 'finished');
  const copy = join(dir, 'finished-copy');
  if (!existsSync(copy)) {
    await shortRun(orig);
    cpSync(orig, copy, { recursive: true });
  }
  const before = readFileSync(join(orig, 'metrics.jsonl'), 'utf8');
  const moved = join(dir, 'finished-moved');
  renameSync(copy, moved);
  const r = lastJson((await cli('train', '--out', moved, '--resume', '--json')).stdout);
  assert.equal(r.modelPath, join(moved, 'vit.safetensors'));
  assert.equal(readFileSync(join(orig, 'metrics.jsonl'), 'utf8'), before, 'the original run folder was modified');
  assert.ok(!existsSync(copy));
  await assert.rejects(cli('train', '--out', moved, '--resume', '--lr', '0.5'), (e: { code: number; stderr: string }) => {
    assert.equal(e.code, 2, e.stderr);
    assert.match(e.stderr, /--resume continues the run stored in --out; do not pass --lr/);
    return true;
  });
});

// ---------------------------------------------------------------- patch dropout (FLIP / OpenCLIP patch_dropout)

test('patchKeepIndices: kept count, distinct in-range indices per image, deterministic per seed', () => {
  const c: VitConfig = { ...base, patchDropout: 0.5 };
  assert.equal(keptPatches(c), 8);
  assert.equal(keptPatches({ ...base, patchDropout: 0.99 }), 1); // at least one patch survives
  assert.equal(keptPatches(base), 16);
  const a = patchKeepIndices(c, 5, new Rng('k'));
  assert.deepEqual(a.shape, [5, 8, 1]);
  for (let i = 0; i < 5; i++) {
    const row = [...a.data.subarray(i * 8, i * 8 + 8)].map(Number);
    assert.equal(new Set(row).size, 8, `row ${i} repeats an index: ${row}`);
    assert.ok(row.every((k) => k >= 0 && k < 16), `row ${i}: ${row}`);
  }
  assert.deepEqual(patchKeepIndices(c, 5, new Rng('k')).data, a.data);
  assert.notDeepEqual(patchKeepIndices(c, 5, new Rng('other')).data, a.data);
  // Every patch is drawn about equally often (uniform subsets): 4000 draws of 8 of 16.
  const counts = new Array<number>(16).fill(0);
  for (const k of patchKeepIndices(c, 4000, new Rng('u')).data) counts[Number(k)]!++;
  for (const n of counts) assert.ok(Math.abs(n - 2000) < 200, `counts ${counts}`);
  assert.throws(() => validateVit({ ...base, patchDropout: 1 }), /patchDropout must be in \[0, 1\)/);
});

test('patch dropout graph: keeping every patch (any order) gives the inference logits; a subset changes them; the gradient flows', async () => {
  // Without a stem the patches are picked before the embedding (their position rows by a one-hot
  // product); with a conv stem the embedded tokens are picked after it.
  for (const [pool, convStem] of [['cls'], ['mean'], ['attn'], ['mean', [4]], ['cls', [4]]] as const) {
    // 0.01 of 16 patches rounds to keeping all 16: the training graph gathers a permutation.
    const c: VitConfig = { ...base, pool, patchDropout: 0.01, ...(convStem ? { convStem: [...convStem] } : {}) };
    const train = vitClassifierGraph(c, 2);
    const infer = vitClassifierGraph(c, 2, 'infer');
    assert.ok(train.g.inputs.some((t) => t.name === 'patch_keep'), `${pool}: no patch_keep input`);
    assert.ok(!infer.g.inputs.some((t) => t.name === 'patch_keep'), `${pool}: the inference graph takes patch_keep`);
    const params = initParams(train.g, 3);
    const px = { data: Float32Array.from(randn(rng(11), 2 * 3 * 16 * 16)), shape: [2, 3, 16, 16] };
    const ref = (await (await compile(infer.g, { y: infer.logits }, { paramValues: params, threads: 1, cacheKey: false })).run({ pixels: px })).y!.data as Float32Array;
    const runTrain = await compile(train.g, { y: train.logits }, { paramValues: params, threads: 1, cacheKey: false });
    const perm = patchKeepIndices(c, 2, new Rng(`perm-${pool}`));
    assert.notDeepEqual([...perm.data.subarray(0, 16)].map(Number), [...Array(16).keys()], 'the draw should not be the identity');
    const got = (await runTrain.run({ pixels: px, patch_keep: perm })).y!.data as Float32Array;
    assert.ok(maxAbsDiff(got, ref) < 1e-4, `${pool}: permuted full set ${got} vs inference ${ref}`);

    const half: VitConfig = { ...c, patchDropout: 0.5 };
    const tg = vitClassifierGraph(half, 2);
    const sub = (await (await compile(tg.g, { y: tg.logits }, { paramValues: params, threads: 1, cacheKey: false })).run({ pixels: px, patch_keep: patchKeepIndices(half, 2, new Rng('h')) })).y!.data as Float32Array;
    assert.ok(maxAbsDiff(sub, ref) > 1e-4, `${pool}: half the patches gave the full-image logits`);

    // The gradient reaches exactly the position rows of the kept patches (and the class row).
    const keepIdx = patchKeepIndices(half, 2, new Rng('h'));
    const pos = tg.g.params.get('visual.positional_embedding')!.tensor;
    const [dPos] = gradients(o.reduceSum(o.mul(tg.logits, tg.logits)), [pos]);
    const d = (await (await compile(tg.g, { d: dPos! }, { paramValues: params, threads: 1, cacheKey: false })).run({ pixels: px, patch_keep: keepIdx })).d!.data as Float32Array;
    const kept = new Set([...keepIdx.data].map(Number));
    const off = pool === 'cls' ? 1 : 0;
    for (let r = 0; r < 16; r++) {
      const norm = Math.hypot(...d.subarray((r + off) * 32, (r + off + 1) * 32));
      assert.ok(kept.has(r) ? norm > 1e-6 : norm === 0, `${pool}${convStem ? ' + stem' : ''}: position row of patch ${r} (${kept.has(r) ? 'kept' : 'dropped'}) has gradient norm ${norm}`);
    }
  }
});

test('CLI: vit train --patch-dropout 0.5 (unmasked for the last quarter) learns three colours; the saved model evaluates on every patch', async () => {
  const out = join(dir, 'pd');
  const res = await cli('train', data, '--out', out, '--model', join(dir, 'tiny.json'), '--patch-dropout', '0.5', '--unmasked-tune', '0.25', '--max-steps', '60', '--holdout', '0.25', '--eval-every', '60', ...common, '--json');
  assert.match(res.stderr, /step 45: unmasked tuning — every patch from here on/);
  const r = lastJson(res.stdout);
  assert.ok(r.top1 >= 7 / 9, `held-out top-1 ${r.top1}`);
  const saved = await loadVit(r.modelPath);
  assert.equal(saved.config.patchDropout, 0.5);
  const ls = [...losses(out).values()];
  const mean = (a: number[]) => a.reduce((p, q) => p + q, 0) / a.length;
  assert.ok(mean(ls.slice(-10)) < mean(ls.slice(0, 10)) - 0.2, `loss ${mean(ls.slice(0, 10))} → ${mean(ls.slice(-10))}`);
});
