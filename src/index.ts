// The public API: a few re-exports; everything else is internal.
export { loadClip, type LoadClipOptions } from './models/load.js';
export { ClipModel, type Features } from './models/clip-model.js';
export type { ClipConfig } from './models/clip.js';
export { fromOpenClip, listPresets, preset } from './models/config.js';
export { loadTokenizer, trainBpe } from './tokenizer/index.js';
export { createClipTrainer, type ClipTrainer, type ClipTrainerOptions } from './train/clip-trainer.js';
