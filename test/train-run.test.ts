// The training run end to end through the CLI: metrics, curves, checkpoint, model output; resume after
// SIGKILL reproduces the uninterrupted run's losses exactly; a SIGKILL in the middle of writing a
// checkpoint leaves the previous one intact.
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import sharp from 'sharp';
import { loadCheckpoint } from '../src/train/checkpoint.js';
import { fitSteps } from '../src/train/loop.js';

const CLI = new URL('../src/cli/main.js', import.meta.url).pathname;
let dir: string;
let data: string;
let modelCfg: string;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'clipkit-train-'));
  data = join(dir, 'data');
  const colours: Record<string, [number, number, number]> = { red_thing: [220, 30, 30], green_thing: [30, 200, 40], blue_thing: [30, 40, 220] };
  for (const [cls, rgb] of Object.entries(colours)) {
    mkdirSync(join(data, cls), { recursive: true });
    for (let i = 0; i < 12; i++) {
      const px = Buffer.alloc(16 * 16 * 3);
      for (let p = 0; p < 256; p++) for (let c = 0; c < 3; c++) px[p * 3 + c] = Math.max(0, Math.min(255, rgb[c]! + ((p * 7 + i * 13 + c * 5) % 41) - 20));
      await sharp(px, { raw: { width: 16, height: 16, channels: 3 } }).png().toFile(join(data, cls, `${String(i).padStart(3, '0')}.png`));
    }
  }
  writeFileSync(join(dir, 'bad.png'), 'not an image');
  writeFileSync(join(data, 'red_thing', '+corrupt.png'), 'not an image');
  modelCfg = join(dir, 'tiny.json');
  writeFileSync(modelCfg, JSON.stringify({ embed_dim: 16, vision_cfg: { image_size: 16, layers: 1, width: 32, patch_size: 8, head_width: 16 }, text_cfg: { context_length: 12, vocab_size: 600, width: 32, heads: 2, layers: 1 } }));
});
after(() => rmSync(dir, { recursive: true, force: true }));

const args = (out: string): string[] => [CLI, 'train', '--data', data, '--out', out, '--model', modelCfg, '--vocab-size', '600', '--max-steps', '12', '--batch-size', '6', '--warmup', '2', '--lr', '3e-3', '--holdout', '0.25', '--eval-every', '6', '--save-every', '3', '--workers', '0', '--threads', '1', '--seed', '5'];
const losses = (out: string): Map<number, number> =>
  new Map(
    readFileSync(join(out, 'metrics.jsonl'), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { step: number; loss?: number })
      .filter((r) => r.loss !== undefined)
      .map((r) => [r.step, r.loss!]),
  );

test('a run writes config, metrics, curves, checkpoint and a loadable model; skips the corrupt image', () => {
  const out = join(dir, 'full');
  const stderr = execFileSync(process.execPath, [...args(out)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  void stderr;
  for (const f of ['config.json', 'metrics.jsonl', 'curves.svg', 'checkpoint.safetensors', 'tokenizer.json', 'model/open_clip_model.safetensors', 'model/tokenizer.json']) assert.ok(existsSync(join(out, f)), f);
  const l = losses(out);
  assert.equal(l.size, 12);
  const evals = readFileSync(join(out, 'metrics.jsonl'), 'utf8').split('\n').filter((x) => x.includes('"eval"'));
  assert.equal(evals.length, 2);
  assert.match(readFileSync(join(out, 'curves.svg'), 'utf8'), /^<svg/);
  const info = JSON.parse(execFileSync(process.execPath, [CLI, 'info', join(out, 'model'), '--json'], { encoding: 'utf8' }));
  assert.equal(info.config.embed_dim, 16);
  assert.ok(readFileSync(join(out, 'metrics.jsonl'), 'utf8').includes('"skipped":1'), 'the corrupt image is counted');
});

test('resume after SIGKILL gives the same losses as the uninterrupted run', async () => {
  const full = losses(join(dir, 'full'));
  const out = join(dir, 'killed');
  // Run until the checkpoint after step 6 exists and step 7 has started, then SIGKILL.
  const child: ChildProcess = spawn(process.execPath, args(out), { stdio: 'ignore' });
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      const m = existsSync(join(out, 'metrics.jsonl')) ? losses(out) : new Map();
      if (m.has(7)) {
        clearInterval(timer);
        child.kill('SIGKILL');
        resolve();
      }
    }, 5);
  });
  await new Promise((r) => child.once('exit', r));
  execFileSync(process.execPath, [CLI, 'train', '--out', out, '--resume'], { stdio: 'ignore' });
  const resumed = losses(out);
  assert.equal(resumed.size, 12);
  for (const [step, l] of full) assert.equal(resumed.get(step), l, `step ${step}: ${resumed.get(step)} vs ${l}`);
});

test('SIGKILL while a checkpoint is being written leaves the previous checkpoint intact', async () => {
  const path = join(dir, 'ck', 'checkpoint.safetensors');
  mkdirSync(join(dir, 'ck'));
  const writer = new URL('./checkpoint-writer.js', import.meta.url).pathname;
  execFileSync(process.execPath, [writer, path, '1', '1'], { stdio: 'ignore' }); // a small, complete checkpoint (step 1)
  // Now write a 400 MB one and kill the writer while it is writing.
  const child = spawn(process.execPath, [writer, path, '2', '100000000'], { stdio: ['ignore', 'pipe', 'ignore'] });
  await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve())); // "writing" printed just before the save
  await new Promise((r) => setTimeout(r, 30));
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  const st = await loadCheckpoint(path);
  assert.equal(st.optimizer.step, 1, 'the previous checkpoint is still there and loads');
  const stray = readdirSync(join(dir, 'ck')).filter((f) => f !== 'checkpoint.safetensors');
  assert.ok(stray.every((f) => f.includes('.tmp')), `only a temporary file may remain: ${stray}`);
});

test('bad options are rejected with a message', () => {
  const run = (a: string[]) => {
    try {
      execFileSync(process.execPath, [CLI, 'train', ...a], { stdio: 'pipe', encoding: 'utf8' });
      return '';
    } catch (e) {
      return String((e as { stderr: string }).stderr);
    }
  };
  assert.match(run(['--data', data, '--out', join(dir, 'x'), '--max-steps', '2', '--batch-size', 'many']), /--batch-size must be an integer/);
  assert.match(run(['--data', data, '--out', join(dir, 'x'), '--max-steps', '2', '--lr', '5']), /--lr must be ≤ 1/);
  writeFileSync(join(dir, 'cfg.json'), JSON.stringify({ data, out: join(dir, 'x'), 'max-steps': 2, 'learning-rate': 1 }));
  assert.match(run(['--config', join(dir, 'cfg.json')]), /unknown key 'learning-rate'/);
  writeFileSync(join(dir, 'cfg2.json'), JSON.stringify({ data, out: join(dir, 'x'), 'max-steps': '2' }));
  assert.match(run(['--config', join(dir, 'cfg2.json')]), /'max-steps' must be a number/);
});

test('fitSteps: a time budget with uniform steps, and with costlier last steps (unmasked tuning)', () => {
  assert.equal(fitSteps(20, 1000, 10), 120);
  assert.equal(fitSteps(20, -5, 10), 21); // over budget: at least one more step
  // The last 10% of the steps cost 4×: 0.9·T + 0.4·T = 1.3·T steps' worth of time fill 1000 ms.
  let switched = false;
  const cost = (s: number, T: number) => (switched || s > 0.9 * T ? 4 : 1);
  const T = fitSteps(0, 1000, 1, cost);
  assert.ok(T === 769 || T === 768, `T = ${T}`);
  const spent = Array.from({ length: T }, (_, i) => cost(i + 1, T)).reduce((a, b) => a + b, 0);
  assert.ok(spent <= 1000 && spent + 4 > 1000, `the plan's steps take ${spent} of 1000 ms`);
  // After the switch the recent steps are the costly ones: the rest at that rate.
  switched = true;
  assert.equal(fitSteps(700, 400, 4, cost), 800);
});
