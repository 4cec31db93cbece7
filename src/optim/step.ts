// A compiled training step: forward, backward (our autodiff), optional global-norm clipping and the
// AdamW update, as one ONNX Runtime session. Parameters and both moments are inputs and outputs;
// ORT writes the outputs straight into a second set of buffers we own (pre-allocated fetches), and
// the two sets swap after each step — no JS loop over the weights.
//
// onnxruntime-node 1.30 still copies every output into a fresh ArrayBuffer after the run, even a
// pre-allocated one (the copy is discarded here). A fresh buffer above glibc's mmap threshold
// (32 MB at most) is new memory, and touching it costs ~0.8 ms per MB in page faults on this
// machine: three 50 MB copies (a 49,408-token embedding's p, m and v) were ~120 ms of a 2 s step.
// So every output above OUTPUT_PIECE elements leaves the graph as flat pieces, each written into a
// view of our contiguous buffer; the discarded copies are then small and recycled by malloc.
// The alternative (`update: 'js'`: the session returns gradients, AdamW runs in TypeScript) is kept
// for the benchmark that chose between them (BENCHMARKS.md).
//
// Parameters up to OUTPUT_PIECE elements form one flat group: their values and moments live in one
// contiguous buffer each (the per-parameter arrays are views of it, fed zero-copy), the gradients
// are concatenated, and AdamW runs once over the group — 13 passes in total instead of 13 small
// ops per tensor, whose per-node cost dominated the update of a small ViT (~9 ms of a 113 ms step).
import { gradients } from '../autodiff/grad.js';
import type { Graph, Tensor } from '../graph/graph.js';
import * as o from '../graph/ops.js';
import { type Compiled, compile } from '../runtime/compile.js';
import type { HostTensor } from '../runtime/session.js';
import type { ParamValues } from '../nn/init.js';
import { type AdamWConfig, ADAMW_DEFAULTS, adamwGraph, adamwInPlace, adamwScalarInputs, adamwScalarValues, clipGradNorm } from './adamw.js';
import { type Schedule, constantLr } from './schedule.js';

/** Outputs larger than this (elements) are fetched in pieces (see the header). */
export const OUTPUT_PIECE = 1 << 20;

/** Piece lengths of a flat output of `size` elements, or null when it leaves the graph whole. */
export function outputPieces(size: number, piece = OUTPUT_PIECE): number[] | null {
  if (size <= piece) return null;
  const out: number[] = [];
  for (let off = 0; off < size; off += piece) out.push(Math.min(piece, size - off));
  return out;
}

export interface TrainStepOptions {
  optimizer?: Partial<AdamWConfig>;
  /** Weight decay for a parameter (default: the optimizer's, for every parameter). */
  weightDecayOf?: (name: string, shape: readonly number[]) => number;
  /** Parameters left untouched (e.g. a locked image tower); baked into the session as constants. */
  frozen?: (name: string) => boolean;
  /** Global gradient-norm clipping threshold (off when undefined). */
  clipNorm?: number;
  schedule?: Schedule;
  /** Clamp a parameter to [lo, hi] after each update (e.g. CLIP's logit_scale ≤ ln 100). */
  clamp?: Record<string, [number, number]>;
  /** Extra scalar/tensor outputs to fetch each step (e.g. accuracy). */
  metrics?: Record<string, Tensor>;
  update?: 'graph' | 'js';
  threads?: number;
  /** Write ONNX Runtime's per-op profile with this file prefix (see `endProfiling`). */
  profile?: string;
  /** Outputs above this many elements are fetched in pieces (default OUTPUT_PIECE; see the header). */
  outputPiece?: number;
  /** Update the parameters up to `outputPiece` elements as one flat group (default true; see the header). */
  flatGroup?: boolean;
}

export interface StepResult {
  loss: number;
  lr: number;
  gradNorm?: number;
  metrics: Record<string, HostTensor>;
}

/** The name under which the flat group's buffers are keyed (not a parameter name: '#' is never one). */
const FLAT = '#flat';

interface Buffers {
  p: Map<string, Float32Array>;
  m: Map<string, Float32Array>;
  v: Map<string, Float32Array>;
  /** The flat group's contiguous buffers; the maps hold views of them for its parameters. */
  flat?: { p: Float32Array; m: Float32Array; v: Float32Array };
}

export interface OptimizerState {
  step: number;
  m: Map<string, Float32Array>;
  v: Map<string, Float32Array>;
}

export class TrainStep {
  /** Completed steps (AdamW's t after the last update). */
  t = 0;
  private constructor(
    private readonly c: Compiled,
    readonly values: ParamValues,
    readonly trainable: string[],
    private readonly cfg: AdamWConfig,
    private readonly o: TrainStepOptions,
    private cur: Buffers,
    private next: Buffers,
    private readonly wds: Map<string, number>,
    private readonly shapes: Map<string, readonly number[]>,
    private readonly pieces: Map<string, number[] | null>,
    /** Parameters updated in the flat group, and their offsets in it. */
    private readonly flat: Map<string, number>,
  ) {}

  static async create(g: Graph, loss: Tensor, values: ParamValues, opts: TrainStepOptions = {}): Promise<TrainStep> {
    const cfg = { ...ADAMW_DEFAULTS, ...opts.optimizer };
    validate(cfg);
    const mode = opts.update ?? 'graph';
    const specs = [...g.params.values()];
    for (const p of specs) if (!values.has(p.name)) throw new Error(`no value for parameter '${p.name}'`);
    const trainable = specs.filter((p) => !opts.frozen?.(p.name)).map((p) => p.name);
    const frozenValues = new Map(specs.filter((p) => opts.frozen?.(p.name)).map((p) => [p.name, values.get(p.name)!]));
    const params = trainable.map((n) => g.params.get(n)!.tensor);
    let grads = gradients(loss, params);

    const outputs: Record<string, Tensor> = { loss: o.reshape(loss, []) };
    let gradNorm: Tensor | undefined;
    if (opts.clipNorm !== undefined) {
      const clipped = clipGradNorm(grads, g.input('opt.max_norm', [], 'float32'));
      grads = clipped.grads;
      gradNorm = clipped.norm;
      outputs.grad_norm = gradNorm;
    }
    const wds = new Map(trainable.map((n) => [n, opts.weightDecayOf?.(n, g.params.get(n)!.shape) ?? cfg.weightDecay]));
    const pieces = new Map(trainable.map((n) => [n, outputPieces(values.get(n)!.length, opts.outputPiece)]));
    const put = (key: string, t: Tensor, name: string): void => {
      const ps = pieces.get(name);
      if (!ps) {
        outputs[key] = t;
        return;
      }
      o.split(o.reshape(t, [ps.reduce((a, b) => a + b, 0)]), 0, ps).forEach((piece, k) => (outputs[`${key}#${k}`] = piece));
    };
    const piece = opts.outputPiece ?? OUTPUT_PIECE;
    const flatNames = mode === 'graph' && opts.flatGroup !== false ? trainable.filter((n) => values.get(n)!.length <= piece) : [];
    const flat = new Map<string, number>();
    let flatSize = 0;
    if (flatNames.length >= 2) {
      for (const n of flatNames) {
        flat.set(n, flatSize);
        flatSize += values.get(n)!.length;
      }
      pieces.set(FLAT, outputPieces(flatSize, opts.outputPiece));
    }
    const shapes = new Map<string, readonly number[]>([...specs.map((p) => [p.name, p.shape] as const), [FLAT, [flatSize]]]);
    if (mode === 'graph') {
      const s = adamwScalarInputs(g, 'opt.');
      if (flat.size) {
        const names = [...flat.keys()];
        const gs = names.map((n) => o.reshape(grads[trainable.indexOf(n)]!, [values.get(n)!.length]));
        const decays = names.map((n) => wds.get(n)!);
        let wd: number | Tensor = decays[0]!;
        if (decays.some((d) => d !== wd)) {
          const perElement = new Float32Array(flatSize);
          for (const n of names) perElement.fill(wds.get(n)!, flat.get(n)!, flat.get(n)! + values.get(n)!.length);
          wd = o.constant(g, perElement, [flatSize]);
        }
        const u = adamwGraph(g.input(`opt.${FLAT}.p`, [flatSize]), o.concat(gs, 0), g.input(`opt.${FLAT}.m`, [flatSize]), g.input(`opt.${FLAT}.v`, [flatSize]), s, cfg, wd);
        put(`new.${FLAT}`, u.p, FLAT);
        put(`new.m.${FLAT}`, u.m, FLAT);
        put(`new.v.${FLAT}`, u.v, FLAT);
      }
      trainable.forEach((name, i) => {
        if (flat.has(name)) return;
        const p = params[i]!;
        const m = g.input(`opt.m.${name}`, p.shape);
        const v = g.input(`opt.v.${name}`, p.shape);
        const u = adamwGraph(p, grads[i]!, m, v, s, cfg, wds.get(name)!);
        put(`new.${name}`, u.p, name);
        put(`new.m.${name}`, u.m, name);
        put(`new.v.${name}`, u.v, name);
      });
    } else {
      trainable.forEach((name, i) => put(`grad.${name}`, grads[i]!, name));
    }
    for (const [k, t] of Object.entries(opts.metrics ?? {})) outputs[`metric.${k}`] = t;
    const c = await compile(g, outputs, { paramValues: frozenValues, threads: opts.threads, cacheKey: false, profile: opts.profile });
    // 'graph' ping-pongs parameters and both moments; 'js' only needs a gradient buffer per parameter.
    const buffers = (withMoments: boolean): Buffers => {
      const f = flat.size ? { p: new Float32Array(flatSize), m: new Float32Array(flatSize), v: new Float32Array(flatSize) } : undefined;
      const map = (key: 'p' | 'm' | 'v'): Map<string, Float32Array> =>
        new Map(trainable.map((n) => {
          const len = values.get(n)!.length;
          const off = flat.get(n);
          return [n, f && off !== undefined ? f[key].subarray(off, off + len) : new Float32Array(len)];
        }));
      return { p: map('p'), m: withMoments ? map('m') : new Map(), v: withMoments ? map('v') : new Map(), flat: f };
    };
    const cur = buffers(true);
    for (const n of trainable) {
      if (flat.has(n)) cur.p.get(n)!.set(values.get(n)!);
      else cur.p.set(n, values.get(n)!);
    }
    const next = buffers(mode === 'graph');
    return new TrainStep(c, values, trainable, cfg, opts, cur, next, wds, shapes, pieces, flat);
  }

  lrAt(step: number): number {
    return (this.o.schedule ?? constantLr(this.cfg.lr))(step);
  }

  /** One optimisation step on a batch; returns the loss before the update. */
  async step(batch: Record<string, HostTensor>): Promise<StepResult> {
    const lr = this.lrAt(this.t);
    const t = this.t + 1;
    const feeds: Record<string, HostTensor> = { ...batch };
    for (const n of this.trainable) feeds[n] = this.host(n, this.cur.p.get(n)!);
    if (this.o.clipNorm !== undefined) feeds['opt.max_norm'] = scalarF(this.o.clipNorm);
    const into: Record<string, HostTensor> = {};
    const graphUpdate = (this.o.update ?? 'graph') === 'graph';
    if (graphUpdate) {
      const s = adamwScalarValues(this.cfg, lr, t);
      feeds['opt.lr'] = scalarF(s.lr);
      feeds['opt.a'] = scalarF(s.a);
      feeds['opt.e'] = scalarF(s.e);
      const cf = this.cur.flat;
      if (cf) {
        feeds[`opt.${FLAT}.p`] = this.host(FLAT, cf.p);
        feeds[`opt.${FLAT}.m`] = this.host(FLAT, cf.m);
        feeds[`opt.${FLAT}.v`] = this.host(FLAT, cf.v);
        const nf = this.next.flat!;
        this.intoPieces(into, `new.${FLAT}`, FLAT, nf.p);
        this.intoPieces(into, `new.m.${FLAT}`, FLAT, nf.m);
        this.intoPieces(into, `new.v.${FLAT}`, FLAT, nf.v);
      }
      for (const n of this.trainable) {
        if (this.flat.has(n)) continue;
        feeds[`opt.m.${n}`] = this.host(n, this.cur.m.get(n)!);
        feeds[`opt.v.${n}`] = this.host(n, this.cur.v.get(n)!);
        this.intoPieces(into, `new.${n}`, n, this.next.p.get(n)!);
        this.intoPieces(into, `new.m.${n}`, n, this.next.m.get(n)!);
        this.intoPieces(into, `new.v.${n}`, n, this.next.v.get(n)!);
      }
    } else {
      for (const n of this.trainable) this.intoPieces(into, `grad.${n}`, n, this.next.p.get(n)!);
    }
    const res = await this.c.run(feeds, into);
    if (graphUpdate) {
      [this.cur, this.next] = [this.next, this.cur];
    } else {
      for (const n of this.trainable) {
        adamwInPlace(this.cur.p.get(n)!, this.next.p.get(n)!, this.cur.m.get(n)!, this.cur.v.get(n)!, this.cfg, lr, t, this.wds.get(n)!);
      }
    }
    for (const [name, [lo, hi]] of Object.entries(this.o.clamp ?? {})) {
      const p = this.cur.p.get(name);
      if (p) for (let i = 0; i < p.length; i++) p[i] = Math.min(Math.max(p[i]!, lo), hi);
    }
    for (const n of this.trainable) this.values.set(n, this.cur.p.get(n)!);
    this.t = t;
    const metrics: Record<string, HostTensor> = {};
    for (const [k, v] of Object.entries(res)) if (k.startsWith('metric.')) metrics[k.slice(7)] = v;
    return {
      loss: Number(res.loss!.data[0]),
      lr,
      gradNorm: res.grad_norm ? Number(res.grad_norm.data[0]) : undefined,
      metrics,
    };
  }

  /** Ends ONNX Runtime profiling (steps created with `profile`); the JSON file is written. */
  endProfiling(): void {
    this.c.session.endProfiling();
  }

  /** Frees the session; the step cannot be used afterwards (the parameter arrays stay valid). */
  async close(): Promise<void> {
    await this.c.session.release();
  }

  /** The optimizer state (for checkpoints): step count and both moments, by parameter name. */
  get state(): OptimizerState {
    return { step: this.t, m: this.cur.m, v: this.cur.v };
  }

  /** Restores a saved optimizer state (moments are copied into the live buffers). */
  loadState(s: OptimizerState): void {
    for (const n of this.trainable) {
      for (const [key, src] of [['m', s.m.get(n)], ['v', s.v.get(n)]] as const) {
        if (!src) throw new Error(`optimizer state lacks ${key} for '${n}'`);
        const dst = this.cur[key].get(n)!;
        if (src.length !== dst.length) throw new Error(`optimizer state ${key} for '${n}' has ${src.length} values, expected ${dst.length}`);
        dst.set(src);
      }
      const p = this.values.get(n)!;
      if (p !== this.cur.p.get(n)) this.cur.p.get(n)!.set(p);
    }
    this.t = s.step;
  }

  /** The output buffer of `key`: the whole array, or flat views of it for a pieced output. */
  private intoPieces(into: Record<string, HostTensor>, key: string, name: string, buf: Float32Array): void {
    const ps = this.pieces.get(name);
    if (!ps) {
      into[key] = this.host(name, buf);
      return;
    }
    let off = 0;
    ps.forEach((len, k) => {
      into[`${key}#${k}`] = { data: buf.subarray(off, off + len), shape: [len] };
      off += len;
    });
  }

  private host(name: string, data: Float32Array): HostTensor {
    return { data, shape: this.shapes.get(name)! };
  }
}

function scalarF(v: number): HostTensor {
  return { data: Float32Array.of(v), shape: [] };
}

function validate(c: AdamWConfig): void {
  const bad = (what: string): never => {
    throw new Error(`AdamW: ${what}`);
  };
  if (!(c.lr >= 0) || !Number.isFinite(c.lr)) bad(`lr must be a finite number ≥ 0, got ${c.lr}`);
  if (!Array.isArray(c.betas) || c.betas.length !== 2 || c.betas.some((b) => !(b >= 0 && b < 1))) bad(`betas must be two numbers in [0, 1), got ${JSON.stringify(c.betas)}`);
  if (!(c.eps > 0)) bad(`eps must be > 0, got ${c.eps}`);
  if (!(c.weightDecay >= 0) || !Number.isFinite(c.weightDecay)) bad(`weightDecay must be ≥ 0, got ${c.weightDecay}`);
}
