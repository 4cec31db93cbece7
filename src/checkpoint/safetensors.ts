/**
 * safetensors reader and writer.
 *
 * Layout: u64 little-endian header length N | N bytes of UTF-8 JSON | data buffer.
 * The JSON maps tensor names to {dtype, shape, data_offsets: [begin, end]} (offsets relative to
 * the first data byte) plus an optional "__metadata__": {string: string}.
 *
 * Checkpoints are large (CLIP ViT-L is ~600 MB), so reading is lazy: `open` reads and validates
 * only the header through a FileHandle, and each tensor is fetched with a positional read into a
 * buffer of exactly its size, which typed-array views then share (no second copy). Writing goes
 * tensor by tensor into a temp file next to the target, fsyncs and renames it over the target,
 * so a crash mid-write never leaves a half-written file at the destination.
 */
import { open as openFile, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { endianness } from 'node:os';

export type StDType =
  | 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8'
  | 'U64' | 'U32' | 'U16' | 'U8' | 'BOOL' | 'F8_E4M3' | 'F8_E5M2';

export type TypedArray =
  | Float64Array | Float32Array | BigInt64Array | BigUint64Array | Int32Array | Uint32Array
  | Int16Array | Uint16Array | Int8Array | Uint8Array;

/** Bytes per element. F16/BF16 are exposed as raw Uint16Array bits, F8 as raw Uint8Array. */
export const DTYPE_SIZE: Readonly<Record<StDType, number>> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1,
  U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1, F8_E4M3: 1, F8_E5M2: 1,
};
type Ctor = new (buffer: ArrayBufferLike, byteOffset: number, length: number) => TypedArray;
const NATIVE: Record<StDType, Ctor> = {
  F64: Float64Array, F32: Float32Array, F16: Uint16Array, BF16: Uint16Array, I64: BigInt64Array,
  I32: Int32Array, I16: Int16Array, I8: Int8Array, U64: BigUint64Array, U32: Uint32Array,
  U16: Uint16Array, U8: Uint8Array, BOOL: Uint8Array, F8_E4M3: Uint8Array, F8_E5M2: Uint8Array,
};
const INTEGER = new Set<StDType>(['I64', 'I32', 'I16', 'I8', 'U64', 'U32', 'U16', 'U8', 'BOOL']);
/** Same limit as the reference implementation: a bigger header means a corrupt or foreign file. */
const MAX_HEADER = 100_000_000;
const BIG_ENDIAN = endianness() === 'BE';
const I64_MAX = 2n ** 63n - 1n;

export class SafetensorsError extends Error { override name = 'SafetensorsError'; }

export interface TensorInfo { name: string; dtype: StDType; shape: number[]; begin: number; end: number }

/** View little-endian bytes as the dtype's native typed array; copies only if unaligned (or on a BE host). */
export function bytesToTypedArray(bytes: Uint8Array, dtype: StDType): TypedArray {
  const size = DTYPE_SIZE[dtype];
  if (bytes.byteLength % size) throw new SafetensorsError(`${bytes.byteLength} bytes is not a multiple of ${dtype} size ${size}`);
  let b = bytes;
  // A typed-array view must start at a multiple of its element size; file offsets need not.
  if (b.byteOffset % size !== 0 || (BIG_ENDIAN && size > 1)) b = swapIfBigEndian(new Uint8Array(b), size);
  return new NATIVE[dtype](b.buffer, b.byteOffset, b.byteLength / size);
}
function swapIfBigEndian(b: Uint8Array, size: number): Uint8Array {
  if (!BIG_ENDIAN || size === 1) return b;
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  if (size === 2) buf.swap16(); else if (size === 4) buf.swap32(); else buf.swap64();
  return b;
}

// ---- half-precision conversions (bit-exact; integer copies so NaN payloads survive) ----
let f16Table: Uint32Array | undefined;
/** F16 bits -> F32 bits for all 65536 patterns; computed once (256 KB) and reused. */
function f16Bits(): Uint32Array {
  if (f16Table) return f16Table;
  const f = new Float32Array(65536), bits = new Uint32Array(f.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp === 0x1f) bits[h] = ((h & 0x8000) << 16) | 0x7f800000 | (mant << 13); // inf/NaN
    else f[h] = sign * (exp === 0 ? mant * 2 ** -24 : (1024 + mant) * 2 ** (exp - 25)); // all exact in f32
  }
  return (f16Table = bits);
}
export function f16ToF32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length), o = new Uint32Array(out.buffer), t = f16Bits();
  for (let i = 0; i < src.length; i++) o[i] = t[src[i]!]!;
  return out;
}
export function bf16ToF32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length), o = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) o[i] = src[i]! << 16; // BF16 is the top half of an F32
  return out;
}
/** F32 -> F16 bits, round to nearest even; overflow -> inf, NaN stays (quiet) NaN. */
export function f32ToF16(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length), s = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < s.length; i++) {
    const b = s[i]!, sign = (b >>> 16) & 0x8000, exp = (b >>> 23) & 0xff, mant = b & 0x7fffff;
    if (exp === 0xff) { out[i] = sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0); continue; }
    const e = exp - 112; // rebias 127 -> 15
    if (e >= 0x1f) { out[i] = sign | 0x7c00; continue; }
    if (e >= 1) { // normal: drop 13 mantissa bits; a carry rolls into the exponent (and up to inf)
      const rem = mant & 0x1fff, h = sign | (e << 10) | (mant >>> 13);
      out[i] = rem > 0x1000 || (rem === 0x1000 && h & 1) ? h + 1 : h;
      continue;
    }
    const shift = 14 - e; // subnormal: value = (1.mant) * 2^(e-15) = full >> shift units of 2^-24
    if (shift > 24) { out[i] = sign; continue; } // below half the smallest subnormal -> ±0
    const full = mant | 0x800000, q = full >>> shift, rem = full & ((1 << shift) - 1), half = 1 << (shift - 1);
    out[i] = sign | (rem > half || (rem === half && q & 1) ? q + 1 : q);
  }
  return out;
}
/** F32 -> BF16 bits, round to nearest even. */
export function f32ToBf16(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length), s = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < s.length; i++) {
    const b = s[i]!;
    out[i] = (b & 0x7fffffff) > 0x7f800000 ? (b >>> 16) | 0x40 : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
  return out;
}

// ---- reading ----
async function readExact(fh: FileHandle, position: number, length: number, path: string): Promise<Buffer> {
  // allocUnsafeSlow: an unpooled ArrayBuffer at offset 0, so every typed-array view over it is aligned.
  const buf = Buffer.allocUnsafeSlow(length);
  for (let off = 0; off < length;) {
    const { bytesRead } = await fh.read(buf, off, Math.min(length - off, 1 << 30), position + off);
    if (bytesRead === 0) throw new SafetensorsError(`${path}: unexpected end of file at byte ${position + off} (file changed since open?)`);
    off += bytesRead;
  }
  return buf;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

/** Validate a parsed header against the data section length; returns tensors in data order. */
function validateHeader(json: unknown, dataStart: number, dataLen: number, fail: (m: string) => Error) {
  if (!isObject(json)) throw fail('header must be a JSON object');
  let metadata: Record<string, string> = {};
  const list: TensorInfo[] = [];
  for (const [name, e] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isObject(e) || !Object.values(e).every((v) => typeof v === 'string')) throw fail('"__metadata__" must be an object of string values');
      metadata = e as Record<string, string>;
      continue;
    }
    const at = `tensor "${name}"`;
    if (!isObject(e)) throw fail(`${at}: entry must be an object`);
    const { dtype, shape, data_offsets: offs } = e;
    if (typeof dtype !== 'string') throw fail(`${at}: missing or non-string "dtype"`);
    if (!Object.hasOwn(DTYPE_SIZE, dtype)) throw fail(`${at}: unknown dtype "${dtype}" (known: ${Object.keys(DTYPE_SIZE).join(', ')})`);
    if (!Array.isArray(shape)) throw fail(`${at}: missing or non-array "shape"`);
    if (!shape.every(isCount)) throw fail(`${at}: shape ${JSON.stringify(shape)} must contain non-negative integers`);
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every(isCount)) {
      throw fail(`${at}: "data_offsets" must be [begin, end] of non-negative integers, got ${JSON.stringify(offs)}`);
    }
    const [b, en] = offs as [number, number];
    if (en < b) throw fail(`${at}: data_offsets end ${en} is before begin ${b}`);
    const bytes = (shape as number[]).reduce((a, d) => a * d, DTYPE_SIZE[dtype as StDType]);
    if (bytes !== en - b) throw fail(`${at}: ${dtype}${JSON.stringify(shape)} needs ${bytes} bytes but data_offsets [${b}, ${en}] span ${en - b}`);
    list.push({ name, dtype: dtype as StDType, shape: shape as number[], begin: b, end: en });
  }
  // Like the reference implementation, the tensors must tile the data section exactly:
  // no overlaps (aliasing), no holes and no trailing bytes (hidden payloads, truncation).
  list.sort((x, y) => x.begin - y.begin || x.end - y.end);
  let cursor = 0, prev = '';
  for (const t of list) {
    if (t.begin < cursor) throw fail(`tensors "${prev}" and "${t.name}" overlap at data offset ${t.begin}`);
    if (t.begin > cursor) throw fail(`hole of ${t.begin - cursor} bytes at data offset ${cursor} before tensor "${t.name}" (offsets must tile the data section)`);
    cursor = t.end; prev = t.name;
  }
  if (cursor > dataLen) throw fail(`file is truncated: tensor "${prev}" ends at data offset ${cursor} but the data section has only ${dataLen} bytes`);
  if (cursor < dataLen) throw fail(`${dataLen - cursor} trailing bytes after the last tensor are not covered by any tensor`);
  const tensors = new Map<string, TensorInfo>();
  for (const t of list) tensors.set(t.name, { ...t, begin: dataStart + t.begin, end: dataStart + t.end });
  return { tensors, metadata };
}

type Target = { float32: Float32Array; float64: Float64Array; int64: BigInt64Array; int32: Int32Array };

/** An opened safetensors file. Tensors are read on demand; call close() when done. */
export class SafetensorsFile {
  private constructor(
    readonly path: string,
    private fh: FileHandle | null,
    /** In data order; begin/end are absolute file offsets. */
    readonly tensors: Map<string, TensorInfo>,
    readonly metadata: Record<string, string>,
  ) {}

  /** Reads and validates the header only; tensor data stays on disk until asked for. */
  static async open(path: string): Promise<SafetensorsFile> {
    const fail = (m: string) => new SafetensorsError(`${path}: ${m}`);
    const fh = await openFile(path, 'r');
    try {
      const size = (await fh.stat()).size;
      if (size < 8) throw fail(`file is ${size} bytes, shorter than the 8-byte header length`);
      const n64 = (await readExact(fh, 0, 8, path)).readBigUInt64LE(0);
      if (n64 > BigInt(MAX_HEADER)) throw fail(`header length ${n64} exceeds the 100 MB limit (corrupt or not a safetensors file)`);
      const n = Number(n64);
      if (n > size - 8) throw fail(`header length ${n} exceeds the ${size - 8} bytes that follow it`);
      let text: string;
      try { text = new TextDecoder('utf-8', { fatal: true }).decode(await readExact(fh, 8, n, path)); }
      catch { throw fail('header is not valid UTF-8'); }
      let json: unknown;
      try { json = JSON.parse(text); } catch (e) { throw fail(`header is not valid JSON (${(e as Error).message})`); }
      const { tensors, metadata } = validateHeader(json, 8 + n, size - 8 - n, fail);
      return new SafetensorsFile(path, fh, tensors, metadata);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  names(): string[] { return [...this.tensors.keys()]; }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new SafetensorsError(`${this.path}: no tensor named "${name}"`);
    return t;
  }

  /** The tensor's raw little-endian bytes, in a fresh buffer of exactly its size. */
  async readRaw(name: string): Promise<Buffer> {
    const t = this.info(name);
    if (!this.fh) throw new SafetensorsError(`${this.path}: file is closed`);
    return readExact(this.fh, t.begin, t.end - t.begin, this.path);
  }

  readFloat32(name: string): Promise<Float32Array> { return this.readAs(name, 'float32'); }
  readInt64(name: string): Promise<BigInt64Array> { return this.readAs(name, 'int64'); }

  /** Read and convert. Same-type reads are views over the read buffer (no copy). */
  async readAs<K extends keyof Target>(name: string, target: K): Promise<Target[K]> {
    const { dtype } = this.info(name);
    const fail = (why: string) => new SafetensorsError(`${this.path}: cannot read ${dtype} tensor "${name}" as ${target}: ${why}`);
    if (dtype === 'F8_E4M3' || dtype === 'F8_E5M2') throw fail('FP8 conversion is not supported (use readRaw)');
    if ((target === 'int64' || target === 'int32') && !INTEGER.has(dtype)) throw fail('refusing to truncate floating-point values');
    const v = bytesToTypedArray(await this.readRaw(name), dtype);
    let f: Float32Array | undefined; // half types decode to F32 first
    if (dtype === 'F16') f = f16ToF32(v as Uint16Array);
    else if (dtype === 'BF16') f = bf16ToF32(v as Uint16Array);
    const src = f ?? v;
    const Out = { float32: Float32Array, float64: Float64Array, int64: BigInt64Array, int32: Int32Array }[target];
    if (src instanceof Out) return src as Target[K];
    const out = new Out(src.length) as { [i: number]: number | bigint };
    for (let i = 0; i < src.length; i++) {
      const x = src[i]!;
      // Only U64 -> int64 and wide integers -> int32 can overflow; never wrap silently.
      if (target === 'int64' ? x > I64_MAX : target === 'int32' && Number(x) !== (Number(x) | 0)) {
        throw fail(`value ${x} at index ${i} is out of range`);
      }
      out[i] = target === 'int64' ? BigInt(x) : Number(x);
    }
    return out as Target[K];
  }

  async close(): Promise<void> {
    const fh = this.fh;
    this.fh = null; // idempotent; later reads fail with "file is closed"
    await fh?.close();
  }
}

// ---- writing ----
export interface TensorToWrite {
  name: string;
  /** Defaults to the array's natural dtype; a Float32Array may be stored as F16/BF16/F64. */
  dtype?: StDType;
  shape: readonly number[];
  data: TypedArray;
}
export type TensorsToWrite =
  | Iterable<TensorToWrite> | Map<string, Omit<TensorToWrite, 'name'>> | Record<string, Omit<TensorToWrite, 'name'>>;

/** Accepted array kinds -> storable dtypes; the first one is the default. */
const STORABLE: Record<string, StDType[]> = {
  Float64Array: ['F64', 'F32'], Float32Array: ['F32', 'F16', 'BF16', 'F64'], BigInt64Array: ['I64'],
  BigUint64Array: ['U64'], Int32Array: ['I32'], Uint32Array: ['U32'], Int16Array: ['I16'],
  Uint16Array: ['U16', 'F16', 'BF16'], Int8Array: ['I8'], Uint8Array: ['U8', 'BOOL', 'F8_E4M3', 'F8_E5M2'],
};

function* iterate(tensors: TensorsToWrite): Generator<TensorToWrite> {
  if (tensors instanceof Map) for (const [name, t] of tensors) yield { ...t, name };
  else if (typeof (tensors as Partial<Iterable<unknown>>)[Symbol.iterator] === 'function') yield* tensors as Iterable<TensorToWrite>;
  else for (const [name, t] of Object.entries(tensors)) yield { ...t, name };
}

interface Planned { name: string; kind: string; dtype: StDType; shape: number[]; data: TypedArray; bytes: number }

function plan(t: TensorToWrite, seen: Set<string>, fail: (m: string) => Error): Planned {
  const at = `tensor "${t.name}"`;
  if (typeof t.name !== 'string' || t.name === '__metadata__') throw fail(`invalid tensor name ${JSON.stringify(t.name)}`);
  if (seen.has(t.name)) throw fail(`duplicate tensor name "${t.name}"`);
  seen.add(t.name);
  const kind = ArrayBuffer.isView(t.data) ? (t.data as unknown as { [Symbol.toStringTag]: string })[Symbol.toStringTag] : typeof t.data;
  const storable = Object.hasOwn(STORABLE, kind) ? STORABLE[kind]! : undefined;
  if (!storable) throw fail(`${at}: unsupported data type ${kind} (expected one of ${Object.keys(STORABLE).join(', ')})`);
  const dtype = t.dtype ?? storable[0]!;
  if (!storable.includes(dtype)) throw fail(`${at}: a ${kind} cannot be stored as ${dtype} (allowed: ${storable.join(', ')})`);
  if (!Array.isArray(t.shape) || !t.shape.every(isCount)) throw fail(`${at}: shape ${JSON.stringify(t.shape)} must be an array of non-negative integers`);
  const numel = t.shape.reduce((a, d) => a * d, 1);
  if (numel !== t.data.length) throw fail(`${at}: shape ${JSON.stringify(t.shape)} has ${numel} elements but data has ${t.data.length}`);
  if (dtype === 'BOOL' && (t.data as Uint8Array).some((x) => x > 1)) throw fail(`${at}: BOOL data must be 0 or 1`);
  return { name: t.name, kind, dtype, shape: [...t.shape], data: t.data, bytes: numel * DTYPE_SIZE[dtype] };
}

/** The bytes to write for one tensor: a view when no conversion is needed, else one converted copy. */
function encode(p: Planned): Uint8Array {
  let a = p.data;
  // `kind` (the toStringTag), not instanceof, so arrays from other realms (vm contexts) work too.
  if (p.kind === 'Float32Array' && p.dtype !== 'F32') {
    const f = a as Float32Array;
    a = p.dtype === 'F16' ? f32ToF16(f) : p.dtype === 'BF16' ? f32ToBf16(f) : new Float64Array(f);
  } else if (p.kind === 'Float64Array' && p.dtype === 'F32') a = new Float32Array(a as Float64Array); // round to nearest even
  const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  // The file is little-endian; on a big-endian host swap a private copy, never the caller's array.
  return BIG_ENDIAN ? swapIfBigEndian(a === p.data ? new Uint8Array(bytes) : bytes, DTYPE_SIZE[p.dtype]) : bytes;
}

async function writeAll(fh: FileHandle, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.byteLength;) {
    const { bytesWritten } = await fh.write(bytes, off, Math.min(bytes.byteLength - off, 1 << 30));
    off += bytesWritten;
  }
}

/**
 * Write tensors atomically. Everything is validated before the disk is touched. Tensors are laid
 * out by element size (largest first) then name, as the reference library does: with the header
 * padded to a multiple of 8, every tensor then starts at a multiple of its own element size.
 */
export async function writeSafetensors(path: string, tensors: TensorsToWrite, metadata: Record<string, string> = {}): Promise<void> {
  const fail = (m: string) => new SafetensorsError(`${path}: ${m}`);
  if (!isObject(metadata) || !Object.values(metadata).every((v) => typeof v === 'string')) throw fail('metadata must be an object of string values');
  const seen = new Set<string>();
  const plans = [...iterate(tensors)].map((t) => plan(t, seen, fail));
  plans.sort((a, b) => DTYPE_SIZE[b.dtype] - DTYPE_SIZE[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  // Build the JSON by hand so key order follows data order (a JS object would hoist integer-like names).
  const parts = Object.keys(metadata).length ? [`"__metadata__":${JSON.stringify(metadata)}`] : [];
  let offset = 0;
  for (const p of plans) {
    parts.push(`${JSON.stringify(p.name)}:${JSON.stringify({ dtype: p.dtype, shape: p.shape, data_offsets: [offset, offset + p.bytes] })}`);
    offset += p.bytes;
  }
  const json = Buffer.from(`{${parts.join(',')}}`, 'utf8');
  const n = Math.ceil(json.length / 8) * 8;
  const header = Buffer.alloc(8 + n, 0x20); // pad with spaces, as the format allows
  header.writeBigUInt64LE(BigInt(n), 0);
  json.copy(header, 8);

  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const fh = await openFile(tmp, 'wx');
  let done = false;
  try {
    await writeAll(fh, header);
    for (const p of plans) await writeAll(fh, encode(p)); // one tensor (at most one converted copy) at a time
    await fh.sync(); // data must be durable before the rename makes it visible
    await fh.close();
    await rename(tmp, path);
    done = true;
  } finally {
    if (!done) {
      await fh.close().catch(() => {});
      await unlink(tmp).catch(() => {});
    }
  }
  // Persist the rename itself; not supported on every platform, and the data is already safe.
  try { const d = await openFile(dir, 'r'); try { await d.sync(); } finally { await d.close(); } } catch { /* best effort */ }
}
