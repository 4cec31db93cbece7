// 4. Where should the AdamW update run? TrainStep can either put it in the training graph (ORT runs
// ~12 unfused elementwise kernels per parameter tensor, multi-threaded, writing new p/m/v straight
// into buffers we own) or fetch the gradients and run one fused loop in TypeScript (single-threaded,
// one pass over memory). This measures the update alone at 1M, 10M and 50M parameters, plus the
// in-graph update with outputs fetched as fresh arrays (the copy onnxruntime-node makes when no
// output buffer is supplied), beside torch.optim.AdamW.
import type { Ctx } from './bench.js';
import { buffer, host, randn } from './data.js';
import { type Row, printTable } from './report.js';
import { measureInterleaved } from './stats.js';
import { at, best, runTorch } from './torch.js';
import { Graph, type Tensor } from '../src/graph/graph.js';
import { ADAMW_DEFAULTS, adamwGraph, adamwInPlace, adamwScalarInputs, adamwScalarValues } from '../src/optim/adamw.js';
import { compile } from '../src/runtime/compile.js';
import type { HostTensor } from '../src/runtime/session.js';

/** A model's parameters in a few tensors: here four of equal size. */
const TENSORS = 4;
const CFG = { ...ADAMW_DEFAULTS, weightDecay: 0.01 };

async function placeAt(total: number, threads: number[], reps: { warmup: number; reps: number }): Promise<Row[]> {
  const n = total / TENSORS;
  const shape = [n];
  const names = Array.from({ length: TENSORS }, (_, i) => `p${i}`);
  const p = names.map((k) => randn(n, `p.${k}`, 0.02));
  const gr = names.map((k) => randn(n, `g.${k}`, 1e-3));
  const m = names.map(() => new Float32Array(n));
  const v = names.map(() => new Float32Array(n));
  const label = `${total / 1e6}M`;

  // The update as a graph: params, grads and both moments in, new params and moments out.
  const g = new Graph('adamw');
  const s = adamwScalarInputs(g, '');
  const outs: Record<string, Tensor> = {};
  names.forEach((k) => {
    const u = adamwGraph(g.input(k, shape), g.input(`g.${k}`, shape), g.input(`m.${k}`, shape), g.input(`v.${k}`, shape), s, CFG, CFG.weightDecay);
    outs[`new.${k}`] = u.p;
    outs[`new.m.${k}`] = u.m;
    outs[`new.v.${k}`] = u.v;
  });
  const sc = adamwScalarValues(CFG, CFG.lr, 10);
  const feeds: Record<string, HostTensor> = {
    lr: host(Float32Array.of(sc.lr), []),
    a: host(Float32Array.of(sc.a), []),
    e: host(Float32Array.of(sc.e), []),
  };
  names.forEach((k, i) => {
    feeds[k] = host(p[i]!, shape);
    feeds[`g.${k}`] = host(gr[i]!, shape);
    feeds[`m.${k}`] = host(m[i]!, shape);
    feeds[`v.${k}`] = host(v[i]!, shape);
  });
  // The second buffer set TrainStep ping-pongs with (inputs and outputs never alias).
  const into: Record<string, HostTensor> = {};
  for (const k of Object.keys(outs)) into[k] = buffer(shape);

  // PyTorch always tries 1 and 2 threads: with OpenMP, 2 threads on a busy 2-core machine can be 10× slower.
  const t = runTorch('adamw', { total, tensors: TENSORS, threads: [1, 2], ...reps });
  const tFor = best(t?.get('for-loop'));
  const tForeach = best(t?.get('foreach'));
  const baseline = tFor && tForeach ? (tFor.median <= tForeach.median ? tFor : tForeach) : (tFor ?? tForeach);
  const which = baseline === tFor ? 'for-loop' : 'foreach';
  const rows: Row[] = [];

  // All variants interleaved, one call of each per round (see measureInterleaved).
  const sessions = await Promise.all(threads.map((th) => compile(g, outs, { threads: th, cacheKey: false })));
  const jsLoop = (): void => names.forEach((_, i) => adamwInPlace(p[i]!, gr[i]!, m[i]!, v[i]!, CFG, CFG.lr, 10, CFG.weightDecay));
  const variants: [string, () => unknown][] = [[`${label}: (b) adamwInPlace, TS loop`, jsLoop]];
  threads.forEach((th, k) => {
    variants.push([`${label}: (a) in graph, into buffers, ${th}t`, () => sessions[k]!.run(feeds, into)]);
    variants.push([`${label}: (c) in graph, fresh outputs, ${th}t`, () => sessions[k]!.run(feeds)]);
  });
  const stats = await measureInterleaved(variants.map(([, fn]) => fn), reps);
  for (const c of sessions) await c.session.release();
  variants.forEach(([name], k) => rows.push({ case: name, ours: stats[k], torch: baseline, note: `PyTorch ${which}` }));
  for (const th of threads) {
    const f = at(t?.get('for-loop'), th);
    const fe = at(t?.get('foreach'), th);
    const fmt = (x: typeof f): string => (x ? `${(x.median * 1e3).toFixed(1)} ms` : '—');
    rows.push({ case: `${label}: PyTorch alone, ${th}t`, note: `for-loop ${fmt(f)}, foreach ${fmt(fe)}` });
  }
  return rows;
}

export async function adamwBench(ctx: Ctx): Promise<void> {
  const sizes = ctx.quick ? [1e6, 10e6] : [1e6, 10e6, 50e6];
  const threads = ctx.quick ? [2] : [1, 2];
  const rows: Row[] = [];
  for (const total of sizes) {
    const reps = total >= 50e6 ? { warmup: 1, reps: 5 } : total >= 10e6 ? { warmup: ctx.quick ? 1 : 2, reps: ctx.quick ? 3 : 10 } : { warmup: 3, reps: ctx.quick ? 10 : 30 };
    rows.push(...(await placeAt(total, threads, reps)));
  }
  printTable(`4. AdamW update of N float32 parameters in ${TENSORS} tensors (PyTorch: torch.optim.AdamW.step, best of for-loop/foreach and 1/2 threads)`, rows);
}
