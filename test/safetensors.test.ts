import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import {
  SafetensorsError, SafetensorsFile, bf16ToF32, bytesToTypedArray, f16ToF32, f32ToBf16, f32ToF16,
  writeSafetensors, type StDType, type TensorToWrite,
} from '../src/checkpoint/safetensors.js';

const dir = await mkdtemp(join(tmpdir(), 'clipkit-safetensors-'));
after(() => rm(dir, { recursive: true, force: true }));
let counter = 0;
const tmpPath = (stem = 't') => join(dir, `${stem}-${counter++}.safetensors`);
const bytesOf = (a: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** A file from a literal header (string or object) and data bytes; `len` overrides the length prefix. */
function rawFile(header: string | object, data: Uint8Array = new Uint8Array(0), len?: bigint): Buffer {
  const h = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(len ?? BigInt(h.length));
  return Buffer.concat([prefix, h, data]);
}

async function expectOpenError(bytes: Uint8Array, pattern: RegExp): Promise<void> {
  const p = tmpPath('bad');
  await writeFile(p, bytes);
  await assert.rejects(SafetensorsFile.open(p), (e: Error) => {
    assert.ok(e instanceof SafetensorsError, `not a SafetensorsError: ${e}`);
    assert.ok(e.message.includes(p), `message does not name the file: ${e.message}`);
    assert.match(e.message, pattern);
    return true;
  });
}

// ---- conversions ----
const f16Ref = (h: number): number => { // independent decoding straight from the IEEE definition
  const s = h >> 15 ? -1 : 1, e = (h >> 10) & 31, m = h & 1023;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (e === 0 ? (m / 1024) * 2 ** -14 : (1 + m / 1024) * 2 ** (e - 15));
};

test('F16 -> F32 is exact for known bit patterns and all 65536 codes', () => {
  const known: [number, number][] = [
    [0x0000, 0], [0x8000, -0], [0x3c00, 1], [0xc000, -2], [0x3555, 0.333251953125], [0x7bff, 65504],
    [0x0400, 2 ** -14], [0x0001, 2 ** -24], [0x03ff, 1023 * 2 ** -24], [0x8001, -(2 ** -24)],
    [0x7c00, Infinity], [0xfc00, -Infinity], [0x7e00, NaN], [0x7c01, NaN], [0xfe00, NaN],
  ];
  const out = f16ToF32(Uint16Array.from(known.map(([h]) => h)));
  known.forEach(([h, v], i) => assert.ok(Object.is(out[i], v), `0x${h.toString(16)} -> ${out[i]}, want ${v}`));
  const all = f16ToF32(Uint16Array.from({ length: 65536 }, (_, i) => i));
  for (let h = 0; h < 65536; h++) assert.ok(Object.is(all[h], f16Ref(h)), `0x${h.toString(16)}`);
  // NaN payloads and signs survive bit-exactly
  assert.equal(new Uint32Array(f16ToF32(Uint16Array.of(0xfc01)).buffer)[0], 0xff802000);
});

test('BF16 -> F32 is exact for known bit patterns', () => {
  const known: [number, number][] = [
    [0x0000, 0], [0x8000, -0], [0x3f80, 1], [0xc000, -2], [0x4049, 3.140625], [0x0001, 2 ** -133],
    [0x0080, 2 ** -126], [0x7f7f, 3.3895313892515355e38], [0x7f80, Infinity], [0xff80, -Infinity], [0x7fc0, NaN],
  ];
  const out = bf16ToF32(Uint16Array.from(known.map(([h]) => h)));
  known.forEach(([h, v], i) => assert.ok(Object.is(out[i], v), `0x${h.toString(16)} -> ${out[i]}, want ${v}`));
});

test('F32 -> F16/BF16 round to nearest even; round trips are identities', () => {
  const f16 = (xs: number[]) => [...f32ToF16(Float32Array.from(xs))];
  assert.deepEqual(f16([1, -0, 0, 65504, 65519, 65520, 1e6, -1e6, Infinity, -Infinity]),
    [0x3c00, 0x8000, 0, 0x7bff, 0x7bff, 0x7c00, 0x7c00, 0xfc00, 0x7c00, 0xfc00]);
  assert.deepEqual(f16([1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -11 + 2 ** -20]), [0x3c00, 0x3c02, 0x3c01]); // ties to even
  assert.deepEqual(f16([2 ** -24, 2 ** -25, 2 ** -25 * 1.0001, 3 * 2 ** -25, 1023.5 * 2 ** -24, 1e-10, -(2 ** -26)]),
    [0x0001, 0x0000, 0x0001, 0x0002, 0x0400, 0x0000, 0x8000]); // subnormals
  assert.equal(f16([NaN])[0]! & 0x7e00, 0x7e00);
  const bf = (xs: number[]) => [...f32ToBf16(Float32Array.from(xs))];
  assert.deepEqual(bf([1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, 3.4028234663852886e38, -0, 2 ** -133]),
    [0x3f80, 0x3f80, 0x3f82, 0x3f81, 0x7f80, 0x8000, 0x0001]);
  assert.equal(bf([NaN])[0]! & 0x7fc0, 0x7fc0);

  const codes = Uint16Array.from({ length: 65536 }, (_, i) => i);
  const back16 = f32ToF16(f16ToF32(codes)), back16b = f32ToBf16(bf16ToF32(codes));
  for (let h = 0; h < 65536; h++) {
    if (Number.isNaN(f16Ref(h))) assert.ok(Number.isNaN(f16Ref(back16[h]!)));
    else assert.equal(back16[h], h, `f16 0x${h.toString(16)}`);
    const isNaNbf = (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;
    if (!isNaNbf) assert.equal(back16b[h], h, `bf16 0x${h.toString(16)}`);
  }
  // random values: the chosen F16 is never farther than its neighbours (nearest rounding)
  const xs = Float32Array.from({ length: 20000 }, () => (Math.random() - 0.5) * 2 ** (Math.random() * 40 - 26));
  const hs = f32ToF16(xs);
  xs.forEach((x, i) => {
    const h = hs[i]!, d = Math.abs(f16Ref(h) - x);
    for (const nb of [h - 1, h + 1]) if ((nb & 0x7fff) < 0x7c00 && (nb >> 15) === (h >> 15)) assert.ok(d <= Math.abs(f16Ref(nb) - x), `x=${x}`);
  });
});

test('bytesToTypedArray views aligned bytes without copying and copies unaligned ones', () => {
  const src = Float64Array.of(1.5, -2.25);
  const aligned = bytesOf(src);
  const v = bytesToTypedArray(new Uint8Array(aligned.buffer, aligned.byteOffset, 16), 'F64');
  assert.equal(v.buffer, src.buffer);
  const shifted = new Uint8Array(17);
  shifted.set(aligned, 1);
  const u = bytesToTypedArray(shifted.subarray(1), 'F64');
  assert.deepEqual(u, src);
  assert.throws(() => bytesToTypedArray(new Uint8Array(3), 'F32'), /not a multiple/);
});

// ---- round trips ----
test('round trip of every dtype, with conversions and metadata', async () => {
  const p = tmpPath();
  const tensors: TensorToWrite[] = [
    { name: 'f64', shape: [2, 3], data: Float64Array.of(1.5, -2, Math.PI, 1e300, -0, Infinity) },
    { name: 'f32', shape: [4], data: Float32Array.of(1, -2.5, 3.25, NaN) },
    { name: 'f16', dtype: 'F16', shape: [3], data: Uint16Array.of(0x3c00, 0xc000, 0x7bff) },
    { name: 'f16_from_f32', dtype: 'F16', shape: [2, 2], data: Float32Array.of(0.5, -1, 65504, 1 / 3) },
    { name: 'bf16', dtype: 'BF16', shape: [2], data: Uint16Array.of(0x3f80, 0x4049) },
    { name: 'bf16_from_f32', dtype: 'BF16', shape: [3], data: Float32Array.of(1, -2, 3.140625) },
    { name: 'f64_from_f32', dtype: 'F64', shape: [1], data: Float32Array.of(0.1) },
    { name: 'f32_from_f64', dtype: 'F32', shape: [1], data: Float64Array.of(0.1) },
    { name: 'i64', shape: [3], data: BigInt64Array.of(-(2n ** 63n), 0n, 2n ** 63n - 1n) },
    { name: 'i32', shape: [3], data: Int32Array.of(-(2 ** 31), 7, 2 ** 31 - 1) },
    { name: 'i16', shape: [2], data: Int16Array.of(-32768, 32767) },
    { name: 'i8', shape: [2], data: Int8Array.of(-128, 127) },
    { name: 'u8', shape: [2], data: Uint8Array.of(0, 255) },
    { name: 'bool', dtype: 'BOOL', shape: [3], data: Uint8Array.of(1, 0, 1) },
    { name: 'u16', shape: [1], data: Uint16Array.of(65535) },
    { name: 'u32', shape: [1], data: Uint32Array.of(2 ** 32 - 1) },
    { name: 'u64', shape: [1], data: BigUint64Array.of(2n ** 64n - 1n) },
    { name: 'f8', dtype: 'F8_E4M3', shape: [2], data: Uint8Array.of(0x38, 0xb8) },
    { name: 'scalar', shape: [], data: Float32Array.of(42) },
    { name: 'empty', shape: [0, 3], data: new Float32Array(0) },
  ];
  await writeSafetensors(p, tensors, { format: 'pt', note: 'ünïcødé' });
  const f = await SafetensorsFile.open(p);
  try {
    assert.deepEqual(f.metadata, { format: 'pt', note: 'ünïcødé' });
    assert.deepEqual(new Set(f.names()), new Set(tensors.map((t) => t.name)));
    const expectDtype: Record<string, StDType> = { f64: 'F64', u8: 'U8', u64: 'U64', i16: 'I16', f16_from_f32: 'F16' };
    for (const [n, d] of Object.entries(expectDtype)) assert.equal(f.info(n).dtype, d);
    for (const t of tensors) {
      const info = f.info(t.name);
      assert.deepEqual(info.shape, t.shape);
      const raw = await f.readRaw(t.name);
      if (!t.name.includes('_from_')) assert.deepEqual(raw, bytesOf(t.data), t.name); // stored verbatim
    }
    assert.deepEqual(await f.readAs('f64', 'float64'), tensors[0]!.data);
    assert.deepEqual(await f.readFloat32('f32'), tensors[1]!.data);
    assert.deepEqual(await f.readFloat32('f16'), Float32Array.of(1, -2, 65504));
    assert.deepEqual(await f.readFloat32('f16_from_f32'), Float32Array.of(0.5, -1, 65504, 0.333251953125));
    assert.deepEqual(await f.readFloat32('bf16'), Float32Array.of(1, 3.140625));
    assert.deepEqual(await f.readAs('bf16_from_f32', 'float64'), Float64Array.of(1, -2, 3.140625));
    assert.deepEqual(await f.readAs('f64_from_f32', 'float64'), Float64Array.of(Math.fround(0.1)));
    assert.deepEqual(await f.readFloat32('f32_from_f64'), Float32Array.of(0.1));
    assert.deepEqual(await f.readInt64('i64'), tensors[8]!.data);
    assert.deepEqual(await f.readAs('i32', 'int32'), tensors[9]!.data);
    assert.deepEqual(await f.readInt64('i32'), BigInt64Array.of(-(2n ** 31n), 7n, 2n ** 31n - 1n));
    assert.deepEqual(await f.readFloat32('i16'), Float32Array.of(-32768, 32767));
    assert.deepEqual(await f.readAs('i8', 'int32'), Int32Array.of(-128, 127));
    assert.deepEqual(await f.readAs('bool', 'int32'), Int32Array.of(1, 0, 1));
    assert.deepEqual(bytesToTypedArray(await f.readRaw('bool'), 'BOOL'), Uint8Array.of(1, 0, 1));
    assert.deepEqual(await f.readAs('u32', 'float64'), Float64Array.of(2 ** 32 - 1));
    assert.deepEqual(bytesToTypedArray(await f.readRaw('u64'), 'U64'), tensors[16]!.data);
    assert.deepEqual(await f.readFloat32('scalar'), Float32Array.of(42));
    assert.deepEqual(await f.readFloat32('empty'), new Float32Array(0));
    // conversions that would lose information are refused, naming the file and tensor
    await assert.rejects(f.readInt64('f32'), /"f32" as int64: refusing to truncate/);
    await assert.rejects(f.readAs('u32', 'int32'), /out of range/);
    await assert.rejects(f.readInt64('u64'), /out of range/);
    await assert.rejects(f.readFloat32('f8'), /F8_E4M3 tensor "f8".*FP8 conversion is not supported/);
    assert.deepEqual(await f.readRaw('f8'), Buffer.of(0x38, 0xb8));
    assert.throws(() => f.info('nope'), /no tensor named "nope"/);
    // a same-dtype read is a view over a buffer of exactly the tensor's size
    assert.equal((await f.readFloat32('f32')).buffer.byteLength, 16);
  } finally {
    await f.close();
  }
  await assert.rejects(f.readRaw('f32'), /file is closed/);
});

test('writer accepts a Record and a Map', async () => {
  const a = tmpPath(), b = tmpPath();
  await writeSafetensors(a, { w: { shape: [2], data: Float32Array.of(1, 2) } });
  await writeSafetensors(b, new Map([['w', { shape: [2], data: Float32Array.of(1, 2) }]]));
  assert.deepEqual(await readFile(a), await readFile(b));
  const f = await SafetensorsFile.open(a);
  assert.deepEqual(await f.readFloat32('w'), Float32Array.of(1, 2));
  assert.deepEqual(f.metadata, {});
  await f.close();
});

test('header layout: length prefix, space padding, alignment-then-name order, raw LE data', async () => {
  const p = tmpPath();
  await writeSafetensors(p, [
    { name: 'c', shape: [3], data: Uint8Array.of(1, 2, 3) },
    { name: 'b', shape: [2], data: Float32Array.of(1, -2) },
    { name: 'd', dtype: 'F16', shape: [1], data: Float32Array.of(1) },
    { name: 'a', shape: [1], data: BigInt64Array.of(-2n) },
    { name: '10', shape: [1], data: Float32Array.of(3) },
  ], { format: 'pt' });
  const bytes = await readFile(p);
  const n = Number(bytes.readBigUInt64LE(0));
  assert.equal(n % 8, 0);
  const text = bytes.subarray(8, 8 + n).toString('utf8');
  assert.match(text, /^\{.*\} *$/s);
  assert.ok(text.length - text.trimEnd().length < 8);
  assert.equal(text.trimEnd(), '{"__metadata__":{"format":"pt"},'
    + '"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},"10":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},'
    + '"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]},"d":{"dtype":"F16","shape":[1],"data_offsets":[20,22]},'
    + '"c":{"dtype":"U8","shape":[3],"data_offsets":[22,25]}}');
  const data = bytes.subarray(8 + n);
  assert.equal(data.length, 25);
  assert.deepEqual([...data], [
    0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // a: -2 as i64 LE
    0x00, 0x00, 0x40, 0x40, // 10: 3.0f
    0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0, // b: 1.0f, -2.0f
    0x00, 0x3c, // d: 1.0 as f16
    1, 2, 3, // c
  ]);
  // every tensor starts at a multiple of its element size in the file
  const f = await SafetensorsFile.open(p);
  for (const t of f.tensors.values()) assert.equal(t.begin % ({ I64: 8, F32: 4, F16: 2, U8: 1 } as Record<string, number>)[t.dtype]!, 0);
  await f.close();
});

test('valid edge cases open: empty header, padding, zero-sized tensors sharing an offset', async () => {
  const p = tmpPath();
  await writeFile(p, rawFile('{}      '));
  const f = await SafetensorsFile.open(p);
  assert.deepEqual(f.names(), []);
  await f.close();
  await writeFile(p, rawFile({
    z1: { dtype: 'F32', shape: [0], data_offsets: [4, 4] }, a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
    z2: { dtype: 'I64', shape: [2, 0], data_offsets: [4, 4] },
  }, bytesOf(Float32Array.of(5))));
  const g = await SafetensorsFile.open(p);
  assert.deepEqual(await g.readFloat32('a'), Float32Array.of(5));
  assert.deepEqual(await g.readInt64('z2'), new BigInt64Array(0));
  await g.close();
});

// ---- malformed files ----
test('malformed files are rejected with errors naming the file and the problem', async () => {
  const f32 = (shape: number[], offs: unknown) => ({ dtype: 'F32', shape, data_offsets: offs });
  const z8 = new Uint8Array(8);
  const cases: [Uint8Array, RegExp][] = [
    [Buffer.of(1, 2, 3), /3 bytes, shorter than the 8-byte header length/],
    [rawFile('{}', z8, 2n ** 40n), /header length 1099511627776 exceeds the 100 MB limit/],
    [rawFile('{}', z8, 2n ** 64n - 1n), /exceeds the 100 MB limit/],
    [rawFile('{}', z8, 100n), /header length 100 exceeds the 10 bytes that follow it/],
    [rawFile(''), /not valid JSON/],
    [rawFile('{"a":'), /not valid JSON/],
    [rawFile('[]'), /must be a JSON object/],
    [rawFile('null'), /must be a JSON object/],
    [rawFile('42'), /must be a JSON object/],
    [rawFile({ a: 5 }), /tensor "a": entry must be an object/],
    [rawFile({ a: { shape: [1], data_offsets: [0, 4] } }, z8.subarray(4)), /tensor "a": missing or non-string "dtype"/],
    [rawFile({ a: { dtype: 4, shape: [1], data_offsets: [0, 4] } }, z8.subarray(4)), /missing or non-string "dtype"/],
    [rawFile({ a: { dtype: 'F128', shape: [1], data_offsets: [0, 4] } }), /tensor "a": unknown dtype "F128"/],
    [rawFile({ a: { dtype: 'constructor', shape: [1], data_offsets: [0, 4] } }), /unknown dtype "constructor"/],
    [rawFile({ a: { dtype: 'F32', data_offsets: [0, 4] } }), /tensor "a": missing or non-array "shape"/],
    [rawFile({ a: f32('4' as unknown as number[], [0, 4]) }), /non-array "shape"/],
    [rawFile({ a: f32([-1], [0, 4]) }), /shape \[-1\] must contain non-negative integers/],
    [rawFile({ a: f32([1.5], [0, 4]) }), /must contain non-negative integers/],
    [rawFile({ a: f32(['2'] as unknown as number[], [0, 8]) }), /must contain non-negative integers/],
    [rawFile({ a: { dtype: 'F32', shape: [1] } }), /tensor "a": "data_offsets" must be \[begin, end\]/],
    [rawFile({ a: f32([1], [4]) }), /"data_offsets" must be/],
    [rawFile({ a: f32([1], [-4, 0]) }), /"data_offsets" must be .* got \[-4,0\]/],
    [rawFile({ a: f32([1], [0, '4']) }), /"data_offsets" must be/],
    [rawFile({ a: f32([1], [0, 4, 8]) }), /"data_offsets" must be/],
    [rawFile({ a: f32([0], [4, 0]) }, z8), /end 0 is before begin 4/],
    [rawFile({ a: f32([2], [0, 4]) }, z8.subarray(4)), /F32\[2\] needs 8 bytes but data_offsets \[0, 4\] span 4/],
    [rawFile({ a: { dtype: 'F16', shape: [3], data_offsets: [0, 4] } }), /needs 6 bytes/],
    [rawFile({ a: f32([2], [0, 8]), b: f32([1], [4, 8]) }, z8), /tensors "a" and "b" overlap at data offset 4/],
    [rawFile({ a: f32([1], [0, 4]), b: f32([1], [8, 12]) }, new Uint8Array(12)), /hole of 4 bytes at data offset 4 before tensor "b"/],
    [rawFile({ a: f32([1], [4, 8]) }, z8), /hole of 4 bytes at data offset 0/],
    [rawFile({ a: f32([1], [0, 4]) }, z8), /4 trailing bytes after the last tensor/],
    [rawFile({ a: f32([2], [0, 8]) }, z8.subarray(4)), /truncated: tensor "a" ends at data offset 8 but the data section has only 4 bytes/],
    [rawFile({ a: f32([1], [0, 4]), b: f32([1e6], [4, 4000004]) }, z8), /truncated: tensor "b"/],
    [rawFile({ __metadata__: { a: 1 } }), /"__metadata__" must be an object of string values/],
    [rawFile({ __metadata__: ['x'] }), /"__metadata__" must be/],
  ];
  for (const [bytes, pattern] of cases) await expectOpenError(bytes, pattern);
  // invalid UTF-8 proper (a lone 0xff byte inside a JSON string)
  const bad = Buffer.concat([Buffer.from('{"a'), Buffer.of(0xff), Buffer.from('":1}')]);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(bad.length));
  await expectOpenError(Buffer.concat([prefix, bad]), /header is not valid UTF-8/);
});

// ---- writing: validation and atomicity ----
test('writer rejects bad input before touching the target', async () => {
  const p = tmpPath();
  const rejects = (tensors: unknown, pattern: RegExp, metadata?: unknown) =>
    assert.rejects(writeSafetensors(p, tensors as TensorToWrite[], metadata as Record<string, string>), (e: Error) => {
      assert.ok(e instanceof SafetensorsError && e.message.includes(p));
      assert.match(e.message, pattern);
      return true;
    });
  const ok = { name: 'a', shape: [2], data: Float32Array.of(1, 2) };
  await rejects([ok, { ...ok }], /duplicate tensor name "a"/);
  await rejects([{ name: 'a', shape: [3], data: Float32Array.of(1, 2) }], /shape \[3\] has 3 elements but data has 2/);
  await rejects([{ name: 'a', shape: [-2], data: Float32Array.of(1, 2) }], /must be an array of non-negative integers/);
  await rejects([{ name: 'a', shape: [2], data: [1, 2] }], /unsupported data type object/);
  await rejects([{ name: 'a', shape: [2], data: Uint8ClampedArray.of(1, 2) }], /unsupported data type Uint8ClampedArray/);
  await rejects([{ name: 'a', shape: [2], data: new DataView(new ArrayBuffer(8)) }], /unsupported data type DataView/);
  await rejects([{ name: 'a', dtype: 'F16', shape: [2], data: Float64Array.of(1, 2) }], /a Float64Array cannot be stored as F16/);
  await rejects([{ name: 'a', dtype: 'I64', shape: [2], data: Int32Array.of(1, 2) }], /cannot be stored as I64/);
  await rejects([{ name: 'a', dtype: 'BOOL', shape: [2], data: Uint8Array.of(1, 2) }], /BOOL data must be 0 or 1/);
  await rejects([{ name: '__metadata__', shape: [2], data: Float32Array.of(1, 2) }], /invalid tensor name/);
  await rejects([ok], /metadata must be an object of string values/, { n: 1 });
  await assert.rejects(readFile(p), { code: 'ENOENT' });
});

test('atomic write: a failing second write leaves the original intact and no temp file', async () => {
  const sub = join(dir, 'atomic');
  await mkdir(sub);
  const p = join(sub, 'model.safetensors');
  await writeSafetensors(p, [{ name: 'w', shape: [3], data: Float32Array.of(1, 2, 3) }]);
  const original = await readFile(p);
  function* halfway(): Generator<TensorToWrite> {
    yield { name: 'x', shape: [1], data: Float32Array.of(9) };
    throw new Error('producer failed');
  }
  await assert.rejects(writeSafetensors(p, halfway()), /producer failed/);
  assert.deepEqual(await readFile(p), original);
  assert.deepEqual(await readdir(sub), ['model.safetensors']);

  // failure after the temp file is written (rename onto a directory): temp file is removed
  const target = join(sub, 'is-a-dir');
  await mkdir(join(target, 'child'), { recursive: true });
  await assert.rejects(writeSafetensors(target, [{ name: 'w', shape: [1], data: Float32Array.of(1) }]));
  assert.deepEqual((await readdir(sub)).sort(), ['is-a-dir', 'model.safetensors']);

  // and a successful overwrite replaces the content completely
  await writeSafetensors(p, [{ name: 'v', shape: [1], data: Int8Array.of(-1) }]);
  const f = await SafetensorsFile.open(p);
  assert.deepEqual(f.names(), ['v']);
  await f.close();
  assert.deepEqual(await readdir(sub).then((d) => d.sort()), ['is-a-dir', 'model.safetensors']);
});

// ---- streaming ----
function getGc(): () => void {
  const existing = (globalThis as { gc?: () => void }).gc;
  if (existing) return existing;
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}
/**
 * Collect garbage until arrayBuffers drops to `floor` (V8 frees ArrayBuffer backing stores in a
 * concurrent sweep, so one synchronous gc() is not always reflected at once). Gives up after 20
 * rounds, so memory that is really retained still shows up in the next measurement.
 */
async function settle(gc: () => void, floor = 0): Promise<void> {
  for (let i = 0; i < 20; i++) {
    gc();
    await new Promise((r) => setImmediate(r));
    if (process.memoryUsage().arrayBuffers <= floor) return;
  }
}

test('a ~200 MB file is read tensor by tensor, holding one tensor at a time', async (t) => {
  const gc = getGc();
  const p = tmpPath('large');
  const sizes = [12_000_000, 6_000_000, 6_000_000, 6_000_000, 6_000_000, 6_000_000, 6_000_000, 2_000_000];
  const value = (k: number, i: number) => k * 1000 + (i % 1000); // exact in f32
  {
    const tensors = sizes.map((n, k) => {
      const data = new Float32Array(n);
      for (let i = 0; i < n; i++) data[i] = value(k, i);
      return { name: `layer${k}`, shape: [n / 1000, 1000], data };
    });
    await writeSafetensors(p, tensors);
  }
  const fileSize = (await stat(p)).size;
  await settle(gc);
  const largest = Math.max(...sizes) * 4;
  const base = process.memoryUsage();
  let peakBuffers = 0, peakRss = 0;
  const f = await SafetensorsFile.open(p);
  for (const name of f.names()) {
    let arr: Float32Array | undefined = await f.readFloat32(name);
    const m = process.memoryUsage();
    peakBuffers = Math.max(peakBuffers, m.arrayBuffers - base.arrayBuffers);
    peakRss = Math.max(peakRss, m.rss - base.rss);
    const k = Number(name.slice(5));
    assert.equal(arr.length, sizes[k]);
    assert.equal(arr.buffer.byteLength, sizes[k]! * 4); // a view over exactly this tensor's bytes
    for (let i = 0; i < arr.length; i += 997) assert.equal(arr[i], value(k, i));
    assert.equal(arr[arr.length - 1], value(k, arr.length - 1));
    arr = undefined;
    await settle(gc, base.arrayBuffers + 2 ** 20);
  }
  await f.close();
  const mb = (x: number) => `${(x / 2 ** 20).toFixed(1)} MB`;
  t.diagnostic(`file ${mb(fileSize)}, largest tensor ${mb(largest)}, peak arrayBuffers growth ${mb(peakBuffers)}, peak rss growth ${mb(peakRss)}`);
  // Reading the whole file (200 MB) or keeping a second copy of a tensor (2 x 46 MB) would fail this.
  assert.ok(peakBuffers < 1.3 * largest + 8 * 2 ** 20, `arrayBuffers grew ${mb(peakBuffers)}`);
  assert.ok(peakRss < 0.75 * fileSize, `rss grew ${mb(peakRss)}`);
});
