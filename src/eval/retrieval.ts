// Image↔text retrieval recall@k (the Flickr30k / MSCOCO protocol of CLIP's paper and OpenCLIP's
// benchmark): similarities are cosine; a text query hits when its image is among the k best images,
// an image query hits when ANY of its captions is among the k best texts.
import type { Features } from '../models/clip-model.js';
import { ahead, checkFeatures, forEachScoreBlock, normalizeRows, rankOf } from './zeroshot.js';

export interface RetrievalOptions {
  /** The k of recall@k; default [1, 5, 10]. */
  ks?: readonly number[];
}

export interface RetrievalResult {
  /** recall@k of image queries over the texts, by k (fractions). */
  imageToText: Record<number, number>;
  /** recall@k of text queries over the images, by k (fractions). */
  textToImage: Record<number, number>;
  /** Image queries counted: images described by at least one text (others cannot hit, so are left out). */
  imageQueries: number;
  textQueries: number;
}

/**
 * imageFeatures [N, D], textFeatures [M, D], imageOfText[j] = the image text j describes. Features
 * are normalised here (the ranking of texts for an image depends on each text's norm otherwise).
 * Ties rank the lower index first, as in zeroShot.
 */
export async function retrieval(imageFeatures: Features, textFeatures: Features, imageOfText: Int32Array, o: RetrievalOptions = {}): Promise<RetrievalResult> {
  const [N, D] = checkFeatures('retrieval image features', imageFeatures);
  const [M] = checkFeatures('retrieval text features', textFeatures, D);
  const ks = [...(o.ks ?? [1, 5, 10])];
  if (ks.length === 0 || ks.some((k) => !Number.isInteger(k) || k < 1)) throw new Error(`retrieval: ks must be positive integers, got [${ks}]`);
  if (imageOfText.length !== M) throw new Error(`retrieval: imageOfText has ${imageOfText.length} entries for ${M} texts`);
  if (M === 0) throw new Error('retrieval: no texts');
  for (const i of imageOfText) if (!(i >= 0 && i < N)) throw new Error(`retrieval: imageOfText entry ${i} outside [0, ${N})`);

  const textsOf: number[][] = Array.from({ length: N }, () => []);
  imageOfText.forEach((i, j) => textsOf[i]!.push(j));
  const img = normalizeRows(imageFeatures);
  const txt = normalizeRows(textFeatures);

  // Image → text: rows are images. The best-ranked caption of an image is the one with the highest
  // score (lowest index among equals); its rank is the number of texts ahead of it.
  const i2t = new Array<number>(ks.length).fill(0);
  await forEachScoreBlock(img, txt, (lo, hi, s) => {
    for (let i = lo; i < hi; i++) {
      const pos = textsOf[i]!;
      if (pos.length === 0) continue;
      const off = (i - lo) * M;
      let best = pos[0]!;
      for (const j of pos) if (ahead(s, off, j, best)) best = j;
      const r = rankOf(s, off, M, best);
      ks.forEach((k, n) => r < k && i2t[n]!++);
    }
  });

  // Text → image: rows are texts (a second pass, so each comparison is within one computed row).
  const t2i = new Array<number>(ks.length).fill(0);
  await forEachScoreBlock(txt, img, (lo, hi, s) => {
    for (let j = lo; j < hi; j++) {
      const r = rankOf(s, (j - lo) * N, N, imageOfText[j]!);
      ks.forEach((k, n) => r < k && t2i[n]!++);
    }
  });

  const imageQueries = textsOf.filter((t) => t.length > 0).length;
  return {
    imageToText: Object.fromEntries(ks.map((k, n) => [k, i2t[n]! / imageQueries])),
    textToImage: Object.fromEntries(ks.map((k, n) => [k, t2i[n]! / M])),
    imageQueries,
    textQueries: M,
  };
}
