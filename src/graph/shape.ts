// Shape inference shared by the ops: broadcasting, axis normalisation, and the error messages that
// name the op, its inputs and their shapes (so a mismatch fails at build time, not inside ORT).
import { type Dim, type Shape, type Tensor, GraphError, fmtShape } from './graph.js';

export function fail(op: string, inputs: readonly (Tensor | null)[], why: string): never {
  const list = inputs.map((t) => (t ? `${t.name}: ${t.dtype}${fmtShape(t.shape)}` : '(none)')).join(', ');
  throw new GraphError(`${op}: ${why} (inputs ${list})`);
}

/** Numpy-style broadcasting; a symbolic dim matches itself or 1. */
export function broadcastShapes(op: string, inputs: readonly Tensor[]): Dim[] {
  const rank = Math.max(...inputs.map((t) => t.rank));
  const out: Dim[] = [];
  for (let i = 0; i < rank; i++) {
    let d: Dim = 1;
    for (const t of inputs) {
      const k = i - (rank - t.rank);
      if (k < 0) continue;
      const e = t.shape[k]!;
      if (e === 1) continue;
      if (d === 1) d = e;
      else if (d !== e) fail(op, inputs, `shapes cannot be broadcast at dim ${i} (${d} vs ${e})`);
    }
    out.push(d);
  }
  return out;
}

export function normAxis(op: string, inputs: readonly Tensor[], axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(a) || a < 0 || a >= rank) fail(op, inputs, `axis ${axis} is out of range for rank ${rank}`);
  return a;
}

export function sameShape(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Product of the dims, or undefined when one is symbolic. */
export function staticSize(shape: Shape): number | undefined {
  let n = 1;
  for (const d of shape) {
    if (typeof d !== 'number') return undefined;
    n *= d;
  }
  return n;
}
