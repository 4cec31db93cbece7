import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import {
  ClipTokenizer, cleanText, loadTokenizer, parseOpenAiMerges, preTokenize, standardVocab, trainBpe,
} from '../src/tokenizer/index.js';

// Compiled to dist/test/, so the repository root is two levels up.
const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const vocabDir = join(repoRoot, '..', 'shared', 'data', 'clip-bpe');
const vocabFile = join(vocabDir, 'bpe_simple_vocab_16e6.txt.gz');
const haveVocab = existsSync(vocabFile);
const NO_VOCAB = `OpenAI's bpe_simple_vocab_16e6.txt.gz is not at ${vocabDir}`;

interface FixtureCase {
  text: string;
  cleaned: string;
  tokens: number[];
  decoded: string;
  row: number[];
  tooLong: boolean;
}
const fixture = JSON.parse(
  readFileSync(join(repoRoot, 'test', 'reference', 'fixtures', 'tokenizer.json'), 'utf8'),
) as { contextLength: number; sotToken: number; eotToken: number; vocabSize: number; cases: FixtureCase[] };

const dir = await mkdtemp(join(tmpdir(), 'clipkit-tokenizer-'));
after(() => rm(dir, { recursive: true, force: true }));

let openai: ClipTokenizer | undefined;
async function openaiTokenizer(): Promise<ClipTokenizer> {
  openai ??= await loadTokenizer(vocabFile);
  return openai;
}

/** Seeded PRNG (mulberry32), so generated corpora are reproducible. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Short synthetic captions from a small grammar. */
function captions(n: number, seed = 1): string[] {
  const r = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const starts = ['a photo of', 'a picture of', 'an image of', 'a close-up of', 'a drawing of', 'there is'];
  const adjs = ['red', 'small', 'happy', 'old', 'shiny', 'wooden', 'fluffy', 'blue', 'large', 'sleepy', 'wet'];
  const nouns = ['cat', 'dog', 'car', 'house', 'tree', 'bicycle', 'child', 'horse', 'boat', 'bird', 'pizza', 'chair'];
  const places = ['on the beach', 'in a park', 'near a river', 'at night', 'in the snow', 'on a table', 'downtown'];
  const extras = ['', '', '.', '!', ', 2 of them', " and it's raining", ' (blurry)', ' #nofilter', ' – café'];
  return Array.from({ length: n }, () => {
    const text = `${pick(starts)} ${r() < 0.5 ? 'a ' : 'the '}${pick(adjs)} ${pick(nouns)} ${pick(places)}${pick(extras)}`;
    return r() < 0.1 ? text.toUpperCase() : text;
  });
}

test('text cleanup matches ftfy + html.unescape + whitespace_clean + lower', () => {
  for (const c of fixture.cases) assert.equal(cleanText(c.text), c.cleaned, JSON.stringify(c.text));
});

test('ids match OpenAI simple_tokenizer on the fixture texts', { skip: !haveVocab && NO_VOCAB }, async () => {
  const tok = await openaiTokenizer();
  assert.equal(tok.vocabSize, fixture.vocabSize);
  assert.equal(tok.sotToken, fixture.sotToken);
  assert.equal(tok.eotToken, fixture.eotToken);
  assert.ok(fixture.cases.length >= 40);
  for (const c of fixture.cases) {
    assert.deepEqual(tok.encodeText(c.text), c.tokens, JSON.stringify(c.text));
    assert.equal(tok.decode(c.tokens), c.decoded, JSON.stringify(c.text));
  }
});

test('encode builds clip.tokenize rows, truncating on request', { skip: !haveVocab && NO_VOCAB }, async () => {
  const tok = await openaiTokenizer();
  const texts = fixture.cases.map((c) => c.text);
  const { data, shape } = tok.encode(texts, { truncate: true });
  assert.deepEqual(shape, [texts.length, 77]);
  fixture.cases.forEach((c, i) => {
    const expected = new Int32Array(77);
    expected.set(c.row);
    assert.deepEqual(data.subarray(i * 77, (i + 1) * 77), expected, JSON.stringify(c.text));
    if (c.tooLong) {
      assert.equal(c.row.length, 77);
      assert.deepEqual(c.row.slice(0, 76), [tok.sotToken, ...c.tokens.slice(0, 75)]);
      assert.equal(c.row[76], tok.eotToken);
    }
  });
  // Texts that fit give the same rows without truncate.
  const fitting = fixture.cases.filter((c) => !c.tooLong);
  const plain = tok.encode(fitting.map((c) => c.text));
  fitting.forEach((c, i) => assert.deepEqual(Array.from(plain.data.subarray(i * 77, i * 77 + c.row.length)), c.row));
  // A single string and a custom context length work too.
  const short = tok.encode('a photo of a cat', { contextLength: 4, truncate: true });
  assert.deepEqual(short.shape, [1, 4]);
  assert.deepEqual(Array.from(short.data), [tok.sotToken, 320, 1125, tok.eotToken]);
});

test('too-long text without truncate names its index and token count', { skip: !haveVocab && NO_VOCAB }, async () => {
  const tok = await openaiTokenizer();
  const long = fixture.cases.find((c) => c.tooLong && c.tokens.length < 200)!;
  const count = long.tokens.length + 2;
  assert.throws(
    () => tok.encode(['a photo of a cat', 'a dog', long.text]),
    (e: Error) => e.message.includes('text 2') && e.message.includes(`${count} tokens`) && e.message.includes('77'),
  );
  // Exactly 77 with start/end fits; 78 does not.
  assert.equal(tok.encode([Array(75).fill('a').join(' ')]).shape[1], 77);
  assert.throws(() => tok.encode([Array(76).fill('a').join(' ')]), /text 0 has 78 tokens/);
  assert.throws(() => tok.encode(['x'], { contextLength: 1 }), /contextLength/);
});

test('Hugging Face vocab.json + merges.txt and tokenizer.json give identical ids', { skip: !haveVocab && NO_VOCAB }, async () => {
  const merges = parseOpenAiMerges(gunzipSync(readFileSync(vocabFile)).toString('utf8'));
  const vocab = Object.fromEntries(standardVocab(merges).map((token, id) => [token, id]));
  const hfDir = join(dir, 'hf');
  await mkdir(hfDir);
  await writeFile(join(hfDir, 'vocab.json'), JSON.stringify(vocab));
  await writeFile(join(hfDir, 'merges.txt'), '#version: 0.2\n' + merges.map((m) => m.join(' ')).join('\n') + '\n');
  const hfJsonDir = join(dir, 'hf-json');
  await mkdir(hfJsonDir);
  const model = { type: 'BPE', vocab, merges: merges.map((m) => [...m]), end_of_word_suffix: '</w>' };
  await writeFile(join(hfJsonDir, 'tokenizer.json'), JSON.stringify({ version: '1.0', model }));

  const reference = await openaiTokenizer();
  const fromDir = await loadTokenizer(vocabDir);
  for (const tok of [await loadTokenizer(hfDir), await loadTokenizer(hfJsonDir), fromDir]) {
    assert.equal(tok.vocabSize, 49408);
    assert.equal(tok.sotToken, 49406);
    assert.equal(tok.eotToken, 49407);
    const texts = fixture.cases.map((c) => c.text);
    assert.deepEqual(tok.encode(texts, { truncate: true }).data, reference.encode(texts, { truncate: true }).data);
  }
  await assert.rejects(loadTokenizer(join(dir, 'missing')), /not found/);
  await assert.rejects(loadTokenizer(dir), /no tokenizer vocabulary/);
});

test('encoding 10k captions is fast (per-word cache)', { skip: !haveVocab && NO_VOCAB }, async (t) => {
  const tok = await openaiTokenizer();
  const texts = captions(10_000, 7);
  const start = performance.now();
  const { shape } = tok.encode(texts);
  const ms = performance.now() - start;
  t.diagnostic(`encoded ${shape[0]} captions in ${ms.toFixed(0)} ms`);
  assert.ok(ms < 5000, `took ${ms} ms`);
});

test('trainBpe: vocabulary layout, round trips, unseen characters', () => {
  const corpus = captions(3000, 2);
  const tok = trainBpe(corpus, { vocabSize: 620 });
  assert.equal(tok.vocabSize, 620);
  assert.equal(tok.sotToken, 618);
  assert.equal(tok.eotToken, 619);
  assert.equal(tok.merges.length, 620 - 514);
  // Frequent words become single tokens.
  assert.equal(tok.encodeText('a photo of a cat').length, 5);

  const probes = [...corpus.slice(0, 200), 'Ünïcödé wörds, 日本語 & emoji 🍕👍🏽', "  Don't\tstop  ", 'brand-new words: zyzzyva'];
  for (const text of probes) {
    const ids = tok.encodeText(text);
    assert.ok(ids.every((id) => Number.isInteger(id) && id >= 0 && id < 618));
    // Decoding gives the cleaned text, each pre-token followed by a space.
    const expected = preTokenize(cleanText(text)).map((w) => w + ' ').join('');
    assert.equal(tok.decode(ids), expected, JSON.stringify(text));
  }
  // For plain words the round trip is the lower-cased, whitespace-normalised text.
  assert.equal(tok.decode(tok.encodeText('  A Fluffy\tDOG\n in   the snow ')), 'a fluffy dog in the snow ');
  const row = tok.encode(['a red car'], { contextLength: 8 });
  assert.equal(row.data[0], 618);
  assert.ok(Array.from(row.data).includes(619));
});

test('trainBpe is deterministic, independent of corpus order', () => {
  const corpus = captions(2000, 3);
  const a = trainBpe(corpus, { vocabSize: 700 });
  const b = trainBpe(corpus, { vocabSize: 700 });
  const shuffled = [...corpus].reverse();
  const c = trainBpe(shuffled, { vocabSize: 700 });
  assert.deepEqual(a.merges, b.merges);
  assert.deepEqual(a.merges, c.merges);
});

test('trainBpe stops early on a tiny corpus and rejects bad options', () => {
  const tiny = trainBpe(['ab ab abc'], { vocabSize: 600 });
  // Only a few merges are possible; the special tokens follow them.
  assert.ok(tiny.vocabSize < 600);
  assert.equal(tiny.sotToken, tiny.vocabSize - 2);
  assert.equal(tiny.decode(tiny.encodeText('abc ab')), 'abc ab ');
  for (const vocabSize of [513, 0, -5, 600.5, Number.NaN, Infinity]) {
    assert.throws(() => trainBpe(['a b c'], { vocabSize }), /vocabSize must be an integer/);
  }
  assert.throws(() => trainBpe(['a'], {} as { vocabSize: number }), /vocabSize/);
  assert.throws(() => trainBpe('not an array' as unknown as string[], { vocabSize: 600 }), /array/);
});

test('save/load round trip of a trained tokenizer', async () => {
  const corpus = captions(1500, 4);
  const tok = trainBpe(corpus, { vocabSize: 650 });
  const file = join(dir, 'trained.json');
  tok.save(file);
  const back = await loadTokenizer(file);
  assert.deepEqual(back.merges, tok.merges);
  assert.equal(back.vocabSize, 650);
  assert.equal(back.eotToken, 649);
  const texts = [...corpus.slice(0, 50), 'unseen wörds 🍕'];
  assert.deepEqual(back.encode(texts).data, tok.encode(texts).data);
  // A directory holding the saved file as tokenizer.json loads too.
  const saveDir = join(dir, 'trained-dir');
  await mkdir(saveDir);
  tok.save(join(saveDir, 'tokenizer.json'));
  assert.deepEqual((await loadTokenizer(saveDir)).merges, tok.merges);
});
