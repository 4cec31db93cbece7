// What `clipkit embed` reads: the data sources of src/data/datasets.ts, opened from the command line's
// arguments and seen as one numbered sequence of items. The number (a sample's position in storage
// order, never shuffled) is what sharding and resuming are defined on, so it must be the same in
// every run over the same input.
import { readdirSync, statSync } from 'node:fs';
import { basename, extname, join, resolve } from 'node:path';
import { captionTable, imageFolder, type Sample, webDataset } from '../data/datasets.js';

export interface EmbedItem extends Sample {
  /** Position in the input, 0-based. */
  index: number;
  /** Class name, for image folders laid out by class. */
  className?: string;
  /** The tar shard a WebDataset sample came from. */
  shard?: string;
}

export interface EmbedInput {
  /** 'folder' | 'table' | 'tar', and the resolved paths (recorded in the progress manifest). */
  kind: 'folder' | 'table' | 'tar';
  paths: string[];
  /** Item count when known up front (folders and tables), for progress and ETA. */
  size?: number;
  /** Whether items carry captions (a flat folder of images has none). */
  captions: boolean;
  /** Items from `from` on, in index order. */
  items(from: number): AsyncIterable<EmbedItem>;
}

const IMAGE_EXTS = new Set(['.jpg', '.jpeg', '.png', '.webp']);
const CTX = { epoch: 0, seed: 0, shuffle: false } as const;

/**
 * A folder (by class: root/<class>/<image>, or flat: root/<image>), one .csv/.tsv/.jsonl caption
 * table, or WebDataset .tar shards (several, or brace patterns like data-{000..009}.tar).
 */
export async function openInput(args: readonly string[]): Promise<EmbedInput> {
  if (args.length === 0) throw new Error('no input');
  const first = args[0]!;
  const isTar = (a: string) => a.toLowerCase().endsWith('.tar');
  if (args.every(isTar)) return tarInput(args.map((a) => resolve(a)));
  if (args.length > 1) throw new Error('give one folder, one caption table, or any number of .tar shards');
  let st;
  try {
    st = statSync(first);
  } catch {
    throw new Error(`'${first}' does not exist`);
  }
  if (st.isDirectory()) return folderInput(resolve(first));
  const ext = extname(first).toLowerCase();
  if (['.csv', '.tsv', '.jsonl', '.ndjson'].includes(ext)) {
    const src = await captionTable(resolve(first));
    return {
      kind: 'table',
      paths: [resolve(first)],
      size: src.size,
      captions: true,
      async *items(from) {
        for (let i = from; i < src.size; i++) yield { ...src.get(i, CTX), index: i };
      },
    };
  }
  throw new Error(`'${first}' is not a folder, a .csv/.tsv/.jsonl table or a .tar shard`);
}

async function folderInput(root: string): Promise<EmbedInput> {
  const flat = readdirSync(root, { withFileTypes: true })
    .filter((e) => e.isFile() && !e.name.startsWith('.') && IMAGE_EXTS.has(extname(e.name).toLowerCase()))
    .map((e) => e.name)
    .sort(byCodePoint);
  if (flat.length > 0) {
    // Images directly in the folder: no classes, no captions.
    return {
      kind: 'folder',
      paths: [root],
      size: flat.length,
      captions: false,
      async *items(from) {
        for (let i = from; i < flat.length; i++) yield { index: i, key: flat[i]!, image: { path: join(root, flat[i]!) }, caption: '' };
      },
    };
  }
  // By class: captions "a photo of a <class>." (one fixed template, so reruns give the same text).
  const src = await imageFolder(root, { templates: ['a photo of a {}.'] });
  return {
    kind: 'folder',
    paths: [root],
    size: src.size,
    captions: true,
    async *items(from) {
      for (let i = from; i < src.size; i++) {
        const s = src.get(i, CTX);
        yield { ...s, index: i, ...(s.label !== undefined ? { className: src.classes[s.label] } : {}) };
      }
    },
  };
}

function tarInput(shards: string[]): EmbedInput {
  const src = webDataset(shards, { shuffleBuffer: 0 });
  // Sample keys name their shard by file name ("data-000.tar/0001"); metadata records the full path.
  const byName = new Map(src.shards.map((p) => [basename(p), p]));
  return {
    kind: 'tar',
    paths: [...src.shards],
    captions: true,
    async *items(from) {
      // A stream has no random access: items before `from` are read (not decoded) and passed over.
      let i = 0;
      for await (const s of src.stream(CTX)) {
        if (i >= from) {
          const name = s.key.slice(0, s.key.indexOf('/'));
          yield { ...s, index: i, shard: byName.get(name) ?? name };
        }
        i++;
      }
    },
  };
}

function byCodePoint(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
