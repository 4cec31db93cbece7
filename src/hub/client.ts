// A small client for the Hugging Face Hub's HTTP layout — only what `pull` needs:
//   GET /api/models/{repo}/revision/{rev}           → the commit a branch or tag points to
//   GET /api/models/{repo}/tree/{commit}?recursive=1 → files with size, git oid and LFS sha256
//   GET /{repo}/resolve/{commit}/{file}              → the file (redirected to a CDN for LFS files)
// Plain fetch, so any endpoint with that layout works (a mirror, or a local test server). The token
// (HF_TOKEN) is sent to the endpoint's own origin only, never along a redirect to another host.

export interface HubOptions {
  /** Base URL, e.g. the Hub's, or a mirror's; no trailing slash needed. */
  endpoint: string;
  token?: string;
}

export interface RepoFile {
  path: string;
  size: number;
  /** Expected content hash: sha256 for LFS files, the git blob sha1 otherwise. */
  hash: { algo: 'sha256' | 'git-sha1'; hex: string };
}

/** An HTTP answer that is final (no point retrying): 401/403/404 and the like. */
export class HubError extends Error {
  override name = 'HubError';
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

const encPath = (p: string): string => p.split('/').map(encodeURIComponent).join('/');

export function apiUrl(o: HubOptions, repo: string, kind: 'revision' | 'tree', rev: string): string {
  const base = `${o.endpoint.replace(/\/+$/, '')}/api/models/${encPath(repo)}/${kind}/${encodeURIComponent(rev)}`;
  return kind === 'tree' ? `${base}?recursive=true` : base;
}

export function resolveUrl(o: HubOptions, repo: string, commit: string, file: string): string {
  return `${o.endpoint.replace(/\/+$/, '')}/${encPath(repo)}/resolve/${encodeURIComponent(commit)}/${encPath(file)}`;
}

/**
 * fetch with redirects followed by hand (up to 10), so that the Authorization header stays with the
 * endpoint's origin, and the first response's headers (X-Linked-Etag, X-Repo-Commit) can be read.
 */
export async function hubFetch(o: HubOptions, url: string, init: { method?: 'GET' | 'HEAD'; headers?: Record<string, string>; signal?: AbortSignal } = {}): Promise<{ res: Response; first: Response }> {
  const origin = new URL(o.endpoint).origin;
  let first: Response | undefined;
  for (let hop = 0; hop <= 10; hop++) {
    const headers: Record<string, string> = { 'user-agent': 'clipkit', ...init.headers };
    if (o.token && new URL(url).origin === origin) headers.authorization = `Bearer ${o.token}`;
    const res = await fetch(url, { method: init.method ?? 'GET', headers, redirect: 'manual', signal: init.signal });
    first ??= res;
    const loc = res.headers.get('location');
    if (res.status >= 300 && res.status < 400 && loc) {
      await res.body?.cancel();
      url = new URL(loc, url).toString();
      continue;
    }
    return { res, first };
  }
  throw new HubError(`too many redirects for ${url}`);
}

async function getJson(o: HubOptions, url: string, what: string): Promise<{ body: unknown; res: Response }> {
  const { res } = await hubFetch(o, url, { headers: { accept: 'application/json' } });
  if (!res.ok) {
    const text = await res.text().catch(() => '');
    const hint = res.status === 401 || res.status === 403 ? ' (private or gated: set HF_TOKEN)' : res.status === 404 ? ' (no such repository or revision)' : '';
    throw new HubError(`${what}: HTTP ${res.status}${hint}${text ? `: ${text.slice(0, 200)}` : ''}`, res.status);
  }
  return { body: await res.json(), res };
}

/** The commit sha a branch, tag or commit resolves to, and the file names at that commit. */
export async function resolveRevision(o: HubOptions, repo: string, revision: string): Promise<{ commit: string; files: string[] }> {
  const { body } = await getJson(o, apiUrl(o, repo, 'revision', revision), `${repo}@${revision}`);
  const { sha, siblings } = body as { sha?: unknown; siblings?: { rfilename?: unknown }[] };
  if (typeof sha !== 'string' || !/^[0-9a-f]{40}$/.test(sha)) throw new HubError(`${repo}@${revision}: the Hub's answer has no commit sha`);
  const files = Array.isArray(siblings) ? siblings.flatMap((s) => (typeof s?.rfilename === 'string' ? [s.rfilename] : [])) : [];
  return { commit: sha, files };
}

/** Every file of the repository at `commit`, with its expected hash (the tree API pages by Link). */
export async function listFiles(o: HubOptions, repo: string, commit: string): Promise<RepoFile[]> {
  const files: RepoFile[] = [];
  let url: string | undefined = apiUrl(o, repo, 'tree', commit);
  while (url) {
    const { body, res }: { body: unknown; res: Response } = await getJson(o, url, `${repo}@${commit.slice(0, 8)} file list`);
    if (!Array.isArray(body)) throw new HubError(`${repo}: the file list is not an array`);
    for (const e of body as { type?: string; path?: string; size?: number; oid?: string; lfs?: { oid?: string; size?: number } }[]) {
      if (e.type !== 'file' || typeof e.path !== 'string') continue;
      if (e.lfs && typeof e.lfs.oid === 'string') files.push({ path: e.path, size: Number(e.lfs.size ?? e.size), hash: { algo: 'sha256', hex: e.lfs.oid.replace(/^sha256:/, '') } });
      else if (typeof e.oid === 'string') files.push({ path: e.path, size: Number(e.size), hash: { algo: 'git-sha1', hex: e.oid } });
    }
    const next = /<([^>]+)>;\s*rel="next"/.exec(res.headers.get('link') ?? '');
    url = next ? new URL(next[1]!, url).toString() : undefined;
  }
  return files;
}

/**
 * The hash a resolve response announces, for endpoints without the tree API: X-Linked-Etag (LFS:
 * the sha256) on the first response, else an ETag of 40 hex digits (a git blob sha1).
 */
export function hashFromHeaders(h: Headers): RepoFile['hash'] | undefined {
  const clean = (v: string | null) => v?.replace(/^W\//, '').replace(/"/g, '').trim();
  const linked = clean(h.get('x-linked-etag'));
  if (linked && /^[0-9a-f]{64}$/.test(linked)) return { algo: 'sha256', hex: linked };
  const etag = clean(h.get('etag'));
  if (etag && /^[0-9a-f]{64}$/.test(etag)) return { algo: 'sha256', hex: etag };
  if (etag && /^[0-9a-f]{40}$/.test(etag)) return { algo: 'git-sha1', hex: etag };
  return undefined;
}

/**
 * Size and hash of one file from a HEAD request on its resolve URL, for endpoints without the tree
 * API (as huggingface_hub itself does): X-Linked-Size / X-Linked-Etag on the redirect for LFS files.
 */
export async function headFile(o: HubOptions, repo: string, commit: string, path: string): Promise<RepoFile> {
  const { res, first } = await hubFetch(o, resolveUrl(o, repo, commit, path), { method: 'HEAD' });
  if (!res.ok) throw new HubError(`${repo}/${path}: HTTP ${res.status}`, res.status);
  const hash = hashFromHeaders(first.headers) ?? hashFromHeaders(res.headers);
  const size = Number(first.headers.get('x-linked-size') ?? res.headers.get('content-length'));
  if (!hash || !Number.isSafeInteger(size)) throw new HubError(`${repo}/${path}: the server publishes no hash or size for it, so it cannot be verified`);
  return { path, size, hash };
}
