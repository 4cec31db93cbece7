// `npm run eval -- <task> [options]`: the quality results of BENCHMARKS.md, each a training run with
// the recorded recipe followed by the standalone evaluation, printing the exact commands it runs.
//   emoji        CLIP on Google-style emoji (names as captions), retrieval on Twitter-style emoji
//   cifar-clip   CLIP from scratch on CIFAR-10, zero-shot on the held-out images
//   cifar-vit    ViT classifier on CIFAR-10, top-1 on the held-out images
//   default      the embedded default model (models/cifar10-clip) on the CIFAR-10 held-out images
// Options: --minutes N (time budget of the training run), --work DIR (data and runs; default a
// folder under the OS temp dir), --cifar FILE (CIFAR-10 as train/<class>/*.jpg in a .tar.gz;
// or the CIFAR10_TAR environment variable).
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildEmojiTables } from './emoji.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');
const log = (s: string): void => console.error(`[eval] ${s}`);

interface Opts {
  minutes?: number;
  work: string;
  cifar?: string;
}

/** Runs the CLI with the output passed through; returns stdout when `capture`. */
function clipkit(args: string[], capture = false): string {
  log(`clipkit ${args.map((a) => (/[\s"]/.test(a) ? JSON.stringify(a) : a)).join(' ')}`);
  const r = spawnSync(process.execPath, [CLI, ...args], { stdio: ['ignore', capture ? 'pipe' : 'inherit', 'inherit'], encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`clipkit ${args[0]} failed (exit ${r.status ?? r.signal})`);
  return r.stdout ?? '';
}

async function emoji(o: Opts): Promise<unknown> {
  const dir = join(o.work, 'emoji');
  const { tables, rows } = await buildEmojiTables(dir, log);
  const out = join(dir, 'run');
  rmSync(out, { recursive: true, force: true });
  const minutes = String(o.minutes ?? 10);
  clipkit(['train', '--data', tables.google, '--eval-data', tables.twitter, '--out', out, '--model', join(ROOT, 'eval', 'configs', 'emoji-clip.json'),
    '--minutes', minutes, '--batch-size', '128', '--lr', '1e-3', '--wd', '0.1', '--warmup', '100', '--crop-scale', '0.7', '--vocab-size', '1024',
    '--eval-every', '200', '--save-every', '200', '--cache-images', '--seed', '0']);
  const model = join(out, 'model');
  const twitter = JSON.parse(clipkit(['eval', '--model', model, '--data', tables.twitter, '--json'], true)) as { retrieval: unknown };
  const google = JSON.parse(clipkit(['eval', '--model', model, '--data', tables.google, '--json'], true)) as { retrieval: unknown };
  return { task: 'emoji', emoji: rows, minutes: Number(minutes), trainedOn: 'google', otherStyle: { style: 'twitter', ...twitter.retrieval as object }, trainingStyle: { style: 'google', ...google.retrieval as object }, run: out };
}

/** Extracts CIFAR-10 once into <work>/cifar10 and builds the held-out folder (the last 10% per class, as --holdout 0.1). */
function cifar(o: Opts): { train: string; held: string } {
  const tar = o.cifar ?? process.env.CIFAR10_TAR;
  const dir = join(o.work, 'cifar10');
  const train = join(dir, 'train');
  if (!existsSync(train)) {
    if (!tar) throw new Error('give --cifar <cifar10-train.tar.gz> (train/<class>/*.jpg) or set CIFAR10_TAR');
    mkdirSync(dir, { recursive: true });
    log(`extracting ${tar}`);
    execFileSync('tar', ['-xzf', tar, '-C', dir]);
  }
  const held = join(dir, 'heldout');
  if (!existsSync(held)) {
    for (const c of readdirSync(train).sort()) {
      const files = readdirSync(join(train, c)).sort();
      mkdirSync(join(held, c), { recursive: true });
      for (const f of files.slice(files.length - Math.round(files.length * 0.1))) symlinkSync(join(train, c, f), join(held, c, f));
    }
  }
  return { train, held };
}

async function cifarClip(o: Opts): Promise<unknown> {
  const { train, held } = cifar(o);
  const out = join(o.work, 'cifar-clip');
  rmSync(out, { recursive: true, force: true });
  clipkit(['train', '--data', train, '--out', out, '--model', join(ROOT, 'models', 'cifar10-clip', 'train-model.json'), '--minutes', String(o.minutes ?? 30),
    '--patch-dropout', '0.5', '--unmasked-tune', '0.1', '--batch-size', '128', '--eval-every', '500', '--save-every', '500', '--cache-images', '--templates', 'cifar10', '--loss', 'multipos', '--warmup', '300',
    '--lr', '2e-3', '--wd', '0.05', '--crop-scale', '0.6', '--holdout', '0.1', '--vocab-size', '1024', '--seed', '0']);
  const r = JSON.parse(clipkit(['eval', '--model', join(out, 'model'), '--data', held, '--templates', 'cifar10', '--json'], true)) as { zeroShot: { top1: number; top5: number }; images: number };
  return { task: 'cifar-clip', minutes: o.minutes ?? 30, heldOutImages: r.images, top1: r.zeroShot.top1, top5: r.zeroShot.top5, run: out };
}

async function cifarVit(o: Opts): Promise<unknown> {
  const { train, held } = cifar(o);
  const out = join(o.work, 'cifar-vit');
  rmSync(out, { recursive: true, force: true });
  clipkit(['vit', 'train', train, '--out', out, '--model', join(ROOT, 'eval', 'configs', 'cifar-vit.json'), '--minutes', String(o.minutes ?? 30),
    '--patch-dropout', '0.75', '--unmasked-tune', '0.05', '--batch-size', '128', '--lr', '2e-3', '--wd', '0.05', '--warmup', '300', '--crop-scale', '0.6', '--label-smoothing', '0.1',
    '--eval-every', '2500', '--save-every', '2500', '--cache-images', '--holdout', '0.1', '--seed', '0']);
  const evalVit = (extra: string[]) =>
    JSON.parse(clipkit(['vit', 'eval', '--model', join(out, 'vit.safetensors'), '--data', held, '--json', ...extra], true)) as { top1: number; top5: number; images: number };
  const r = evalVit(['--confusion', join(out, 'confusion.html')]);
  const flip = evalVit(['--tta', 'flip']);
  return { task: 'cifar-vit', minutes: o.minutes ?? 30, heldOutImages: r.images, top1: r.top1, top5: r.top5, flipTta: { top1: flip.top1, top5: flip.top5 }, run: out };
}

async function defaultModel(o: Opts): Promise<unknown> {
  const { held } = cifar(o);
  const r = JSON.parse(clipkit(['eval', '--model', join(ROOT, 'models', 'cifar10-clip'), '--data', held, '--templates', 'cifar10', '--json'], true)) as { zeroShot: { top1: number; top5: number }; images: number };
  return { task: 'default', heldOutImages: r.images, top1: r.zeroShot.top1, top5: r.zeroShot.top5 };
}

const TASKS: Record<string, (o: Opts) => Promise<unknown>> = { emoji, 'cifar-clip': cifarClip, 'cifar-vit': cifarVit, default: defaultModel };

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const opts: Opts = { work: join(tmpdir(), 'clipkit-eval') };
  const tasks: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--minutes') opts.minutes = Number(args[++i]);
    else if (a === '--work') opts.work = resolve(args[++i]!);
    else if (a === '--cifar') opts.cifar = resolve(args[++i]!);
    else if (a.startsWith('--')) throw new Error(`eval: unknown option ${a}`);
    else tasks.push(a);
  }
  if (opts.minutes !== undefined && !(opts.minutes > 0)) throw new Error('eval: --minutes must be a positive number');
  const unknown = tasks.filter((t) => !TASKS[t]);
  if (tasks.length === 0 || unknown.length) {
    console.error(`${unknown.length ? `unknown task ${unknown.join(', ')}; ` : ''}tasks: ${Object.keys(TASKS).join(', ')}`);
    process.exitCode = 1;
    return;
  }
  for (const t of tasks) console.log(JSON.stringify(await TASKS[t]!(opts), null, 2));
}

await main();
