// Child process for the SIGKILL-during-save test: writes a training checkpoint of `step` with one
// parameter of `size` floats. Not a test file by itself.
import { saveCheckpoint } from '../src/train/checkpoint.js';

const [path, step, size] = [process.argv[2]!, Number(process.argv[3]), Number(process.argv[4])];
const params = new Map([['big', new Float32Array(size).fill(step)]]);
process.stdout.write('writing\n');
await saveCheckpoint(path, { kind: 'test', modelConfig: { size }, params, optimizer: { step, m: new Map(), v: new Map() }, position: { epoch: 0, batch: step }, extra: {} });
