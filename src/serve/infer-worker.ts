// An inference worker thread: the two exported towers (vision.onnx, text.onnx) in ONNX Runtime
// sessions, plus image decoding. ONNX Runtime's run() blocks the thread that calls it, and CLIP's
// preprocessing (a PIL-exact bicubic resize in JS) is CPU work too, so both happen here and the
// server's event loop only parses requests and stacks them into batches.
//
// One job at a time (the pool never sends a second before the first is answered). Replies transfer
// the feature buffers (no copy).
import { parentPort, workerData } from 'node:worker_threads';
import { preprocessClip } from '../data/image.js';
import { Session } from '../runtime/session.js';
import type { ToInferWorker, WorkerInit } from './protocol.js';

const port = parentPort!;
const init = workerData as WorkerInit;

try {
  const opts = { threads: init.threads, cacheKey: false as const };
  const vision = await Session.create(init.vision, opts);
  const texts = new Map<number, Session>();
  for (const t of init.texts) texts.set(t.length, await Session.create(t.path, opts));
  const size = init.imageSize;
  const per = 3 * size * size;

  const runVision = async (pixels: Float32Array, n: number): Promise<Float32Array> =>
    (await vision.run({ pixels: { data: pixels, shape: [n, 3, size, size] } })).image_embeds!.data as Float32Array;

  const handle = async (m: ToInferWorker): Promise<{ features: Float32Array; errors?: (string | null)[] }> => {
    if (m.op === 'texts') {
      const L = m.ids.length / m.n;
      const text = texts.get(L);
      if (!text) throw new Error(`no text tower for length ${L} (have ${[...texts.keys()].join(', ')})`);
      return { features: (await text.run({ input_ids: { data: m.ids, shape: [m.n, L] } })).text_embeds!.data as Float32Array };
    }
    if (m.op === 'pixels') return { features: await runVision(m.pixels, m.n) };
    // Encoded images: each decoded on its own, so one bad upload fails only its own request.
    const decoded = await Promise.allSettled(m.images.map((b) => preprocessClip(Buffer.from(b.buffer, b.byteOffset, b.byteLength), { size })));
    const errors = decoded.map((d) => (d.status === 'rejected' ? String((d.reason as Error).message ?? d.reason).replace('(buffer of', '(upload of') : null));
    const ok = decoded.flatMap((d) => (d.status === 'fulfilled' ? [d.value] : []));
    if (ok.length === 0) return { features: new Float32Array(0), errors };
    const pixels = new Float32Array(ok.length * per);
    ok.forEach((p, i) => pixels.set(p, i * per));
    return { features: await runVision(pixels, ok.length), errors };
  };

  port.on('message', (m: ToInferWorker) => {
    handle(m).then(
      (r) => port.postMessage({ id: m.id, ok: true, ...r }, [r.features.buffer as ArrayBuffer]),
      (e: unknown) => port.postMessage({ id: m.id, ok: false, error: (e as Error).message ?? String(e) }),
    );
  });
  port.postMessage({ ready: true });
} catch (e) {
  port.postMessage({ ready: false, error: (e as Error).message });
}
