// The runtime boundary: the only module that imports onnxruntime-node. Everything above it speaks
// HostTensor ({data, shape, dtype}) and serialized ONNX bytes.
import { createHash } from 'node:crypto';
import { availableParallelism } from 'node:os';
import * as ort from 'onnxruntime-node';
import type { AnyTypedArray, DType } from '../graph/graph.js';

export interface HostTensor {
  data: AnyTypedArray;
  shape: readonly number[];
  dtype?: DType;
}

export type OptLevel = 'disabled' | 'basic' | 'extended' | 'all';

export interface SessionOptions {
  /** Intra-op threads; default: every core. */
  threads?: number;
  optLevel?: OptLevel;
  /** Execution providers, e.g. ['cuda', 'cpu'] with a CUDA-enabled onnxruntime-node install. */
  providers?: string[];
  /** Key for the session cache; default: a hash of the model bytes. Set false to skip the cache. */
  cacheKey?: string | false;
  /** Write ONNX Runtime's per-op profile (JSON) with this file prefix; see Session.endProfiling. */
  profile?: string;
}

const ORT_TYPE: Record<DType, ort.Tensor.Type> = {
  float32: 'float32',
  float64: 'float64',
  int64: 'int64',
  int32: 'int32',
  int8: 'int8',
  bool: 'bool',
};

function dtypeOf(data: AnyTypedArray): DType {
  if (data instanceof Float32Array) return 'float32';
  if (data instanceof Float64Array) return 'float64';
  if (data instanceof BigInt64Array) return 'int64';
  if (data instanceof Int32Array) return 'int32';
  if (data instanceof Int8Array) return 'int8';
  return 'bool';
}

function toOrt(name: string, t: HostTensor): ort.Tensor {
  const n = t.shape.reduce((a, b) => a * b, 1);
  if (n !== t.data.length) throw new Error(`input '${name}': ${t.data.length} values for shape [${t.shape}]`);
  return new ort.Tensor(ORT_TYPE[t.dtype ?? dtypeOf(t.data)], t.data as never, t.shape as number[]);
}

export class Session {
  private constructor(
    private readonly inner: ort.InferenceSession,
    readonly inputNames: readonly string[],
    readonly outputNames: readonly string[],
  ) {}

  static async create(model: Uint8Array | string, o: SessionOptions = {}): Promise<Session> {
    const key = o.cacheKey === false ? undefined : (o.cacheKey ?? cacheKeyOf(model, o));
    const hit = key ? cache.get(key) : undefined;
    if (hit) return hit;
    const opts: ort.InferenceSession.SessionOptions = {
      intraOpNumThreads: o.threads ?? defaultThreads(),
      interOpNumThreads: 1,
      executionMode: 'sequential',
      graphOptimizationLevel: o.optLevel ?? 'all',
      executionProviders: o.providers ?? defaultProviders(),
      ...(o.profile ? { enableProfiling: true, profileFilePrefix: o.profile } : {}),
    };
    let inner: ort.InferenceSession;
    try {
      inner = typeof model === 'string' ? await ort.InferenceSession.create(model, opts) : await ort.InferenceSession.create(model, opts);
    } catch (e) {
      throw new Error(`ONNX Runtime rejected the model: ${(e as Error).message}`);
    }
    const s = new Session(inner, inner.inputNames, inner.outputNames);
    if (key) cache.set(key, s);
    return s;
  }

  /**
   * Runs the model. `into` names outputs to be written into caller-owned buffers (ORT writes them in
   * place: no copy); the others come back as fresh arrays.
   */
  async run(feeds: Record<string, HostTensor>, o: { outputs?: readonly string[]; into?: Record<string, HostTensor> } = {}): Promise<Record<string, HostTensor>> {
    const ortFeeds: Record<string, ort.Tensor> = {};
    for (const name of this.inputNames) {
      const t = feeds[name];
      if (!t) throw new Error(`missing input '${name}' (the model takes ${this.inputNames.join(', ')})`);
      ortFeeds[name] = toOrt(name, t);
    }
    const wanted = o.outputs ?? this.outputNames;
    const fetches: Record<string, ort.Tensor | null> = {};
    for (const name of wanted) {
      if (!this.outputNames.includes(name)) throw new Error(`unknown output '${name}'`);
      const into = o.into?.[name];
      fetches[name] = into ? toOrt(name, into) : null;
    }
    const res = await this.inner.run(ortFeeds, fetches as ort.InferenceSession.FetchesType);
    const out: Record<string, HostTensor> = {};
    for (const name of wanted) {
      const into = o.into?.[name];
      if (into) {
        out[name] = into;
        continue;
      }
      const t = res[name]!;
      out[name] = { data: t.data as AnyTypedArray, shape: [...t.dims], dtype: t.type as DType };
    }
    return out;
  }

  /** Ends profiling (sessions created with `profile`); ORT writes the JSON file. */
  endProfiling(): void {
    this.inner.endProfiling();
  }

  async release(): Promise<void> {
    for (const [k, v] of cache) if (v === this) cache.delete(k);
    await this.inner.release();
  }
}

const cache = new Map<string, Session>();

function cacheKeyOf(model: Uint8Array | string, o: SessionOptions): string {
  const h = createHash('sha256');
  h.update(typeof model === 'string' ? `file:${model}` : model);
  h.update(JSON.stringify([o.threads ?? defaultThreads(), o.optLevel ?? 'all', o.providers ?? defaultProviders()]));
  return h.digest('hex');
}

export function defaultThreads(): number {
  const env = Number(process.env.CLIPKIT_THREADS);
  return Number.isInteger(env) && env > 0 ? env : availableParallelism();
}

/** CLIPKIT_PROVIDERS=cuda (comma-separated) puts those execution providers before the CPU one. */
export function defaultProviders(): string[] {
  const env = (process.env.CLIPKIT_PROVIDERS ?? '').split(',').map((s) => s.trim()).filter((s) => s && s !== 'cpu');
  return [...env, 'cpu'];
}

export function clearSessionCache(): void {
  cache.clear();
}
