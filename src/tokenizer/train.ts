// trainBpe: learn a small CLIP-style vocabulary from captions.
//
// Same cleanup, pre-tokeniser, byte symbols and "</w>" word ends as CLIP, so
// the result is a ClipTokenizer like OpenAI's, only smaller:
//   ids 0-511 byte symbols, 512.. merges, then <|startoftext|>, <|endoftext|>.
//
// Classic BPE training: count each distinct word once (with its frequency),
// count adjacent symbol pairs, and repeatedly merge the most frequent pair.
// Only words containing the merged pair are revisited, found through an index
// pair -> words; a max-heap with lazy deletion yields the most frequent pair.
// Ties go to the pair whose symbols were created first (lower internal ids),
// then to the lower right symbol, so training is fully deterministic.

import { BYTE_ALPHABET, toByteChars } from './bytes.js';
import { ClipTokenizer, EOT_TEXT, SOT_TEXT, type Merge } from './bpe.js';
import { cleanText, preTokenize } from './clean.js';

export interface TrainOptions {
  /** Total vocabulary size, including the 512 byte symbols and 2 special tokens. */
  vocabSize: number;
}

const BASE_SYMBOLS = 512;
const SPECIAL_TOKENS = 2;
const MAX_VOCAB = 1 << 20;
const PAIR_SHIFT = 2 ** 21; // symbol ids stay below this (vocab is capped lower)

const pairKey = (a: number, b: number): number => a * PAIR_SHIFT + b;

/** Max-heap of [count, key] ordered by count, then smaller key. */
class PairHeap {
  private counts: number[] = [];
  private keys: number[] = [];

  get size(): number {
    return this.counts.length;
  }

  private above(i: number, j: number): boolean {
    const ci = this.counts[i]!;
    const cj = this.counts[j]!;
    return ci > cj || (ci === cj && this.keys[i]! < this.keys[j]!);
  }

  private swap(i: number, j: number): void {
    [this.counts[i], this.counts[j]] = [this.counts[j]!, this.counts[i]!];
    [this.keys[i], this.keys[j]] = [this.keys[j]!, this.keys[i]!];
  }

  push(count: number, key: number): void {
    this.counts.push(count);
    this.keys.push(key);
    for (let i = this.counts.length - 1; i > 0; ) {
      const parent = (i - 1) >> 1;
      if (!this.above(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  pop(): [number, number] {
    const top: [number, number] = [this.counts[0]!, this.keys[0]!];
    const lastCount = this.counts.pop()!;
    const lastKey = this.keys.pop()!;
    if (this.counts.length > 0) {
      this.counts[0] = lastCount;
      this.keys[0] = lastKey;
      for (let i = 0; ; ) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < this.counts.length && this.above(l, best)) best = l;
        if (r < this.counts.length && this.above(r, best)) best = r;
        if (best === i) break;
        this.swap(i, best);
        i = best;
      }
    }
    return top;
  }
}

/** Distinct pre-tokens of the corpus as symbol-id arrays, with frequencies. */
function countWords(corpus: readonly string[], symbolOf: Map<string, number>): { words: number[][]; freqs: number[] } {
  const freq = new Map<string, number>();
  corpus.forEach((text, i) => {
    if (typeof text !== 'string') throw new Error(`corpus[${i}] is not a string`);
    for (const piece of preTokenize(cleanText(text))) {
      if (piece === SOT_TEXT || piece === EOT_TEXT) continue;
      freq.set(piece, (freq.get(piece) ?? 0) + 1);
    }
  });
  const words: number[][] = [];
  const freqs: number[] = [];
  for (const [piece, n] of freq) {
    const word = toByteChars(piece);
    const symbols = word.split('').map((c) => symbolOf.get(c)!);
    symbols[symbols.length - 1] = symbolOf.get(word[word.length - 1]! + '</w>')!;
    words.push(symbols);
    freqs.push(n);
  }
  return { words, freqs };
}

/** Train a CLIP-style byte-level BPE vocabulary of (at most) `vocabSize` ids. */
export function trainBpe(corpus: readonly string[], options: TrainOptions): ClipTokenizer {
  const vocabSize = options?.vocabSize;
  if (!Array.isArray(corpus)) throw new Error('trainBpe: corpus must be an array of strings');
  if (!Number.isInteger(vocabSize) || vocabSize < BASE_SYMBOLS + SPECIAL_TOKENS || vocabSize > MAX_VOCAB) {
    throw new Error(
      `trainBpe: vocabSize must be an integer from ${BASE_SYMBOLS + SPECIAL_TOKENS} (512 byte symbols + 2 special tokens) to ${MAX_VOCAB}, got ${vocabSize}`,
    );
  }

  // Internal symbol ids: 0-511 the byte symbols in vocabulary order, then one
  // per distinct merged string (a string made twice reuses its id).
  const names: string[] = BYTE_ALPHABET.map((e) => e.char);
  names.push(...names.map((c) => c + '</w>'));
  const symbolOf = new Map(names.map((s, i) => [s, i]));

  const { words, freqs } = countWords(corpus, symbolOf);

  const pairCount = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  const addPairs = (w: number, sign: 1 | -1, touched: Set<number>): void => {
    const s = words[w]!;
    for (let i = 0; i + 1 < s.length; i++) {
      const key = pairKey(s[i]!, s[i + 1]!);
      pairCount.set(key, (pairCount.get(key) ?? 0) + sign * freqs[w]!);
      touched.add(key);
      if (sign > 0) {
        let set = pairWords.get(key);
        if (!set) pairWords.set(key, (set = new Set()));
        set.add(w);
      }
    }
  };

  const heap = new PairHeap();
  const initial = new Set<number>();
  words.forEach((_, w) => addPairs(w, 1, initial));
  for (const key of initial) heap.push(pairCount.get(key)!, key);

  const merges: Merge[] = [];
  const wanted = vocabSize - BASE_SYMBOLS - SPECIAL_TOKENS;
  while (merges.length < wanted && heap.size > 0) {
    const [count, key] = heap.pop();
    // Stale entry: the pair's count changed after this entry was pushed.
    if (count !== pairCount.get(key) || count <= 0) continue;

    const a = Math.floor(key / PAIR_SHIFT);
    const b = key % PAIR_SHIFT;
    const merged = names[a]! + names[b]!;
    let c = symbolOf.get(merged);
    if (c === undefined) {
      c = names.length;
      names.push(merged);
      symbolOf.set(merged, c);
    }
    merges.push([names[a]!, names[b]!]);

    // Rewrite every word holding the pair, fusing left to right like encoding does.
    const touched = new Set<number>();
    for (const w of pairWords.get(key) ?? []) {
      const s = words[w]!;
      let found = false;
      for (let i = 0; i + 1 < s.length && !found; i++) found = s[i] === a && s[i + 1] === b;
      if (!found) continue;
      addPairs(w, -1, touched);
      const next: number[] = [];
      for (let i = 0; i < s.length; i++) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          next.push(c);
          i++;
        } else {
          next.push(s[i]!);
        }
      }
      words[w] = next;
      addPairs(w, 1, touched);
    }
    pairWords.delete(key);
    pairCount.delete(key);
    touched.delete(key);
    for (const k of touched) {
      const n = pairCount.get(k)!;
      if (n > 0) heap.push(n, k);
      else pairCount.delete(k);
    }
  }
  return new ClipTokenizer(merges);
}
