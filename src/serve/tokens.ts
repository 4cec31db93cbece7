// Token rows for the exported text towers, which have fixed lengths (towers.ts): texts are tokenized
// at the full context length, then cut to the shortest tower that holds every row's end token. The
// tower is causal and pools at the end token, so the cut positions (padding) cannot change a result.
import type { ClipTokenizer } from '../tokenizer/index.js';

/** `lengths` ascending; the last is the full context length. */
export function packTokens(tokenizer: Pick<ClipTokenizer, 'encode'>, texts: readonly string[], lengths: readonly number[]): BigInt64Array {
  const full = lengths[lengths.length - 1]!;
  const t = tokenizer.encode(texts, { contextLength: full, truncate: true });
  let need = 1;
  for (let r = 0; r < texts.length; r++) {
    // The end token has the largest id of its row (CLIP's pooling rule): its position + 1 is needed.
    let best = 0;
    for (let c = 1; c < full; c++) if (t.data[r * full + c]! > t.data[r * full + best]!) best = c;
    need = Math.max(need, best + 1);
  }
  const L = lengths.find((l) => l >= need) ?? full;
  const ids = new BigInt64Array(texts.length * L);
  for (let r = 0; r < texts.length; r++) for (let c = 0; c < L; c++) ids[r * L + c] = BigInt(t.data[r * full + c]!);
  return ids;
}
