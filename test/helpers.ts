// Shared test helpers: a seeded RNG and graph evaluation.
import type { DType, Graph, Tensor } from '../src/graph/graph.js';
import { compile } from '../src/runtime/compile.js';
import type { HostTensor } from '../src/runtime/session.js';

/** mulberry32: a small seeded PRNG so every test is reproducible. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randn(r: () => number, n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r()));
  return out;
}

export function typed(values: number[], dtype: DType): HostTensor['data'] {
  if (dtype === 'float64') return Float64Array.from(values);
  if (dtype === 'int64') return BigInt64Array.from(values.map((v) => BigInt(v)));
  if (dtype === 'int32') return Int32Array.from(values);
  if (dtype === 'bool') return Uint8Array.from(values);
  return Float32Array.from(values);
}

export async function evaluate(g: Graph, outputs: Tensor[], feeds: Record<string, HostTensor>): Promise<HostTensor[]> {
  const c = await compile(g, outputs, { cacheKey: false, threads: 1 });
  const res = await c.run(feeds);
  return c.outputNames.map((n) => res[n]!);
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}
