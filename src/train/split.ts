// Deterministic hold-out splits of an indexed source.
import type { IndexedSource } from '../data/datasets.js';

/** Per class, the last `fraction` of its samples in file order are held out (no randomness). */
export function holdOut(src: IndexedSource, fraction: number): { train: IndexedSource; held: IndexedSource } {
  if (!(fraction > 0 && fraction < 1)) throw new Error(`hold-out fraction must be in (0, 1), got ${fraction}`);
  const byLabel = new Map<number, number[]>();
  const ctx = { epoch: 0, seed: 0, shuffle: false };
  for (let i = 0; i < src.size; i++) {
    const l = src.get(i, ctx).label ?? 0;
    (byLabel.get(l) ?? byLabel.set(l, []).get(l)!).push(i);
  }
  const train: number[] = [];
  const held: number[] = [];
  for (const idx of byLabel.values()) {
    const k = Math.round(idx.length * fraction);
    train.push(...idx.slice(0, idx.length - k));
    held.push(...idx.slice(idx.length - k));
  }
  const sub = (ids: number[]): IndexedSource => ({ kind: 'indexed', size: ids.length, classes: src.classes, get: (i, c) => src.get(ids[i]!, c) });
  return { train: sub(train), held: sub(held) };
}
