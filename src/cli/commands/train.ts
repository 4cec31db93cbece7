// clipkit train: contrastive training of a CLIP model from scratch or from a checkpoint.
import { readFileSync } from 'node:fs';
import { TEMPLATES } from '../../eval/zeroshot.js';
import { type RunConfig, runClipTraining } from '../../train/run.js';
import { type OptSpec, UsageError, checkResumeFlags, parse, readRunConfig, usage } from '../args.js';
import type { Command } from '../main.js';

const SPECS = {
  data: { type: 'string', help: 'image folder by class, a .csv/.tsv/.jsonl of (image, caption), or tar shards (a.tar or shard-{000..009}.tar)' },
  out: { type: 'string', help: 'run folder (config, metrics, curves, checkpoint, model)' },
  model: { type: 'string', default: 'ViT-Ti-4-32', help: 'architecture preset (clipkit info), OpenCLIP config .json, or a model to fine-tune' },
  tokenizer: { type: 'string', help: 'tokenizer file or directory (default: train a BPE vocabulary on the captions)' },
  'vocab-size': { type: 'int', default: 1024, min: 514, max: 65536, help: 'size of the trained BPE vocabulary' },
  templates: { type: 'string', default: 'simple', help: "caption templates for image folders: 'simple', 'cifar10', or a file with one per line" },
  epochs: { type: 'float', min: 0, help: 'epochs to train' },
  minutes: { type: 'float', min: 0, help: 'time budget (the cosine schedule is fitted to it)' },
  'max-steps': { type: 'int', min: 1, help: 'steps to train' },
  'batch-size': { type: 'int', default: 256, min: 2, max: 65536, help: 'pairs per step (the contrastive batch)' },
  accum: { type: 'int', default: 1, min: 1, max: 1024, help: 'micro-batches per step (GradCache: exact full-batch loss)' },
  lr: { type: 'float', default: 1e-3, min: 0, max: 1, help: 'peak learning rate' },
  wd: { type: 'float', default: 0.1, min: 0, max: 10, help: 'AdamW weight decay (OpenCLIP grouping)' },
  warmup: { type: 'int', default: 100, min: 0, help: 'warmup steps' },
  'clip-norm': { type: 'float', min: 0, help: 'global gradient-norm clipping' },
  loss: { type: 'string', default: 'clip', choices: ['clip', 'siglip', 'multipos'], help: 'contrastive loss' },
  'lock-image': { type: 'boolean', help: 'LiT: keep the image tower fixed' },
  'patch-dropout': { type: 'float', min: 0, max: 0.95, help: 'fraction of image patch tokens dropped at random in training (FLIP, OpenCLIP patch_dropout; default: the model’s, else 0)' },
  'unmasked-tune': { type: 'float', min: 0, max: 1, help: 'with --patch-dropout: the last fraction of the steps uses every patch (FLIP unmasked tuning)' },
  holdout: { type: 'float', default: 0.1, min: 0, max: 0.9, help: 'fraction of each class held out for evaluation (image folders)' },
  'eval-data': { type: 'string', help: 'a .csv/.tsv/.jsonl of (image, caption) scored by retrieval recall@1/5/10 at each evaluation' },
  'eval-every': { type: 'int', default: 200, min: 0, help: 'steps between held-out evaluations (0: off)' },
  'save-every': { type: 'int', default: 200, min: 1, help: 'steps between checkpoints' },
  seed: { type: 'int', default: 0, help: 'seed for initialisation, data order and augmentation' },
  workers: { type: 'int', default: 1, min: 0, max: 64, help: 'data worker threads' },
  threads: { type: 'int', min: 1, max: 256, help: 'ONNX Runtime threads (default: all cores)' },
  'cache-images': { type: 'boolean', help: 'decode every image once and keep it in memory' },
  'crop-scale': { type: 'float', default: 0.9, min: 0.05, max: 1, help: 'smallest area fraction of the random resized crop' },
  resume: { type: 'boolean', help: 'continue the run in --out from its checkpoint' },
  config: { type: 'string', help: 'a JSON file of these options (keys as the option names); flags override it' },
  json: { type: 'boolean', help: 'print the result as JSON' },
  help: { type: 'boolean', short: 'h', help: 'show this help' },
} as const satisfies Record<string, OptSpec>;

/** Merges a JSON config file under the command-line flags, rejecting unknown keys and wrong types. */
function withConfigFile(argv: string[]): string[] {
  const i = argv.findIndex((a) => a === '--config' || a.startsWith('--config='));
  if (i < 0) return argv;
  const file = argv[i]!.includes('=') ? argv[i]!.split('=')[1]! : argv[i + 1];
  if (!file) throw new UsageError('train: --config needs a file');
  let obj: Record<string, unknown>;
  try {
    obj = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new UsageError(`train: cannot read config ${file}: ${(e as Error).message}`);
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw new UsageError(`train: ${file} must hold a JSON object`);
  const fromFile: string[] = [];
  for (const [k, v] of Object.entries(obj)) {
    const spec = (SPECS as Record<string, OptSpec>)[k];
    if (!spec || k === 'config' || k === 'help') throw new UsageError(`train: ${file}: unknown key '${k}'`);
    const want = spec.type === 'boolean' ? 'boolean' : spec.type === 'string' ? 'string' : 'number';
    if (typeof v !== want) throw new UsageError(`train: ${file}: '${k}' must be a ${want}, got ${JSON.stringify(v)}`);
    if (spec.type === 'boolean') {
      if (v) fromFile.push(`--${k}`);
    } else fromFile.push(`--${k}`, String(v));
  }
  const rest = argv.filter((_, j) => j !== i && !(j === i + 1 && !argv[i]!.includes('=')));
  return [...fromFile, ...rest]; // later flags win in parseArgs
}

function templatesFrom(t: string): string[] {
  if (t === 'simple' || t === 'cifar10') return [...TEMPLATES[t]];
  const lines = readFileSync(t, 'utf8').split('\n').map((l) => l.trim()).filter(Boolean);
  if (!lines.length || lines.some((l) => !l.includes('{}'))) throw new UsageError(`train: ${t}: each template line needs a {} for the class name`);
  return lines;
}

const train: Command = {
  summary: 'train a CLIP model contrastively (from scratch or fine-tuning)',
  async run(argv) {
    const { opts } = parse('train', withConfigFile(argv), SPECS);
    if (opts.help) return console.log(usage('train', this.summary, SPECS, '--data <path> --out <dir>'));
    if (!opts.out) throw new UsageError('train: --out is required');
    let cfg: RunConfig;
    if (opts.resume) {
      checkResumeFlags('train', argv, ['out', 'resume', 'json', 'threads', 'workers']);
      cfg = readRunConfig<RunConfig>('train', opts.out);
      if (opts.threads !== undefined) cfg.threads = opts.threads;
      if (argv.some((a) => a.startsWith('--workers'))) cfg.workers = opts.workers;
    } else {
      if (!opts.data) throw new UsageError('train: --data is required');
      if (opts.epochs === undefined && opts.minutes === undefined && opts['max-steps'] === undefined) throw new UsageError('train: give --epochs, --minutes or --max-steps');
      if (opts['batch-size'] % opts.accum !== 0) throw new UsageError(`train: --batch-size ${opts['batch-size']} is not a multiple of --accum ${opts.accum}`);
      cfg = {
        data: opts.data,
        out: opts.out,
        model: opts.model,
        tokenizer: opts.tokenizer,
        vocabSize: opts['vocab-size'],
        templates: templatesFrom(opts.templates),
        epochs: opts.epochs,
        minutes: opts.minutes,
        maxSteps: opts['max-steps'],
        batchSize: opts['batch-size'],
        accum: opts.accum,
        lr: opts.lr,
        weightDecay: opts.wd,
        warmup: opts.warmup,
        clipNorm: opts['clip-norm'],
        loss: opts.loss as RunConfig['loss'],
        lockImage: opts['lock-image'],
        patchDropout: opts['patch-dropout'],
        unmaskedTune: opts['unmasked-tune'],
        holdout: opts.holdout,
        evalData: opts['eval-data'],
        evalEvery: opts['eval-every'],
        saveEvery: opts['save-every'],
        seed: opts.seed,
        workers: opts.workers,
        threads: opts.threads,
        cacheImages: opts['cache-images'],
        augmentScale: [opts['crop-scale'], 1],
      };
    }
    const r = await runClipTraining(cfg, opts.resume);
    if (opts.json) console.log(JSON.stringify(r));
    else console.log(`trained ${r.steps} steps in ${r.seconds.toFixed(0)} s; final loss ${r.finalLoss.toFixed(4)}${r.zeroShot ? `; held-out zero-shot top-1 ${(r.zeroShot.top1 * 100).toFixed(1)}%` : ''}${r.retrieval ? `; --eval-data text→image R@1 ${(r.retrieval.textToImage[1]! * 100).toFixed(1)}%, R@5 ${(r.retrieval.textToImage[5]! * 100).toFixed(1)}%` : ''}\nmodel: ${r.modelDir}`);
  },
};
export default train;
