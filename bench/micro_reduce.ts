// Micro-benchmark: ways to sum [M, C] over its rows (bias gradients) in ONNX Runtime.
import { Graph } from '../src/graph/graph.js';
import * as o from '../src/graph/ops.js';
import { compile } from '../src/runtime/compile.js';

async function time(name: string, build: (g: Graph, x: ReturnType<Graph['input']>) => ReturnType<Graph['input']>, shape: number[]): Promise<void> {
  const g = new Graph('m');
  const x = g.input('x', shape);
  const y = build(g, x);
  const c = await compile(g, { y }, { cacheKey: false });
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1)).map(() => Math.random());
  for (let i = 0; i < 5; i++) await c.run({ x: { data, shape } });
  const ts: number[] = [];
  for (let i = 0; i < 40; i++) {
    const t = performance.now();
    await c.run({ x: { data, shape } });
    ts.push(performance.now() - t);
  }
  ts.sort((a, b) => a - b);
  console.log(`${name.padEnd(40)} [${shape}] median ${ts[20]!.toFixed(3)} ms`);
}

for (const C of [128, 384]) {
  const shape = [128, 64, C];
  const M = 128 * 64;
  await time('ReduceSum axes [0,1]', (g, x) => o.reduceSum(x, [0, 1]), shape);
  await time('ReduceSum 2-D axis 0', (g, x) => o.reduceSum(o.reshape(x, [M, C]), [0]), shape);
  await time('MatMul ones[1,M] @ x', (g, x) => o.matmul(o.constant(g, new Float32Array(M).fill(1), [1, M]), o.reshape(x, [M, C])), shape);
  await time('ReduceSum [128, 64*C] axis 0 then [64,C] axis 0', (g, x) => o.reduceSum(o.reshape(o.reduceSum(o.reshape(x, [128, 64 * C]), [0]), [64, C]), [0]), shape);
  await time('Identity copy (memory floor)', (g, x) => o.add(x, 0), shape);
}
