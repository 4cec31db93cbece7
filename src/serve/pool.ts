// A fixed pool of inference workers. A caller leases a whole worker (acquire → run → release), so a
// worker runs one batch at a time and the batchers can see when every worker is busy — the moment
// requests should pile up into the next batch instead of being sent off one by one.
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { FromInferWorker, Job, JobResult, WorkerInit } from './protocol.js';

export interface PoolOptions {
  vision: string;
  texts: { length: number; path: string }[];
  imageSize: number;
  /** Worker threads; default 1. */
  workers?: number;
  /** ONNX Runtime threads per worker; default cores / workers (at least 1). */
  threads?: number;
}

export interface Lease {
  run(job: Job): Promise<JobResult>;
  release(): void;
}

interface Slot {
  worker: Worker;
  pending?: { id: number; resolve: (r: JobResult) => void; reject: (e: Error) => void };
}

export class InferencePool {
  private idleSlots: Slot[] = [];
  /** Started and not exited (idle or busy). */
  private alive = new Set<Slot>();
  private waiters: { resolve: (s: Slot) => void; reject: (e: Error) => void }[] = [];
  private nextId = 0;
  private closed = false;
  /** Workers that died and were replaced (a crash in native code, out of memory). */
  restarts = 0;

  private constructor(private readonly init: WorkerInit) {}

  static async start(o: PoolOptions): Promise<InferencePool> {
    const workers = o.workers ?? 1;
    if (!(Number.isInteger(workers) && workers >= 1)) throw new Error(`InferencePool: workers must be a positive integer, got ${workers}`);
    // CLIPKIT_THREADS caps ONNX Runtime's threads per session everywhere else too (runtime/session.ts).
    const env = Number(process.env.CLIPKIT_THREADS);
    const threads = o.threads ?? (Number.isInteger(env) && env > 0 ? env : Math.max(1, Math.floor(availableParallelism() / workers)));
    const pool = new InferencePool({ vision: o.vision, texts: o.texts, imageSize: o.imageSize, threads });
    const started = await Promise.allSettled(Array.from({ length: workers }, () => pool.spawn()));
    const failed = started.find((s) => s.status === 'rejected');
    if (failed) {
      await pool.close(); // the workers that did start
      throw (failed as PromiseRejectedResult).reason;
    }
    pool.idleSlots.push(...pool.alive);
    return pool;
  }

  /** Workers running (idle or busy). */
  get size(): number {
    return this.alive.size;
  }

  /** Workers free right now. */
  get idle(): number {
    return this.idleSlots.length;
  }

  /** Resolves with a worker of one's own; waiters are served first come, first served. */
  acquire(): Promise<Lease> {
    if (this.closed) return Promise.reject(new Error('the inference pool is closed'));
    const slot = this.idleSlots.pop();
    if (slot) return Promise.resolve(this.lease(slot));
    return new Promise((resolve, reject) => this.waiters.push({ resolve: (s) => resolve(this.lease(s)), reject }));
  }

  /** One job on whichever worker frees up first. */
  async run(job: Job): Promise<JobResult> {
    const lease = await this.acquire();
    try {
      return await lease.run(job);
    } finally {
      lease.release();
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w.reject(new Error('the inference pool is closed'));
    const all = [...this.alive];
    this.alive.clear();
    this.idleSlots = [];
    await Promise.all(all.map((s) => (s.worker.removeAllListeners('exit'), s.worker.terminate())));
  }

  private lease(slot: Slot): Lease {
    let released = false;
    return {
      run: (job) => this.send(slot, job),
      release: () => {
        if (released) return;
        released = true;
        if (this.closed || !this.alive.has(slot)) return;
        this.handOver(slot);
      },
    };
  }

  /** A free worker goes to the longest waiter, else back to the idle list. */
  private handOver(slot: Slot): void {
    if (this.closed) return void slot.worker.terminate(); // a replacement that finished starting too late
    const w = this.waiters.shift();
    if (w) w.resolve(slot);
    else this.idleSlots.push(slot);
  }

  private send(slot: Slot, job: Job): Promise<JobResult> {
    if (!this.alive.has(slot)) return Promise.reject(new Error('the inference worker has exited'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      slot.pending = { id, resolve, reject };
      // Pixels and token ids are transferred (the caller built them for this job); encoded images are
      // copied, since a request's buffer may be a slice of a larger pooled one.
      const transfer = job.op === 'pixels' ? [job.pixels.buffer as ArrayBuffer] : job.op === 'texts' ? [job.ids.buffer as ArrayBuffer] : [];
      slot.worker.postMessage({ ...job, id }, transfer);
    });
  }

  private async spawn(): Promise<Slot> {
    const worker = new Worker(new URL('./infer-worker.js', import.meta.url), { workerData: this.init });
    const slot: Slot = { worker };
    await new Promise<void>((resolve, reject) => {
      worker.once('message', (m: FromInferWorker) => ('ready' in m && m.ready ? resolve() : reject(new Error(`inference worker: ${'error' in m ? m.error : 'failed to start'}`))));
      worker.once('error', reject);
    });
    this.alive.add(slot);
    worker.on('message', (m: FromInferWorker) => {
      if (!('id' in m) || slot.pending?.id !== m.id) return;
      const p = slot.pending;
      slot.pending = undefined;
      if (m.ok) p.resolve({ features: m.features, ...(m.errors ? { errors: m.errors } : {}) });
      else p.reject(new Error(m.error));
    });
    const died = (why: string): void => {
      if (!this.alive.delete(slot)) return;
      slot.pending?.reject(new Error(`the inference worker died: ${why}`));
      slot.pending = undefined;
      this.idleSlots = this.idleSlots.filter((s) => s !== slot);
      if (this.closed) return;
      // Keep the pool at its size: a replacement joins when it has loaded the model.
      this.restarts++;
      this.spawn().then(
        (s) => this.handOver(s),
        (e: unknown) => console.error(`serve: cannot restart an inference worker: ${(e as Error).message}`),
      );
    };
    worker.on('error', (e) => died(e.message));
    worker.on('exit', (code) => died(`exit code ${code}`));
    return slot;
  }
}
