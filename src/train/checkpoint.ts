// Training checkpoints: model weights, AdamW moments and step, the data position and RNG state, and
// the run config, in one safetensors file written atomically (a temporary file, fsync, then rename —
// see writeSafetensors), so a crash or SIGKILL mid-save leaves the previous checkpoint intact.
import { SafetensorsFile, writeSafetensors } from '../checkpoint/safetensors.js';
import type { OptimizerState } from '../optim/step.js';

export interface TrainState {
  /** What was trained ('clip', 'vit') and its architecture, as JSON (e.g. an OpenCLIP config). */
  kind: string;
  modelConfig: unknown;
  params: Map<string, Float32Array>;
  optimizer: OptimizerState;
  /** Where the data stream is: the next batch to train on. */
  position: { epoch: number; batch: number };
  /** Anything else the run needs to continue identically (seed, RNG state, run config, metrics). */
  extra: Record<string, unknown>;
}

const M = 'opt.m.';
const V = 'opt.v.';

export async function saveCheckpoint(path: string, s: TrainState): Promise<void> {
  const tensors: { name: string; shape: number[]; data: Float32Array }[] = [];
  for (const [name, data] of s.params) tensors.push({ name, shape: [data.length], data });
  for (const [name, data] of s.optimizer.m) tensors.push({ name: M + name, shape: [data.length], data });
  for (const [name, data] of s.optimizer.v) tensors.push({ name: V + name, shape: [data.length], data });
  await writeSafetensors(path, tensors, {
    format: 'clipkit-train',
    'clipkit.kind': s.kind,
    'clipkit.model_config': JSON.stringify(s.modelConfig),
    'clipkit.state': JSON.stringify({ step: s.optimizer.step, position: s.position, extra: s.extra }),
  });
}

export async function loadCheckpoint(path: string): Promise<TrainState> {
  const st = await SafetensorsFile.open(path);
  try {
    if (st.metadata.format !== 'clipkit-train') throw new Error(`${path} is not a clipkit training checkpoint (format '${st.metadata.format ?? 'none'}')`);
    const meta = JSON.parse(st.metadata['clipkit.state'] ?? 'null') as { step: number; position: TrainState['position']; extra: Record<string, unknown> } | null;
    if (!meta || !Number.isInteger(meta.step) || !meta.position) throw new Error(`${path}: the training state metadata is missing or malformed`);
    const kind = st.metadata['clipkit.kind'] ?? 'clip';
    const modelConfig = JSON.parse(st.metadata['clipkit.model_config'] ?? 'null') as unknown;
    const params = new Map<string, Float32Array>();
    const m = new Map<string, Float32Array>();
    const v = new Map<string, Float32Array>();
    for (const name of st.names()) {
      const data = await st.readFloat32(name);
      if (name.startsWith(M)) m.set(name.slice(M.length), data);
      else if (name.startsWith(V)) v.set(name.slice(V.length), data);
      else params.set(name, data);
    }
    return { kind, modelConfig, params, optimizer: { step: meta.step, m, v }, position: meta.position, extra: meta.extra ?? {} };
  } finally {
    await st.close();
  }
}
