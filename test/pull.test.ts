// clipkit pull against a local server in the Hugging Face Hub's URL layout (127.0.0.1, port 0; LFS
// files redirected to a second "CDN" server on another origin): a full pull that loads as a model
// and classifies offline by repo id; an interrupted download resumed with Range (in the same run and
// in a later one); corrupt files rejected by sha256 and git-sha1; offline fallback; token hygiene.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { resolveModel } from '../src/cli/default-model.js';
import { findPulled, repoDir } from '../src/hub/cache.js';
import { hashFromHeaders } from '../src/hub/client.js';
import { pull } from '../src/hub/pull.js';
import { ClipModel } from '../src/models/clip-model.js';
import { fromOpenClip } from '../src/models/config.js';
import { loadClip } from '../src/models/load.js';
import { loadTokenizer, trainBpe } from '../src/tokenizer/index.js';

const work = mkdtempSync(join(tmpdir(), 'clipkit-pull-'));
const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const REPO = 'test-org/tiny-clip';
const COMMIT = 'c0ffee'.padEnd(40, '0');
const WEIGHTS = 'open_clip_model.safetensors';

interface Served {
  bytes: Buffer;
  lfs: boolean;
}
const files = new Map<string, Served>();
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const gitSha1 = (b: Buffer) => createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');

/** What the servers saw, and how they misbehave. */
const log: { server: 'hub' | 'cdn'; path: string; range?: string; auth?: string }[] = [];
const faults = { cutNext: 0, cutAlways: false, corrupt: new Set<string>(), noTree: false };
let hub: Server;
let cdn: Server;
let hubUrl = '';
let cdnUrl = '';

function serveBytes(req: IncomingMessage, res: ServerResponse, name: string, f: Served): void {
  let body = f.bytes;
  if (faults.corrupt.has(name)) {
    body = Buffer.from(body);
    body[body.length >> 1]! ^= 0xff; // same size, one byte flipped
  }
  const headers: Record<string, string> = { 'accept-ranges': 'bytes', etag: `"${f.lfs ? sha256(f.bytes) : gitSha1(f.bytes)}"` };
  let start = 0;
  const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  if (m) {
    start = Number(m[1]);
    if (start >= body.length) return void res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end();
    res.writeHead(206, { ...headers, 'content-range': `bytes ${start}-${body.length - 1}/${body.length}`, 'content-length': String(body.length - start) });
  } else res.writeHead(200, { ...headers, 'content-length': String(body.length) });
  const rest = body.subarray(start);
  if (faults.cutAlways || faults.cutNext > 0) {
    faults.cutNext = Math.max(0, faults.cutNext - 1);
    // Half of what is left, then the connection drops.
    res.write(rest.subarray(0, rest.length >> 1), () => setTimeout(() => res.destroy(), 20));
    return;
  }
  res.end(rest);
}

before(async () => {
  const tokenizer = trainBpe(['a photo of a cat.', 'a photo of a dog.', 'a red car.'], { vocabSize: 560 });
  const config = fromOpenClip({
    embed_dim: 16,
    vision_cfg: { image_size: 32, layers: 1, width: 32, patch_size: 8, head_width: 32 },
    text_cfg: { context_length: 16, vocab_size: tokenizer.vocabSize, width: 32, heads: 2, layers: 1 },
  });
  const dir = join(work, 'src-model');
  await ClipModel.random(config, 1, { threads: 1 }).save(dir);
  tokenizer.save(join(dir, 'tokenizer.json'));
  files.set(WEIGHTS, { bytes: readFileSync(join(dir, WEIGHTS)), lfs: true });
  files.set('open_clip_config.json', { bytes: readFileSync(join(dir, 'open_clip_config.json')), lfs: false });
  files.set('tokenizer.json', { bytes: readFileSync(join(dir, 'tokenizer.json')), lfs: false });
  files.set('README.md', { bytes: Buffer.from('# tiny\n'), lfs: false });
  files.set('open_clip_pytorch_model.bin', { bytes: Buffer.alloc(100, 1), lfs: true });

  cdn = createServer((req, res) => {
    log.push({ server: 'cdn', path: req.url!, range: req.headers.range, auth: req.headers.authorization });
    const hash = req.url!.split('/').pop()!;
    const entry = [...files].find(([, f]) => sha256(f.bytes) === hash);
    if (!entry) return void res.writeHead(404).end();
    serveBytes(req, res, entry[0], entry[1]);
  });
  hub = createServer((req, res) => {
    const url = new URL(req.url!, 'http://x');
    log.push({ server: 'hub', path: url.pathname, range: req.headers.range, auth: req.headers.authorization });
    const json = (code: number, v: unknown, extra: Record<string, string> = {}) => void res.writeHead(code, { 'content-type': 'application/json', ...extra }).end(JSON.stringify(v));
    const p = decodeURIComponent(url.pathname);
    if (p === `/api/models/${REPO}/revision/main`) return json(200, { id: REPO, sha: COMMIT, siblings: [...files.keys()].map((rfilename) => ({ rfilename })) });
    if (p === `/api/models/${REPO}/tree/${COMMIT}` && !faults.noTree) {
      // Two pages, linked the way the Hub paginates.
      const all = [...files].map(([path, f]) => ({ type: 'file', path, size: f.bytes.length, oid: gitSha1(f.bytes), ...(f.lfs ? { lfs: { oid: sha256(f.bytes), size: f.bytes.length, pointerSize: 130 } } : {}) }));
      const page = url.searchParams.get('cursor') === '2' ? all.slice(3) : [{ type: 'directory', path: 'sub', oid: 'x' }, ...all.slice(0, 3)];
      return json(200, page, url.searchParams.get('cursor') ? {} : { link: `<${hubUrl}${url.pathname}?recursive=true&cursor=2>; rel="next"` });
    }
    const prefix = `/${REPO}/resolve/${COMMIT}/`;
    if (p.startsWith(prefix)) {
      const name = p.slice(prefix.length);
      const f = files.get(name);
      if (!f) return json(404, { error: 'Entry not found' });
      if (f.lfs) {
        const linked = { 'x-linked-etag': `"${sha256(f.bytes)}"`, 'x-linked-size': String(f.bytes.length), 'x-repo-commit': COMMIT };
        return void res.writeHead(302, { location: `${cdnUrl}/blobs/${sha256(f.bytes)}`, ...linked }).end();
      }
      if (req.method === 'HEAD') return void res.writeHead(200, { etag: `"${gitSha1(f.bytes)}"`, 'content-length': String(f.bytes.length) }).end();
      return serveBytes(req, res, name, f);
    }
    if (p.startsWith('/api/models/test-org/no-weights/revision/')) return json(200, { sha: COMMIT });
    if (p.startsWith('/api/models/test-org/no-weights/tree/')) return json(200, [{ type: 'file', path: 'pytorch_model.bin', size: 3, oid: 'a'.repeat(40) }]);
    json(404, { error: 'Repository not found' });
  });
  const listen = (s: Server) => new Promise<string>((r) => s.listen(0, '127.0.0.1', () => r(`http://127.0.0.1:${(s.address() as AddressInfo).port}`)));
  [hubUrl, cdnUrl] = await Promise.all([listen(hub), listen(cdn)]);
});
after(() => {
  hub?.close();
  cdn?.close();
  rmSync(work, { recursive: true, force: true });
});

const env = (extra: Record<string, string> = {}) => ({ ...process.env, CLIPKIT_CACHE: join(work, 'home-cache'), CLIPKIT_THREADS: '1', ...extra });
const cli = (args: string[], extra: Record<string, string> = {}) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000, env: env(extra) });
const runAsync = (args: string[], extra: Record<string, string> = {}) =>
  new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
    // The servers live in this process, so the child must not block it (spawnSync would deadlock).
    import('node:child_process').then(({ execFile }) =>
      execFile(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000, env: env(extra) }, (err, stdout, stderr) => resolve({ status: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr })),
    );
  });

test('clipkit pull: the model files, verified, into the cache; then --model <repo-id> works offline', async () => {
  log.length = 0;
  const res = await runAsync(['pull', REPO, '--endpoint', hubUrl], { HF_TOKEN: 'secret-token' });
  assert.equal(res.status, 0, res.stderr);
  const dir = res.stdout.trim();
  assert.equal(dir, join(work, 'home-cache', 'hub', 'models--test-org--tiny-clip', 'snapshots', COMMIT));
  assert.deepEqual(readdirSync(dir).sort(), ['.clipkit-complete', 'open_clip_config.json', WEIGHTS, 'tokenizer.json']);
  assert.deepEqual(readFileSync(join(dir, WEIGHTS)), files.get(WEIGHTS)!.bytes);
  assert.match(res.stderr, /open_clip_model\.safetensors: done, sha256 verified/);
  assert.match(res.stderr, /tokenizer\.json: done, git-sha1 verified/);
  // The token goes to the hub, never to the other origin the LFS download is redirected to.
  assert.ok(log.filter((l) => l.server === 'hub').every((l) => l.auth === 'Bearer secret-token'));
  assert.ok(log.some((l) => l.server === 'cdn'));
  assert.ok(log.filter((l) => l.server === 'cdn').every((l) => l.auth === undefined));
  assert.ok(!log.some((l) => l.path.endsWith('README.md') || l.path.endsWith('.bin')));

  const model = await loadClip(dir);
  assert.equal(model.config.embedDim, 16);
  assert.ok((await loadTokenizer(dir)).vocabSize > 0);
  assert.equal(resolveModel('x', REPO, { cache: join(work, 'home-cache', 'hub') }).path, dir);
  assert.throws(() => resolveModel('x', 'test-org/other', { cache: join(work, 'home-cache', 'hub') }), /has not been pulled .*clipkit pull test-org\/other/);

  // Offline use by repo id (no server involved).
  const img = join(work, 'x.png');
  await sharp({ create: { width: 20, height: 20, channels: 3, background: { r: 200, g: 10, b: 10 } } }).png().toFile(img);
  const c = cli(['classify', img, '--model', REPO, '--labels', 'cat,dog', '--json']);
  assert.equal(c.status, 0, c.stderr);
  assert.equal((JSON.parse(c.stdout) as { labels: unknown[] }).labels.length, 2);

  // Pulled again: nothing downloaded. Endpoint unreachable: the cached snapshot, with a warning.
  log.length = 0;
  const again = await pull(REPO, { endpoint: hubUrl, cache: join(work, 'home-cache', 'hub') });
  assert.ok(again.files.every((f) => !f.downloaded));
  assert.ok(!log.some((l) => l.path.includes('/resolve/')));
  const closed = createServer();
  const deadUrl = await new Promise<string>((r) => closed.listen(0, '127.0.0.1', () => r(`http://127.0.0.1:${(closed.address() as AddressInfo).port}`)));
  await new Promise((r) => closed.close(r));
  const off = cli(['pull', REPO, '--endpoint', deadUrl]);
  assert.equal(off.status, 0, off.stderr);
  assert.equal(off.stdout.trim(), dir);
  assert.match(off.stderr, /cannot reach .*using the copy pulled earlier/);
});

test('an interrupted download resumes with Range: in the same run, and in a later one', async () => {
  const cache = join(work, 'cache-resume');
  const size = files.get(WEIGHTS)!.bytes.length;
  // First response cut halfway: the retry asks for the rest.
  log.length = 0;
  faults.cutNext = 1;
  const r = await pull(REPO, { endpoint: hubUrl, cache, retryDelayMs: 10 });
  const cdnReqs = log.filter((l) => l.server === 'cdn');
  assert.equal(cdnReqs.length, 2);
  assert.equal(cdnReqs[0]!.range, undefined);
  // The retry asks for the rest: from whatever had reached the disk (at most the half that was sent).
  const from = Number(/^bytes=(\d+)-$/.exec(cdnReqs[1]!.range ?? '')?.[1]);
  assert.ok(from > 0 && from <= size >> 1, `range ${cdnReqs[1]!.range}`);
  assert.deepEqual(readFileSync(join(r.dir, WEIGHTS)), files.get(WEIGHTS)!.bytes);

  // Every response cut: the run fails, keeping the .part; the next run resumes from it.
  const cache2 = join(work, 'cache-resume-2');
  faults.cutAlways = true;
  await assert.rejects(pull(REPO, { endpoint: hubUrl, cache: cache2, retryDelayMs: 1 }), /open_clip_model\.safetensors: .*kept: run the same command again to resume/);
  faults.cutAlways = false;
  const part = join(repoDir(cache2, REPO), 'blobs', `${sha256(files.get(WEIGHTS)!.bytes)}.part`);
  const kept = statSync(part).size;
  assert.ok(kept > 0 && kept < size);
  assert.equal(findPulled(cache2, REPO), undefined); // not usable until complete
  log.length = 0;
  const r2 = await pull(REPO, { endpoint: hubUrl, cache: cache2 });
  assert.equal(log.find((l) => l.server === 'cdn')!.range, `bytes=${kept}-`);
  assert.deepEqual(readFileSync(join(r2.dir, WEIGHTS)), files.get(WEIGHTS)!.bytes);
  assert.ok(!existsSync(part));
});

test('corrupt downloads are rejected by their hash and deleted', async () => {
  const cache = join(work, 'cache-corrupt');
  faults.corrupt.add(WEIGHTS);
  await assert.rejects(pull(REPO, { endpoint: hubUrl, cache }), /open_clip_model\.safetensors: sha256 mismatch \(expected [0-9a-f]{64}, got [0-9a-f]{64}\): the download is corrupt and was deleted/);
  faults.corrupt.clear();
  const blobs = join(repoDir(cache, REPO), 'blobs');
  assert.deepEqual(readdirSync(blobs), []); // neither a blob nor a .part left
  assert.equal(findPulled(cache, REPO), undefined);

  faults.corrupt.add('open_clip_config.json');
  const res = await runAsync(['pull', REPO, '--endpoint', hubUrl, '--cache', cache]);
  faults.corrupt.clear();
  assert.equal(res.status, 1);
  assert.match(res.stderr, /open_clip_config\.json: git-sha1 mismatch/);
  // A good pull afterwards completes.
  assert.ok(findPulled(cache, REPO) === undefined);
  await pull(REPO, { endpoint: hubUrl, cache });
  assert.ok(findPulled(cache, REPO));
});

test('an endpoint without the tree API: sizes and hashes from HEAD requests', async () => {
  const cache = join(work, 'cache-head');
  faults.noTree = true;
  log.length = 0;
  try {
    const r = await pull(REPO, { endpoint: hubUrl, cache });
    assert.deepEqual(r.files.map((f) => [f.path, f.hash.algo]), [
      [WEIGHTS, 'sha256'],
      ['open_clip_config.json', 'git-sha1'],
      ['tokenizer.json', 'git-sha1'],
    ]);
    assert.equal(r.files[0]!.size, files.get(WEIGHTS)!.bytes.length);
    assert.deepEqual(readFileSync(join(r.dir, 'tokenizer.json')), files.get('tokenizer.json')!.bytes);
    // The corrupt-file check still applies with header hashes.
    faults.corrupt.add('tokenizer.json');
    await assert.rejects(pull(REPO, { endpoint: hubUrl, cache: join(work, 'cache-head-2') }), /tokenizer\.json: git-sha1 mismatch/);
  } finally {
    faults.noTree = false;
    faults.corrupt.clear();
  }
});

test('errors: unknown repository, no safetensors, bad ids; hashes from headers', async () => {
  const cache = join(work, 'cache-errors');
  await assert.rejects(pull('test-org/missing', { endpoint: hubUrl, cache }), /HTTP 404 \(no such repository or revision\)/);
  await assert.rejects(pull('test-org/no-weights', { endpoint: hubUrl, cache }), /no safetensors weights .*PyTorch \.bin checkpoints are not supported/);
  const bad = cli(['pull', '../etc', '--endpoint', hubUrl]);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /not a repository id/);
  assert.equal(cli(['pull', REPO, '--endpoint', 'not a url']).status, 2);
  await assert.rejects(pull(REPO, { endpoint: hubUrl, cache, revision: '../x' }), /not a valid revision/);

  const h = (o: Record<string, string>) => hashFromHeaders(new Headers(o));
  assert.deepEqual(h({ 'x-linked-etag': `"${'a'.repeat(64)}"`, etag: `"${'b'.repeat(40)}"` }), { algo: 'sha256', hex: 'a'.repeat(64) });
  assert.deepEqual(h({ etag: `W/"${'b'.repeat(40)}"` }), { algo: 'git-sha1', hex: 'b'.repeat(40) });
  assert.equal(h({ etag: '"xyz"' }), undefined);
});
