// Row-wise cosine similarity of two [N, d] feature sets: how close two encoders' features are when
// they are not meant to be bit-equal (int8 vs fp32 towers).

export function rowCosines(a: Float32Array, b: Float32Array, d: number): number[] {
  if (a.length !== b.length || a.length % d !== 0) throw new Error(`rowCosines: [${a.length / d}, ${d}] vs ${b.length} values`);
  const out: number[] = [];
  for (let r = 0; r < a.length / d; r++) {
    let ab = 0;
    let aa = 0;
    let bb = 0;
    for (let j = r * d; j < (r + 1) * d; j++) {
      ab += a[j]! * b[j]!;
      aa += a[j]! * a[j]!;
      bb += b[j]! * b[j]!;
    }
    out.push(ab / Math.sqrt(aa * bb));
  }
  return out;
}
