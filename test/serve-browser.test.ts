// The web page of `clipkit serve`, end to end in headless Chromium (Debian's /usr/bin/chromium driven
// by playwright-core; no browser download): choose an image and see label bars, type a query and see
// a gallery of stored images, search by the chosen image. Skipped when Chromium is not installed.
// CLIPKIT_SCREENSHOT=<file.png> keeps a screenshot of the final page.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import sharp from 'sharp';
import { preprocessClip } from '../src/data/image.js';
import { VectorStore } from '../src/index/store.js';
import { ClipModel } from '../src/models/clip-model.js';
import { fromOpenClip } from '../src/models/config.js';
import { type RunningServer, startServe } from '../src/serve/start.js';
import { trainBpe } from '../src/tokenizer/index.js';

const CHROMIUM = '/usr/bin/chromium';
const skip = existsSync(CHROMIUM) ? false : `${CHROMIUM} is not installed (apt-get install chromium)`;
const work = mkdtempSync(join(tmpdir(), 'clipkit-browser-'));
let server: RunningServer | undefined;

const SHAPES = ['circle', 'square', 'triangle'] as const;
const COLOURS = { red: '#d33', green: '#2a4', blue: '#35d', orange: '#e92' } as const;

function svg(shape: (typeof SHAPES)[number], fill: string): string {
  const body =
    shape === 'circle' ? `<circle cx="48" cy="48" r="30" fill="${fill}"/>` : shape === 'square' ? `<rect x="20" y="20" width="56" height="56" fill="${fill}"/>` : `<polygon points="48,14 84,80 12,80" fill="${fill}"/>`;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96"><rect width="96" height="96" fill="#f2efe6"/>${body}</svg>`;
}

before(async () => {
  if (skip) return;
  const tokenizer = trainBpe(
    Array.from({ length: 60 }, (_, i) => `a ${Object.keys(COLOURS)[i % 4]} ${SHAPES[i % 3]}.`),
    { vocabSize: 600 },
  );
  const config = fromOpenClip({
    embed_dim: 16,
    vision_cfg: { image_size: 32, layers: 1, width: 32, patch_size: 8, head_width: 32 },
    text_cfg: { context_length: 16, vocab_size: tokenizer.vocabSize, width: 32, heads: 2, layers: 1 },
  });
  const model = ClipModel.random(config, 4, { threads: 1 });
  const modelDir = join(work, 'model');
  await model.save(modelDir);
  tokenizer.save(join(modelDir, 'tokenizer.json'));
  const store = await VectorStore.open(join(work, 'db'), { dim: 16 });
  for (const [colour, fill] of Object.entries(COLOURS)) {
    for (const shape of SHAPES) {
      const path = join(work, `${colour}-${shape}.png`);
      await sharp(Buffer.from(svg(shape, fill))).png().toFile(path);
      const f = await model.encodeImage({ data: await preprocessClip(path, { size: 32 }), shape: [1, 3, 32, 32] });
      await store.add([{ id: `${colour}-${shape}`, vector: f.data, path, caption: `a ${colour} ${shape}` }]);
    }
  }
  store.close();
  server = await startServe({ modelPath: modelDir, cacheRoot: join(work, 'cache'), db: join(work, 'db'), port: 0, workers: 1, threads: 1, defaultLabels: ['red', 'green', 'blue', 'orange', 'circle', 'square'] });
});
after(async () => {
  await server?.close();
  rmSync(work, { recursive: true, force: true });
});

test('the page: drop an image → label bars; a query → gallery; search by the image', { skip, timeout: 120_000 }, async () => {
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1200, height: 820 } });
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    // Console errors too, except the 400 this test provokes on purpose (label errors are shown in the page).
    page.on('console', (m) => m.type() === 'error' && !/status of 400/.test(m.text()) && errors.push(m.text()));
    await page.goto(server!.url + '/');
    await page.waitForFunction(() => document.getElementById('info')!.textContent!.includes('indexed images'));
    assert.match((await page.textContent('#info'))!, /16-d embeddings · 32px images · 12 indexed images/);
    assert.equal(await page.inputValue('#labels'), 'red, green, blue, orange, circle, square');

    // Choosing a file classifies it at once: one bar per label (k=10 ≥ 6), percentages summing to 100.
    await page.setInputFiles('#file', join(work, 'red-circle.png'));
    await page.waitForSelector('#bars .bar-row', { timeout: 5000 }).catch(async (e: Error) => {
      throw new Error(`${e.message}\nstatus: ${await page.textContent('#classify-status')}\nerrors: ${errors.join(' | ')}`);
    });
    const bars = await page.$$eval('#bars .bar-row', (rows) => rows.map((r) => ({ name: r.querySelector('.name')!.textContent, pct: parseFloat(r.querySelector('.pct')!.textContent!), width: (r.querySelector('.fill') as HTMLElement).style.width })));
    assert.equal(bars.length, 6);
    assert.ok(Math.abs(bars.reduce((a, b) => a + b.pct, 0) - 100) < 0.5, JSON.stringify(bars));
    for (let i = 1; i < bars.length; i++) assert.ok(bars[i - 1]!.pct >= bars[i]!.pct);
    assert.equal(bars[0]!.width, `${bars[0]!.pct.toFixed(1)}%`);
    assert.match((await page.textContent('#classify-status'))!, /top 6 labels in \d+ ms/);

    // Changing the labels re-classifies on Enter.
    await page.fill('#labels', 'circle, triangle');
    await page.press('#labels', 'Enter');
    await page.waitForFunction(() => document.querySelectorAll('#bars .bar-row').length === 2);

    // A text query fills the gallery with thumbnails that really load.
    await page.fill('#query', 'a blue square');
    await page.press('#query', 'Enter');
    await page.waitForFunction(() => document.querySelectorAll('#gallery figure').length === 12);
    await page.waitForFunction(() => [...document.querySelectorAll<HTMLImageElement>('#gallery img')].every((i) => i.complete && i.naturalWidth > 0));
    const captions = await page.$$eval('#gallery figcaption .cap', (c) => c.map((x) => x.textContent));
    assert.ok(captions.every((c) => /^a (red|green|blue|orange) (circle|square|triangle)$/.test(c!)), captions.join('|'));

    // Search by the chosen image: the image itself comes first.
    await page.click('#by-image');
    await page.waitForFunction(() => document.getElementById('search-status')!.textContent!.includes('the dropped image'));
    const first = await page.$eval('#gallery figure figcaption', (f) => f.textContent);
    assert.match(first!, /^red-circle1\.000a red circle$/);

    // A label error is shown, not thrown.
    await page.fill('#labels', 'same, same');
    await page.press('#labels', 'Enter');
    await page.waitForFunction(() => document.getElementById('classify-status')!.classList.contains('error'));
    assert.match((await page.textContent('#classify-status'))!, /given twice/);
    await page.fill('#labels', 'red, green, blue, orange, circle, square');
    await page.press('#labels', 'Enter');
    await page.waitForFunction(() => !document.getElementById('classify-status')!.classList.contains('error') && document.querySelectorAll('#bars .bar-row').length === 6);

    const shot = process.env.CLIPKIT_SCREENSHOT || join(work, 'page.png');
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(statSync(shot).size > 10_000);
    assert.deepEqual(errors, []);
    writeFileSync(join(work, 'done'), '');
  } finally {
    await browser.close();
  }
});
