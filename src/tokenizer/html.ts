// HTML character references, decoded the two ways CLIP's text cleanup does:
//
//  - htmlUnescape: the lenient HTML5 algorithm (what Python's html.unescape
//    implements): numeric references with or without ";", legacy names without
//    ";" and longest-prefix matching ("&notit;" -> "¬it;").
//  - unescapeEntities: ftfy's cautious variant, which only decodes complete
//    "&name;" / "&#num;" references, plus upper-cased names such as "&EACUTE;"
//    that databases produce, so that prose like "this&not that" survives.

import { HTML5_ENTITY_TABLE } from './html-entities.js';
import { WINDOWS_1252_HIGH } from './mojibake.js';

/** entity name (with or without trailing ";") -> replacement text */
const ENTITIES: ReadonlyMap<string, string> = (() => {
  const map = new Map<string, string>();
  for (const pair of HTML5_ENTITY_TABLE.split(/\s+/)) {
    if (!pair) continue;
    const eq = pair.lastIndexOf('=');
    const cps = pair.slice(eq + 1).split(',').map((h) => parseInt(h, 16));
    map.set(pair.slice(0, eq), String.fromCodePoint(...cps));
  }
  return map;
})();

// Code points HTML5 says a numeric reference must not produce: they are
// dropped. (C1 controls are handled before this, see numericReference.)
function isForbiddenCodePoint(cp: number): boolean {
  return (
    (cp >= 0x1 && cp <= 0x8) ||
    cp === 0xb ||
    (cp >= 0xe && cp <= 0x1f) ||
    (cp >= 0x7f && cp <= 0x9f) ||
    (cp >= 0xfdd0 && cp <= 0xfdef) ||
    (cp & 0xfffe) === 0xfffe // U+FFFE, U+FFFF, U+1FFFE, ... noncharacters
  );
}

/** Decode the number of "&#...;" the way the HTML5 spec (and Python) do. */
function numericReference(cp: number): string {
  if (cp === 0) return '\ufffd';
  if (cp === 0x0d) return '\r';
  // References to C1 controls are taken as Windows-1252 bytes: &#150; is "–".
  if (cp >= 0x80 && cp <= 0x9f) return WINDOWS_1252_HIGH[cp - 0x80]!;
  if ((cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) return '\ufffd';
  if (isForbiddenCodePoint(cp)) return '';
  return String.fromCodePoint(cp);
}

const LENIENT_REFERENCE = /&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)/gu;

/** Python's html.unescape: decode every character reference a browser would. */
export function htmlUnescape(text: string): string {
  if (!text.includes('&')) return text;
  return text.replace(LENIENT_REFERENCE, (_all, ref: string) => {
    if (ref[0] === '#') {
      const hex = ref[1] === 'x' || ref[1] === 'X';
      const digits = ref.slice(hex ? 2 : 1).replace(/;$/, '');
      // Digit strings longer than 8 hex / 10 decimal digits are out of range
      // anyway; parseInt would lose precision but stays > 0x10FFFF.
      return numericReference(parseInt(digits, hex ? 16 : 10));
    }
    const exact = ENTITIES.get(ref);
    if (exact !== undefined) return exact;
    // Longest legacy name that prefixes the reference ("&copy2023" -> "©2023").
    const chars = Array.from(ref);
    for (let n = chars.length - 1; n > 1; n--) {
      const name = chars.slice(0, n).join('');
      const hit = ENTITIES.get(name);
      if (hit !== undefined) return hit + chars.slice(n).join('');
    }
    return '&' + ref;
  });
}

/** "&name;" -> text for the strict decoder, including upper-cased names. */
const STRICT_ENTITIES: ReadonlyMap<string, string> = (() => {
  const map = new Map<string, string>();
  for (const [name, value] of ENTITIES) {
    if (!name.endsWith(';')) continue;
    map.set('&' + name, value);
    // Upper-cased forms only for all-lowercase names, and only where the
    // upper-case spelling is not itself something else.
    if (name === name.toLowerCase()) {
      const upper = '&' + name.toUpperCase();
      if (htmlUnescape(upper) === upper) map.set(upper, value.toUpperCase());
    }
  }
  return map;
})();

const STRICT_REFERENCE = /&#?[0-9A-Za-z]{1,24};/g;

/** ftfy's unescape_html: decode only complete, unambiguous references. */
export function unescapeEntities(text: string): string {
  if (!text.includes('&')) return text;
  return text.replace(STRICT_REFERENCE, (ref) => {
    const named = STRICT_ENTITIES.get(ref);
    if (named !== undefined) return named;
    if (ref.startsWith('&#')) {
      const decoded = htmlUnescape(ref);
      // "&#12ab;" only partly decodes; keep such references as they are.
      return decoded.includes(';') ? ref : decoded;
    }
    return ref;
  });
}
