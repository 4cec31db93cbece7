// Writing a Graph to a standalone .onnx file, weights baked in as initializers. A protobuf message
// cannot exceed 2 GB, so large models keep their initializers in ONNX "external data": one side file
// `<model>.onnx.data` next to the model, each tensor referenced by (location, offset, length) — the
// layout onnx's python library and ONNX Runtime read (offsets page-aligned so ORT can mmap them).
import { existsSync, rmSync } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { basename } from 'node:path';
import onnxProto from 'onnx-proto';
import type { Graph } from './graph.js';
import { type SerializeOptions, OPSET, toModelProto } from './onnx.js';
import { MS } from './ops.js';

const { onnx } = onnxProto;

/** The largest message protobuf can encode or parse (2 GB − 1: lengths are signed 32-bit). */
export const PROTOBUF_LIMIT = 2 ** 31 - 1;
/** External tensors start on page boundaries so ONNX Runtime can mmap them (as onnx python aligns). */
export const EXTERNAL_ALIGN = 4096;
/** Smaller initializers (shape vectors, scalars) stay inline, as with onnx's default size_threshold. */
export const EXTERNAL_THRESHOLD = 1024;

export type ExternalDataMode = 'auto' | 'always' | 'never';

export interface WriteOnnxOptions extends SerializeOptions {
  /** 'auto' (default): external data only when the model would pass the protobuf limit. */
  externalData?: ExternalDataMode;
  /** The size that 'auto' switches at; PROTOBUF_LIMIT unless a test wants to exercise the switch. */
  limit?: number;
}

export interface WrittenOnnx {
  path: string;
  /** Size of the .onnx file. */
  bytes: number;
  /** The side file (absent when every weight is inline). */
  data?: { path: string; location: string; bytes: number; tensors: number };
  /** opset_import, domain '' written as 'ai.onnx'. */
  opsets: Record<string, number>;
  /** The distinct ops of the graph by domain ('ai.onnx', 'com.microsoft'), sorted. */
  ops: Record<string, string[]>;
}

/** Serializes `graph` to `path` (and `path + '.data'` when the weights go to external data). */
export async function writeOnnx(path: string, graph: Graph, o: WriteOnnxOptions): Promise<WrittenOnnx> {
  const mode = o.externalData ?? 'auto';
  const limit = o.limit ?? PROTOBUF_LIMIT;
  const model = toModelProto(graph, o); // initializers' rawData are views of the weights: no copies yet
  const inits = model.graph!.initializer!;

  // The size of the inline model without encoding it: the skeleton (tensors emptied) plus every raw
  // payload and an upper bound on the tag and length bytes that each payload adds to its parents.
  const raw = inits.map((t) => t.rawData!);
  inits.forEach((t) => (t.rawData = undefined));
  const skeleton = onnx.ModelProto.encode(onnx.ModelProto.create(model)).finish().length;
  inits.forEach((t, i) => (t.rawData = raw[i]));
  const inlineSize = skeleton + raw.reduce((a, r) => a + r.byteLength + 16, 16);

  const external = mode === 'always' || (mode === 'auto' && inlineSize > limit);
  if (!external && inlineSize > limit) {
    throw new Error(`${basename(path)}: about ${fmtBytes(inlineSize)} inline, past protobuf's ${fmtBytes(limit)} limit; use external data ('auto' or 'always')`);
  }

  const dataPath = `${path}.data`;
  let data: WrittenOnnx['data'];
  if (external) data = await writeExternal(dataPath, inits);
  else if (existsSync(dataPath)) rmSync(dataPath); // the side file of an earlier export of this model is stale now

  const bytes = onnx.ModelProto.encode(onnx.ModelProto.create(model)).finish();
  if (bytes.length > limit) throw new Error(`${basename(path)}: the encoded model is ${fmtBytes(bytes.length)}, past the ${fmtBytes(limit)} limit`);
  const fh = await open(path, 'w');
  try {
    await writeAll(fh, bytes);
  } finally {
    await fh.close();
  }

  const opsets = Object.fromEntries(model.opsetImport!.map((s) => [s.domain || 'ai.onnx', Number(s.version)]));
  const byDomain = new Map<string, Set<string>>();
  for (const n of model.graph!.node!) {
    const d = n.domain || 'ai.onnx';
    byDomain.set(d, (byDomain.get(d) ?? new Set()).add(n.opType!));
  }
  const ops = Object.fromEntries([...byDomain].sort(([a], [b]) => a.localeCompare(b)).map(([d, s]) => [d, [...s].sort()]));
  return { path, bytes: bytes.length, ...(data ? { data } : {}), opsets, ops };
}

/**
 * Moves every initializer of at least EXTERNAL_THRESHOLD bytes to `dataPath`, one tensor at a time
 * (streaming: no buffer larger than one weight is built), and points its TensorProto at the file.
 */
async function writeExternal(dataPath: string, inits: onnxProto.onnx.ITensorProto[]): Promise<WrittenOnnx['data']> {
  const location = basename(dataPath); // relative to the model's directory, as the spec requires
  const fh = await open(dataPath, 'w');
  let at = 0;
  let tensors = 0;
  try {
    for (const t of inits) {
      const payload = t.rawData!;
      if (payload.byteLength < EXTERNAL_THRESHOLD) continue;
      const offset = Math.ceil(at / EXTERNAL_ALIGN) * EXTERNAL_ALIGN;
      if (offset > at) await writeAll(fh, new Uint8Array(offset - at));
      await writeAll(fh, payload);
      at = offset + payload.byteLength;
      t.rawData = undefined;
      t.dataLocation = onnx.TensorProto.DataLocation.EXTERNAL;
      t.externalData = [
        { key: 'location', value: location },
        { key: 'offset', value: String(offset) },
        { key: 'length', value: String(payload.byteLength) },
      ];
      tensors++;
    }
  } finally {
    await fh.close();
  }
  return { path: dataPath, location, bytes: at, tensors };
}

/** Writes all of `bytes` at the current position: one write(2) moves at most ~2 GB on Linux. */
async function writeAll(fh: FileHandle, bytes: Uint8Array): Promise<void> {
  const CHUNK = 1 << 30;
  for (let at = 0; at < bytes.byteLength; ) {
    const { bytesWritten } = await fh.write(bytes, at, Math.min(CHUNK, bytes.byteLength - at));
    at += bytesWritten;
  }
}

/**
 * The opset at which each standard op that clipkit emits was introduced. An op missing here, or one
 * newer than the opset a model declares, would make the file invalid for other runtimes.
 */
const STANDARD_SINCE: Record<string, number> = {
  Abs: 1, Add: 1, ArgMax: 1, Cast: 1, Concat: 1, ConstantOfShape: 9, Conv: 1, ConvTranspose: 1, Div: 1,
  Equal: 1, Erf: 9, Exp: 1, Expand: 8, Gather: 1, GatherElements: 11, Gemm: 1, Greater: 1, Identity: 1,
  LayerNormalization: 17, Less: 1, Log: 1, LogSoftmax: 1, MatMul: 1, Max: 1, Min: 1, Mul: 1, Neg: 1,
  Pad: 1, Pow: 1, Reciprocal: 1, ReduceMax: 1, ReduceMean: 1, ReduceProd: 1, ReduceSum: 1, Relu: 1,
  Reshape: 1, Round: 11, ScatterElements: 11, Shape: 1, Sigmoid: 1, Sign: 9, Slice: 1, Softmax: 1, Split: 1,
  Sqrt: 1, Squeeze: 1, Sub: 1, Tanh: 1, Transpose: 1, Trilu: 14, Unsqueeze: 1, Where: 9,
};
/** com.microsoft contrib ops (version 1) that every ONNX Runtime build ships, wasm included. */
const CONTRIB = new Set(['Attention', 'Gelu', 'FastGelu', 'QuickGelu', 'DynamicQuantizeMatMul']);

/**
 * Checks that every op of a written model belongs to an opset the model declares: standard ops exist
 * at the declared ai.onnx version, contrib ops are ones ONNX Runtime implements. Returns the problems.
 */
export function opsetProblems(w: Pick<WrittenOnnx, 'opsets' | 'ops'>): string[] {
  const problems: string[] = [];
  for (const [domain, op] of Object.entries(w.ops).flatMap(([d, ops]) => ops.map((op) => [d, op] as const))) {
    const declared = w.opsets[domain];
    if (declared === undefined) problems.push(`${domain}.${op}: the model does not import the '${domain}' domain`);
    else if (domain === 'ai.onnx') {
      const since = STANDARD_SINCE[op];
      if (since === undefined) problems.push(`${op}: not a standard op clipkit knows to exist in opset ${OPSET}`);
      else if (since > declared) problems.push(`${op}: introduced in opset ${since}, the model declares ${declared}`);
    } else if (domain === MS) {
      if (!CONTRIB.has(op)) problems.push(`${MS}.${op}: not a contrib op known to every ONNX Runtime build`);
    } else problems.push(`${domain}.${op}: unknown domain`);
  }
  return problems;
}

export function fmtBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}
