// Writing images to PNG through sharp: a grid of equally sized RGB tiles (model inputs, reconstructions,
// samples), enlarged by pixel replication so 32×32 images stay crisp when viewed.
import { rename, unlink } from 'node:fs/promises';
import { dirname, basename, join } from 'node:path';
import sharp from 'sharp';

export interface RgbImage {
  /** HWC, 8-bit RGB. */
  data: Uint8Array;
  width: number;
  height: number;
}

export interface GridOptions {
  columns: number;
  /** Gap between tiles and around the grid, in source pixels (default 1). */
  pad?: number;
  /** Integer enlargement by pixel replication (default 1). */
  scale?: number;
  /** Colour of the gaps (default white). */
  background?: readonly [number, number, number];
}

/** A float image in [0,1], CHW (a model output), as 8-bit HWC RGB (rounded, clamped). */
export function fromCHW(x: Float32Array, size: number, offset = 0): RgbImage {
  const hw = size * size;
  const data = new Uint8Array(hw * 3);
  for (let c = 0; c < 3; c++) {
    for (let p = 0; p < hw; p++) data[p * 3 + c] = Math.min(255, Math.max(0, Math.round(x[offset + c * hw + p]! * 255)));
  }
  return { data, width: size, height: size };
}

/** Tiles in row-major order, `columns` per row; missing tiles of the last row stay background. */
export function grid(tiles: readonly RgbImage[], o: GridOptions): RgbImage {
  if (tiles.length === 0) throw new Error('grid: no images');
  const { width: w, height: h } = tiles[0]!;
  if (tiles.some((t) => t.width !== w || t.height !== h || t.data.length !== w * h * 3)) throw new Error('grid: the images differ in size (or are not RGB)');
  const cols = Math.max(1, Math.min(o.columns, tiles.length));
  const rows = Math.ceil(tiles.length / cols);
  const pad = o.pad ?? 1;
  const scale = o.scale ?? 1;
  if (!Number.isInteger(scale) || scale < 1 || !Number.isInteger(pad) || pad < 0) throw new Error('grid: scale must be an integer ≥ 1 and pad an integer ≥ 0');
  const W = (cols * (w + pad) + pad) * scale;
  const H = (rows * (h + pad) + pad) * scale;
  const out = new Uint8Array(W * H * 3);
  const bg = o.background ?? [255, 255, 255];
  for (let i = 0; i < W * H; i++) out.set(bg, i * 3);
  tiles.forEach((t, k) => {
    const x0 = (pad + (k % cols) * (w + pad)) * scale;
    const y0 = (pad + Math.floor(k / cols) * (h + pad)) * scale;
    for (let y = 0; y < h * scale; y++) {
      for (let x = 0; x < w * scale; x++) {
        const src = (Math.floor(y / scale) * w + Math.floor(x / scale)) * 3;
        out.set(t.data.subarray(src, src + 3), ((y0 + y) * W + x0 + x) * 3);
      }
    }
  });
  return { data: out, width: W, height: H };
}

/** Writes an RGB image as PNG, atomically (a temporary file in the same folder, then a rename). */
export async function writePng(path: string, img: RgbImage): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  try {
    await sharp(Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength), { raw: { width: img.width, height: img.height, channels: 3 } })
      .png({ compressionLevel: 9 })
      .toFile(tmp);
    await rename(tmp, path);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
}

export async function writeGrid(path: string, tiles: readonly RgbImage[], o: GridOptions): Promise<void> {
  await writePng(path, grid(tiles, o));
}
