// Byte-level alphabet of GPT-2/CLIP BPE.
//
// BPE works on strings, but we want every possible UTF-8 byte to be a symbol,
// so no input is ever out of vocabulary. Each of the 256 byte values is given
// a printable stand-in character: bytes that already are printable, non-space
// Latin-1 characters keep their own character; the other 68 (control bytes,
// space, DEL, NBSP, soft hyphen, ...) are moved to U+0100 upwards, in byte
// order. The merges file is written in these stand-in characters.

/** Bytes that stand for themselves: '!'..'~', '¡'..'¬', '®'..'ÿ'. */
function selfMappedBytes(): number[] {
  const bytes: number[] = [];
  const ranges: [number, number][] = [
    [0x21, 0x7e],
    [0xa1, 0xac],
    [0xae, 0xff],
  ];
  for (const [lo, hi] of ranges) for (let b = lo; b <= hi; b++) bytes.push(b);
  return bytes;
}

/**
 * The byte values in vocabulary order (self-mapped bytes first, then the rest
 * ascending), paired with their stand-in characters. The vocabulary's first
 * 256 ids follow this order, the next 256 are the same symbols + "</w>".
 */
export const BYTE_ALPHABET: readonly { byte: number; char: string }[] = (() => {
  const order = selfMappedBytes();
  const chars = order.map((b) => String.fromCharCode(b));
  const isSelf = new Set(order);
  let next = 0x100;
  for (let b = 0; b < 256; b++) {
    if (isSelf.has(b)) continue;
    order.push(b);
    chars.push(String.fromCharCode(next++));
  }
  return order.map((byte, i) => ({ byte, char: chars[i]! }));
})();

/** byte value -> stand-in character */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const table = new Array<string>(256);
  for (const { byte, char } of BYTE_ALPHABET) table[byte] = char;
  return table;
})();

/** stand-in character code -> byte value (-1 where not a stand-in) */
const CHAR_TO_BYTE: Int16Array = (() => {
  const table = new Int16Array(0x200).fill(-1);
  for (const { byte, char } of BYTE_ALPHABET) table[char.charCodeAt(0)] = byte;
  return table;
})();

const utf8Encoder = new TextEncoder();
// Not fatal: invalid sequences become U+FFFD, like Python's errors="replace".
const utf8Decoder = new TextDecoder('utf-8', { fatal: false });

/** UTF-8 encode `text` and spell each byte with its stand-in character. */
export function toByteChars(text: string): string {
  const bytes = utf8Encoder.encode(text);
  let out = '';
  for (const b of bytes) out += BYTE_TO_CHAR[b];
  return out;
}

/**
 * Inverse of toByteChars: map stand-in characters back to bytes and decode
 * them as UTF-8, replacing invalid sequences (a decoded id sequence may stop
 * in the middle of a multi-byte character).
 */
export function fromByteChars(chars: string): string {
  const bytes = new Uint8Array(chars.length);
  for (let i = 0; i < chars.length; i++) {
    const code = chars.charCodeAt(i);
    const b = code < CHAR_TO_BYTE.length ? CHAR_TO_BYTE[code]! : -1;
    if (b < 0) {
      throw new Error(`character U+${code.toString(16).toUpperCase()} is not a byte symbol`);
    }
    bytes[i] = b;
  }
  return utf8Decoder.decode(bytes);
}
