// The engine learns: small models written with the builder train on seeded synthetic data, and the
// loss falls below a stated value within a stated number of steps.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Graph } from '../src/graph/graph.js';
import * as o from '../src/graph/ops.js';
import { Rng, initParams } from '../src/nn/init.js';
import { layerNorm, linear, transformer } from '../src/nn/layers.js';
import { accuracy, crossEntropy } from '../src/nn/losses.js';
import { TrainStep } from '../src/optim/step.js';
import { warmupCosine } from '../src/optim/schedule.js';

test('an MLP learns a teacher with a hidden ReLU layer: loss < 0.4 within 300 steps', async () => {
  const [D, H, C, B] = [16, 64, 4, 128];
  const r = new Rng(1);
  // Teacher: z = relu(x·A)·B with 32 hidden units; the label is argmax z.
  const A = Array.from({ length: D * 32 }, () => r.normal());
  const Bt = Array.from({ length: 32 * C }, () => r.normal());
  const batch = (rng: Rng) => {
    const x = new Float32Array(B * D).map(() => rng.normal());
    const y = new BigInt64Array(B);
    for (let b = 0; b < B; b++) {
      const h = Array.from({ length: 32 }, (_, j) => Math.max(0, Array.from({ length: D }, (_, i) => x[b * D + i]! * A[i * 32 + j]!).reduce((p, q) => p + q, 0)));
      const z = Array.from({ length: C }, (_, c) => h.reduce((p, hv, j) => p + hv * Bt[j * C + c]!, 0));
      y[b] = BigInt(z.indexOf(Math.max(...z)));
    }
    return { x: { data: x, shape: [B, D] }, y: { data: y, shape: [B] } };
  };
  const g = new Graph('mlp');
  const x = g.input('x', ['N', D]);
  const y = g.input('y', ['N'], 'int64');
  const logits = linear(g, 'fc2', o.relu(linear(g, 'fc1', x, H)), C);
  const loss = crossEntropy(logits, y);
  const values = initParams(g, 0);
  const step = await TrainStep.create(g, loss, values, { optimizer: { lr: 1e-2, weightDecay: 0 }, schedule: warmupCosine(1e-2, 10, 300), metrics: { acc: accuracy(logits, y) }, threads: 1 });
  const data = new Rng(7);
  const losses: number[] = [];
  for (let i = 0; i < 300; i++) losses.push((await step.step(batch(data))).loss);
  const tail = losses.slice(-20).reduce((a, b) => a + b, 0) / 20;
  assert.ok(losses[0]! > 1.0, `initial loss ${losses[0]}`);
  assert.ok(tail < 0.4, `mean of the last 20 losses ${tail.toFixed(3)} (first ${losses[0]!.toFixed(3)})`);
});

test('a two-layer transformer classifier learns which token is in the majority: loss < 0.1 within 400 steps', async () => {
  const [V, T, W, B] = [8, 12, 32, 64];
  // Token ids 0..2 are the classes; the label is the most frequent of them in the sequence.
  const batch = (rng: Rng) => {
    const ids = new BigInt64Array(B * T);
    const y = new BigInt64Array(B);
    for (let b = 0; b < B; b++) {
      const counts = [0, 0, 0];
      const major = rng.int(3);
      for (let t = 0; t < T; t++) {
        const tok = rng.next() < 0.45 ? major : rng.int(V);
        ids[b * T + t] = BigInt(tok);
        if (tok < 3) counts[tok]!++;
      }
      y[b] = BigInt(counts.indexOf(Math.max(...counts)));
    }
    return { ids: { data: ids, shape: [B, T] }, y: { data: y, shape: [B] } };
  };
  const g = new Graph('tiny-transformer');
  const ids = g.input('ids', ['N', T], 'int64');
  const y = g.input('y', ['N'], 'int64');
  const emb = o.gather(g.param('token_embedding.weight', [V, W], { kind: 'normal', std: 0.1 }), ids, 0);
  const h = o.add(emb, g.param('positional_embedding', [T, W], { kind: 'normal', std: 0.02 }));
  const z = layerNorm(g, 'ln_final', transformer(g, 'transformer', h, { width: W, layers: 2, heads: 4, mlpRatio: 2, act: 'gelu' }));
  const logits = linear(g, 'head', o.reduceMean(z, [1]), 3);
  const loss = crossEntropy(logits, y);
  const values = initParams(g, 0);
  const step = await TrainStep.create(g, loss, values, {
    optimizer: { lr: 3e-3, weightDecay: 0.01 },
    schedule: warmupCosine(3e-3, 20, 400),
    clipNorm: 1.0,
    threads: 1,
  });
  const data = new Rng(3);
  const losses: number[] = [];
  for (let i = 0; i < 400; i++) losses.push((await step.step(batch(data))).loss);
  const tail = losses.slice(-20).reduce((a, b) => a + b, 0) / 20;
  assert.ok(tail < 0.1, `mean of the last 20 losses ${tail.toFixed(3)} (first ${losses[0]!.toFixed(3)})`);
});

test('the in-graph AdamW update (flat group or per parameter) and the in-place TypeScript update give the same trajectory, outputs whole or in pieces', async () => {
  const run = async (update: 'graph' | 'js', outputPiece?: number, flatGroup?: boolean) => {
    const g = new Graph('mlp');
    const x = g.input('x', [32, 8]);
    const y = g.input('y', [32], 'int64');
    const loss = crossEntropy(linear(g, 'fc2', o.gelu(linear(g, 'fc1', x, 16)), 3), y);
    const step = await TrainStep.create(g, loss, initParams(g, 5), {
      optimizer: { lr: 1e-2, weightDecay: 0.1 },
      weightDecayOf: (name) => (name.endsWith('bias') ? 0 : 0.1), // the flat group then decays per element
      clipNorm: 0.5,
      update,
      threads: 1,
      outputPiece,
      flatGroup,
    });
    const data = new Rng(11);
    const out: number[] = [];
    for (let i = 0; i < 20; i++) {
      const xb = new Float32Array(32 * 8).map(() => data.normal());
      const yb = BigInt64Array.from({ length: 32 }, () => BigInt(data.int(3)));
      out.push((await step.step({ x: { data: xb, shape: [32, 8] }, y: { data: yb, shape: [32] } })).loss);
    }
    return { out, values: step.values, m: step.state.m };
  };
  const a = await run('graph');
  for (const [label, b] of [
    ['js', await run('js')],
    ['graph, outputs in pieces of 7', await run('graph', 7)],
    ['js, gradients in pieces of 7', await run('js', 7)],
    ['graph, per parameter', await run('graph', undefined, false)],
    ['graph, flat group of 195 in pieces of 150', await run('graph', 150)],
  ] as const) {
    for (let i = 0; i < a.out.length; i++) assert.ok(Math.abs(a.out[i]! - b.out[i]!) < 1e-5, `${label}, step ${i}: ${a.out[i]} vs ${b.out[i]}`);
    for (const [name, w] of a.values) assert.ok(w.every((v, i) => Math.abs(v - b.values.get(name)![i]!) < 1e-5), `${label}: ${name} differs`);
    for (const [name, m] of a.m) assert.ok(m.every((v, i) => Math.abs(v - b.m.get(name)![i]!) < 1e-6), `${label}: first moment of ${name} differs`);
  }
  // Pieces are used: fc1.weight has 128 elements, so 19 pieces of ≤ 7.
  assert.equal(a.values.get('fc1.weight')!.length, 128);
});
