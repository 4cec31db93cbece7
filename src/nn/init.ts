// Seeded, reproducible parameter initialisation. Each parameter draws from its own stream, seeded by
// (global seed, parameter name), so adding a layer never changes the values of the others.
import type { Graph, Initializer } from '../graph/graph.js';

/** sfc32: a fast 32-bit PRNG with a 128-bit state; good enough for initialisation and shuffling. */
export class Rng {
  private s: Uint32Array;
  constructor(seed: number | string) {
    const h = typeof seed === 'string' ? hash32(seed) : [seed >>> 0, 0x9e3779b9, 0x243f6a88, 0xb7e15162];
    this.s = Uint32Array.from(Array.isArray(h) ? h : [h, h ^ 0xdeadbeef, h * 2654435761, 1]);
    for (let i = 0; i < 15; i++) this.nextU32();
  }
  static fromState(state: readonly number[]): Rng {
    const r = new Rng(0);
    r.s = Uint32Array.from(state);
    return r;
  }
  get state(): number[] {
    return [...this.s];
  }
  nextU32(): number {
    const s = this.s;
    const t = (((s[0]! + s[1]!) >>> 0) + s[3]!) >>> 0;
    s[3] = (s[3]! + 1) >>> 0;
    s[0] = s[1]! ^ (s[1]! >>> 9);
    s[1] = (s[2]! + (s[2]! << 3)) >>> 0;
    s[2] = ((s[2]! << 21) | (s[2]! >>> 11)) >>> 0;
    s[2] = (s[2]! + t) >>> 0;
    return t;
  }
  /** Uniform in [0, 1). */
  next(): number {
    return this.nextU32() / 4294967296;
  }
  /** Standard normal (Box–Muller). */
  normal(): number {
    const u = 1 - this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  shuffle<T>(xs: T[]): T[] {
    for (let i = xs.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [xs[i], xs[j]] = [xs[j]!, xs[i]!];
    }
    return xs;
  }
}

function hash32(s: string): number[] {
  // cyrb128: four 32-bit words from a string.
  let h1 = 1779033703,
    h2 = 3144134277,
    h3 = 1013904242,
    h4 = 2773480762;
  for (let i = 0; i < s.length; i++) {
    const k = s.charCodeAt(i);
    h1 = h2 ^ Math.imul(h1 ^ k, 597399067);
    h2 = h3 ^ Math.imul(h2 ^ k, 2869860233);
    h3 = h4 ^ Math.imul(h3 ^ k, 951274213);
    h4 = h1 ^ Math.imul(h4 ^ k, 2716044179);
  }
  h1 = Math.imul(h3 ^ (h1 >>> 18), 597399067);
  h2 = Math.imul(h4 ^ (h2 >>> 22), 2869860233);
  h3 = Math.imul(h1 ^ (h3 >>> 17), 951274213);
  h4 = Math.imul(h2 ^ (h4 >>> 19), 2716044179);
  return [(h1 ^ h2 ^ h3 ^ h4) >>> 0, (h2 ^ h1) >>> 0, (h3 ^ h1) >>> 0, (h4 ^ h1) >>> 0];
}

export function initValues(init: Initializer, size: number, rng: Rng): Float32Array {
  const out = new Float32Array(size);
  switch (init.kind) {
    case 'zeros':
      return out;
    case 'ones':
      return out.fill(1);
    case 'const':
      return out.fill(init.value);
    case 'data':
      if (init.data.length !== size) throw new Error(`init data has ${init.data.length} values, expected ${size}`);
      return Float32Array.from(init.data);
    case 'normal':
      for (let i = 0; i < size; i++) out[i] = (init.mean ?? 0) + init.std * rng.normal();
      return out;
    case 'truncnormal': {
      // timm's trunc_normal_: normal(mean, std) redrawn outside [a, b] (absolute bounds, default ±2σ).
      const mean = init.mean ?? 0;
      const [a, b] = [init.a ?? mean - 2 * init.std, init.b ?? mean + 2 * init.std];
      for (let i = 0; i < size; i++) {
        let v: number;
        do v = mean + init.std * rng.normal();
        while (v < a || v > b);
        out[i] = v;
      }
      return out;
    }
    case 'uniform':
      for (let i = 0; i < size; i++) out[i] = init.low + (init.high - init.low) * rng.next();
      return out;
    case 'xavier_uniform':
    case 'xavier_normal':
    case 'kaiming_uniform':
    case 'kaiming_normal': {
      const gain = init.gain ?? (init.kind.startsWith('kaiming') ? Math.SQRT2 : 1);
      const std = init.kind.startsWith('xavier') ? gain * Math.sqrt(2 / (init.fanIn + init.fanOut)) : gain / Math.sqrt(init.fanIn);
      const uniform = init.kind.endsWith('uniform');
      const bound = Math.sqrt(3) * std;
      for (let i = 0; i < size; i++) out[i] = uniform ? (2 * rng.next() - 1) * bound : std * rng.normal();
      return out;
    }
  }
}

/** Parameter values by name: the weights of a model, separate from its graph. */
export type ParamValues = Map<string, Float32Array>;

/** Draws every parameter of the graph that `values` lacks, from its own seeded stream. */
export function initParams(g: Graph, seed = 0, values: ParamValues = new Map()): ParamValues {
  for (const p of g.params.values()) {
    if (values.has(p.name)) continue;
    const size = p.shape.reduce((a, b) => a * b, 1);
    values.set(p.name, initValues(p.init, size, new Rng(`${seed}:${p.name}`)));
  }
  return values;
}
