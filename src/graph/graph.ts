// The graph IR: symbolic tensors with static shapes (optionally one symbolic batch dim), nodes that
// are ONNX ops, and named inputs, outputs, parameters and constants. Ops live in ops.ts; this file
// only holds the data structures and the bookkeeping every op shares.

export type DType = 'float32' | 'float64' | 'int64' | 'int32' | 'int8' | 'bool';
/** A dimension: a number, or a symbol such as 'N' that stands for a size known only at run time. */
export type Dim = number | string;
export type Shape = readonly Dim[];

export type TypedArrayFor<D extends DType> = D extends 'float32'
  ? Float32Array
  : D extends 'float64'
    ? Float64Array
    : D extends 'int64'
      ? BigInt64Array
      : D extends 'int32'
        ? Int32Array
        : D extends 'int8'
          ? Int8Array
          : Uint8Array;
export type AnyTypedArray = Float32Array | Float64Array | BigInt64Array | Int32Array | Int8Array | Uint8Array;

/** Attribute values, tagged with their ONNX kind so an integer-valued float stays a float. */
export type Attr =
  | { i: number }
  | { f: number }
  | { s: string }
  | { ints: readonly number[] }
  | { floats: readonly number[] }
  | { t: ConstValue };

export interface ConstValue {
  dtype: DType;
  shape: readonly number[];
  data: AnyTypedArray;
}

export type Initializer =
  | { kind: 'normal'; std: number; mean?: number }
  | { kind: 'truncnormal'; std: number; mean?: number; a?: number; b?: number }
  | { kind: 'uniform'; low: number; high: number }
  | { kind: 'xavier_uniform' | 'xavier_normal' | 'kaiming_uniform' | 'kaiming_normal'; fanIn: number; fanOut: number; gain?: number }
  | { kind: 'zeros' | 'ones' }
  | { kind: 'const'; value: number }
  | { kind: 'data'; data: Float32Array };

export interface ParamSpec {
  name: string;
  shape: readonly number[];
  init: Initializer;
  /** Filled in when the graph is built: the tensor that stands for this parameter. */
  tensor: Tensor;
}

export class Tensor {
  constructor(
    readonly graph: Graph,
    readonly id: number,
    readonly shape: Shape,
    readonly dtype: DType,
    readonly producer: Node | undefined,
    /** The ONNX value name; inputs, params and outputs have user-facing names. */
    public name: string,
  ) {}
  get rank(): number {
    return this.shape.length;
  }
  toString(): string {
    return `${this.name}:${this.dtype}[${this.shape.join(',')}]`;
  }
}

export interface Node {
  id: number;
  op: string;
  domain: string;
  inputs: (Tensor | null)[];
  outputs: Tensor[];
  attrs: Record<string, Attr>;
}

export class GraphError extends Error {
  override name = 'GraphError';
}

export class Graph {
  readonly nodes: Node[] = [];
  readonly inputs: Tensor[] = [];
  readonly params = new Map<string, ParamSpec>();
  readonly constants = new Map<Tensor, ConstValue>();
  private nextId = 0;
  private names = new Set<string>();
  private scopes: string[] = [];

  /**
   * 'infer' lets layers use fused contrib kernels that have no gradient rules (a graph that will never
   * be differentiated); 'train' (the default) keeps to ops the autodiff knows.
   */
  mode: 'train' | 'infer' = 'train';

  /**
   * 'int8' (inference graphs only): linear layers run as dynamically quantized int8 GEMMs — weights
   * quantized per output channel when the session is created, activations per tensor at run time.
   */
  quantize: 'none' | 'int8' = 'none';

  constructor(readonly name = 'clipkit') {}

  /** A named graph input. Symbolic dims (strings) are resolved by ONNX Runtime at run time. */
  input(name: string, shape: Shape, dtype: DType = 'float32'): Tensor {
    this.claim(name);
    const t = new Tensor(this, this.nextId++, [...shape], dtype, undefined, name);
    this.inputs.push(t);
    return t;
  }

  /** A trainable float32 parameter, named as in checkpoints (e.g. 'visual.conv1.weight'). */
  param(name: string, shape: readonly number[], init: Initializer): Tensor {
    const full = this.scoped(name);
    if (this.params.has(full)) throw new GraphError(`parameter '${full}' is defined twice`);
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) throw new GraphError(`parameter '${full}' has a bad shape [${shape}]`);
    }
    this.claim(full);
    const t = new Tensor(this, this.nextId++, [...shape], 'float32', undefined, full);
    this.params.set(full, { name: full, shape: [...shape], init, tensor: t });
    return t;
  }

  /** A constant baked into the graph as an initializer. */
  constant(value: ConstValue, hint = 'const'): Tensor {
    const t = new Tensor(this, this.nextId++, [...value.shape], value.dtype, undefined, this.fresh(hint));
    this.constants.set(t, value);
    return t;
  }

  /** Runs `fn` with parameter names prefixed by `prefix.` (nested scopes join with dots). */
  scope<T>(prefix: string, fn: () => T): T {
    this.scopes.push(prefix);
    try {
      return fn();
    } finally {
      this.scopes.pop();
    }
  }

  scoped(name: string): string {
    return [...this.scopes, name].filter((s) => s !== '').join('.');
  }

  /** Appends a node; shapes and dtypes of its outputs are decided by the caller (ops.ts). */
  addNode(
    op: string,
    inputs: (Tensor | null)[],
    outputs: { shape: Shape; dtype: DType }[],
    attrs: Record<string, Attr> = {},
    domain = '',
  ): Tensor[] {
    for (const x of inputs) {
      if (x && x.graph !== this) throw new GraphError(`${op}: input ${x} belongs to another graph`);
    }
    const node: Node = { id: this.nodes.length, op, domain, inputs, outputs: [], attrs };
    node.outputs = outputs.map(
      (o) => new Tensor(this, this.nextId++, [...o.shape], o.dtype, node, this.fresh(op.toLowerCase())),
    );
    this.nodes.push(node);
    return node.outputs;
  }

  /** Renames a tensor (used for graph outputs so callers can fetch them by name). */
  rename(t: Tensor, name: string): Tensor {
    if (t.name === name) return t;
    this.claim(name);
    this.names.delete(t.name);
    t.name = name;
    return t;
  }

  fresh(hint: string): string {
    let name = `${hint}_${this.nextId}`;
    while (this.names.has(name)) name += '_';
    this.names.add(name);
    return name;
  }

  private claim(name: string): void {
    if (this.names.has(name)) throw new GraphError(`the name '${name}' is already used in graph '${this.name}'`);
    this.names.add(name);
  }
}

export function sizeOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function isStatic(shape: Shape): shape is readonly number[] {
  return shape.every((d) => typeof d === 'number');
}

export function fmtShape(shape: Shape): string {
  return `[${shape.join(', ')}]`;
}
