// Tests for src/data/image.ts and src/data/transforms.ts. Every image is generated here
// with sharp; the Pillow reference vectors below were produced once with Pillow 9.4
// (`Image.resize(size, Image.BICUBIC)`) and are pinned so CI needs no Python.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import {
  CLIP_MEAN,
  CLIP_STD,
  ImageDecodeError,
  augmentClip,
  centerCropBox,
  cropPixels,
  decodeImage,
  dropAlpha,
  flipHorizontal,
  normalizeToCHW,
  preprocessBatch,
  preprocessClip,
  randomResizedCropBox,
  resizeBicubic,
  resizeShortSide,
  roundHalfEven,
} from '../src/data/image.js';

// ---- helpers --------------------------------------------------------------------------

type RGB = [number, number, number];

/** mulberry32: a tiny seeded PRNG returning floats in [0, 1). */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** An rng that replays fixed values (to steer crop and flip decisions). */
function replay(values: number[]): () => number {
  let i = 0;
  return () => values[i++ % values.length]!;
}

/** w×h RGB raw pixels from a per-pixel colour function. */
function raw(w: number, h: number, colour: (x: number, y: number) => RGB): Buffer {
  const px = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) px.set(colour(x, y), (y * w + x) * 3);
  }
  return px;
}

function encode(px: Buffer, w: number, h: number, channels: 1 | 3 | 4 = 3): sharp.Sharp {
  return sharp(px, { raw: { width: w, height: h, channels } });
}

/** The normalised value of an 8-bit colour, channel c. */
function norm(v: number, c: number): number {
  return (v / 255 - CLIP_MEAN[c]!) / CLIP_STD[c]!;
}

/** Pixel (x, y) of a CHW float tensor of side n, as the three channel values. */
function at(t: Float32Array, n: number, x: number, y: number, offset = 0): RGB {
  return [0, 1, 2].map((c) => t[offset + c * n * n + y * n + x]!) as RGB;
}

function assertColour(t: Float32Array, n: number, x: number, y: number, rgb: RGB, tol = 1e-3, what = ''): void {
  const got = at(t, n, x, y);
  for (let c = 0; c < 3; c++) {
    assert.ok(Math.abs(got[c]! - norm(rgb[c]!, c)) <= tol, `${what} pixel (${x},${y}) channel ${c}: got ${got[c]}, want ${norm(rgb[c]!, c)}`);
  }
}

function hex(s: string): Uint8Array {
  return Uint8Array.from(s.match(/../g)!.map((b) => parseInt(b, 16)));
}

const RED: RGB = [220, 30, 40];
const GREEN: RGB = [30, 200, 60];
const BLUE: RGB = [20, 40, 210];

// ---- pure helpers -----------------------------------------------------------------------

describe('geometry (torchvision arithmetic)', () => {
  test('roundHalfEven is Python round()', () => {
    assert.deepEqual([0.5, 1.5, 2.5, 3.5, -1.5, 1.2, 1.7, 4].map(roundHalfEven), [0, 2, 2, 4, -2, 1, 2, 4]);
    assert.equal(Math.abs(roundHalfEven(-0.5)), 0);
  });

  test('resizeShortSide: short side to size, long side truncated', () => {
    assert.deepEqual(resizeShortSide(500, 375, 224), [298, 224]); // 298.67 → 298
    assert.deepEqual(resizeShortSide(375, 500, 224), [224, 298]);
    assert.deepEqual(resizeShortSide(32, 32, 224), [224, 224]);
    assert.deepEqual(resizeShortSide(640, 427, 224), [335, 224]); // 335.74 → 335
    assert.deepEqual(resizeShortSide(224, 300, 224), [224, 300]); // already there: no resize
    assert.throws(() => resizeShortSide(0, 10, 224), RangeError);
  });

  test('centerCropBox rounds half to even like CenterCrop', () => {
    assert.deepEqual(centerCropBox(298, 224, 224), { left: 37, top: 0, width: 224, height: 224 });
    assert.deepEqual(centerCropBox(225, 224, 224), { left: 0, top: 0, width: 224, height: 224 }); // round(0.5) = 0
    assert.deepEqual(centerCropBox(227, 224, 224), { left: 2, top: 0, width: 224, height: 224 }); // round(1.5) = 2
    assert.deepEqual(centerCropBox(224, 229, 224), { left: 0, top: 2, width: 224, height: 224 }); // round(2.5) = 2
    assert.throws(() => centerCropBox(200, 300, 224), RangeError);
  });

  test('randomResizedCropBox stays inside the image and respects scale', () => {
    const rng = seeded(7);
    for (let i = 0; i < 200; i++) {
      const b = randomResizedCropBox(500, 375, rng, [0.9, 1.0]);
      assert.ok(b.left >= 0 && b.top >= 0 && b.left + b.width <= 500 && b.top + b.height <= 375, JSON.stringify(b));
      const frac = (b.width * b.height) / (500 * 375);
      assert.ok(frac > 0.85 && frac <= 1.0, `area fraction ${frac}`);
    }
  });

  test('randomResizedCropBox is deterministic for a seed', () => {
    const boxes = (seed: number) => {
      const rng = seeded(seed);
      return Array.from({ length: 5 }, () => randomResizedCropBox(640, 480, rng, [0.08, 1]));
    };
    assert.deepEqual(boxes(1), boxes(1));
    assert.notDeepEqual(boxes(1), boxes(2));
  });

  test('randomResizedCropBox falls back to a centred crop within the ratio', () => {
    // 1000×10: every candidate square-ish crop is taller than the image, so all 10 tries fail.
    const b = randomResizedCropBox(1000, 10, seeded(3), [1, 1]);
    assert.deepEqual(b, { left: 493, top: 0, width: 13, height: 10 }); // w = round(10 · 4/3)
  });

  test('rng values outside [0, 1) are rejected', () => {
    assert.throws(() => randomResizedCropBox(10, 10, () => 1), RangeError);
  });
});

describe('pixel helpers', () => {
  test('normalizeToCHW: layout, values, offset into a batch buffer', () => {
    const rgb = Uint8Array.from([0, 128, 255, 10, 20, 30]); // 2×1: two pixels
    const out = normalizeToCHW(rgb, 2, 1);
    assert.equal(out.length, 6);
    const want = [norm(0, 0), norm(10, 0), norm(128, 1), norm(20, 1), norm(255, 2), norm(30, 2)];
    out.forEach((v, i) => assert.ok(Math.abs(v - want[i]!) < 1e-6, `index ${i}`));
    const batch = new Float32Array(12).fill(42);
    normalizeToCHW(rgb, 2, 1, CLIP_MEAN, CLIP_STD, batch, 6);
    assert.deepEqual(Array.from(batch.subarray(0, 6)), [42, 42, 42, 42, 42, 42]);
    assert.deepEqual(Array.from(batch.subarray(6)), Array.from(out));
    assert.throws(() => normalizeToCHW(rgb, 3, 1), RangeError);
    assert.throws(() => normalizeToCHW(rgb, 2, 1, CLIP_MEAN, CLIP_STD, batch, 7), RangeError);
  });

  test('normalizeToCHW honours custom mean/std', () => {
    const out = normalizeToCHW(Uint8Array.from([255, 0, 51]), 1, 1, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]);
    assert.deepEqual(Array.from(out).map((v) => Math.round(v * 1e5) / 1e5), [1, -1, -0.6]);
  });

  test('cropPixels, flipHorizontal, dropAlpha', () => {
    const px = Uint8Array.from({ length: 4 * 3 * 3 }, (_, i) => i); // 4×3 RGB
    assert.deepEqual(Array.from(cropPixels(px, 4, 3, 3, { left: 1, top: 1, width: 2, height: 1 })), [15, 16, 17, 18, 19, 20]);
    const row = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9]); // 3×1
    assert.deepEqual(Array.from(flipHorizontal(row, 3, 1, 3)), [7, 8, 9, 4, 5, 6, 1, 2, 3]);
    assert.deepEqual(Array.from(dropAlpha(Uint8Array.from([1, 2, 3, 0, 4, 5, 6, 255]))), [1, 2, 3, 4, 5, 6]);
    assert.throws(() => cropPixels(px, 4, 3, 3, { left: 3, top: 0, width: 2, height: 1 }), RangeError);
  });
});

describe('resizeBicubic matches Pillow bit for bit', () => {
  // Source pattern used to generate the reference vectors with Pillow.
  const pattern = (w: number, h: number, c: number) =>
    Uint8Array.from({ length: w * h * c }, (_, i) => {
      const k = i % c;
      const x = Math.floor(i / c) % w;
      const y = Math.floor(i / c / w);
      return (x * 37 + y * 91 + k * 53 + x * y * 11) % 256;
    });
  const src = pattern(7, 5, 3);
  const PIL: Record<string, string> = {
    '4x3': '3872a48195927b95ac9f857a998f738c7e77857664746f82649d8b708361738672589284',
    '11x9':
      '002b60053a6e20558b376bb14d89ce65afe48ac7ffa9e4d3bffe23d96c1fe9003e154786235d9b417faf619e90809791967bb07a91da73b5c292d656b4815fca387a4d81c2609ae383c4eaa9f357d4ac2ae7255a60388119639d488aac72a0cc8baae08ecc7caba69ac480b08dad678f9561b454897278575b7a4a8843816267b33c8ccfb2f91cd99635e82260564a862f76b6679cd18dd44cb9ad0ae11b416d2a6d0a518652903f746f6b985395759554848a54af4f84747a676a8a69ab679b908b666fac330c40822b65a55e9fb185cf2eba9212de1c516840792b75a95b9cd995cf74baee1b477cc773ac9499d7514c894c4c6372886da292a95f6ca94b1e5c8a49829279ad8d6da2eba0d587bdf2192b5e5f0b48ac549ed3aae74f94c8120035591d52a35085d0',
    '5x8':
      '02376b3267a769abf1adeca0dc4f252862a669a4959779a36caea4af7a796d9edaaddd7dc446482e5e956ca3dbc5b35a906583739393a17536524797a6953e805577709093ac80466c5a6226579585b559bd3f414677b9a4d6585a93a26aa5518a6c77518c74629c8895ca9f568b51589aab689d2f295eaf',
  };
  for (const [size, want] of Object.entries(PIL)) {
    test(`RGB 7x5 → ${size}`, () => {
      const [w, h] = size.split('x').map(Number) as [number, number];
      assert.deepEqual(resizeBicubic(src, 7, 5, 3, w, h), hex(want));
    });
  }

  test('RGBA is resampled premultiplied, then alpha dropped (PIL resize + convert("RGB"))', () => {
    const rgba = pattern(6, 4, 4);
    const alpha = [0, 128, 255, 255, 40, 0];
    for (let i = 0; i < 24; i++) rgba[i * 4 + 3] = alpha[i % 6]!;
    const want =
      '00000018487d265b943f75b45fa0df6caee183c3f3ffffff000000000000569eff72b9c29ee14dcf965ed033747b4e962ad4ff000000000000e665c0bb7e9676a960998f82a95a94837b65aaff55000000000000f02669af436c4671726687a48381b587a56cffff55000000000000397dff5ea29b98de0adb7d21e8064d7f307800ffff000000';
    assert.deepEqual(dropAlpha(resizeBicubic(rgba, 6, 4, 4, 9, 5)), hex(want));
  });

  test('a window of the output equals the same crop of the full output', () => {
    const full = resizeBicubic(src, 7, 5, 3, 11, 9);
    const win = { left: 3, top: 2, width: 5, height: 6 };
    assert.deepEqual(resizeBicubic(src, 7, 5, 3, 11, 9, win), cropPixels(full, 11, 9, 3, win));
  });

  test('flat colour stays flat when shrinking and enlarging', () => {
    const flat = new Uint8Array(13 * 7 * 3).fill(77);
    for (const [w, h] of [[5, 3], [40, 21], [13, 2]] as const) {
      assert.ok(resizeBicubic(flat, 13, 7, 3, w, h).every((v) => v === 77), `${w}x${h}`);
    }
  });
});

// ---- decoding and preprocessing through sharp -------------------------------------------

describe('images through sharp', () => {
  let dir = '';
  const file = (name: string) => join(dir, name);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'clipkit-image-'));
    // 400×200, vertical bands: red x < 150, green 150 ≤ x < 250, blue x ≥ 250.
    const bands = raw(400, 200, (x) => (x < 150 ? RED : x < 250 ? GREEN : BLUE));
    await encode(bands, 400, 200).png().toFile(file('bands.png'));
    // Portrait 200×400 with horizontal bands (the crop is vertical there).
    const hbands = raw(200, 400, (_, y) => (y < 150 ? RED : y < 250 ? GREEN : BLUE));
    await encode(hbands, 200, 400).png().toFile(file('hbands.png'));
    // A smooth gradient.
    await encode(raw(320, 240, (x, y) => [x % 256, y, (x + y) % 256]), 320, 240).png().toFile(file('gradient.png'));
    // Stored 64×32 (red left, blue right) with EXIF orientation 6 = display rotated 90° clockwise.
    const lr = raw(64, 32, (x) => (x < 32 ? [255, 0, 0] : [0, 0, 255]));
    await encode(lr, 64, 32).jpeg({ quality: 95 }).withMetadata({ orientation: 6 }).toFile(file('exif6.jpg'));
    await encode(Buffer.from([0, 100, 200, 255]), 2, 2, 1).png().toFile(file('grey.png'));
    // RGBA: raw colours under alpha 0, 128 and 255.
    const rgba = Buffer.from([10, 20, 30, 0, 40, 50, 60, 128, 70, 80, 90, 255, 1, 2, 3, 0]);
    await encode(rgba, 2, 2, 4).png().toFile(file('rgba.png'));
    // 16-bit RGB PNG (sharp infers 16-bit raw input from a Uint16Array).
    const deep = new Uint16Array([0x12ff, 0xabcd, 0x0080, 0xffff, 0x0000, 0x8000]);
    await sharp(deep, { raw: { width: 2, height: 1, channels: 3 } }).toColourspace('rgb16').png().toFile(file('rgb16.png'));
    await encode(raw(16, 16, () => [200, 40, 40]), 16, 16).toColourspace('cmyk').jpeg({ quality: 95 }).toFile(file('cmyk.jpg'));
    const jpeg = await encode(raw(320, 240, (x, y) => [(x * 7) & 255, (y * 5) & 255, (x ^ y) & 255]), 320, 240).jpeg().toBuffer();
    await writeFile(file('photo.jpg'), jpeg);
    await writeFile(file('truncated.jpg'), jpeg.subarray(0, jpeg.length >> 1));
    await writeFile(file('random.bin'), Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 2654435761) >>> 24)));
    await writeFile(file('empty.png'), Buffer.alloc(0));
  });

  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  describe('decodeImage', () => {
    test('applies EXIF orientation 6 (rotated 90° clockwise)', async () => {
      const { data, width, height } = await decodeImage(file('exif6.jpg'));
      assert.deepEqual([width, height], [32, 64]);
      const px = (x: number, y: number) => Array.from(data.subarray((y * width + x) * 3, (y * width + x) * 3 + 3));
      // The stored left (red) half ends up on top, the right (blue) half at the bottom.
      assert.ok(px(16, 8)[0]! > 200 && px(16, 8)[2]! < 50, `top ${px(16, 8)}`);
      assert.ok(px(16, 56)[2]! > 200 && px(16, 56)[0]! < 50, `bottom ${px(16, 56)}`);
    });

    test('greyscale is expanded to three equal channels', async () => {
      const { data, width, height } = await decodeImage(file('grey.png'));
      assert.deepEqual([width, height], [2, 2]);
      assert.deepEqual(Array.from(data), [0, 0, 0, 100, 100, 100, 200, 200, 200, 255, 255, 255]);
    });

    test('alpha is dropped without compositing (raw RGB kept, as PIL convert("RGB"))', async () => {
      const { data } = await decodeImage(file('rgba.png'));
      assert.deepEqual(Array.from(data), [10, 20, 30, 40, 50, 60, 70, 80, 90, 1, 2, 3]);
    });

    test('16-bit samples become their high byte (as PIL)', async () => {
      const { data } = await decodeImage(file('rgb16.png'));
      assert.deepEqual(Array.from(data), [0x12, 0xab, 0x00, 0xff, 0x00, 0x80]);
    });

    test('CMYK is converted to sRGB', async () => {
      const { data, width, height } = await decodeImage(file('cmyk.jpg'));
      assert.equal(data.length, width * height * 3);
      const [r, g, b] = Array.from(data.subarray(0, 3));
      // Through a CMYK profile the colour is close to, not exactly, the original (200, 40, 40).
      assert.ok(Math.abs(r! - 200) < 30 && Math.abs(g! - 40) < 30 && Math.abs(b! - 40) < 30, `${r},${g},${b}`);
    });

    test('Buffer input decodes like a path', async () => {
      const a = await decodeImage(file('photo.jpg'));
      const b = await decodeImage(await readFile(file('photo.jpg')));
      assert.deepEqual(b, a);
    });
  });

  describe('errors', () => {
    const cases: [string, RegExp][] = [
      ['truncated.jpg', /premature end|truncated/i],
      ['random.bin', /unsupported image format/i],
      ['empty.png', /empty/i],
      ['does-not-exist.png', /no such file/i],
    ];
    for (const [name, why] of cases) {
      test(`${name} → ImageDecodeError naming the file`, async () => {
        for (const run of [() => decodeImage(file(name)), () => preprocessClip(file(name)), () => preprocessClip(file(name), { resampler: 'sharp' })]) {
          await assert.rejects(run, (err: unknown) => {
            assert.ok(err instanceof ImageDecodeError, String(err));
            assert.match(err.message, why);
            assert.ok(err.message.includes(file(name)), err.message);
            assert.equal(err.path, file(name));
            return true;
          });
        }
      });
    }

    test('a missing file keeps the ENOENT error as cause', async () => {
      await assert.rejects(decodeImage(file('nope.jpg')), (err: unknown) => {
        assert.ok(err instanceof ImageDecodeError);
        assert.equal((err.cause as NodeJS.ErrnoException).code, 'ENOENT');
        return true;
      });
    });

    test('a truncated Buffer is rejected too', async () => {
      const buf = await readFile(file('truncated.jpg'));
      await assert.rejects(preprocessClip(buf), (err: unknown) => err instanceof ImageDecodeError && /buffer of \d+ bytes/.test(err.message));
    });

    test('preprocessBatch fails on a bad member', async () => {
      await assert.rejects(preprocessBatch([file('photo.jpg'), file('random.bin')]), ImageDecodeError);
    });
  });

  for (const resampler of ['pil', 'sharp'] as const) {
    describe(`preprocessClip (${resampler} resampler)`, () => {
      test('shape and value range', async () => {
        const t = await preprocessClip(file('gradient.png'), { resampler });
        assert.equal(t.length, 3 * 224 * 224);
        for (let c = 0; c < 3; c++) {
          const lo = norm(0, c) - 1e-6;
          const hi = norm(255, c) + 1e-6;
          for (let i = c * 224 * 224; i < (c + 1) * 224 * 224; i++) assert.ok(t[i]! >= lo && t[i]! <= hi);
        }
        assert.equal((await preprocessClip(file('gradient.png'), { resampler, size: 64 })).length, 3 * 64 * 64);
      });

      test('crop geometry on a landscape image with bands', async () => {
        // 400×200 → resized 448×224 (scale 1.12), crop left = 112. Output column j samples
        // source x = (j + 112.5) / 1.12 − 0.5, so the red|green edge (x = 150) lands near
        // j = 56 and the green|blue edge (x = 250) near j = 168; the cubic kernel blurs ±2.3 px.
        const t = await preprocessClip(file('bands.png'), { resampler });
        for (const y of [0, 112, 223]) {
          for (const x of [0, 20, 52]) assertColour(t, 224, x, y, RED, 1e-3, 'red band');
          for (const x of [60, 112, 165]) assertColour(t, 224, x, y, GREEN, 1e-3, 'green band');
          for (const x of [171, 200, 223]) assertColour(t, 224, x, y, BLUE, 1e-3, 'blue band');
        }
        // Between the flat regions the edge is blended, so neither colour.
        assert.ok(Math.abs(at(t, 224, 56, 100)[0]! - norm(RED[0], 0)) > 0.1);
      });

      test('crop geometry on a portrait image (vertical crop)', async () => {
        const t = await preprocessClip(file('hbands.png'), { resampler });
        for (const y of [0, 52]) assertColour(t, 224, 100, y, RED, 1e-3, 'red band');
        for (const y of [60, 165]) assertColour(t, 224, 100, y, GREEN, 1e-3, 'green band');
        for (const y of [171, 223]) assertColour(t, 224, 100, y, BLUE, 1e-3, 'blue band');
      });

      test('centre crop rounds half to even (229 wide → left = round(2.5) = 2)', async () => {
        // Already 224 high, so no resampling: the crop alone decides each pixel.
        // Rounding half up would start at column 3 instead.
        const px = raw(229, 224, (x) => (x < 2 || x > 225 ? RED : x === 2 ? BLUE : GREEN));
        const t = await preprocessClip(await encode(px, 229, 224).png().toBuffer(), { resampler });
        assertColour(t, 224, 0, 10, BLUE);
        assertColour(t, 224, 1, 10, GREEN);
        assertColour(t, 224, 223, 10, GREEN);
      });

      test('EXIF orientation is applied before the resize', async () => {
        const t = await preprocessClip(file('exif6.jpg'), { resampler, size: 32 });
        // 32×64 upright → 32×64 → crop rows 16..47: top half red, bottom half blue.
        assert.ok(at(t, 32, 16, 4)[0]! > norm(200, 0) && at(t, 32, 16, 28)[2]! > norm(200, 2));
      });

      test('transparent pixels become black when resized (PIL resamples premultiplied)', async () => {
        // 20×10: left half transparent (raw colour under it is green), right half opaque red.
        const px = Buffer.alloc(20 * 10 * 4);
        for (let i = 0; i < 200; i++) px.set(i % 20 < 10 ? [0, 255, 0, 0] : [255, 0, 0, 255], i * 4);
        const t = await preprocessClip(await encode(px, 20, 10, 4).png().toBuffer(), { resampler, size: 40 });
        assertColour(t, 40, 2, 20, [0, 0, 0], 1e-3, 'transparent');
        assertColour(t, 40, 37, 20, [255, 0, 0], 1e-3, 'opaque');
      });
    });
  }

  test('the two resamplers agree closely on a smooth image', async () => {
    const a = await preprocessClip(file('gradient.png'));
    const b = await preprocessClip(file('gradient.png'), { resampler: 'sharp' });
    let sum = 0;
    for (let i = 0; i < a.length; i++) sum += Math.abs(a[i]! - b[i]!);
    assert.ok(sum / a.length < 0.02, `mean |pil − sharp| = ${sum / a.length}`);
  });

  test('preprocessBatch stacks preprocessClip results, for any parallelism', async () => {
    const inputs = [file('bands.png'), file('gradient.png'), file('photo.jpg'), file('exif6.jpg'), file('grey.png')];
    const one = await preprocessBatch(inputs, { parallel: 1 });
    const many = await preprocessBatch(inputs, { parallel: 3 });
    assert.deepEqual(one.shape, [5, 3, 224, 224]);
    assert.deepEqual(many.data, one.data);
    const per = 3 * 224 * 224;
    for (let i = 0; i < inputs.length; i++) {
      assert.deepEqual(one.data.subarray(i * per, (i + 1) * per), await preprocessClip(inputs[i]!));
    }
    assert.deepEqual((await preprocessBatch([])).shape, [0, 3, 224, 224]);
  });

  for (const resampler of ['pil', 'sharp'] as const) {
    describe(`augmentClip (${resampler} resampler)`, () => {
      test('same seed → same tensor, other seed → different', async () => {
        const run = (seed: number) => augmentClip(file('photo.jpg'), { size: 96, rng: seeded(seed), resampler, scale: [0.3, 1] });
        const a = await run(1);
        assert.equal(a.length, 3 * 96 * 96);
        assert.deepEqual(await run(1), a);
        assert.notDeepEqual(await run(2), a);
      });

      test('full-image crop without flip equals a plain resize; flip mirrors it', async () => {
        // Square 64×64, scale [1, 1], ratio [1, 1]: the only possible box is the whole image.
        const px = raw(64, 64, (x, y) => [x * 4, y * 4, 128]);
        const img = await encode(px, 64, 64).png().toBuffer();
        const opts = { size: 32, resampler, scale: [1, 1] as [number, number], ratio: [1, 1] as [number, number] };
        const plain = await augmentClip(img, { ...opts, rng: replay([0.5, 0.5, 0, 0, 0.9]) }); // 0.9: no flip
        assert.deepEqual(plain, await preprocessClip(img, { size: 32, resampler }));
        const flipped = await augmentClip(img, { ...opts, rng: replay([0.5, 0.5, 0, 0, 0.1]) }); // 0.1: flip
        for (const [x, y] of [[0, 0], [5, 7], [31, 16]] as const) {
          assert.deepEqual(at(flipped, 32, x, y), at(plain, 32, 31 - x, y));
        }
        assert.deepEqual(await augmentClip(img, { ...opts, flip: false, rng: replay([0.5, 0.5, 0, 0, 0.1]) }), plain);
      });
    });
  }

  // Throughput, on demand only (CLIPKIT_IMAGE_BENCH=1): 256 JPEGs of 32×32 and of 500×375.
  test('preprocessBatch throughput', { skip: !process.env.CLIPKIT_IMAGE_BENCH }, async (t) => {
    for (const [w, h] of [[32, 32], [500, 375]] as const) {
      const jpegs = await Promise.all(
        Array.from({ length: 256 }, (_, i) =>
          encode(raw(w, h, (x, y) => [(x * 255) / w + i, (y * 255) / h, ((x ^ y) * 3 + i) & 255]), w, h).jpeg({ quality: 90 }).toBuffer(),
        ),
      );
      for (const resampler of ['pil', 'sharp'] as const) {
        for (const parallel of [1, 4]) {
          await preprocessBatch(jpegs.slice(0, 16), { resampler, parallel }); // warm up
          const start = performance.now();
          await preprocessBatch(jpegs, { resampler, parallel });
          const secs = (performance.now() - start) / 1000;
          t.diagnostic(`${w}x${h} resampler=${resampler} parallel=${parallel}: ${(256 / secs).toFixed(0)} images/s`);
        }
      }
    }
  });
});
