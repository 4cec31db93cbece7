// clipkit index: loads offline embeddings ([N, D] .npy, float32 or float16) and their metadata (a
// JSONL file, one object per row: {path, caption, ...}) into a vector store directory, then builds
// the ANN index when the store is large enough (--ann auto), always (on) or never (off).
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { NpyReader } from '../../index/npy.js';
import { DEFAULT_ANN_THRESHOLD, type StoreItem, VectorStore } from '../../index/store.js';
import { UsageError, parse, usage } from '../args.js';
import type { Command } from '../main.js';

const SPECS = {
  db: { type: 'string', help: 'the vector store directory (created when missing)' },
  metadata: { type: 'string', help: 'JSONL metadata, one object per row (default: the .jsonl in the input directory)' },
  'ids-from': { type: 'string', choices: ['row', 'metadata', 'path'], default: 'row', help: "row: the row number; metadata: each row's 'id' field; path: each row's 'path' field" },
  ann: { type: 'string', choices: ['auto', 'on', 'off'], default: 'auto', help: 'IVF-PQ index: auto (from --ann-threshold rows), on (build/rebuild now), off (exact search; drops an index)' },
  'ann-threshold': { type: 'int', min: 0, default: DEFAULT_ANN_THRESHOLD, help: 'row count from which --ann auto builds the index' },
  upsert: { type: 'boolean', help: 'replace rows whose id is already stored (default: such ids are an error)' },
  batch: { type: 'int', min: 1, default: 10_000, help: 'rows written per batch' },
  json: { type: 'boolean', help: 'print a JSON summary' },
  help: { type: 'boolean', short: 'h', help: 'show this help' },
} as const;

const index: Command = {
  summary: 'load embeddings (.npy + metadata .jsonl) into a vector store',
  async run(argv) {
    const { opts, positionals } = parse('index', argv, SPECS);
    if (opts.help) return console.log(usage('index', this.summary, SPECS, '<embeddings.npy | directory> --db <dir>'));
    if (positionals.length !== 1) throw new UsageError('index: give one embeddings .npy file or a directory holding one');
    if (!opts.db) throw new UsageError('index: --db <dir> is required');
    const { npy, jsonl } = resolveInputs(positionals[0]!, opts.metadata);

    const reader = NpyReader.open(npy);
    try {
      const { shape } = reader.header;
      if (shape.length !== 2 || shape[1]! < 1) throw new Error(`index: ${npy} has shape [${shape}]; embeddings must be [N, D]`);
      const [rows, dim] = shape as [number, number];
      const meta = jsonl ? readJsonl(jsonl, rows) : undefined;
      const ids = rowIds(opts['ids-from'], rows, meta, jsonl);

      const store = await VectorStore.open(opts.db, { dim, annThreshold: opts['ann-threshold'], autoIndex: false });
      try {
        const progress = progressPrinter(rows);
        const t0 = performance.now();
        let inserted = 0;
        let updated = 0;
        for (let lo = 0; lo < rows; lo += opts.batch) {
          const hi = Math.min(rows, lo + opts.batch);
          const data = reader.readRows(lo, hi);
          const items: StoreItem[] = [];
          for (let i = lo; i < hi; i++) {
            // Metadata first, so a row's own id and vector win over same-named metadata keys.
            items.push({ ...meta?.[i], id: ids[i]!, vector: data.subarray((i - lo) * dim, (i - lo + 1) * dim) });
          }
          try {
            if (opts.upsert) {
              const r = await store.upsert(items, { deferIndex: true });
              inserted += r.inserted;
              updated += r.updated;
            } else {
              await store.add(items, { deferIndex: true });
              inserted += items.length;
            }
          } catch (e) {
            throw new Error(`index: rows ${lo}–${hi - 1} of ${npy}: ${(e as Error).message}`);
          }
          progress(hi, performance.now() - t0);
        }
        const loadSecs = (performance.now() - t0) / 1e3;

        const t1 = performance.now();
        let ann: string;
        if (opts.ann === 'on') {
          process.stderr.write('index: building the IVF-PQ index…\n');
          await store.createIndex();
          ann = 'built';
        } else if (opts.ann === 'off') ann = (await store.dropIndex()) ? 'dropped' : 'none';
        else {
          if ((await store.count()) >= opts['ann-threshold']) process.stderr.write('index: updating the IVF-PQ index…\n');
          ann = await store.autoIndex();
        }
        const info = await store.indexInfo();
        const summary = {
          input: npy,
          metadata: jsonl ?? null,
          db: opts.db,
          dim,
          rows,
          inserted,
          updated,
          total: await store.count(),
          loadSeconds: +loadSecs.toFixed(2),
          index: info ? { ...info, action: ann, seconds: +((performance.now() - t1) / 1e3).toFixed(2) } : null,
        };
        if (opts.json) return console.log(JSON.stringify(summary, null, 2));
        const searchKind = info ? `IVF-PQ index (${ann}; ${info.unindexedRows} rows not yet in it, searched exactly)` : `exact search (no index${ann === 'dropped' ? ': dropped' : ''})`;
        console.log(`indexed ${rows} rows (${inserted} new, ${updated} replaced) from ${npy} into ${opts.db}: ${summary.total} rows of ${dim}-d, ${searchKind}`);
      } finally {
        store.close();
      }
    } finally {
      reader.close();
    }
  },
};
export default index;

/** The embeddings file and metadata file from the positional argument and --metadata. */
function resolveInputs(input: string, metadata: string | undefined): { npy: string; jsonl?: string } {
  if (!existsSync(input)) throw new Error(`index: '${input}' does not exist`);
  if (metadata !== undefined && !existsSync(metadata)) throw new Error(`index: metadata file '${metadata}' does not exist`);
  if (!statSync(input).isDirectory()) return { npy: input, jsonl: metadata };
  const files = readdirSync(input).sort();
  const pick = (ext: string, preferred: string[], required: boolean): string | undefined => {
    const found = files.filter((f) => f.endsWith(ext));
    if (found.length === 1) return join(input, found[0]!);
    const pref = preferred.find((p) => found.includes(p));
    if (pref) return join(input, pref);
    if (found.length === 0 && !required) return undefined;
    throw new Error(
      found.length === 0
        ? `index: no ${ext} file in ${input}`
        : `index: ${input} holds several ${ext} files (${found.join(', ')}); name the one to use${ext === '.npy' ? ' as the argument' : ' with --metadata'}`,
    );
  };
  return { npy: pick('.npy', ['embeddings.npy', 'image_embeddings.npy'], true)!, jsonl: metadata ?? pick('.jsonl', ['metadata.jsonl'], false) };
}

/** One JSON object per line, exactly `rows` of them (a trailing newline is fine, blank lines are not). */
function readJsonl(path: string, rows: number): Record<string, unknown>[] {
  const lines = readFileSync(path, 'utf8').split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  const out = lines.map((line, i) => {
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new Error(`index: ${path}:${i + 1}: not JSON (${(e as Error).message})`);
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`index: ${path}:${i + 1}: each line must be a JSON object`);
    return v as Record<string, unknown>;
  });
  if (out.length !== rows) throw new Error(`index: ${path} has ${out.length} lines but the embeddings have ${rows} rows (one metadata object per row)`);
  return out;
}

function rowIds(from: string, rows: number, meta: Record<string, unknown>[] | undefined, jsonl: string | undefined): string[] {
  if (from === 'row') {
    if (meta && rows > 0 && 'id' in meta[0]!) throw new Error(`index: the metadata rows have an 'id' field: pass --ids-from metadata to use it as the id (or rename the field)`);
    return Array.from({ length: rows }, (_, i) => String(i));
  }
  const field = from === 'metadata' ? 'id' : 'path';
  if (!meta) throw new Error(`index: --ids-from ${from} needs a metadata .jsonl file (--metadata)`);
  return meta.map((m, i) => {
    const v = m[field];
    if ((typeof v !== 'string' || v === '') && !Number.isFinite(v)) throw new Error(`index: ${jsonl}:${i + 1}: '${field}' must be a non-empty string or a number for --ids-from ${from}`);
    return String(v);
  });
}

/** Progress on stderr: one updating line on a terminal, a line per ~10% otherwise. */
function progressPrinter(total: number): (done: number, ms: number) => void {
  const tty = process.stderr.isTTY;
  let lastDecile = -1;
  return (done, ms) => {
    const rate = done / Math.max(ms / 1e3, 1e-3);
    const text = `index: ${done}/${total} rows (${Math.round((100 * done) / total)}%, ${Math.round(rate)} rows/s)`;
    if (tty) process.stderr.write(`\r${text}${done === total ? '\n' : ''}`);
    else if (Math.floor((10 * done) / total) !== lastDecile) {
      lastDecile = Math.floor((10 * done) / total);
      process.stderr.write(`${text}\n`);
    }
  };
}
