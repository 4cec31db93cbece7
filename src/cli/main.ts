#!/usr/bin/env node
// The clipkit command line: one table of subcommands, each in its own module under commands/.
import { UsageError } from './args.js';

export interface Command {
  summary: string;
  run(argv: string[]): Promise<void>;
}

/** name → loader (lazy, so `clipkit --help` does not load onnxruntime or sharp). */
const COMMANDS: Record<string, () => Promise<Command>> = {
  info: async () => (await import('./commands/info.js')).default,
  index: async () => (await import('./commands/index-cmd.js')).default,
  search: async () => (await import('./commands/search.js')).default,
  train: async () => (await import('./commands/train.js')).default,
  vit: async () => (await import('./commands/vit.js')).default,
  eval: async () => (await import('./commands/eval.js')).default,
  vae: async () => (await import('./commands/vae.js')).default,
  export: async () => (await import('./commands/export.js')).default,
  classify: async () => (await import('./commands/classify.js')).default,
  serve: async () => (await import('./commands/serve.js')).default,
  embed: async () => (await import('./commands/embed.js')).default,
  pull: async () => (await import('./commands/pull.js')).default,
};

async function main(argv: string[]): Promise<void> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    const lines = ['usage: clipkit <command> [options]   (clipkit <command> --help for its options)', '', 'Commands:'];
    for (const [n, load] of Object.entries(COMMANDS)) lines.push(`  ${n.padEnd(12)} ${(await load()).summary}`);
    console.log(lines.join('\n'));
    return;
  }
  const load = COMMANDS[name];
  if (!load) throw new UsageError(`unknown command '${name}' (known: ${Object.keys(COMMANDS).join(', ')})`);
  await (await load()).run(rest);
}

main(process.argv.slice(2)).catch((e: unknown) => {
  const err = e as Error;
  console.error(`clipkit: ${err.message}`);
  if (process.env.CLIPKIT_DEBUG && err.stack) console.error(err.stack);
  process.exitCode = err instanceof UsageError ? 2 : 1;
});
