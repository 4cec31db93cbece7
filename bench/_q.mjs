import { loadClip } from '../dist/src/models/load.js';
const path = process.argv[2];
const n = 16;
const res = {};
for (const q of ['none', 'int8']) {
  const m = await loadClip(path, { threads: 2, quantize: q });
  const s = m.config.vision.imageSize;
  const px = { data: new Float32Array(n * 3 * s * s).map((_, i) => Math.sin(i * 0.001)), shape: [n, 3, s, s] };
  await m.encodeImage(px);
  const ts = [];
  for (let i = 0; i < 5; i++) { const t0 = performance.now(); res[q] = await m.encodeImage(px); ts.push(performance.now() - t0); }
  ts.sort((a, b) => a - b);
  const L = m.config.text.contextLength;
  const ids = { data: new Int32Array(64 * L).map((_, i) => (i % L === 0 ? 49406 : i % L === L - 1 ? 49407 : 1 + (i * 7919) % 40000)), shape: [64, L] };
  await m.encodeText(ids);
  const tt = [];
  for (let i = 0; i < 3; i++) { const t0 = performance.now(); await m.encodeText(ids); tt.push(performance.now() - t0); }
  tt.sort((a, b) => a - b);
  console.log(q, 'images/s', (n / ts[2] * 1000).toFixed(1), 'texts/s', (64 / tt[1] * 1000).toFixed(1));
}
const d = res.none.shape[1]; let mn = 1, sum = 0;
for (let r = 0; r < n; r++) { let ab = 0, aa = 0, bb = 0; for (let j = r * d; j < (r + 1) * d; j++) { const a = res.none.data[j], b = res.int8.data[j]; ab += a * b; aa += a * a; bb += b * b; } const c = ab / Math.sqrt(aa * bb); mn = Math.min(mn, c); sum += c; }
console.log('image cosine min', mn.toFixed(4), 'mean', (sum / n).toFixed(4));
