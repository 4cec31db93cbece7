// The embedding job's durable state: parts and a progress manifest per shard, under <out>/parts/.
//
//   parts/s<i>of<n>-<seq>.npy         image embeddings of one part (rows in item order)
//   parts/s<i>of<n>-<seq>.text.npy    caption embeddings (with --captions), row for row
//   parts/s<i>of<n>-<seq>.jsonl       metadata, one object per row (with the item's `index`)
//   parts/s<i>of<n>.json              the manifest: settings, finished parts, resume point, failures
//
// Crash safety: a part's files are written under temporary names and renamed into place, then the
// manifest is rewritten the same way. The manifest is the truth: a part it does not list (a crash
// between the renames) is deleted and recomputed on the next run, and every item below `nextIndex`
// is either in a listed part or listed as failed. So a run killed at any instant loses no item and
// duplicates none.
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type NpyDType, writeNpy } from '../index/npy.js';

export interface Settings {
  input: string[];
  model: string;
  dim: number;
  dtype: NpyDType;
  captions: boolean;
  shard: [number, number];
}

export interface PartInfo {
  /** File stem under parts/ (add .npy, .text.npy, .jsonl). */
  name: string;
  rows: number;
  firstIndex: number;
  lastIndex: number;
}

export interface Manifest {
  format: 'clipkit-embed-progress';
  version: 1;
  settings: Settings;
  parts: PartInfo[];
  /** Every item of this shard with a lower index is in a part or in `failed`. */
  nextIndex: number;
  failed: { index: number; key: string; error: string }[];
  done: boolean;
}

export const shardTag = ([i, n]: readonly [number, number]): string => `s${i}of${n}`;

export class PartStore {
  readonly dir: string;
  readonly manifestFile: string;
  manifest: Manifest;

  constructor(out: string, settings: Settings) {
    this.dir = join(out, 'parts');
    mkdirSync(this.dir, { recursive: true });
    const tag = shardTag(settings.shard);
    this.manifestFile = join(this.dir, `${tag}.json`);
    const old = readManifest(this.manifestFile);
    if (old) {
      const diff = (Object.keys(settings) as (keyof Settings)[]).filter((k) => JSON.stringify(old.settings[k]) !== JSON.stringify(settings[k]));
      if (diff.length) {
        throw new Error(`${out} holds an embedding run with other settings (${diff.map((k) => `${k}: ${JSON.stringify(old.settings[k])} → ${JSON.stringify(settings[k])}`).join('; ')}): use another --out, or delete it to start over`);
      }
      this.manifest = old;
    } else this.manifest = { format: 'clipkit-embed-progress', version: 1, settings, parts: [], nextIndex: 0, failed: [], done: false };
    // Leftovers of a killed run: temporary files, and parts the manifest never listed.
    const listed = new Set(this.manifest.parts.map((p) => p.name));
    for (const f of readdirSync(this.dir)) {
      const stem = f.replace(/(\.text)?\.(npy|jsonl)$/, '');
      const ours = f.startsWith(`${tag}-`) || f.startsWith(`${tag}.json.`);
      if (ours && (f.endsWith('.tmp') || (stem !== f && !listed.has(stem)))) rmSync(join(this.dir, f), { force: true });
    }
  }

  /** Writes one part and advances the resume point past `nextIndex` (atomically, in that order). */
  commit(part: { image: Float32Array; text?: Float32Array; meta: object[]; firstIndex: number; lastIndex: number }, nextIndex: number, failed: Manifest['failed']): void {
    const m = this.manifest;
    const rows = part.meta.length;
    if (rows > 0) {
      const name = `${shardTag(m.settings.shard)}-${String(m.parts.length).padStart(6, '0')}`;
      const D = m.settings.dim;
      const write = (file: string, fn: (tmp: string) => void): (() => void) => {
        const tmp = join(this.dir, `${file}.tmp`);
        fn(tmp);
        return () => renameSync(tmp, join(this.dir, file));
      };
      const renames = [
        write(`${name}.npy`, (t) => writeNpy(t, { data: part.image, shape: [rows, D] }, { dtype: m.settings.dtype })),
        ...(part.text ? [write(`${name}.text.npy`, (t) => writeNpy(t, { data: part.text!, shape: [rows, D] }, { dtype: m.settings.dtype }))] : []),
        write(`${name}.jsonl`, (t) => writeFileSync(t, part.meta.map((o) => JSON.stringify(o)).join('\n') + '\n')),
      ];
      for (const r of renames) r();
      m.parts.push({ name, rows, firstIndex: part.firstIndex, lastIndex: part.lastIndex });
    }
    m.nextIndex = nextIndex;
    m.failed.push(...failed);
    this.saveManifest();
  }

  finish(): void {
    this.manifest.done = true;
    this.saveManifest();
  }

  private saveManifest(): void {
    const tmp = `${this.manifestFile}.tmp`;
    writeFileSync(tmp, JSON.stringify(this.manifest, null, 1));
    renameSync(tmp, this.manifestFile);
  }
}

export function readManifest(file: string): Manifest | undefined {
  if (!existsSync(file)) return undefined;
  const m = JSON.parse(readFileSync(file, 'utf8')) as Manifest;
  if (m.format !== 'clipkit-embed-progress') throw new Error(`${file} is not an embedding progress manifest`);
  return m;
}
