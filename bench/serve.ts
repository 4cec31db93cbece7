// `clipkit serve` under load: throughput and p50/p99 latency of POST /classify (one image, the
// CIFAR-10 labels) and GET /search (a text query) for 1, 8 and 64 concurrent clients (autocannon, on
// loopback), with micro-batching on (--max-batch 32) and off (--max-batch 1).
//
// The model is the shipped CIFAR-10 model when this checkout has it, else a random model of the same
// small size (the numbers then measure the server, not accuracy). The store holds random unit vectors.
// quick: a fixed small number of requests per cell (a smoke test, not numbers to quote).
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import sharp from 'sharp';
import { CIFAR10_CLASSES, DEFAULT_MODEL_DIR } from '../src/cli/default-model.js';
import { VectorStore } from '../src/index/store.js';
import { ClipModel } from '../src/models/clip-model.js';
import { fromOpenClip } from '../src/models/config.js';
import { Rng } from '../src/nn/init.js';
import { type RunningServer, startServe } from '../src/serve/start.js';
import { trainBpe } from '../src/tokenizer/index.js';

interface Row {
  route: string;
  batching: string;
  clients: number;
  rps: number;
  p50: number;
  p99: number;
  meanBatch: number;
  errors: number;
}

export async function run(opts: { quick: boolean }): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'clipkit-bench-serve-'));
  try {
    const modelPath = existsSync(DEFAULT_MODEL_DIR) ? DEFAULT_MODEL_DIR : await randomModel(work);
    const dim = (await import('../src/models/load.js').then((m) => m.loadClip(modelPath))).config.embedDim;
    const db = join(work, 'db');
    await randomStore(db, dim, opts.quick ? 500 : 20_000);
    const image = (await sharp({ create: { width: 64, height: 48, channels: 3, background: { r: 180, g: 60, b: 40 } } }).png().toBuffer()).toString('base64');
    const classifyBody = JSON.stringify({ image, labels: CIFAR10_CLASSES });

    console.log(`\nserve: model ${existsSync(DEFAULT_MODEL_DIR) ? 'models/cifar10-clip' : 'random (models/cifar10-clip is not installed)'}, ${dim}-d; 1 worker; store of ${opts.quick ? 500 : 20_000} rows`);
    const rows: Row[] = [];
    for (const [batching, maxBatch] of [
      ['on (32)', 32],
      ['off (1)', 1],
    ] as const) {
      const server = await startServe({ modelPath, cacheRoot: join(work, 'cache'), db, port: 0, workers: 1, maxBatch, maxQueue: 1024 });
      try {
        // Warm-up: the class-embedding cache, ONNX Runtime's first runs.
        await measure(server, 'classify', classifyBody, 4, true);
        for (const clients of [1, 8, 64]) {
          for (const route of ['classify', 'search'] as const) {
            rows.push({ ...(await measure(server, route, classifyBody, clients, opts.quick)), batching });
          }
        }
      } finally {
        await server.close();
      }
    }
    printTable(rows);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

async function measure(server: RunningServer, route: 'classify' | 'search', classifyBody: string, clients: number, quick: boolean): Promise<Omit<Row, 'batching'>> {
  const key = route === 'classify' ? 'image' : 'text';
  const before = server.engine.stats()[key];
  const [b0, i0] = [before.batches, before.items];
  const r = await autocannon({
    url: route === 'classify' ? `${server.url}/classify` : `${server.url}/search?q=${encodeURIComponent('a photo of a dog')}&k=10`,
    method: route === 'classify' ? 'POST' : 'GET',
    ...(route === 'classify' ? { headers: { 'content-type': 'application/json' }, body: classifyBody } : {}),
    connections: clients,
    ...(quick ? { amount: Math.max(8, 2 * clients) } : { duration: 10 }),
  });
  const after = server.engine.stats()[key];
  return {
    route: route === 'classify' ? 'POST /classify' : 'GET /search',
    clients,
    rps: r.requests.total / Math.max(r.duration, 1e-3),
    p50: r.latency.p50,
    p99: r.latency.p99,
    meanBatch: (after.items - i0) / Math.max(1, after.batches - b0),
    errors: r.errors + r.timeouts + r.non2xx,
  };
}

function printTable(rows: Row[]): void {
  const head = ['route', 'batching', 'clients', 'req/s', 'p50 ms', 'p99 ms', 'mean batch', 'errors'];
  const cells = rows.map((r) => [r.route, r.batching, String(r.clients), r.rps.toFixed(1), r.p50.toFixed(1), r.p99.toFixed(1), r.meanBatch.toFixed(1), String(r.errors)]);
  const w = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => c.map((x, i) => (i < 2 ? x.padEnd(w[i]!) : x.padStart(w[i]!))).join('  ');
  console.log([line(head), ...cells.map(line)].join('\n'));
}

/** A random model the size of the CIFAR-10 one (ViT-Ti-8-64-like towers at 32 px). */
async function randomModel(work: string): Promise<string> {
  const tokenizer = trainBpe(
    CIFAR10_CLASSES.map((c) => `a photo of a ${c}.`),
    { vocabSize: 1000 },
  );
  const config = fromOpenClip({
    embed_dim: 128,
    vision_cfg: { image_size: 32, layers: 6, width: 192, patch_size: 4, head_width: 64 },
    text_cfg: { context_length: 32, vocab_size: tokenizer.vocabSize, width: 192, heads: 3, layers: 6 },
  });
  const dir = join(work, 'model');
  await ClipModel.random(config, 0).save(dir);
  tokenizer.save(join(dir, 'tokenizer.json'));
  return dir;
}

async function randomStore(dir: string, dim: number, rows: number): Promise<void> {
  const store = await VectorStore.open(dir, { dim });
  const rng = new Rng(1);
  try {
    for (let lo = 0; lo < rows; lo += 5000) {
      const items = Array.from({ length: Math.min(5000, rows - lo) }, (_, i) => ({ id: String(lo + i), vector: Float32Array.from({ length: dim }, () => rng.normal()), caption: `item ${lo + i}` }));
      await store.add(items, { deferIndex: true });
    }
  } finally {
    store.close();
  }
}

// `node dist/bench/serve.js [--quick]` runs it alone.
if (process.argv[1] === fileURLToPath(import.meta.url)) await run({ quick: process.argv.includes('--quick') });
