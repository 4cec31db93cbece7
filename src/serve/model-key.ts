// A short fingerprint of a model's weights for cache keys (class embeddings, exported ONNX towers,
// embedding runs). Hashing a multi-GB file on every start would cost seconds, so the key is the
// weights file's resolved path, size and modification time: any rewrite of the file changes it.
import { createHash } from 'node:crypto';
import { existsSync, realpathSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** The safetensors file loadClip would read for `path` (a file, or a directory in hub layout). */
export function weightsFileOf(path: string): string {
  if (!statSync(path).isDirectory()) return path;
  for (const f of ['open_clip_model.safetensors', 'model.safetensors']) if (existsSync(join(path, f))) return join(path, f);
  return path; // loadClip gives the error
}

/** The fingerprint; int8 towers give other features than fp32 ones, so they get their own key. */
export function modelKey(path: string, quantize: 'none' | 'int8' = 'none'): string {
  const file = realpathSync(weightsFileOf(path));
  const st = statSync(file);
  const key = createHash('sha256').update(JSON.stringify([file, st.size, st.mtimeMs])).digest('hex').slice(0, 20);
  return quantize === 'int8' ? `${key}-int8` : key;
}
