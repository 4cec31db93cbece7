// Serialization of a Graph to a standard ONNX ModelProto through onnx-proto (protobufjs with ONNX's
// own schema). Only the nodes that the requested outputs depend on are written.
import onnxProto from 'onnx-proto';
import { type AnyTypedArray, type Attr, type ConstValue, type Graph, type Node, type Tensor, GraphError, sizeOf } from './graph.js';
import { MS, onnxDType } from './ops.js';

const { onnx } = onnxProto;

export const OPSET = 17;
export const IR_VERSION = 8;

export interface SerializeOptions {
  /** Graph outputs, in order; each keeps its tensor name (use graph.rename to choose it). */
  outputs: readonly Tensor[];
  /**
   * Parameter values. Parameters found here become initializers (inference: ORT can pre-pack and
   * fold them); the others become graph inputs (training: weights change every step).
   */
  paramValues?: ReadonlyMap<string, Float32Array>;
  /** Keep these parameters as graph inputs even when a value is given. */
  paramsAsInputs?: boolean;
  docString?: string;
}

/** The nodes needed to compute `outputs`, in topological (creation) order. */
export function liveNodes(graph: Graph, outputs: readonly Tensor[]): Node[] {
  const need = new Set<Node>();
  const stack = outputs.map((t) => t.producer).filter((n): n is Node => !!n);
  while (stack.length) {
    const n = stack.pop()!;
    if (need.has(n)) continue;
    need.add(n);
    for (const x of n.inputs) if (x?.producer && !need.has(x.producer)) stack.push(x.producer);
  }
  return graph.nodes.filter((n) => need.has(n));
}

function valueInfo(t: Tensor): onnxProto.onnx.IValueInfoProto {
  return {
    name: t.name,
    type: {
      tensorType: {
        elemType: onnxDType(t.dtype),
        shape: { dim: t.shape.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

function bytesOf(a: AnyTypedArray): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

export function tensorProto(name: string, v: ConstValue): onnxProto.onnx.ITensorProto {
  if (v.data.length !== sizeOf(v.shape)) throw new GraphError(`tensor '${name}': ${v.data.length} values for shape [${v.shape}]`);
  return { name, dims: [...v.shape], dataType: onnxDType(v.dtype), rawData: bytesOf(v.data) };
}

function attrProto(name: string, a: Attr): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if ('i' in a) return { name, type: T.INT, i: a.i };
  if ('f' in a) return { name, type: T.FLOAT, f: a.f };
  if ('s' in a) return { name, type: T.STRING, s: new TextEncoder().encode(a.s) };
  if ('ints' in a) return { name, type: T.INTS, ints: [...a.ints] };
  if ('floats' in a) return { name, type: T.FLOATS, floats: [...a.floats] };
  return { name, type: T.TENSOR, t: tensorProto(name, a.t) };
}

export function toModelProto(graph: Graph, o: SerializeOptions): onnxProto.onnx.IModelProto {
  const nodes = liveNodes(graph, o.outputs);
  const used = new Set<Tensor>(o.outputs);
  for (const n of nodes) for (const x of n.inputs) if (x) used.add(x);

  const inputs: onnxProto.onnx.IValueInfoProto[] = [];
  const initializers: onnxProto.onnx.ITensorProto[] = [];
  for (const t of graph.inputs) if (used.has(t)) inputs.push(valueInfo(t));
  for (const p of graph.params.values()) {
    if (!used.has(p.tensor)) continue;
    const value = o.paramsAsInputs ? undefined : o.paramValues?.get(p.name);
    if (!value) inputs.push(valueInfo(p.tensor));
    else initializers.push(tensorProto(p.name, { dtype: 'float32', shape: p.shape, data: value }));
  }
  for (const [t, v] of graph.constants) if (used.has(t)) initializers.push(tensorProto(t.name, v));

  const names = new Set<string>();
  for (const t of o.outputs) {
    if (names.has(t.name)) throw new GraphError(`output '${t.name}' is listed twice`);
    names.add(t.name);
  }
  const usesMs = nodes.some((n) => n.domain === MS);
  return {
    irVersion: IR_VERSION,
    producerName: 'clipkit',
    docString: o.docString ?? '',
    opsetImport: [{ domain: '', version: OPSET }, ...(usesMs ? [{ domain: MS, version: 1 }] : [])],
    graph: {
      name: graph.name,
      node: nodes.map((n) => ({
        opType: n.op,
        domain: n.domain,
        name: `${n.op}_${n.id}`,
        input: n.inputs.map((x) => x?.name ?? ''),
        output: n.outputs.map((y) => y.name),
        attribute: Object.entries(n.attrs).map(([k, v]) => attrProto(k, v)),
      })),
      input: inputs,
      output: o.outputs.map(valueInfo),
      initializer: initializers,
    },
  };
}

export function serialize(graph: Graph, o: SerializeOptions): Uint8Array {
  const proto = toModelProto(graph, o);
  return onnx.ModelProto.encode(onnx.ModelProto.create(proto)).finish();
}
