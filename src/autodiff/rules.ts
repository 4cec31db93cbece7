// The table of gradient rules: for each op, a function from the node and the gradients of its outputs
// to one gradient per input (undefined where none flows). Every rule is built from standard ONNX ops
// (the standard ONNX Runtime build has no *Grad kernels) and tested against finite differences in
// test/autodiff.test.ts.
import type { Node, Tensor } from '../graph/graph.js';
import * as o from '../graph/ops.js';

type T = Tensor;
type Grads = (T | undefined)[];
export type GradRule = (n: Node, dy: Grads, wants: boolean[]) => Grads;

/** Sums `g` (shaped like a broadcast result) back to `shape` — the rule for every broadcasting op. */
export function unbroadcast(g: T, like: T): T {
  const extra = g.rank - like.rank;
  const axes: number[] = [];
  for (let i = 0; i < g.rank; i++) {
    if (i < extra) axes.push(i);
    else if (like.shape[i - extra] === 1 && g.shape[i] !== 1) axes.push(i);
  }
  if (axes.length === 0) return g;
  if (axes.every((a, i) => a === i) && axes.length < g.rank) return o.reshape(sumLeading(g, axes.length), like.shape);
  return o.reshape(o.reduceSum(g, axes, true), like.shape);
}

/**
 * Σ over the first `k` axes (bias and LayerNorm-gain gradients: a sum over every row). With static
 * sizes this is ones[1, rows] @ g[rows, rest] — one GEMV, 2–5× faster in ONNX Runtime than
 * ReduceSum over leading axes, which is memory-bound and single-threaded there. Returns [rest…].
 */
export function sumLeading(g: T, k: number): T {
  const lead = g.shape.slice(0, k);
  const rest = g.shape.slice(k);
  if (lead.some((d) => typeof d !== 'number') || rest.some((d) => typeof d !== 'number') || (g.dtype !== 'float32' && g.dtype !== 'float64')) {
    return o.reduceSum(g, lead.map((_, i) => i), false);
  }
  const rows = (lead as number[]).reduce((a, b) => a * b, 1);
  const cols = (rest as number[]).reduce((a, b) => a * b, 1);
  const key = `${g.dtype}:${rows}`;
  const cache = onesCache.get(g.graph) ?? onesCache.set(g.graph, new Map()).get(g.graph)!;
  let ones = cache.get(key);
  if (!ones) {
    ones = o.constant(g.graph, g.dtype === 'float64' ? new Float64Array(rows).fill(1) : new Float32Array(rows).fill(1), [1, rows], g.dtype);
    cache.set(key, ones);
  }
  return o.reshape(o.matmul(ones, o.reshape(g, [rows, cols])), rest);
}
const onesCache = new WeakMap<Tensor['graph'], Map<string, T>>();

const inp = (n: Node, i: number): T => n.inputs[i]!;
const out = (n: Node, i = 0): T => n.outputs[i]!;
const attrI = (n: Node, k: string, dflt: number): number => {
  const a = n.attrs[k];
  return a && 'i' in a ? a.i : dflt;
};
const attrF = (n: Node, k: string, dflt: number): number => {
  const a = n.attrs[k];
  return a && 'f' in a ? a.f : dflt;
};
const attrInts = (n: Node, k: string): number[] => {
  const a = n.attrs[k];
  return a && 'ints' in a ? [...a.ints] : [];
};
/** Reads back an int64 constant input (axes, shapes) that ops.ts wrote. */
const constInts = (n: Node, i: number): number[] => {
  const v = inp(n, 0).graph.constants.get(inp(n, i));
  if (!v) throw new Error(`${n.op}: input ${i} must be a constant`);
  return Array.from(v.data as BigInt64Array, Number);
};
function binaryRule(f: (a: T, b: T, y: T, dy: T) => [T | undefined, T | undefined]): GradRule {
  return (n, [dy], wants) => {
    const a = inp(n, 0);
    const b = inp(n, 1);
    const [da, db] = f(a, b, out(n), dy!);
    return [wants[0] && da ? unbroadcast(da, a) : undefined, wants[1] && db ? unbroadcast(db, b) : undefined];
  };
}

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);
const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

/** Gradient of a reduction with keepdims semantics: reshape dy to the kept shape, then broadcast. */
function expandBack(dy: T, x: T, axes: number[], keepdims: boolean): T {
  const kept = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
  const g = keepdims ? dy : o.reshape(dy, kept);
  return o.expand(g, x.shape, x);
}

function reducedAxes(n: Node, x: T): number[] {
  const ax = n.op === 'ReduceSum' ? constInts(n, 1) : attrInts(n, 'axes');
  return ax.length ? ax.map((a) => (a < 0 ? a + x.rank : a)) : x.shape.map((_, i) => i);
}

export const RULES: Record<string, GradRule> = {
  Identity: (_n, [dy]) => [dy],
  Add: binaryRule((_a, _b, _y, dy) => [dy, dy]),
  Sub: binaryRule((_a, _b, _y, dy) => [dy, o.neg(dy)]),
  Mul: binaryRule((a, b, _y, dy) => [o.mul(dy, b), o.mul(dy, a)]),
  Div: binaryRule((_a, b, y, dy) => {
    const da = o.div(dy, b);
    return [da, o.neg(o.mul(da, y))];
  }),
  Pow: binaryRule((a, b, y, dy) => [
    o.mul(dy, o.mul(b, o.pow(a, o.sub(b, 1)))),
    // d(a^b)/db = a^b·ln a, defined for a > 0.
    o.mul(dy, o.mul(y, o.log(a))),
  ]),
  // Ties: the gradient goes to the first input, as a mask a ≥ b (Max) or a ≤ b (Min).
  Max: binaryRule((a, b, _y, dy) => {
    const m = o.cast(o.less(a, b), dy.dtype); // 1 where b wins
    return [o.mul(dy, o.sub(1, m)), o.mul(dy, m)];
  }),
  Min: binaryRule((a, b, _y, dy) => {
    const m = o.cast(o.greater(a, b), dy.dtype); // 1 where b wins
    return [o.mul(dy, o.sub(1, m)), o.mul(dy, m)];
  }),
  Neg: (_n, [dy]) => [o.neg(dy!)],
  Abs: (n, [dy]) => [o.mul(dy!, o.sign(inp(n, 0)))],
  Sqrt: (n, [dy]) => [o.div(o.mul(dy!, 0.5), out(n))],
  Exp: (n, [dy]) => [o.mul(dy!, out(n))],
  Log: (n, [dy]) => [o.div(dy!, inp(n, 0))],
  Reciprocal: (n, [dy]) => [o.neg(o.mul(dy!, o.square(out(n))))],
  Erf: (n, [dy]) => {
    const x = inp(n, 0);
    return [o.mul(dy!, o.mul(o.exp(o.neg(o.square(x))), 2 / Math.sqrt(Math.PI)))];
  },
  Tanh: (n, [dy]) => [o.mul(dy!, o.sub(1, o.square(out(n))))],
  Sigmoid: (n, [dy]) => {
    const y = out(n);
    return [o.mul(dy!, o.mul(y, o.sub(1, y)))];
  },
  Relu: (n, [dy]) => [o.where(o.greater(inp(n, 0), 0), dy!, 0)],
  // GELU(x) = x·Φ(x): d/dx = Φ(x) + x·φ(x).
  Gelu: (n, [dy]) => {
    const x = inp(n, 0);
    const cdf = o.mul(o.add(o.erf(o.mul(x, Math.SQRT1_2)), 1), 0.5);
    const pdf = o.mul(o.exp(o.mul(o.square(x), -0.5)), INV_SQRT_2PI);
    return [o.mul(dy!, o.add(cdf, o.mul(x, pdf)))];
  },
  // tanh GELU: y = ½x(1+t), t = tanh(c(x + 0.044715x³)); dy/dx = ½(1+t) + ½x(1−t²)·c(1 + 3·0.044715x²).
  FastGelu: (n, [dy]) => {
    const x = inp(n, 0);
    const x2 = o.square(x);
    const t = o.tanh(o.mul(o.mul(x, o.add(o.mul(x2, 0.044715), 1)), SQRT_2_OVER_PI));
    const dinner = o.mul(o.add(o.mul(x2, 3 * 0.044715), 1), SQRT_2_OVER_PI);
    const d = o.add(o.mul(o.add(t, 1), 0.5), o.mul(o.mul(o.mul(x, 0.5), o.sub(1, o.square(t))), dinner));
    return [o.mul(dy!, d)];
  },
  // QuickGELU: y = x·σ(αx); dy/dx = σ + αx·σ(1−σ).
  QuickGelu: (n, [dy]) => {
    const x = inp(n, 0);
    const alpha = attrF(n, 'alpha', 1.702);
    const s = o.sigmoid(o.mul(x, alpha));
    return [o.mul(dy!, o.add(s, o.mul(o.mul(x, alpha), o.mul(s, o.sub(1, s)))))];
  },
  Where: (n, [dy], wants) => {
    const c = inp(n, 0);
    const zero = o.fillLike(dy!, 0);
    return [
      undefined,
      wants[1] ? unbroadcast(o.where(c, dy!, zero), inp(n, 1)) : undefined,
      wants[2] ? unbroadcast(o.where(c, zero, dy!), inp(n, 2)) : undefined,
    ];
  },
  Cast: (n, [dy]) => [o.cast(dy!, inp(n, 0).dtype)],
  // Softmax: dx = y ⊙ (dy − Σ dy⊙y).
  Softmax: (n, [dy]) => {
    const y = out(n);
    const axis = attrI(n, 'axis', -1);
    return [o.mul(y, o.sub(dy!, o.reduceSum(o.mul(dy!, y), [axis], true)))];
  },
  // LogSoftmax: dx = dy − softmax(x)·Σ dy.
  LogSoftmax: (n, [dy]) => {
    const axis = attrI(n, 'axis', -1);
    return [o.sub(dy!, o.mul(o.exp(out(n)), o.reduceSum(dy!, [axis], true)))];
  },
  // LayerNorm over the last axis, with x̂ = (x − μ)·r and g = dy·γ:
  // dx = r·(g − mean(g) − x̂·mean(g·x̂)); dγ = Σ dy·x̂; dβ = Σ dy (sums over every leading axis).
  LayerNormalization: (n, [dy], wants) => {
    if (!dy) return [];
    const [x, gamma] = [inp(n, 0), inp(n, 1)];
    const xhat = o.mul(o.sub(x, out(n, 1)), out(n, 2));
    const lead = x.shape.slice(0, -1).map((_, i) => i);
    const g = o.mul(dy, gamma);
    const dx = wants[0]
      ? o.mul(out(n, 2), o.sub(o.sub(g, o.reduceMean(g, [-1], true)), o.mul(xhat, o.reduceMean(o.mul(g, xhat), [-1], true))))
      : undefined;
    return [dx, wants[1] ? sumLeading(o.mul(dy, xhat), lead.length) : undefined, wants[2] ? sumLeading(dy, lead.length) : undefined];
  },
  ReduceSum: (n, [dy]) => {
    const x = inp(n, 0);
    return [expandBack(dy!, x, reducedAxes(n, x), attrI(n, 'keepdims', 1) === 1)];
  },
  ReduceMean: (n, [dy]) => {
    const x = inp(n, 0);
    const axes = reducedAxes(n, x);
    return [o.div(expandBack(dy!, x, axes, attrI(n, 'keepdims', 1) === 1), o.sizeAlong(x, axes))];
  },
  // ReduceMax: the gradient is shared equally among the maxima (as torch.amax does).
  ReduceMax: (n, [dy]) => {
    const x = inp(n, 0);
    const axes = reducedAxes(n, x);
    const keep = attrI(n, 'keepdims', 1) === 1;
    const kept = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
    const y = keep ? out(n) : o.reshape(out(n), kept);
    const mask = o.cast(o.equal(x, y), x.dtype);
    const share = o.div(mask, o.reduceSum(mask, axes, true));
    return [o.mul(share, expandBack(dy!, x, axes, keep))];
  },
  // Y = A·B: dA = dY·Bᵀ, dB = Aᵀ·dY, the transposes as GEMM flags (fusedMatMul).
  MatMul: (n, [dy], wants) => {
    const [a, b] = [inp(n, 0), inp(n, 1)];
    let db: T | undefined;
    if (wants[1] && b.rank === 2 && a.rank > 2) {
      // A shared weight (x [..., M, K] @ W [K, N]): one GEMM over all rows, dW = X₂ᵀ·dY₂ — not a
      // batch of per-example [K, N] products summed afterwards (B× the memory and a big ReduceSum).
      const rows = flatRows(a);
      db = o.fusedMatMul(o.reshape(a, [rows, a.shape[a.rank - 1]!]), o.reshape(dy!, [rows, dy!.shape[dy!.rank - 1]!]), { transA: true });
    } else if (wants[1]) db = unbroadcast(o.fusedMatMul(a, dy!, { transA: true }), b);
    return [wants[0] ? unbroadcast(o.fusedMatMul(dy!, b, { transB: true }), a) : undefined, db];
  },
  // Y = α·op(A)·op(B), as Gemm's rule but batched: each gradient is one more FusedMatMul.
  FusedMatMul: (n, [dy], wants) => {
    const [a, b] = [inp(n, 0), inp(n, 1)];
    const [tA, tB] = [attrI(n, 'transA', 0) === 1, attrI(n, 'transB', 0) === 1];
    const alpha = attrF(n, 'alpha', 1);
    if (attrI(n, 'transBatchA', 0) || attrI(n, 'transBatchB', 0)) throw new Error('the FusedMatMul gradient does not support transBatchA/B');
    const da = () => (tA ? o.fusedMatMul(b, dy!, { transA: tB, transB: true, alpha }) : o.fusedMatMul(dy!, b, { transB: !tB, alpha }));
    const db = () => (tB ? o.fusedMatMul(dy!, a, { transA: true, transB: tA, alpha }) : o.fusedMatMul(a, dy!, { transA: !tA, alpha }));
    return [wants[0] ? unbroadcast(da(), a) : undefined, wants[1] ? unbroadcast(db(), b) : undefined];
  },
  Gemm: (n, [dy], wants) => {
    const [a, b, c] = [inp(n, 0), inp(n, 1), n.inputs[2]];
    const [tA, tB] = [attrI(n, 'transA', 0) === 1, attrI(n, 'transB', 0) === 1];
    const [alpha, beta] = [attrF(n, 'alpha', 1), attrF(n, 'beta', 1)];
    // y = α·A'·B' + β·C, with A' = tA ? Aᵀ : A.
    const da = tA ? o.gemm(b, dy!, null, { transA: tB, transB: true, alpha }) : o.gemm(dy!, b, null, { transB: !tB, alpha });
    const db = tB ? o.gemm(dy!, a, null, { transA: true, transB: tA, alpha }) : o.gemm(a, dy!, null, { transA: !tA, alpha });
    return [wants[0] ? da : undefined, wants[1] ? db : undefined, c && wants[2] ? unbroadcast(o.mul(dy!, beta), c) : undefined];
  },
  Transpose: (n, [dy]) => {
    const perm = attrInts(n, 'perm');
    const inv = perm.map((_, i) => perm.indexOf(i));
    return [o.transpose(dy!, inv)];
  },
  Reshape: (n, [dy]) => [o.reshape(dy!, inp(n, 0).shape)],
  Squeeze: (n, [dy]) => [o.reshape(dy!, inp(n, 0).shape)],
  Unsqueeze: (n, [dy]) => [o.reshape(dy!, inp(n, 0).shape)],
  Expand: (n, [dy]) => [unbroadcast(dy!, inp(n, 0))],
  Concat: (n, [dy], wants) => {
    const axis = attrI(n, 'axis', 0);
    let at = 0;
    return n.inputs.map((x, i) => {
      const len = x!.shape[axis] as number;
      const g = wants[i] ? o.slice(dy!, axis, at, at + len) : undefined;
      at += len;
      return g;
    });
  },
  Split: (n, dys) => {
    const parts = n.outputs.map((y, i) => dys[i] ?? o.fillLike(y, 0));
    return [o.concat(parts, attrI(n, 'axis', 0)), undefined];
  },
  Slice: (n, [dy]) => {
    const x = inp(n, 0);
    const [start, end, axis, step] = [1, 2, 3, 4].map((i) => constInts(n, i)[0]!);
    if (step !== 1) throw new Error('the Slice gradient supports step 1 only');
    const len = x.shape[axis!] as number;
    const pads = new Array<number>(2 * x.rank).fill(0);
    pads[axis!] = start!;
    pads[axis! + x.rank] = len - end!;
    return [o.pad(dy!, pads)];
  },
  Pad: (n, [dy]) => {
    const x = inp(n, 0);
    const pads = constInts(n, 1);
    let g = dy!;
    x.shape.forEach((d, i) => {
      if (pads[i] || pads[i + x.rank]) g = o.slice(g, i, pads[i]!, pads[i]! + (d as number));
    });
    return [g];
  },
  Trilu: (n, [dy]) => [o.trilu(dy!, attrI(n, 'upper', 1) === 1, constInts(n, 1)[0])],
  // Embedding lookup along axis 0: scatter-add the rows of dy into a zero table.
  Gather: (n, [dy]) => {
    const [x, idx] = [inp(n, 0), inp(n, 1)];
    if (attrI(n, 'axis', 0) !== 0) throw new Error('the Gather gradient supports axis 0 only');
    const row = x.shape.slice(1);
    const width = row.reduce<number>((p, d) => p * (d as number), 1);
    const k = idxFlat(idx);
    const flatDy = o.reshape(dy!, [k, width]);
    const flatIdx = o.reshape(o.cast(idx, 'int64'), [k, 1]);
    const zeros = o.fillLike(o.reshape(x, [x.shape[0]!, width]), 0);
    const table = o.scatterElements(zeros, o.expand(flatIdx, flatDy.shape), flatDy, 0, 'add');
    return [o.reshape(table, x.shape), undefined];
  },
  GatherElements: (n, [dy]) => {
    const [x, idx] = [inp(n, 0), inp(n, 1)];
    return [o.scatterElements(o.fillLike(x, 0), idx, dy!, attrI(n, 'axis', 0), 'add'), undefined];
  },
  ScatterElements: (n, [dy], wants) => {
    const [, idx, upd] = [inp(n, 0), inp(n, 1), inp(n, 2)];
    const axis = attrI(n, 'axis', 0);
    const red = n.attrs.reduction && 's' in n.attrs.reduction ? n.attrs.reduction.s : 'none';
    // With reduction 'none' the overwritten entries get no gradient; with 'add' all of dy flows.
    const dData = red === 'add' ? dy! : o.scatterElements(dy!, idx, o.fillLike(upd, 0), axis);
    return [wants[0] ? dData : undefined, undefined, wants[2] ? o.gatherElements(dy!, idx, axis) : undefined];
  },
  Conv: (n, [dy], wants) => convGrad(n, dy!, wants),
  ConvTranspose: (n, [dy], wants) => convTransposeGrad(n, dy!, wants),
};

/** The number of rows of x viewed as [rows, last dim]: a static count or a derived symbol. */
function flatRows(x: T): number | string {
  const lead = x.shape.slice(0, -1);
  const sym = lead.filter((d) => typeof d !== 'number');
  const size = lead.reduce<number>((p, d) => p * (typeof d === 'number' ? d : 1), 1);
  if (sym.length === 0) return size;
  return size === 1 ? sym.join('*') : `${sym.join('*')}*${size}`;
}

/** The number of indices, as a static count or a derived symbol such as 'N*77'. */
function idxFlat(idx: T): number | string {
  const sym = idx.shape.filter((d) => typeof d !== 'number');
  const size = idx.shape.reduce<number>((p, d) => p * (typeof d === 'number' ? d : 1), 1);
  if (sym.length === 0) return size;
  return size === 1 ? sym.join('*') : `${sym.join('*')}*${size}`;
}

function convAttrs(n: Node): { strides: number[]; pads: number[]; dilations: number[]; group: number } {
  return {
    strides: attrInts(n, 'strides'),
    pads: attrInts(n, 'pads'),
    dilations: attrInts(n, 'dilations'),
    group: attrI(n, 'group', 1),
  };
}

/** dW of a convolution as a convolution of x (batch and channels swapped) with dy as the kernel. */
function weightGrad(x: T, dy: T, kh: number, kw: number, a: ReturnType<typeof convAttrs>): T {
  const xt = o.transpose(x, [1, 0, 2, 3]); // [C, N, H, W]
  const dyt = o.transpose(dy, [1, 0, 2, 3]); // [M, N, OH, OW]
  let w = o.conv(xt, dyt, null, { strides: a.dilations, dilations: a.strides, pads: a.pads }); // [C, M, ≥kh, ≥kw]
  w = o.slice(o.slice(w, 2, 0, kh), 3, 0, kw);
  return o.transpose(w, [1, 0, 2, 3]);
}

function convGrad(n: Node, dy: T, wants: boolean[]): Grads {
  const [x, w, b] = [inp(n, 0), inp(n, 1), n.inputs[2]];
  const a = convAttrs(n);
  if (a.group !== 1) throw new Error('the Conv gradient supports group 1 only');
  const [, , kh, kw] = w.shape as number[];
  const [h, wd] = [x.shape[2] as number, x.shape[3] as number];
  const [oh, ow] = [dy.shape[2] as number, dy.shape[3] as number];
  // ConvTranspose maps dy back to x's size; output_padding restores rows lost to the stride's floor.
  const outPad = [
    h - (a.strides[0]! * (oh - 1) + (kh! - 1) * a.dilations[0]! + 1 - a.pads[0]! - a.pads[2]!),
    wd - (a.strides[1]! * (ow - 1) + (kw! - 1) * a.dilations[1]! + 1 - a.pads[1]! - a.pads[3]!),
  ];
  const dx = wants[0] ? o.convTranspose(dy, w, null, { ...a, outputPadding: outPad }) : undefined;
  const dw = wants[1] ? weightGrad(x, dy, kh!, kw!, a) : undefined;
  const db = b && wants[2] ? o.reduceSum(dy, [0, 2, 3]) : undefined;
  return [dx, dw, db];
}

function convTransposeGrad(n: Node, dy: T, wants: boolean[]): Grads {
  const [x, w, b] = [inp(n, 0), inp(n, 1), n.inputs[2]];
  const a = convAttrs(n);
  if (a.group !== 1) throw new Error('the ConvTranspose gradient supports group 1 only');
  const [, , kh, kw] = w.shape as number[];
  // y = convT(x, W)  ⇔  x-shaped gradient is conv(dy, W) with the same strides and pads.
  const dx = wants[0] ? o.conv(dy, w, null, a) : undefined;
  // dW[c, m] = Σ x[n, c] ⋆ dy[n, m]: the same trick as Conv's dW with the roles of x and dy swapped.
  const dw = wants[1] ? weightGrad(dy, x, kh!, kw!, a) : undefined;
  const db = b && wants[2] ? o.reduceSum(dy, [0, 2, 3]) : undefined;
  return [dx, dw, db];
}
