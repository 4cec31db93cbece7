// The web page served at `/`: drop an image to see its zero-shot labels as bars, type a query to see
// the nearest images of the store. One self-contained document (no build step, no external assets),
// kept as a TypeScript string so tsc carries it into dist/ with the rest of the server.
export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>clipkit</title>
<link rel="icon" href="data:,">
<style>
  :root { --bg: #f6f7f9; --card: #fff; --ink: #1d2330; --muted: #6b7385; --accent: #3559e0; --line: #e3e6ec; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background: var(--bg); color: var(--ink); }
  header { display: flex; align-items: baseline; gap: 1rem; padding: .9rem 1.5rem; background: var(--card); border-bottom: 1px solid var(--line); }
  header h1 { margin: 0; font-size: 1.25rem; letter-spacing: .02em; }
  header .info { color: var(--muted); font-size: .85rem; }
  main { display: grid; grid-template-columns: minmax(300px, 1fr) minmax(300px, 1.4fr); gap: 1.25rem; padding: 1.25rem 1.5rem; }
  @media (max-width: 800px) { main { grid-template-columns: 1fr; } }
  section { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 1rem 1.1rem 1.2rem; }
  h2 { margin: 0 0 .8rem; font-size: 1.05rem; }
  label.small { display: block; font-size: .8rem; color: var(--muted); margin: .7rem 0 .25rem; }
  input[type=text], select { width: 100%; padding: .5rem .6rem; border: 1px solid var(--line); border-radius: 6px; font: inherit; background: #fff; }
  button { padding: .5rem .9rem; border: 0; border-radius: 6px; background: var(--accent); color: #fff; font: inherit; cursor: pointer; }
  button:disabled { opacity: .5; cursor: default; }
  button.ghost { background: transparent; color: var(--accent); border: 1px solid var(--accent); }
  #drop { display: flex; align-items: center; justify-content: center; min-height: 170px; border: 2px dashed #c5cbd8; border-radius: 8px; color: var(--muted); text-align: center; cursor: pointer; overflow: hidden; background: #fafbfc; }
  #drop.over { border-color: var(--accent); background: #eef2ff; }
  #drop img { max-width: 100%; max-height: 240px; display: block; }
  #file { display: none; }
  .row { display: flex; gap: .5rem; margin-top: .8rem; }
  .row > input { flex: 1; }
  #bars { margin-top: 1rem; }
  .bar-row { display: grid; grid-template-columns: 8.5rem 1fr 4.2rem; align-items: center; gap: .6rem; margin: .35rem 0; }
  .bar-row .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .bar-row .track { height: 14px; background: #edf0f5; border-radius: 7px; overflow: hidden; }
  .bar-row .fill { height: 100%; background: linear-gradient(90deg, #5b7cfa, var(--accent)); border-radius: 7px; transition: width .3s; }
  .bar-row .pct { text-align: right; font-variant-numeric: tabular-nums; color: var(--muted); }
  .bar-row:first-child .name { font-weight: 600; }
  #gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(130px, 1fr)); gap: .75rem; margin-top: 1rem; }
  figure { margin: 0; background: #fafbfc; border: 1px solid var(--line); border-radius: 8px; overflow: hidden; }
  figure img { width: 100%; aspect-ratio: 1; object-fit: cover; display: block; background: #edf0f5; image-rendering: auto; }
  figure .noimg { aspect-ratio: 1; display: flex; align-items: center; justify-content: center; color: var(--muted); font-size: .8rem; }
  figcaption { padding: .35rem .5rem .45rem; font-size: .78rem; }
  figcaption .top { display: flex; justify-content: space-between; gap: .4rem; }
  figcaption .id { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  figcaption .score { color: var(--accent); font-variant-numeric: tabular-nums; }
  figcaption .cap { display: block; color: var(--muted); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .status { min-height: 1.2em; margin-top: .6rem; font-size: .85rem; color: var(--muted); }
  .status.error { color: #c0392b; }
</style>
</head>
<body>
<header><h1>clipkit</h1><span class="info" id="info">connecting…</span></header>
<main>
  <section id="classify">
    <h2>Zero-shot labels</h2>
    <label id="drop" for="file"><span>Drop an image here, or click to choose one</span></label>
    <input type="file" id="file" accept="image/*">
    <label class="small" for="labels">Labels (comma-separated)</label>
    <input type="text" id="labels" placeholder="cat, dog, car">
    <label class="small" for="templates">Prompt templates</label>
    <select id="templates"><option value="simple">a photo of a {}.</option><option value="cifar10">CLIP's 18 CIFAR-10 templates</option></select>
    <div class="row"><button id="classify-btn" disabled>Classify</button><button class="ghost" id="by-image" disabled>Find similar images</button></div>
    <div id="bars"></div>
    <div class="status" id="classify-status"></div>
  </section>
  <section id="search">
    <h2>Search the collection</h2>
    <form id="search-form" class="row"><input type="text" id="query" placeholder="a photo of a red car" autocomplete="off"><button type="submit">Search</button></form>
    <div class="status" id="search-status"></div>
    <div id="gallery"></div>
  </section>
</main>
<script>
(() => {
  const $ = (id) => document.getElementById(id);
  let image = null; // the chosen File
  let hasDb = false;

  const status = (id, text, error) => { const el = $(id); el.textContent = text || ''; el.classList.toggle('error', !!error); };
  const fail = async (res) => { try { return (await res.json()).error || res.statusText; } catch { return res.statusText; } };

  fetch('/health').then((r) => r.json()).then((h) => {
    const m = h.model;
    $('info').textContent = (m.name ? m.name + ' · ' : '') + m.embedDim + '-d embeddings · ' + m.imageSize + 'px images' + (h.db ? ' · ' + h.db.rows + ' indexed images' : ' · no index (start with --db to search)');
    if (h.defaultLabels) $('labels').value = h.defaultLabels.join(', ');
    hasDb = !!h.db;
    if (!hasDb) { $('query').disabled = true; status('search-status', 'No vector store: start the server with --db <dir> to search.'); }
  }).catch(() => { $('info').textContent = 'server unreachable'; });

  function choose(file) {
    if (!file) return;
    image = file;
    const img = document.createElement('img');
    img.alt = file.name;
    img.src = URL.createObjectURL(file);
    $('drop').replaceChildren(img);
    $('classify-btn').disabled = false;
    $('by-image').disabled = !hasDb;
    classify();
  }

  async function classify() {
    if (!image) return;
    const form = new FormData();
    form.append('image', image);
    if ($('labels').value.trim()) form.append('labels', $('labels').value);
    form.append('templates', $('templates').value);
    form.append('k', '10');
    status('classify-status', 'classifying…');
    const t0 = performance.now();
    try {
      const res = await fetch('/classify', { method: 'POST', body: form });
      if (!res.ok) { $('bars').replaceChildren(); return status('classify-status', await fail(res), true); }
      const out = await res.json();
      $('bars').replaceChildren(...out.labels.map((l) => {
        const row = document.createElement('div'); row.className = 'bar-row';
        const name = document.createElement('span'); name.className = 'name'; name.textContent = l.label; name.title = l.label;
        const track = document.createElement('div'); track.className = 'track';
        const fill = document.createElement('div'); fill.className = 'fill'; fill.style.width = (100 * l.probability).toFixed(1) + '%';
        track.append(fill);
        const pct = document.createElement('span'); pct.className = 'pct'; pct.textContent = (100 * l.probability).toFixed(1) + '%';
        row.append(name, track, pct);
        return row;
      }));
      status('classify-status', 'top ' + out.labels.length + ' labels in ' + Math.round(performance.now() - t0) + ' ms');
    } catch (e) { status('classify-status', String(e), true); }
  }

  async function search(body, what) {
    status('search-status', 'searching…');
    try {
      const res = body instanceof FormData ? await fetch('/search', { method: 'POST', body }) : await fetch('/search?k=24&q=' + encodeURIComponent(body));
      if (!res.ok) { $('gallery').replaceChildren(); return status('search-status', await fail(res), true); }
      const { hits } = await res.json();
      $('gallery').replaceChildren(...hits.map((h) => {
        const fig = document.createElement('figure');
        if (h.image) {
          const img = document.createElement('img'); img.loading = 'lazy'; img.alt = h.caption || h.id; img.src = h.image + '?w=256';
          fig.append(img);
        } else { const d = document.createElement('div'); d.className = 'noimg'; d.textContent = 'no image file'; fig.append(d); }
        const cap = document.createElement('figcaption');
        const top = document.createElement('div'); top.className = 'top';
        const id = document.createElement('span'); id.className = 'id'; id.textContent = h.id; id.title = h.id;
        const score = document.createElement('span'); score.className = 'score'; score.textContent = h.score.toFixed(3);
        top.append(id, score);
        const c = document.createElement('span'); c.className = 'cap'; c.textContent = h.caption || (h.path || '').split('/').pop() || ''; c.title = h.caption || h.path || '';
        cap.append(top, c);
        fig.append(cap);
        return fig;
      }));
      status('search-status', hits.length + ' nearest images for ' + what);
    } catch (e) { status('search-status', String(e), true); }
  }

  const drop = $('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); choose(e.dataTransfer.files[0]); });
  $('file').addEventListener('change', (e) => choose(e.target.files[0]));
  $('classify-btn').addEventListener('click', classify);
  $('templates').addEventListener('change', classify);
  $('labels').addEventListener('keydown', (e) => { if (e.key === 'Enter') classify(); });
  $('search-form').addEventListener('submit', (e) => { e.preventDefault(); const q = $('query').value.trim(); if (q) search(q, '"' + q + '"'); });
  $('by-image').addEventListener('click', () => { const f = new FormData(); f.append('image', image); f.append('k', '24'); search(f, 'the dropped image'); });
})();
</script>
</body>
</html>
`;
