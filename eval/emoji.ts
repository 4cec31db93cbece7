// The emoji image-text dataset: ~1,900 emoji drawn in two styles (Google's Noto and Twitter's
// Twemoji, from the MIT-licensed npm packages emoji-datasource-google / -twitter), captioned with
// their Unicode names. Training on one style and retrieving in the other measures what the chapter
// argues for CLIP: the text side names concepts, so the image side has to generalise across styles.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';

export const EMOJI_VERSION = '16.0.0';
export const STYLES = ['google', 'twitter'] as const;
export type Style = (typeof STYLES)[number];

interface EmojiEntry {
  name: string | null;
  short_name: string;
  unified: string;
  image: string;
  category: string;
  has_img_google: boolean;
  has_img_twitter: boolean;
}

/** Fetches (npm pack) and unpacks both packages into `dir` unless they are already there. */
export function fetchEmojiPackages(dir: string, log: (s: string) => void): Record<Style, string> {
  mkdirSync(dir, { recursive: true });
  const out = {} as Record<Style, string>;
  for (const style of STYLES) {
    const root = join(dir, style);
    const pkg = join(root, 'package');
    if (!existsSync(join(pkg, 'emoji.json'))) {
      const spec = `emoji-datasource-${style}@${EMOJI_VERSION}`;
      log(`fetching ${spec} from the npm registry`);
      const tgz = execFileSync('npm', ['pack', spec, '--silent'], { cwd: dir, encoding: 'utf8' }).trim().split('\n').pop()!;
      mkdirSync(root, { recursive: true });
      execFileSync('tar', ['-xzf', join(dir, tgz), '-C', root]);
    }
    out[style] = pkg;
  }
  return out;
}

/**
 * Writes `<dir>/<style>.csv` (image, caption) for each style over the emoji both styles draw, with
 * the images composited onto white (64×64 RGB PNG: the packages' transparent pixels carry no
 * colour of their own). Returns the table paths and the number of rows.
 */
export async function buildEmojiTables(dir: string, log: (s: string) => void = () => {}): Promise<{ tables: Record<Style, string>; rows: number }> {
  const pkgs = fetchEmojiPackages(join(dir, 'npm'), log);
  const entries = JSON.parse(readFileSync(join(pkgs.google, 'emoji.json'), 'utf8')) as EmojiEntry[];
  const seen = new Set<string>();
  const chosen = entries.filter((e) => {
    const caption = captionOf(e);
    if (!e.has_img_google || !e.has_img_twitter || seen.has(caption)) return false;
    seen.add(caption);
    return STYLES.every((s) => existsSync(join(pkgs[s], 'img', s, '64', e.image)));
  });
  const tables = {} as Record<Style, string>;
  for (const style of STYLES) {
    const imgDir = join(dir, 'images', style);
    mkdirSync(imgDir, { recursive: true });
    const lines = ['image,caption'];
    for (const e of chosen) {
      const file = join(imgDir, e.image);
      if (!existsSync(file)) {
        await sharp(join(pkgs[style], 'img', style, '64', e.image)).flatten({ background: '#ffffff' }).png().toFile(file);
      }
      lines.push(`images/${style}/${e.image},"${captionOf(e).replaceAll('"', '""')}"`);
    }
    tables[style] = join(dir, `${style}.csv`);
    writeFileSync(tables[style], `${lines.join('\n')}\n`);
  }
  log(`emoji tables: ${chosen.length} emoji in ${STYLES.join(' and ')} style → ${dir}`);
  return { tables, rows: chosen.length };
}

/** The Unicode name, lower-cased ("GRINNING FACE" → "grinning face"). */
function captionOf(e: EmojiEntry): string {
  return (e.name ?? e.short_name.replaceAll('_', ' ')).toLowerCase();
}
