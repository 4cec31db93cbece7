// Pure geometry, resampling and normalisation for CLIP-style image preprocessing.
//
// Nothing here touches sharp: these functions work on numbers and on already decoded
// HWC 8-bit buffers, so the exact torchvision/Pillow arithmetic (and the hot per-pixel
// loops) can be tested and reused without an image codec.

/** Per-channel RGB mean of OpenAI CLIP's `Normalize` (values in [0, 1]). */
export const CLIP_MEAN: readonly number[] = Object.freeze([0.48145466, 0.4578275, 0.40821073]);
/** Per-channel RGB standard deviation of OpenAI CLIP's `Normalize`. */
export const CLIP_STD: readonly number[] = Object.freeze([0.26862954, 0.26130258, 0.27577711]);

/** A batch of images, NCHW float32 (N, 3, H, W). */
export interface ImageTensor {
  data: Float32Array;
  shape: [number, number, number, number];
}

/** A rectangle in pixel coordinates of the image it was computed for. */
export interface Box {
  left: number;
  top: number;
  width: number;
  height: number;
}

/** Python 3 `round()`: halves go to the even neighbour (round(0.5) = 0, round(1.5) = 2). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  // Math.round sends every .5 up; pull odd results of exact halves back down.
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * torchvision `Resize(size)` with an int size: the short side becomes `size`, the long side
 * `int(size * long / short)` (truncated, evaluated in doubles left to right like Python).
 */
export function resizeShortSide(width: number, height: number, size: number): [number, number] {
  checkDims(width, height);
  checkSize(size);
  if (width <= height) return [size, Math.trunc((size * height) / width)];
  return [Math.trunc((size * width) / height), size];
}

/**
 * torchvision `CenterCrop(size)` on a w×h image: top = round((h - size) / 2), left likewise,
 * with Python's half-to-even rounding. torchvision zero-pads images smaller than the crop;
 * we never produce those (the resize comes first), so they are rejected instead.
 */
export function centerCropBox(width: number, height: number, size: number): Box {
  checkDims(width, height);
  checkSize(size);
  if (width < size || height < size) {
    throw new RangeError(`centre crop ${size}x${size} does not fit in a ${width}x${height} image`);
  }
  return {
    left: roundHalfEven((width - size) / 2),
    top: roundHalfEven((height - size) / 2),
    width: size,
    height: size,
  };
}

/**
 * torchvision `RandomResizedCrop.get_params`: up to 10 tries of a random area fraction in
 * `scale` and a log-uniform aspect ratio in `ratio`, else a centred crop clamped to `ratio`.
 * All randomness comes from `rng` (uniform in [0, 1)), consumed in a fixed order, so the
 * same seed gives the same boxes.
 */
export function randomResizedCropBox(
  width: number,
  height: number,
  rng: () => number,
  scale: readonly [number, number] = [0.9, 1.0],
  ratio: readonly [number, number] = [3 / 4, 4 / 3],
): Box {
  checkDims(width, height);
  if (!(scale[0] > 0 && scale[0] <= scale[1])) throw new RangeError(`bad scale range [${scale}]`);
  if (!(ratio[0] > 0 && ratio[0] <= ratio[1])) throw new RangeError(`bad ratio range [${ratio}]`);
  const area = width * height;
  const logLo = Math.log(ratio[0]);
  const logHi = Math.log(ratio[1]);
  for (let attempt = 0; attempt < 10; attempt++) {
    const targetArea = area * uniform(rng, scale[0], scale[1]);
    const aspect = Math.exp(uniform(rng, logLo, logHi));
    const w = roundHalfEven(Math.sqrt(targetArea * aspect));
    const h = roundHalfEven(Math.sqrt(targetArea / aspect));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const top = randInt(rng, height - h + 1);
      const left = randInt(rng, width - w + 1);
      return { left, top, width: w, height: h };
    }
  }
  // Fallback: the largest centred crop whose aspect ratio lies within `ratio`.
  const inRatio = width / height;
  let w = width;
  let h = height;
  if (inRatio < ratio[0]) h = roundHalfEven(w / ratio[0]);
  else if (inRatio > ratio[1]) w = roundHalfEven(h * ratio[1]);
  return { left: Math.floor((width - w) / 2), top: Math.floor((height - h) / 2), width: w, height: h };
}

// ---------------------------------------------------------------------------------------
// Pixel operations on interleaved 8-bit buffers (row-major, `channels` bytes per pixel).

/** Copy the `box` region out of a w×h image. */
export function cropPixels(src: Uint8Array, width: number, height: number, channels: number, box: Box): Uint8Array {
  checkPixels(src, width, height, channels);
  checkBox(box, width, height);
  const rowBytes = box.width * channels;
  const out = new Uint8Array(rowBytes * box.height);
  for (let y = 0; y < box.height; y++) {
    const from = ((box.top + y) * width + box.left) * channels;
    out.set(src.subarray(from, from + rowBytes), y * rowBytes);
  }
  return out;
}

/** Mirror left-right, in place. */
export function flipHorizontal(px: Uint8Array, width: number, height: number, channels: number): Uint8Array {
  checkPixels(px, width, height, channels);
  for (let y = 0; y < height; y++) {
    for (let l = y * width * channels, r = l + (width - 1) * channels; l < r; l += channels, r -= channels) {
      for (let c = 0; c < channels; c++) {
        const t = px[l + c]!;
        px[l + c] = px[r + c]!;
        px[r + c] = t;
      }
    }
  }
  return px;
}

/** RGBA → RGB by dropping alpha: no compositing, like PIL's convert("RGB"). */
export function dropAlpha(rgba: Uint8Array): Uint8Array {
  const n = rgba.length >> 2;
  const rgb = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    rgb[i * 3] = rgba[i * 4]!;
    rgb[i * 3 + 1] = rgba[i * 4 + 1]!;
    rgb[i * 3 + 2] = rgba[i * 4 + 2]!;
  }
  return rgb;
}

// Pillow's resampler (libImaging/Resample.c), reproduced operation for operation so that the
// result is bit-identical to PIL's Image.resize(size, BICUBIC): a separable convolution whose
// kernel widens with the downscale factor (antialiasing), weights renormalised at the borders,
// 22-bit fixed-point weights, a horizontal pass into an 8-bit intermediate, then a vertical pass.
// libvips' resampler differs in rounding, border handling and, when enlarging, by half an
// output pixel of shift, which is visible on small images upscaled to 224.
const PRECISION_BITS = 22; // 32 - 8 - 2 in Pillow: 8-bit values, 2 bits of headroom
const HALF = 1 << (PRECISION_BITS - 1);
const BICUBIC_SUPPORT = 2;

// Keys' cubic with a = -0.5 (Catmull-Rom), Pillow's `bicubic_filter`.
function bicubic(x: number): number {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

interface Coeffs {
  ksize: number;
  /** Per output index: first source index, number of taps. */
  bounds: Int32Array;
  /** ksize fixed-point weights per output index. */
  k: Int32Array;
}

// Coefficient tables by (inSize, outSize, first, count): training crops of small images repeat the
// same few sizes, and building a table costs as much as a fifth of the resize it serves.
const coeffCache = new Map<string, Coeffs>();
const COEFF_CACHE_MAX = 4096;

function bicubicCoeffs(inSize: number, outSize: number, first: number, count: number): Coeffs {
  const key = `${inSize}:${outSize}:${first}:${count}`;
  let c = coeffCache.get(key);
  if (!c) {
    if (coeffCache.size >= COEFF_CACHE_MAX) coeffCache.clear();
    c = computeBicubicCoeffs(inSize, outSize, first, count);
    coeffCache.set(key, c);
  }
  return c;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc, for output indices [first, first + count).
function computeBicubicCoeffs(inSize: number, outSize: number, first: number, count: number): Coeffs {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = BICUBIC_SUPPORT * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(count * 2);
  const k = new Int32Array(count * ksize);
  const w = new Float64Array(ksize);
  const ss = 1 / filterscale;
  for (let i = 0; i < count; i++) {
    const center = (first + i + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5)); // C's (int) cast truncates
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      w[x] = bicubic((x + xmin - center + 0.5) * ss);
      ww += w[x]!;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0 ? w[x]! / ww : w[x]!;
      // Round half away from zero into 22-bit fixed point.
      k[i * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS)) : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[i * 2] = xmin;
    bounds[i * 2 + 1] = xmax;
  }
  return { ksize, bounds, k };
}

// Pillow's clip8: arithmetic shift out the fraction, clamp to 0..255.
function clip8(acc: number): number {
  const v = acc >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/**
 * PIL's `Image.resize((outW, outH), BICUBIC)` for 8-bit pixels with 3 (RGB) or 4 (RGBA)
 * channels, bit-exact, computing only the `window` of the outW×outH result (by default all
 * of it). Each output pixel depends only on its own coordinates, so resize-then-crop costs
 * only the crop. RGBA is premultiplied around the resize as Pillow does: fully transparent
 * pixels come out (0, 0, 0, 0). When the size is unchanged PIL copies; so do we.
 */
export function resizeBicubic(
  src: Uint8Array,
  width: number,
  height: number,
  channels: 3 | 4,
  outW: number,
  outH: number,
  window: Box = { left: 0, top: 0, width: outW, height: outH },
): Uint8Array {
  checkPixels(src, width, height, channels);
  checkDims(outW, outH);
  checkBox(window, outW, outH);
  const needH = outW !== width;
  const needV = outH !== height;
  if (!needH && !needV) return cropPixels(src, width, height, channels, window);
  const input = channels === 4 ? premultiply(src) : src;

  // Source rows the vertical pass reads (all of the window's rows when there is none).
  const vert = needV ? bicubicCoeffs(height, outH, window.top, window.height) : undefined;
  const y0 = vert ? vert.bounds[0]! : window.top;
  const y1 = vert ? vert.bounds[(window.height - 1) * 2]! + vert.bounds[(window.height - 1) * 2 + 1]! : window.top + window.height;

  // Horizontal pass: rows y0..y1 of the source, the window's columns, into an 8-bit buffer.
  const cols = window.width;
  const rowOut = cols * channels;
  let tmp: Uint8Array;
  if (needH) {
    const { ksize, bounds, k } = bicubicCoeffs(width, outW, window.left, cols);
    tmp = new Uint8Array((y1 - y0) * rowOut);
    for (let y = y0; y < y1; y++) {
      const rowIn = y * width * channels;
      const dst = (y - y0) * rowOut;
      for (let xx = 0; xx < cols; xx++) {
        const n = bounds[xx * 2 + 1]!;
        const kb = xx * ksize;
        // One accumulator per channel, as Pillow does (unrolled: this is the hot loop).
        let a0 = HALF, a1 = HALF, a2 = HALF, a3 = HALF;
        let p = rowIn + bounds[xx * 2]! * channels;
        if (channels === 3) {
          for (let x = 0; x < n; x++, p += 3) {
            const kv = k[kb + x]!;
            a0 += input[p]! * kv;
            a1 += input[p + 1]! * kv;
            a2 += input[p + 2]! * kv;
          }
        } else {
          for (let x = 0; x < n; x++, p += 4) {
            const kv = k[kb + x]!;
            a0 += input[p]! * kv;
            a1 += input[p + 1]! * kv;
            a2 += input[p + 2]! * kv;
            a3 += input[p + 3]! * kv;
          }
        }
        const q = dst + xx * channels;
        tmp[q] = clip8(a0);
        tmp[q + 1] = clip8(a1);
        tmp[q + 2] = clip8(a2);
        if (channels === 4) tmp[q + 3] = clip8(a3);
      }
    }
  } else {
    tmp = cropPixels(input, width, height, channels, { left: window.left, top: y0, width: cols, height: y1 - y0 });
  }

  // Vertical pass over the intermediate rows.
  let out: Uint8Array;
  if (vert) {
    const { ksize, bounds, k } = vert;
    out = new Uint8Array(window.height * rowOut);
    // Accumulate whole rows tap by tap: sequential memory access instead of strided columns.
    const acc = new Float64Array(rowOut);
    for (let yy = 0; yy < window.height; yy++) {
      const ymin = bounds[yy * 2]! - y0;
      const n = bounds[yy * 2 + 1]!;
      const kb = yy * ksize;
      acc.fill(HALF);
      for (let y = 0; y < n; y++) {
        const kv = k[kb + y]!;
        const row = (ymin + y) * rowOut;
        for (let i = 0; i < rowOut; i++) acc[i] += tmp[row + i]! * kv;
      }
      const dst = yy * rowOut;
      for (let i = 0; i < rowOut; i++) out[dst + i] = clip8(acc[i]!);
    }
  } else {
    out = tmp;
  }
  return channels === 4 ? unpremultiply(out) : out;
}

// Pillow's RGBA → RGBa: c * a / 255 with its MULDIV255 rounding.
function premultiply(rgba: Uint8Array): Uint8Array {
  const out = new Uint8Array(rgba.length);
  for (let p = 0; p < rgba.length; p += 4) {
    const a = rgba[p + 3]!;
    for (let c = 0; c < 3; c++) {
      const t = rgba[p + c]! * a + 128;
      out[p + c] = ((t >> 8) + t) >> 8;
    }
    out[p + 3] = a;
  }
  return out;
}

// Pillow's RGBa → RGBA: c * 255 / a (integer division), left alone when a is 0 or 255. In place.
function unpremultiply(rgba: Uint8Array): Uint8Array {
  for (let p = 0; p < rgba.length; p += 4) {
    const a = rgba[p + 3]!;
    if (a === 0 || a === 255) continue;
    for (let c = 0; c < 3; c++) rgba[p + c] = Math.min(255, Math.trunc((255 * rgba[p + c]!) / a));
  }
  return rgba;
}

/**
 * Per-channel lookup tables: an 8-bit value v maps to ((v / 255) - mean) / std, rounded to
 * float32 once. Cheaper than the arithmetic per pixel and identical for every image.
 */
function normLuts(mean: readonly number[], std: readonly number[]): Float32Array[] {
  if (mean.length !== 3 || std.length !== 3) throw new RangeError('mean and std need 3 values (RGB)');
  return [0, 1, 2].map((c) => {
    if (!(std[c]! > 0)) throw new RangeError(`std[${c}] must be > 0`);
    const lut = new Float32Array(256);
    for (let v = 0; v < 256; v++) lut[v] = (v / 255 - mean[c]!) / std[c]!;
    return lut;
  });
}

const lutCache = new Map<string, Float32Array[]>();
function cachedLuts(mean: readonly number[], std: readonly number[]): Float32Array[] {
  const key = `${mean.join(',')}|${std.join(',')}`;
  let luts = lutCache.get(key);
  if (!luts) {
    luts = normLuts(mean, std);
    if (lutCache.size > 16) lutCache.clear(); // a handful of (mean, std) pairs is the norm
    lutCache.set(key, luts);
  }
  return luts;
}

/**
 * ToTensor + Normalize: HWC Uint8 RGB (w×h) → CHW float32 of ((v / 255) - mean) / std.
 * Writes into `out` at `offset` when given (preprocessBatch fills one NCHW buffer that way),
 * else into a new array. Returns the array written to.
 */
export function normalizeToCHW(
  rgb: Uint8Array,
  width: number,
  height: number,
  mean: readonly number[] = CLIP_MEAN,
  std: readonly number[] = CLIP_STD,
  out?: Float32Array,
  offset = 0,
): Float32Array {
  checkDims(width, height);
  const plane = width * height;
  if (rgb.length !== plane * 3) {
    throw new RangeError(`expected ${plane * 3} bytes of RGB for ${width}x${height}, got ${rgb.length}`);
  }
  const dst = out ?? new Float32Array(plane * 3);
  if (offset < 0 || offset + plane * 3 > dst.length) throw new RangeError('output buffer too small');
  const [lr, lg, lb] = cachedLuts(mean, std) as [Float32Array, Float32Array, Float32Array];
  const r = offset;
  const g = offset + plane;
  const b = offset + 2 * plane;
  for (let i = 0, p = 0; i < plane; i++, p += 3) {
    dst[r + i] = lr[rgb[p]!]!;
    dst[g + i] = lg[rgb[p + 1]!]!;
    dst[b + i] = lb[rgb[p + 2]!]!;
  }
  return dst;
}

// torch.empty(1).uniform_(lo, hi)
function uniform(rng: () => number, lo: number, hi: number): number {
  return lo + (hi - lo) * nextRandom(rng);
}

// torch.randint(0, n): an integer in [0, n)
function randInt(rng: () => number, n: number): number {
  return Math.min(n - 1, Math.floor(nextRandom(rng) * n));
}

function nextRandom(rng: () => number): number {
  const u = rng();
  if (!(u >= 0 && u < 1)) throw new RangeError(`rng() must return a number in [0, 1), got ${u}`);
  return u;
}

function checkDims(width: number, height: number): void {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new RangeError(`image size must be positive integers, got ${width}x${height}`);
  }
}

function checkPixels(px: Uint8Array, width: number, height: number, channels: number): void {
  checkDims(width, height);
  if (px.length !== width * height * channels) {
    throw new RangeError(`expected ${width * height * channels} bytes for ${width}x${height}x${channels}, got ${px.length}`);
  }
}

function checkBox(box: Box, width: number, height: number): void {
  const { left, top, width: w, height: h } = box;
  if (![left, top, w, h].every(Number.isInteger) || left < 0 || top < 0 || w < 1 || h < 1 || left + w > width || top + h > height) {
    throw new RangeError(`box ${w}x${h}+${left}+${top} is not inside a ${width}x${height} image`);
  }
}

function checkSize(size: number): void {
  if (!Number.isInteger(size) || size < 1) throw new RangeError(`size must be a positive integer, got ${size}`);
}
