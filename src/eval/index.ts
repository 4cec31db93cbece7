// Evaluation: zero-shot classification with prompt ensembles, image↔text retrieval recall@k, and a
// linear probe on frozen features; plus reading an image folder by class for the CLI.
export {
  TEMPLATES,
  classifierWeights,
  encodeTexts,
  promptEnsemble,
  promptsFor,
  zeroShot,
  normalizeRows,
  forEachScoreBlock,
  rankOf,
  type ClassifierOptions,
  type ZeroShotOptions,
  type ZeroShotResult,
} from './zeroshot.js';
export { retrieval, type RetrievalOptions, type RetrievalResult } from './retrieval.js';
export { linearProbe, probeAccuracy, stratifiedSplit, takeRows, type ProbeOptions, type ProbeResult, type Split } from './probe.js';
export { IMAGE_EXTENSIONS, classNameOf, decodeFiles, listImageFolder, type DecodedBatch, type ImageFolder, type ListOptions } from './folder.js';
