// clipkit classify: zero-shot labels for images — softmax over logit_scale · cos(image, label), where
// each label is embedded through a prompt-template ensemble. Class embeddings are cached on disk per
// (model, labels, templates), so repeated runs only pay for the images.
import { join } from 'node:path';
import { clipkitCacheDir } from '../../hub/cache.js';
import type { LabelScore } from '../../serve/zeroshot.js';
import { parse, usage, UsageError, INT8_OPTION, quantizeOf } from '../args.js';
import { CIFAR10_CLASSES, resolveModel } from '../default-model.js';
import { findTokenizer } from '../find-tokenizer.js';
import type { Command } from '../main.js';

const SPECS = {
  labels: { type: 'string', help: 'comma-separated labels, e.g. "cat,dog,car" (default on the shipped CIFAR-10 model: its 10 classes)' },
  templates: { type: 'string', default: 'simple', help: "prompt templates: 'simple' (a photo of a {}.), 'cifar10' (CLIP's 18), or a file with one template per line" },
  model: { type: 'string', help: 'model: a directory, a .safetensors file, or a pulled repo id (default: the shipped CIFAR-10 model)' },
  tokenizer: { type: 'string', help: "tokenizer vocabulary file or directory (default: the model's directory)" },
  k: { type: 'int', short: 'k', default: 5, min: 1, help: 'labels shown per image' },
  'batch-size': { type: 'int', default: 32, min: 1, help: 'images encoded per batch' },
  json: { type: 'boolean', help: 'print JSON: one object per image' },
  int8: INT8_OPTION,
  help: { type: 'boolean', short: 'h', help: 'show this help' },
} as const;

type Result = { image: string; labels: LabelScore[] } | { image: string; error: string };

const classify: Command = {
  summary: 'zero-shot labels for images (top-k with probabilities)',
  async run(argv) {
    const { opts, positionals } = parse('classify', argv, SPECS);
    if (opts.help) return console.log(usage('classify', this.summary, SPECS, '<image…> [--labels "a,b,c"]'));
    if (positionals.length === 0) throw new UsageError('classify: give one or more image files');
    const resolved = resolveModel('classify', opts.model);
    // Loaded here, not at the top: `clipkit --help` imports every command for its summary.
    const [{ preprocessClip }, { loadClip }, { modelKey }, { ClassifierCache, InputError, parseLabels, readTemplatesOption, topLabels }] = await Promise.all([
      import('../../data/image.js'),
      import('../../models/load.js'),
      import('../../serve/model-key.js'),
      import('../../serve/zeroshot.js'),
    ]);
    if (opts.labels === undefined && !resolved.isDefault) throw new UsageError('classify: --labels "a,b,c" is required with --model (only the shipped CIFAR-10 model has default labels)');
    let labels: string[];
    let templates: readonly string[];
    try {
      labels = opts.labels !== undefined ? parseLabels(opts.labels) : [...CIFAR10_CLASSES];
      templates = readTemplatesOption(opts.templates);
    } catch (e) {
      throw e instanceof InputError ? new UsageError(`classify: ${e.message}`) : e;
    }

    const model = await loadClip(resolved.path, { quantize: quantizeOf(opts.int8) });
    const D = model.config.embedDim;
    const tokenizer = await findTokenizer('classify', resolved.path, opts.tokenizer, model);
    const cache = new ClassifierCache(join(clipkitCacheDir(), 'classifiers'));
    const weights = await cache.get(modelKey(resolved.path, quantizeOf(opts.int8)), labels, templates, D, async (prompts) => {
      const out = new Float32Array(prompts.length * D);
      for (let lo = 0; lo < prompts.length; lo += 256) {
        const ids = tokenizer.encode(prompts.slice(lo, lo + 256), { contextLength: model.config.text.contextLength, truncate: true });
        out.set((await model.encodeText(ids)).data, lo * D);
      }
      return out;
    });
    const scale = Math.exp(model.logitScale);

    const size = model.config.vision.imageSize;
    const results: Result[] = [];
    const bs = opts['batch-size'];
    for (let lo = 0; lo < positionals.length; lo += bs) {
      const files = positionals.slice(lo, lo + bs);
      // One bad image must not cost the others their answer: decode each on its own.
      const decoded = await Promise.allSettled(files.map((f) => preprocessClip(f, { size })));
      const ok = decoded.flatMap((d, i) => (d.status === 'fulfilled' ? [i] : []));
      const pixels = new Float32Array(ok.length * 3 * size * size);
      ok.forEach((i, r) => pixels.set((decoded[i] as PromiseFulfilledResult<Float32Array>).value, r * 3 * size * size));
      const feats = ok.length ? (await model.encodeImage({ data: pixels, shape: [ok.length, 3, size, size] })).data : new Float32Array(0);
      decoded.forEach((d, i) => {
        if (d.status === 'rejected') results.push({ image: files[i]!, error: (d.reason as Error).message });
        else {
          const r = ok.indexOf(i);
          results.push({ image: files[i]!, labels: topLabels(feats.subarray(r * D, (r + 1) * D), weights, labels, scale, opts.k) });
        }
      });
    }

    const failed = results.filter((r) => 'error' in r);
    for (const f of failed) console.error(`classify: ${(f as { error: string }).error}`);
    if (opts.json) console.log(JSON.stringify(results.length === 1 && failed.length === 0 ? results[0] : results, null, 2));
    else printTable(results);
    if (failed.length) {
      if (positionals.length > 1) console.error(`classify: ${failed.length} of ${positionals.length} images could not be read`);
      process.exitCode = 1;
    }
  },
};
export default classify;

function printTable(results: Result[]): void {
  const lines: string[] = [];
  for (const r of results) {
    if (!('labels' in r)) continue;
    if (lines.length) lines.push('');
    lines.push(r.image);
    const w = Math.max(...r.labels.map((l) => l.label.length));
    r.labels.forEach((l, i) => {
      const bar = '█'.repeat(Math.round(l.probability * 30));
      lines.push(`  ${String(i + 1).padStart(2)}  ${l.label.padEnd(w)}  ${(100 * l.probability).toFixed(2).padStart(6)}%  ${bar}`);
    });
  }
  if (lines.length) console.log(lines.join('\n'));
}
