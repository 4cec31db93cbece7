// One file from the Hub into the cache's blobs/: streamed to <blob>.part, resumed with an HTTP Range
// request after an interruption (in this run — a few retries — or in a later one), and checked
// against the hash the Hub published before it is renamed into place. A file whose hash does not
// match is deleted: it is never used, and a later pull starts it afresh.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { HubError, type HubOptions, hubFetch, type RepoFile } from './client.js';

const RETRIES = 3;

export interface DownloadOptions {
  /** Called with bytes on disk so far (resumed bytes included) and the total. */
  onProgress?: (have: number, total: number) => void;
  /** Milliseconds before the first retry (doubled each time). */
  retryDelayMs?: number;
}

export async function downloadBlob(o: HubOptions, url: string, file: RepoFile, blob: string, d: DownloadOptions = {}): Promise<void> {
  mkdirSync(dirname(blob), { recursive: true });
  const part = `${blob}.part`;
  for (let attempt = 0; ; attempt++) {
    let have = existsSync(part) ? statSync(part).size : 0;
    if (have > file.size) {
      rmSync(part);
      have = 0;
    }
    try {
      if (have < file.size) await fetchInto(o, url, part, have, file, d);
      break;
    } catch (e) {
      if (e instanceof HubError || attempt >= RETRIES) {
        const saved = existsSync(part) ? statSync(part).size : 0;
        const resume = saved > 0 && !(e instanceof HubError) ? ` (${saved} of ${file.size} bytes kept: run the same command again to resume)` : '';
        throw new Error(`${file.path}: ${(e as Error).message}${resume}`);
      }
      await new Promise((r) => setTimeout(r, (d.retryDelayMs ?? 500) * 2 ** attempt));
    }
  }
  const got = await hashFile(part, file.hash.algo);
  if (got !== file.hash.hex) {
    rmSync(part, { force: true });
    throw new Error(`${file.path}: ${file.hash.algo} mismatch (expected ${file.hash.hex}, got ${got}): the download is corrupt and was deleted`);
  }
  renameSync(part, blob);
}

/** Appends bytes [have, size) of the file to `part` (from scratch if the server ignores Range). */
async function fetchInto(o: HubOptions, url: string, part: string, have: number, file: RepoFile, d: DownloadOptions): Promise<void> {
  const { res } = await hubFetch(o, url, { headers: have > 0 ? { range: `bytes=${have}-` } : {} });
  if (res.status === 416) return; // nothing left to send: the hash check decides
  if (res.status === 206) {
    const start = Number(/bytes (\d+)-/.exec(res.headers.get('content-range') ?? '')?.[1]);
    if (start !== have) {
      await res.body?.cancel();
      rmSync(part, { force: true });
      throw new Error(`the server resumed at byte ${start}, not ${have}; starting over`);
    }
  } else if (res.status === 200) have = 0;
  else {
    await res.body?.cancel();
    const msg = `HTTP ${res.status} for ${url}`;
    // Client errors will not go away by retrying (except a timeout or rate limit).
    throw res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429 ? new HubError(msg, res.status) : new Error(msg);
  }
  if (!res.body) throw new Error(`empty response for ${url}`);
  let done = have;
  d.onProgress?.(done, file.size);
  const count = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      done += chunk.length;
      d.onProgress?.(done, file.size);
      cb(null, chunk);
    },
  });
  await pipeline(Readable.fromWeb(res.body as WebReadableStream<Uint8Array>), count, createWriteStream(part, { flags: have > 0 ? 'a' : 'w' }));
  if (done < file.size) throw new Error(`the connection ended after ${done} of ${file.size} bytes`);
}

/** sha256 of the bytes, or git's blob sha1 (sha1 of "blob <size>\0" + bytes). */
export async function hashFile(path: string, algo: 'sha256' | 'git-sha1'): Promise<string> {
  const h = createHash(algo === 'sha256' ? 'sha256' : 'sha1');
  if (algo === 'git-sha1') h.update(`blob ${statSync(path).size}\0`);
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}
