// fixText: the text repairs that ftfy.fix_text (ftfy 6.x) applies with its
// default settings, which is how CLIP's tokenizer cleans every caption:
// HTML entities, mojibake, C1 controls, Latin ligatures, full/half-width
// forms, curly quotes, line breaks, lone surrogates, terminal escapes,
// invisible control characters, then NFC. (Yes, curly quotes are
// straightened by default: ’ becomes ', which changes CLIP's ids.)

import { unescapeEntities } from './html.js';
import { fixC1Controls, fixEncoding } from './mojibake.js';

/** Ligatures of Latin letters (copy/paste artefacts), spelled out. */
const LIGATURES: Record<string, string> = {
  'Ĳ': 'IJ', 'ĳ': 'ij', 'ŉ': 'ʼn', 'Ǳ': 'DZ', 'ǲ': 'Dz', 'ǳ': 'dz',
  'Ǆ': 'DŽ', 'ǅ': 'Dž', 'ǆ': 'dž', 'Ǉ': 'LJ', 'ǈ': 'Lj', 'ǉ': 'lj',
  'Ǌ': 'NJ', 'ǋ': 'Nj', 'ǌ': 'nj', 'ﬀ': 'ff', 'ﬁ': 'fi', 'ﬂ': 'fl',
  'ﬃ': 'ffi', 'ﬄ': 'ffl', 'ﬅ': 'ſt', 'ﬆ': 'st',
};
const LIGATURE_RE = new RegExp(`[${Object.keys(LIGATURES).join('')}]`, 'gu');

/** Full-width ASCII, half-width katakana/hangul -> normal width; U+3000 -> space. */
function fixCharacterWidth(text: string): string {
  return text.replace(/[\u3000\uff01-\uffef]/g, (c) => (c === '\u3000' ? ' ' : c.normalize('NFKC')));
}

function uncurlQuotes(text: string): string {
  return text.replace(/[\u201c-\u201f]/g, '"').replace(/[\u02bc\u2018-\u201b]/g, "'");
}

function fixLineBreaks(text: string): string {
  return text.replace(/\r\n|[\r\u2028\u2029\u0085]/g, '\n');
}

/** JS strings cannot hold surrogate pairs as two code points, so only lone halves remain. */
function fixSurrogates(text: string): string {
  return text.replace(/\p{Cs}/gu, '\ufffd');
}

function removeTerminalEscapes(text: string): string {
  return text.replace(/\x1b\[(?:\p{Nd}|;)*[a-zA-Z]/gu, '');
}

/**
 * Control characters nobody means to keep: C0 controls other than tab, line
 * feed, form feed and carriage return; DEL; deprecated Arabic format controls;
 * interlinear annotation marks; U+FFFC; the byte-order mark. (C1 controls are
 * left to the mojibake repair; joiners and bidi marks are kept.)
 */
function removeControlChars(text: string): string {
  return text.replace(/[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]/g, '');
}

/** One line ("segment"), fixed until it stops changing. */
function fixSegment(text: string, unescapeHtml: boolean): string {
  for (;;) {
    const before = text;
    if (unescapeHtml) text = unescapeEntities(text);
    text = fixEncoding(text);
    text = fixC1Controls(text);
    text = text.replace(LIGATURE_RE, (c) => LIGATURES[c]!);
    text = fixCharacterWidth(text);
    text = uncurlQuotes(text);
    text = fixLineBreaks(text);
    text = fixSurrogates(text);
    text = removeTerminalEscapes(text);
    text = removeControlChars(text);
    text = text.normalize('NFC');
    if (text === before) return text;
  }
}

/** ftfy.fix_text(text) with default settings. */
export function fixText(text: string): string {
  // Fast path: printable ASCII, tabs and newlines, with no "&", is something
  // none of the fixers would change (most captions).
  if (/^[\t\n\x20-\x25\x27-\x7e]*$/.test(text)) return text;
  // ftfy works line by line (each line keeps its "\n"). HTML entities are
  // decoded unless the text looks like real HTML, i.e. contains "<"; once a
  // line with "<" has been seen, later lines are not unescaped either.
  // (ftfy also splits lines longer than a million characters; captions never are.)
  let unescapeHtml = true;
  let out = '';
  let pos = 0;
  while (pos < text.length) {
    const newline = text.indexOf('\n', pos);
    const end = newline < 0 ? text.length : newline + 1;
    const segment = text.slice(pos, end);
    if (unescapeHtml && segment.includes('<')) unescapeHtml = false;
    out += fixSegment(segment, unescapeHtml);
    pos = end;
  }
  return out;
}
