// clipkit info: the architecture presets, or the architecture and size of a checkpoint.
import { loadClip } from '../../models/load.js';
import { listPresets, preset, toOpenClip } from '../../models/config.js';
import { parse, usage } from '../args.js';
import type { Command } from '../main.js';

const SPECS = { json: { type: 'boolean', help: 'print JSON' }, help: { type: 'boolean', short: 'h', help: 'show this help' } } as const;

const info: Command = {
  summary: 'list architecture presets, or describe a model (path)',
  async run(argv) {
    const { opts, positionals } = parse('info', argv, SPECS);
    if (opts.help) return console.log(usage('info', this.summary, SPECS, '[model path]'));
    if (positionals.length === 0) {
      const rows = listPresets().map((n) => ({ name: n, ...toOpenClip(preset(n)) }));
      if (opts.json) return console.log(JSON.stringify(rows, null, 2));
      for (const r of rows) console.log(`${r.name.padEnd(14)} image ${r.vision_cfg.image_size}/${r.vision_cfg.patch_size} width ${r.vision_cfg.width}×${r.vision_cfg.layers}  text ${r.text_cfg.width}×${r.text_cfg.layers}  embed ${r.embed_dim}`);
      return;
    }
    const model = await loadClip(positionals[0]!);
    const count = [...model.params.values()].reduce((a, v) => a + v.length, 0);
    const out = { path: positionals[0], parameters: count, config: toOpenClip(model.config), logitScale: Math.exp(model.logitScale) };
    console.log(opts.json ? JSON.stringify(out, null, 2) : `${out.path}: ${(count / 1e6).toFixed(2)}M parameters, logit scale ${out.logitScale.toFixed(2)}\n${JSON.stringify(out.config)}`);
  },
};
export default info;
