// Streaming reads of tar shards (WebDataset layout) without extracting them to disk.
//
// A WebDataset shard is a plain tar whose files are grouped by "key": every file of one sample
// shares the path up to the first dot of its base name (`a/b/000123.jpg`, `a/b/000123.txt`,
// `a/b/000123.cls` → key `a/b/000123`, extensions `jpg`, `txt`, `cls`), and the files of a sample
// are stored next to each other. So a shard can be read front to back, holding one sample at a
// time in memory.

import { createReadStream } from 'node:fs';
import { basename, dirname } from 'node:path';
import { createGunzip } from 'node:zlib';
import type { Readable } from 'node:stream';
import * as tar from 'tar-stream';

/** One regular file of a tar archive, read into memory. */
export interface TarFile {
  name: string;
  data: Uint8Array;
}

/** The files of a tar archive in storage order (gzip-compressed shards are gunzipped on the fly). */
export async function* readTar(file: string): AsyncGenerator<TarFile> {
  const source = createReadStream(file);
  const gzipped = /\.(tgz|tar\.gz)$/i.test(file);
  const input: Readable = gzipped ? source.pipe(createGunzip()) : source;
  const extract = tar.extract();
  // pipe() does not forward errors: a missing file or broken gzip must end the iteration.
  const fail = (err: Error): void => {
    extract.destroy(new Error(`${file}: ${err.message}`, { cause: err }));
  };
  source.on('error', fail);
  if (input !== source) input.on('error', fail);
  input.pipe(extract);
  try {
    for await (const entry of extract) {
      const { name, type, size } = entry.header;
      if (type !== 'file' && type !== 'contiguous-file') {
        entry.resume(); // directories, links, pax headers: nothing to read
        continue;
      }
      // One allocation per file (not tar-stream's pooled chunks), so the bytes can be handed
      // to a worker without keeping a larger buffer alive.
      const data = new Uint8Array(size ?? 0);
      let at = 0;
      for await (const chunk of entry as AsyncIterable<Buffer>) {
        if (at + chunk.length > data.length) throw new Error(`${file}: entry ${name} is longer than its header says`);
        data.set(chunk, at);
        at += chunk.length;
      }
      yield { name, data: at === data.length ? data : data.subarray(0, at) };
    }
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new Error(msg.startsWith(file) ? msg : `${file}: ${msg}`, { cause: err });
  } finally {
    // Reached early when the consumer stops: release the file descriptor.
    source.destroy();
    extract.destroy();
  }
}

/** WebDataset's split of a member name into sample key and extension (lower-cased). */
export function splitKey(name: string): { key: string; ext: string } {
  const base = basename(name);
  const dot = base.indexOf('.');
  if (dot <= 0) return { key: name, ext: '' };
  const dir = dirname(name);
  const stem = base.slice(0, dot);
  return { key: dir === '.' ? stem : `${dir}/${stem}`, ext: base.slice(dot + 1).toLowerCase() };
}

/** Consecutive files with the same key, as one group (`files` maps extension → bytes). */
export async function* groupByKey(files: AsyncIterable<TarFile>): AsyncGenerator<{ key: string; files: Map<string, Uint8Array> }> {
  let key: string | undefined;
  let group = new Map<string, Uint8Array>();
  for await (const f of files) {
    const s = splitKey(f.name);
    if (s.ext === '') continue; // no extension: not part of any sample (e.g. a README)
    if (s.key !== key) {
      if (key !== undefined) yield { key, files: group };
      key = s.key;
      group = new Map();
    }
    group.set(s.ext, f.data);
  }
  if (key !== undefined) yield { key, files: group };
}

/**
 * Bash-style brace expansion for shard lists: `data-{000..009}.tar` (zero padding kept as
 * written, as WebDataset does) and `{train,val}-{0..1}.tar`. Patterns without braces pass through.
 */
export function expandBraces(pattern: string): string[] {
  const m = /\{([^{}]*)\}/.exec(pattern);
  if (!m) return [pattern];
  const head = pattern.slice(0, m.index);
  const tail = pattern.slice(m.index + m[0].length);
  let parts: string[];
  const range = /^(-?\d+)\.\.(-?\d+)$/.exec(m[1]!);
  if (range) {
    const [a, b] = [range[1]!, range[2]!];
    const from = Number(a);
    const to = Number(b);
    // A leading zero on either end asks for fixed-width numbers.
    const width = /^-?0\d/.test(a) || /^-?0\d/.test(b) ? Math.max(a.length, b.length) : 0;
    const step = from <= to ? 1 : -1;
    parts = [];
    for (let i = from; step > 0 ? i <= to : i >= to; i += step) parts.push(String(i).padStart(width, '0'));
  } else if (m[1]!.includes(',')) {
    parts = m[1]!.split(',');
  } else {
    // `{x}` is literal in bash; keep it and expand the rest of the pattern.
    return expandBraces(tail).map((t) => `${head}{${m[1]}}${t}`);
  }
  return parts.flatMap((p) => expandBraces(head + p + tail));
}
