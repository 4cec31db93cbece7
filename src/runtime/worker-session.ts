// ONNX Runtime's run() blocks the thread that calls it. A WorkerSession owns a Session inside a
// worker thread, so a server or a long training run keeps its event loop free. Inputs are copied
// into the worker (structured clone); outputs come back by transfer (no copy).
import { Worker } from 'node:worker_threads';
import type { HostTensor, SessionOptions } from './session.js';

interface Pending {
  resolve: (v: Record<string, HostTensor>) => void;
  reject: (e: Error) => void;
}

export class WorkerSession {
  private next = 0;
  private pending = new Map<number, Pending>();
  private dead: Error | undefined;

  private constructor(private readonly worker: Worker) {
    worker.on('message', (m: { id: number; ok: boolean; out?: Record<string, HostTensor>; error?: string }) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m.out!);
      else p.reject(new Error(m.error));
    });
    const failAll = (e: Error): void => {
      this.dead = e;
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
    };
    worker.on('error', failAll);
    worker.on('exit', (code) => failAll(new Error(`the inference worker exited (code ${code})`)));
  }

  /** Starts a worker and loads the model in it; resolves once the session is ready. */
  static async create(model: Uint8Array, opts: Omit<SessionOptions, 'cacheKey'> = {}): Promise<WorkerSession> {
    const worker = new Worker(new URL('./session-worker.js', import.meta.url), { workerData: { model, opts } });
    await new Promise<void>((resolve, reject) => {
      worker.once('message', (m: { ready?: boolean; error?: string }) => (m.ready ? resolve() : reject(new Error(m.error))));
      worker.once('error', reject);
    });
    return new WorkerSession(worker);
  }

  run(feeds: Record<string, HostTensor>): Promise<Record<string, HostTensor>> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, feeds });
    });
  }

  async close(): Promise<void> {
    this.worker.removeAllListeners('exit');
    await this.worker.terminate();
  }
}
