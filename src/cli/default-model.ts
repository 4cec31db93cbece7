// Which model a command uses: --model as a local path, a repository id pulled earlier with
// `clipkit pull`, or — when --model is not given — the small CIFAR-10 model shipped with the package.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { findPulled, hubCacheDir, isRepoId } from '../hub/cache.js';
import { UsageError } from './args.js';

/**
 * The shipped model, `models/cifar10-clip/` at the package root (OpenCLIP layout plus tokenizer.json).
 * Compiled, this file is dist/src/cli/default-model.js, three levels below the root.
 */
export const DEFAULT_MODEL_DIR = fileURLToPath(new URL('../../../models/cifar10-clip/', import.meta.url)).replace(/\/$/, '');

/** CIFAR-10's classes, in label order: the labels `classify` uses on the default model. */
export const CIFAR10_CLASSES: readonly string[] = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck'];

export interface ResolvedModel {
  /** A local file or directory loadClip reads. */
  path: string;
  /** True for the shipped CIFAR-10 model (its classes are the default labels). */
  isDefault: boolean;
}

/**
 * `spec` undefined → the shipped model; an existing path → itself; `org/name` (or `hf:org/name`,
 * optionally `@revision`) → its snapshot in the pull cache. Nothing here touches the network.
 */
export function resolveModel(cmd: string, spec: string | undefined, o: { cache?: string } = {}): ResolvedModel {
  if (spec === undefined) {
    if (!existsSync(DEFAULT_MODEL_DIR)) {
      throw new UsageError(
        `${cmd}: no --model given and the default model is not installed (expected models/cifar10-clip/ at the package root, ${DEFAULT_MODEL_DIR}); ` +
          'pass --model <directory or .safetensors file>, or fetch one with `clipkit pull <repo-id>`',
      );
    }
    return { path: DEFAULT_MODEL_DIR, isDefault: true };
  }
  if (existsSync(spec)) return { path: spec, isDefault: false };
  const id = spec.replace(/^hf:/, '');
  if (isRepoId(id.split('@')[0]!)) {
    const [repo, revision] = id.split('@') as [string, string | undefined];
    const cache = o.cache ?? hubCacheDir();
    const dir = findPulled(cache, repo, revision ?? 'main');
    if (dir) return { path: dir, isDefault: false };
    throw new UsageError(`${cmd}: '${spec}' is not a local path, and repository ${repo}${revision ? `@${revision}` : ''} has not been pulled into ${cache}: run \`clipkit pull ${repo}\` first`);
  }
  throw new UsageError(`${cmd}: model '${spec}' does not exist`);
}
