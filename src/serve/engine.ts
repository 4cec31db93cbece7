// The inference side of the server: a worker pool running the exported towers, one micro-batcher per
// tower, the tokenizer, and the class-embedding cache. Everything an HTTP route needs, and nothing
// about HTTP.
import { join } from 'node:path';
import { findTokenizer } from '../cli/find-tokenizer.js';
import { fromOpenClip } from '../models/config.js';
import type { ClipTokenizer } from '../tokenizer/index.js';
import { type BatchStats, MicroBatcher } from './batcher.js';
import { InferencePool } from './pool.js';
import { packTokens } from './tokens.js';
import { ensureTowers } from './towers.js';
import { ClassifierCache, InputError, type LabelScore, topLabels } from './zeroshot.js';

export interface EngineOptions {
  modelPath: string;
  /** Tokenizer file or directory; default: next to the model. */
  tokenizer?: string;
  /** clipkit's cache root (exported towers, class embeddings). */
  cacheRoot: string;
  workers?: number;
  threads?: number;
  /** Items per tower run; 1 disables batching. Default 32. */
  maxBatch?: number;
  /** Items waiting per tower before requests are refused. Default 256. */
  maxQueue?: number;
  /** Collection window in ms. Default 3. */
  windowMs?: number;
  /** 'int8': towers with int8 linear layers (see ClipModelOptions.quantize). */
  quantize?: 'none' | 'int8';
}

export interface Embedded {
  /** One unit-norm row per input. */
  rows: Float32Array[];
  /** Largest batch any of the inputs ran in. */
  batchSize: number;
}

export class Engine {
  readonly embedDim: number;
  readonly logitScale: number;
  readonly imageSize: number;
  readonly contextLength: number;
  readonly modelKey: string;
  private readonly images: MicroBatcher<Uint8Array, Float32Array>;
  private readonly texts: MicroBatcher<string, Float32Array>;
  private readonly classifiers: ClassifierCache;

  private constructor(
    private readonly pool: InferencePool,
    tokenizer: ClipTokenizer,
    meta: { embedDim: number; logitScale: number; imageSize: number; textLengths: number[]; key: string },
    o: EngineOptions,
  ) {
    this.embedDim = meta.embedDim;
    this.logitScale = meta.logitScale;
    this.imageSize = meta.imageSize;
    this.contextLength = meta.textLengths[meta.textLengths.length - 1]!;
    this.modelKey = meta.key;
    this.classifiers = new ClassifierCache(join(o.cacheRoot, 'classifiers'));
    const D = this.embedDim;
    const batching = { maxBatch: o.maxBatch ?? 32, maxQueue: o.maxQueue ?? 256, windowMs: o.windowMs ?? 3 };
    this.images = new MicroBatcher(pool, {
      ...batching,
      run: async (lease, items) => {
        const r = await lease.run({ op: 'images', images: items });
        // Features hold one row per decodable image, in order; `errors` has one entry per item.
        let row = 0;
        return r.errors!.map((err) => {
          if (err !== null) return new InputError(err);
          const v = r.features.subarray(D * row, D * (row + 1));
          row++;
          return normalized(v);
        });
      },
    });
    this.texts = new MicroBatcher(pool, {
      ...batching,
      run: async (lease, items) => {
        const r = await lease.run({ op: 'texts', ids: packTokens(tokenizer, items, meta.textLengths), n: items.length });
        return items.map((_, i) => normalized(r.features.subarray(D * i, D * (i + 1))));
      },
    });
  }

  static async create(o: EngineOptions): Promise<Engine> {
    const towers = await ensureTowers(o.modelPath, o.cacheRoot, { quantize: o.quantize });
    const config = fromOpenClip(towers.meta.config);
    const tokenizer = await findTokenizer('serve', o.modelPath, o.tokenizer, { config });
    const pool = await InferencePool.start({ vision: towers.vision, texts: towers.texts, imageSize: towers.meta.image.size, workers: o.workers, threads: o.threads });
    const meta = { embedDim: towers.meta.embedDim, logitScale: towers.meta.logitScale, imageSize: towers.meta.image.size, textLengths: towers.texts.map((t) => t.length), key: towers.key };
    return new Engine(pool, tokenizer, meta, o);
  }

  /** Embeds encoded images (JPEG, PNG, WebP…). A bad image: InputError naming its position. */
  async embedImages(images: readonly Uint8Array[]): Promise<Embedded> {
    const settled = await Promise.allSettled(this.images.submit(images));
    return collect(settled, (i) => (images.length > 1 ? `image ${i + 1}: ` : ''));
  }

  async embedTexts(texts: readonly string[]): Promise<Embedded> {
    return collect(await Promise.allSettled(this.texts.submit(texts)), () => '');
  }

  /** Top-k labels of one image; the labels' embeddings come from the cache when it has them. */
  async classify(image: Uint8Array, labels: readonly string[], templates: readonly string[], k: number): Promise<{ labels: LabelScore[]; batchSize: number }> {
    // The image starts its trip through the queue while the class embeddings are looked up.
    const [img, weights] = await Promise.all([
      this.embedImages([image]),
      this.classifiers.get(this.modelKey, labels, templates, this.embedDim, async (prompts) => {
        const { rows } = await this.embedTextsChunked(prompts);
        const out = new Float32Array(prompts.length * this.embedDim);
        rows.forEach((r, i) => out.set(r, i * this.embedDim));
        return out;
      }),
    ]);
    return { labels: topLabels(img.rows[0]!, weights, labels, this.logitScale, k), batchSize: img.batchSize };
  }

  stats(): { image: BatchStats; text: BatchStats; workers: number; idle: number; restarts: number } {
    return { image: this.images.stats, text: this.texts.stats, workers: this.pool.size, idle: this.pool.idle, restarts: this.pool.restarts };
  }

  close(): Promise<void> {
    return this.pool.close();
  }

  /** A label set may hold more prompts than the queue admits at once: submit them in slices. */
  private async embedTextsChunked(prompts: string[]): Promise<Embedded> {
    const rows: Float32Array[] = [];
    let batchSize = 0;
    const step = Math.max(1, Math.min(256, Math.floor(this.texts.maxQueue / 2)));
    for (let lo = 0; lo < prompts.length; lo += step) {
      const r = await this.embedTexts(prompts.slice(lo, lo + step));
      rows.push(...r.rows);
      batchSize = Math.max(batchSize, r.batchSize);
    }
    return { rows, batchSize };
  }
}

function normalized(v: Float32Array): Float32Array {
  let s = 0;
  for (let j = 0; j < v.length; j++) s += v[j]! * v[j]!;
  const inv = s > 0 ? 1 / Math.sqrt(s) : 0;
  return Float32Array.from(v, (x) => x * inv);
}

/** Rows of fulfilled items; the first failure (input errors before others) is thrown. */
function collect(settled: PromiseSettledResult<{ value: Float32Array; batchSize: number }>[], where: (i: number) => string): Embedded {
  const bad = settled.findIndex((s) => s.status === 'rejected' && s.reason instanceof InputError);
  const failed = bad >= 0 ? bad : settled.findIndex((s) => s.status === 'rejected');
  if (failed >= 0) {
    const e = (settled[failed] as PromiseRejectedResult).reason as Error;
    throw e instanceof InputError ? new InputError(`${where(failed)}${e.message}`) : e;
  }
  const ok = settled as PromiseFulfilledResult<{ value: Float32Array; batchSize: number }>[];
  return { rows: ok.map((s) => s.value.value), batchSize: Math.max(...ok.map((s) => s.value.batchSize)) };
}
