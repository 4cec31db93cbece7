// Starting and stopping a whole server (engine + store + HTTP), shared by `clipkit serve`, the tests
// and the benchmark, so they all run exactly what a user runs.
import { existsSync } from 'node:fs';
import { basename } from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { VectorStore } from '../index/store.js';
import { Engine, type EngineOptions } from './engine.js';
import { buildServer } from './server.js';

export interface ServeOptions extends EngineOptions {
  db?: string;
  port?: number;
  host?: string;
  defaultLabels?: readonly string[];
  maxBody?: number;
  imageRoot?: string;
  logger?: boolean;
}

export interface RunningServer {
  app: FastifyInstance;
  engine: Engine;
  /** http://host:port */
  url: string;
  close(): Promise<void>;
}

export async function startServe(o: ServeOptions): Promise<RunningServer> {
  let store: VectorStore | undefined;
  if (o.db !== undefined) {
    if (!existsSync(o.db)) throw new Error(`serve: no vector store at '${o.db}' (build one with clipkit embed + clipkit index)`);
    const { VectorStore } = await import('../index/store.js');
    store = await VectorStore.open(o.db);
  }
  let engine: Engine | undefined;
  try {
    engine = await Engine.create(o);
    if (store && store.dim !== engine.embedDim) {
      throw new Error(`serve: the store at ${o.db} holds ${store.dim}-d embeddings, but the model embeds to ${engine.embedDim}-d (index embeddings made with this model)`);
    }
    const app = await buildServer({ engine, store, defaultLabels: o.defaultLabels, maxBody: o.maxBody, imageRoot: o.imageRoot, modelName: basename(o.modelPath), logger: o.logger });
    await app.listen({ port: o.port ?? 8080, host: o.host ?? '127.0.0.1' });
    const addr = app.server.address();
    const port = typeof addr === 'object' && addr ? addr.port : o.port;
    const host = (o.host ?? '127.0.0.1').includes(':') ? `[${o.host}]` : (o.host ?? '127.0.0.1');
    const e = engine;
    return {
      app,
      engine: e,
      url: `http://${host}:${port}`,
      async close() {
        await app.close();
        await e.close();
        store?.close();
      },
    };
  } catch (err) {
    await engine?.close();
    store?.close();
    throw err;
  }
}
