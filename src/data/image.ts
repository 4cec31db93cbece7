// Image decoding and CLIP preprocessing through sharp (libvips).
//
// Reference: OpenAI CLIP's eval transform (clip/clip.py `_transform`) in PIL + torchvision:
//   Resize(n, BICUBIC) → CenterCrop(n) → convert("RGB") → ToTensor() → Normalize(mean, std)
// sharp decodes (and applies EXIF orientation and colour conversion); the geometry is
// torchvision's exactly (transforms.ts). Two resamplers:
//  - 'pil' (default): Pillow's bicubic reproduced in TypeScript (transforms.ts resizeBicubic),
//    bit-identical to PIL given the same decoded pixels. Costs a full-size decode.
//  - 'sharp': libvips' bicubic inside the sharp pipeline, faster on big images (JPEGs may be
//    decoded at 1/2–1/8 scale), but not identical to PIL: when shrinking, on average 0.2–0.6
//    8-bit levels off (a few levels at worst on photos); when enlarging (e.g. 32×32 → 224)
//    libvips is shifted by half an output pixel, about 2 levels off on average.
// Deliberate differences from PIL:
//  - EXIF orientation is applied (PIL's Image.open does not), so phone photos come out upright.
//  - CMYK is converted to sRGB with a colour profile (PIL uses a naive formula).
//  - 16-bit greyscale keeps its high byte (PIL clips it at 255, i.e. mostly white);
//    16-bit RGB keeps its high byte in both.
//  - Palette images ("P" mode: GIF, PNG-8) are resampled bicubically after expansion to RGB;
//    PIL silently resizes those with nearest neighbour.
// Alpha follows PIL: it is dropped, never composited onto a background colour. When a resize
// happens, PIL (and both resamplers here) resample with premultiplied alpha, so fully
// transparent pixels come out black and partly transparent ones keep roughly their own
// colour; with no resize (decodeImage, or an image already at the target size) the raw RGB
// under the alpha is kept.
// Embedded ICC profiles are ignored by default, as PIL does, so pixels match what CLIP was
// trained on; pass `applyIcc: true` for colour-managed sRGB instead.

import { readFile } from 'node:fs/promises';
import sharp from 'sharp';
import {
  CLIP_MEAN,
  CLIP_STD,
  centerCropBox,
  cropPixels,
  dropAlpha,
  flipHorizontal,
  normalizeToCHW,
  randomResizedCropBox,
  resizeBicubic,
  resizeShortSide,
  type Box,
  type ImageTensor,
} from './transforms.js';

export * from './transforms.js';

/**
 * Process-wide sharp settings, applied once when this module is loaded.
 *
 * - cache(false): libvips' operation cache exists to reuse results for repeated inputs; we
 *   decode every file once, so it would only hold on to memory.
 * - concurrency(1): libvips threads *per image*. The trainer decodes in worker threads and
 *   keeps several images in flight (each sharp call runs on the libuv thread pool, sized by
 *   UV_THREADPOOL_SIZE and shared by all worker threads), so parallelism comes from many
 *   images at once; extra threads inside each small image only add contention. It is also
 *   sharp's own default on glibc without jemalloc, where it limits heap fragmentation.
 * Call configureSharp() afterwards to change either.
 */
export function configureSharp(opts: { concurrency?: number; cache?: boolean } = {}): void {
  sharp.cache(opts.cache ?? false);
  sharp.concurrency(opts.concurrency ?? 1);
}
configureSharp();

/** An input that is missing, empty, not an image, or corrupt/truncated. */
export class ImageDecodeError extends Error {
  /** The file path, when the input was a path. */
  path?: string;
  constructor(message: string, path?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ImageDecodeError';
    if (path !== undefined) this.path = path;
  }
}

export type ImageInput = string | Buffer;

export interface DecodeOptions {
  /** Convert using an embedded ICC profile (colour-managed sRGB). Default false: like PIL. */
  applyIcc?: boolean;
}

export interface ClipOptions extends DecodeOptions {
  /** Output side n (n×n). Default 224. */
  size?: number;
  mean?: readonly number[];
  std?: readonly number[];
  /** 'pil' (default): bit-exact Pillow bicubic. 'sharp': libvips bicubic, faster on large JPEGs. */
  resampler?: 'pil' | 'sharp';
}

export interface BatchOptions extends ClipOptions {
  /** Images decoded at once; default UV_THREADPOOL_SIZE or 4 (sharp works on that pool). */
  parallel?: number;
}

export interface AugmentOptions extends ClipOptions {
  size: number;
  /** Uniform in [0, 1); seed it for reproducible augmentation. */
  rng: () => number;
  /** Area fraction of the crop; default [0.9, 1.0]. */
  scale?: [number, number];
  /** Aspect ratio range (w/h) of the crop; default [3/4, 4/3]. */
  ratio?: [number, number];
  /** Random horizontal flip with probability 0.5; default true. */
  flip?: boolean;
}

export interface DecodedImage {
  /** HWC, 8-bit sRGB, 3 channels. */
  data: Uint8Array;
  width: number;
  height: number;
}

/**
 * Decode any sharp-readable image to 8-bit RGB, HWC: EXIF orientation applied, greyscale
 * expanded to 3 channels, alpha dropped (not composited, as PIL's convert("RGB")),
 * CMYK converted to sRGB, 16-bit reduced to its high byte.
 */
export async function decodeImage(input: ImageInput, opts: DecodeOptions = {}): Promise<DecodedImage> {
  const img = await decodePixels(input, await readInput(input), opts);
  return { data: toRgb(img.data, img.channels), width: img.width, height: img.height };
}

/** CLIP's eval transform for one image: 3×size×size float32, CHW, normalised. */
export async function preprocessClip(input: ImageInput, opts: ClipOptions = {}): Promise<Float32Array> {
  const size = opts.size ?? 224;
  return normalizeToCHW(await clipPixels(input, size, opts), size, size, opts.mean ?? CLIP_MEAN, opts.std ?? CLIP_STD);
}

/** preprocessClip over a list, as one NCHW tensor. Fails on the first undecodable input. */
export async function preprocessBatch(inputs: ImageInput[], opts: BatchOptions = {}): Promise<ImageTensor> {
  const size = opts.size ?? 224;
  const mean = opts.mean ?? CLIP_MEAN;
  const std = opts.std ?? CLIP_STD;
  const per = 3 * size * size;
  const data = new Float32Array(inputs.length * per);
  const parallel = Math.max(1, opts.parallel ?? (Number(process.env.UV_THREADPOOL_SIZE) || 4));
  // A few loops pulling the next index: bounded memory, and sharp's thread pool keeps
  // decoding while JS resamples and normalises the previous result.
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < inputs.length; i = next++) {
      normalizeToCHW(await clipPixels(inputs[i]!, size, opts), size, size, mean, std, data, i * per);
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, inputs.length) }, worker));
  return { data, shape: [inputs.length, 3, size, size] };
}

/**
 * Training augmentation, torchvision order: RandomResizedCrop(size, scale, ratio, BICUBIC),
 * then RandomHorizontalFlip(0.5), then ToTensor + Normalize. Random draws come only from
 * `rng` (crop first, flip last), so a seeded rng reproduces the same sample.
 */
export async function augmentClip(input: ImageInput, opts: AugmentOptions): Promise<Float32Array> {
  const { size, rng } = opts;
  const buf = await readInput(input);
  let rgb: Uint8Array;
  if (opts.resampler === 'sharp') {
    const { width, height } = await orientedSize(input, buf, opts);
    const box = randomResizedCropBox(width, height, rng, opts.scale, opts.ratio);
    const flop = (opts.flip ?? true) && rng() < 0.5;
    // extract() before resize() crops the (oriented) source, then the crop is resampled.
    rgb = await sharpPixels(input, size, () => open(buf, opts).extract(box).resize(size, size, SHARP_RESIZE).flop(flop));
  } else {
    const img = await decodePixels(input, buf, opts);
    const box = randomResizedCropBox(img.width, img.height, rng, opts.scale, opts.ratio);
    const crop = cropPixels(img.data, img.width, img.height, img.channels, box);
    rgb = toRgb(resizeBicubic(crop, box.width, box.height, img.channels, size, size), img.channels);
    if ((opts.flip ?? true) && rng() < 0.5) flipHorizontal(rgb, size, size, 3);
  }
  return normalizeToCHW(rgb, size, size, opts.mean ?? CLIP_MEAN, opts.std ?? CLIP_STD);
}

// ---------------------------------------------------------------------------------------

// fit 'fill': we computed the exact torchvision size ourselves. fastShrinkOnLoad false:
// big JPEGs may still be decoded at 1/2, 1/4 or 1/8 scale, but at least a factor of two is
// left to the real resampler, which keeps the result closer to PIL's.
const SHARP_RESIZE = { fit: 'fill', kernel: 'cubic', fastShrinkOnLoad: false } as const;

/** Resize short side → centre crop, as 8-bit HWC RGB size×size. */
async function clipPixels(input: ImageInput, size: number, opts: ClipOptions): Promise<Uint8Array> {
  const buf = await readInput(input);
  if (opts.resampler === 'sharp') {
    const { width, height } = await orientedSize(input, buf, opts);
    const [rw, rh] = resizeShortSide(width, height, size);
    const crop: Box = centerCropBox(rw, rh, size);
    // extract() after resize() applies to the resized image (sharp's "post-resize" extract).
    return sharpPixels(input, size, () => open(buf, opts).resize(rw, rh, SHARP_RESIZE).extract(crop));
  }
  const img = await decodePixels(input, buf, opts);
  const [rw, rh] = resizeShortSide(img.width, img.height, size);
  const crop = centerCropBox(rw, rh, size);
  return toRgb(resizeBicubic(img.data, img.width, img.height, img.channels, rw, rh, crop), img.channels);
}

function toRgb(px: Uint8Array, channels: 3 | 4): Uint8Array {
  return channels === 4 ? dropAlpha(px) : px;
}

interface RawPixels {
  data: Uint8Array;
  width: number;
  height: number;
  /** 3 = RGB, 4 = RGBA (alpha kept so that resizing can premultiply like PIL). */
  channels: 3 | 4;
}

/** Full decode to 8-bit sRGB (greyscale expanded, CMYK converted), oriented, alpha kept. */
async function decodePixels(input: ImageInput, buf: Buffer, opts: DecodeOptions): Promise<RawPixels> {
  const { data, info } = await run(input, () =>
    open(buf, opts).toColourspace('srgb').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true }),
  );
  if (info.channels !== 3 && info.channels !== 4) {
    throw new ImageDecodeError(`cannot decode image ${describe(input)}: ${info.channels} channels after conversion to sRGB`, pathOf(input));
  }
  return { data: asBytes(data), width: info.width, height: info.height, channels: info.channels };
}

async function sharpPixels(input: ImageInput, size: number, build: () => sharp.Sharp): Promise<Uint8Array> {
  const { data, info } = await run(input, () =>
    build().removeAlpha().toColourspace('srgb').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true }),
  );
  if (info.width !== size || info.height !== size || info.channels !== 3) {
    throw new Error(`internal: expected ${size}x${size}x3, sharp gave ${info.width}x${info.height}x${info.channels}`);
  }
  return asBytes(data);
}

function open(buf: Buffer, opts: DecodeOptions): sharp.Sharp {
  return sharp(buf, {
    // 'error' rejects truncated and corrupt data. sharp's default, 'warning', would also reject
    // images that only raise warnings (e.g. stray bytes between JPEG markers), which PIL reads.
    failOn: 'error',
    autoOrient: true,
    ignoreIcc: !opts.applyIcc,
  });
}

/** Width and height after EXIF orientation (5–8 swap the axes). */
async function orientedSize(input: ImageInput, buf: Buffer, opts: DecodeOptions): Promise<{ width: number; height: number }> {
  const meta = await run(input, () => open(buf, opts).metadata());
  if (meta.autoOrient) return meta.autoOrient;
  if (!meta.width || !meta.height) throw new ImageDecodeError(`cannot decode image ${describe(input)}: no dimensions`, pathOf(input));
  const swap = (meta.orientation ?? 1) >= 5;
  return swap ? { width: meta.height, height: meta.width } : { width: meta.width, height: meta.height };
}

async function readInput(input: ImageInput): Promise<Buffer> {
  if (typeof input !== 'string') {
    if (input.length === 0) throw new ImageDecodeError('cannot decode image: the buffer is empty');
    return input;
  }
  let buf: Buffer;
  try {
    buf = await readFile(input);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory' : String(err);
    throw new ImageDecodeError(`cannot read image ${input}: ${why}`, input, { cause: err });
  }
  if (buf.length === 0) throw new ImageDecodeError(`cannot decode image ${input}: the file is empty`, input);
  return buf;
}

/** Run a sharp operation, turning its errors into ImageDecodeError naming the input. */
async function run<T>(input: ImageInput, op: () => Promise<T>): Promise<T> {
  try {
    return await op();
  } catch (err) {
    if (err instanceof ImageDecodeError) throw err;
    const why = err instanceof Error ? err.message.trim() : String(err);
    throw new ImageDecodeError(`cannot decode image ${describe(input)}: ${why}`, pathOf(input), { cause: err });
  }
}

function describe(input: ImageInput): string {
  return typeof input === 'string' ? input : `(buffer of ${input.length} bytes)`;
}

function pathOf(input: ImageInput): string | undefined {
  return typeof input === 'string' ? input : undefined;
}

// A Uint8Array view over a Buffer, without copying.
function asBytes(buf: Buffer): Uint8Array {
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.length);
}
