// 5. A whole training step, end to end through TrainStep: the transformer classifier of
// test/learns.test.ts scaled up (vocab 1000, width 256, 4 layers, 8 heads, MLP 1024, seq 64,
// batch 64, 3 classes; global-norm clipping at 1.0, AdamW), with the update in the graph and in
// TypeScript, beside the identical PyTorch model and optimizer.
import type { Ctx } from './bench.js';
import { type Row, printTable } from './report.js';
import { measureInterleaved } from './stats.js';
import { at, best, runTorch, torchNotes } from './torch.js';
import { Graph } from '../src/graph/graph.js';
import * as o from '../src/graph/ops.js';
import { Rng, initParams } from '../src/nn/init.js';
import { layerNorm, linear, transformer } from '../src/nn/layers.js';
import { crossEntropy } from '../src/nn/losses.js';
import { TrainStep } from '../src/optim/step.js';
import type { HostTensor } from '../src/runtime/session.js';

const CFG = { vocab: 1000, seq: 64, width: 256, layers: 4, heads: 8, mlpRatio: 4, batch: 64, classes: 3, lr: 3e-4, weightDecay: 0.01, clip: 1.0 };

async function makeStep(update: 'graph' | 'js', threads: number): Promise<TrainStep> {
  const { vocab, seq, width, layers, heads, mlpRatio, classes } = CFG;
  const g = new Graph('classifier');
  const ids = g.input('ids', ['N', seq], 'int64');
  const y = g.input('y', ['N'], 'int64');
  const emb = o.gather(g.param('token_embedding.weight', [vocab, width], { kind: 'normal', std: 0.02 }), ids, 0);
  const h = o.add(emb, g.param('positional_embedding', [seq, width], { kind: 'normal', std: 0.01 }));
  const z = layerNorm(g, 'ln_final', transformer(g, 'transformer', h, { width, layers, heads, mlpRatio, act: 'gelu' }));
  const loss = crossEntropy(linear(g, 'head', o.reduceMean(z, [1]), classes), y);
  return TrainStep.create(g, loss, initParams(g, 0), {
    optimizer: { lr: CFG.lr, weightDecay: CFG.weightDecay },
    clipNorm: CFG.clip,
    update,
    threads,
  });
}

/** One fixed batch: random tokens and labels (the step's cost does not depend on the values). */
function batch(): Record<string, HostTensor> {
  const r = new Rng('batch');
  const ids = BigInt64Array.from({ length: CFG.batch * CFG.seq }, () => BigInt(r.int(CFG.vocab)));
  const y = BigInt64Array.from({ length: CFG.batch }, () => BigInt(r.int(CFG.classes)));
  return { ids: { data: ids, shape: [CFG.batch, CFG.seq] }, y: { data: y, shape: [CFG.batch] } };
}

export async function trainBench(ctx: Ctx): Promise<void> {
  const reps = ctx.quick ? { warmup: 1, reps: 2 } : { warmup: 2, reps: 8 };
  const data = batch();
  const t = runTorch('train', { ...CFG, threads: ctx.quick ? [1] : [1, 2], ...reps });
  const perSec = (s: { median: number } | undefined): string => (s ? (1 / s.median).toFixed(2) : '—');
  // Both update placements at 2 threads, and the in-graph one at 1 thread (which a busy machine
  // disturbs less: a 2-thread step waits for its slower half). Steps are interleaved, one of each
  // per round, because 'graph' and 'js' are close and load drift would otherwise pick the winner.
  const configs: ['graph' | 'js', number][] = ctx.quick ? [['graph', 2], ['js', 2]] : [['graph', 2], ['js', 2], ['graph', 1]];
  const steps = await Promise.all(configs.map(([update, threads]) => makeStep(update, threads)));
  const seen: number[][] = configs.map(() => []);
  const stats = await measureInterleaved(
    steps.map((step, k) => async () => seen[k]!.push((await step.step(data)).loss)),
    reps,
  );
  const rows: Row[] = configs.map(([update, threads], k) => {
    const base = threads === 1 ? at(t?.get('step'), 1) : best(t?.get('step'));
    return { case: `TrainStep, update '${update}', ${threads} thread(s)`, ours: stats[k], torch: base, note: `${perSec(stats[k])} steps/s vs ${perSec(base)}` };
  });
  const losses = configs.flatMap(([update, threads], k) => (threads === 2 ? [`ours '${update}': ${seen[k]!.map((l) => l.toFixed(3)).join(' ')}`] : []));
  const nParams = [...steps[0]!.values.values()].reduce((a, v) => a + v.length, 0);
  const tl = torchNotes.get('train')?.losses as number[] | undefined;
  if (tl) losses.push(`PyTorch: ${tl.map((l) => l.toFixed(3)).join(' ')}`);
  const params = `${(nParams / 1e6).toFixed(2)}M parameters`;
  printTable(
    `5. Training step: vocab ${CFG.vocab}, width ${CFG.width}, ${CFG.layers} layers, ${CFG.heads} heads, seq ${CFG.seq}, batch ${CFG.batch} (${params}; fwd+bwd+clip+AdamW)`,
    rows,
  );
  // A sanity check that both sides train the same model: the loss on the one repeated batch falls
  // from about ln 3 (the initialisations differ, so the curves are alike, not equal).
  console.log(`loss per step on the repeated batch: ${losses.join('; ')}`);
}
