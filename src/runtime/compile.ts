// Graph → ONNX bytes → ONNX Runtime session, in one call.
import type { Graph, Tensor } from '../graph/graph.js';
import { serialize } from '../graph/onnx.js';
import { identity } from '../graph/ops.js';
import { type HostTensor, Session, type SessionOptions } from './session.js';

export interface CompileOptions extends SessionOptions {
  /** Parameter values to bake in as initializers; parameters without a value become inputs. */
  paramValues?: ReadonlyMap<string, Float32Array>;
  paramsAsInputs?: boolean;
}

export interface Compiled {
  session: Session;
  bytes: Uint8Array;
  outputNames: string[];
  run(feeds: Record<string, HostTensor>, into?: Record<string, HostTensor>): Promise<Record<string, HostTensor>>;
}

export async function compile(graph: Graph, outputs: Record<string, Tensor> | Tensor[], o: CompileOptions = {}): Promise<Compiled> {
  const list: Tensor[] = [];
  // A graph output must be produced by a node: inputs, parameters and constants pass through Identity.
  const produced = (t: Tensor): Tensor => (t.producer ? t : identity(t));
  if (Array.isArray(outputs)) list.push(...outputs.map(produced));
  else for (const [name, t] of Object.entries(outputs)) list.push(graph.rename(produced(t), name));
  const bytes = serialize(graph, { outputs: list, paramValues: o.paramValues, paramsAsInputs: o.paramsAsInputs });
  const session = await Session.create(bytes, o);
  const outputNames = list.map((t) => t.name);
  return {
    session,
    bytes,
    outputNames,
    run: (feeds, into) => session.run(feeds, { into }),
  };
}
