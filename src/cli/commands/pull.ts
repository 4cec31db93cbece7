// clipkit pull: download a model repository (weights, config, tokenizer) from the Hugging Face Hub or
// a mirror into the local cache; prints the snapshot directory. Afterwards `--model <repo-id>` works
// offline in every command.
import { hubCacheDir } from '../../hub/cache.js';
import type { RepoFile } from '../../hub/client.js';
import { parse, usage, UsageError } from '../args.js';
import type { Command } from '../main.js';

const SPECS = {
  revision: { type: 'string', default: 'main', help: 'branch, tag or commit' },
  cache: { type: 'string', help: 'cache directory (default: $CLIPKIT_CACHE/hub or ~/.cache/clipkit/hub)' },
  endpoint: { type: 'string', help: 'hub URL (default: $HF_ENDPOINT or https://huggingface.co)' },
  json: { type: 'boolean', help: 'print a JSON summary' },
  help: { type: 'boolean', short: 'h', help: 'show this help' },
} as const;

const pullCommand: Command = {
  summary: 'download a model repository (Hugging Face / OpenCLIP) into the local cache',
  async run(argv) {
    const { opts, positionals } = parse('pull', argv, SPECS);
    if (opts.help) return console.log(usage('pull', this.summary, SPECS, '<org/name>'));
    if (positionals.length !== 1) throw new UsageError('pull: give one repository id, e.g. laion/CLIP-ViT-B-32-laion2B-s34B-b79K');
    const repo = positionals[0]!.replace(/^hf:/, '');
    const { isRepoId } = await import('../../hub/cache.js');
    if (!isRepoId(repo)) throw new UsageError(`pull: '${repo}' is not a repository id (expected org/name)`);
    const endpoint = opts.endpoint ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co';
    try {
      new URL(endpoint);
    } catch {
      throw new UsageError(`pull: --endpoint must be a URL, got '${endpoint}'`);
    }
    const { pull } = await import('../../hub/pull.js');
    const bar = progressBar();
    const r = await pull(repo, {
      endpoint,
      token: process.env.HF_TOKEN || undefined,
      cache: opts.cache ?? hubCacheDir(),
      revision: opts.revision,
      onFile: bar.file,
      onProgress: bar.progress,
    });
    for (const w of r.warnings) console.error(`pull: warning: ${w}`);
    if (opts.json) return console.log(JSON.stringify(r, null, 2));
    console.log(r.dir);
  },
};
export default pullCommand;

/** One line per file on stderr: a bar redrawn in place on a terminal; start and end lines otherwise. */
function progressBar(): { file: (f: RepoFile, s: 'cached' | 'start' | 'done') => void; progress: (f: RepoFile, have: number, total: number) => void } {
  const tty = !!process.stderr.isTTY;
  let t0 = 0;
  let from = 0;
  let last = 0;
  let line = '';
  const mb = (n: number) => (n / 1e6).toFixed(1);
  return {
    file(f, s) {
      if (s === 'cached') return void process.stderr.write(`pull: ${f.path}: in the cache\n`);
      if (s === 'start') {
        t0 = performance.now();
        from = -1;
        if (!tty) process.stderr.write(`pull: ${f.path}: downloading ${mb(f.size)} MB\n`);
        return;
      }
      process.stderr.write(tty ? `\r${line}\x1b[K\n` : `pull: ${f.path}: done, ${f.hash.algo} verified\n`);
    },
    progress(f, have, total) {
      if (from < 0) from = have; // bytes resumed from an earlier run
      const now = performance.now();
      if (!tty || (now - last < 100 && have < total)) return;
      last = now;
      const frac = total > 0 ? have / total : 1;
      const rate = (have - from) / Math.max((now - t0) / 1000, 1e-3);
      const bar = '#'.repeat(Math.round(frac * 24)).padEnd(24, '·');
      line = `pull: ${f.path} [${bar}] ${(100 * frac).toFixed(0).padStart(3)}% ${mb(have)}/${mb(total)} MB ${mb(rate)} MB/s`;
      process.stderr.write(`\r${line}\x1b[K`);
    },
  };
}
