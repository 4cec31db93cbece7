// Child-process probe for the GradCache memory test: one full-batch step or one accumulated step on
// a small CLIP, then prints the peak resident set size. Not a test file by itself.
import { ClipModel } from '../src/models/clip-model.js';
import { fromOpenClip } from '../src/models/config.js';
import { createClipTrainer } from '../src/train/clip-trainer.js';

const [accum, batch] = [Number(process.argv[2]), Number(process.argv[3])];
const cfg = fromOpenClip({
  embed_dim: 64,
  vision_cfg: { image_size: 32, layers: 2, width: 128, patch_size: 4, head_width: 64 },
  text_cfg: { context_length: 16, vocab_size: 256, width: 64, heads: 2, layers: 2 },
});
const model = ClipModel.random(cfg, 0, { threads: 1 });
const trainer = createClipTrainer(model, { accumFreq: accum, threads: 1 });
const pixels = new Float32Array(batch * 3 * 32 * 32).map((_, i) => Math.sin(i));
const ids = new Int32Array(batch * 16).map((_, i) => (i % 16 === 15 ? 255 : (i * 7) % 200));
const before = process.resourceUsage().maxRSS;
const r = await trainer.step({ pixels: { data: pixels, shape: [batch, 3, 32, 32] }, tokens: { data: ids, shape: [batch, 16] } });
console.log(JSON.stringify({ loss: r.loss, maxRssKiB: process.resourceUsage().maxRSS, beforeKiB: before }));
