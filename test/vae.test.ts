// The convolutional VAE (src/models/vae.ts, src/train/vae-trainer.ts, clipkit vae): shapes, the
// reparameterisation and KL gradients against finite differences, one AdamW step against PyTorch
// (fixtures: test/reference/gen_vae.py), learning, determinism, exact resume, and the CLI.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { gradients } from '../src/autodiff/grad.js';
import { SafetensorsFile } from '../src/checkpoint/safetensors.js';
import { type DType, Graph, type Tensor } from '../src/graph/graph.js';
import * as o from '../src/graph/ops.js';
import { bernoulliNll, gaussianNll, klDivergence, loadVaeConfig, reparameterize, type VaeConfig, vaeConfig, vaeDecodeGraph, vaeForward, vaeTrainGraph } from '../src/models/vae.js';
import { Rng } from '../src/nn/init.js';
import { compile } from '../src/runtime/compile.js';
import { type VaeRunOptions, VaeModel, VaeTrainer, bitsPerDim, listImages, loadVaeCheckpoint, splitHoldout, trainVae } from '../src/train/vae-trainer.js';
import { evaluate, randn, rng, typed } from './helpers.js';

const FIX = new URL('../../test/reference/fixtures/', import.meta.url).pathname;
const CLI = new URL('../src/cli/main.js', import.meta.url).pathname;
const run = promisify(execFile);

// ---------------------------------------------------------------- shapes

test('graph shapes: encoder 32→16→8→4, latent heads, decoder back to 32×32', () => {
  const c = loadVaeConfig('vae-cifar');
  const t = vaeTrainGraph(c, 4);
  assert.deepEqual(t.mu.shape, [4, c.latent]);
  assert.deepEqual(t.logvar.shape, [4, c.latent]);
  assert.deepEqual(t.mean.shape, [4, 3, 32, 32]);
  assert.deepEqual([t.loss.shape, t.nll.shape, t.kl.shape], [[], [4], [4]]);
  const convOut = t.g.nodes.filter((n) => n.op === 'Conv').map((n) => n.outputs[0]!.shape.slice(2));
  assert.deepEqual(convOut, [[16, 16], [8, 8], [4, 4]]);
  assert.deepEqual(t.g.params.get('enc.conv1.weight')!.shape, [32, 3, 4, 4]); // Conv2d [out, in, kh, kw]
  assert.deepEqual(t.g.params.get('dec.deconv1.weight')!.shape, [128, 64, 4, 4]); // ConvTranspose2d [in, out, kh, kw]
  assert.deepEqual(t.g.params.get('enc.fc_mu.weight')!.shape, [c.latent, 128 * 16]); // Linear [out, in]
  const d = vaeDecodeGraph(c);
  assert.deepEqual(d.mean.shape, ['N', 3, 32, 32]);
  const v = vaeForward(loadVaeConfig('vae-cifar-vit'));
  assert.deepEqual(v.mu.shape, ['N', 128]);
  assert.ok(v.g.params.has('enc.vit.transformer.resblocks.3.attn.in_proj_weight'));
});

test('config validation names the problem', () => {
  assert.throws(() => vaeConfig({ channels: [8, 8, 8, 8, 8, 8], latent: 4 }), /not divisible by 2\^6/);
  assert.throws(() => vaeConfig({ channels: [8], latent: 0 }), /latent must be a positive integer/);
  assert.throws(() => vaeConfig({ channels: [8], latent: 4, recon: 'poisson' as never }), /recon must be/);
  assert.throws(() => vaeConfig({ channels: [8], latent: 4, colour: true } as never), /unknown key\(s\) colour/);
  assert.throws(() => loadVaeConfig('vae-nope'), /unknown VAE preset 'vae-nope'/);
});

// ---------------------------------------------------------------- finite differences

/**
 * Central differences on a random projection of the output, as test/autodiff.test.ts: float64
 * when ONNX Runtime has float64 kernels for every op, otherwise float32 with looser tolerances.
 */
async function gradcheck(name: string, shapes: number[][], build: (xs: Tensor[]) => Tensor, positive: number[] = []): Promise<string> {
  for (const dtype of ['float64', 'float32'] as const) {
    const tol = dtype === 'float64' ? { eps: 1e-6, abs: 1e-6, rel: 1e-5 } : { eps: 1e-2, abs: 2e-3, rel: 1e-2 };
    const r = rng(name.length * 131 + 7);
    const values = shapes.map((s, i) => {
      const n = s.reduce((a, b) => a * b, 1);
      return positive.includes(i) ? Array.from({ length: n }, () => 0.2 + 0.6 * r()) : randn(r, n);
    });
    const g = new Graph(name);
    const xs = shapes.map((s, i) => g.input(`x${i}`, s, dtype as DType));
    const y = build(xs);
    const size = y.shape.reduce<number>((a, b) => a * (b as number), 1);
    const loss = o.reduceSum(o.mul(y, o.constant(g, typed(randn(r, size), dtype), y.shape as number[], dtype)));
    const grads = gradients(loss, xs);
    const feeds = (vals: number[][]) => Object.fromEntries(xs.map((x, i) => [x.name, { data: typed(vals[i]!, dtype), shape: shapes[i]! }]));
    let analytic;
    try {
      analytic = await evaluate(g, grads, feeds(values));
    } catch (e) {
      if (dtype === 'float64' && /Could not find an implementation|Failed to find kernel/.test(String(e))) continue;
      throw e;
    }
    const f = await compile(g, [loss], { cacheKey: false, threads: 1 });
    const at = async (vals: number[][]): Promise<number> => Number((await f.run(feeds(vals)))[f.outputNames[0]!]!.data[0]);
    for (let i = 0; i < values.length; i++) {
      for (let j = 0; j < values[i]!.length; j++) {
        const plus = values.map((v) => [...v]);
        const minus = values.map((v) => [...v]);
        plus[i]![j]! += tol.eps;
        minus[i]![j]! -= tol.eps;
        const num = ((await at(plus)) - (await at(minus))) / (2 * tol.eps);
        const an = Number(analytic[i]!.data[j]);
        assert.ok(Math.abs(num - an) <= tol.abs + tol.rel * Math.abs(num), `${name} [${dtype}]: d/dx${i}[${j}] analytic ${an} vs numeric ${num}`);
      }
    }
    return dtype;
  }
  throw new Error('unreachable');
}

test('gradient: reparameterisation z = μ + exp(½ log σ²)·ε (w.r.t. μ, log σ² and ε)', async (t) => {
  t.diagnostic(await gradcheck('reparam', [[3, 4], [3, 4], [3, 4]], ([mu, lv, eps]) => reparameterize(mu!, lv!, eps!)));
});

test('gradient: KL(N(μ, σ²) ‖ N(0, I)) per example', async (t) => {
  t.diagnostic(await gradcheck('kl', [[3, 5], [3, 5]], ([mu, lv]) => klDivergence(mu!, lv!)));
});

test('gradient: the KL of a reparameterised sample path (encoder heads → z and KL together)', async (t) => {
  t.diagnostic(await gradcheck('kl+z', [[2, 6], [3, 6], [2, 3]], ([h, w, eps]) => {
    const both = o.matmul(h!, o.transpose(w!, [1, 0])); // [2, 3]
    const [mu, lv] = [o.mul(both, 0.7), o.mul(both, -0.4)];
    return o.add(o.reduceSum(o.square(reparameterize(mu, lv, eps!)), [1]), klDivergence(mu, lv));
  }));
});

test('gradient: Gaussian NLL with a learned log σ, and Bernoulli NLL from logits', async (t) => {
  t.diagnostic(await gradcheck('gauss', [[2, 3, 2, 2], [2, 3, 2, 2], [1]], ([x, m, ls]) => gaussianNll(x!, m!, ls!)));
  t.diagnostic(await gradcheck('bce', [[2, 3, 2, 2], [2, 3, 2, 2]], ([x, l]) => bernoulliNll(x!, l!), [0]));
});

// ---------------------------------------------------------------- PyTorch parity

async function readAll(file: string): Promise<Map<string, Float32Array>> {
  const st = await SafetensorsFile.open(join(FIX, file));
  const out = new Map<string, Float32Array>();
  for (const n of st.names()) out.set(n, await st.readFloat32(n));
  await st.close();
  return out;
}

const maxDiff = (a: Float32Array, b: Float32Array): number => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

for (const cfg of ['a', 'b', 'c']) {
  test(`PyTorch parity (config ${cfg}): forward, loss, and one AdamW step`, async (t) => {
    const meta = JSON.parse(readFileSync(join(FIX, `vae_${cfg}.json`), 'utf8'));
    const config = vaeConfig(meta.config);
    const io = await readAll(`vae_${cfg}_io.safetensors`);
    const before = await readAll(`vae_${cfg}.safetensors`);
    const b = meta.batch as number;
    const feeds = { x: { data: io.get('x')!, shape: [b, 3, 32, 32] }, eps: { data: io.get('eps')!, shape: [b, config.latent] } };
    assert.deepEqual([...vaeForward(config).g.params.keys()].sort(), [...meta.params].sort(), 'parameter names');

    const model = await VaeModel.create(config, before, 1);
    const fw = await model.forward(feeds.x.data, feeds.eps.data);
    assert.ok(maxDiff(fw.mu!.data as Float32Array, io.get('mu')!) < 1e-5, 'mu');
    assert.ok(maxDiff(fw.mean!.data as Float32Array, io.get('mean')!) < 1e-5, 'decoder mean');

    const opt = meta.optimizer;
    const run: VaeRunOptions = { batchSize: b, epochs: 1, totalSteps: 1, lr: opt.lr, warmup: 0, weightDecay: opt.weight_decay, beta: meta.beta, betaWarmup: 0, seed: 0, holdoutFraction: 0 };
    const trainer = await VaeTrainer.create(config, run, new Map([...before].map(([k, v]) => [k, Float32Array.from(v)])), 1);
    const r = await trainer.ts.step({ ...feeds, beta: { data: Float32Array.of(meta.beta), shape: [] } });
    // The loss is a sum over 3072 pixels in nats (~10³), where adjacent float32 values are 6e-5 to
    // 2.4e-4 apart: an absolute 1e-5 would be below one unit in the last place, and the summation
    // order differs between ORT and PyTorch. So the loss and the reconstruction term are compared to
    // 1e-6 relative (a few units in the last place; 1e-5 of the per-dimension loss); the KL term,
    // O(1), to 1e-5 absolute.
    assert.ok(Math.abs(r.loss - meta.loss) <= 1e-6 * Math.abs(meta.loss), `loss ${r.loss} vs ${meta.loss}`);
    assert.ok(Math.abs(Number(r.metrics.recon!.data[0]) - meta.recon) <= 1e-6 * Math.abs(meta.recon), 'recon');
    assert.ok(Math.abs(Number(r.metrics.kl!.data[0]) - meta.kl) < 1e-5, `kl ${r.metrics.kl!.data[0]} vs ${meta.kl}`);

    const after = await readAll(`vae_${cfg}_adamw_after.safetensors`);
    const grads = await readAll(`vae_${cfg}_grads.safetensors`);
    // Adam's first step moves a weight by lr·g/(|g| + ε) ≈ ±lr whatever |g| is, unless |g| is near
    // ε = 1e-8, where float32 noise in a near-zero gradient is amplified. Only such entries may
    // differ by more than 1e-4 (there are none in these fixtures at the time of writing).
    let worst = 0;
    for (const [name, want] of after) {
      const got = trainer.params.get(name)!;
      worst = Math.max(worst, maxDiff(got, want));
      for (let j = 0; j < want.length; j++) {
        const d = Math.abs(got[j]! - want[j]!);
        if (d >= 1e-4) assert.ok(Math.abs(grads.get(name)![j]!) < 10 * opt.eps, `${name}[${j}]: |Δ| ${d}, PyTorch gradient ${grads.get(name)![j]}`);
      }
    }
    t.diagnostic(`loss ${r.loss} vs ${meta.loss} (|Δ| ${Math.abs(r.loss - meta.loss).toExponential(2)}); weights after the step: max |Δ| ${worst.toExponential(2)}`);
  });
}

// ---------------------------------------------------------------- learning, determinism, resume

/** Synthetic 32×32 images: a coloured disc of random position, size and colour on a tinted background. */
function syntheticImages(n: number, seed: number): Uint8Array {
  const r = new Rng(seed);
  const px = new Uint8Array(n * 32 * 32 * 3);
  for (let i = 0; i < n; i++) {
    const [cx, cy, rad] = [8 + 16 * r.next(), 8 + 16 * r.next(), 4 + 6 * r.next()];
    const fg = [r.int(256), r.int(256), r.int(256)];
    const bg = [r.int(128), r.int(128), r.int(128)];
    for (let y = 0; y < 32; y++) {
      for (let x = 0; x < 32; x++) {
        const inside = (x - cx) ** 2 + (y - cy) ** 2 < rad * rad;
        for (let c = 0; c < 3; c++) px[((i * 32 + y) * 32 + x) * 3 + c] = inside ? fg[c]! : bg[c]!;
      }
    }
  }
  return px;
}

const TINY: VaeConfig = vaeConfig({ channels: [8, 8, 16], latent: 8, act: 'relu', recon: 'gaussian', logSigmaInit: -1 });
const runOpts = (o: Partial<VaeRunOptions> = {}): VaeRunOptions => ({ batchSize: 16, epochs: 100, totalSteps: 100, lr: 3e-3, warmup: 5, weightDecay: 0, beta: 1, betaWarmup: 0, seed: 1, holdoutFraction: 0, ...o });

test('the loss falls on synthetic discs: per-pixel MSE below half its start within 100 steps', async (t) => {
  const pixels = syntheticImages(64, 5);
  const trainer = await VaeTrainer.create(TINY, runOpts(), undefined, 1);
  const mses: number[] = [];
  const losses: number[] = [];
  for (let s = 0; s < 100; s++) {
    const st = await trainer.step(pixels, Array.from({ length: 16 }, (_, k) => (s * 16 + k) % 64));
    mses.push(st.mse);
    losses.push(st.loss);
  }
  const mean = (a: number[]): number => a.reduce((p, q) => p + q, 0) / a.length;
  const [m0, m1] = [mean(mses.slice(0, 5)), mean(mses.slice(-10))];
  t.diagnostic(`MSE ${m0.toFixed(4)} → ${m1.toFixed(4)}; loss ${mean(losses.slice(0, 5)).toFixed(0)} → ${mean(losses.slice(-10)).toFixed(0)}`);
  assert.ok(m1 < 0.5 * m0, `MSE ${m0.toFixed(4)} → ${m1.toFixed(4)}`);
  assert.ok(mean(losses.slice(-10)) < mean(losses.slice(0, 5)) - 500, `loss ${mean(losses.slice(0, 5)).toFixed(0)} → ${mean(losses.slice(-10)).toFixed(0)}`);
});

test('determinism: the same seed gives identical steps, another seed does not', async () => {
  const pixels = syntheticImages(32, 9);
  const go = async (seed: number) => {
    const t = await VaeTrainer.create(TINY, runOpts({ seed }), undefined, 1);
    const losses: number[] = [];
    for (let s = 0; s < 3; s++) losses.push((await t.step(pixels, Array.from({ length: 16 }, (_, k) => (s * 16 + k) % 32))).loss);
    return { losses, w: Float32Array.from(t.params.get('enc.conv2.weight')!) };
  };
  const [a, b, c] = [await go(3), await go(3), await go(4)];
  assert.deepEqual(a.losses, b.losses);
  assert.deepEqual(a.w, b.w);
  assert.notDeepEqual(a.losses, c.losses);
});

test('resume: 2 steps + checkpoint + 2 resumed steps equal 4 uninterrupted steps, bit for bit', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vae-resume-'));
  try {
    const pixels = syntheticImages(40, 2);
    const data = { pixels, train: [...Array(36).keys()], holdout: [36, 37, 38, 39], digest: 'synthetic' };
    const run = runOpts({ batchSize: 8, totalSteps: 4, epochs: 1, betaWarmup: 3 }); // 4 batches per epoch
    const loop = (out: string, stopAt?: number) => ({ out, stopAt, logEvery: 1, saveEvery: 100, evalEvery: 0, evalImages: 4, threads: 1, log: () => undefined });
    await trainVae(TINY, run, data, loop(join(dir, 'straight')));
    await trainVae(TINY, run, data, loop(join(dir, 'split'), 2));
    const mid = await loadVaeCheckpoint(join(dir, 'split'));
    assert.equal(mid.optimizer!.step, 2);
    assert.deepEqual(mid.position, { epoch: 0, batch: 2 });
    await trainVae(TINY, run, data, loop(join(dir, 'split')), mid);
    const [a, b] = [await loadVaeCheckpoint(join(dir, 'straight')), await loadVaeCheckpoint(join(dir, 'split'))];
    for (const [n, v] of a.params) assert.deepEqual(b.params.get(n), v, n);
    for (const [n, v] of a.optimizer!.m) assert.deepEqual(b.optimizer!.m.get(n), v, `m ${n}`);
    const steps = (p: string) => readFileSync(join(dir, p, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).step);
    assert.deepEqual(steps('split'), [1, 2, 3, 4]);
    const losses = (p: string) => readFileSync(join(dir, p, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).loss);
    assert.deepEqual(losses('split'), losses('straight'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('held-out split: the last ⌈f·n⌉ files of each class by name; bits/dim formula', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vae-split-'));
  try {
    for (const c of ['b', 'a']) {
      await mkdir(join(dir, c));
      for (const f of ['3.png', '1.png', '10.png', '2.png', 'x.txt']) await sharp({ create: { width: 4, height: 4, channels: 3, background: '#000' } }).png().toFile(join(dir, c, f));
    }
    const list = listImages(dir);
    assert.deepEqual(list.classes, ['a', 'b']);
    assert.equal(list.files.length, 8);
    const s = splitHoldout(list, 0.3); // ⌈0.3·4⌉ = 2 per class
    assert.deepEqual(s.holdout.map((i) => list.files[i]!.slice(dir.length)), ['/a/2.png', '/a/3.png', '/b/2.png', '/b/3.png']);
    assert.deepEqual(s.train.length, 4);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  // A density of 1 on [0,1]^D (−ELBO = 0) is the uniform distribution over 256 levels: 8 bits/dim.
  assert.equal(bitsPerDim(0, 3072, TINY), 8);
  assert.ok(Math.abs(bitsPerDim(3072 * Math.LN2, 3072, { ...TINY, recon: 'bce' }) - 1) < 1e-12);
});

// ---------------------------------------------------------------- the command line

test('CLI: vae train (3 steps) → eval → sample and reconstruct PNGs; bad options are rejected', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vae-cli-'));
  try {
    const data = join(dir, 'data');
    const px = syntheticImages(24, 3);
    for (let i = 0; i < 24; i++) {
      const cls = join(data, i % 2 ? 'discs' : 'spots');
      await mkdir(cls, { recursive: true });
      await sharp(Buffer.from(px.subarray(i * 3072, (i + 1) * 3072)), { raw: { width: 32, height: 32, channels: 3 } }).png().toFile(join(cls, `${String(i).padStart(3, '0')}.png`));
    }
    const out = join(dir, 'run');
    const cli = (...args: string[]) => run('node', [CLI, 'vae', ...args], { encoding: 'utf8' });
    const tr = await cli('train', '--data', data, '--out', out, '--config', 'vae-tiny', '--batch-size', '4', '--max-steps', '3', '--log-every', '1', '--threads', '1');
    assert.match(tr.stdout, /step 3\/3 .*loss .*recon .*KL .*lr .*img\/s .*ETA/);
    assert.ok(existsSync(join(out, 'checkpoint.safetensors')));
    assert.equal(readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').length, 3);
    const ev = JSON.parse((await cli('eval', '--model', out, '--data', data, '--json', '--threads', '1')).stdout);
    assert.equal(ev.images, 4); // ⌈0.1·12⌉ = 2 per class
    assert.ok(ev.bitsPerDim > 0 && Number.isFinite(ev.mse));
    await cli('sample', '--model', out, '--out', join(dir, 's.png'), '--count', '6', '--columns', '3', '--scale', '1');
    const meta = await sharp(join(dir, 's.png')).metadata();
    assert.deepEqual([meta.format, meta.width, meta.height], ['png', 3 * 33 + 1, 2 * 33 + 1]);
    await cli('reconstruct', '--model', out, '--data', data, '--out', join(dir, 'r.png'), '--count', '4', '--columns', '4', '--scale', '1');
    assert.equal((await sharp(join(dir, 'r.png')).metadata()).height, 2 * 33 + 1);

    // Usage errors exit with status 2 and say what is wrong (run side by side: each is a process start).
    const bad = (args: string[], msg: RegExp) => assert.rejects(cli(...args), (e: { code: number; stderr: string }) => e.code === 2 && msg.test(e.stderr));
    await Promise.all([
      bad(['train', '--out', out], /--data is required/),
      bad(['train', '--data', data, '--out', join(dir, 'x'), '--batch-size', '0'], /--batch-size must be ≥ 1/),
      bad(['train', '--data', data, '--out', join(dir, 'x'), '--recon', 'poisson'], /--recon must be one of gaussian, mse, bce/),
      bad(['train', '--data', data, '--out', join(dir, 'x'), '--lr', 'fast'], /--lr must be a number/),
      bad(['train', '--data', data, '--out', out], /exists; pass --resume/),
      bad(['train', '--data', data, '--out', out, '--resume', '--lr', '0.1'], /do not pass --lr/),
      bad(['sample', '--model', out, '--out', join(dir, 'y.png'), '--bogus'], /Unknown option '--bogus'/),
      bad(['fly'], /unknown subcommand 'fly'/),
    ]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
