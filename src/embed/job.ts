// The offline embedding job: every image of the input (this shard's share of it) through the image
// tower, and optionally every caption through the text tower, in batches; written as parts that a
// rerun resumes from (parts.ts), then merged into the files `clipkit index` loads (merge.ts).
//
// Two stages overlap: while a worker thread runs the towers on batch k, the main thread decodes batch
// k+1 (sharp decodes on the libuv pool; the PIL-exact resize runs here).
import { findTokenizer } from '../cli/find-tokenizer.js';
import type { NpyDType } from '../index/npy.js';
import { fromOpenClip } from '../models/config.js';
import { InferencePool } from '../serve/pool.js';
import { packTokens } from '../serve/tokens.js';
import { ensureTowers } from '../serve/towers.js';
import { type DecodedBatch, decodeBatch } from './decode.js';
import { finishedShards, type MergeSummary, mergeShards } from './merge.js';
import { type Manifest, PartStore } from './parts.js';
import { progressLine } from './progress.js';
import { type EmbedItem, openInput } from './source.js';

export interface EmbedOptions {
  inputs: string[];
  out: string;
  modelPath: string;
  tokenizer?: string;
  cacheRoot: string;
  batchSize: number;
  dtype: NpyDType;
  /** [i, n]: this run embeds the items whose index % n === i. */
  shard: [number, number];
  captions: boolean;
  /** Rows per part: the most work a crash can cost. */
  partRows: number;
  workers?: number;
  threads?: number;
  /** No progress line. */
  quiet?: boolean;
  /** 'int8': towers with int8 linear layers (see ClipModelOptions.quantize). */
  quantize?: 'none' | 'int8';
}

export interface EmbedSummary {
  /** Images embedded by this run (not counting those a previous run finished). */
  embedded: number;
  /** Unreadable images met by this run. */
  failed: number;
  /** Items a previous run had already handled. */
  resumed: number;
  /** Set when every shard is finished and the outputs were (re)written. */
  merged?: MergeSummary;
  /** Shards still to run before the merge can happen. */
  pendingShards?: string[];
}

export async function runEmbed(o: EmbedOptions): Promise<EmbedSummary> {
  const [shard, shards] = o.shard;
  const input = await openInput(o.inputs);
  if (o.captions && !input.captions) throw new Error('--captions: this input has no captions (a flat folder of images); use a caption table, tar shards with .txt files, or a folder by class');
  const towers = await ensureTowers(o.modelPath, o.cacheRoot, { quantize: o.quantize });
  const D = towers.meta.embedDim;
  const size = towers.meta.image.size;
  const tokenizer = o.captions ? await findTokenizer('embed', o.modelPath, o.tokenizer, { config: fromOpenClip(towers.meta.config) }) : undefined;
  const store = new PartStore(o.out, { input: input.paths, model: towers.key, dim: D, dtype: o.dtype, captions: o.captions, shard: o.shard });
  const m = store.manifest;
  const resumed = m.parts.reduce((a, p) => a + p.rows, 0) + m.failed.length;
  const summary: EmbedSummary = { embedded: 0, failed: 0, resumed };

  if (!m.done) {
    const pool = await InferencePool.start({ vision: towers.vision, texts: towers.texts, imageSize: size, workers: o.workers, threads: o.threads });
    try {
      const total = input.size !== undefined ? Math.max(0, Math.ceil((input.size - shard) / shards)) : undefined;
      const progress = o.quiet ? undefined : progressLine(`embed${shards > 1 ? ` ${shard}/${shards}` : ''}`, total, resumed);
      const part = new PartBuffer();
      const textLengths = towers.texts.map((t) => t.length);
      const delay = Number(process.env.CLIPKIT_TEST_EMBED_DELAY_MS) || 0; // tests: slow down to kill mid-run

      // Tower runs start as soon as a batch is decoded (on whichever worker is free); their results
      // are recorded strictly in batch order, since parts and the resume point must follow the input.
      const encode = async (b: DecodedBatch): Promise<{ image: Float32Array; text?: Float32Array }> => {
        const okItems = b.ok.map((i) => b.items[i]!);
        if (okItems.length === 0) return { image: new Float32Array(0) };
        const [image, text] = await Promise.all([
          pool.run({ op: 'pixels', pixels: b.pixels, n: okItems.length }),
          tokenizer ? pool.run({ op: 'texts', ids: packTokens(tokenizer, okItems.map((i) => i.caption), textLengths), n: okItems.length }) : undefined,
        ]);
        return { image: normalizeRows(image.features, D), ...(text ? { text: normalizeRows(text.features, D) } : {}) };
      };
      const record = async (b: DecodedBatch, f: { image: Float32Array; text?: Float32Array }): Promise<void> => {
        part.add(b.ok.map((i) => b.items[i]!), b.sizes, f.image, f.text, b.failed);
        summary.embedded += b.ok.length;
        summary.failed += b.failed.length;
        part.nextIndex = b.items[b.items.length - 1]!.index + 1;
        if (part.rows >= o.partRows) store.commit(part.take(D), part.nextIndex, part.takeFailed());
        progress?.update(summary.embedded + summary.failed, summary.failed);
        if (delay) await new Promise((r) => setTimeout(r, delay));
      };

      // At most workers + 1 batches in flight: one being decoded here while every worker encodes.
      const depth = (o.workers ?? 1) + 1;
      const inflight: Promise<void>[] = [];
      let recorded: Promise<void> = Promise.resolve();
      let batch: EmbedItem[] = [];
      const dispatch = async (items: EmbedItem[]): Promise<void> => {
        const decoded = await decodeBatch(items, size);
        const features = encode(decoded);
        features.catch(() => {}); // its error surfaces through `recorded`, in order
        recorded = recorded.then(async () => record(decoded, await features));
        recorded.catch(() => {}); // awaited below (or at the end); no unhandled rejection meanwhile
        inflight.push(recorded);
        if (inflight.length >= depth) await inflight.shift();
      };
      for await (const item of input.items(m.nextIndex)) {
        if (item.index % shards !== shard) continue;
        batch.push(item);
        if (batch.length === o.batchSize) {
          await dispatch(batch);
          batch = [];
        }
      }
      if (batch.length) await dispatch(batch);
      await recorded;
      store.commit(part.take(D), part.nextIndex ?? m.nextIndex, part.takeFailed());
      store.finish();
      progress?.end();
    } finally {
      await pool.close();
    }
  }

  const done = finishedShards(o.out);
  if ('missing' in done) summary.pendingShards = done.missing;
  else summary.merged = mergeShards(o.out, done);
  return summary;
}

/** Rows embedded since the last committed part. */
class PartBuffer {
  private image: Float32Array[] = [];
  private text: Float32Array[] = [];
  private meta: object[] = [];
  private failed: Manifest['failed'] = [];
  private first = -1;
  private last = -1;
  /** The resume point once this buffer is committed. */
  nextIndex: number | undefined;

  get rows(): number {
    return this.meta.length;
  }

  add(items: EmbedItem[], sizes: { width: number; height: number }[], image: Float32Array, text: Float32Array | undefined, failed: DecodedBatch['failed']): void {
    const D = items.length ? image.length / items.length : 0;
    items.forEach((it, r) => {
      if (this.first < 0) this.first = it.index;
      this.last = it.index;
      this.image.push(image.subarray(r * D, (r + 1) * D));
      if (text) this.text.push(text.subarray(r * D, (r + 1) * D));
      this.meta.push(metadataOf(it, sizes[r]!));
    });
    for (const f of failed) this.failed.push({ index: f.item.index, key: f.item.key, error: f.error });
  }

  take(D: number): { image: Float32Array; text?: Float32Array; meta: object[]; firstIndex: number; lastIndex: number } {
    const join = (rows: Float32Array[]): Float32Array => {
      const out = new Float32Array(rows.length * D);
      rows.forEach((r, i) => out.set(r, i * D));
      return out;
    };
    const out = { image: join(this.image), ...(this.text.length ? { text: join(this.text) } : {}), meta: this.meta, firstIndex: this.first, lastIndex: this.last };
    this.image = [];
    this.text = [];
    this.meta = [];
    this.first = this.last = -1;
    return out;
  }

  takeFailed(): Manifest['failed'] {
    const f = this.failed;
    this.failed = [];
    return f;
  }
}

/**
 * One metadata row: `path` and `caption` become the store's columns, the rest its JSON metadata.
 * `index` is the item's position in the input (what sharding and merging order by). No `id` key:
 * `clipkit index` numbers rows itself unless told to take ids from the metadata.
 */
function metadataOf(it: EmbedItem, size: { width: number; height: number }): object {
  return {
    index: it.index,
    key: it.key,
    ...('path' in it.image ? { path: it.image.path } : {}),
    ...(it.shard ? { shard: it.shard } : {}),
    ...(it.caption ? { caption: it.caption } : {}),
    width: size.width,
    height: size.height,
    ...(it.label !== undefined ? { label: it.label } : {}),
    ...(it.className !== undefined ? { class: it.className } : {}),
  };
}

function normalizeRows(f: Float32Array, D: number): Float32Array {
  for (let r = 0; r < f.length / D; r++) {
    let s = 0;
    for (let j = 0; j < D; j++) s += f[r * D + j]! ** 2;
    const inv = s > 0 ? 1 / Math.sqrt(s) : 0;
    for (let j = 0; j < D; j++) f[r * D + j]! *= inv;
  }
  return f;
}
