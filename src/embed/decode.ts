// Decoding one batch for the embedding job: CLIP's eval transform (exactly what classify and the
// server compute) plus the image's size for the metadata. Each image is decoded on its own, so an
// unreadable one is recorded and skipped instead of failing its batch.
import { readFile } from 'node:fs/promises';
import sharp from 'sharp';
import { ImageDecodeError, preprocessClip } from '../data/image.js';
import type { EmbedItem } from './source.js';

export interface DecodedBatch {
  items: EmbedItem[];
  /** [ok.length, 3, S, S] */
  pixels: Float32Array;
  /** Positions (in `items`) of the decoded images, in order; row r of pixels is items[ok[r]]. */
  ok: number[];
  sizes: { width: number; height: number }[];
  failed: { item: EmbedItem; error: string }[];
}

export async function decodeBatch(items: EmbedItem[], size: number): Promise<DecodedBatch> {
  const per = 3 * size * size;
  const results = await Promise.allSettled(items.map((it) => decodeOne(it, size)));
  const ok: number[] = [];
  const failed: DecodedBatch['failed'] = [];
  results.forEach((r, i) => (r.status === 'fulfilled' ? ok.push(i) : failed.push({ item: items[i]!, error: (r.reason as Error).message })));
  const pixels = new Float32Array(ok.length * per);
  const sizes = ok.map((i, row) => {
    const v = (results[i] as PromiseFulfilledResult<{ pixels: Float32Array; width: number; height: number }>).value;
    pixels.set(v.pixels, row * per);
    return { width: v.width, height: v.height };
  });
  return { items, pixels, ok, sizes, failed };
}

async function decodeOne(item: EmbedItem, size: number): Promise<{ pixels: Float32Array; width: number; height: number }> {
  let buf: Buffer;
  if ('path' in item.image) {
    try {
      buf = await readFile(item.image.path);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new ImageDecodeError(`cannot read image ${item.image.path}: ${code === 'ENOENT' ? 'no such file' : (e as Error).message}`, item.image.path);
    }
  } else buf = Buffer.from(item.image.bytes.buffer, item.image.bytes.byteOffset, item.image.bytes.byteLength);
  const name = 'path' in item.image ? item.image.path : item.key;
  let pixels: Float32Array;
  try {
    pixels = await preprocessClip(buf, { size });
  } catch (e) {
    throw new ImageDecodeError((e as Error).message.replace(/\(buffer of \d+ bytes\)/, name), name);
  }
  // Only the header is read for the size; the size recorded is after EXIF orientation.
  const meta = await sharp(buf).metadata();
  const oriented = meta.autoOrient ?? { width: meta.width ?? 0, height: meta.height ?? 0 };
  return { pixels, width: oriented.width, height: oriented.height };
}
