// ClipTokenizer: CLIP's byte-level BPE (the scheme of OpenAI's CLIP
// simple_tokenizer / clip.tokenize, reimplemented).
//
// A word is spelled in byte symbols (see bytes.ts), its last symbol marked
// with "</w>" so word-final pieces get their own ids. Then, repeatedly, the
// adjacent pair with the best (lowest) merge rank is fused, everywhere in the
// word, until no ranked pair is left. Results are cached per word, which is
// what makes encoding large caption sets fast: most words repeat.

import { writeFileSync } from 'node:fs';
import { BYTE_ALPHABET, fromByteChars, toByteChars } from './bytes.js';
import { cleanText, preTokenize } from './clean.js';

export const SOT_TEXT = '<|startoftext|>';
export const EOT_TEXT = '<|endoftext|>';
export const END_OF_WORD = '</w>';

/** A merge rule: two adjacent symbols that fuse into one. */
export type Merge = readonly [string, string];

export interface EncodeOptions {
  /** Row length; default 77 as in CLIP. */
  contextLength?: number;
  /** Cut texts that are too long (keeping the end token) instead of throwing. */
  truncate?: boolean;
}

export interface EncodedBatch {
  /** Row-major ids, zero-padded after the end token. */
  data: Int32Array;
  shape: [number, number];
}

/** The file written by `save` and read back by `loadTokenizer`. */
export interface SavedTokenizer {
  format: 'clipkit-bpe';
  version: 1;
  /** Merge rules in rank order, each "left right". */
  merges: string[];
  /** Only present when ids do not follow the standard layout. */
  vocab?: Record<string, number>;
}

/**
 * The standard vocabulary: 256 byte symbols, the same with "</w>", one entry
 * per merge (the fused string), then the start and end tokens.
 */
export function standardVocab(merges: readonly Merge[]): string[] {
  const bytes = BYTE_ALPHABET.map((e) => e.char);
  return [...bytes, ...bytes.map((c) => c + END_OF_WORD), ...merges.map(([a, b]) => a + b), SOT_TEXT, EOT_TEXT];
}

// The cache is a plain map; past this many words it is simply emptied so a
// long-running process streaming unbounded text cannot grow without limit.
const CACHE_LIMIT = 200_000;

export class ClipTokenizer {
  readonly vocabSize: number;
  readonly sotToken: number;
  readonly eotToken: number;
  /** Merge rules, best first. */
  readonly merges: readonly Merge[];

  private readonly encoder: Map<string, number>;
  private readonly decoder: string[];
  private readonly ranks = new Map<string, number>();
  private readonly standardLayout: boolean;
  private cache = new Map<string, number[]>();

  /**
   * @param merges merge rules in rank order
   * @param vocab  token -> id; defaults to the standard layout (standardVocab)
   */
  constructor(merges: readonly Merge[], vocab?: ReadonlyMap<string, number>) {
    this.merges = merges;
    // Later duplicates win, as in a Python dict built from the same list.
    merges.forEach(([a, b], rank) => this.ranks.set(a + ' ' + b, rank));

    const standard = standardVocab(merges);
    this.encoder = new Map();
    if (vocab) {
      this.decoder = [];
      for (const [token, id] of vocab) {
        this.encoder.set(token, id);
        this.decoder[id] = token;
      }
    } else {
      // If two merges make the same string, both ids decode to it and encoding
      // uses the later one (as a Python dict built from this list would).
      this.decoder = standard;
      standard.forEach((token, id) => this.encoder.set(token, id));
    }
    this.vocabSize = this.decoder.length;
    this.standardLayout = standard.length === this.vocabSize && standard.every((t, id) => this.decoder[id] === t);

    const sot = this.encoder.get(SOT_TEXT);
    const eot = this.encoder.get(EOT_TEXT);
    if (sot === undefined || eot === undefined) {
      throw new Error(`vocabulary lacks ${SOT_TEXT} or ${EOT_TEXT}`);
    }
    this.sotToken = sot;
    this.eotToken = eot;
    this.resetCache();
  }

  private resetCache(): void {
    // A literal special token in the text encodes as that token.
    this.cache = new Map([
      [SOT_TEXT, [this.sotToken]],
      [EOT_TEXT, [this.eotToken]],
    ]);
  }

  /** BPE symbols of one pre-token (already in byte symbols). */
  private bpe(word: string): string[] {
    const symbols = word.split('');
    symbols[symbols.length - 1] += END_OF_WORD;
    while (symbols.length > 1) {
      // The best-ranked adjacent pair...
      let best = Infinity;
      let first = '';
      let second = '';
      for (let i = 0; i + 1 < symbols.length; i++) {
        const rank = this.ranks.get(symbols[i] + ' ' + symbols[i + 1]);
        if (rank !== undefined && rank < best) {
          best = rank;
          first = symbols[i]!;
          second = symbols[i + 1]!;
        }
      }
      if (best === Infinity) break;
      // ...fused at every occurrence, left to right, without overlaps.
      let out = 0;
      for (let i = 0; i < symbols.length; i++) {
        if (symbols[i] === first && symbols[i + 1] === second && i + 1 < symbols.length) {
          symbols[out++] = first + second;
          i++;
        } else {
          symbols[out++] = symbols[i]!;
        }
      }
      symbols.length = out;
    }
    return symbols;
  }

  private idsOfPiece(piece: string): number[] {
    // Keyed by the piece itself: printable ASCII spells itself in byte
    // symbols, so special tokens written in the text hit their entries.
    let ids = this.cache.get(piece);
    if (ids === undefined) {
      ids = this.bpe(toByteChars(piece)).map((symbol) => {
        const id = this.encoder.get(symbol);
        if (id === undefined) throw new Error(`BPE symbol ${JSON.stringify(symbol)} is not in the vocabulary`);
        return id;
      });
      if (this.cache.size >= CACHE_LIMIT) this.resetCache();
      this.cache.set(piece, ids);
    }
    return ids;
  }

  /** Token ids of one text, without start/end tokens (SimpleTokenizer.encode). */
  encodeText(text: string): number[] {
    const ids: number[] = [];
    for (const piece of preTokenize(cleanText(text))) {
      for (const id of this.idsOfPiece(piece)) ids.push(id);
    }
    return ids;
  }

  /**
   * A batch as clip.tokenize makes it: each row is start token, text tokens,
   * end token, zero padding. Too-long texts throw unless `truncate`, which
   * keeps the first contextLength - 1 ids and ends the row with the end token.
   */
  encode(texts: string | readonly string[], options: EncodeOptions = {}): EncodedBatch {
    const list = typeof texts === 'string' ? [texts] : texts;
    const contextLength = options.contextLength ?? 77;
    const truncate = options.truncate ?? false;
    if (!Number.isInteger(contextLength) || contextLength < 2) {
      throw new Error(`contextLength must be an integer >= 2, got ${contextLength}`);
    }
    if (!Array.isArray(list)) throw new Error('encode expects a string or an array of strings');
    const data = new Int32Array(list.length * contextLength);
    list.forEach((text, row) => {
      if (typeof text !== 'string') throw new Error(`text ${row} is not a string`);
      const ids = [this.sotToken, ...this.encodeText(text), this.eotToken];
      if (ids.length > contextLength) {
        if (!truncate) {
          throw new Error(
            `text ${row} has ${ids.length} tokens (with start/end), more than the context length ${contextLength}; pass truncate: true`,
          );
        }
        ids.length = contextLength;
        ids[contextLength - 1] = this.eotToken;
      }
      data.set(ids, row * contextLength);
    });
    return { data, shape: [list.length, contextLength] };
  }

  /**
   * Text of a sequence of ids. Word ends become spaces (so the result has a
   * trailing space), special tokens appear literally, and padding zeros are
   * NOT skipped (id 0 is "!"), exactly as SimpleTokenizer.decode.
   */
  decode(ids: Iterable<number>): string {
    let chars = '';
    for (const id of ids) {
      const token = this.decoder[id];
      if (token === undefined) throw new Error(`token id ${id} is outside the vocabulary (size ${this.vocabSize})`);
      chars += token;
    }
    return fromByteChars(chars).replaceAll(END_OF_WORD, ' ');
  }

  /** The JSON that `save` writes. */
  toJSON(): SavedTokenizer {
    const saved: SavedTokenizer = { format: 'clipkit-bpe', version: 1, merges: this.merges.map(([a, b]) => a + ' ' + b) };
    if (!this.standardLayout) saved.vocab = Object.fromEntries(this.encoder);
    return saved;
  }

  /** Write the vocabulary as JSON, readable by loadTokenizer (synchronous). */
  save(path: string): void {
    writeFileSync(path, JSON.stringify(this.toJSON()) + '\n');
  }
}
