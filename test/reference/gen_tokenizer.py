#!/usr/bin/env python3
"""Writes test/reference/fixtures/tokenizer.json: texts and the ids that OpenAI's
own CLIP tokenizer gives them, for test/tokenizer.test.ts to compare against.

OpenAI's code is not part of this repository. Get `clip/simple_tokenizer.py`
from the openai/CLIP repository and pass its path:

    python3 test/reference/gen_tokenizer.py /path/to/simple_tokenizer.py [bpe_simple_vocab_16e6.txt.gz]

(or set CLIP_SIMPLE_TOKENIZER). It needs the `ftfy` and `regex` modules on the
Python path. The vocabulary defaults to ../shared/data/clip-bpe/ beside the
repository. Rows are built as clip.tokenize builds them (without torch):
start token, ids, end token; too-long texts are truncated to 77 ids whose last
is the end token.
"""

import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_VOCAB = os.path.join(REPO, "..", "shared", "data", "clip-bpe", "bpe_simple_vocab_16e6.txt.gz")
OUT = os.path.join(HERE, "fixtures", "tokenizer.json")
CONTEXT_LENGTH = 77

LONG_CAPTION = (
    "A very long caption that goes on and on, describing a sunny beach with palm trees, "
    "a red umbrella, two children building an elaborate sandcastle with towers and moats, "
    "seagulls circling overhead, a lighthouse in the distance, sailboats on the horizon, "
    "a dog chasing a frisbee, an ice-cream vendor with a striped cart, and footprints "
    "leading towards the gentle waves under a cloudless blue sky in the late afternoon."
)

TEXTS = [
    # plain captions
    "a photo of a cat",
    "A photo of a dog.",
    "a diagram",
    "",
    "   ",
    "A PHOTO OF A CAT IN UPPER CASE",
    "MiXeD CaSe WoRdS",
    "the quick brown fox jumps over the lazy dog",
    # punctuation and contractions
    "Don't worry, I'll be fine. It's OK!",
    "we're here; they've gone; I'm done; she'd go",
    "'s 't 're 've 'm 'll 'd",
    "DON'T SHOUT, IT'S LOUD",
    "hello!!! what?!? ... (parentheses) [brackets] {braces}",
    "email@example.com http://example.com/path?q=1&r=2",
    "#hashtag @mention $100 50% a+b=c ~tilde~ `code`",
    "rock'n'roll o'clock",
    # numbers
    "1234567890",
    "the year 2023 had 365 days and 3.14159 is pi",
    "a 4k 60fps 1080p video",
    "Ⅻ ½ ² ٣ ३",
    # accents and other scripts
    "café naïve résumé",
    "über straße Ärger",
    "niño mañana España",
    "İstanbul ΟΔΟΣ Σοφία",
    "Ελληνικά русский язык עברית العربية",
    "日本語のテキスト",
    "中文字符测试",
    "한국어 텍스트",
    "ภาษาไทย हिन्दी",
    # combining characters (NFC matters)
    "cafe\u0301 nai\u0308ve",
    # emoji
    "I love 🍕 and 🐱!",
    "family: 👨‍👩‍👧‍👦 thumbs: 👍🏽 flag: 🇯🇵",
    "❤️ ✨ 😂😂😂",
    # odd whitespace
    "tab\tseparated\tvalues",
    "line one\nline two\r\nline three\rline four",
    "multiple     spaces    here",
    "non\u00a0breaking\u00a0space and\u2009thin\u2003em",
    "  leading and trailing  ",
    "zero\u200bwidth\u200bspace and soft\u00adhyphen",
    # HTML entities
    "fish &amp; chips",
    "&lt;b&gt;bold&lt;/b&gt;",
    "<b>tags &amp; entities</b>",
    "double &amp;amp; escaped, triple &amp;amp;amp;",
    "&quot;quoted&quot; &#39;single&#39; &#x2014; dash &eacute;",
    "P&EACUTE;REZ &copy2023 &notit; &nbsp;x",
    # ftfy repairs
    "cafÃ© Ã  la mode",
    "â€œcurly mojibakeâ€\x9d and â€™ apostrophe",
    "“curly quotes” and ‘single’ and it’s",
    "ﬁsh ﬂour ﬀ",
    "ＬＯＵＤ　ＮＯＩＳＥＳ ｶﾀｶﾅ",
    "\x1b[36mcolored\x1b[0m text",
    "control\x00chars\x07here\ufeff",
    "windows \x93smart\x94 quotes",
    "weird \ufffd replacement",
    # special tokens written in the text
    "<|startoftext|>hello<|endoftext|>",
    "a literal </w> end marker",
    # lengths around the limit: 75 one-token words fit exactly, 76 do not
    " ".join(["a"] * 75),
    " ".join(["a"] * 76),
    LONG_CAPTION,
    LONG_CAPTION.upper() + " " + LONG_CAPTION,
    "word " * 200,
    "日本語 " * 40,
]


def load_module(path):
    spec = importlib.util.spec_from_file_location("openai_simple_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    module_path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CLIP_SIMPLE_TOKENIZER")
    if not module_path:
        sys.exit(__doc__)
    vocab_path = sys.argv[2] if len(sys.argv) > 2 else DEFAULT_VOCAB
    module = load_module(module_path)
    tokenizer = module.SimpleTokenizer(bpe_path=vocab_path)
    sot = tokenizer.encoder["<|startoftext|>"]
    eot = tokenizer.encoder["<|endoftext|>"]

    cases = []
    for text in TEXTS:
        tokens = tokenizer.encode(text)
        full = [sot] + tokens + [eot]
        row = full[:CONTEXT_LENGTH]
        row[-1] = eot
        cases.append(
            {
                "text": text,
                "cleaned": module.whitespace_clean(module.basic_clean(text)).lower(),
                "tokens": tokens,
                "decoded": tokenizer.decode(tokens),
                # clip.tokenize row (before zero padding), truncated if too long
                "row": row,
                "tooLong": len(full) > CONTEXT_LENGTH,
            }
        )

    import ftfy
    import regex

    doc = {
        "generator": "test/reference/gen_tokenizer.py",
        "reference": "OpenAI CLIP clip/simple_tokenizer.py",
        "ftfy": ftfy.__version__,
        "regex": getattr(regex, "__version__", "unknown"),
        "python": sys.version.split()[0],
        "contextLength": CONTEXT_LENGTH,
        "sotToken": sot,
        "eotToken": eot,
        "vocabSize": len(tokenizer.encoder),
        "cases": cases,
    }
    # One case per line; ASCII escapes keep invisible characters visible.
    header = json.dumps({k: v for k, v in doc.items() if k != "cases"}, indent=1)[:-2]
    lines = ",\n".join("  " + json.dumps(case) for case in cases)
    with open(OUT, "w", encoding="ascii") as f:
        f.write(header + ',\n "cases": [\n' + lines + "\n ]\n}\n")
    print(f"wrote {len(cases)} cases to {os.path.relpath(OUT, REPO)}")


if __name__ == "__main__":
    main()
