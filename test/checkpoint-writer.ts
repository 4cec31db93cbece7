// Child process for the SIGKILL-during-save test: writes a training checkpoint of `step` with one
// parameter of `size` floats. Not a test file by itself.
import { fromOpenClip } from '../src/models/config.js';
import { saveCheckpoint } from '../src/train/checkpoint.js';

const [path, step, size] = [process.argv[2]!, Number(process.argv[3]), Number(process.argv[4])];
const config = fromOpenClip({ embed_dim: 8, vision_cfg: { image_size: 8, layers: 1, width: 16, patch_size: 8, head_width: 16 }, text_cfg: { context_length: 4, vocab_size: 600, width: 16, heads: 1, layers: 1 } });
const params = new Map([['big', new Float32Array(size).fill(step)]]);
process.stdout.write('writing\n');
await saveCheckpoint(path, { config, params, optimizer: { step, m: new Map(), v: new Map() }, position: { epoch: 0, batch: step }, extra: {} });
