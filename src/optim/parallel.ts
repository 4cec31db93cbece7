// Data-parallel training step on one machine: `replicas` worker threads, each running the forward
// and backward graph single-threaded on an equal shard of the batch; a small update session on the
// main thread averages their gradients and applies clipping and AdamW (multi-threaded elementwise
// ops: in TypeScript the sum and the update of 0.4 M parameters took ~7 ms, a tenth of a step).
//
// Why: on a 2-core CPU a small model's step is mostly small GEMMs and elementwise ops, and ONNX
// Runtime's two intra-op threads synchronise at every one of a thousand nodes. Two independent
// single-threaded sessions on half the batch each do not synchronise at all until the gradients
// are summed (BENCHMARKS.md has the measurement). The loss must be a mean over examples (each
// replica's shard loss is averaged, so the gradient equals the full batch's): true of
// cross-entropy classification, not of a contrastive loss over the whole batch.
//
// Parameters live in one SharedArrayBuffer that every replica reads at the start of a step; the
// update runs while the replicas wait, so no replica ever reads a half-written parameter. Gradients
// come back by transfer and are fed to the update session as they are (no copy).
import { Worker } from 'node:worker_threads';
import { gradients } from '../autodiff/grad.js';
import { Graph, type Tensor } from '../graph/graph.js';
import * as o from '../graph/ops.js';
import type { ParamValues } from '../nn/init.js';
import { type Compiled, compile, toModel } from '../runtime/compile.js';
import type { HostTensor } from '../runtime/session.js';
import { type AdamWConfig, ADAMW_DEFAULTS, adamwGraph, adamwScalarInputs, adamwScalarValues } from './adamw.js';
import { constantLr } from './schedule.js';
import { type OptimizerState, type StepResult, type TrainStepOptions, validateAdamW } from './step.js';

export interface DataParallelOptions extends Pick<TrainStepOptions, 'optimizer' | 'weightDecayOf' | 'frozen' | 'clipNorm' | 'schedule' | 'clamp' | 'metrics'> {
  /** Worker threads; each batch input is split into this many equal shards along axis 0. */
  replicas: number;
  /** ONNX Runtime threads per replica (default 1). */
  threadsPerReplica?: number;
  /** ONNX Runtime threads of the update session (default 1: a pool would spin-wait after each update, on the cores the replicas are about to use). */
  updateThreads?: number;
}

interface Reply {
  id: number;
  ok: boolean;
  loss?: number;
  grad?: Float32Array;
  metrics?: Record<string, HostTensor>;
  error?: string;
}

/** One replica's worker thread and its requests in flight. */
class Replica {
  private next = 0;
  private readonly pending = new Map<number, { resolve: (r: Reply) => void; reject: (e: Error) => void }>();
  private dead: Error | undefined;

  private constructor(private readonly worker: Worker) {
    worker.on('message', (m: Reply) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m);
      else p.reject(new Error(m.error));
    });
    const failAll = (e: Error): void => {
      this.dead = e;
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
    };
    worker.on('error', failAll);
    worker.on('exit', (code) => failAll(new Error(`a training replica exited (code ${code})`)));
  }

  static async start(workerData: unknown): Promise<Replica> {
    const worker = new Worker(new URL('./replica-worker.js', import.meta.url), { workerData });
    await new Promise<void>((resolve, reject) => {
      worker.once('message', (m: { ready?: boolean; error?: string }) => (m.ready ? resolve() : reject(new Error(`a training replica failed to start: ${m.error}`))));
      worker.once('error', reject);
    });
    return new Replica(worker);
  }

  run(feeds: Record<string, HostTensor>, transfer: ArrayBuffer[]): Promise<Reply> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, feeds }, transfer);
    });
  }

  async close(): Promise<void> {
    this.worker.removeAllListeners('exit');
    await this.worker.terminate();
  }
}

export class DataParallelStep {
  /** Completed steps (AdamW's t after the last update). */
  t = 0;
  private closed = false;
  private constructor(
    readonly values: ParamValues,
    readonly trainable: string[],
    private readonly cfg: AdamWConfig,
    private readonly opts: DataParallelOptions,
    private readonly replicas: Replica[],
    /** Batch inputs (split across replicas) and their per-replica leading size. */
    private readonly sharded: Map<string, number>,
    private readonly layout: Map<string, { offset: number; length: number }>,
    /** The parameters the replicas read (shared); `values` holds views of it. */
    private readonly shared: Float32Array,
    private readonly update: Compiled,
    /** Parameters and moments fed to the update session, and the buffers it writes; swapped after each step. */
    private cur: { p: Float32Array; m: Float32Array; v: Float32Array },
    private next: { p: Float32Array; m: Float32Array; v: Float32Array },
  ) {}

  /**
   * `g` is the graph of one replica: its batch inputs have the shard's leading size (the full
   * batch divided by `replicas`); `loss` must be the mean over the shard's examples.
   */
  static async create(g: Graph, loss: Tensor, values: ParamValues, opts: DataParallelOptions): Promise<DataParallelStep> {
    const cfg = { ...ADAMW_DEFAULTS, ...opts.optimizer };
    validateAdamW(cfg);
    const k = opts.replicas;
    if (!Number.isInteger(k) || k < 1 || k > 64) throw new Error(`data parallel: replicas must be an integer in [1, 64], got ${k}`);
    const threads = opts.threadsPerReplica ?? 1;
    if (!Number.isInteger(threads) || threads < 1) throw new Error(`data parallel: threadsPerReplica must be a positive integer, got ${threads}`);
    const specs = [...g.params.values()];
    for (const p of specs) if (!values.has(p.name)) throw new Error(`no value for parameter '${p.name}'`);
    const trainable = specs.filter((p) => !opts.frozen?.(p.name)).map((p) => p.name);
    if (trainable.length === 0) throw new Error('data parallel: no trainable parameter');
    const frozenValues = new Map(specs.filter((p) => opts.frozen?.(p.name)).map((p) => [p.name, values.get(p.name)!]));
    const grads = gradients(loss, trainable.map((n) => g.params.get(n)!.tensor));

    const layout = new Map<string, { offset: number; length: number }>();
    let size = 0;
    for (const n of trainable) {
      const length = values.get(n)!.length;
      layout.set(n, { offset: size, length });
      size += length;
    }
    const outputs: Record<string, Tensor> = {
      loss: o.reshape(loss, []),
      'replica.grad': o.concat(
        trainable.map((n, i) => o.reshape(grads[i]!, [layout.get(n)!.length])),
        0,
      ),
    };
    for (const [name, t] of Object.entries(opts.metrics ?? {})) outputs[`metric.${name}`] = t;
    const { bytes } = toModel(g, outputs, { paramValues: frozenValues });

    const sharded = new Map<string, number>();
    for (const t of g.inputs) {
      const lead = t.shape[0];
      if (t.rank > 0 && typeof lead === 'number' && !g.params.has(t.name)) sharded.set(t.name, lead);
    }

    const paramBuffer = new SharedArrayBuffer(size * 4);
    const shared = new Float32Array(paramBuffer);
    for (const n of trainable) {
      const { offset, length } = layout.get(n)!;
      shared.set(values.get(n)!, offset);
      values.set(n, shared.subarray(offset, offset + length));
    }

    // The update: mean of the replica gradients, optional clipping, AdamW — over the flat vector.
    const ug = new Graph('update');
    const gs = Array.from({ length: k }, (_, r) => ug.input(`g${r}`, [size]));
    let gMean = gs.reduce((a, b) => o.add(a, b));
    if (k > 1) gMean = o.mul(gMean, 1 / k);
    const uOut: Record<string, Tensor> = {};
    if (opts.clipNorm !== undefined) {
      const norm = o.sqrt(o.reduceSum(o.square(gMean)));
      gMean = o.mul(gMean, o.min(o.div(ug.input('opt.max_norm', [], 'float32'), o.add(norm, 1e-6)), 1));
      uOut.grad_norm = norm;
    }
    const wdOf = trainable.map((n) => opts.weightDecayOf?.(n, g.params.get(n)!.shape) ?? cfg.weightDecay);
    let wd: number | Tensor = wdOf[0]!;
    if (wdOf.some((d) => d !== wd)) {
      const perElement = new Float32Array(size);
      trainable.forEach((n, i) => perElement.fill(wdOf[i]!, layout.get(n)!.offset, layout.get(n)!.offset + layout.get(n)!.length));
      wd = o.constant(ug, perElement, [size]);
    }
    const u = adamwGraph(ug.input('p', [size]), gMean, ug.input('m', [size]), ug.input('v', [size]), adamwScalarInputs(ug, 'opt.'), cfg, wd);
    Object.assign(uOut, { 'new.p': u.p, 'new.m': u.m, 'new.v': u.v });
    const update = await compile(ug, uOut, { threads: opts.updateThreads ?? 1, cacheKey: false });

    const shapes = trainable.map((n) => ({ name: n, ...layout.get(n)!, shape: [...g.params.get(n)!.shape] as number[] }));
    const replicas: Replica[] = [];
    try {
      for (let r = 0; r < k; r++) replicas.push(await Replica.start({ model: bytes, threads, params: shapes, paramBuffer }));
    } catch (e) {
      await Promise.all(replicas.map((r) => r.close()));
      throw e;
    }
    const buffers = () => ({ p: new Float32Array(size), m: new Float32Array(size), v: new Float32Array(size) });
    const cur = buffers();
    cur.p.set(shared);
    return new DataParallelStep(values, trainable, cfg, opts, replicas, sharded, layout, shared, update, cur, buffers());
  }

  lrAt(step: number): number {
    return (this.opts.schedule ?? constantLr(this.cfg.lr))(step);
  }

  /** One optimisation step on a (full) batch; returns the mean loss before the update. */
  async step(batch: Record<string, HostTensor>): Promise<StepResult> {
    const k = this.replicas.length;
    const shards: { feeds: Record<string, HostTensor>; transfer: ArrayBuffer[] }[] = Array.from({ length: k }, () => ({ feeds: {}, transfer: [] }));
    for (const [name, t] of Object.entries(batch)) {
      const lead = this.sharded.get(name);
      if (lead === undefined) {
        for (const s of shards) s.feeds[name] = t;
        continue;
      }
      if (t.shape[0] !== lead * k) throw new Error(`input '${name}': leading size ${t.shape[0]}, expected ${lead * k} (${k} replicas × ${lead})`);
      const per = t.data.length / k;
      shards.forEach((s, r) => {
        // A copy of just this shard: postMessage would otherwise clone the whole underlying buffer.
        const data = t.data.slice(r * per, (r + 1) * per);
        s.feeds[name] = { data, shape: [lead, ...t.shape.slice(1)], ...(t.dtype ? { dtype: t.dtype } : {}) };
        s.transfer.push(data.buffer as ArrayBuffer);
      });
    }
    const replies = await Promise.all(this.replicas.map((r, i) => r.run(shards[i]!.feeds, shards[i]!.transfer)));

    const lr = this.lrAt(this.t);
    const t = this.t + 1;
    const s = adamwScalarValues(this.cfg, lr, t);
    const size = this.shared.length;
    const feeds: Record<string, HostTensor> = {
      p: { data: this.cur.p, shape: [size] },
      m: { data: this.cur.m, shape: [size] },
      v: { data: this.cur.v, shape: [size] },
      'opt.lr': scalar(s.lr),
      'opt.a': scalar(s.a),
      'opt.e': scalar(s.e),
    };
    replies.forEach((r, i) => (feeds[`g${i}`] = { data: r.grad!, shape: [size] }));
    if (this.opts.clipNorm !== undefined) feeds['opt.max_norm'] = scalar(this.opts.clipNorm);
    const into = { 'new.p': { data: this.next.p, shape: [size] }, 'new.m': { data: this.next.m, shape: [size] }, 'new.v': { data: this.next.v, shape: [size] } };
    const res = await this.update.run(feeds, into);
    [this.cur, this.next] = [this.next, this.cur];
    for (const [name, [lo, hi]] of Object.entries(this.opts.clamp ?? {})) {
      const at = this.layout.get(name);
      if (!at) continue;
      const p = this.cur.p.subarray(at.offset, at.offset + at.length);
      for (let i = 0; i < p.length; i++) p[i] = Math.min(Math.max(p[i]!, lo), hi);
    }
    this.shared.set(this.cur.p);
    const gradNorm = res.grad_norm ? Number(res.grad_norm.data[0]) : undefined;
    this.t = t;
    const metrics: Record<string, HostTensor> = {};
    for (const key of Object.keys(replies[0]!.metrics ?? {})) {
      // Scalar metrics are averaged over the replicas; others are replica 0's.
      const first = replies[0]!.metrics![key]!;
      if (first.data.length !== 1) metrics[key] = first;
      else metrics[key] = { data: Float32Array.of(replies.reduce((a, r) => a + Number(r.metrics![key]!.data[0]), 0) / k), shape: first.shape };
    }
    return { loss: replies.reduce((a, r) => a + r.loss!, 0) / k, lr, gradNorm, metrics };
  }

  /** The optimizer state (for checkpoints): step count and both moments, by parameter name. */
  get state(): OptimizerState {
    const views = (a: Float32Array): Map<string, Float32Array> =>
      new Map(this.trainable.map((n) => {
        const { offset, length } = this.layout.get(n)!;
        return [n, a.subarray(offset, offset + length)];
      }));
    return { step: this.t, m: views(this.cur.m), v: views(this.cur.v) };
  }

  /** Restores a saved optimizer state; parameters are taken from `values` if they were replaced. */
  loadState(s: OptimizerState): void {
    for (const n of this.trainable) {
      const { offset, length } = this.layout.get(n)!;
      for (const [key, src, dst] of [['m', s.m.get(n), this.cur.m], ['v', s.v.get(n), this.cur.v]] as const) {
        if (!src) throw new Error(`optimizer state lacks ${key} for '${n}'`);
        if (src.length !== length) throw new Error(`optimizer state ${key} for '${n}' has ${src.length} values, expected ${length}`);
        dst.set(src, offset);
      }
      const p = this.values.get(n)!;
      const mine = this.shared.subarray(offset, offset + length);
      if (p !== mine) {
        mine.set(p);
        this.values.set(n, mine);
      }
    }
    this.cur.p.set(this.shared);
    this.t = s.step;
  }

  /** Stops the replicas. The parameter arrays stay valid (shared memory outlives the workers). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.replicas.map((r) => r.close()));
    await this.update.session.release();
  }
}

function scalar(v: number): HostTensor {
  return { data: Float32Array.of(v), shape: [] };
}
