// The HTTP server: a JSON API over the inference engine and (optionally) a vector store, plus the web
// page at /. Status codes carry the meaning a client acts on: 400 for a bad image, labels or field
// (fix the request), 413 for a body past the size limit, 503 when the inference queue is full (retry
// later, as Retry-After says), 500 only for our own failures.
import { createReadStream, realpathSync, statSync } from 'node:fs';
import { extname, isAbsolute, resolve, sep } from 'node:path';
import multipart from '@fastify/multipart';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import sharp from 'sharp';
import type { VectorStore } from '../index/store.js';
import { QueueFullError } from './batcher.js';
import type { Engine } from './engine.js';
import { PAGE_HTML } from './page.js';
import { intField, parseBody, templatesField, textsField } from './request.js';
import { InputError, MAX_LABELS, parseLabels, parseTemplates } from './zeroshot.js';

export interface ServerOptions {
  engine: Engine;
  store?: VectorStore;
  /** Labels /classify uses when a request gives none (the shipped model: CIFAR-10's classes). */
  defaultLabels?: readonly string[];
  /** Largest request body (JSON) and uploaded file, in bytes. Default 10 MiB. */
  maxBody?: number;
  /** Relative paths in the store are relative to this; when given, images outside it are not served. */
  imageRoot?: string;
  /** Shown by /health. */
  modelName?: string;
  logger?: boolean;
}

const IMAGE_TYPES: Record<string, string> = { '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg', '.png': 'image/png', '.webp': 'image/webp', '.gif': 'image/gif' };
const MAX_TEXTS = 256;
const MAX_IMAGES = 64;

export async function buildServer(o: ServerOptions): Promise<FastifyInstance> {
  const maxBody = o.maxBody ?? 10 * 1024 * 1024;
  const { engine, store } = o;
  const app = Fastify({ logger: o.logger ?? false, bodyLimit: maxBody });
  await app.register(multipart, { limits: { fileSize: maxBody, files: MAX_IMAGES, fields: 64, fieldSize: 1 << 20, parts: 128 } });

  app.setErrorHandler((err: Error & { statusCode?: number }, _req, reply) => {
    if (err instanceof InputError) return reply.code(400).send({ error: err.message });
    if (err instanceof QueueFullError) return reply.code(503).header('retry-after', '1').send({ error: err.message });
    const code = err.statusCode && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 500;
    if (code === 413) return reply.code(413).send({ error: `the request is larger than the limit of ${maxBody} bytes` });
    if (code >= 500) app.log.error(err);
    return reply.code(code).send({ error: err.message });
  });

  const batchHeader = (reply: FastifyReply, n: number): void => void reply.header('x-batch-size', String(n));

  app.get('/', async (_req, reply) => reply.type('text/html; charset=utf-8').send(PAGE_HTML));

  app.get('/health', async () => ({
    status: 'ok',
    model: { name: o.modelName ?? null, embedDim: engine.embedDim, imageSize: engine.imageSize, contextLength: engine.contextLength },
    db: store ? { rows: await store.count() } : null,
    defaultLabels: o.defaultLabels ?? null,
  }));

  app.get('/stats', async () => engine.stats());

  app.post('/classify', async (req, reply) => {
    const { images, fields } = await parseBody(req);
    if (images.length !== 1) throw new InputError(images.length === 0 ? 'no image: upload one (multipart field "image") or send {"image": "<base64>"}' : 'one image per /classify request');
    const labels = fields.labels !== undefined ? parseLabels(fields.labels) : o.defaultLabels ? [...o.defaultLabels] : parseLabels(undefined);
    const templates = parseTemplates(templatesField(fields.templates));
    const k = Math.min(intField(fields.k, 'k', 5, 1, MAX_LABELS), labels.length);
    const r = await engine.classify(images[0]!, labels, templates, k);
    batchHeader(reply, r.batchSize);
    return { labels: r.labels };
  });

  app.post('/embed', async (req, reply) => {
    const { images, fields } = await parseBody(req);
    const texts = [...textsField(fields.text, 'text', 1), ...textsField(fields.texts, 'texts', MAX_TEXTS)];
    if (images.length === 0 && texts.length === 0) throw new InputError('nothing to embed: send images (multipart files or {"images": [base64…]}) and/or {"texts": […]}');
    if (images.length > MAX_IMAGES) throw new InputError(`${images.length} images; at most ${MAX_IMAGES} per request`);
    const [img, txt] = await Promise.all([images.length ? engine.embedImages(images) : undefined, texts.length ? engine.embedTexts(texts) : undefined]);
    batchHeader(reply, Math.max(img?.batchSize ?? 0, txt?.batchSize ?? 0));
    return {
      dim: engine.embedDim,
      normalized: true,
      ...(img ? { image_embeddings: img.rows.map((r) => Array.from(r)) } : {}),
      ...(txt ? { text_embeddings: txt.rows.map((r) => Array.from(r)) } : {}),
    };
  });

  const search = async (query: { text?: string; image?: Buffer; k: number; filter?: unknown }, reply: FastifyReply) => {
    if (!store) return reply.code(404).send({ error: 'search needs a vector store: start the server with --db <dir>' });
    const q = query.image ? await engine.embedImages([query.image]) : await engine.embedTexts([query.text!]);
    batchHeader(reply, q.batchSize);
    const hits = await store.search(q.rows[0]!, query.k);
    return { hits: hits.map((h) => ({ ...h, image: h.path ? `/image/${encodeURIComponent(h.id)}` : null })) };
  };

  app.get('/search', async (req, reply) => {
    const qs = req.query as Record<string, unknown>;
    const text = typeof qs.q === 'string' ? qs.q : typeof qs.text === 'string' ? qs.text : '';
    if (text.trim() === '') throw new InputError('give a query: /search?q=<text>');
    return search({ text, k: intField(qs.k, 'k', 12, 1, 100) }, reply);
  });

  app.post('/search', async (req, reply) => {
    const { images, fields } = await parseBody(req);
    const text = fields.q ?? fields.text;
    if (images.length > 1) throw new InputError('one image per search');
    if (images.length === 0 && (typeof text !== 'string' || text.trim() === '')) throw new InputError('give a text ({"text": "…"}) or an image to search with');
    if (images.length === 1 && text !== undefined) throw new InputError('give a text or an image, not both');
    return search({ text: text as string | undefined, image: images[0], k: intField(fields.k, 'k', 12, 1, 100) }, reply);
  });

  // Images of search hits, by stored id: the path comes from the store, never from the request, so no
  // URL can reach a file that was not indexed. ?w=<px> returns a JPEG thumbnail for galleries.
  const root = o.imageRoot ? realpathSync(o.imageRoot) : undefined;
  app.get('/image/:id', async (req, reply) => {
    if (!store) return reply.code(404).send({ error: 'no vector store' });
    const { id } = req.params as { id: string };
    const [item] = await store.get([id]);
    if (!item) return reply.code(404).send({ error: `no item '${id}'` });
    if (typeof item.path !== 'string' || item.path === '') return reply.code(404).send({ error: `item '${id}' has no image file (e.g. it came from a tar shard)` });
    const file = isAbsolute(item.path) ? item.path : resolve(root ?? process.cwd(), item.path);
    const type = IMAGE_TYPES[extname(file).toLowerCase()];
    let real: string;
    try {
      real = realpathSync(file);
      if (!statSync(real).isFile()) throw new Error('not a file');
    } catch {
      return reply.code(404).send({ error: `the image of item '${id}' is missing` });
    }
    if (!type || (root && real !== root && !real.startsWith(root + sep))) return reply.code(403).send({ error: `the image of item '${id}' is not served` });
    reply.header('cache-control', 'public, max-age=3600');
    const w = intField((req.query as Record<string, unknown>).w, 'w', 0, 0, 1024);
    if (w > 0) {
      const thumb = await sharp(real, { failOn: 'error' })
        .rotate()
        .resize(w, w, { fit: 'inside', withoutEnlargement: true })
        .jpeg({ quality: 80 })
        .toBuffer()
        .catch(() => undefined);
      if (!thumb) return reply.code(415).send({ error: `the image of item '${id}' cannot be decoded` });
      return reply.type('image/jpeg').send(thumb);
    }
    return reply.type(type).send(createReadStream(real));
  });

  return app;
}
