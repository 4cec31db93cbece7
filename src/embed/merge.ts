// Merging finished shards into the files `clipkit index <out>` reads: embeddings.npy [N, D] (image
// embeddings, unit-norm), metadata.jsonl (one object per row) and, with captions, text_embeddings.npy
// (row i is row i's caption). Rows come out in input order — a k-way merge on the item index over the
// shards' parts, which are each in index order — so the result does not depend on how the work was
// sharded. Memory: one part per shard at a time.
import { readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { NpyReader, NpyWriter } from '../index/npy.js';
import { type Manifest, type PartInfo, readManifest, type Settings } from './parts.js';

export const OUTPUT_FILES = { image: 'embeddings.npy', text: 'text_embeddings.npy', meta: 'metadata.jsonl', info: 'embed-info.json' } as const;

export interface MergeSummary {
  rows: number;
  dim: number;
  shards: number;
  failed: Manifest['failed'];
  files: string[];
}

/** The shards' manifests, checked to be complete and consistent (else an error naming what is missing). */
export function finishedShards(out: string): Manifest[] | { missing: string[] } {
  const dir = join(out, 'parts');
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    throw new Error(`${out} has no embedding parts (run clipkit embed … --out ${out} first)`);
  }
  const found = names.flatMap((f) => {
    const m = /^s(\d+)of(\d+)\.json$/.exec(f);
    return m ? [{ i: Number(m[1]), n: Number(m[2]), file: join(dir, f) }] : [];
  });
  if (found.length === 0) throw new Error(`${out} has no embedding parts (run clipkit embed … --out ${out} first)`);
  const counts = new Set(found.map((f) => f.n));
  if (counts.size > 1) throw new Error(`${dir} mixes runs with different shard counts (${[...counts].join(', ')})`);
  const n = found[0]!.n;
  const manifests: Manifest[] = [];
  const missing: string[] = [];
  for (let i = 0; i < n; i++) {
    const f = found.find((x) => x.i === i);
    const m = f ? readManifest(f.file) : undefined;
    if (!m || !m.done) missing.push(`${i}/${n}${m ? ' (unfinished)' : ''}`);
    else manifests.push(m);
  }
  if (missing.length) return { missing };
  const key = (s: Settings) => JSON.stringify({ ...s, shard: null });
  if (manifests.some((m) => key(m.settings) !== key(manifests[0]!.settings))) throw new Error(`the shards in ${dir} were made with different settings (model, input, dtype or captions)`);
  return manifests;
}

export function mergeShards(out: string, manifests: Manifest[]): MergeSummary {
  const dir = join(out, 'parts');
  const s = manifests[0]!.settings;
  const D = s.dim;
  const total = manifests.reduce((a, m) => a + m.parts.reduce((b, p) => b + p.rows, 0), 0);
  const tmp = (f: string) => join(out, `${f}.tmp`);
  const image = new NpyWriter(tmp(OUTPUT_FILES.image), [total, D], s.dtype);
  const text = s.captions ? new NpyWriter(tmp(OUTPUT_FILES.text), [total, D], s.dtype) : undefined;
  const meta: string[] = [];
  const cursors = manifests.map((m) => new ShardCursor(dir, m.parts, D, s.captions));
  // Rows are copied in runs of up to 1024 to keep the writes large.
  const CHUNK = 1024;
  const imgBuf = new Float32Array(CHUNK * D);
  const txtBuf = new Float32Array(CHUNK * D);
  let fill = 0;
  const flush = (): void => {
    image.write(imgBuf.subarray(0, fill * D));
    text?.write(txtBuf.subarray(0, fill * D));
    fill = 0;
  };
  try {
    for (;;) {
      let best: ShardCursor | undefined;
      for (const c of cursors) if (c.current && (!best || c.current.index < best.current!.index)) best = c;
      if (!best) break;
      const row = best.current!;
      imgBuf.set(row.image, fill * D);
      if (row.text) txtBuf.set(row.text, fill * D);
      meta.push(row.meta);
      if (++fill === CHUNK) flush();
      best.advance();
    }
    flush();
  } finally {
    image.close();
    text?.close();
  }
  writeFileSync(tmp(OUTPUT_FILES.meta), meta.length ? meta.join('\n') + '\n' : '');
  const failed = manifests.flatMap((m) => m.failed).sort((a, b) => a.index - b.index);
  const info = { format: 'clipkit-embeddings', rows: total, dim: D, dtype: s.dtype, normalized: true, model: s.model, input: s.input, captions: s.captions, shards: manifests.length, failed };
  writeFileSync(tmp(OUTPUT_FILES.info), JSON.stringify(info, null, 1) + '\n');
  const files = [OUTPUT_FILES.image, ...(text ? [OUTPUT_FILES.text] : []), OUTPUT_FILES.meta, OUTPUT_FILES.info];
  for (const f of files) renameSync(tmp(f), join(out, f));
  return { rows: total, dim: D, shards: manifests.length, failed, files };
}

/** Reads one shard's parts in order, one part in memory at a time. */
class ShardCursor {
  current: { index: number; image: Float32Array; text?: Float32Array; meta: string } | undefined;
  private part = -1;
  private row = 0;
  private image: Float32Array = new Float32Array(0);
  private text: Float32Array | undefined;
  private meta: string[] = [];
  private indices: number[] = [];

  constructor(
    private readonly dir: string,
    private readonly parts: PartInfo[],
    private readonly dim: number,
    private readonly captions: boolean,
  ) {
    this.nextPart();
  }

  advance(): void {
    this.row++;
    if (this.row >= this.meta.length) this.nextPart();
    else this.setCurrent();
  }

  private nextPart(): void {
    this.part++;
    this.row = 0;
    if (this.part >= this.parts.length) {
      this.current = undefined;
      return;
    }
    const p = this.parts[this.part]!;
    const read = (f: string): Float32Array => {
      const r = NpyReader.open(join(this.dir, f));
      try {
        if (r.rows !== p.rows || r.rowSize !== this.dim) throw new Error(`${f}: [${r.header.shape}], the manifest says [${p.rows}, ${this.dim}]`);
        return r.readRows(0, r.rows);
      } finally {
        r.close();
      }
    };
    this.image = read(`${p.name}.npy`);
    this.text = this.captions ? read(`${p.name}.text.npy`) : undefined;
    this.meta = readFileSync(join(this.dir, `${p.name}.jsonl`), 'utf8').split('\n').filter((l) => l !== '');
    if (this.meta.length !== p.rows) throw new Error(`${p.name}.jsonl has ${this.meta.length} lines, the manifest says ${p.rows}`);
    this.indices = this.meta.map((l) => (JSON.parse(l) as { index: number }).index);
    if (p.rows === 0) return this.nextPart();
    this.setCurrent();
  }

  private setCurrent(): void {
    const D = this.dim;
    const r = this.row;
    this.current = {
      index: this.indices[r]!,
      image: this.image.subarray(r * D, (r + 1) * D),
      ...(this.text ? { text: this.text.subarray(r * D, (r + 1) * D) } : {}),
      meta: this.meta[r]!,
    };
  }
}
