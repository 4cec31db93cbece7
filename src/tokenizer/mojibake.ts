// Mojibake repair: undo "UTF-8 bytes decoded with a single-byte code page",
// e.g. "cafÃ©" -> "café", "â€œhiâ€\x9d" -> "“hi”".
//
// CLIP cleans captions with ftfy.fix_text, so to produce the same ids we must
// make the same repairs. This follows the algorithm and heuristics of ftfy 6.3
// (Apache-2.0, Robyn Speer): a text is only touched if a "badness" pattern of
// unlikely character pairs finds likely mojibake; then we try to re-encode the
// whole text in each candidate code page and decode the bytes as UTF-8; failing
// that, we repair embedded UTF-8-looking runs one at a time.
//
// Bytes are handled as "binary strings" (one char per byte, U+0000-U+00FF) so
// ordinary regexes can look for byte patterns.

import { CATEGORIES as C, CODE_PAGES, UTF8_CLUES as U } from './mojibake-tables.js';

/** What bytes 0x80-0x9F mean in (sloppy) Windows-1252. */
export const WINDOWS_1252_HIGH: string = CODE_PAGES.find((p) => p.name === 'sloppy-windows-1252')!.high;

// Python's `re` meanings of \s and \w, which the heuristics were written for.
const PY_SPACE = '\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const PY_WORD = '\\p{L}\\p{N}_';

/**
 * Unlikely juxtapositions of characters that mojibake is made of (accented
 * letters next to currency signs, box drawing next to letters, "Ã" + symbol,
 * ...). One match is enough to call a text "bad".
 */
const BADNESS = new RegExp(
  [
    `[${C.c1}]`,
    `[${C.bad}${C.lower_accented}${C.upper_accented}${C.box}${C.start_punctuation}${C.end_punctuation}${C.currency}${C.numeric}${C.law}][${C.bad}]`,
    `[a-zA-Z][${C.lower_common}${C.upper_common}][${C.bad}]`,
    `[${C.bad}][${C.lower_accented}${C.upper_accented}${C.box}${C.start_punctuation}${C.end_punctuation}${C.currency}${C.numeric}${C.law}]`,
    `[${C.lower_accented}${C.lower_common}${C.box}${C.end_punctuation}${C.currency}${C.numeric}][${C.upper_accented}]`,
    `[${C.box}${C.end_punctuation}${C.currency}${C.numeric}][${C.lower_accented}]`,
    `[${C.lower_accented}${C.box}${C.end_punctuation}][${C.currency}]`,
    `[${PY_SPACE}][${C.upper_accented}][${C.currency}]`,
    `[${C.upper_accented}${C.box}][${C.numeric}${C.law}]`,
    `[${C.lower_accented}${C.upper_accented}${C.box}${C.currency}${C.end_punctuation}][${C.start_punctuation}][${C.numeric}]`,
    `[${C.lower_accented}${C.upper_accented}${C.currency}${C.numeric}${C.box}${C.law}][${C.end_punctuation}][${C.start_punctuation}]`,
    `[${C.currency}${C.numeric}${C.box}][${C.start_punctuation}]`,
    `[a-z][${C.upper_accented}][${C.start_punctuation}${C.currency}]`,
    `[${C.box}][${C.kaomoji}]`,
    `[${C.lower_accented}${C.upper_accented}${C.currency}${C.numeric}${C.start_punctuation}${C.end_punctuation}${C.law}][${C.box}]`,
    `[${C.box}][${C.end_punctuation}]`,
    `[${C.lower_accented}${C.upper_accented}][${C.start_punctuation}${C.end_punctuation}][${PY_WORD}]`,
    // the ligature œ when not followed by an unaccented Latin letter
    `[Œœ][^A-Za-z]`,
    // degree signs after capital letters
    `[${C.upper_accented}]°`,
    // common Windows-1252 two-character mojibake not covered above
    `[ÂÃÎÐ][€œŠš¢£Ÿž\\xa0\\xad®©°·»${C.start_punctuation}${C.end_punctuation}–—´]`,
    `×[²³]`,
    // Windows-1252 mojibake of Arabic: four characters, as "common" ones take part
    `[ØÙ][${C.common}${C.currency}${C.bad}${C.numeric}${C.start_punctuation}ŸŠ®°µ»][ØÙ][${C.common}${C.currency}${C.bad}${C.numeric}${C.start_punctuation}ŸŠ®°µ»]`,
    // Windows-1252 starts of three-byte South Asian letters
    `à[²µ¹¼½¾]`,
    // MacRoman mojibake
    `√[±∂†≠®™´≤≥¥µø]`,
    `≈[°¢]`,
    `‚Ä[ìîïòôúùû†°¢π]`,
    `‚[âó][àä°ê]`,
    // Windows-1251 mojibake of U+2000-range punctuation, Latin-1 and Cyrillic
    `вЂ`,
    `[ВГРС][${C.c1}${C.bad}${C.start_punctuation}${C.end_punctuation}${C.currency}°µ][ВГРС]`,
    `ГўВЂВ.[A-Za-z ]`,
    // Windows-1252 forms of "à", "á" and NBSP
    `Ã[\\xa0¡]`,
    `[a-z][${PY_SPACE}]?[ÃÂ][ ]`,
    `^[ÃÂ][ ]`,
    // "Â" in front of the very character it was meant to be
    `[a-z.,?!${C.end_punctuation}]Â[ ${C.start_punctuation}${C.end_punctuation}]`,
    // Windows-1253 (Greek) and Windows-1257 (Baltic) mojibake
    `β€[™\\xa0Ά\\xad®°]`,
    `[ΒΓΞΟ][${C.c1}${C.bad}${C.start_punctuation}${C.end_punctuation}${C.currency}°][ΒΓΞΟ]`,
    `ā€`,
  ].join('|'),
  'u',
);

export function looksLikeMojibake(text: string): boolean {
  return BADNESS.test(text);
}

/** Runs of characters that look like UTF-8 sequences read in a single-byte page. */
const UTF8_LOOKALIKE_SOURCE =
  `(?<![${U.utf8_continuation_strict}])` +
  `(?:[${U.utf8_first_of_2}][${U.utf8_continuation}]` +
  `|[${U.utf8_first_of_3}][${U.utf8_continuation}]{2}` +
  `|[${U.utf8_first_of_4}][${U.utf8_continuation}]{3})+`;
const HAS_UTF8_LOOKALIKE = new RegExp(UTF8_LOOKALIKE_SOURCE, 'u');
const UTF8_LOOKALIKES = new RegExp(UTF8_LOOKALIKE_SOURCE, 'gu');

interface CodePage {
  name: string;
  sloppy: boolean;
  encode: Map<string, number>;
}

/** char -> byte maps; a "sloppy" page writes U+FFFD as byte 0x1A. */
const PAGES: CodePage[] = CODE_PAGES.map(({ name, sloppy, high }) => {
  const encode = new Map<string, number>();
  for (let b = 0; b < 0x80; b++) if (!(sloppy && b === 0x1a)) encode.set(String.fromCharCode(b), b);
  if (sloppy) encode.set('\ufffd', 0x1a);
  Array.from(high).forEach((ch, i) => encode.set(ch, 0x80 + i));
  return { name, sloppy, encode };
});

/** The text as a binary string in `page`, or null if it does not fit. */
function encodeIn(text: string, page: CodePage): string | null {
  let out = '';
  for (const ch of text) {
    const b = page.encode.get(ch);
    if (b === undefined) return null;
    out += String.fromCharCode(b);
  }
  return out;
}

// UTF-8 sequences that would be valid had a 0xA0 byte not been turned into
// a space by some program that considered it "basically a space".
const SPACE_FOR_A0 =
  /[\xc2\xc3\xc5\xce\xd0\xd9] |[\xe2\xe3] [\x80-\x84\x86-\x9f\xa1-\xbf]|[\xe0-\xe3][\x80-\x84\x86-\x9f\xa1-\xbf] |\xf0 [\x80-\xbf]{2}|\xf0[\x80-\xbf] [\x80-\xbf]|\xf0[\x80-\xbf]{2} /g;
// "Ã " on its own is usually "à " (as in "à la"); Portuguese "às", "àquele"... excepted.
const A_GRAVE_WORD = /\xc3 (?! |quele|quela|quilo|s )/g;

function restoreA0Bytes(bytes: string): string {
  return bytes.replace(A_GRAVE_WORD, '\xc3\xa0 ').replace(SPACE_FOR_A0, (m) => m.replace(/ /g, '\xa0'));
}

// UTF-8 sequences whose continuation bytes were lost to U+FFFD (byte 0x1A in
// a sloppy page) or, once per sequence, to "?": decode the sequence as U+FFFD.
const LOSSY_UTF8 =
  /[\xc2-\xdf]\x1a|[\xc2-\xc3]\?|\xed[\xa0-\xaf][\x1a?]\xed[\xb0-\xbf][\x1a?\x80-\xbf]|\xed[\xa0-\xaf][\x1a?\x80-\xbf]\xed[\xb0-\xbf][\x1a?]|[\xe0-\xef][\x1a?][\x1a\x80-\xbf]|[\xe0-\xef][\x1a\x80-\xbf][\x1a?]|[\xf0-\xf4][\x1a?][\x1a\x80-\xbf]{2}|[\xf0-\xf4][\x1a\x80-\xbf][\x1a?][\x1a\x80-\xbf]|[\xf0-\xf4][\x1a\x80-\xbf]{2}[\x1a?]|\x1a/g;

// CESU-8 (UTF-16 surrogates each encoded as UTF-8) and Java's C0 80 for NUL.
const CESU8_PAIR = /\xed([\xa0-\xaf])([\x80-\xbf])\xed([\xb0-\xbf])([\x80-\xbf])/g;

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** Decode a binary string as UTF-8 (tolerating CESU-8/Java variants); null if invalid. */
function decodeUtf8(bytes: string): string | null {
  if (bytes.includes('\xed') || bytes.includes('\xc0')) {
    bytes = bytes.replace(/\xc0\x80/g, '\x00').replace(CESU8_PAIR, (_m, b1: string, b2: string, b4: string, b5: string) => {
      const cp =
        0x10000 +
        ((b1.charCodeAt(0) & 0x0f) << 16) +
        ((b2.charCodeAt(0) & 0x3f) << 10) +
        ((b4.charCodeAt(0) & 0x0f) << 6) +
        (b5.charCodeAt(0) & 0x3f);
      return Buffer.from(String.fromCodePoint(cp), 'utf8').toString('latin1');
    });
  }
  try {
    return strictUtf8.decode(Buffer.from(bytes, 'latin1'));
  } catch {
    return null;
  }
}

/** Treat C1 control characters as the Windows-1252 characters they usually were. */
export function fixC1Controls(text: string): string {
  return text.replace(/[\x80-\x9f]/g, (c) => WINDOWS_1252_HIGH[c.charCodeAt(0) - 0x80]!);
}

// Bytes Windows-1252 leaves unassigned: strict decoding fails on them.
const UNASSIGNED_1252 = /[\x81\x8d\x8f\x90\x9d]/;

function fixOneStep(text: string): string {
  if (/^[\x00-\x7f]*$/.test(text) || !looksLikeMojibake(text)) return text;

  const fitting: string[] = [];
  for (const page of PAGES) {
    let bytes = encodeIn(text, page);
    if (bytes === null) continue;
    fitting.push(page.name);
    // MacRoman is excluded: there "– " would look like a broken sequence.
    if (page.name !== 'macroman') bytes = restoreA0Bytes(bytes);
    if (page.sloppy) bytes = bytes.replace(LOSSY_UTF8, '\xef\xbf\xbd');
    const decoded = decodeUtf8(bytes);
    if (decoded !== null) return decoded;
  }

  // Mojibake mixed into otherwise fine text: repair each suspicious run alone.
  if (HAS_UTF8_LOOKALIKE.test(text)) {
    const fixed = text.replace(UTF8_LOOKALIKES, (run) =>
      run.length < text.length && looksLikeMojibake(run) ? fixEncoding(run) : run,
    );
    if (fixed !== text) return fixed;
  }

  // Latin-1 text with C1 controls was most likely meant as Windows-1252.
  // (ftfy would keep text that fits both pages, but its check asks for a page
  // name it never records, so in effect it always tries this; so do we.)
  if (fitting.includes('latin-1') && !UNASSIGNED_1252.test(text)) {
    const fixed = fixC1Controls(text);
    if (fixed !== text) return fixed;
  }
  if (/[\x80-\x9f]/.test(text)) return fixC1Controls(text);
  return text;
}

/** Repeatedly undo mojibake until the text stops changing. */
export function fixEncoding(text: string): string {
  for (;;) {
    const next = fixOneStep(text);
    if (next === text) return text;
    text = next;
  }
}
