// clipkit search: embeds a text (or, with --image, an image) with a CLIP model and prints the nearest
// items of a vector store. The store must hold embeddings from a model with the same embedDim (ideally
// the same model: CLIP's two towers only share a space within one model).
import { existsSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { type SearchHit, VectorStore } from '../../index/store.js';
import { UsageError, parse, usage } from '../args.js';
import type { Command } from '../main.js';

const SPECS = {
  db: { type: 'string', help: 'the vector store directory' },
  model: { type: 'string', help: 'CLIP model: a directory or a .safetensors file' },
  tokenizer: { type: 'string', help: 'tokenizer vocabulary file or directory (default: the model directory)' },
  image: { type: 'string', help: 'search by this image instead of a text' },
  k: { type: 'int', short: 'k', min: 1, default: 20, help: 'number of results' },
  filter: { type: 'string', help: "SQL predicate over id, path, caption, meta, e.g. \"path LIKE 'cats/%'\"" },
  exact: { type: 'boolean', help: 'skip the ANN index (exact scan)' },
  nprobes: { type: 'int', min: 1, help: 'IVF partitions to probe (index only)' },
  refine: { type: 'int', min: 0, help: 'refine factor: re-rank refine × k candidates exactly (index only; 0: PQ scores)' },
  json: { type: 'boolean', help: 'print JSON' },
  help: { type: 'boolean', short: 'h', help: 'show this help' },
} as const;

const search: Command = {
  summary: 'search a vector store by text or image with a CLIP model',
  async run(argv) {
    const { opts, positionals } = parse('search', argv, SPECS);
    if (opts.help) return console.log(usage('search', this.summary, SPECS, '"<text>" | --image <file>  --db <dir> --model <path>'));
    const text = positionals.join(' ');
    if (opts.image !== undefined && text !== '') throw new UsageError('search: give a text or --image, not both');
    if (opts.image === undefined && text.trim() === '') throw new UsageError('search: give a query text (quoted) or --image <file>');
    if (!opts.db) throw new UsageError('search: --db <dir> is required');
    if (!opts.model) throw new UsageError('search: --model <path> is required');
    if (opts.image !== undefined && !existsSync(opts.image)) throw new Error(`search: image '${opts.image}' does not exist`);
    if (!existsSync(opts.db)) throw new Error(`search: no vector store at '${opts.db}'`);

    // The store first: it is cheap to open and says which dimension the model must produce.
    const store = await VectorStore.open(opts.db).catch((e: Error) => {
      throw /no store in/.test(e.message) ? new Error(`search: no vector store in '${opts.db}' (build one with clipkit index)`) : e;
    });
    try {
      const { loadClip } = await import('../../models/load.js');
      const model = await loadClip(opts.model);
      if (model.config.embedDim !== store.dim) {
        throw new Error(`search: the store at ${opts.db} holds ${store.dim}-d embeddings, but model ${opts.model} embeds to ${model.config.embedDim}-d (index embeddings made with this model)`);
      }
      let query: Float32Array;
      if (opts.image !== undefined) {
        const { preprocessBatch } = await import('../../data/image.js');
        const pixels = await preprocessBatch([opts.image], { size: model.config.vision.imageSize });
        query = (await model.encodeImage(pixels)).data;
      } else {
        const { loadTokenizer } = await import('../../tokenizer/index.js');
        const tokPath = opts.tokenizer ?? (statSync(opts.model).isDirectory() ? opts.model : dirname(opts.model));
        let tokenizer;
        try {
          tokenizer = await loadTokenizer(tokPath);
        } catch (e) {
          throw new Error(`search: ${(e as Error).message}${opts.tokenizer ? '' : ' (pass --tokenizer)'}`);
        }
        const tokens = tokenizer.encode([text], { contextLength: model.config.text.contextLength, truncate: true });
        query = (await model.encodeText(tokens)).data;
      }
      const hits = await store.search(query, opts.k, { filter: opts.filter, exact: opts.exact, nprobes: opts.nprobes, refineFactor: opts.refine });
      if (opts.json) console.log(JSON.stringify(hits, null, 2));
      else printHits(hits);
    } finally {
      store.close();
    }
  },
};
export default search;

function printHits(hits: SearchHit[]): void {
  if (hits.length === 0) return console.log('no results');
  const clip = (s: string | undefined, n: number): string => (s === undefined ? '' : s.length > n ? `${s.slice(0, n - 1)}…` : s);
  const rows = hits.map((h, i) => [String(i + 1), h.score.toFixed(4), h.id, clip(h.path, 60), clip(h.caption, 60)]);
  const header = ['#', 'score', 'id', 'path', 'caption'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (c: string[]): string => c.map((x, i) => (i < 2 ? x.padStart(widths[i]!) : x.padEnd(widths[i]!))).join('  ').trimEnd();
  console.log(line(header));
  for (const r of rows) console.log(line(r));
}
