// The training path against PyTorch: gradients of CLIP's loss from our autodiff vs loss.backward() on
// OpenAI's model.py, and one createClipTrainer step vs torch.optim.AdamW (fixtures: gen_clip.py).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { gradients } from '../src/autodiff/grad.js';
import { SafetensorsFile } from '../src/checkpoint/safetensors.js';
import { fullClipGraph } from '../src/models/clip.js';
import { fromOpenClip } from '../src/models/config.js';
import { createClipTrainer, loadClip } from '../src/index.js';
import { clipLoss } from '../src/train/losses.js';
import { openClipExcluded } from '../src/train/clip-trainer.js';
import { compile } from '../src/runtime/compile.js';

const FIX = new URL('../../test/reference/fixtures/', import.meta.url).pathname;

async function readAll(file: string): Promise<Map<string, Float32Array>> {
  const st = await SafetensorsFile.open(join(FIX, file));
  const out = new Map<string, Float32Array>();
  for (const n of st.names()) if (st.info(n).dtype === 'F32') out.set(n, await st.readFloat32(n));
  await st.close();
  return out;
}

async function batch(cfg: string) {
  const st = await SafetensorsFile.open(join(FIX, `clip_${cfg}_io.safetensors`));
  const images = await st.readFloat32('images');
  const tokens = await st.readInt64('tokens');
  const [, c, h, w] = st.info('images').shape as number[];
  const len = st.info('tokens').shape[1]!;
  await st.close();
  return { pixels: { data: images.slice(0, 4 * c! * h! * w!), shape: [4, c!, h!, w!] }, tokens: { data: tokens.slice(0, 4 * len), shape: [4, len] } };
}

for (const cfg of ['a', 'b']) {
  const meta = JSON.parse(readFileSync(join(FIX, `clip_${cfg}.json`), 'utf8'));

  test(`config ${cfg}: autodiff gradients of the CLIP loss match PyTorch's`, async () => {
    const config = fromOpenClip(meta.openclip_config);
    const b = await batch(cfg);
    const { g, img, txt, scale } = fullClipGraph(config, 4, b.tokens.shape[1]);
    const { loss } = clipLoss(img, txt, scale);
    const params = [...g.params.values()];
    const grads = gradients(loss, params.map((p) => p.tensor));
    const c = await compile(g, [loss, ...grads], { paramValues: await readAll(`clip_${cfg}.safetensors`), cacheKey: false });
    const res = await c.run({ pixels: b.pixels, input_ids: b.tokens });
    const ref = await readAll(`clip_${cfg}_grads.safetensors`);
    assert.ok(Math.abs(Number(res[c.outputNames[0]!]!.data[0]) - meta.train_step.loss_value) < 1e-5);
    params.forEach((p, i) => {
      const ours = res[c.outputNames[i + 1]!]!.data as Float32Array;
      const theirs = ref.get(p.name)!;
      let worst = 0;
      let scaleRef = 0;
      for (let j = 0; j < ours.length; j++) {
        worst = Math.max(worst, Math.abs(ours[j]! - theirs[j]!));
        scaleRef = Math.max(scaleRef, Math.abs(theirs[j]!));
      }
      // Float32 accumulation order differs between ORT and PyTorch: 1e-5 absolute, or 1e-4 of the
      // gradient's largest entry for large ones.
      assert.ok(worst <= Math.max(1e-5, 1e-4 * scaleRef), `${p.name}: max |Δ| ${worst.toExponential(2)} (max |g| ${scaleRef.toExponential(2)})`);
    });
  });

  test(`config ${cfg}: one createClipTrainer step matches PyTorch's AdamW step within 1e-4`, async () => {
    const model = await loadClip(join(FIX, `clip_${cfg}.safetensors`), { config: meta.openclip_config });
    const opt = meta.train_step.optimizer;
    const trainer = createClipTrainer(model, { optimizer: { lr: opt.lr, betas: opt.betas, eps: opt.eps, weightDecay: opt.weight_decay } });
    const { loss } = await trainer.step(await batch(cfg));
    assert.ok(Math.abs(loss - meta.train_step.loss_value) < 1e-5, `loss ${loss} vs ${meta.train_step.loss_value}`);
    const after = await readAll(`clip_${cfg}_adamw_after.safetensors`);
    const grads = await readAll(`clip_${cfg}_grads.safetensors`);
    // Adam's first step moves each weight by lr·g/(|g| + ε): where |g| is far below ε (1e-6) the
    // update is lr·g/ε, so float32 noise of ~1e-7 in a near-zero gradient (our gradients match
    // PyTorch's to 1e-5, test above) becomes ~1e-4 in the weight. Such entries — and only those —
    // may differ by more than 1e-4; there must be very few of them.
    let illConditioned = 0;
    let total = 0;
    for (const [name, want] of after) {
      const got = model.params.get(name)!;
      const g = grads.get(name)!;
      for (let j = 0; j < got.length; j++, total++) {
        const d = Math.abs(got[j]! - want[j]!);
        if (d < 1e-4) continue;
        assert.ok(Math.abs(g[j]!) < 10 * opt.eps, `${name}[${j}]: |Δ| ${d} with PyTorch gradient ${g[j]}`);
        illConditioned++;
      }
    }
    assert.ok(illConditioned <= total * 1e-4, `${illConditioned} of ${total} entries differ by more than 1e-4`);
  });

  test(`config ${cfg}: AdamW applied to PyTorch's own gradients reproduces torch.optim.AdamW within 1e-6`, async () => {
    const { adamwInPlace } = await import('../src/optim/adamw.js');
    const opt = meta.train_step.optimizer;
    const before = await readAll(`clip_${cfg}.safetensors`);
    const grads = await readAll(`clip_${cfg}_grads.safetensors`);
    const after = await readAll(`clip_${cfg}_adamw_after.safetensors`);
    const cfgA = { lr: opt.lr, betas: opt.betas as [number, number], eps: opt.eps, weightDecay: opt.weight_decay };
    for (const [name, p] of before) {
      const wd = meta.train_step.decay_params.includes(name) ? opt.weight_decay : 0;
      const m = new Float32Array(p.length);
      const v = new Float32Array(p.length);
      adamwInPlace(p, grads.get(name)!, m, v, cfgA, opt.lr, 1, wd);
      let worst = 0;
      for (let j = 0; j < p.length; j++) worst = Math.max(worst, Math.abs(p[j]! - after.get(name)![j]!));
      assert.ok(worst < 1e-6, `${name}: ${worst}`);
    }
  });

  test(`config ${cfg}: OpenCLIP's weight-decay grouping`, () => {
    const shapes = new Map([...fullClipGraph(fromOpenClip(meta.openclip_config)).g.params.values()].map((p) => [p.name, p.shape]));
    const noDecay = [...shapes].filter(([n, s]) => openClipExcluded(n, s)).map(([n]) => n).sort();
    assert.deepEqual(noDecay, [...meta.train_step.no_decay_params].sort());
  });
}

for (const cfg of ['a', 'b']) {
  test(`config ${cfg}: GradCache accumulation (2 micro-batches of 2) gives PyTorch's full-batch gradient`, async () => {
    const meta = JSON.parse(readFileSync(join(FIX, `clip_${cfg}.json`), 'utf8'));
    const { GradCache } = await import('../src/train/gradcache.js');
    const model = await loadClip(join(FIX, `clip_${cfg}.safetensors`), { config: meta.openclip_config });
    const b = await batch(cfg);
    const gc = await GradCache.create(model, { micro: 2, batch: 4, textLength: b.tokens.shape[1]!, loss: 'clip', frozen: () => false });
    const loss = await gc.run(b.pixels.data, b.tokens.data);
    assert.ok(Math.abs(loss - meta.train_step.loss_value) < 1e-5, `loss ${loss}`);
    const ref = await readAll(`clip_${cfg}_grads.safetensors`);
    for (const [name, theirs] of ref) {
      const ours = gc.grads.get(name)!;
      let worst = 0;
      let scaleRef = 0;
      for (let j = 0; j < ours.length; j++) {
        worst = Math.max(worst, Math.abs(ours[j]! - theirs[j]!));
        scaleRef = Math.max(scaleRef, Math.abs(theirs[j]!));
      }
      assert.ok(worst <= Math.max(1e-5, 1e-4 * scaleRef), `${name}: max |Δ| ${worst.toExponential(2)}`);
    }
  });
}

test('a trainer with accumFreq follows the same loss trajectory as the plain full-batch trainer', async () => {
  const meta = JSON.parse(readFileSync(join(FIX, 'clip_a.json'), 'utf8'));
  const b = await batch('a');
  const run = async (accumFreq: number) => {
    const model = await loadClip(join(FIX, 'clip_a.safetensors'), { config: meta.openclip_config });
    const trainer = createClipTrainer(model, { optimizer: { lr: 1e-3 }, accumFreq, clipNorm: 1 });
    const losses: number[] = [];
    for (let i = 0; i < 4; i++) losses.push((await trainer.step(b)).loss);
    return losses;
  };
  const full = await run(1);
  const acc = await run(2);
  assert.ok(full[3]! < full[0]!, 'the loss falls');
  full.forEach((l, i) => assert.ok(Math.abs(l - acc[i]!) < 2e-4, `step ${i}: ${l} vs ${acc[i]}`));
});

test('patch dropout in the CLIP trainer: the loss falls on a fixed batch, the draw is seeded, inference is unchanged; GradCache refuses it', async () => {
  const meta = JSON.parse(readFileSync(join(FIX, 'clip_a.json'), 'utf8'));
  const b = await batch('a');
  const run = async (seed: number) => {
    const model = await loadClip(join(FIX, 'clip_a.safetensors'), { config: meta.openclip_config });
    const before = (await model.encodeImage(b.pixels)).data.slice();
    const trainer = createClipTrainer(model, { optimizer: { lr: 1e-3 }, patchDropout: 0.5, seed });
    const losses: number[] = [];
    for (let i = 0; i < 6; i++) losses.push((await trainer.step(b)).loss);
    return { losses, model, before };
  };
  const a = await run(0);
  assert.ok(a.losses[5]! < a.losses[0]!, `the loss falls: ${a.losses}`);
  const again = await run(0);
  assert.deepEqual(again.losses, a.losses, 'the same seed gives the same steps');
  const other = await run(1);
  assert.notDeepEqual(other.losses.slice(0, 1), a.losses.slice(0, 1), 'another seed drops other patches');
  // The full-batch step without dropout differs from the one with it (the graph really drops patches).
  const plain = await loadClip(join(FIX, 'clip_a.safetensors'), { config: meta.openclip_config });
  const l0 = (await createClipTrainer(plain, { optimizer: { lr: 1e-3 } }).step(b)).loss;
  assert.ok(Math.abs(l0 - a.losses[0]!) > 1e-5, `loss with and without dropout: ${l0} vs ${a.losses[0]}`);
  // Inference (encodeImage) uses every patch: a fresh model gives the same features as before training.
  const fresh = await loadClip(join(FIX, 'clip_a.safetensors'), { config: meta.openclip_config });
  assert.deepEqual((await fresh.encodeImage(b.pixels)).data, a.before);
  // Unmasked tuning: switching the dropout off mid-run continues the same optimizer (step count, moments).
  const t = createClipTrainer(await loadClip(join(FIX, 'clip_a.safetensors'), { config: meta.openclip_config }), { optimizer: { lr: 1e-3 }, patchDropout: 0.5 });
  await t.step(b);
  await t.step(b);
  t.patchDropout = 0;
  const l3 = (await t.step(b)).loss;
  assert.equal(t.stepCount, 3);
  assert.ok(Number.isFinite(l3) && l3 < a.losses[0]!, `after the switch: ${l3}`);
  assert.throws(() => (t.patchDropout = 1), /patchDropout must be in \[0, 1\)/);
  const gc = createClipTrainer(fresh, { accumFreq: 2, patchDropout: 0.5 });
  await assert.rejects(gc.step(b), /patch dropout with accumFreq > 1 \(GradCache\) is not supported/);
});
