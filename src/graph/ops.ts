// The op set: one function per ONNX op (opset 17, plus a few com.microsoft contrib ops that every
// onnxruntime build ships). Each function checks dtypes and shapes and computes the output shape,
// so a mismatch is a GraphError naming the op and its inputs at build time.
import { type Attr, type ConstValue, type DType, type Dim, type Graph, type Shape, Tensor } from './graph.js';
import { broadcastShapes, fail, normAxis, sameShape, staticSize } from './shape.js';

export const MS = 'com.microsoft';
type T = Tensor;
type TN = Tensor | number;
const FLOATS: readonly DType[] = ['float32', 'float64'];

// ---------------------------------------------------------------- constants

export function constValue(data: number[] | ConstValue['data'], shape: readonly number[], dtype: DType = 'float32'): ConstValue {
  let arr: ConstValue['data'];
  if (!Array.isArray(data)) arr = data;
  else if (dtype === 'float32') arr = Float32Array.from(data);
  else if (dtype === 'float64') arr = Float64Array.from(data);
  else if (dtype === 'int64') arr = BigInt64Array.from(data.map((x) => BigInt(x)));
  else if (dtype === 'int32') arr = Int32Array.from(data);
  else arr = Uint8Array.from(data);
  const n = shape.reduce((a, b) => a * b, 1);
  if (arr.length !== n) throw new Error(`constant: ${arr.length} values for shape [${shape}]`);
  return { dtype, shape: [...shape], data: arr };
}

export function constant(g: Graph, data: number[] | ConstValue['data'], shape: readonly number[], dtype: DType = 'float32'): T {
  return g.constant(constValue(data, shape, dtype));
}

export function scalar(g: Graph, v: number, dtype: DType = 'float32'): T {
  return constant(g, [v], [], dtype);
}

export function ints(g: Graph, v: readonly number[]): T {
  return constant(g, [...v], [v.length], 'int64');
}

function lift(x: TN, like: T): T {
  return typeof x === 'number' ? scalar(like.graph, x, like.dtype) : x;
}

function graphOf(...xs: TN[]): Graph {
  for (const x of xs) if (typeof x !== 'number') return x.graph;
  throw new Error('an op needs at least one tensor input');
}

// ---------------------------------------------------------------- elementwise

function binary(op: string, a: TN, b: TN, outDtype?: DType): T {
  const g = graphOf(a, b);
  const ta = typeof a === 'number' ? lift(a, b as T) : a;
  const tb = typeof b === 'number' ? lift(b, ta) : b;
  if (ta.dtype !== tb.dtype) fail(op, [ta, tb], `dtypes differ (${ta.dtype} vs ${tb.dtype})`);
  const shape = broadcastShapes(op, [ta, tb]);
  return g.addNode(op, [ta, tb], [{ shape, dtype: outDtype ?? ta.dtype }])[0]!;
}

export const add = (a: TN, b: TN): T => binary('Add', a, b);
export const sub = (a: TN, b: TN): T => binary('Sub', a, b);
export const mul = (a: TN, b: TN): T => binary('Mul', a, b);
export const div = (a: TN, b: TN): T => binary('Div', a, b);
export const pow = (a: TN, b: TN): T => binary('Pow', a, b);
export const max = (a: TN, b: TN): T => binary('Max', a, b);
export const min = (a: TN, b: TN): T => binary('Min', a, b);
export const equal = (a: TN, b: TN): T => binary('Equal', a, b, 'bool');
export const less = (a: TN, b: TN): T => binary('Less', a, b, 'bool');
export const greater = (a: TN, b: TN): T => binary('Greater', a, b, 'bool');

function unary(op: string, x: T, attrs: Record<string, Attr> = {}, domain = '', floatOnly = true): T {
  if (floatOnly && !FLOATS.includes(x.dtype)) fail(op, [x], `needs a float input, got ${x.dtype}`);
  return x.graph.addNode(op, [x], [{ shape: x.shape, dtype: x.dtype }], attrs, domain)[0]!;
}

export const sqrt = (x: T): T => unary('Sqrt', x);
export const exp = (x: T): T => unary('Exp', x);
export const log = (x: T): T => unary('Log', x);
export const neg = (x: T): T => unary('Neg', x, {}, '', false);
export const abs = (x: T): T => unary('Abs', x, {}, '', false);
export const erf = (x: T): T => unary('Erf', x);
export const tanh = (x: T): T => unary('Tanh', x);
export const sigmoid = (x: T): T => unary('Sigmoid', x);
export const relu = (x: T): T => unary('Relu', x);
export const round = (x: T): T => unary('Round', x);
export const reciprocal = (x: T): T => unary('Reciprocal', x);
export const identity = (x: T): T => unary('Identity', x, {}, '', false);
/** Exact GELU, x·Φ(x) (com.microsoft Gelu: one fused kernel). */
export const gelu = (x: T): T => unary('Gelu', x, {}, MS);
/** GELU's tanh approximation (com.microsoft FastGelu). */
export const geluTanh = (x: T): T => unary('FastGelu', x, {}, MS);
/** OpenAI CLIP's QuickGELU, x·sigmoid(1.702x) (com.microsoft QuickGelu). */
export const quickGelu = (x: T, alpha = 1.702): T => unary('QuickGelu', x, { alpha: { f: alpha } }, MS);

export function where(cond: T, a: TN, b: TN): T {
  const ta = typeof a === 'number' ? lift(a, b as T) : a;
  const tb = typeof b === 'number' ? lift(b, ta) : b;
  if (cond.dtype !== 'bool') fail('Where', [cond, ta, tb], 'condition must be bool');
  if (ta.dtype !== tb.dtype) fail('Where', [cond, ta, tb], 'branch dtypes differ');
  const shape = broadcastShapes('Where', [cond, ta, tb]);
  return cond.graph.addNode('Where', [cond, ta, tb], [{ shape, dtype: ta.dtype }])[0]!;
}

export function cast(x: T, to: DType): T {
  if (x.dtype === to) return x;
  return x.graph.addNode('Cast', [x], [{ shape: x.shape, dtype: to }], { to: { i: onnxDType(to) } })[0]!;
}

export function onnxDType(d: DType): number {
  return { float32: 1, float64: 11, int64: 7, int32: 6, int8: 3, bool: 9 }[d];
}

// ---------------------------------------------------------------- normalisation and softmax

export function softmax(x: T, axis = -1): T {
  const a = normAxis('Softmax', [x], axis, x.rank);
  return x.graph.addNode('Softmax', [x], [{ shape: x.shape, dtype: x.dtype }], { axis: { i: a } })[0]!;
}

export function logSoftmax(x: T, axis = -1): T {
  const a = normAxis('LogSoftmax', [x], axis, x.rank);
  return x.graph.addNode('LogSoftmax', [x], [{ shape: x.shape, dtype: x.dtype }], { axis: { i: a } })[0]!;
}

/** LayerNormalization over the last axis; also returns the mean and 1/std that backward reuses. */
export function layerNormFull(x: T, gamma: T, beta: T, eps = 1e-5): { y: T; mean: T; invStd: T } {
  const d = x.shape[x.rank - 1];
  if (gamma.rank !== 1 || gamma.shape[0] !== d || beta.rank !== 1 || beta.shape[0] !== d) {
    fail('LayerNormalization', [x, gamma, beta], `scale and bias must have shape [${d}]`);
  }
  const stat = [...x.shape.slice(0, -1), 1];
  const [y, mean, invStd] = x.graph.addNode(
    'LayerNormalization',
    [x, gamma, beta],
    [
      { shape: x.shape, dtype: x.dtype },
      { shape: stat, dtype: x.dtype },
      { shape: stat, dtype: x.dtype },
    ],
    // stash_type: the precision of the saved statistics; keep it equal to the input's.
    { axis: { i: -1 }, epsilon: { f: eps }, stash_type: { i: onnxDType(x.dtype) } },
  );
  return { y: y!, mean: mean!, invStd: invStd! };
}

export const layerNorm = (x: T, gamma: T, beta: T, eps = 1e-5): T => layerNormFull(x, gamma, beta, eps).y;

// ---------------------------------------------------------------- reductions

function reduceShape(op: string, x: T, axes: readonly number[], keepdims: boolean): { axes: number[]; shape: Dim[] } {
  const ax = [...new Set(axes.map((a) => normAxis(op, [x], a, x.rank)))].sort((a, b) => a - b);
  const shape: Dim[] = [];
  x.shape.forEach((d, i) => {
    if (!ax.includes(i)) shape.push(d);
    else if (keepdims) shape.push(1);
  });
  return { axes: ax, shape };
}

/** ReduceSum over `axes` (all axes when omitted). Opset 13 takes the axes as an input. */
export function reduceSum(x: T, axes?: readonly number[], keepdims = false): T {
  const { axes: ax, shape } = reduceShape('ReduceSum', x, axes ?? x.shape.map((_, i) => i), keepdims);
  if (ax.length === 0) return x;
  return x.graph.addNode('ReduceSum', [x, ints(x.graph, ax)], [{ shape, dtype: x.dtype }], {
    keepdims: { i: keepdims ? 1 : 0 },
  })[0]!;
}

/** ReduceMean / ReduceMax: in opset 17 these still take `axes` as an attribute. */
function reduceAttr(op: string, x: T, axes: readonly number[] | undefined, keepdims: boolean): T {
  const { axes: ax, shape } = reduceShape(op, x, axes ?? x.shape.map((_, i) => i), keepdims);
  return x.graph.addNode(op, [x], [{ shape, dtype: x.dtype }], {
    axes: { ints: ax },
    keepdims: { i: keepdims ? 1 : 0 },
  })[0]!;
}
export const reduceMean = (x: T, axes?: readonly number[], keepdims = false): T => reduceAttr('ReduceMean', x, axes, keepdims);
export const reduceMax = (x: T, axes?: readonly number[], keepdims = false): T => reduceAttr('ReduceMax', x, axes, keepdims);

export function argMax(x: T, axis = -1, keepdims = false): T {
  const { axes, shape } = reduceShape('ArgMax', x, [axis], keepdims);
  return x.graph.addNode('ArgMax', [x], [{ shape, dtype: 'int64' }], {
    axis: { i: axes[0]! },
    keepdims: { i: keepdims ? 1 : 0 },
  })[0]!;
}

// ---------------------------------------------------------------- matrix products

/** Batched, broadcasting MatMul over the last two axes (inputs of rank ≥ 2). */
export function matmul(a: T, b: T): T {
  if (a.dtype !== b.dtype) fail('MatMul', [a, b], 'dtypes differ');
  if (a.rank < 2 || b.rank < 2) fail('MatMul', [a, b], 'inputs must have rank ≥ 2');
  const [m, k] = a.shape.slice(-2);
  const [k2, n] = b.shape.slice(-2);
  if (k !== k2) fail('MatMul', [a, b], `inner dimensions differ (${k} vs ${k2})`);
  const batchA = new Tensor(a.graph, -1, a.shape.slice(0, -2), a.dtype, undefined, a.name);
  const batchB = new Tensor(b.graph, -1, b.shape.slice(0, -2), b.dtype, undefined, b.name);
  const batch = broadcastShapes('MatMul', [batchA, batchB]);
  return a.graph.addNode('MatMul', [a, b], [{ shape: [...batch, m!, n!], dtype: a.dtype }])[0]!;
}

/**
 * alpha·op(A)·op(B) over the last two axes, batched and broadcasting like MatMul, where op(X) is X
 * or its transpose (of the last two axes). float32 runs as one com.microsoft.FusedMatMul: the
 * transposes are GEMM flags, never materialised (a standalone Transpose that swaps the innermost
 * axis is an element-by-element copy in ONNX Runtime, and its transpose optimizer can merge it into
 * a neighbouring head split, where it is slower still). Other dtypes get Transpose + MatMul (+ Mul).
 */
export function fusedMatMul(a: T, b: T, o: { transA?: boolean; transB?: boolean; alpha?: number } = {}): T {
  const alpha = o.alpha ?? 1;
  const swap = (t: T): T => transpose(t, [...t.shape.keys()].map((i) => (i < t.rank - 2 ? i : 2 * t.rank - 3 - i)));
  if (a.dtype !== 'float32' || b.dtype !== 'float32') {
    const y = matmul(o.transA ? swap(a) : a, o.transB ? swap(b) : b);
    return alpha === 1 ? y : mul(y, alpha);
  }
  if (a.rank < 2 || b.rank < 2) fail('FusedMatMul', [a, b], 'inputs must have rank ≥ 2');
  const [m, k] = o.transA ? a.shape.slice(-2).reverse() : a.shape.slice(-2);
  const [k2, n] = o.transB ? b.shape.slice(-2).reverse() : b.shape.slice(-2);
  if (k !== k2) fail('FusedMatMul', [a, b], `inner dimensions differ (${k} vs ${k2})`);
  const batchA = new Tensor(a.graph, -1, a.shape.slice(0, -2), a.dtype, undefined, a.name);
  const batchB = new Tensor(b.graph, -1, b.shape.slice(0, -2), b.dtype, undefined, b.name);
  const batch = broadcastShapes('FusedMatMul', [batchA, batchB]);
  return a.graph.addNode('FusedMatMul', [a, b], [{ shape: [...batch, m!, n!], dtype: a.dtype }], { alpha: { f: alpha }, transA: { i: o.transA ? 1 : 0 }, transB: { i: o.transB ? 1 : 0 } }, MS)[0]!;
}

/** Gemm: alpha·op(A)·op(B) + beta·C for 2-D A and B. */
export function gemm(a: T, b: T, c: T | null, o: { transA?: boolean; transB?: boolean; alpha?: number; beta?: number } = {}): T {
  const ins = c ? [a, b, c] : [a, b];
  if (a.rank !== 2 || b.rank !== 2) fail('Gemm', ins, 'A and B must be 2-D');
  const [m, k] = o.transA ? [a.shape[1]!, a.shape[0]!] : [a.shape[0]!, a.shape[1]!];
  const [k2, n] = o.transB ? [b.shape[1]!, b.shape[0]!] : [b.shape[0]!, b.shape[1]!];
  if (k !== k2) fail('Gemm', ins, `inner dimensions differ (${k} vs ${k2})`);
  if (c) {
    const probe = new Tensor(a.graph, -1, [m, n], a.dtype, undefined, 'AB');
    const s = broadcastShapes('Gemm', [probe, c]);
    if (!sameShape(s, [m, n])) fail('Gemm', ins, `C does not broadcast to [${m}, ${n}]`);
  }
  return a.graph.addNode('Gemm', ins, [{ shape: [m, n], dtype: a.dtype }], {
    transA: { i: o.transA ? 1 : 0 },
    transB: { i: o.transB ? 1 : 0 },
    alpha: { f: o.alpha ?? 1 },
    beta: { f: o.beta ?? 1 },
  })[0]!;
}

// ---------------------------------------------------------------- shape manipulation

export function transpose(x: T, perm?: readonly number[]): T {
  const p = perm ?? x.shape.map((_, i) => x.rank - 1 - i);
  if (p.length !== x.rank || [...p].sort((a, b) => a - b).some((v, i) => v !== i)) {
    fail('Transpose', [x], `perm [${p}] is not a permutation of rank ${x.rank}`);
  }
  return x.graph.addNode('Transpose', [x], [{ shape: p.map((i) => x.shape[i]!), dtype: x.dtype }], { perm: { ints: p } })[0]!;
}

/**
 * Reshape to `shape`. A symbolic dim in the target must also be in the input; it is sent to ONNX as
 * -1 (at most one symbolic dim per reshape), so one graph serves every batch size.
 */
export function reshape(x: T, shape: Shape): T {
  const inSym = x.shape.filter((d) => typeof d !== 'number');
  const outSym = shape.filter((d) => typeof d !== 'number');
  if (outSym.length > 1) fail('Reshape', [x], `at most one symbolic dim in the target [${shape}]`);
  if (sameShape(x.shape, shape)) return x;
  if (inSym.length === 0) {
    if (outSym.length) fail('Reshape', [x], `target [${shape}] has a symbolic dim the input lacks`);
    if (staticSize(x.shape) !== staticSize(shape)) fail('Reshape', [x], `cannot reshape to [${shape}] (sizes differ)`);
  } else if (outSym.length === 0) {
    fail('Reshape', [x], `target [${shape}] drops the symbolic dims [${inSym}]`);
  } else if (inSym.length === 1 && outSym[0] === inSym[0]) {
    // The same symbol on both sides: the static parts must match exactly.
    const s1 = staticSize(x.shape.filter((d) => typeof d === 'number'));
    const s2 = staticSize(shape.filter((d) => typeof d === 'number'));
    if (s1 !== s2) fail('Reshape', [x], `cannot reshape to [${shape}] (static sizes differ)`);
  }
  // Otherwise the target names a derived symbol (e.g. 'N*77'); its size is checked by ORT at run time.
  const spec = shape.map((d) => (typeof d === 'number' ? d : -1));
  return x.graph.addNode('Reshape', [x, ints(x.graph, spec)], [{ shape, dtype: x.dtype }])[0]!;
}

/**
 * Expand (broadcast) to `shape`. A symbolic target dim that the input does not already carry at that
 * position needs `like`, a tensor of the target shape whose run-time shape is used.
 */
export function expand(x: T, shape: Shape, like?: T): T {
  const probe = new Tensor(x.graph, -1, shape, x.dtype, undefined, 'target');
  const out = broadcastShapes('Expand', [x, probe]);
  if (!sameShape(out, shape)) fail('Expand', [x], `cannot expand to [${shape}]`);
  if (sameShape(x.shape, shape)) return x;
  const off = shape.length - x.rank;
  const needsRuntime = shape.some((d, i) => typeof d !== 'number' && x.shape[i - off] !== d);
  let spec: T;
  if (needsRuntime) {
    // Each symbolic target dim is read at run time from the same symbol's position in `like`.
    if (!like) fail('Expand', [x], `expanding to symbolic [${shape}] needs a tensor that carries those dims`);
    const g = x.graph;
    const likeShape = g.addNode('Shape', [like], [{ shape: [like.rank], dtype: 'int64' }])[0]!;
    const parts = shape.map((d) => {
      if (typeof d === 'number') return ints(g, [d]);
      const j = like.shape.indexOf(d);
      if (j < 0) fail('Expand', [x, like], `the symbolic dim '${d}' is not in the reference tensor`);
      return gather(likeShape, ints(g, [j]), 0);
    });
    spec = concat(parts, 0);
  } else {
    spec = ints(x.graph, shape.map((d) => (typeof d === 'number' ? d : 1)));
  }
  return x.graph.addNode('Expand', [x, spec], [{ shape, dtype: x.dtype }])[0]!;
}

export function concat(xs: readonly T[], axis: number): T {
  const first = xs[0];
  if (!first) throw new Error('Concat: no inputs');
  const a = normAxis('Concat', xs, axis, first.rank);
  let total: Dim = 0;
  for (const x of xs) {
    if (x.rank !== first.rank || x.dtype !== first.dtype) fail('Concat', xs, 'ranks or dtypes differ');
    x.shape.forEach((d, i) => {
      if (i !== a && d !== first.shape[i]) fail('Concat', xs, `dim ${i} differs`);
    });
    const d = x.shape[a]!;
    if (typeof d !== 'number' || typeof total !== 'number') fail('Concat', xs, 'the concat axis must be static');
    total += d;
  }
  if (xs.length === 1) return first;
  const shape = first.shape.map((d, i) => (i === a ? total : d));
  return first.graph.addNode('Concat', [...xs], [{ shape, dtype: first.dtype }], { axis: { i: a } })[0]!;
}

/** Slice along one axis: [start, end) with a positive step (negative bounds count from the end). */
export function slice(x: T, axis: number, start: number, end: number, step = 1): T {
  const a = normAxis('Slice', [x], axis, x.rank);
  const n = x.shape[a]!;
  if (typeof n !== 'number') fail('Slice', [x], 'cannot slice a symbolic axis');
  if (!Number.isInteger(step) || step < 1) fail('Slice', [x], `step must be a positive integer, got ${step}`);
  const clamp = (v: number): number => Math.min(Math.max(v < 0 ? v + n : v, 0), n);
  const s = clamp(start);
  const e = clamp(end);
  const len = Math.max(0, Math.ceil((e - s) / step));
  if (len === n) return x;
  const shape = x.shape.map((d, i) => (i === a ? len : d));
  const g = x.graph;
  return g.addNode('Slice', [x, ints(g, [s]), ints(g, [e]), ints(g, [a]), ints(g, [step])], [{ shape, dtype: x.dtype }])[0]!;
}

export function split(x: T, axis: number, sizes: readonly number[]): T[] {
  const a = normAxis('Split', [x], axis, x.rank);
  const total = sizes.reduce((p, c) => p + c, 0);
  if (x.shape[a] !== total) fail('Split', [x], `sizes [${sizes}] do not add up to dim ${a} (${x.shape[a]})`);
  return x.graph.addNode(
    'Split',
    [x, ints(x.graph, sizes)],
    sizes.map((s) => ({ shape: x.shape.map((d, i) => (i === a ? s : d)), dtype: x.dtype })),
    { axis: { i: a } },
  );
}

export function squeeze(x: T, axes: readonly number[]): T {
  const ax = axes.map((v) => normAxis('Squeeze', [x], v, x.rank));
  for (const v of ax) if (x.shape[v] !== 1) fail('Squeeze', [x], `dim ${v} is not 1`);
  const shape = x.shape.filter((_, i) => !ax.includes(i));
  return x.graph.addNode('Squeeze', [x, ints(x.graph, ax)], [{ shape, dtype: x.dtype }])[0]!;
}

export function unsqueeze(x: T, axes: readonly number[]): T {
  const rank = x.rank + axes.length;
  const ax = axes.map((v) => normAxis('Unsqueeze', [x], v, rank)).sort((p, q) => p - q);
  const shape: Dim[] = [];
  let k = 0;
  for (let i = 0; i < rank; i++) shape.push(ax.includes(i) ? 1 : x.shape[k++]!);
  return x.graph.addNode('Unsqueeze', [x, ints(x.graph, ax)], [{ shape, dtype: x.dtype }])[0]!;
}

// ---------------------------------------------------------------- indexing

/** Gather rows along `axis` (embedding lookup: gather(table, ids, 0)). */
export function gather(x: T, indices: T, axis = 0): T {
  if (indices.dtype !== 'int64' && indices.dtype !== 'int32') fail('Gather', [x, indices], 'indices must be int64 or int32');
  const a = normAxis('Gather', [x, indices], axis, x.rank);
  const shape = [...x.shape.slice(0, a), ...indices.shape, ...x.shape.slice(a + 1)];
  return x.graph.addNode('Gather', [x, indices], [{ shape, dtype: x.dtype }], { axis: { i: a } })[0]!;
}

export function gatherElements(x: T, indices: T, axis: number): T {
  const a = normAxis('GatherElements', [x, indices], axis, x.rank);
  if (indices.rank !== x.rank) fail('GatherElements', [x, indices], 'indices must have the same rank as data');
  if (indices.dtype !== 'int64') fail('GatherElements', [x, indices], 'indices must be int64');
  return x.graph.addNode('GatherElements', [x, indices], [{ shape: indices.shape, dtype: x.dtype }], { axis: { i: a } })[0]!;
}

export function scatterElements(x: T, indices: T, updates: T, axis: number, reduction: 'none' | 'add' = 'none'): T {
  const ins = [x, indices, updates];
  const a = normAxis('ScatterElements', ins, axis, x.rank);
  if (!sameShape(indices.shape, updates.shape)) fail('ScatterElements', ins, 'indices and updates shapes differ');
  if (indices.rank !== x.rank) fail('ScatterElements', ins, 'indices must have the same rank as data');
  if (updates.dtype !== x.dtype) fail('ScatterElements', ins, 'updates dtype differs from data');
  return x.graph.addNode('ScatterElements', ins, [{ shape: x.shape, dtype: x.dtype }], {
    axis: { i: a },
    reduction: { s: reduction },
  })[0]!;
}

/** Trilu: keep the lower (upper=false) or upper triangle of the last two axes, offset by k. */
export function trilu(x: T, upper: boolean, k = 0): T {
  if (x.rank < 2) fail('Trilu', [x], 'needs rank ≥ 2');
  return x.graph.addNode('Trilu', [x, constant(x.graph, [k], [], 'int64')], [{ shape: x.shape, dtype: x.dtype }], {
    upper: { i: upper ? 1 : 0 },
  })[0]!;
}

// ---------------------------------------------------------------- convolution

export interface ConvOpts {
  strides?: readonly number[];
  pads?: readonly number[]; // [top, left, bottom, right] for 2-D
  dilations?: readonly number[];
  group?: number;
  outputPadding?: readonly number[]; // ConvTranspose only
}

/** 2-D convolution, NCHW input, weight [out, in/group, kh, kw]. */
export function conv(x: T, w: T, b: T | null, o: ConvOpts = {}): T {
  const ins = b ? [x, w, b] : [x, w];
  if (x.rank !== 4 || w.rank !== 4) fail('Conv', ins, 'expects NCHW input and a 4-D weight');
  const { strides = [1, 1], pads = [0, 0, 0, 0], dilations = [1, 1], group = 1 } = o;
  const [n, c, h, wd] = x.shape;
  const [m, cg, kh, kw] = w.shape as number[];
  if (typeof c !== 'number' || c !== cg! * group) fail('Conv', ins, `input channels ${c} ≠ weight channels ${cg} × group ${group}`);
  if (b && (b.rank !== 1 || b.shape[0] !== m)) fail('Conv', ins, `bias must have shape [${m}]`);
  if (typeof h !== 'number' || typeof wd !== 'number') fail('Conv', ins, 'spatial dims must be static');
  const oh = Math.floor((h + pads[0]! + pads[2]! - dilations[0]! * (kh! - 1) - 1) / strides[0]!) + 1;
  const ow = Math.floor((wd + pads[1]! + pads[3]! - dilations[1]! * (kw! - 1) - 1) / strides[1]!) + 1;
  if (oh < 1 || ow < 1) fail('Conv', ins, `output would be empty (${oh}×${ow})`);
  return x.graph.addNode('Conv', ins, [{ shape: [n!, m!, oh, ow], dtype: x.dtype }], {
    strides: { ints: strides },
    pads: { ints: pads },
    dilations: { ints: dilations },
    group: { i: group },
    kernel_shape: { ints: [kh!, kw!] },
  })[0]!;
}

/** 2-D transposed convolution, weight [in, out/group, kh, kw]. */
export function convTranspose(x: T, w: T, b: T | null, o: ConvOpts = {}): T {
  const ins = b ? [x, w, b] : [x, w];
  if (x.rank !== 4 || w.rank !== 4) fail('ConvTranspose', ins, 'expects NCHW input and a 4-D weight');
  const { strides = [1, 1], pads = [0, 0, 0, 0], dilations = [1, 1], group = 1, outputPadding = [0, 0] } = o;
  const [n, c, h, wd] = x.shape;
  const [ci, mg, kh, kw] = w.shape as number[];
  if (c !== ci) fail('ConvTranspose', ins, `input channels ${c} ≠ weight dim 0 (${ci})`);
  if (b && (b.rank !== 1 || b.shape[0] !== mg! * group)) fail('ConvTranspose', ins, `bias must have shape [${mg! * group}]`);
  if (typeof h !== 'number' || typeof wd !== 'number') fail('ConvTranspose', ins, 'spatial dims must be static');
  const oh = strides[0]! * (h - 1) + outputPadding[0]! + (kh! - 1) * dilations[0]! + 1 - pads[0]! - pads[2]!;
  const ow = strides[1]! * (wd - 1) + outputPadding[1]! + (kw! - 1) * dilations[1]! + 1 - pads[1]! - pads[3]!;
  return x.graph.addNode('ConvTranspose', ins, [{ shape: [n!, mg! * group, oh, ow], dtype: x.dtype }], {
    strides: { ints: strides },
    pads: { ints: pads },
    dilations: { ints: dilations },
    group: { i: group },
    kernel_shape: { ints: [kh!, kw!] },
    output_padding: { ints: outputPadding },
  })[0]!;
}

// ---------------------------------------------------------------- helpers built from the ops above

export function square(x: T): T {
  return mul(x, x);
}

export function shapeOf(x: T): Shape {
  return x.shape;
}

export const sign = (x: T): T => unary('Sign', x, {}, '', false);

/** Pad with a constant along each axis: pads = [begin_0, …, begin_{r-1}, end_0, …, end_{r-1}]. */
export function pad(x: T, pads: readonly number[], value = 0): T {
  if (pads.length !== 2 * x.rank) fail('Pad', [x], `needs ${2 * x.rank} pad values, got ${pads.length}`);
  const shape = x.shape.map((d, i) => {
    if (pads[i] === 0 && pads[i + x.rank] === 0) return d;
    if (typeof d !== 'number') fail('Pad', [x], `cannot pad symbolic dim ${i}`);
    return d + pads[i]! + pads[i + x.rank]!;
  });
  const g = x.graph;
  return g.addNode('Pad', [x, ints(g, pads), scalar(g, value, x.dtype)], [{ shape, dtype: x.dtype }], { mode: { s: 'constant' } })[0]!;
}

/** A tensor filled with `value`, shaped like `like` (works with symbolic dims: Shape + ConstantOfShape). */
export function fillLike(like: T, value: number, dtype: DType = like.dtype): T {
  const g = like.graph;
  const s = g.addNode('Shape', [like], [{ shape: [like.rank], dtype: 'int64' }])[0]!;
  const cv = constValue([value], [1], dtype);
  return g.addNode('ConstantOfShape', [s], [{ shape: like.shape, dtype }], { value: { t: cv } })[0]!;
}

/** The number of elements along `axes`, as a scalar of `dtype`, computed at run time (works with symbolic dims). */
export function sizeAlong(x: T, axes: readonly number[], dtype: DType = x.dtype): T {
  const g = x.graph;
  const static_ = axes.every((a) => typeof x.shape[a] === 'number');
  if (static_) return scalar(g, axes.reduce((p, a) => p * (x.shape[a] as number), 1), dtype);
  const s = g.addNode('Shape', [x], [{ shape: [x.rank], dtype: 'int64' }])[0]!;
  const dims = gather(s, ints(g, axes), 0);
  const prod = g.addNode('ReduceProd', [dims], [{ shape: [], dtype: 'int64' }], { keepdims: { i: 0 } })[0]!;
  return cast(prod, dtype);
}

/**
 * com.microsoft.Attention: fused multi-head self-attention for inference (QKV projection, scaled
 * dot product, softmax, weighted sum) with weights [D, 3D] and bias [3D]; `causal` masks the future
 * (unidirectional). It has no gradient rule: training graphs use the unfused ops.
 */
export function fusedAttention(x: T, w: T, b: T, heads: number, causal: boolean): T {
  const d = x.shape[2] as number;
  if (x.rank !== 3 || w.rank !== 2 || w.shape[0] !== d || w.shape[1] !== 3 * d || b.shape[0] !== 3 * d) {
    fail('Attention', [x, w, b], `expects x [N, T, D], weights [D, 3D], bias [3D]`);
  }
  return x.graph.addNode('Attention', [x, w, b], [{ shape: x.shape, dtype: x.dtype }], { num_heads: { i: heads }, unidirectional: { i: causal ? 1 : 0 } }, MS)[0]!;
}

/**
 * com.microsoft.DynamicQuantizeMatMul: x (float, any leading axes) quantized to uint8 per tensor at
 * run time, times int8 weights wq [K, N] with per-column scales [N] (symmetric: zero point 0), plus
 * an optional bias [N]; float output. Inference only (no gradient rule).
 */
export function dynamicQuantizeMatMul(x: T, wq: T, scale: T, bias: T | null): T {
  const k = x.shape[x.rank - 1];
  const [kw, n] = wq.shape as [number, number];
  if (wq.rank !== 2 || wq.dtype !== 'int8' || k !== kw || scale.rank !== 1 || scale.shape[0] !== n || (bias && (bias.rank !== 1 || bias.shape[0] !== n))) {
    fail('DynamicQuantizeMatMul', bias ? [x, wq, scale, bias] : [x, wq, scale], 'expects x [..., K], int8 weights [K, N], scales [N] and bias [N]');
  }
  const zp = constant(x.graph, new Int8Array(n), [n], 'int8');
  const ins = bias ? [x, wq, scale, zp, bias] : [x, wq, scale, zp];
  return x.graph.addNode('DynamicQuantizeMatMul', ins, [{ shape: [...x.shape.slice(0, -1), n], dtype: 'float32' }], {}, MS)[0]!;
}
