// clipkit embed: image (and caption) embeddings of a folder, a caption table or tar shards, in
// resumable parts, merged into embeddings.npy + metadata.jsonl for `clipkit index` (see src/embed/).
import { clipkitCacheDir } from '../../hub/cache.js';
import { parse, usage, UsageError, INT8_OPTION, quantizeOf } from '../args.js';
import { resolveModel } from '../default-model.js';
import type { Command } from '../main.js';

const SPECS = {
  out: { type: 'string', help: 'output directory (parts, progress, and the merged embeddings.npy + metadata.jsonl)' },
  model: { type: 'string', help: 'model: a directory, a .safetensors file, or a pulled repo id (default: the shipped CIFAR-10 model)' },
  tokenizer: { type: 'string', help: "tokenizer for --captions (default: the model's directory)" },
  'batch-size': { type: 'int', default: 64, min: 1, max: 4096, help: 'images per tower run' },
  dtype: { type: 'string', default: 'float32', choices: ['float32', 'float16'], help: 'stored precision of the embeddings' },
  shard: { type: 'string', help: "i/n: embed only items whose index % n == i (0 ≤ i < n); run each i (anywhere), with the same --out or merged later" },
  captions: { type: 'boolean', help: 'also embed the captions (text_embeddings.npy, row for row)' },
  'part-rows': { type: 'int', default: 4096, min: 1, help: 'rows per part file (the most work a crash can cost)' },
  workers: { type: 'int', default: 1, min: 1, max: 64, help: 'inference worker threads' },
  threads: { type: 'int', min: 1, help: 'ONNX Runtime threads per worker (default: cores / workers)' },
  merge: { type: 'boolean', help: 'only merge the finished shards in --out (after running the shards elsewhere and copying their parts/ in)' },
  json: { type: 'boolean', help: 'print a JSON summary' },
  int8: INT8_OPTION,
  help: { type: 'boolean', short: 'h', help: 'show this help' },
} as const;

const embed: Command = {
  summary: 'embed images (and captions) of a folder, table or tar shards into .npy + JSONL',
  async run(argv) {
    const { opts, positionals } = parse('embed', argv, SPECS);
    if (opts.help) return console.log(usage('embed', this.summary, SPECS, '<folder | table.csv|.tsv|.jsonl | shard.tar…> --out <dir>'));
    if (!opts.out) throw new UsageError('embed: --out <dir> is required');
    const { finishedShards, mergeShards } = await import('../../embed/merge.js');
    if (opts.merge) {
      if (positionals.length) throw new UsageError('embed --merge takes no input, only --out');
      const done = finishedShards(opts.out);
      if ('missing' in done) throw new Error(`embed: cannot merge ${opts.out}: shard(s) ${done.missing.join(', ')} not finished`);
      const m = mergeShards(opts.out, done);
      return report(opts.json, { merged: m }, opts.out);
    }
    if (positionals.length === 0) throw new UsageError('embed: give a folder, a .csv/.tsv/.jsonl caption table, or .tar shards');
    const shard = parseShard(opts.shard);
    const model = resolveModel('embed', opts.model);
    const { runEmbed } = await import('../../embed/job.js');
    const summary = await runEmbed({
      inputs: positionals,
      out: opts.out,
      modelPath: model.path,
      tokenizer: opts.tokenizer,
      cacheRoot: clipkitCacheDir(),
      batchSize: opts['batch-size'],
      dtype: opts.dtype as 'float32' | 'float16',
      shard,
      captions: opts.captions,
      partRows: opts['part-rows'],
      workers: opts.workers,
      threads: opts.threads,
      quantize: quantizeOf(opts.int8),
    });
    report(opts.json, summary, opts.out);
  },
};
export default embed;

function parseShard(s: string | undefined): [number, number] {
  if (s === undefined) return [0, 1];
  const m = /^(\d+)\/(\d+)$/.exec(s.trim());
  if (!m || Number(m[2]) < 1 || Number(m[1]) >= Number(m[2])) throw new UsageError(`embed: --shard must be i/n with 0 ≤ i < n (e.g. 0/4), got '${s}'`);
  return [Number(m[1]), Number(m[2])];
}

function report(json: boolean, s: { embedded?: number; failed?: number; resumed?: number; merged?: { rows: number; dim: number; files: string[]; failed: unknown[] }; pendingShards?: string[] }, out: string): void {
  if (json) return console.log(JSON.stringify(s, null, 2));
  const lines: string[] = [];
  if (s.embedded !== undefined) lines.push(`embedded ${s.embedded} images${s.failed ? `, ${s.failed} unreadable (skipped, listed in ${out}/embed-info.json)` : ''}${s.resumed ? `; ${s.resumed} done by an earlier run` : ''}`);
  if (s.merged) lines.push(`wrote ${s.merged.rows} × ${s.merged.dim} to ${out}: ${s.merged.files.join(', ')} — load with: clipkit index ${out} --db <dir>`);
  if (s.pendingShards) lines.push(`shard done; merging waits for shard(s) ${s.pendingShards.join(', ')} (or run clipkit embed --merge --out ${out} once their parts are in ${out}/parts)`);
  console.log(lines.join('\n'));
}
