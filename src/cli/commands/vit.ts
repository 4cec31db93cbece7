// clipkit vit train|eval: ViT image classification (chapter 5.2), from scratch or from a CLIP tower.
import { writeFileSync } from 'node:fs';
import { imageFolder } from '../../data/datasets.js';
import { DataLoader } from '../../data/loader.js';
import { evaluateVit, loadVit, runVitTraining, type VitRunConfig } from '../../train/vit-run.js';
import { type OptSpec, UsageError, checkResumeFlags, parse, readRunConfig, usage } from '../args.js';
import type { Command } from '../main.js';

const TRAIN = {
  out: { type: 'string', help: 'run folder' },
  model: { type: 'string', default: 'ViT-Ti-4-32', help: "a preset's image tower (clipkit info), a ViT config .json, or a CLIP model to fine-tune" },
  pool: { type: 'string', choices: ['cls', 'mean', 'attn'], help: 'pooling: class token, mean of tokens, or attention pooling (default: the model’s)' },
  'patch-dropout': { type: 'float', min: 0, max: 0.95, help: 'fraction of patch tokens dropped at random in training (FLIP; default: the model’s, else 0)' },
  'unmasked-tune': { type: 'float', min: 0, max: 1, help: 'with --patch-dropout: the last fraction of the steps uses every patch (FLIP unmasked tuning)' },
  epochs: { type: 'float', min: 0, help: 'epochs' },
  minutes: { type: 'float', min: 0, help: 'time budget (the cosine schedule is fitted to it)' },
  'max-steps': { type: 'int', min: 1, help: 'steps' },
  'batch-size': { type: 'int', default: 128, min: 1, max: 65536, help: 'images per step' },
  lr: { type: 'float', default: 1e-3, min: 0, max: 1, help: 'peak learning rate' },
  wd: { type: 'float', default: 0.05, min: 0, max: 10, help: 'AdamW weight decay' },
  warmup: { type: 'int', default: 200, min: 0, help: 'warmup steps' },
  'clip-norm': { type: 'float', min: 0, help: 'global gradient-norm clipping' },
  'label-smoothing': { type: 'float', default: 0.1, min: 0, max: 0.99, help: 'label smoothing' },
  mixup: { type: 'float', default: 0, min: 0, help: 'mixup Beta(α, α); 0: off' },
  cutmix: { type: 'float', default: 0, min: 0, help: 'cutmix Beta(α, α); 0: off' },
  holdout: { type: 'float', default: 0.1, min: 0, max: 0.9, help: 'fraction of each class held out' },
  'eval-every': { type: 'int', default: 500, min: 0, help: 'steps between held-out evaluations' },
  'save-every': { type: 'int', default: 500, min: 1, help: 'steps between checkpoints' },
  seed: { type: 'int', default: 0, help: 'seed' },
  workers: { type: 'int', default: 1, min: 0, max: 64, help: 'data worker threads' },
  threads: { type: 'int', min: 1, max: 256, help: 'ONNX Runtime threads' },
  'cache-images': { type: 'boolean', help: 'decode images once and keep them in memory' },
  'crop-scale': { type: 'float', default: 0.35, min: 0.05, max: 1, help: 'smallest area fraction of the random resized crop' },
  resume: { type: 'boolean', help: 'continue the run in --out' },
  json: { type: 'boolean', help: 'print JSON' },
  help: { type: 'boolean', short: 'h', help: 'show this help' },
} as const satisfies Record<string, OptSpec>;

const EVAL = {
  model: { type: 'string', help: 'a ViT classifier (.safetensors written by vit train)' },
  data: { type: 'string', help: 'image folder by class with the same classes' },
  confusion: { type: 'string', help: 'write the confusion matrix as HTML here' },
  tta: { type: 'string', default: 'none', choices: ['none', 'flip'], help: 'test-time augmentation: flip also classifies each image mirrored and averages the logits' },
  'batch-size': { type: 'int', default: 250, min: 1, help: 'images per batch' },
  workers: { type: 'int', default: 1, min: 0, max: 64, help: 'data worker threads' },
  json: { type: 'boolean', help: 'print JSON' },
  help: { type: 'boolean', short: 'h', help: 'show this help' },
} as const satisfies Record<string, OptSpec>;

export function confusionHtml(classes: readonly string[], m: number[][]): string {
  const max = Math.max(1, ...m.flat());
  const cell = (v: number, diag: boolean): string => `<td style="background:rgba(${diag ? '31,119,180' : '214,39,40'},${(v / max).toFixed(3)})">${v}</td>`;
  const head = `<tr><th>true \\ predicted</th>${classes.map((c) => `<th>${escape(c)}</th>`).join('')}</tr>`;
  const rows = m.map((r, i) => `<tr><th>${escape(classes[i]!)}</th>${r.map((v, j) => cell(v, i === j)).join('')}</tr>`).join('\n');
  return `<!doctype html><meta charset="utf-8"><title>confusion matrix</title><style>td,th{padding:4px 8px;text-align:right;font:13px sans-serif}</style><table>${head}\n${rows}</table>\n`;
}

function escape(s: string): string {
  return s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);
}

const vit: Command = {
  summary: 'ViT image classification: train <folder by class> | eval',
  async run(argv) {
    const [sub, ...rest] = argv;
    if (sub === 'train') {
      const { opts, positionals } = parse('vit train', rest, TRAIN);
      if (opts.help) return console.log(usage('vit train', 'train a ViT classifier on an image folder by class', TRAIN, '<folder> --out <dir>'));
      if (!opts.out) throw new UsageError('vit train: --out is required');
      if (opts.resume) checkResumeFlags('vit train', rest, ['out', 'resume', 'json', 'threads', 'workers']);
      const cfg: VitRunConfig = opts.resume
        ? { ...readRunConfig<VitRunConfig>('vit train', opts.out), ...(opts.threads !== undefined ? { threads: opts.threads } : {}) }
        : {
            data: positionals[0] ?? (() => { throw new UsageError('vit train: give the image folder'); })(),
            out: opts.out,
            model: opts.model,
            pool: opts.pool as VitRunConfig['pool'],
            patchDropout: opts['patch-dropout'],
            unmaskedTune: opts['unmasked-tune'],
            epochs: opts.epochs,
            minutes: opts.minutes,
            maxSteps: opts['max-steps'],
            batchSize: opts['batch-size'],
            lr: opts.lr,
            weightDecay: opts.wd,
            warmup: opts.warmup,
            clipNorm: opts['clip-norm'],
            labelSmoothing: opts['label-smoothing'],
            mixup: opts.mixup,
            cutmix: opts.cutmix,
            holdout: opts.holdout,
            evalEvery: opts['eval-every'],
            saveEvery: opts['save-every'],
            seed: opts.seed,
            workers: opts.workers,
            threads: opts.threads,
            cacheImages: opts['cache-images'],
            augmentScale: [opts['crop-scale'], 1],
          };
      if (!opts.resume && cfg.epochs === undefined && cfg.minutes === undefined && cfg.maxSteps === undefined) throw new UsageError('vit train: give --epochs, --minutes or --max-steps');
      const r = await runVitTraining(cfg, opts.resume);
      console.log(opts.json ? JSON.stringify(r) : `trained ${r.steps} steps in ${r.seconds.toFixed(0)} s; held-out top-1 ${r.top1 !== undefined ? (r.top1 * 100).toFixed(1) + '%' : 'n/a'}\nmodel: ${r.modelPath}`);
      return;
    }
    if (sub === 'eval') {
      const { opts } = parse('vit eval', rest, EVAL);
      if (opts.help) return console.log(usage('vit eval', 'top-1/top-5 and the confusion matrix of a ViT classifier', EVAL));
      if (!opts.model || !opts.data) throw new UsageError('vit eval: --model and --data are required');
      const { config, classes, params } = await loadVit(opts.model);
      const src = await imageFolder(opts.data, { templates: ['{}'] });
      if (src.classes.join('\n') !== classes.join('\n')) throw new UsageError(`vit eval: the folder's classes (${src.classes.join(', ')}) differ from the model's (${classes.join(', ')})`);
      const noText = { encode: (t: readonly string[]) => ({ data: new Int32Array(t.length), shape: [t.length, 1] as [number, number] }) };
      const loader = new DataLoader(src, { batchSize: opts['batch-size'], imageSize: config.imageSize, train: false, tokenizer: noText, contextLength: 1, workers: opts.workers });
      try {
        const r = await evaluateVit(config, params, loader, classes.length, undefined, opts.tta as 'none' | 'flip');
        if (opts.confusion) writeFileSync(opts.confusion, confusionHtml(classes, r.confusion));
        const out = { model: opts.model, data: opts.data, tta: opts.tta, images: r.images, skipped: loader.stats.skipped, top1: r.metrics.top1, top5: r.metrics.top5, confusion: r.confusion };
        console.log(opts.json ? JSON.stringify(out) : `${r.images} images: top-1 ${(out.top1! * 100).toFixed(2)}%, top-5 ${(out.top5! * 100).toFixed(2)}%${opts.confusion ? `\nconfusion matrix: ${opts.confusion}` : ''}`);
      } finally {
        await loader.close();
      }
      return;
    }
    throw new UsageError(`vit: expected 'train' or 'eval', got '${sub ?? ''}'`);
  },
};
export default vit;
