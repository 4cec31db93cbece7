// GradCache keeps memory near one micro-batch's: the peak RSS of one accumulated step (8 micro-
// batches of 32) against one full-batch step of 256 pairs, each in its own process.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';

const probe = new URL('./memory-probe.js', import.meta.url).pathname;
const run = (accum: number): { loss: number; maxRssKiB: number; beforeKiB: number } =>
  JSON.parse(execFileSync(process.execPath, [probe, String(accum), '256'], { encoding: 'utf8' }).trim().split('\n').pop()!);

test('accumulation over 8 micro-batches peaks well below the full batch, with the same loss', (t) => {
  const full = run(1);
  const acc = run(8);
  const growth = (r: typeof full) => (r.maxRssKiB - r.beforeKiB) / 1024;
  t.diagnostic(`peak growth during the step: full batch ${growth(full).toFixed(0)} MiB, accumulated ${growth(acc).toFixed(0)} MiB`);
  assert.ok(Math.abs(full.loss - acc.loss) < 1e-4, `loss ${full.loss} vs ${acc.loss}`);
  assert.ok(growth(acc) < 0.5 * growth(full), `accumulated step grew ${growth(acc).toFixed(0)} MiB vs ${growth(full).toFixed(0)} MiB for the full batch`);
});
