// The exported ONNX towers of a model, cached on disk per model fingerprint: exporting re-serialises
// every weight (seconds for a large model), and a server restart or a second embedding job should not
// pay for it again. The export is written to a temporary directory and renamed into place, so a crash
// never leaves a half-written tower behind.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { writeOnnx } from '../graph/export.js';
import { Graph } from '../graph/graph.js';
import { encodeTextGraph } from '../models/clip.js';
import type { ClipModel } from '../models/clip-model.js';
import { type ExportMetadata, METADATA_FILE } from '../models/export.js';
import { loadClip } from '../models/load.js';
import { modelKey } from './model-key.js';

/**
 * The text tower has a fixed sequence length, and queries and prompts ("a photo of a dog.") are far
 * shorter than CLIP's 77 positions. So besides the full-length tower there is one for texts of at
 * most SHORT_TEXT tokens: ~5× less work for the common case, for one more copy of the text weights.
 */
export const SHORT_TEXT = 16;

export interface Towers {
  dir: string;
  vision: string;
  /** Text towers by sequence length, shortest first; the last one is the full context length. */
  texts: { length: number; path: string }[];
  meta: ExportMetadata;
  /** The model fingerprint (see model-key.ts). */
  key: string;
}

export async function ensureTowers(modelPath: string, cacheRoot: string, o: { quantize?: 'none' | 'int8' } = {}): Promise<Towers> {
  const q = o.quantize ?? 'none';
  const key = modelKey(modelPath, q);
  const dir = join(cacheRoot, 'onnx', key);
  const metaFile = join(dir, METADATA_FILE);
  if (!existsSync(metaFile)) {
    const model = await loadClip(modelPath);
    const tmp = `${dir}.${process.pid}.tmp`;
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp, { recursive: true });
    await model.exportOnnx(tmp, { quantize: q });
    if (model.config.text.contextLength > SHORT_TEXT) await writeShortText(model, join(tmp, `text-${SHORT_TEXT}.onnx`), q);
    try {
      renameSync(tmp, dir);
    } catch (e) {
      // Another process exported the same model meanwhile: use theirs.
      rmSync(tmp, { recursive: true, force: true });
      if (!existsSync(metaFile)) throw e;
    }
  }
  const meta = JSON.parse(readFileSync(metaFile, 'utf8')) as ExportMetadata;
  const short = join(dir, `text-${SHORT_TEXT}.onnx`);
  const texts = [...(existsSync(short) ? [{ length: SHORT_TEXT, path: short }] : []), { length: meta.text.length, path: join(dir, meta.models.text.file) }];
  return { dir, vision: join(dir, meta.models.vision.file), texts, meta, key };
}

/** The text tower at length L, built as export.ts builds text.onnx (inference graph, weights inline). */
async function writeShortText(model: ClipModel, path: string, quantize: 'none' | 'int8'): Promise<void> {
  const g = new Graph('text');
  g.mode = 'infer';
  g.quantize = quantize;
  const out = g.rename(encodeTextGraph(g, g.input('input_ids', ['N', SHORT_TEXT], 'int64'), model.config), 'text_embeds');
  await writeOnnx(path, g, { outputs: [out], paramValues: model.params });
}
