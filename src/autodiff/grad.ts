// Reverse-mode autodiff over the graph. The backward pass is appended to the same graph as ordinary
// ONNX ops, built by the rules in rules.ts (one per op), so forward and backward run as one ONNX
// Runtime session and share activations.
import { type Node, type Tensor, GraphError, fmtShape } from '../graph/graph.js';
import { add, fillLike } from '../graph/ops.js';
import { sameShape } from '../graph/shape.js';
import { RULES } from './rules.js';

const DIFFERENTIABLE = new Set(['float32', 'float64']);

/**
 * Gradients of the scalar `loss` with respect to each tensor in `wrt` (a parameter, an input or an
 * intermediate). `seed` is dLoss (default: ones). A tensor that does not influence the loss gets
 * zeros. Every gradient has exactly its tensor's shape, or a GraphError names the op that broke it.
 */
export function gradients(loss: Tensor, wrt: readonly Tensor[], seed?: Tensor): Tensor[] {
  const g = loss.graph;
  if (!seed && loss.shape.length !== 0 && !loss.shape.every((d) => d === 1)) {
    throw new GraphError(`gradients: the loss must be a scalar, got shape ${fmtShape(loss.shape)} (or pass a seed)`);
  }
  // Nodes between wrt and loss: reachable forward from wrt, and backward from the loss.
  const dependsOnWrt = new Set<Tensor>(wrt);
  const onPath: Node[] = [];
  for (const n of g.nodes) {
    if (n.inputs.some((x) => x && dependsOnWrt.has(x))) for (const y of n.outputs) dependsOnWrt.add(y);
  }
  const needed = new Set<Tensor>([loss]);
  for (let i = g.nodes.length - 1; i >= 0; i--) {
    const n = g.nodes[i]!;
    if (!n.outputs.some((y) => needed.has(y))) continue;
    if (!n.outputs.some((y) => dependsOnWrt.has(y))) continue;
    onPath.push(n);
    for (const x of n.inputs) if (x && dependsOnWrt.has(x)) needed.add(x);
  }

  const grads = new Map<Tensor, Tensor>();
  grads.set(loss, seed ?? fillLike(loss, 1));
  const accumulate = (x: Tensor, dx: Tensor): void => {
    const prev = grads.get(x);
    grads.set(x, prev ? add(prev, dx) : dx);
  };

  for (const n of onPath) {
    // onPath is in reverse topological order already.
    const dys = n.outputs.map((y) => grads.get(y));
    if (dys.every((d) => !d)) continue;
    const wants = n.inputs.map((x) => !!x && needed.has(x) && DIFFERENTIABLE.has(x.dtype));
    if (!wants.some(Boolean)) continue;
    const rule = RULES[n.op];
    if (!rule) throw new GraphError(`no gradient rule for op '${n.op}' (node ${n.op}_${n.id}); add one to autodiff/rules.ts`);
    const dxs = rule(n, dys, wants);
    n.inputs.forEach((x, i) => {
      const dx = dxs[i];
      if (!x || !wants[i] || !dx) return;
      if (!sameShape(dx.shape, x.shape) || dx.dtype !== x.dtype) {
        throw new GraphError(
          `gradient rule for ${n.op} gave ${dx.dtype}${fmtShape(dx.shape)} for input ${i} (${x.name}), expected ${x.dtype}${fmtShape(x.shape)}`,
        );
      }
      accumulate(x, dx);
    });
  }
  return wrt.map((x) => grads.get(x) ?? fillLike(x, 0));
}
