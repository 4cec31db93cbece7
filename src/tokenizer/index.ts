// CLIP's byte-level BPE tokenizer (compatible with OpenAI's ids) and BPE training.
export {
  ClipTokenizer,
  EOT_TEXT,
  SOT_TEXT,
  standardVocab,
  type EncodeOptions,
  type EncodedBatch,
  type Merge,
  type SavedTokenizer,
} from './bpe.js';
export { cleanText, preTokenize } from './clean.js';
export { fixText } from './fix-text.js';
export { loadTokenizer, OPENAI_VOCAB_FILE, parseHfMerges, parseOpenAiMerges } from './load.js';
export { trainBpe, type TrainOptions } from './train.js';
