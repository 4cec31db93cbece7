// Every gradient rule against central finite differences on random inputs, broadcasting included.
// Each case runs in float64 when ONNX Runtime's CPU build has float64 kernels for all of its ops
// (forward and backward), otherwise in float32 with a looser tolerance (see TOL below).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gradients } from '../src/autodiff/grad.js';
import { RULES } from '../src/autodiff/rules.js';
import { type DType, Graph, type Tensor } from '../src/graph/graph.js';
import * as o from '../src/graph/ops.js';
import { evaluate, randn, rng, typed } from './helpers.js';

interface In {
  shape: number[];
  kind?: 'float' | 'int64' | 'bool';
  values?: number[];
  /** Sample values in [0.5, 2] (for log, sqrt, division, pow). */
  positive?: boolean;
  /** Keep values at least 0.2 away from 0 (kinks of relu, abs, max). */
  awayFromZero?: boolean;
}
interface Case {
  name: string;
  inputs: In[];
  build: (xs: Tensor[]) => Tensor;
  /** Checked in float32 only (the op or the rule's float32 form has no float64 kernel). */
  only32?: boolean;
}

const C = (name: string, inputs: In[], build: (xs: Tensor[]) => Tensor): Case => ({ name, inputs, build });
const C32 = (name: string, inputs: In[], build: (xs: Tensor[]) => Tensor): Case => ({ name, inputs, build, only32: true });
const f = (...shape: number[]): In => ({ shape });
const pos = (...shape: number[]): In => ({ shape, positive: true });
const away = (...shape: number[]): In => ({ shape, awayFromZero: true });

const CASES: Case[] = [
  C('Add broadcast [2,3]+[3]', [f(2, 3), f(3)], ([a, b]) => o.add(a!, b!)),
  C('Add broadcast [2,1,3]+[4,1]', [f(2, 1, 3), f(4, 1)], ([a, b]) => o.add(a!, b!)),
  C('Sub broadcast [3,1]-[1,4]', [f(3, 1), f(1, 4)], ([a, b]) => o.sub(a!, b!)),
  C('Mul broadcast [2,3,4]*[3,1]', [f(2, 3, 4), f(3, 1)], ([a, b]) => o.mul(a!, b!)),
  C('Div broadcast [2,3]/[2,1]', [f(2, 3), pos(2, 1)], ([a, b]) => o.div(a!, b!)),
  C('Pow [2,3]^[3]', [pos(2, 3), f(3)], ([a, b]) => o.pow(a!, b!)),
  C('Max broadcast', [away(2, 3), away(3)], ([a, b]) => o.max(a!, b!)),
  C('Min broadcast', [away(2, 3), away(2, 1)], ([a, b]) => o.min(a!, b!)),
  C('Neg', [f(5)], ([a]) => o.neg(a!)),
  C('Abs', [away(2, 3)], ([a]) => o.abs(a!)),
  C('Sqrt', [pos(2, 3)], ([a]) => o.sqrt(a!)),
  C('Exp', [f(2, 3)], ([a]) => o.exp(a!)),
  C('Log', [pos(2, 3)], ([a]) => o.log(a!)),
  C('Reciprocal', [pos(4)], ([a]) => o.reciprocal(a!)),
  C('Erf', [f(2, 3)], ([a]) => o.erf(a!)),
  C('Tanh', [f(2, 3)], ([a]) => o.tanh(a!)),
  C('Sigmoid', [f(2, 3)], ([a]) => o.sigmoid(a!)),
  C('Relu', [away(2, 3)], ([a]) => o.relu(a!)),
  C('Gelu (exact)', [f(2, 4)], ([a]) => o.gelu(a!)),
  C('FastGelu (tanh)', [f(2, 4)], ([a]) => o.geluTanh(a!)),
  C('QuickGelu', [f(2, 4)], ([a]) => o.quickGelu(a!)),
  C('Identity', [f(3)], ([a]) => o.identity(a!)),
  C('Where broadcast', [{ shape: [2, 3], kind: 'bool', values: [1, 0, 1, 0, 0, 1] }, f(2, 3), f(3)], ([c, a, b]) => o.where(c!, a!, b!)),
  C('Cast float→float64→float', [f(2, 2)], ([a]) => o.cast(o.mul(o.cast(a!, 'float64'), o.cast(a!, 'float64')), a!.dtype)),
  C('Softmax axis -1', [f(2, 4)], ([a]) => o.softmax(a!, -1)),
  C('Softmax axis 0', [f(3, 2)], ([a]) => o.softmax(a!, 0)),
  C('LogSoftmax', [f(2, 5)], ([a]) => o.logSoftmax(a!, -1)),
  C('LayerNormalization', [f(2, 3, 5), f(5), f(5)], ([x, g, b]) => o.layerNorm(x!, g!, b!, 1e-5)),
  C('ReduceSum axes [1] keepdims', [f(2, 3, 2)], ([a]) => o.reduceSum(a!, [1], true)),
  C('ReduceSum all', [f(2, 3)], ([a]) => o.reduceSum(a!)),
  C('ReduceMean axes [0,2]', [f(2, 3, 2)], ([a]) => o.reduceMean(a!, [0, 2])),
  C('ReduceMax axis -1', [f(3, 4)], ([a]) => o.reduceMax(a!, [-1])),
  C('MatMul 2-D', [f(3, 4), f(4, 2)], ([a, b]) => o.matmul(a!, b!)),
  C('MatMul batched [2,3,4]@[4,5]', [f(2, 3, 4), f(4, 5)], ([a, b]) => o.matmul(a!, b!)),
  C('MatMul broadcast [1,3,4]@[2,4,2]', [f(1, 3, 4), f(2, 4, 2)], ([a, b]) => o.matmul(a!, b!)),
  // float32 only (FusedMatMul has no float64 kernel): the MatMul rule's float32 form, then FusedMatMul's own.
  C32('MatMul batched, float32: gradient by FusedMatMul', [f(2, 3, 4), f(2, 4, 5)], ([a, b]) => o.matmul(a!, b!)),
  C32('MatMul shared weight, float32', [f(2, 3, 4), f(4, 5)], ([a, b]) => o.matmul(a!, b!)),
  C32('MatMul broadcast, float32', [f(1, 3, 4), f(2, 4, 2)], ([a, b]) => o.matmul(a!, b!)),
  C32('FusedMatMul transB alpha [2,3,4]·[2,5,4]ᵀ', [f(2, 3, 4), f(2, 5, 4)], ([a, b]) => o.fusedMatMul(a!, b!, { transB: true, alpha: 0.6 })),
  C32('FusedMatMul transA broadcast [4,3]ᵀ·[2,4,5]', [f(4, 3), f(2, 4, 5)], ([a, b]) => o.fusedMatMul(a!, b!, { transA: true })),
  C32('FusedMatMul transA transB [2,4,3]ᵀ·[5,4]ᵀ', [f(2, 4, 3), f(5, 4)], ([a, b]) => o.fusedMatMul(a!, b!, { transA: true, transB: true, alpha: 1.5 })),
  C('Gemm transB + C[n]', [f(3, 4), f(2, 4), f(2)], ([a, b, c]) => o.gemm(a!, b!, c!, { transB: true, alpha: 0.7, beta: 1.3 })),
  C('Gemm transA', [f(4, 3), f(4, 2), f(3, 2)], ([a, b, c]) => o.gemm(a!, b!, c!, { transA: true })),
  C('Transpose', [f(2, 3, 4)], ([a]) => o.transpose(a!, [2, 0, 1])),
  C('Reshape', [f(2, 6)], ([a]) => o.reshape(a!, [3, 4])),
  C('Expand', [f(3, 1)], ([a]) => o.expand(a!, [2, 3, 4])),
  C('Concat', [f(2, 3), f(2, 2)], ([a, b]) => o.concat([a!, b!], 1)),
  C('Slice', [f(3, 5)], ([a]) => o.slice(a!, 1, 1, 4)),
  C('Split', [f(2, 5)], ([a]) => {
    const [p, q] = o.split(a!, 1, [2, 3]);
    return o.concat([o.mul(p!, 2), q!], 1);
  }),
  C('Split (one part unused)', [f(4, 2)], ([a]) => o.split(a!, 0, [1, 3])[1]!),
  C('Squeeze', [f(2, 1, 3)], ([a]) => o.squeeze(a!, [1])),
  C('Unsqueeze', [f(2, 3)], ([a]) => o.unsqueeze(a!, [0, 2])),
  C('Pad', [f(2, 3)], ([a]) => o.pad(a!, [1, 0, 0, 2])),
  C('Gather (embedding, repeated ids)', [f(5, 3), { shape: [2, 3], kind: 'int64', values: [0, 4, 4, 1, 0, 2] }], ([t, i]) => o.gather(t!, i!, 0)),
  C('GatherElements', [f(3, 4), { shape: [3, 2], kind: 'int64', values: [0, 3, 1, 1, 2, 0] }], ([x, i]) => o.gatherElements(x!, i!, 1)),
  C(
    'ScatterElements',
    [f(3, 4), { shape: [3, 1], kind: 'int64', values: [2, 0, 3] }, f(3, 1)],
    ([x, i, u]) => o.scatterElements(x!, i!, u!, 1),
  ),
  C('Trilu (lower)', [f(2, 3, 3)], ([a]) => o.trilu(a!, false)),
  C('Conv stride 2 pad 1', [f(2, 3, 5, 5), f(4, 3, 3, 3), f(4)], ([x, w, b]) => o.conv(x!, w!, b!, { strides: [2, 2], pads: [1, 1, 1, 1] })),
  C('Conv stride 1 asymmetric pad', [f(1, 2, 4, 5), f(3, 2, 2, 3)], ([x, w]) => o.conv(x!, w!, null, { pads: [0, 1, 1, 0] })),
  C('ConvTranspose stride 2 pad 1 outpad 1', [f(2, 3, 3, 3), f(3, 2, 3, 3), f(2)], ([x, w, b]) =>
    o.convTranspose(x!, w!, b!, { strides: [2, 2], pads: [1, 1, 1, 1], outputPadding: [1, 1] }),
  ),
  C('ConvTranspose 4x4 stride 2 pad 1', [f(1, 2, 3, 3), f(2, 3, 4, 4)], ([x, w]) => o.convTranspose(x!, w!, null, { strides: [2, 2], pads: [1, 1, 1, 1] })),
  C('composite: cross-entropy', [f(4, 5), { shape: [4, 1], kind: 'int64', values: [0, 4, 2, 2] }], ([z, y]) =>
    o.neg(o.reduceMean(o.gatherElements(o.logSoftmax(z!, -1), y!, 1))),
  ),
];

// Tolerances. float64: eps 1e-6, truncation O(eps²) and round-off O(1e-16/eps) are both ~1e-10.
// float32: eps 1e-2 keeps round-off (~6e-8·|loss|/eps ≈ 1e-5) small; truncation is O(eps²·f''') ≈ 1e-4
// for these smooth O(1) functions, so 2e-3 absolute + 1e-2 relative separates a right rule from a
// wrong one (a wrong rule is off by O(1)).
const TOL = {
  float64: { eps: 1e-6, abs: 1e-6, rel: 1e-5 },
  float32: { eps: 1e-2, abs: 2e-3, rel: 1e-2 },
};

function sample(r: () => number, spec: In): number[] {
  const n = spec.shape.reduce((a, b) => a * b, 1);
  if (spec.values) return spec.values;
  if (spec.positive) return Array.from({ length: n }, () => 0.5 + 1.5 * r());
  if (spec.awayFromZero) return Array.from({ length: n }, () => (r() < 0.5 ? -1 : 1) * (0.2 + r()));
  return randn(r, n);
}

async function gradcheck(c: Case, dtype: 'float64' | 'float32'): Promise<void> {
  const r = rng(c.name.length * 7919 + 17);
  const values = c.inputs.map((s) => sample(r, s));
  const g = new Graph(c.name);
  const xs = c.inputs.map((s, i) => g.input(`x${i}`, s.shape, (s.kind === 'float' || !s.kind ? dtype : s.kind) as DType));
  const y = c.build(xs);
  // A random projection makes every output element matter with a distinct weight.
  const proj = o.constant(g, typed(randn(r, y.shape.reduce<number>((a, b) => a * (b as number), 1)), y.dtype), y.shape as number[], y.dtype);
  const loss = o.reduceSum(o.mul(y, proj));
  const floatIdx = c.inputs.map((s, i) => (!s.kind || s.kind === 'float' ? i : -1)).filter((i) => i >= 0);
  const grads = gradients(loss, floatIdx.map((i) => xs[i]!));
  const feeds = (vals: number[][]) => Object.fromEntries(xs.map((x, i) => [x.name, { data: typed(vals[i]!, x.dtype), shape: x.shape as number[] }]));
  const [l0, ...analytic] = await evaluate(g, [loss, ...grads], feeds(values));
  assert.ok(Number.isFinite(Number(l0!.data[0])));
  const tol = TOL[dtype];
  const lossOnly = await (async () => {
    const { compile } = await import('../src/runtime/compile.js');
    return compile(g, [loss], { cacheKey: false, threads: 1 });
  })();
  for (const [k, i] of floatIdx.entries()) {
    const an = analytic[k]!.data as Float64Array | Float32Array;
    for (let j = 0; j < values[i]!.length; j++) {
      const plus = values.map((v) => [...v]);
      const minus = values.map((v) => [...v]);
      plus[i]![j]! += tol.eps;
      minus[i]![j]! -= tol.eps;
      const lp = Number((await lossOnly.run(feeds(plus)))[lossOnly.outputNames[0]!]!.data[0]);
      const lm = Number((await lossOnly.run(feeds(minus)))[lossOnly.outputNames[0]!]!.data[0]);
      const num = (lp - lm) / (2 * tol.eps);
      const err = Math.abs(num - an[j]!);
      assert.ok(
        err <= tol.abs + tol.rel * Math.abs(num),
        `${c.name} [${dtype}]: d/dx${i}[${j}] analytic ${an[j]} vs numeric ${num} (err ${err.toExponential(2)})`,
      );
    }
  }
}

const missingKernel = (e: unknown): boolean => /Could not find an implementation|Failed to find kernel/.test(String((e as Error).message));

for (const c of CASES) {
  test(`gradient: ${c.name}`, async (t) => {
    if (c.only32) return gradcheck(c, 'float32');
    try {
      await gradcheck(c, 'float64');
    } catch (e) {
      if (!(e instanceof Error) || !missingKernel(e) || e.message.includes('analytic')) throw e;
      t.diagnostic(`float64 kernel missing (${e.message.split('\n')[0]!.slice(0, 120)}); checked in float32`);
      await gradcheck(c, 'float32');
    }
  });
}

test('every op with a rule has a gradient test', () => {
  const covered = new Set<string>();
  for (const c of CASES) {
    const g = new Graph();
    const xs = c.inputs.map((s, i) => g.input(`x${i}`, s.shape, (s.kind === 'float' || !s.kind ? 'float32' : s.kind) as DType));
    c.build(xs);
    for (const n of g.nodes) covered.add(n.op);
  }
  const missing = Object.keys(RULES).filter((op) => !covered.has(op));
  assert.deepEqual(missing, []);
});

test('a missing rule is an error naming the op', () => {
  const g = new Graph();
  const x = g.input('x', [3]);
  const y = o.reduceSum(o.cast(o.argMax(o.unsqueeze(x, [0]), -1), 'float32'));
  const z = o.add(y, o.reduceSum(o.sign(x)));
  assert.throws(() => gradients(z, [x]), /no gradient rule for op 'Sign'/);
});

test('shape mismatches fail at build time, naming the op and the shapes', () => {
  const g = new Graph();
  const a = g.input('a', [2, 3]);
  const b = g.input('b', [4, 5]);
  assert.throws(() => o.matmul(a, b), /MatMul: inner dimensions differ \(3 vs 4\).*a: float32\[2, 3\].*b: float32\[4, 5\]/);
  assert.throws(() => o.add(a, b), /Add: shapes cannot be broadcast/);
  assert.throws(() => o.reshape(a, [4, 2]), /Reshape: cannot reshape/);
  assert.throws(() => o.add(a, g.input('i', [3], 'int64')), /Add: dtypes differ/);
});
