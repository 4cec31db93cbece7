// Option parsing for subcommands: node's parseArgs in strict mode (unknown options are errors), plus
// typed, range-checked conversion so a bad value names the option and what was expected.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

export type OptSpec =
  | { type: 'string'; default?: string; short?: string; multiple?: boolean; choices?: readonly string[]; help: string }
  | { type: 'int' | 'float'; default?: number; short?: string; min?: number; max?: number; help: string }
  | { type: 'boolean'; default?: boolean; short?: string; help: string };

export type Specs = Record<string, OptSpec>;

export type Parsed<S extends Specs> = {
  [K in keyof S]: S[K] extends { type: 'int' | 'float' }
    ? S[K] extends { default: number }
      ? number
      : number | undefined
    : S[K] extends { type: 'boolean' }
      ? boolean
      : S[K] extends { multiple: true }
        ? string[]
        : S[K] extends { default: string }
          ? string
          : string | undefined;
};

export class UsageError extends Error {
  override name = 'UsageError';
}

export function parse<S extends Specs>(cmd: string, argv: string[], specs: S): { opts: Parsed<S>; positionals: string[] } {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }> = {};
  for (const [k, s] of Object.entries(specs)) {
    options[k] = { type: s.type === 'boolean' ? 'boolean' : 'string', ...(s.short ? { short: s.short } : {}), ...('multiple' in s && s.multiple ? { multiple: true } : {}) };
  }
  let raw: ReturnType<typeof parseArgs>;
  try {
    raw = parseArgs({ args: argv, options, strict: true, allowPositionals: true });
  } catch (e) {
    throw new UsageError(`${cmd}: ${(e as Error).message}`);
  }
  const out: Record<string, unknown> = {};
  for (const [k, s] of Object.entries(specs)) {
    const v = raw.values[k];
    if (v === undefined) {
      out[k] = s.default ?? (s.type === 'boolean' ? false : 'multiple' in s && s.multiple ? [] : undefined);
      continue;
    }
    if (s.type === 'int' || s.type === 'float') {
      const n = Number(v);
      if (typeof v !== 'string' || v.trim() === '' || !Number.isFinite(n) || (s.type === 'int' && !Number.isInteger(n))) {
        throw new UsageError(`${cmd}: --${k} must be ${s.type === 'int' ? 'an integer' : 'a number'}, got '${String(v)}'`);
      }
      if (s.min !== undefined && n < s.min) throw new UsageError(`${cmd}: --${k} must be ≥ ${s.min}, got ${n}`);
      if (s.max !== undefined && n > s.max) throw new UsageError(`${cmd}: --${k} must be ≤ ${s.max}, got ${n}`);
      out[k] = n;
    } else if (s.type === 'string' && s.choices) {
      const vals = Array.isArray(v) ? v : [v];
      for (const x of vals) if (!s.choices.includes(x as string)) throw new UsageError(`${cmd}: --${k} must be one of ${s.choices.join(', ')}, got '${String(x)}'`);
      out[k] = v;
    } else out[k] = v;
  }
  return { opts: out as Parsed<S>, positionals: raw.positionals };
}

export function usage(cmd: string, summary: string, specs: Specs, args = ''): string {
  const lines = [`clipkit ${cmd} ${args}`.trim(), '', summary, '', 'Options:'];
  for (const [k, s] of Object.entries(specs)) {
    const dflt = s.default !== undefined ? ` (default: ${String(s.default)})` : '';
    lines.push(`  --${k}${s.type === 'boolean' ? '' : ` <${s.type}>`}  ${s.help}${dflt}`);
  }
  return lines.join('\n');
}

/**
 * `--resume` continues the run stored in the run folder: options that would define a different run
 * are refused (rather than silently ignored); only those in `allowed` may accompany it.
 */
export function checkResumeFlags(cmd: string, argv: readonly string[], allowed: readonly string[]): void {
  const given = argv.filter((a) => a.startsWith('--')).map((a) => a.slice(2).split('=')[0]!);
  const bad = [...new Set(given.filter((k) => !allowed.includes(k)))];
  if (bad.length) throw new UsageError(`${cmd}: --resume continues the run stored in --out; do not pass ${bad.map((k) => `--${k}`).join(', ')}`);
}

/** Reads a run folder's config.json for --resume, with a clear error when there is none. */
export function readRunConfig<T>(cmd: string, out: string): T {
  const file = `${out}/config.json`;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new UsageError(`${cmd}: --resume: ${file} not found (is --out a run folder?)`);
  }
  try {
    return { ...(JSON.parse(text) as T), out } as T;
  } catch (e) {
    throw new Error(`${cmd}: ${file} is not valid JSON: ${(e as Error).message}`);
  }
}

/** The --int8 option of the commands that run a CLIP model's towers. */
export const INT8_OPTION = { type: 'boolean', help: 'run the linear layers as int8 GEMMs (dynamic quantization): faster on CPUs, features close to fp32 but not equal' } as const;

/** --int8 as the models' `quantize` option. */
export const quantizeOf = (int8: boolean | undefined): 'none' | 'int8' => (int8 ? 'int8' : 'none');
