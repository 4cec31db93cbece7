// clipkit serve: the HTTP JSON API (/classify, /embed, /search, /health, /stats) and a web page at /,
// with inference in worker threads and dynamic micro-batching (see src/serve/).
import { clipkitCacheDir } from '../../hub/cache.js';
import { parse, usage, UsageError, INT8_OPTION, quantizeOf } from '../args.js';
import { CIFAR10_CLASSES, resolveModel } from '../default-model.js';
import type { Command } from '../main.js';

const SPECS = {
  model: { type: 'string', help: 'model: a directory, a .safetensors file, or a pulled repo id (default: the shipped CIFAR-10 model)' },
  tokenizer: { type: 'string', help: "tokenizer vocabulary file or directory (default: the model's directory)" },
  db: { type: 'string', help: 'vector store directory (from clipkit index) for /search and the gallery' },
  port: { type: 'int', default: 8080, min: 0, max: 65535, help: 'port (0: any free port)' },
  host: { type: 'string', default: '127.0.0.1', help: 'address to listen on (0.0.0.0 exposes the server to the network)' },
  workers: { type: 'int', default: 1, min: 1, max: 64, help: 'inference worker threads' },
  threads: { type: 'int', min: 1, help: 'ONNX Runtime threads per worker (default: cores / workers)' },
  'max-batch': { type: 'int', default: 32, min: 1, max: 1024, help: 'largest micro-batch per tower run (1: no batching)' },
  'max-queue': { type: 'int', default: 256, min: 1, help: 'items waiting per tower before requests get 503' },
  'batch-window': { type: 'float', default: 3, min: 0, max: 1000, help: 'ms to collect concurrent requests into one batch when a worker is idle' },
  'max-body': { type: 'float', default: 10, min: 0.001, help: 'largest request body / uploaded file, in MiB (larger: 413)' },
  labels: { type: 'string', help: 'labels /classify uses when a request gives none (default on the shipped model: CIFAR-10 classes)' },
  'image-root': { type: 'string', help: 'directory relative image paths of the store resolve against; images outside it are not served' },
  log: { type: 'boolean', help: 'log every request (JSON lines on stdout)' },
  int8: INT8_OPTION,
  help: { type: 'boolean', short: 'h', help: 'show this help' },
} as const;

const serve: Command = {
  summary: 'HTTP API + web page: classify, embed and search with a CLIP model',
  async run(argv) {
    const { opts, positionals } = parse('serve', argv, SPECS);
    if (opts.help) return console.log(usage('serve', this.summary, SPECS));
    if (positionals.length) throw new UsageError(`serve: unexpected argument '${positionals[0]}'`);
    const model = resolveModel('serve', opts.model);
    const { parseLabels } = await import('../../serve/zeroshot.js');
    let defaultLabels: string[] | undefined;
    try {
      defaultLabels = opts.labels !== undefined ? parseLabels(opts.labels) : model.isDefault ? [...CIFAR10_CLASSES] : undefined;
    } catch (e) {
      throw new UsageError(`serve: --labels: ${(e as Error).message}`);
    }
    const { startServe } = await import('../../serve/start.js');
    const server = await startServe({
      modelPath: model.path,
      tokenizer: opts.tokenizer,
      cacheRoot: clipkitCacheDir(),
      db: opts.db,
      port: opts.port,
      host: opts.host,
      workers: opts.workers,
      threads: opts.threads,
      quantize: quantizeOf(opts.int8),
      maxBatch: opts['max-batch'],
      maxQueue: opts['max-queue'],
      windowMs: opts['batch-window'],
      maxBody: Math.round(opts['max-body'] * 1024 * 1024),
      defaultLabels,
      imageRoot: opts['image-root'],
      logger: opts.log,
    });
    console.error(`serve: listening on ${server.url} (model ${model.path}; ${opts.workers} worker(s), max batch ${opts['max-batch']})`);
    await new Promise<void>((resolve) => {
      const stop = (): void => {
        console.error('serve: shutting down');
        server.close().then(resolve, resolve);
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    });
  },
};
export default serve;
