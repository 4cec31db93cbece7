// DataLoader: batches of (augmented pixels, tokens) for contrastive training, decoded in worker
// threads and prefetched so that the training step does not wait for data.
//
// Determinism. A batch is a function of (seed, epoch, batch index) only:
//  - the epoch's order is a seeded permutation (indexed sources) or the source's seeded stream;
//  - batch b covers positions [b·B, (b+1)·B) of that order, whatever happened in earlier batches;
//  - each sample's augmentation draws from its own Rng, seeded by (seed, epoch, sample index);
//  - an unreadable image's slot is filled by the next readable sample *after* the batch's range
//    (which also appears, identically, in the next batch). With dropLast, an indexed order wraps
//    around at its end so that the last batch is full too; otherwise that batch comes out short.
// So `batches(epoch, k)` yields exactly the tail of `batches(epoch)` from batch k on (resume),
// and results do not depend on the number of workers or on their timing. (Filling from "the
// samples that follow" in a running sense would shift every later batch after a bad image, and
// a resumed epoch could not know by how much without decoding everything before it.)

import { performance } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import { Rng } from '../nn/init.js';
import type { EpochContext, Sample, Source } from './datasets.js';
import { CLIP_MEAN, CLIP_STD, ImageDecodeError } from './image.js';
import { createHandler, type Decoder, type FromWorker, type ImageRef, type JobItem, type ToWorker, type TransformConfig } from './worker.js';

/** What the loader needs of a tokenizer (ClipTokenizer fits). */
export interface TextTokenizer {
  encode(texts: readonly string[], options: { contextLength?: number; truncate?: boolean }): { data: Int32Array; shape: [number, number] };
}

export interface LoaderOptions {
  batchSize: number;
  /** Output side S of the square images. */
  imageSize: number;
  /** Training augmentation (random resized crop + flip) instead of CLIP's eval transform. */
  train: boolean;
  tokenizer: TextTokenizer;
  /** Token row length; default 77. Longer captions are truncated (keeping the end token). */
  contextLength?: number;
  /** Seeds order, captions and augmentation; default 0. */
  seed?: number | string;
  /** Shuffle each epoch; default `train`. */
  shuffle?: boolean;
  /** Random resized crop: area fraction, default [0.9, 1.0]; aspect ratio, default [3/4, 4/3]. */
  scale?: [number, number];
  ratio?: [number, number];
  /** Random horizontal flip when training; default true. */
  flip?: boolean;
  mean?: readonly number[];
  std?: readonly number[];
  /**
   * Worker threads decoding and augmenting; default 1 (the training step wants the other
   * cores). 0 runs everything on the calling thread (for debugging).
   */
  workers?: number;
  /** Batches prepared ahead of the consumer; default 2 (at least `workers` are in flight). */
  prefetch?: number;
  /** Drop the last incomplete batch; default `train` (a compiled step wants one shape). */
  dropLast?: boolean;
  /** Decode every image once, keep its RGB bytes in memory; later epochs only augment. */
  cacheDecoded?: boolean;
  /** JPEG decoder; 'auto' (default) uses jpeg-js for tiny JPEGs, sharp for the rest (see worker.ts). */
  decoder?: Decoder;
  /** Called once per epoch for each unreadable image that was skipped. */
  onSkip?: (key: string, error: Error) => void;
  /** Progress of decoding into the cache (`cacheDecoded`). */
  onProgress?: (done: number, total: number) => void;
}

export interface Batch {
  /** [B, 3, S, S], normalised with CLIP's mean and std. */
  pixels: { data: Float32Array; shape: [number, number, number, number] };
  /** [B, L] token ids, zero-padded. */
  tokens: { data: Int32Array; shape: [number, number] };
  /** Class labels, -1 where the source has none (usable as the trainer's `groups`). */
  labels: Int32Array;
  keys: string[];
  captions: string[];
  /** Batch number within the epoch. */
  index: number;
}

export interface LoaderStats {
  /** Unreadable images skipped (each counted once per epoch it was met in). */
  skipped: number;
  /** Batches and samples delivered. */
  batches: number;
  samples: number;
  /** Images held decoded in memory (`cacheDecoded`). */
  cached: number;
  /** Milliseconds the consumer waited for a batch that was not ready yet. */
  waitMs: number;
}

type CacheEntry = { ref: [number, number, number, number] } | { error: string };

export class DataLoader {
  readonly stats: LoaderStats = { skipped: 0, batches: 0, samples: 0, cached: 0, waitMs: 0 };
  private readonly opts: Required<Pick<LoaderOptions, 'batchSize' | 'imageSize' | 'train' | 'contextLength' | 'seed' | 'shuffle' | 'workers' | 'prefetch' | 'dropLast'>>;
  private readonly pool: Pool;
  private cache: CacheEntry[] | undefined;
  private preparing: Promise<void> | undefined;
  private closed = false;

  constructor(
    readonly source: Source,
    private readonly options: LoaderOptions,
  ) {
    const o = options;
    if (!Number.isInteger(o.batchSize) || o.batchSize < 1) throw new Error(`DataLoader: batchSize must be a positive integer, got ${o.batchSize}`);
    if (!Number.isInteger(o.imageSize) || o.imageSize < 1) throw new Error(`DataLoader: imageSize must be a positive integer, got ${o.imageSize}`);
    const workers = o.workers ?? 1;
    if (!Number.isInteger(workers) || workers < 0) throw new Error(`DataLoader: workers must be an integer >= 0, got ${workers}`);
    if (o.cacheDecoded && source.kind !== 'indexed') throw new Error('DataLoader: cacheDecoded needs an indexed source (image folder or caption table)');
    this.opts = {
      batchSize: o.batchSize,
      imageSize: o.imageSize,
      train: o.train,
      contextLength: o.contextLength ?? 77,
      seed: o.seed ?? 0,
      shuffle: o.shuffle ?? o.train,
      workers,
      prefetch: Math.max(1, o.prefetch ?? 2),
      dropLast: o.dropLast ?? o.train,
    };
    const config: TransformConfig = {
      size: o.imageSize,
      train: o.train,
      scale: o.scale ?? [0.9, 1.0],
      ratio: o.ratio ?? [3 / 4, 4 / 3],
      flip: o.flip ?? true,
      mean: o.mean ?? CLIP_MEAN,
      std: o.std ?? CLIP_STD,
      decoder: o.decoder ?? 'auto',
    };
    this.pool = new Pool(config, workers);
  }

  /** Batches per epoch for an indexed source (exact unless most images are unreadable). */
  get batchesPerEpoch(): number | undefined {
    if (this.source.kind !== 'indexed') return undefined;
    const n = this.source.size / this.opts.batchSize;
    return this.opts.dropLast ? Math.floor(n) : Math.ceil(n);
  }

  /**
   * Decode every image into the in-memory cache (with `cacheDecoded`), reporting progress.
   * Called by the first `batches()`; call it earlier to time or log the preparation.
   */
  prepare(): Promise<void> {
    if (!this.options.cacheDecoded) return Promise.resolve();
    this.preparing ??= this.fillCache();
    return this.preparing;
  }

  /** The batches of `epoch`, from batch `startBatch` on (to resume an interrupted epoch). */
  async *batches(epoch: number, startBatch = 0): AsyncGenerator<Batch> {
    if (this.closed) throw new Error('DataLoader: closed');
    if (!Number.isInteger(startBatch) || startBatch < 0) throw new Error(`DataLoader: startBatch must be an integer >= 0, got ${startBatch}`);
    await this.prepare();
    const ep = this.openEpoch(epoch, startBatch * this.opts.batchSize);
    const depth = Math.max(this.opts.prefetch, this.opts.workers);
    const queue: Promise<Batch | undefined>[] = [];
    let next = startBatch;
    let ended = false;
    const topUp = (): void => {
      while (!ended && queue.length < depth) {
        const p = this.makeBatch(ep, next++);
        p.catch(() => {}); // awaited in order below; this only stops "unhandled" reports for abandoned ones
        queue.push(p);
      }
    };
    try {
      topUp();
      while (queue.length > 0) {
        const t0 = performance.now();
        const batch = await queue.shift()!;
        this.stats.waitMs += performance.now() - t0;
        // An empty batch means the order is exhausted; every later one is empty too.
        if (!batch) break;
        ep.release((batch.index + 1) * this.opts.batchSize);
        topUp();
        this.stats.batches++;
        this.stats.samples += batch.keys.length;
        yield batch;
      }
    } finally {
      ended = true;
      await ep.close();
    }
  }

  /** Stop the workers. Pending batches fail; the loader cannot be used afterwards. */
  async close(): Promise<void> {
    this.closed = true;
    await this.pool.close();
  }

  // -------------------------------------------------------------------------------------

  private openEpoch(epoch: number, startPos: number): Epoch {
    const ctx: EpochContext = { epoch, seed: this.opts.seed, shuffle: this.opts.shuffle };
    const source = this.source;
    if (source.kind === 'indexed') {
      const order = Array.from({ length: source.size }, (_, i) => i);
      if (ctx.shuffle) new Rng(`perm:${ctx.seed}:${epoch}`).shuffle(order);
      return new Epoch(ctx, {
        size: source.size,
        at: async (pos) => (pos < source.size ? { index: order[pos]!, sample: source.get(order[pos]!, ctx) } : undefined),
        release: () => {},
        close: async () => {},
      });
    }
    return new Epoch(ctx, new StreamReader(source.stream(ctx), startPos));
  }

  /** Batch b of the epoch, or undefined past the end. */
  private async makeBatch(ep: Epoch, b: number): Promise<Batch | undefined> {
    const B = this.opts.batchSize;
    const start = b * B;
    const slots: Entry[] = [];
    for (let pos = start; pos < start + B; pos++) {
      const e = await ep.at(pos);
      if (!e) break;
      slots.push({ pos, ...e });
    }
    if (slots.length === 0 || (this.opts.dropLast && slots.length < B)) return undefined;
    const per = 3 * this.opts.imageSize * this.opts.imageSize;
    const { pixels, bad } = await this.process(ep, slots);
    // Fill unreadable slots from the positions after this batch, in order.
    const end = start + B;
    let cursor = 0; // positions after the batch looked at so far
    const limit = ep.size ?? Infinity; // an indexed order has nothing new after a full turn
    while (bad.length > 0 && cursor < limit) {
      const cands: Entry[] = [];
      while (cands.length < bad.length && cursor < limit) {
        // Indexed sources wrap around only when every batch must be full (dropLast).
        let pos = end + cursor++;
        if (ep.size !== undefined) {
          if (pos >= ep.size && !this.opts.dropLast) {
            cursor = limit;
            break;
          }
          pos %= ep.size;
          if (pos >= start && pos < end) continue;
        }
        if (ep.failed.has(pos)) continue;
        const e = await ep.at(pos);
        if (!e) {
          cursor = limit; // end of the stream
          break;
        }
        cands.push({ pos, ...e });
      }
      if (cands.length === 0) break;
      const got = await this.process(ep, cands);
      const badCand = new Set(got.bad);
      cands.forEach((c, i) => {
        if (badCand.has(i)) return;
        const slot = bad.shift()!;
        slots[slot] = c;
        pixels.set(got.pixels.subarray(i * per, (i + 1) * per), slot * per);
      });
    }
    let data = pixels;
    let kept = slots;
    if (bad.length > 0) {
      if (this.opts.dropLast) {
        if (ep.size === undefined) return undefined; // the stream ended before the batch was full
        throw new Error(`DataLoader: not enough readable images to fill batch ${b} of ${B} (${ep.failed.size} unreadable so far)`);
      }
      const dead = new Set(bad);
      kept = slots.filter((_, i) => !dead.has(i));
      if (kept.length === 0) return undefined;
      data = new Float32Array(kept.length * per);
      let k = 0;
      slots.forEach((_, i) => {
        if (!dead.has(i)) data.set(pixels.subarray(i * per, (i + 1) * per), per * k++);
      });
    }
    const captions = kept.map((e) => e.sample.caption);
    const S = this.opts.imageSize;
    return {
      pixels: { data, shape: [kept.length, 3, S, S] },
      tokens: this.options.tokenizer.encode(captions, { contextLength: this.opts.contextLength, truncate: true }),
      labels: Int32Array.from(kept, (e) => e.sample.label ?? -1),
      keys: kept.map((e) => e.sample.key),
      captions,
      index: b,
    };
  }

  /** Pixels for `entries` (by slot) and the slots whose image could not be read. */
  private async process(ep: Epoch, entries: Entry[]): Promise<{ pixels: Float32Array; bad: number[] }> {
    const items: JobItem[] = [];
    const bad: number[] = [];
    entries.forEach((e, slot) => {
      const known = ep.failed.get(e.pos);
      const cached = this.cache?.[e.index];
      if (known !== undefined) bad.push(slot);
      else if (cached && 'error' in cached) {
        this.skip(ep, e, cached.error);
        bad.push(slot);
      } else {
        const image: ImageRef = cached ? { cached: cached.ref } : ownBytes(e.sample.image);
        items.push({ slot, key: e.sample.key, image, seed: `aug:${ep.ctx.seed}:${ep.ctx.epoch}:${e.index}` });
      }
    });
    const per = 3 * this.opts.imageSize * this.opts.imageSize;
    if (items.length === 0) return { pixels: new Float32Array(entries.length * per), bad };
    const reply = await this.pool.run({ type: 'augment', id: 0, count: entries.length, items }, items);
    if (reply.type !== 'augmented') throw new Error(`internal: unexpected ${reply.type} reply`);
    for (const f of reply.failed) {
      this.skip(ep, entries[f.slot]!, f.message);
      bad.push(f.slot);
    }
    return { pixels: reply.pixels, bad: bad.sort((x, y) => x - y) };
  }

  private skip(ep: Epoch, e: Entry, message: string): void {
    if (ep.failed.has(e.pos)) return;
    ep.failed.set(e.pos, message);
    this.stats.skipped++;
    this.options.onSkip?.(e.sample.key, new ImageDecodeError(message));
  }

  private async fillCache(): Promise<void> {
    const source = this.source;
    if (source.kind !== 'indexed') return;
    const ctx: EpochContext = { epoch: 0, seed: this.opts.seed, shuffle: false };
    const cache: CacheEntry[] = new Array(source.size);
    const slabs = new SlabStore((index, buffer) => this.pool.addSlab(index, buffer));
    const CHUNK = 64;
    let next = 0;
    let done = 0;
    const lane = async (): Promise<void> => {
      while (next < source.size && !this.closed) {
        const from = next;
        next = Math.min(source.size, next + CHUNK);
        const items: JobItem[] = [];
        for (let i = from; i < next; i++) {
          const s = source.get(i, ctx);
          items.push({ slot: i, key: s.key, image: s.image, seed: '' });
        }
        const reply = await this.pool.run({ type: 'decode', id: 0, items }, items);
        if (reply.type !== 'decoded') throw new Error(`internal: unexpected ${reply.type} reply`);
        for (const img of reply.images) {
          cache[img.slot] = { ref: [...slabs.add(img.data), img.width, img.height] };
          this.stats.cached++;
        }
        for (const f of reply.failed) cache[f.slot] = { error: f.message };
        done += items.length;
        this.options.onProgress?.(done, source.size);
      }
    };
    // Two jobs per worker keep each busy while the other's result crosses over.
    await Promise.all(Array.from({ length: Math.max(1, 2 * this.opts.workers) }, lane));
    if (this.closed) throw new Error('DataLoader: closed');
    this.cache = cache;
  }
}

// ---------------------------------------------------------------------------------------

// postMessage copies a typed array's whole underlying buffer; a view into a larger one (say a
// slice of a file read whole) is copied out first so that only its own bytes travel.
function ownBytes(image: Sample['image']): Sample['image'] {
  if (!('bytes' in image)) return image;
  const b = image.bytes;
  return b instanceof Uint8Array && b.byteLength !== b.buffer.byteLength ? { bytes: b.slice() } : image;
}

interface Entry {
  /** Position in the epoch's order. */
  pos: number;
  /** Index in the source (indexed) or position in the stream: seeds the augmentation. */
  index: number;
  sample: Sample;
}

interface Positions {
  /** Known for indexed sources. */
  size?: number;
  at(pos: number): Promise<{ index: number; sample: Sample } | undefined>;
  /** Positions below this will not be asked for again. */
  release(below: number): void;
  close(): Promise<void>;
}

/** One pass over the source: its order, and the positions found unreadable in it. */
class Epoch {
  readonly failed = new Map<number, string>();
  readonly size: number | undefined;
  constructor(
    readonly ctx: EpochContext,
    private readonly positions: Positions,
  ) {
    this.size = positions.size;
  }
  at(pos: number): Promise<{ index: number; sample: Sample } | undefined> {
    return this.positions.at(pos);
  }
  release(below: number): void {
    this.positions.release(below);
  }
  close(): Promise<void> {
    return this.positions.close();
  }
}

/**
 * Random access over a stream, for positions close to the read point: samples read ahead are
 * kept until released (batches are built concurrently and fill gaps from later positions).
 */
class StreamReader implements Positions {
  private readonly it: AsyncIterator<Sample>;
  private readonly held = new Map<number, Sample>();
  private read = 0;
  private done = false;
  private lock: Promise<unknown> = Promise.resolve();
  constructor(
    stream: AsyncIterable<Sample>,
    private floor: number,
  ) {
    this.it = stream[Symbol.asyncIterator]();
  }
  at(pos: number): Promise<{ index: number; sample: Sample } | undefined> {
    // Serialised: the iterator is read by one caller at a time, in order.
    const run = this.lock.then(async () => {
      while (this.read <= pos && !this.done) {
        const r = await this.it.next();
        if (r.done) this.done = true;
        else {
          if (this.read >= this.floor) this.held.set(this.read, r.value);
          this.read++;
        }
      }
      const sample = this.held.get(pos);
      return sample ? { index: pos, sample } : undefined;
    });
    this.lock = run.catch(() => {});
    return run;
  }
  release(below: number): void {
    this.floor = Math.max(this.floor, below);
    for (const k of this.held.keys()) if (k < below) this.held.delete(k);
  }
  async close(): Promise<void> {
    this.done = true;
    this.held.clear();
    await this.lock;
    await this.it.return?.();
  }
}

/** Decoded RGB bytes in large shared buffers, which every worker reads without copies. */
class SlabStore {
  static readonly SLAB_BYTES = 64 << 20;
  private slabs: SharedArrayBuffer[] = [];
  private used = 0;
  constructor(private readonly onSlab: (index: number, buffer: SharedArrayBuffer) => void) {}
  add(data: Uint8Array): [number, number] {
    let slab = this.slabs.length - 1;
    if (slab < 0 || this.used + data.length > this.slabs[slab]!.byteLength) {
      this.slabs.push(new SharedArrayBuffer(Math.max(SlabStore.SLAB_BYTES, data.length)));
      slab++;
      this.used = 0;
      this.onSlab(slab, this.slabs[slab]!);
    }
    new Uint8Array(this.slabs[slab]!, this.used, data.length).set(data);
    const offset = this.used;
    this.used += data.length;
    return [slab, offset];
  }
}

interface Pending {
  resolve: (r: FromWorker) => void;
  reject: (e: Error) => void;
  keys: string[];
}

interface Thread {
  worker: Worker;
  pending: Map<number, Pending>;
}

/** Worker threads (or, with 0 workers, the same handler in-process) and their jobs. */
class Pool {
  private threads: (Thread | undefined)[];
  private readonly slabs: SharedArrayBuffer[] = [];
  private inline: ReturnType<typeof createHandler> | undefined;
  private nextId = 1;
  private closed = false;

  constructor(
    private readonly config: TransformConfig,
    count: number,
  ) {
    this.threads = new Array<Thread | undefined>(count).fill(undefined);
  }

  async run(msg: ToWorker & { id: number }, items: readonly JobItem[]): Promise<FromWorker> {
    if (this.closed) throw new Error('DataLoader: closed');
    const reply = this.threads.length === 0 ? await this.runInline(msg) : await this.runThread(msg, items);
    if (reply.type === 'fatal') {
      throw new Error(`DataLoader: worker failed on sample ${reply.key}: ${reply.message}`, { cause: reply.stack });
    }
    return reply;
  }

  addSlab(index: number, buffer: SharedArrayBuffer): void {
    this.slabs[index] = buffer;
    const msg: ToWorker = { type: 'slab', index, buffer };
    if (this.inline) void this.inline(msg);
    for (const t of this.threads) t?.worker.postMessage(msg);
  }

  async close(): Promise<void> {
    this.closed = true;
    const threads = this.threads.filter((t): t is Thread => t !== undefined);
    this.threads = this.threads.map(() => undefined);
    for (const t of threads) for (const p of t.pending.values()) p.reject(new Error('DataLoader: closed'));
    await Promise.all(threads.map((t) => t.worker.terminate()));
  }

  private async runInline(msg: ToWorker): Promise<FromWorker> {
    if (!this.inline) {
      this.inline = createHandler(this.config);
      for (const [index, buffer] of this.slabs.entries()) await this.inline({ type: 'slab', index, buffer });
    }
    const { reply } = await this.inline(msg);
    if (!reply) throw new Error('internal: no reply');
    return reply;
  }

  private runThread(msg: ToWorker & { id: number }, items: readonly JobItem[]): Promise<FromWorker> {
    // The least busy thread, started on first use (or again after a crash).
    let best = 0;
    for (let i = 0; i < this.threads.length; i++) {
      const n = this.threads[i]?.pending.size ?? 0;
      if (n < (this.threads[best]?.pending.size ?? 0)) best = i;
    }
    const t = (this.threads[best] ??= this.spawn(best));
    const id = this.nextId++;
    return new Promise<FromWorker>((resolve, reject) => {
      t.pending.set(id, { resolve, reject, keys: items.map((i) => i.key) });
      t.worker.ref(); // keep the process alive while a job is out
      t.worker.postMessage({ ...msg, id });
    });
  }

  private spawn(slot: number): Thread {
    const worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: { clipkitData: this.config } });
    const t: Thread = { worker, pending: new Map() };
    for (const [index, buffer] of this.slabs.entries()) worker.postMessage({ type: 'slab', index, buffer } satisfies ToWorker);
    worker.on('message', (reply: FromWorker) => {
      const p = t.pending.get(reply.id);
      if (!p) return;
      t.pending.delete(reply.id);
      if (t.pending.size === 0) worker.unref(); // an idle loader must not keep the process alive
      p.resolve(reply);
    });
    const fail = (err: Error): void => {
      if (this.threads[slot] === t) this.threads[slot] = undefined; // replaced on next use
      for (const p of t.pending.values()) {
        const keys = p.keys.length > 3 ? `${p.keys.slice(0, 3).join(', ')}, …` : p.keys.join(', ');
        p.reject(new Error(`DataLoader: worker crashed while processing ${keys}: ${err.message}`, { cause: err }));
      }
      t.pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => {
      if (!this.closed && t.pending.size > 0) fail(new Error(`worker exited with code ${code}`));
    });
    worker.unref();
    return t;
  }
}
