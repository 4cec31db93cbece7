// Seeded inputs for the benchmarks (the values do not matter for timing, only that they are finite
// and not all zeros, so no kernel takes a shortcut).
import { Rng } from '../src/nn/init.js';
import type { HostTensor } from '../src/runtime/session.js';

export function randn(n: number, seed: number | string, scale = 1): Float32Array {
  const r = new Rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = scale * r.normal();
  return out;
}

export function host(data: Float32Array, shape: readonly number[]): HostTensor {
  return { data, shape };
}

/** An uninitialised (zero) float32 buffer of `shape`, for ORT to write an output into. */
export function buffer(shape: readonly number[]): HostTensor {
  return { data: new Float32Array(shape.reduce((a, b) => a * b, 1)), shape };
}
