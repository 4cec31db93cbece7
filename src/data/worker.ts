// The data loader's worker thread: decode images and apply the train or eval transform.
//
// The same handler also runs in-process when the loader has `workers: 0`, so the two paths
// cannot drift apart. Everything random comes from the per-sample seed the loader sends,
// so a sample's pixels do not depend on which worker processed it, nor when.
//
// Decoders: sharp (libvips) costs about a millisecond per call whatever the image size; for
// tiny JPEGs such as CIFAR's 32×32, pure-JS jpeg-js decodes the same file several times faster.
// jpeg-js upsamples 4:2:0 chroma by pixel replication where libjpeg-turbo (sharp, and PIL)
// interpolates, so its pixels differ slightly (on CIFAR-10: 1.4 levels on average, about 9% of
// values by more than 3, along colour edges). 'auto' uses jpeg-js only for baseline/progressive
// 8-bit JPEGs of at most 64×64 pixels without EXIF, where it is 3–8× faster than sharp; above
// about 96×96 libjpeg-turbo's speed wins over sharp's per-call overhead.

import { readFileSync } from 'node:fs';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import jpeg from 'jpeg-js';
import { Rng } from '../nn/init.js';
import {
  centerCropBox,
  cropPixels,
  decodeImage,
  flipHorizontal,
  ImageDecodeError,
  normalizeToCHW,
  randomResizedCropBox,
  resizeBicubic,
  resizeShortSide,
  type DecodedImage,
} from './image.js';

export type Decoder = 'auto' | 'sharp' | 'jpeg-js';

/** The per-loader settings a worker is started with. */
export interface TransformConfig {
  /** Output side S (S×S). */
  size: number;
  /** Random resized crop + flip (true) or CLIP's resize + centre crop (false). */
  train: boolean;
  scale: [number, number];
  ratio: [number, number];
  flip: boolean;
  mean: readonly number[];
  std: readonly number[];
  decoder: Decoder;
}

/** Where a job item's image comes from; `cached` points into a shared slab of RGB bytes. */
export type ImageRef = { path: string } | { bytes: Uint8Array } | { cached: [slab: number, offset: number, width: number, height: number] };

export interface JobItem {
  /** Position of the result in the job's output. */
  slot: number;
  key: string;
  image: ImageRef;
  /** Seeds this sample's augmentation (unused by the eval transform). */
  seed: string;
}

export type ToWorker =
  | { type: 'slab'; index: number; buffer: SharedArrayBuffer }
  /** count: slots in the output (items may leave some out, e.g. images known to be unreadable). */
  | { type: 'augment'; id: number; count: number; items: JobItem[] }
  | { type: 'decode'; id: number; items: JobItem[] };

export interface Failure {
  slot: number;
  key: string;
  message: string;
}

export type FromWorker =
  /** pixels: count × 3 × S × S floats by slot; failed and absent slots are left as zeros. */
  | { type: 'augmented'; id: number; pixels: Float32Array; failed: Failure[] }
  | { type: 'decoded'; id: number; images: { slot: number; width: number; height: number; data: Uint8Array }[]; failed: Failure[] }
  /** Not an unreadable image but a bug or a broken setup: the loader throws it. */
  | { type: 'fatal'; id: number; key: string; message: string; stack?: string };

/** Images in flight at once inside one worker: sharp decodes on libuv's pool meanwhile. */
const CONCURRENCY = 4;
/** 'auto' sends JPEGs up to this many pixels to jpeg-js. */
const AUTO_MAX_PIXELS = 64 * 64;

/** A message handler bound to one configuration; `transfer` lists buffers to move, not copy. */
export function createHandler(config: TransformConfig): (msg: ToWorker) => Promise<{ reply?: FromWorker; transfer: ArrayBuffer[] }> {
  const slabs: SharedArrayBuffer[] = [];
  const per = 3 * config.size * config.size;

  const rgbOf = async (image: ImageRef): Promise<DecodedImage> => {
    if ('cached' in image) {
      const [slab, offset, width, height] = image.cached;
      const buffer = slabs[slab];
      if (!buffer) throw new Error(`internal: cache slab ${slab} was never sent to this worker`);
      return { data: new Uint8Array(buffer, offset, width * height * 3), width, height };
    }
    return decodeRgb(image, config.decoder);
  };

  // Runs `fn` on every item with a few in flight; unreadable images become failures, any
  // other error aborts the job naming the sample.
  const each = async (items: JobItem[], fn: (item: JobItem) => Promise<void>): Promise<Failure[]> => {
    const failed: Failure[] = [];
    let next = 0;
    const lane = async (): Promise<void> => {
      for (let i = next++; i < items.length; i = next++) {
        const item = items[i]!;
        try {
          await fn(item);
        } catch (err) {
          if (!(err instanceof ImageDecodeError)) throw Object.assign(asError(err), { sampleKey: item.key });
          failed.push({ slot: item.slot, key: item.key, message: err.message });
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(CONCURRENCY, items.length) }, lane));
    return failed.sort((a, b) => a.slot - b.slot);
  };

  return async (msg) => {
    if (msg.type === 'slab') {
      slabs[msg.index] = msg.buffer;
      return { transfer: [] };
    }
    try {
      if (msg.type === 'augment') {
        const pixels = new Float32Array(msg.count * per);
        const failed = await each(msg.items, async (item) => {
          const img = await rgbOf(item.image);
          transformInto(img, config, item.seed, pixels, item.slot * per);
        });
        return { reply: { type: 'augmented', id: msg.id, pixels, failed }, transfer: [pixels.buffer as ArrayBuffer] };
      }
      const images: { slot: number; width: number; height: number; data: Uint8Array }[] = [];
      const failed = await each(msg.items, async (item) => {
        const img = await rgbOf(item.image);
        // A fresh copy: the decoder's buffer may be a view into memory that cannot be transferred.
        images.push({ slot: item.slot, width: img.width, height: img.height, data: img.data.slice() });
      });
      return { reply: { type: 'decoded', id: msg.id, images, failed }, transfer: images.map((i) => i.data.buffer as ArrayBuffer) };
    } catch (err) {
      const e = asError(err);
      const key = (e as { sampleKey?: string }).sampleKey ?? '?';
      const reply: FromWorker = { type: 'fatal', id: msg.id, key, message: e.message };
      if (e.stack !== undefined) reply.stack = e.stack;
      return { reply, transfer: [] };
    }
  };
}

/**
 * The loader's pixel pipeline on decoded RGB, written as CHW floats into `out` at `offset`.
 * train: torchvision RandomResizedCrop(size, scale, ratio, BICUBIC) + RandomHorizontalFlip, the
 * same draws in the same order as augmentClip, so a seed gives what augmentClip gives.
 * eval: CLIP's Resize(size, BICUBIC) + CenterCrop(size), PIL-exact as preprocessClip.
 */
export function transformInto(img: DecodedImage, config: TransformConfig, seed: string, out: Float32Array, offset: number): void {
  const { size } = config;
  const { data, width, height } = img;
  let rgb: Uint8Array;
  if (config.train) {
    const rng = new Rng(seed);
    const next = (): number => rng.next();
    const box = randomResizedCropBox(width, height, next, config.scale, config.ratio);
    rgb = resizeBicubic(cropPixels(data, width, height, 3, box), box.width, box.height, 3, size, size);
    if (config.flip && next() < 0.5) flipHorizontal(rgb, size, size, 3);
  } else {
    const [rw, rh] = resizeShortSide(width, height, size);
    rgb = resizeBicubic(data, width, height, 3, rw, rh, centerCropBox(rw, rh, size));
  }
  normalizeToCHW(rgb, size, size, config.mean, config.std, out, offset);
}

/** Decode to 8-bit RGB (HWC) with the chosen decoder; unreadable input → ImageDecodeError. */
export async function decodeRgb(image: { path: string } | { bytes: Uint8Array }, decoder: Decoder = 'auto'): Promise<DecodedImage> {
  let bytes: Uint8Array;
  if ('path' in image) {
    try {
      // Synchronous on purpose: this runs on a worker thread, and for image-sized files one
      // blocking read is far cheaper than fs/promises' four thread-pool round trips.
      bytes = readFileSync(image.path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory' : asError(err).message;
      throw new ImageDecodeError(`cannot read image ${image.path}: ${why}`, image.path, { cause: err });
    }
  } else {
    bytes = image.bytes;
  }
  if (decoder !== 'sharp') {
    const info = jpegInfo(bytes);
    if (info && (decoder === 'jpeg-js' || info.width * info.height <= AUTO_MAX_PIXELS)) {
      try {
        const out = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: false, tolerantDecoding: false });
        if (out.width === info.width && out.height === info.height && out.data.length === out.width * out.height * 3) {
          return { data: out.data, width: out.width, height: out.height };
        }
      } catch {
        // Corrupt, or something jpeg-js does not handle: sharp gives the verdict and the message.
      }
    }
  }
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  try {
    return await decodeImage(buf);
  } catch (err) {
    if (err instanceof ImageDecodeError && 'path' in image) {
      throw new ImageDecodeError(err.message.replace(/\(buffer of \d+ bytes\)/, image.path), image.path, { cause: err });
    }
    throw err;
  }
}

/**
 * Size of a JPEG that jpeg-js decodes exactly like any other decoder would apart from chroma
 * upsampling: 8-bit baseline/extended/progressive Huffman, 1 or 3 components, no EXIF (which
 * may rotate the image; jpeg-js ignores it) and no Adobe marker (CMYK/YCCK). Else undefined.
 */
export function jpegInfo(b: Uint8Array): { width: number; height: number } | undefined {
  if (b.length < 4 || b[0] !== 0xff || b[1] !== 0xd8) return undefined;
  let p = 2;
  while (p + 4 <= b.length) {
    if (b[p] !== 0xff) return undefined;
    const marker = b[p + 1]!;
    if (marker === 0xff) {
      p++; // fill byte
      continue;
    }
    const len = (b[p + 2]! << 8) | b[p + 3]!;
    const body = p + 4;
    if (marker === 0xe1 && b[body] === 0x45 && b[body + 1] === 0x78 && b[body + 2] === 0x69 && b[body + 3] === 0x66) return undefined; // "Exif"
    if (marker === 0xee) return undefined; // APP14 "Adobe"
    if (marker === 0xc0 || marker === 0xc1 || marker === 0xc2) {
      if (body + 6 > b.length || b[body] !== 8) return undefined;
      const height = (b[body + 1]! << 8) | b[body + 2]!;
      const width = (b[body + 3]! << 8) | b[body + 4]!;
      const components = b[body + 5]!;
      return width > 0 && height > 0 && (components === 1 || components === 3) ? { width, height } : undefined;
    }
    if (marker >= 0xc3 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) return undefined; // lossless/arithmetic
    if (marker === 0xda || len < 2) return undefined; // scan before any frame header: malformed
    p = body - 2 + len;
  }
  return undefined;
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

// Thread entry: only when started by the loader (importing this file elsewhere has no effect).
if (!isMainThread && parentPort && (workerData as { clipkitData?: TransformConfig } | null)?.clipkitData) {
  const port = parentPort;
  const handle = createHandler((workerData as { clipkitData: TransformConfig }).clipkitData);
  port.on('message', (msg: ToWorker) => {
    void handle(msg).then(({ reply, transfer }) => {
      if (reply) port.postMessage(reply, transfer);
    });
  });
}
