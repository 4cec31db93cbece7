// The training loop shared by every trainer (CLIP, ViT classification): epochs over a DataLoader
// from a resumable position, a time budget that fits the schedule's length, periodic evaluation,
// JSONL metrics, SVG curves, atomic checkpoints, and a progress line.
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Batch, DataLoader } from '../data/loader.js';
import { type TrainState, loadCheckpoint } from './checkpoint.js';
import { curvesSvg } from './plot.js';
import { Progress } from './progress.js';

export interface LoopOptions {
  out: string;
  loader: DataLoader;
  batchSize: number;
  /** Stop after this many steps (epochs × batches per epoch, or --max-steps). */
  totalSteps?: number;
  /** Or stop when this many milliseconds have passed; the step count is then fitted at step 20. */
  timeBudgetMs?: number;
  evalEvery: number;
  saveEvery: number;
  /** Where to start (from a checkpoint): the step count, data position and elapsed time. */
  start: { step: number; epoch: number; batch: number; elapsedMs: number };
  step(b: Batch): Promise<{ loss: number; lr: number; gradNorm?: number }>;
  /** Called once the number of steps is known (to fit a schedule to a time budget). */
  onTotal?(total: number): void;
  /**
   * Relative cost of step s (1-based) in a plan of `total` steps, when steps differ in cost (FLIP's
   * unmasked tuning runs the last steps on every patch, ~4× the work); the time budget's step count
   * is fitted with it. Default: every step costs the same.
   */
  stepCost?(s: number, total: number): number;
  evaluate?(): Promise<Record<string, number> | undefined>;
  /** The metric plotted as the second curve (e.g. 'top1'). */
  evalKey?: string;
  evalTitle?: string;
  save(state: { step: number; epoch: number; batch: number; elapsedMs: number; totalSteps?: number }): Promise<void>;
  log?(s: string): void;
}

export interface LoopResult {
  steps: number;
  seconds: number;
  finalLoss: number;
  lastEval?: Record<string, number>;
}

export async function trainLoop(o: LoopOptions): Promise<LoopResult> {
  const metricsPath = join(o.out, 'metrics.jsonl');
  const history = readHistory(metricsPath, o.start.step, o.evalKey ?? 'top1');
  const writeCurves = (): void =>
    writeFileSync(
      join(o.out, 'curves.svg'),
      curvesSvg([
        { title: 'training loss', points: history.loss },
        { title: o.evalTitle ?? 'held-out top-1', points: history.acc, yRange: [0, 1] },
      ]),
    );
  let total = o.totalSteps;
  let { step, epoch, batch: nextBatch } = o.start;
  const started = Date.now() - o.start.elapsedMs;
  const progress = new Progress(total);
  let lastLoss = NaN;
  let lastEval: Record<string, number> | undefined;
  const stepTimes: number[] = [];
  const ends: number[] = [];
  const save = async (): Promise<void> => {
    await o.save({ step, epoch, batch: nextBatch, elapsedMs: Date.now() - started, totalSteps: total });
    writeCurves();
  };
  try {
    // A finished run resumed: nothing left to do (the loop below checks only after a step).
    if (total !== undefined && step >= total) {
      writeCurves();
      return { steps: step, seconds: (Date.now() - started) / 1000, finalLoss: lastLoss, lastEval };
    }
    outer: for (;;) {
      let any = false;
      for await (const b of o.loader.batches(epoch, nextBatch)) {
        any = true;
        const t0 = Date.now();
        const r = await o.step(b);
        stepTimes.push(Date.now() - t0);
        step++;
        nextBatch = b.index + 1;
        lastLoss = r.loss;
        if (!Number.isFinite(r.loss)) throw new Error(`the loss became ${r.loss} at step ${step}; lower the learning rate or enable --clip-norm`);
        const elapsed = Date.now() - started;
        // A time budget: the step count is estimated at step 20 and re-estimated every 50 steps
        // from the recent step time (the machine's speed can change), so the cosine schedule ends
        // near the budget; the run also stops when the budget is spent.
        if (o.timeBudgetMs !== undefined && (step === o.start.step + 20 || (total !== undefined && step % 50 === 0))) {
          const est = fitSteps(step, o.timeBudgetMs - elapsed, recentMsPerStep(stepTimes), o.stepCost);
          if (total === undefined || Math.abs(est - total) > 0.02 * total) {
            if (total === undefined) o.log?.(`time budget ${(o.timeBudgetMs / 60_000).toFixed(1)} min → about ${est} steps`);
            total = est;
            progress.total = total;
            o.onTotal?.(total);
          }
        }
        appendFileSync(metricsPath, `${JSON.stringify({ step, epoch, loss: r.loss, lr: r.lr, gradNorm: r.gradNorm, samplesPerSec: o.batchSize / ((Date.now() - t0) / 1e3), elapsedSec: elapsed / 1e3, skipped: o.loader.stats.skipped })}\n`);
        history.loss.push([step, r.loss]);
        // The rate over the last 50 steps (evaluations and saves included), not since the start:
        // decoding a dataset into the cache and the costlier unmasked steps would blur it.
        ends.push(Date.now());
        if (ends.length > 51) ends.shift();
        const rate = ends.length > 1 ? ((ends.length - 1) * o.batchSize) / ((ends.at(-1)! - ends[0]!) / 1e3 || 1e-3) : o.batchSize / ((Date.now() - t0) / 1e3 || 1e-3);
        progress.update(step, { loss: r.loss, lr: r.lr, samplesPerSec: rate });
        const done = (total !== undefined && step >= total) || (o.timeBudgetMs !== undefined && elapsed >= o.timeBudgetMs);
        if (o.evaluate && o.evalEvery > 0 && (step % o.evalEvery === 0 || done)) {
          lastEval = await o.evaluate();
          if (lastEval) {
            history.acc.push([step, lastEval[o.evalKey ?? 'top1']!]);
            appendFileSync(metricsPath, `${JSON.stringify({ step, eval: lastEval })}\n`);
            progress.note(`step ${step}: ${Object.entries(lastEval).map(([k, v]) => `${k} ${(v * 100).toFixed(1)}%`).join(', ')}`);
          }
        }
        if (step % o.saveEvery === 0 || done) await save();
        if (done) break outer;
      }
      if (!any && nextBatch === 0) throw new Error('the data source yielded no batch (fewer samples than one batch?)');
      epoch++;
      nextBatch = 0;
    }
  } finally {
    progress.end();
  }
  writeCurves();
  return { steps: step, seconds: (Date.now() - started) / 1e3, finalLoss: lastLoss, lastEval };
}

/** Loss and eval history up to `upTo` (later lines are dropped: those steps will be replayed). */
function readHistory(path: string, upTo: number, key: string): { loss: [number, number][]; acc: [number, number][] } {
  const h = { loss: [] as [number, number][], acc: [] as [number, number][] };
  if (!existsSync(path)) return h;
  const kept: string[] = [];
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    const r = JSON.parse(line) as { step: number; loss?: number; eval?: Record<string, number> };
    if (r.step > upTo) continue;
    kept.push(line);
    if (r.loss !== undefined) h.loss.push([r.step, r.loss]);
    if (r.eval && r.eval[key] !== undefined) h.acc.push([r.step, r.eval[key]!]);
  }
  writeFileSync(path, kept.map((l) => `${l}\n`).join(''));
  return h;
}

/**
 * The step count T whose steps after `step` fill `remainingMs`, at `recentMs` per step of the
 * current step's cost; `cost(s, T)` is a step's relative cost in a plan of T steps (see stepCost).
 */
export function fitSteps(step: number, remainingMs: number, recentMs: number, cost?: (s: number, total: number) => number): number {
  const uniform = step + Math.floor(Math.max(0, remainingMs) / recentMs);
  if (!cost) return Math.max(step + 1, uniform);
  const fits = (T: number): boolean => {
    const unit = recentMs / cost(Math.max(1, step), T); // recent steps ran at the last step's cost
    let ms = 0;
    for (let s = step + 1; s <= T; s++) if ((ms += unit * cost(s, T)) > remainingMs) return false;
    return true;
  };
  // The largest T that fits (more steps never cost less); steps may be cheaper than the current one.
  let lo = step + 1;
  let hi = Math.max(lo, 8 * uniform - 7 * step);
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (fits(mid)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** Median milliseconds per step over the last 50 steps. */
function recentMsPerStep(times: number[]): number {
  const recent = times.slice(-50).sort((a, b) => a - b);
  return Math.max(1, recent[Math.floor(recent.length / 2)] ?? 1);
}

/**
 * Opens a run folder: creates it, loads its checkpoint when resuming (which must be of `kind`), and
 * writes the run's config on a fresh start.
 */
export async function openRunDir(out: string, cfg: unknown, resume: boolean, kind: string): Promise<{ ckptPath: string; resumed?: TrainState }> {
  mkdirSync(out, { recursive: true });
  const ckptPath = join(out, 'checkpoint.safetensors');
  if (resume && !existsSync(ckptPath)) throw new Error(`--resume: no checkpoint in ${out}`);
  const resumed = resume ? await loadCheckpoint(ckptPath) : undefined;
  if (resumed && resumed.kind !== kind) throw new Error(`--resume: ${ckptPath} is a '${resumed.kind}' checkpoint, not a '${kind}' one`);
  if (!resume) writeFileSync(join(out, 'config.json'), JSON.stringify(cfg, null, 2));
  return { ckptPath, resumed };
}
