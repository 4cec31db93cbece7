// NumPy .npy files: the offline embedding format ([N, D] float32 or float16, C order). Files are read
// through a header-first reader so a 1M × 512 embedding file (2 GB) can be streamed in row batches
// instead of being held in memory twice; `readNpy` is the read-it-all convenience on top.
//
// Format (numpy.lib.format): the magic "\x93NUMPY", a major and minor version byte, the header
// length (2 bytes little-endian in v1.0, 4 bytes in v2.0/v3.0), then a Python dict literal such as
// "{'descr': '<f4', 'fortran_order': False, 'shape': (100, 512), }" padded with spaces and ended by
// "\n" so that the data starts on a 64-byte boundary. v3.0 only differs by a UTF-8 header.
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';

export type NpyDType = 'float32' | 'float16';

export interface NpyHeader {
  dtype: NpyDType;
  /** True when the file stores big-endian values ('>f4'); converted on read. */
  bigEndian: boolean;
  shape: number[];
  /** Byte offset of the first value. */
  dataOffset: number;
  /** Format version [major, minor]. */
  version: [number, number];
}

export interface NpyArray {
  /** Values as float32 (float16 files are widened on read). */
  data: Float32Array;
  shape: number[];
  /** The dtype stored in the file. */
  dtype: NpyDType;
}

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]); // \x93NUMPY
const ALIGN = 64;
const ITEM_SIZE: Record<NpyDType, number> = { float32: 4, float16: 2 };

export class NpyFormatError extends Error {
  override name = 'NpyFormatError';
}

// ---- header ----------------------------------------------------------------------------

/** Parses the preamble + header dict of an .npy file from its first bytes. */
export function parseNpyHeader(buf: Buffer, where = 'npy'): NpyHeader {
  const fail = (msg: string): never => {
    throw new NpyFormatError(`${where}: ${msg}`);
  };
  if (buf.length < 10 || !buf.subarray(0, 6).equals(MAGIC)) fail('not an .npy file (missing the \\x93NUMPY magic)');
  const major = buf[6]!;
  const minor = buf[7]!;
  if (major < 1 || major > 3) fail(`unsupported .npy format version ${major}.${minor}`);
  const lenBytes = major === 1 ? 2 : 4;
  if (buf.length < 8 + lenBytes) fail('truncated header');
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const dataOffset = 8 + lenBytes + headerLen;
  if (buf.length < dataOffset) fail(`truncated header (needs ${dataOffset} bytes, file has ${buf.length})`);
  const text = buf.subarray(8 + lenBytes, dataOffset).toString(major === 3 ? 'utf8' : 'latin1');
  const dict = parseHeaderDict(text, fail);

  const descr = dict.descr;
  if (typeof descr !== 'string') fail(`header 'descr' must be a string, got ${JSON.stringify(descr)}`);
  const m = /^([<>|=])(f[24])$/.exec(descr as string);
  if (!m) fail(`unsupported dtype '${descr}': only float32 ('<f4') and float16 ('<f2') embeddings are supported`);
  const dtype: NpyDType = m![2] === 'f4' ? 'float32' : 'float16';
  // '|' (not applicable) and '=' (native) are little-endian on every platform Node runs on.
  const bigEndian = m![1] === '>';

  if (typeof dict.fortran_order !== 'boolean') fail(`header 'fortran_order' must be True or False`);
  if (dict.fortran_order) fail('Fortran-order (column-major) arrays are not supported; save with np.ascontiguousarray');
  const shape = dict.shape;
  if (!Array.isArray(shape)) fail(`header 'shape' must be a tuple, got ${JSON.stringify(shape)}`);
  for (const d of shape as unknown[]) if (!Number.isSafeInteger(d) || (d as number) < 0) fail(`bad dimension ${JSON.stringify(d)} in shape`);
  return { dtype, bigEndian, shape: shape as number[], dataOffset, version: [major, minor] };
}

type PyValue = string | number | boolean | PyValue[];

/**
 * The header is a Python literal, not JSON: single-quoted strings, True/False, tuples with an optional
 * trailing comma. A small recursive-descent parser for exactly that subset (no eval).
 */
function parseHeaderDict(text: string, fail: (msg: string) => never): Record<string, PyValue> {
  let i = 0;
  const ws = (): void => {
    while (i < text.length && /\s/.test(text[i]!)) i++;
  };
  const expect = (c: string): void => {
    ws();
    if (text[i] !== c) fail(`malformed header: expected '${c}' at offset ${i} in ${JSON.stringify(text.trim())}`);
    i++;
  };
  const value = (): PyValue => {
    ws();
    const c = text[i];
    if (c === "'" || c === '"') {
      const end = text.indexOf(c, i + 1);
      if (end < 0) fail('malformed header: unterminated string');
      const s = text.slice(i + 1, end);
      i = end + 1;
      return s;
    }
    if (c === '(' || c === '[') {
      const close = c === '(' ? ')' : ']';
      i++;
      const items: PyValue[] = [];
      for (;;) {
        ws();
        if (text[i] === close) break;
        items.push(value());
        ws();
        if (text[i] === ',') i++;
        else if (text[i] !== close) fail(`malformed header: expected ',' or '${close}' at offset ${i}`);
      }
      i++;
      return items;
    }
    const word = /^(True|False|-?\d+L?)/.exec(text.slice(i));
    if (!word) fail(`malformed header: unexpected ${JSON.stringify(text.slice(i, i + 10))} at offset ${i}`);
    i += word![0].length;
    if (word![0] === 'True') return true;
    if (word![0] === 'False') return false;
    return Number(word![0].replace(/L$/, ''));
  };
  const out: Record<string, PyValue> = {};
  expect('{');
  for (;;) {
    ws();
    if (text[i] === '}') break;
    const key = value();
    if (typeof key !== 'string') fail('malformed header: dict keys must be strings');
    expect(':');
    out[key as string] = value();
    ws();
    if (text[i] === ',') i++;
    else if (text[i] !== '}') fail(`malformed header: expected ',' or '}' at offset ${i}`);
  }
  i++;
  if (text.slice(i).trim() !== '') fail('malformed header: trailing characters after the dict');
  for (const k of ['descr', 'fortran_order', 'shape']) if (!(k in out)) fail(`header lacks '${k}'`);
  return out;
}

/** The header bytes for an array (v1.0 when it fits in 65535 bytes, else v2.0), padded to 64 bytes. */
export function encodeNpyHeader(shape: readonly number[], dtype: NpyDType): Buffer {
  const descr = dtype === 'float32' ? '<f4' : '<f2';
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shapeText}, }`;
  for (const [version, lenBytes] of [
    [1, 2],
    [2, 4],
  ] as const) {
    const pre = 6 + 2 + lenBytes;
    const total = Math.ceil((pre + dict.length + 1) / ALIGN) * ALIGN;
    const headerLen = total - pre;
    if (version === 1 && headerLen > 0xffff) continue;
    const buf = Buffer.alloc(total, 0x20);
    MAGIC.copy(buf, 0);
    buf[6] = version;
    buf[7] = 0;
    if (lenBytes === 2) buf.writeUInt16LE(headerLen, 8);
    else buf.writeUInt32LE(headerLen, 8);
    buf.write(dict, pre, 'latin1');
    buf[total - 1] = 0x0a;
    return buf;
  }
  throw new Error('unreachable');
}

// ---- float16 ---------------------------------------------------------------------------

/** IEEE half → float (subnormals, infinities and NaN included). */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float → IEEE half, rounding to nearest even like numpy's astype(np.float16). */
export function floatToHalf(v: number): number {
  f32[0] = v;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // Inf / NaN
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00; // overflow → Inf
  if (e <= 0) {
    // Subnormal half (or zero): shift the implicit-1 mantissa into place, round half to even.
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let r = mant >>> shift;
    const rest = mant & ((1 << shift) - 1);
    if (rest > half || (rest === half && r & 1)) r++;
    return sign | r;
  }
  let r = mant >>> 13;
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && r & 1)) {
    r++;
    if (r === 0x400) {
      r = 0;
      e++;
      if (e >= 31) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | r;
}

// ---- reading ---------------------------------------------------------------------------

/** An open .npy file whose rows (first dimension) can be read in ranges. */
export class NpyReader {
  private constructor(
    private fd: number | undefined,
    readonly path: string,
    readonly header: NpyHeader,
    /** Values per row (product of the trailing dimensions). */
    readonly rowSize: number,
  ) {}

  static open(path: string): NpyReader {
    const fd = openSync(path, 'r');
    try {
      const size = fstatSync(fd).size;
      const head = Buffer.alloc(Math.min(size, 1 << 16));
      readSync(fd, head, 0, head.length, 0);
      let header: NpyHeader;
      try {
        header = parseNpyHeader(head, path);
      } catch (e) {
        // v2.0 headers may exceed the first 64 KiB; read exactly as much as the preamble says.
        if (!(e instanceof NpyFormatError) || head.length < 12 || head[6] === 1 || size <= head.length) throw e;
        const full = Buffer.alloc(Math.min(size, 12 + head.readUInt32LE(8)));
        readSync(fd, full, 0, full.length, 0);
        header = parseNpyHeader(full, path);
      }
      if (header.shape.length === 0) throw new NpyFormatError(`${path}: a 0-d (scalar) array holds no rows`);
      const rowSize = header.shape.slice(1).reduce((a, b) => a * b, 1);
      const want = header.dataOffset + header.shape[0]! * rowSize * ITEM_SIZE[header.dtype];
      if (size < want) throw new NpyFormatError(`${path}: truncated: shape [${header.shape}] ${header.dtype} needs ${want} bytes, the file has ${size}`);
      if (size > want) throw new NpyFormatError(`${path}: ${size - want} unexpected bytes after the data of shape [${header.shape}] ${header.dtype}`);
      return new NpyReader(fd, path, header, rowSize);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  get rows(): number {
    return this.header.shape[0]!;
  }

  /** Rows [lo, hi) as float32, into `out` when given. */
  readRows(lo: number, hi: number, out?: Float32Array): Float32Array {
    if (this.fd === undefined) throw new Error(`${this.path}: reader is closed`);
    if (!(Number.isInteger(lo) && Number.isInteger(hi) && 0 <= lo && lo <= hi && hi <= this.rows)) {
      throw new RangeError(`${this.path}: rows [${lo}, ${hi}) outside [0, ${this.rows})`);
    }
    const n = (hi - lo) * this.rowSize;
    const dst = out ? out.subarray(0, n) : new Float32Array(n);
    if (out && out.length < n) throw new RangeError(`readRows: output holds ${out.length} values, needs ${n}`);
    const item = ITEM_SIZE[this.header.dtype];
    const pos = this.header.dataOffset + lo * this.rowSize * item;
    if (this.header.dtype === 'float32' && !this.header.bigEndian) {
      // Straight into the destination's memory: no intermediate copy.
      readFully(this.fd, new Uint8Array(dst.buffer, dst.byteOffset, n * 4), pos, this.path);
      return dst;
    }
    // float16 or big-endian: read in chunks and convert value by value.
    const CHUNK = 1 << 20;
    const buf = Buffer.alloc(Math.min(n, CHUNK) * item);
    for (let at = 0; at < n; at += CHUNK) {
      const m = Math.min(CHUNK, n - at);
      const bytes = buf.subarray(0, m * item);
      readFully(this.fd, bytes, pos + at * item, this.path);
      const big = this.header.bigEndian;
      for (let j = 0; j < m; j++) {
        dst[at + j] = item === 4 ? (big ? bytes.readFloatBE(j * 4) : bytes.readFloatLE(j * 4)) : halfToFloat(big ? bytes.readUInt16BE(j * 2) : bytes.readUInt16LE(j * 2));
      }
    }
    return dst;
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

function readFully(fd: number, into: Uint8Array, pos: number, path: string): void {
  // readSync may return fewer bytes than asked (and caps one call at 2 GiB): loop.
  for (let done = 0; done < into.length; ) {
    const n = readSync(fd, into, done, Math.min(into.length - done, 1 << 30), pos + done);
    if (n === 0) throw new NpyFormatError(`${path}: unexpected end of file`);
    done += n;
  }
}

/** Reads a whole .npy file as float32. */
export function readNpy(path: string): NpyArray {
  const r = NpyReader.open(path);
  try {
    return { data: r.readRows(0, r.rows), shape: [...r.header.shape], dtype: r.header.dtype };
  } finally {
    r.close();
  }
}

// ---- writing ---------------------------------------------------------------------------

/**
 * Writes an .npy file row batch by row batch (the embedding writer's shape is known up front: one
 * row per input). `close` checks that exactly shape[0] rows were written.
 */
export class NpyWriter {
  private fd: number | undefined;
  private written = 0;
  private readonly rowSize: number;

  constructor(
    readonly path: string,
    readonly shape: readonly number[],
    readonly dtype: NpyDType = 'float32',
  ) {
    if (dtype !== 'float32' && dtype !== 'float16') throw new Error(`NpyWriter: dtype must be float32 or float16, got '${String(dtype)}'`);
    if (shape.length === 0 || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw new Error(`NpyWriter: bad shape [${shape}]`);
    this.rowSize = shape.slice(1).reduce((a, b) => a * b, 1);
    this.fd = openSync(path, 'w');
    writeAll(this.fd, encodeNpyHeader(shape, dtype));
  }

  /** Appends whole rows (a multiple of the row size). */
  write(values: Float32Array): void {
    if (this.fd === undefined) throw new Error(`${this.path}: writer is closed`);
    if (values.length % this.rowSize !== 0) throw new Error(`NpyWriter: ${values.length} values is not a whole number of rows of ${this.rowSize}`);
    const rows = values.length / this.rowSize;
    if (this.written + rows > this.shape[0]!) throw new Error(`NpyWriter: more than the ${this.shape[0]} rows of shape [${this.shape}]`);
    if (this.dtype === 'float32') writeAll(this.fd, new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
    else {
      const buf = Buffer.alloc(values.length * 2);
      for (let i = 0; i < values.length; i++) buf.writeUInt16LE(floatToHalf(values[i]!), i * 2);
      writeAll(this.fd, buf);
    }
    this.written += rows;
  }

  close(): void {
    if (this.fd === undefined) return;
    closeSync(this.fd);
    this.fd = undefined;
    if (this.written !== this.shape[0]) throw new Error(`NpyWriter: ${this.path} got ${this.written} rows, shape [${this.shape}] needs ${this.shape[0]}`);
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done, Math.min(bytes.length - done, 1 << 30));
}

/** Writes a whole array as .npy (little-endian, C order). */
export function writeNpy(path: string, arr: { data: Float32Array; shape: readonly number[] }, o: { dtype?: NpyDType } = {}): void {
  const n = arr.shape.reduce((a, b) => a * b, 1);
  if (arr.data.length !== n) throw new Error(`writeNpy: ${arr.data.length} values for shape [${arr.shape}] (${n})`);
  const w = new NpyWriter(path, arr.shape, o.dtype ?? 'float32');
  try {
    w.write(arr.data);
  } finally {
    w.close();
  }
}
