// The worker side of WorkerSession: one Session, runs requests in order, transfers outputs back.
import { parentPort, workerData } from 'node:worker_threads';
import { type HostTensor, Session } from './session.js';

const port = parentPort!;
const { model, opts } = workerData as { model: Uint8Array; opts: Record<string, unknown> };

try {
  const session = await Session.create(model, { ...opts, cacheKey: false });
  port.postMessage({ ready: true });
  port.on('message', async (m: { id: number; feeds: Record<string, HostTensor> }) => {
    try {
      const out = await session.run(m.feeds);
      const transfer = Object.values(out).map((t) => t.data.buffer as ArrayBuffer);
      port.postMessage({ id: m.id, ok: true, out }, transfer);
    } catch (e) {
      port.postMessage({ id: m.id, ok: false, error: (e as Error).message });
    }
  });
} catch (e) {
  port.postMessage({ ready: false, error: (e as Error).message });
}
