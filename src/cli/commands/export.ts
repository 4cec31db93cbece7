// clipkit export: the two towers of a CLIP model as standalone ONNX models (vision.onnx, text.onnx)
// plus clipkit-export.json, for any ONNX Runtime (node, web/wasm, python, …) without clipkit.
import { fmtBytes } from '../../graph/export.js';
import { loadClip } from '../../models/load.js';
import { checkExport, METADATA_FILE } from '../../models/export.js';
import { parse, usage, UsageError, INT8_OPTION, quantizeOf } from '../args.js';
import type { Command } from '../main.js';

const SPECS = {
  model: { type: 'string', help: 'model: a .safetensors file or a model directory (OpenCLIP or Hugging Face layout)' },
  out: { type: 'string', help: `output directory: vision.onnx, text.onnx, ${METADATA_FILE}` },
  'external-data': { type: 'string', default: 'auto', choices: ['auto', 'always', 'never'], help: "weights in a <model>.onnx.data side file: 'auto' past protobuf's 2 GB limit" },
  batch: { type: 'string', default: 'dynamic', help: "batch dimension: 'dynamic' or a fixed positive integer" },
  'text-length': { type: 'int', min: 1, help: "token sequence length of text.onnx (default: the model's context length)" },
  'opset-check': { type: 'boolean', help: 'check the ops against the declared opsets, then load the written files in ONNX Runtime and compare with clipkit' },
  json: { type: 'boolean', help: 'print the export metadata as JSON' },
  int8: INT8_OPTION,
  help: { type: 'boolean', short: 'h', help: 'show this help' },
} as const;

/** Largest accepted |exported − in-process| feature difference in --opset-check (same kernels: ~0). */
const CHECK_TOLERANCE = 1e-4;

const exportCommand: Command = {
  summary: 'write the image and text towers as standalone ONNX models',
  async run(argv) {
    const started = performance.now();
    const { opts, positionals } = parse('export', argv, SPECS);
    if (opts.help) return console.log(usage('export', this.summary, SPECS));
    if (positionals.length > 0) throw new UsageError(`export: unexpected argument '${positionals[0]}' (options are --model, --out, …)`);
    if (!opts.model) throw new UsageError('export: --model <path> is required');
    if (!opts.out) throw new UsageError('export: --out <directory> is required');
    const batch = parseBatch(opts.batch);

    const model = await loadClip(opts.model, { quantize: quantizeOf(opts.int8) });
    const ctx = model.config.text.contextLength;
    if (opts['text-length'] !== undefined && opts['text-length'] > ctx) {
      throw new UsageError(`export: --text-length must be ≤ ${ctx} (the model's context length), got ${opts['text-length']}`);
    }
    const meta = await model.exportOnnx(opts.out, {
      batch,
      textLength: opts['text-length'],
      externalData: opts['external-data'] as 'auto' | 'always' | 'never',
      quantize: quantizeOf(opts.int8),
    });
    const seconds = (performance.now() - started) / 1000;

    let check: Awaited<ReturnType<typeof checkExport>> | undefined;
    if (opts['opset-check']) {
      check = await checkExport(model, opts.out, meta);
      const bad = [...check.problems];
      for (const k of ['vision', 'text'] as const) {
        if (!(check[k] <= CHECK_TOLERANCE)) bad.push(`${k}.onnx: features differ from clipkit's by ${check[k]}`);
      }
      if (bad.length) throw new Error(`export: the check failed:\n  ${bad.join('\n  ')}`);
    }

    if (opts.json) return console.log(JSON.stringify({ out: opts.out, seconds, ...(check ? { check } : {}), ...meta }, null, 2));
    for (const m of [meta.models.vision, meta.models.text]) {
      const ext = m.externalData ? ` + ${m.externalData.file} ${fmtBytes(m.externalData.bytes)} (${m.externalData.tensors} tensors)` : '';
      const io = (xs: typeof m.inputs) => xs.map((x) => `${x.name} ${x.dtype}[${x.shape.join(', ')}]`).join(', ');
      console.log(`${m.file.padEnd(11)} ${fmtBytes(m.bytes)}${ext}   ${io(m.inputs)} → ${io(m.outputs)}`);
    }
    const contrib = [meta.models.vision.ops, meta.models.text.ops].flatMap((ops) => Object.entries(ops).filter(([d]) => d !== 'ai.onnx').flatMap(([d, xs]) => xs.map((x) => `${d}.${x}`)));
    if (contrib.length) console.log(`contrib ops: ${[...new Set(contrib)].join(', ')}`);
    if (check) console.log(`check: opsets ok; features match clipkit (max diff vision ${check.vision.toExponential(1)}, text ${check.text.toExponential(1)})`);
    console.log(`wrote ${opts.out} in ${seconds.toFixed(2)} s`);
  },
};
export default exportCommand;

function parseBatch(v: string): 'dynamic' | number {
  if (v === 'dynamic') return v;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1) throw new UsageError(`export: --batch must be 'dynamic' or a positive integer, got '${v}'`);
  return n;
}
