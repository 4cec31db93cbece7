// The worker side of DataParallelStep: one single-threaded session computing the loss and the flat
// gradient of one shard of each batch. Parameters are read from shared memory (the main thread
// updates them between steps); the gradient goes back by transfer (no copy).
import { parentPort, workerData } from 'node:worker_threads';
import { type HostTensor, Session } from '../runtime/session.js';

interface Init {
  model: Uint8Array;
  threads: number;
  params: { name: string; offset: number; length: number; shape: number[] }[];
  paramBuffer: SharedArrayBuffer;
}

const port = parentPort!;
const init = workerData as Init;

try {
  const session = await Session.create(init.model, { threads: init.threads, cacheKey: false });
  // onnxruntime-node does not take a SharedArrayBuffer-backed array as input ('Invalid argument'),
  // so the parameters are copied into this replica's own memory before each step (a memcpy).
  const shared = new Float32Array(init.paramBuffer);
  const local = new Float32Array(shared.length);
  const paramFeeds: Record<string, HostTensor> = {};
  for (const p of init.params) paramFeeds[p.name] = { data: local.subarray(p.offset, p.offset + p.length), shape: p.shape };
  port.postMessage({ ready: true });
  port.on('message', async (m: { id: number; feeds: Record<string, HostTensor> }) => {
    try {
      local.set(shared);
      const out = await session.run({ ...m.feeds, ...paramFeeds });
      const grad = out['replica.grad']!.data as Float32Array;
      const metrics: Record<string, HostTensor> = {};
      for (const [k, v] of Object.entries(out)) if (k.startsWith('metric.')) metrics[k.slice(7)] = v;
      port.postMessage({ id: m.id, ok: true, loss: Number(out.loss!.data[0]), grad, metrics }, [grad.buffer as ArrayBuffer]);
    } catch (e) {
      port.postMessage({ id: m.id, ok: false, error: (e as Error).message });
    }
  });
} catch (e) {
  port.postMessage({ ready: false, error: (e as Error).message });
}
