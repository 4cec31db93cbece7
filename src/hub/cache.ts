// The on-disk cache of pulled repositories, in the Hugging Face hub cache's layout so the files are
// shared by content and a repository's revisions coexist:
//
//   <hub>/models--<org>--<name>/refs/<revision>          the commit a branch or tag resolved to
//   <hub>/models--<org>--<name>/blobs/<hash>             complete, verified file contents
//   <hub>/models--<org>--<name>/blobs/<hash>.part        a download in progress (resumed by Range)
//   <hub>/models--<org>--<name>/snapshots/<commit>/<f>   relative symlinks into blobs/
//   <hub>/models--<org>--<name>/snapshots/<commit>/.clipkit-complete   written last: the pull finished
//
// <hash> is the file's sha256 for LFS files and its git blob sha1 otherwise (what the Hub reports).
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

export const COMPLETE_MARKER = '.clipkit-complete';

/** clipkit's cache root: $CLIPKIT_CACHE, else ~/.cache/clipkit. */
export function clipkitCacheDir(): string {
  return process.env.CLIPKIT_CACHE || join(homedir(), '.cache', 'clipkit');
}

/** Where `pull` keeps repositories by default. */
export function hubCacheDir(): string {
  return join(clipkitCacheDir(), 'hub');
}

/** `org/name`: the Hub's namespace/repository form (letters, digits, '-', '_', '.'; no '..'). */
export function isRepoId(s: string): boolean {
  return /^[A-Za-z0-9][\w.-]{0,95}\/[A-Za-z0-9][\w.-]{0,95}$/.test(s) && !s.includes('..');
}

export function repoDir(cache: string, repo: string): string {
  return join(cache, `models--${repo.replace('/', '--')}`);
}

/** A branch, tag or commit name safe to use as a file name under refs/ (no traversal). */
export function isSafeRevision(rev: string): boolean {
  return /^[\w.-][\w./-]{0,199}$/.test(rev) && !rev.split('/').some((p) => p === '' || p === '.' || p === '..');
}

/** The snapshot directory of a completed pull of `repo` at `revision`, or undefined. */
export function findPulled(cache: string, repo: string, revision = 'main'): string | undefined {
  if (!isRepoId(repo) || !isSafeRevision(revision)) return undefined;
  const dir = repoDir(cache, repo);
  const refFile = join(dir, 'refs', revision);
  const commit = /^[0-9a-f]{40}$/.test(revision) ? revision : existsSync(refFile) ? readFileSync(refFile, 'utf8').trim() : undefined;
  if (!commit || !/^[0-9a-f]{40}$/.test(commit)) return undefined;
  const snap = join(dir, 'snapshots', commit);
  return existsSync(join(snap, COMPLETE_MARKER)) ? snap : undefined;
}
