// clipkit vae train|eval|reconstruct|sample|interpolate: the convolutional VAE of chapter 5.3 on a
// folder of images (by class, or flat), with a held-out split shared by every subcommand.
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { type RgbImage, fromCHW, writeGrid } from '../../data/png.js';
import { type VaeConfig, listVaePresets, loadVaeConfig, paramCount, validateVae } from '../../models/vae.js';
import { Rng } from '../../nn/init.js';
import {
  type VaeRunOptions,
  CHECKPOINT,
  VaeModel,
  decodeImages,
  digestOf,
  listImages,
  loadVaeCheckpoint,
  splitHoldout,
  toInput,
  trainVae,
} from '../../train/vae-trainer.js';
import { type Specs, UsageError, parse, usage } from '../args.js';
import type { Command } from '../main.js';

const HELP = { help: { type: 'boolean', short: 'h', help: 'show this help' } } as const;
const THREADS = { threads: { type: 'int', min: 1, help: 'ONNX Runtime intra-op threads (default: every core)' } } as const;
const MODEL = { model: { type: 'string', help: 'a run directory (its checkpoint.safetensors) or a VAE checkpoint file' } } as const;
const SPLIT = {
  split: { type: 'string', default: 'holdout', choices: ['holdout', 'train', 'all'], help: 'which images of --data' },
  'holdout-fraction': { type: 'float', min: 0, max: 0.99, help: "held-out fraction per class (default: the run's)" },
} as const;
const GRID = {
  columns: { type: 'int', default: 8, min: 1, help: 'images per row' },
  scale: { type: 'int', default: 2, min: 1, max: 16, help: 'enlarge each pixel to scale×scale in the PNG' },
} as const;

const TRAIN = {
  data: { type: 'string', help: 'image folder: <data>/<class>/*.{jpg,png} or <data>/*.{jpg,png}' },
  out: { type: 'string', help: 'run directory (checkpoint.safetensors, metrics.jsonl, run.json)' },
  config: { type: 'string', default: 'vae-cifar', help: `architecture preset (${listVaePresets().join(', ')}) or a .json file` },
  latent: { type: 'int', min: 1, help: "latent dimension (default: the preset's)" },
  recon: { type: 'string', choices: ['gaussian', 'mse', 'bce'], help: "likelihood: gaussian (learned σ), mse (fixed σ), bce (Bernoulli) (default: the preset's)" },
  epochs: { type: 'int', default: 10, min: 1, help: 'passes over the training images' },
  'max-steps': { type: 'int', min: 1, help: 'cap on optimisation steps (the cosine schedule spans the planned steps)' },
  minutes: { type: 'float', min: 0, help: 'time budget for this invocation (training only; a checkpoint is written when it runs out)' },
  'batch-size': { type: 'int', default: 64, min: 1, help: 'images per step (a partial last batch is dropped)' },
  lr: { type: 'float', default: 1e-3, min: 0, help: 'peak AdamW learning rate (linear warmup, then cosine decay to 0)' },
  warmup: { type: 'int', default: 100, min: 0, help: 'learning-rate warmup steps' },
  'weight-decay': { type: 'float', default: 0, min: 0, help: 'AdamW decoupled weight decay (weights only, not biases or σ)' },
  beta: { type: 'float', default: 1, min: 0, help: 'β, the weight of the KL term (1: the ELBO)' },
  'beta-warmup': { type: 'int', default: 0, min: 0, help: 'steps over which β rises linearly from 0' },
  'clip-norm': { type: 'float', min: 0, help: 'global gradient-norm clipping (off by default)' },
  'holdout-fraction': { type: 'float', default: 0.1, min: 0, max: 0.99, help: 'held out per class: the last files by name' },
  seed: { type: 'int', default: 0, help: 'seed of the initialisation, shuffling, ε and dequantisation noise' },
  resume: { type: 'boolean', help: 'continue the run in --out from its checkpoint (with its stored settings)' },
  'log-every': { type: 'int', default: 20, min: 1, help: 'steps between progress lines (and metrics.jsonl records)' },
  'save-every': { type: 'int', default: 500, min: 1, help: 'steps between checkpoints' },
  'eval-every': { type: 'int', default: 0, min: 0, help: 'steps between held-out evaluations (0: off)' },
  'eval-images': { type: 'int', default: 1000, min: 1, help: 'held-out images used by --eval-every' },
  ...THREADS,
  ...HELP,
} as const;
/** Options that define a run; --resume takes them from the checkpoint, so passing one is an error. */
const RUN_DEFINING = ['config', 'latent', 'recon', 'epochs', 'max-steps', 'batch-size', 'lr', 'warmup', 'weight-decay', 'beta', 'beta-warmup', 'clip-norm', 'holdout-fraction', 'seed'];

const EVAL = { ...MODEL, data: TRAIN.data, ...SPLIT, limit: { type: 'int', min: 1, help: 'evaluate at most this many images (evenly spaced over the split)' }, seed: { type: 'int', help: "seed of ε and the dequantisation noise (default: the run's)" }, 'batch-size': { type: 'int', default: 250, min: 1, help: 'images per forward pass' }, json: { type: 'boolean', help: 'print JSON' }, ...THREADS, ...HELP } as const;
const RECONSTRUCT = { ...MODEL, data: TRAIN.data, out: { type: 'string', help: 'PNG file to write' }, ...SPLIT, count: { type: 'int', default: 32, min: 1, help: 'images (evenly spaced over the split)' }, ...GRID, ...THREADS, ...HELP } as const;
const SAMPLE = { ...MODEL, out: RECONSTRUCT.out, count: { type: 'int', default: 64, min: 1, help: 'samples' }, temperature: { type: 'float', default: 1, min: 0, help: 'z ~ N(0, t²·I)' }, seed: { type: 'int', default: 0, help: 'seed of z' }, ...GRID, ...THREADS, ...HELP } as const;
const INTERPOLATE = { ...MODEL, data: TRAIN.data, out: RECONSTRUCT.out, ...SPLIT, pairs: { type: 'int', default: 8, min: 1, help: 'rows (image pairs)' }, steps: { type: 'int', default: 8, min: 2, help: 'decoded points per row, from μ(a) to μ(b)' }, scale: GRID.scale, ...THREADS, ...HELP } as const;

const SUB: Record<string, { summary: string; specs: Specs; run: (argv: string[]) => Promise<void> }> = {
  train: { summary: 'train a VAE on an image folder', specs: TRAIN, run: train },
  eval: { summary: 'held-out reconstruction MSE and negative ELBO in bits/dim', specs: EVAL, run: evaluate },
  reconstruct: { summary: 'PNG grid: input rows over their reconstructions', specs: RECONSTRUCT, run: reconstruct },
  sample: { summary: 'PNG grid of samples decoded from z ~ N(0, I)', specs: SAMPLE, run: sample },
  interpolate: { summary: 'PNG rows: image a, decoded points on the line μ(a) → μ(b), image b', specs: INTERPOLATE, run: interpolate },
};

const vae: Command = {
  summary: 'convolutional VAE: train, eval, reconstruct, sample, interpolate',
  async run(argv) {
    const [name, ...rest] = argv;
    if (!name || name === '--help' || name === '-h') {
      return console.log(['usage: clipkit vae <subcommand> [options]   (clipkit vae <subcommand> --help)', '', ...Object.entries(SUB).map(([n, s]) => `  ${n.padEnd(12)} ${s.summary}`)].join('\n'));
    }
    const sub = SUB[name];
    if (!sub) throw new UsageError(`vae: unknown subcommand '${name}' (known: ${Object.keys(SUB).join(', ')})`);
    if (rest.includes('--help') || rest.includes('-h')) return console.log(usage(`vae ${name}`, sub.summary, sub.specs));
    await sub.run(rest);
  },
};
export default vae;

function required<V>(cmd: string, opt: string, v: V | undefined): V {
  if (v === undefined) throw new UsageError(`vae ${cmd}: --${opt} is required`);
  return v;
}

function noPositionals(cmd: string, p: string[]): void {
  if (p.length) throw new UsageError(`vae ${cmd}: unexpected argument '${p[0]}'`);
}

// ---------------------------------------------------------------- train

async function train(argv: string[]): Promise<void> {
  const { opts, positionals } = parse('vae train', argv, TRAIN);
  noPositionals('train', positionals);
  const data = required('train', 'data', opts.data);
  const out = required('train', 'out', opts.out);
  const ckPath = join(out, CHECKPOINT);
  const resume = opts.resume ? await loadVaeCheckpoint(ckPath) : undefined;
  if (resume) {
    const given = RUN_DEFINING.filter((k) => argv.some((a) => a === `--${k}` || a.startsWith(`--${k}=`)));
    if (given.length) throw new UsageError(`vae train: --resume continues the stored run; do not pass ${given.map((k) => `--${k}`).join(', ')}`);
    if (!resume.run) throw new Error(`${ckPath} has no run settings to resume from`);
  } else if (existsSync(ckPath)) {
    throw new UsageError(`vae train: ${ckPath} exists; pass --resume to continue it, or choose another --out`);
  }
  let config: VaeConfig;
  if (resume) config = resume.config;
  else {
    config = loadVaeConfig(opts.config);
    if (opts.latent !== undefined) config = { ...config, latent: opts.latent };
    if (opts.recon !== undefined) config = { ...config, recon: opts.recon as VaeConfig['recon'] };
    validateVae(config);
  }
  const holdoutFraction = resume?.run?.holdoutFraction ?? opts['holdout-fraction'];

  const t0 = performance.now();
  const list = listImages(data);
  const split = splitHoldout(list, holdoutFraction);
  const decoded = await decodeImages(list.files, config.imageSize, (n) => console.log(`  decoded ${n}/${list.files.length}`));
  const bad = new Set(decoded.failed.map((f) => f.index));
  for (const f of decoded.failed.slice(0, 5)) console.log(`  skipped ${list.files[f.index]}: ${f.reason}`);
  const trainIdx = split.train.filter((i) => !bad.has(i));
  const digest = digestOf(trainIdx.map((i) => relative(data, list.files[i]!)));
  console.log(`data: ${list.files.length} images in ${list.classes.length} class(es), ${trainIdx.length} train / ${split.holdout.length} held out${bad.size ? `, ${bad.size} unreadable` : ''} (decoded in ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
  if (resume?.data && resume.data.digest !== digest) throw new Error(`the training images differ from the run being resumed (${resume.data.digest} vs ${digest})`);

  const perEpoch = Math.floor(trainIdx.length / (resume?.run?.batchSize ?? opts['batch-size']));
  const run: VaeRunOptions = resume?.run ?? {
    batchSize: opts['batch-size'],
    epochs: opts.epochs,
    totalSteps: Math.min(opts.epochs * perEpoch, opts['max-steps'] ?? Infinity),
    lr: opts.lr,
    warmup: opts.warmup,
    weightDecay: opts['weight-decay'],
    beta: opts.beta,
    betaWarmup: opts['beta-warmup'],
    clipNorm: opts['clip-norm'],
    seed: opts.seed,
    holdoutFraction,
  };
  mkdirSync(out, { recursive: true });
  if (!resume) writeFileSync(join(out, 'run.json'), JSON.stringify({ config, run, data: { images: trainIdx.length, holdout: split.holdout.length, digest } }, null, 2) + '\n');
  const load = loadavg().map((l) => l.toFixed(1)).join(' ');
  console.log(`model: ${config.encoder} encoder, channels [${config.channels}], latent ${config.latent}, ${config.act}, ${config.recon} likelihood`);
  console.log(`run: ${run.totalSteps} steps of ${run.batchSize} (${perEpoch}/epoch), lr ${run.lr}, β ${run.beta}${run.betaWarmup ? ` after ${run.betaWarmup} warmup steps` : ''}, seed ${run.seed}${resume ? `, resuming at step ${resume.optimizer?.step}` : ''}; load average ${load}`);
  const res = await trainVae(config, run, { pixels: decoded.pixels, train: trainIdx, holdout: split.holdout.filter((i) => !bad.has(i)), digest }, {
    out,
    minutes: opts.minutes,
    logEvery: opts['log-every'],
    saveEvery: opts['save-every'],
    evalEvery: opts['eval-every'],
    evalImages: opts['eval-images'],
    threads: opts.threads,
    log: (l) => console.log(l),
  }, resume);
  const params = (await loadVaeCheckpoint(ckPath)).params;
  console.log(`done: ${res.steps} steps in ${(res.seconds / 60).toFixed(1)} min, ${res.imagesPerSecond.toFixed(1)} images/s (step time only), ${paramCount(params)} parameters; checkpoint ${ckPath}; load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
}

// ---------------------------------------------------------------- inference commands

interface Loaded {
  model: VaeModel;
  seed: number;
  holdoutFraction: number;
}

async function loadModel(cmd: string, path: string | undefined, threads?: number): Promise<Loaded> {
  const ck = await loadVaeCheckpoint(required(cmd, 'model', path));
  return { model: await VaeModel.create(ck.config, ck.params, threads), seed: ck.run?.seed ?? 0, holdoutFraction: ck.run?.holdoutFraction ?? 0.1 };
}

/** The chosen split's image indices, `count` of them evenly spaced (every class, as the split is sorted by class). */
async function pickImages(cmd: string, o: { data?: string; split: string; 'holdout-fraction'?: number }, fallbackFraction: number, size: number, count?: number) {
  const list = listImages(required(cmd, 'data', o.data));
  const split = splitHoldout(list, o['holdout-fraction'] ?? fallbackFraction);
  let idx = o.split === 'all' ? [...list.files.keys()] : o.split === 'train' ? split.train : split.holdout;
  if (idx.length === 0) throw new Error(`vae ${cmd}: the ${o.split} split of '${o.data}' is empty`);
  if (count !== undefined && count < idx.length) idx = Array.from({ length: count }, (_, i) => idx[Math.floor((i * idx.length) / count)]!);
  const decoded = await decodeImages(idx.map((i) => list.files[i]!), size);
  if (decoded.failed.length) throw new Error(`cannot decode ${list.files[idx[decoded.failed[0]!.index]!]}: ${decoded.failed[0]!.reason}`);
  return { pixels: decoded.pixels, n: idx.length };
}

async function evaluate(argv: string[]): Promise<void> {
  const { opts, positionals } = parse('vae eval', argv, EVAL);
  noPositionals('eval', positionals);
  const { model, seed, holdoutFraction } = await loadModel('eval', opts.model, opts.threads);
  const t0 = performance.now();
  const { pixels, n } = await pickImages('eval', opts, holdoutFraction, model.config.imageSize, opts.limit);
  const e = await model.evaluate(pixels, [...Array(n).keys()], { seed: opts.seed ?? seed, batchSize: opts['batch-size'] });
  const d = 3 * model.config.imageSize ** 2;
  const likelihood =
    model.config.recon === 'bce'
      ? 'Bernoulli on v/255 (not a probability of 8-bit images: bits/dim = −ELBO/(D·ln 2) is not comparable)'
      : `Gaussian N(x; decoder mean, σ²), σ ${model.config.recon === 'gaussian' ? 'learned' : `fixed at ${model.config.sigma}`}, on x = (v + u)/256, u ~ U[0,1): bits/dim = (−ELBO + D·ln 256)/(D·ln 2)`;
  const outObj = { model: opts.model, data: opts.data, split: opts.split, ...e, dims: d, likelihood, elboSamples: 1, seconds: (performance.now() - t0) / 1000 };
  if (opts.json) return console.log(JSON.stringify(outObj, null, 2));
  console.log(
    [
      `images      ${e.images} (${opts.split} split of ${opts.data})`,
      `MSE         ${e.mse.toFixed(6)} per pixel on [0,1] (reconstruction from z = μ)`,
      `−ELBO       ${e.negElbo.toFixed(1)} nats/image = recon ${e.recon.toFixed(1)} + KL ${e.kl.toFixed(1)} (one z sample per image)`,
      `bits/dim    ${e.bitsPerDim.toFixed(4)}   (D = ${d})`,
      `likelihood  ${likelihood}`,
      `active dims ${e.activeDims} of ${model.config.latent} (Var_x E[z|x] > 0.01)`,
      `time        ${outObj.seconds.toFixed(1)} s`,
    ].join('\n'),
  );
}

function tilesOf(x: Float32Array, n: number, size: number): RgbImage[] {
  return Array.from({ length: n }, (_, i) => fromCHW(x, size, i * 3 * size * size));
}

function bytesTile(pixels: Uint8Array, i: number, size: number): RgbImage {
  const per = size * size * 3;
  return { data: pixels.subarray(i * per, (i + 1) * per), width: size, height: size };
}

async function writeOut(cmd: string, path: string | undefined, tiles: RgbImage[], columns: number, scale: number): Promise<void> {
  const out = required(cmd, 'out', path);
  mkdirSync(dirname(out), { recursive: true });
  await writeGrid(out, tiles, { columns, scale });
  console.log(`wrote ${out} (${tiles.length} tiles, ${columns} per row)`);
}

async function reconstruct(argv: string[]): Promise<void> {
  const { opts, positionals } = parse('vae reconstruct', argv, RECONSTRUCT);
  noPositionals('reconstruct', positionals);
  const { model, holdoutFraction } = await loadModel('reconstruct', opts.model, opts.threads);
  const s = model.config.imageSize;
  const { pixels, n } = await pickImages('reconstruct', opts, holdoutFraction, s, opts.count);
  const rec = (await model.forward(toInput(pixels, [...Array(n).keys()], model.config))).mean!.data as Float32Array;
  // Rows of `columns` inputs, each followed by the row of their reconstructions.
  const tiles: RgbImage[] = [];
  const cols = Math.min(opts.columns, n);
  for (let at = 0; at < n; at += cols) {
    const row = [...Array(Math.min(cols, n - at)).keys()].map((k) => at + k);
    const fill = (t: RgbImage[]): RgbImage[] => [...t, ...Array.from({ length: cols - t.length }, () => ({ data: new Uint8Array(s * s * 3).fill(255), width: s, height: s }))];
    tiles.push(...fill(row.map((i) => bytesTile(pixels, i, s))), ...fill(row.map((i) => fromCHW(rec, s, i * 3 * s * s))));
  }
  await writeOut('reconstruct', opts.out, tiles, cols, opts.scale);
}

async function sample(argv: string[]): Promise<void> {
  const { opts, positionals } = parse('vae sample', argv, SAMPLE);
  noPositionals('sample', positionals);
  const { model } = await loadModel('sample', opts.model, opts.threads);
  const rng = new Rng(`${opts.seed}:sample`);
  const z = Float32Array.from({ length: opts.count * model.config.latent }, () => opts.temperature * rng.normal());
  await writeOut('sample', opts.out, tilesOf(await model.decode(z), opts.count, model.config.imageSize), opts.columns, opts.scale);
}

async function interpolate(argv: string[]): Promise<void> {
  const { opts, positionals } = parse('vae interpolate', argv, INTERPOLATE);
  noPositionals('interpolate', positionals);
  const { model, holdoutFraction } = await loadModel('interpolate', opts.model, opts.threads);
  const { latent, imageSize: s } = model.config;
  const { pixels, n } = await pickImages('interpolate', opts, holdoutFraction, s, 2 * opts.pairs);
  if (n < 2) throw new Error('vae interpolate: needs at least two images');
  const mu = (await model.forward(toInput(pixels, [...Array(n).keys()], model.config))).mu!.data as Float32Array;
  const pairs = Math.floor(n / 2);
  // Linear interpolation between the posterior means of neighbouring picks (usually different classes).
  const z = new Float32Array(pairs * opts.steps * latent);
  for (let p = 0; p < pairs; p++) {
    for (let k = 0; k < opts.steps; k++) {
      const t = k / (opts.steps - 1);
      for (let j = 0; j < latent; j++) z[(p * opts.steps + k) * latent + j] = (1 - t) * mu[2 * p * latent + j]! + t * mu[(2 * p + 1) * latent + j]!;
    }
  }
  const dec = tilesOf(await model.decode(z), pairs * opts.steps, s);
  const tiles: RgbImage[] = [];
  for (let p = 0; p < pairs; p++) tiles.push(bytesTile(pixels, 2 * p, s), ...dec.slice(p * opts.steps, (p + 1) * opts.steps), bytesTile(pixels, 2 * p + 1, s));
  await writeOut('interpolate', opts.out, tiles, opts.steps + 2, opts.scale);
}
