// The vector store (src/index/store.ts, LanceDB): load time, exact (flat) search latency, IVF-PQ build
// time, ANN search latency, and recall@10 of ANN against the exact scan, on 512-d vectors.
//
// Two kinds of data: i.i.d. gaussian vectors (the worst case for any ANN index: in 512-d every point is
// almost equally far from a random query, so there are no clusters for IVF to exploit) and a mixture of
// 1,000 gaussian clusters (closer to real embeddings, which crowd around topics). Queries are fresh
// draws from the same distribution, never stored rows. Vectors are generated and written in batches,
// so 1M × 512 (2 GB of float32) never sits in JS memory at once.
//
// quick: 100k rows only (both kinds), ~10–20 min on two cores (the IVF-PQ builds dominate); full:
// adds 1M random rows, ~45 min more (200 exact scans at ~9 s each, an ~11 min index build).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { DEFAULT_NPROBES, DEFAULT_REFINE, VectorStore, defaultIndexParams, type SearchOptions } from '../src/index/store.js';
import { fmtTime } from './report.js';

const DIM = 512;
const K = 10;
const QUERIES = 200;
const BATCH = 20_000;
const CLUSTERS = 1000;
/** Spread of a cluster around its centre: cos(point, centre) ≈ 1/√(1+σ²) = 0.8. */
const SIGMA = 0.75;

export interface Case {
  rows: number;
  data: 'random' | 'clustered';
}

/** mulberry32: a seeded uniform [0, 1) source, so every run indexes the same vectors. */
function uniform(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Box–Muller over a uniform source. */
function gaussian(u: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
}

/** A source of vectors: i.i.d. N(0, 1), or the centre of one of CLUSTERS plus N(0, σ²) noise. */
function source(kind: Case['data'], seed: number): (out: Float32Array) => void {
  const u = uniform(seed);
  const g = gaussian(u);
  if (kind === 'random') return (out) => out.forEach((_, j) => (out[j] = g()));
  const cg = gaussian(uniform(777)); // the same centres for data and queries
  const centres = new Float32Array(CLUSTERS * DIM).map(() => cg());
  return (out) => {
    const c = Math.floor(u() * CLUSTERS);
    for (let j = 0; j < DIM; j++) out[j] = centres[c * DIM + j]! + SIGMA * g();
  };
}

function percentile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

async function timedSearches(store: VectorStore, queries: Float32Array[], o: SearchOptions): Promise<{ ids: string[][]; p50: number; p99: number }> {
  await store.search(queries[0]!, K, o); // warm the caches (index/partition files) once
  const ids: string[][] = [];
  const times: number[] = [];
  for (const q of queries) {
    const t0 = performance.now();
    const hits = await store.search(q, K, o);
    times.push((performance.now() - t0) / 1e3);
    ids.push(hits.map((h) => h.id));
  }
  times.sort((a, b) => a - b);
  return { ids, p50: percentile(times, 0.5), p99: percentile(times, 0.99) };
}

function recall(approx: string[][], exact: string[][]): number {
  let hit = 0;
  let total = 0;
  approx.forEach((ids, i) => {
    const truth = new Set(exact[i]);
    hit += ids.filter((id) => truth.has(id)).length;
    total += truth.size;
  });
  return hit / total;
}

/** One data set: load, exact searches, index build, ANN searches; returns table rows. */
export async function runCase(c: Case, log: (s: string) => void): Promise<string[][]> {
  const dir = mkdtempSync(join(tmpdir(), 'clipkit-bench-index-'));
  const rows: string[][] = [];
  try {
    const store = await VectorStore.open(dir, { dim: DIM, autoIndex: false });
    const next = source(c.data, 1);
    let t0 = performance.now();
    for (let lo = 0; lo < c.rows; lo += BATCH) {
      const items = [];
      for (let i = lo; i < Math.min(c.rows, lo + BATCH); i++) {
        const v = new Float32Array(DIM);
        next(v);
        items.push({ id: String(i), vector: v });
      }
      await store.add(items, { deferIndex: true });
      if ((lo / BATCH) % 10 === 9) log(`  loaded ${lo + BATCH} rows`);
    }
    const load = (performance.now() - t0) / 1e3;
    const nextQuery = source(c.data, 2);
    const queries = Array.from({ length: QUERIES }, () => {
      const v = new Float32Array(DIM);
      nextQuery(v);
      return v;
    });
    log(`  ${c.rows} rows loaded in ${load.toFixed(1)} s; exact search × ${QUERIES}…`);
    const exact = await timedSearches(store, queries, { exact: true });
    log(`  exact p50 ${fmtTime(exact.p50)}; building IVF-PQ…`);
    t0 = performance.now();
    await store.createIndex();
    const build = (performance.now() - t0) / 1e3;
    const p = defaultIndexParams(c.rows, DIM);
    const name = `${c.rows / 1000}k ${c.data}`;
    const perRow = `${fmtTime(load)} (${Math.round(c.rows / load / 1000)}k rows/s)`;
    rows.push([name, perRow, 'exact (flat scan)', '—', fmtTime(exact.p50), fmtTime(exact.p99), '1.000']);
    const settings: [string, SearchOptions][] = [
      [`IVF-PQ nprobes ${DEFAULT_NPROBES}, PQ only`, { refineFactor: 0 }],
      [`IVF-PQ nprobes ${DEFAULT_NPROBES}, refine ${DEFAULT_REFINE} (default)`, {}],
      [`IVF-PQ nprobes ${DEFAULT_NPROBES * 3}, refine ${DEFAULT_REFINE * 2}`, { nprobes: DEFAULT_NPROBES * 3, refineFactor: DEFAULT_REFINE * 2 }],
    ];
    for (const [i, [label, o]] of settings.entries()) {
      const a = await timedSearches(store, queries, o);
      const buildCell = i === 0 ? `${fmtTime(build)} (${p.numPartitions} part., ${p.numSubVectors} sub-vec.)` : '';
      rows.push([name, '', label, buildCell, fmtTime(a.p50), fmtTime(a.p99), recall(a.ids, exact.ids).toFixed(3)]);
      log(`  ${label}: p50 ${fmtTime(a.p50)}, recall@10 ${rows[rows.length - 1]![6]}`);
    }
    store.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

export async function run(opts: { quick: boolean }): Promise<void> {
  const cases: Case[] = [
    { rows: 100_000, data: 'random' },
    { rows: 100_000, data: 'clustered' },
    ...(opts.quick ? [] : [{ rows: 1_000_000, data: 'random' } as Case]),
  ];
  const log = (s: string): void => void process.stderr.write(`${s}\n`);
  const rows: string[][] = [];
  for (const c of cases) {
    log(`index bench: ${c.rows} ${c.data} ${DIM}-d vectors`);
    rows.push(...(await runCase(c, log)));
  }
  printRows(rows);
}

export function printRows(rows: string[][]): void {
  const header = ['data', 'load', 'search', 'index build', `p50 (${QUERIES} q)`, 'p99', `recall@${K}`];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (c: string[]): string => c.map((x, i) => x.padEnd(widths[i]!)).join('  ').trimEnd();
  console.log(`\nVector store (LanceDB, cosine, ${DIM}-d, top-${K}): exact scan vs IVF-PQ; recall against the exact scan`);
  console.log(line(header));
  console.log(line(widths.map((w) => '-'.repeat(w))));
  for (const r of rows) console.log(line(r));
}
