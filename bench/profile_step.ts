// Per-op-type time of one training step, from ONNX Runtime's profiler: where a step's time goes.
//   node dist/bench/profile_step.js [vit.json] [batch] [steps]
import { readFileSync, readdirSync, rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as o from '../src/graph/ops.js';
import { type VitConfig, vitDefaults } from '../src/models/vit.js';
import { initParams } from '../src/nn/init.js';
import { TrainStep } from '../src/optim/step.js';
import { vitClassifierGraph } from '../src/train/vit-run.js';

async function main(): Promise<void> {
  const [cfgPath, batchArg, stepsArg] = process.argv.slice(2);
  const config: VitConfig = cfgPath
    ? (JSON.parse(readFileSync(cfgPath, 'utf8')) as VitConfig)
    : vitDefaults({ imageSize: 32, patchSize: 4, width: 128, layers: 4, heads: 4, mlpRatio: 2, pool: 'mean', numClasses: 10 });
  const B = Number(batchArg ?? 128);
  const steps = Number(stepsArg ?? 10);
  const C = config.numClasses;
  const { g, logits } = vitClassifierGraph(config, B);
  const targets = g.input('targets', [B, C]);
  const loss = o.neg(o.reduceMean(o.reduceSum(o.mul(o.logSoftmax(logits, -1), targets), [-1])));
  const dir = mkdtempSync(join(tmpdir(), 'ck-prof-'));
  const ts = await TrainStep.create(g, loss, initParams(g, 0), { optimizer: { lr: 1e-3, weightDecay: 0.05 }, profile: join(dir, 'p') });
  const S = config.imageSize;
  const pixels = { data: new Float32Array(B * 3 * S * S).map(() => Math.random() - 0.5), shape: [B, 3, S, S] };
  const t = { data: new Float32Array(B * C).fill(1 / C), shape: [B, C] };
  const t0 = performance.now();
  for (let i = 0; i < steps; i++) await ts.step({ pixels, targets: t });
  const wall = (performance.now() - t0) / steps;
  ts.endProfiling();
  const file = readdirSync(dir).find((f) => f.endsWith('.json'))!;
  const events = JSON.parse(readFileSync(join(dir, file), 'utf8')) as { cat: string; name: string; dur: number; args?: { op_name?: string; input_type_shape?: unknown; output_type_shape?: unknown } }[];
  const top = process.env.TOP ? Number(process.env.TOP) : 0;
  rmSync(dir, { recursive: true });
  const byOp = new Map<string, { us: number; n: number }>();
  let total = 0;
  const perNode = new Map<string, number>();
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time')) continue;
    const op = e.args?.op_name ?? '?';
    const r = byOp.get(op) ?? { us: 0, n: 0 };
    r.us += e.dur;
    r.n += 1;
    byOp.set(op, r);
    total += e.dur;
    const key = `${op} ${e.name.replace(/_kernel_time$/, '')} ${JSON.stringify(e.args?.input_type_shape)}`;
    perNode.set(key, (perNode.get(key) ?? 0) + e.dur);
  }
  if (top) for (const [k, us] of [...perNode].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${(us / 1000 / steps).toFixed(2).padStart(7)} ms  ${k.slice(0, 200)}`);
  console.log(`batch ${B}: ${wall.toFixed(1)} ms/step wall (profiling on), kernels ${(total / 1000 / steps).toFixed(1)} ms/step, ${(B / wall * 1000).toFixed(0)} samples/s`);
  for (const [op, r] of [...byOp].sort((a, b) => b[1].us - a[1].us)) {
    console.log(`${op.padEnd(28)} ${(r.us / 1000 / steps).toFixed(2).padStart(8)} ms ${((100 * r.us) / total).toFixed(1).padStart(5)}%  ${(r.n / steps).toFixed(0).padStart(4)} nodes`);
  }
}
await main();
