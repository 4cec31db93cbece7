// Dynamic micro-batching. Requests queue here; a batch of up to maxBatch queued items goes to a
// worker when one is free. Items pile up naturally while every worker is busy, and when a worker is
// idle the batcher still waits a short window (a few ms) so that requests arriving together share
// one tower run: a batch of 16 costs far less than 16 runs of one. The queue is bounded: past
// maxQueue waiting items a request is refused at once (the server answers 503) rather than waiting
// ever longer.
import type { Lease } from './pool.js';

export class QueueFullError extends Error {
  override name = 'QueueFullError';
}

export interface BatcherOptions<I, O> {
  /** Items per batch (1: no batching). */
  maxBatch: number;
  /** Items allowed to wait (not counting those in running batches). */
  maxQueue: number;
  /** How long to collect more items before sending a batch to an idle worker. */
  windowMs: number;
  /** Runs one batch on a leased worker: a result or an Error per item. */
  run(lease: Lease, items: I[]): Promise<(O | Error)[]>;
}

export interface Batched<O> {
  value: O;
  /** Size of the batch the item ran in. */
  batchSize: number;
}

export interface BatchStats {
  batches: number;
  items: number;
  /** Requests refused because the queue was full. */
  rejected: number;
  queued: number;
  largestBatch: number;
  /** batch size → number of batches of that size. */
  sizes: Record<number, number>;
}

interface Waiting<I, O> {
  item: I;
  resolve: (r: Batched<O>) => void;
  reject: (e: Error) => void;
}

export class MicroBatcher<I, O> {
  private queue: Waiting<I, O>[] = [];
  private pumping = false;
  readonly stats: BatchStats = { batches: 0, items: 0, rejected: 0, queued: 0, largestBatch: 0, sizes: {} };

  constructor(
    private readonly pool: { readonly idle: number; acquire(): Promise<Lease> },
    private readonly o: BatcherOptions<I, O>,
  ) {
    if (!(Number.isInteger(o.maxBatch) && o.maxBatch >= 1)) throw new Error(`maxBatch must be a positive integer, got ${o.maxBatch}`);
    if (!(Number.isInteger(o.maxQueue) && o.maxQueue >= 1)) throw new Error(`maxQueue must be a positive integer, got ${o.maxQueue}`);
  }

  get maxQueue(): number {
    return this.o.maxQueue;
  }

  /** Queues the items of one request together: all are admitted, or none (QueueFullError). */
  submit(items: readonly I[]): Promise<Batched<O>>[] {
    if (this.queue.length + items.length > this.o.maxQueue) {
      this.stats.rejected++;
      throw new QueueFullError(`the inference queue is full (${this.queue.length} waiting, limit ${this.o.maxQueue}); retry shortly`);
    }
    const out = items.map((item) => new Promise<Batched<O>>((resolve, reject) => this.queue.push({ item, resolve, reject })));
    this.stats.queued = this.queue.length;
    void this.pump();
    return out;
  }

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.queue.length > 0) {
        // Only worth waiting when a worker is idle: otherwise waiting for one collects items anyway.
        if (this.o.windowMs > 0 && this.o.maxBatch > 1 && this.queue.length < this.o.maxBatch && this.pool.idle > 0) {
          await new Promise((r) => setTimeout(r, this.o.windowMs));
        }
        const lease = await this.pool.acquire();
        const batch = this.queue.splice(0, this.o.maxBatch);
        this.stats.queued = this.queue.length;
        if (batch.length === 0) {
          lease.release();
          continue;
        }
        void this.execute(lease, batch);
      }
    } catch (e) {
      // acquire failed (the pool closed): nothing queued can run any more.
      for (const w of this.queue.splice(0)) w.reject(e as Error);
    } finally {
      this.pumping = false;
    }
  }

  private async execute(lease: Lease, batch: Waiting<I, O>[]): Promise<void> {
    const n = batch.length;
    this.stats.batches++;
    this.stats.items += n;
    this.stats.largestBatch = Math.max(this.stats.largestBatch, n);
    this.stats.sizes[n] = (this.stats.sizes[n] ?? 0) + 1;
    try {
      const results = await this.o.run(
        lease,
        batch.map((w) => w.item),
      );
      batch.forEach((w, i) => {
        const r = results[i]!;
        if (r instanceof Error) w.reject(r);
        else w.resolve({ value: r, batchSize: n });
      });
    } catch (e) {
      for (const w of batch) w.reject(e as Error);
    } finally {
      lease.release();
    }
  }
}
