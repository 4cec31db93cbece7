// pull: a CLIP model repository (OpenCLIP's or Hugging Face's layout) into the local cache (cache.ts),
// verified file by file, so every other command can then run offline with --model <repo-id>.
import { existsSync, mkdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { headFile, HubError, type HubOptions, listFiles, type RepoFile, resolveRevision, resolveUrl } from './client.js';
import { COMPLETE_MARKER, findPulled, isRepoId, isSafeRevision, repoDir } from './cache.js';
import { downloadBlob } from './download.js';

/** Weights, in order of preference: OpenCLIP's file when both exist (loadClip reads it first). */
const WEIGHTS = ['open_clip_model.safetensors', 'model.safetensors'];
/** Configs and tokenizers; whichever of these the repository has comes along. */
const SIDE_FILES = ['open_clip_config.json', 'config.json', 'tokenizer.json', 'vocab.json', 'merges.txt', 'bpe_simple_vocab_16e6.txt.gz', 'tokenizer_config.json', 'special_tokens_map.json', 'preprocessor_config.json'];
const TOKENIZER_FILES = ['tokenizer.json', 'vocab.json', 'bpe_simple_vocab_16e6.txt.gz'];

export interface PullOptions extends HubOptions {
  cache: string;
  revision?: string;
  /** Per-file progress; `have` includes bytes resumed from an earlier run. */
  onFile?: (file: RepoFile, state: 'cached' | 'start' | 'done') => void;
  onProgress?: (file: RepoFile, have: number, total: number) => void;
  retryDelayMs?: number;
}

export interface PullResult {
  repo: string;
  revision: string;
  commit: string;
  /** The snapshot directory: pass it (or the repo id) as --model. */
  dir: string;
  files: { path: string; size: number; hash: RepoFile['hash']; downloaded: boolean }[];
  /** True when the Hub could not be reached and an earlier complete pull was used. */
  offline: boolean;
  warnings: string[];
}

/** Which of a repository's files a CLIP model needs. */
export function selectFiles(files: RepoFile[]): { files: RepoFile[]; warnings: string[] } {
  const byPath = new Map(files.map((f) => [f.path, f]));
  const weights = WEIGHTS.find((w) => byPath.has(w));
  if (!weights) {
    const have = files.map((f) => f.path).slice(0, 20).join(', ');
    throw new Error(`no safetensors weights (${WEIGHTS.join(' or ')}) in the repository; it has: ${have || 'no files'}${files.some((f) => f.path.endsWith('.bin')) ? ' (PyTorch .bin checkpoints are not supported)' : ''}`);
  }
  const chosen = [byPath.get(weights)!, ...SIDE_FILES.flatMap((f) => (byPath.has(f) ? [byPath.get(f)!] : []))];
  const warnings: string[] = [];
  if (!TOKENIZER_FILES.some((t) => byPath.has(t))) warnings.push('the repository has no tokenizer file (tokenizer.json, vocab.json + merges.txt): pass --tokenizer to commands that embed text');
  if (!byPath.has('open_clip_config.json') && !byPath.has('config.json')) warnings.push('the repository has no config; the architecture will be inferred from the weights');
  return { files: chosen, warnings };
}

export async function pull(repo: string, o: PullOptions): Promise<PullResult> {
  if (!isRepoId(repo)) throw new Error(`'${repo}' is not a repository id (expected org/name)`);
  const revision = o.revision ?? 'main';
  if (!isSafeRevision(revision)) throw new Error(`'${revision}' is not a valid revision`);
  let commit: string;
  let listing: RepoFile[];
  try {
    const rev = await resolveRevision(o, repo, revision);
    commit = rev.commit;
    listing = await listFiles(o, repo, commit).catch(async (e: unknown) => {
      // A mirror without the tree API: the revision's file names, then one HEAD per needed file.
      if (!(e instanceof HubError && e.status === 404) || rev.files.length === 0) throw e;
      const wanted = rev.files.filter((f) => WEIGHTS.includes(f) || SIDE_FILES.includes(f));
      return Promise.all(wanted.map((f) => headFile(o, repo, commit, f)));
    });
  } catch (e) {
    // No network (fetch's TypeError): a complete earlier pull is as good as it gets.
    const cached = e instanceof TypeError ? findPulled(o.cache, repo, revision) : undefined;
    if (!cached) throw e instanceof TypeError ? new Error(`cannot reach ${o.endpoint}: ${(e as Error & { cause?: Error }).cause?.message ?? e.message}`) : e;
    return { repo, revision, commit: cached.split('/').pop()!, dir: cached, files: [], offline: true, warnings: [`cannot reach ${o.endpoint}: using the copy pulled earlier`] };
  }
  const { files, warnings } = selectFiles(listing);
  const root = repoDir(o.cache, repo);
  const snap = join(root, 'snapshots', commit);
  const result: PullResult['files'] = [];
  for (const f of files) {
    const blob = join(root, 'blobs', f.hash.hex);
    const downloaded = !existsSync(blob);
    if (downloaded) {
      o.onFile?.(f, 'start');
      await downloadBlob(o, resolveUrl(o, repo, commit, f.path), f, blob, { onProgress: (have, total) => o.onProgress?.(f, have, total), retryDelayMs: o.retryDelayMs });
      o.onFile?.(f, 'done');
    } else o.onFile?.(f, 'cached');
    link(blob, join(snap, f.path));
    result.push({ path: f.path, size: f.size, hash: f.hash, downloaded });
  }
  // Written last: findPulled (and so --model <repo-id>) only sees finished snapshots.
  writeFileSync(join(snap, COMPLETE_MARKER), JSON.stringify({ repo, commit, files: files.map((f) => f.path) }) + '\n');
  if (revision !== commit) {
    mkdirSync(dirname(join(root, 'refs', revision)), { recursive: true });
    writeFileSync(join(root, 'refs', revision), commit);
  }
  return { repo, revision, commit, dir: snap, files: result, offline: false, warnings };
}

/** snapshots/<commit>/<file> → a relative symlink to its blob (as the Hugging Face cache does). */
function link(blob: string, at: string): void {
  mkdirSync(dirname(at), { recursive: true });
  const target = relative(dirname(at), blob);
  try {
    if (readlinkSync(at) === target) return;
  } catch {
    // missing, or not a link
  }
  rmSync(at, { force: true });
  symlinkSync(target, at);
}
