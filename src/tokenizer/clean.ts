// Caption normalisation and pre-tokenisation, as CLIP does before BPE:
//   ftfy fix -> HTML-unescape twice -> strip -> collapse whitespace -> strip -> lower-case
// then a regex splits the text into words, numbers (one digit each),
// punctuation runs, English contractions and the two special tokens.
//
// Python and JavaScript disagree on what "whitespace" is, so the classes are
// spelled out: PY_REGEX_SPACE is \s of the `regex` module CLIP uses,
// PY_STRIP_SPACE what str.strip() removes (it also counts U+001C-U+001F).
//
// Checked against OpenAI's tokenizer (Python 3.11, ftfy 6.3.1, regex
// 2022.10.31) on the fixture texts, ftfy's own test cases and ~9k fuzzed
// strings (mojibake in ten code pages, entities, odd whitespace): all equal.
// Known divergences:
//  - Characters assigned after Unicode 14 (Python 3.11's tables; the regex
//    module has 15.0) may be classed, lower-cased or normalised differently
//    by Node's newer ICU, changing how such text splits.
//  - ftfy cuts lines over 1,000,000 characters into separately fixed pieces;
//    we fix such a line whole.

import { fixText } from './fix-text.js';
import { htmlUnescape } from './html.js';

const PY_REGEX_SPACE = '\\t\\n\\v\\f\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const PY_STRIP_SPACE = PY_REGEX_SPACE + '\\x1c-\\x1f';

const STRIP = new RegExp(`^[${PY_STRIP_SPACE}]+|[${PY_STRIP_SPACE}]+$`, 'g');
const SPACE_RUN = new RegExp(`[${PY_REGEX_SPACE}]+`, 'g');

/** Python's str.strip() */
function pyStrip(text: string): string {
  return text.replace(STRIP, '');
}

/** The exact string CLIP runs its pre-tokeniser on. */
export function cleanText(text: string): string {
  let t = fixText(text);
  t = pyStrip(htmlUnescape(htmlUnescape(t)));
  t = pyStrip(t.replace(SPACE_RUN, ' '));
  // Python's str.lower and toLowerCase agree (both full case mapping,
  // final sigma included) for every character Python 3.11 knows.
  return t.toLowerCase();
}

/**
 * CLIP's split pattern, compiled case-insensitively in Python. The text is
 * already lower case, so the only case-insensitive match left is the long s
 * "ſ", which Python's regex module (and not plain JS) equates with "s"; it
 * is written out instead of using the "i" flag, because with "i" JS would also
 * count U+0345 (combining ypogegrammeni, case-folded to "ι") as a letter.
 * Python's regex counts it as neither a letter nor a non-letter under
 * IGNORECASE, so CLIP silently drops it; so do we.
 */
const SPLIT = new RegExp(
  [
    '<\\|[sſ]tartoftext\\|>',
    '<\\|endoftext\\|>',
    "'[sſ]|'t|'re|'ve|'m|'ll|'d",
    '\\p{L}+',
    '\\p{N}',
    `[^${PY_REGEX_SPACE}\\p{L}\\p{N}\\u0345]+`,
  ].join('|'),
  'gu',
);

/** Split cleaned text into the pieces that BPE encodes one at a time. */
export function preTokenize(cleaned: string): string[] {
  return cleaned.match(SPLIT) ?? [];
}
