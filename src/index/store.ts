// VectorStore: an embedded (in-process, one directory) vector store over LanceDB for CLIP embeddings.
//
// Rows are {id, vector, path, caption, meta}: `meta` holds every other key of an added item as JSON,
// so the schema is fixed and any metadata round-trips. Similarity is cosine. LanceDB's "cosine"
// distance is 1 − cos(a, b) ∈ [0, 2], so score = 1 − _distance ∈ [−1, 1] (1: same direction).
//
// Search is exact (a flat scan: every row read and compared, ~0.4 s per query at 100k × 512 on two
// idle cores, linear in rows) until the table reaches `annThreshold` rows; then an IVF-PQ index is
// built (~10 ms per query at 100k; see bench/index.ts). With an index, LanceDB still scans the rows
// added after it was built by brute force and merges them into the results, and deleted rows are
// masked out, so the index keeps answering correctly between rebuilds; `autoIndex` folds new rows into
// the index (optimize) once they are a sizeable share, to keep that brute-force part small.
import { createRequire } from 'node:module';
import type * as LanceDb from '@lancedb/lancedb';
import type * as Arrow from 'apache-arrow';

// LanceDB (a native module) is loaded on the first `open`, not on import, so that importing this file
// (for its types and constants, e.g. by the CLI's --help) stays cheap.
let lancedb: typeof LanceDb;
let arrow: typeof Arrow;

function loadNative(): void {
  if (lancedb) return;
  // LanceDB's native logger prints warnings to stderr that are noise here (k-means reporting empty
  // PQ clusters on unclustered data, deprecation notices): keep errors only unless the user set a
  // level. It reads these variables when the native module loads, so they are set before require.
  process.env.LANCEDB_LOG ??= 'error';
  process.env.LANCE_INCLUDE_VECTOR_CENTROIDS ??= 'false'; // index statistics without the centroids
  const require = createRequire(import.meta.url);
  lancedb = require('@lancedb/lancedb') as typeof LanceDb;
  // LanceDB is a CommonJS package and checks `instanceof arrow.Table` against the CommonJS build of
  // apache-arrow; an ESM `import` would load the second (ESM) copy, whose tables LanceDB rejects. So
  // arrow is required through CommonJS too: both sides share one module instance.
  arrow = require('apache-arrow') as typeof Arrow;
}

export type Metric = 'cosine';

export interface StoreOptions {
  /** Vector length. Required to create a store; checked against an existing one (inferred if omitted). */
  dim?: number;
  metric?: Metric;
  /** Table name inside the directory. */
  table?: string;
  /** Row count from which `autoIndex` builds the ANN index (default 50,000). */
  annThreshold?: number;
  /** Run `autoIndex` after every write (default true). Bulk loaders pass `{deferIndex: true}` instead. */
  autoIndex?: boolean;
}

/** One stored item. Keys other than id/vector/path/caption are kept as metadata. */
export interface StoreItem {
  id: string;
  vector: Float32Array | readonly number[];
  path?: string | null;
  caption?: string | null;
  [key: string]: unknown;
}

export interface SearchHit {
  id: string;
  /** Cosine similarity to the query, 1 − LanceDB's cosine distance. */
  score: number;
  path?: string;
  caption?: string;
  /** Extra keys the item was added with. */
  metadata?: Record<string, unknown>;
}

export interface SearchOptions {
  /**
   * An SQL predicate over the columns id, path, caption and meta (the metadata as JSON text), e.g.
   * "path LIKE 'cats/%'". Applied before the vector search (prefilter), so k results come back when k
   * rows match. Quote string values with `sqlString`.
   */
  filter?: string;
  /** Skip the ANN index: an exact scan (the ground truth for recall). */
  exact?: boolean;
  /** IVF partitions probed (index only); default DEFAULT_NPROBES. */
  nprobes?: number;
  /** Re-rank refineFactor × k PQ candidates with the full vectors (index only); default DEFAULT_REFINE. */
  refineFactor?: number;
}

export interface WriteOptions {
  /** Skip `autoIndex` after this write (for batched bulk loads: call `autoIndex` once at the end). */
  deferIndex?: boolean;
}

export interface IndexParams {
  numPartitions?: number;
  numSubVectors?: number;
}

export interface IndexInfo {
  type: string;
  indexedRows: number;
  unindexedRows: number;
}

const COLUMNS = ['id', 'path', 'caption', 'meta'] as const;
const RESERVED = new Set(['id', 'vector', 'path', 'caption']);
export const DEFAULT_ANN_THRESHOLD = 50_000;
/**
 * Search-time defaults for the IVF-PQ index, chosen with bench/index.ts (recall@10 against the exact
 * scan, 100k × 512 in 1,000 gaussian clusters): PQ codes alone rank poorly (recall 0.28), so
 * refineFactor re-scores 10 × k candidates with the full vectors (recall 0.997, ~12 ms per query;
 * it also makes the returned scores exact cosines). Structureless i.i.d. random vectors remain hard
 * for IVF-PQ at any setting (recall 0.1 here): real embeddings are clustered.
 */
export const DEFAULT_NPROBES = 20;
export const DEFAULT_REFINE = 10;
/** Fewer rows than this cannot train the PQ codebooks (256 centroids per sub-vector at 8 bits). */
export const MIN_INDEX_ROWS = 256;
/** IN-lists are split so one SQL statement stays small. */
const IN_CHUNK = 2000;

/** An SQL string literal (single quotes doubled), for filters. */
export function sqlString(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

/**
 * IVF-PQ parameters as LanceDB recommends them: √rows partitions (each partition ~√rows rows, so
 * picking partitions and scanning them cost about the same), but at least 256 rows per partition so
 * k-means has enough samples per centroid on small tables; and dim/16 sub-vectors (16 values per
 * sub-vector, SIMD-friendly; dim/8 when 16 does not divide, 1 when 8 does not either).
 */
export function defaultIndexParams(rows: number, dim: number): Required<IndexParams> {
  const numPartitions = Math.max(1, Math.min(Math.round(Math.sqrt(rows)), Math.floor(rows / MIN_INDEX_ROWS) || 1));
  const numSubVectors = dim % 16 === 0 ? dim / 16 : dim % 8 === 0 ? dim / 8 : 1;
  return { numPartitions, numSubVectors };
}

export class VectorStore {
  private constructor(
    private readonly db: LanceDb.Connection,
    private readonly table: LanceDb.Table,
    readonly dir: string,
    readonly dim: number,
    readonly metric: Metric,
    readonly annThreshold: number,
    private readonly autoIndexOnWrite: boolean,
  ) {}

  /** Opens the store in `dir`, creating it (and the directory) when it does not exist. */
  static async open(dir: string, o: StoreOptions = {}): Promise<VectorStore> {
    loadNative();
    const metric = o.metric ?? 'cosine';
    if (metric !== 'cosine') throw new Error(`VectorStore: metric must be 'cosine', got '${String(metric)}'`);
    if (o.dim !== undefined && !(Number.isInteger(o.dim) && o.dim >= 1)) throw new Error(`VectorStore: dim must be a positive integer, got ${o.dim}`);
    const threshold = o.annThreshold ?? DEFAULT_ANN_THRESHOLD;
    if (!(Number.isInteger(threshold) && threshold >= 0)) throw new Error(`VectorStore: annThreshold must be a non-negative integer, got ${threshold}`);
    const name = o.table ?? 'items';
    const db = await lancedb.connect(dir);
    let table: LanceDb.Table;
    let dim: number;
    if ((await db.tableNames()).includes(name)) {
      table = await db.openTable(name);
      const schema = await table.schema();
      const vec = schema.fields.find((f) => f.name === 'vector');
      const stored = vec && arrow.DataType.isFixedSizeList(vec.type) ? vec.type.listSize : undefined;
      const storedMetric = schema.metadata.get('clipkit.metric');
      if (stored === undefined || !COLUMNS.every((c) => schema.fields.some((f) => f.name === c))) {
        table.close();
        db.close();
        throw new Error(`VectorStore: table '${name}' in ${dir} was not written by clipkit (columns: ${schema.fields.map((f) => f.name).join(', ')})`);
      }
      if (o.dim !== undefined && o.dim !== stored) {
        table.close();
        db.close();
        throw new Error(`VectorStore: ${dir} holds ${stored}-d vectors, but ${o.dim}-d were given`);
      }
      if (storedMetric && storedMetric !== metric) throw new Error(`VectorStore: ${dir} uses metric '${storedMetric}', not '${metric}'`);
      dim = stored;
    } else {
      if (o.dim === undefined) {
        db.close();
        throw new Error(`VectorStore: no store in ${dir} (give dim to create one)`);
      }
      dim = o.dim;
      table = await db.createEmptyTable(name, schemaFor(dim, metric));
    }
    return new VectorStore(db, table, dir, dim, metric, threshold, o.autoIndex ?? true);
  }

  close(): void {
    this.table.close();
    this.db.close();
  }

  async count(filter?: string): Promise<number> {
    return this.table.countRows(filter);
  }

  /** Inserts new items. Ids must be new (in the call and in the store): use `upsert` to replace. */
  async add(items: readonly StoreItem[], o: WriteOptions = {}): Promise<void> {
    if (items.length === 0) return;
    const batch = this.toArrow(items, 'add');
    const existing = await this.existingIds(items.map((it) => it.id));
    if (existing.length) {
      throw new Error(`add: ${existing.length} id(s) already in the store (${preview(existing)}); use upsert to replace them`);
    }
    await this.table.add(batch);
    if (!o.deferIndex) await this.maybeAutoIndex();
  }

  /**
   * Inserts new ids and replaces existing ones in one merge-insert (a join on id): replaced rows are
   * rewritten in place of the old ones; no index rebuild is needed (see the file comment).
   */
  async upsert(items: readonly StoreItem[], o: WriteOptions = {}): Promise<{ inserted: number; updated: number }> {
    if (items.length === 0) return { inserted: 0, updated: 0 };
    const r = await this.table.mergeInsert('id').whenMatchedUpdateAll().whenNotMatchedInsertAll().execute(this.toArrow(items, 'upsert'));
    if (!o.deferIndex) await this.maybeAutoIndex();
    return { inserted: r.numInsertedRows, updated: r.numUpdatedRows };
  }

  /** Replaces existing items; every id must already be stored (nothing is written otherwise). */
  async update(items: readonly StoreItem[], o: WriteOptions = {}): Promise<number> {
    if (items.length === 0) return 0;
    const batch = this.toArrow(items, 'update');
    const found = new Set(await this.existingIds(items.map((it) => it.id)));
    const missing = items.map((it) => it.id).filter((id) => !found.has(id));
    if (missing.length) throw new Error(`update: ${missing.length} id(s) not in the store (${preview(missing)}); use upsert to insert them`);
    const r = await this.table.mergeInsert('id').whenMatchedUpdateAll().execute(batch);
    if (!o.deferIndex) await this.maybeAutoIndex();
    return r.numUpdatedRows;
  }

  /** Deletes the given ids (unknown ids are ignored); returns how many rows went. */
  async delete(ids: readonly string[]): Promise<number> {
    let n = 0;
    for (const chunk of chunks(checkIds(ids, 'delete'), IN_CHUNK)) {
      n += (await this.table.delete(`id IN (${chunk.map(sqlString).join(', ')})`)).numDeletedRows;
    }
    return n;
  }

  /** The stored items with these ids (in no particular order), vectors included. */
  async get(ids: readonly string[]): Promise<(StoreItem & { vector: Float32Array })[]> {
    const out: (StoreItem & { vector: Float32Array })[] = [];
    for (const chunk of chunks(checkIds(ids, 'get'), IN_CHUNK)) {
      const rows = await this.table.query().where(`id IN (${chunk.map(sqlString).join(', ')})`).select([...COLUMNS, 'vector']).toArray();
      for (const r of rows) {
        const hit = fromRow(r as Row);
        out.push({ ...hit.metadata, id: hit.id, vector: Float32Array.from((r as { vector: Arrow.Vector }).vector.toArray() as Float32Array), path: hit.path, caption: hit.caption });
      }
    }
    return out;
  }

  /** The k nearest items by cosine similarity, best first. */
  async search(vector: Float32Array | readonly number[], k: number, o: SearchOptions = {}): Promise<SearchHit[]> {
    if (!(Number.isInteger(k) && k >= 1)) throw new Error(`search: k must be a positive integer, got ${k}`);
    if (o.nprobes !== undefined && !(Number.isInteger(o.nprobes) && o.nprobes >= 1)) throw new Error(`search: nprobes must be a positive integer, got ${o.nprobes}`);
    if (o.refineFactor !== undefined && !(Number.isInteger(o.refineFactor) && o.refineFactor >= 0)) throw new Error(`search: refineFactor must be a non-negative integer, got ${o.refineFactor}`);
    const q = checkVector(vector, this.dim, 'search: query vector');
    let query = this.table.vectorSearch(q).distanceType(this.metric).limit(k).select([...COLUMNS, '_distance']);
    if (o.filter) query = query.where(o.filter);
    if (o.exact) query = query.bypassVectorIndex();
    else {
      // Both only apply to an index; LanceDB ignores them on a flat scan, so no need to ask first.
      query = query.nprobes(o.nprobes ?? DEFAULT_NPROBES);
      const refine = o.refineFactor ?? DEFAULT_REFINE;
      if (refine > 0) query = query.refineFactor(refine);
    }
    const rows = (await query.toArray()) as (Row & { _distance: number })[];
    return rows.map((r) => ({ ...fromRow(r), score: 1 - r._distance }));
  }

  // ---- the ANN index ------------------------------------------------------------------------

  /** The vector index's state, or undefined when there is none (searches are exact scans). */
  async indexInfo(): Promise<IndexInfo | undefined> {
    const name = await this.indexName();
    if (!name) return undefined;
    const s = await this.table.indexStats(name);
    if (!s) return undefined;
    return { type: s.indexType, indexedRows: s.numIndexedRows, unindexedRows: s.numUnindexedRows };
  }

  /** Builds (or rebuilds) the IVF-PQ index over all rows; parameters default to `defaultIndexParams`. */
  async createIndex(p: IndexParams = {}): Promise<void> {
    const rows = await this.count();
    if (rows < MIN_INDEX_ROWS) throw new Error(`createIndex: an IVF-PQ index needs at least ${MIN_INDEX_ROWS} rows to train, the store has ${rows}`);
    const d = defaultIndexParams(rows, this.dim);
    const config = lancedb.Index.ivfPq({ distanceType: this.metric, numPartitions: p.numPartitions ?? d.numPartitions, numSubVectors: p.numSubVectors ?? d.numSubVectors });
    await this.table.createIndex('vector', { config, replace: true });
  }

  async dropIndex(): Promise<boolean> {
    const name = await this.indexName();
    if (name) await this.table.dropIndex(name);
    return name !== undefined;
  }

  /**
   * The index policy: no index below `annThreshold` rows; build one when the store reaches it; once
   * built, fold unindexed rows into it (LanceDB's optimize: new rows join the existing partitions
   * without retraining) when they exceed 10% of the indexed rows. Returns what it did.
   */
  async autoIndex(): Promise<'none' | 'built' | 'updated' | 'unchanged'> {
    const info = await this.indexInfo();
    if (!info) {
      const rows = await this.count();
      if (rows < Math.max(this.annThreshold, MIN_INDEX_ROWS)) return 'none';
      await this.createIndex();
      return 'built';
    }
    if (info.unindexedRows > Math.max(1000, 0.1 * info.indexedRows)) {
      await this.table.optimize();
      return 'updated';
    }
    return 'unchanged';
  }

  // ---- internals -------------------------------------------------------------------------

  private async maybeAutoIndex(): Promise<void> {
    if (this.autoIndexOnWrite) await this.autoIndex();
  }

  private async indexName(): Promise<string | undefined> {
    return (await this.table.listIndices()).find((ix) => ix.columns.includes('vector'))?.name;
  }

  private async existingIds(ids: readonly string[]): Promise<string[]> {
    const found: string[] = [];
    for (const chunk of chunks(ids, IN_CHUNK)) {
      const rows = await this.table.query().where(`id IN (${chunk.map(sqlString).join(', ')})`).select(['id']).toArray();
      for (const r of rows) found.push((r as { id: string }).id);
    }
    return found;
  }

  /** Validates items and lays them out as one Arrow table (vectors in one contiguous buffer). */
  private toArrow(items: readonly StoreItem[], op: string): Arrow.Table {
    const dim = this.dim;
    const n = items.length;
    const flat = new Float32Array(n * dim);
    const ids: string[] = new Array(n);
    const paths: (string | null)[] = new Array(n);
    const captions: (string | null)[] = new Array(n);
    const metas: (string | null)[] = new Array(n);
    const seen = new Set<string>();
    for (let i = 0; i < n; i++) {
      const it = items[i]!;
      if (typeof it !== 'object' || it === null) throw new Error(`${op}: item ${i} is not an object`);
      if (typeof it.id !== 'string' || it.id === '') throw new Error(`${op}: item ${i} needs a non-empty string id, got ${JSON.stringify(it.id)}`);
      if (seen.has(it.id)) throw new Error(`${op}: duplicate id '${it.id}' (item ${i})`);
      seen.add(it.id);
      flat.set(checkVector(it.vector, dim, `${op}: item '${it.id}'`), i * dim);
      for (const key of ['path', 'caption'] as const) {
        const v = it[key];
        if (v !== undefined && v !== null && typeof v !== 'string') throw new Error(`${op}: item '${it.id}': ${key} must be a string, got ${typeof v}`);
      }
      ids[i] = it.id;
      paths[i] = it.path ?? null;
      captions[i] = it.caption ?? null;
      const meta = Object.fromEntries(Object.entries(it).filter(([k, v]) => !RESERVED.has(k) && v !== undefined));
      metas[i] = Object.keys(meta).length ? JSON.stringify(meta) : null;
    }
    const schema = schemaFor(dim, this.metric);
    const vectors = arrow.makeData({
      type: schema.fields[1]!.type as Arrow.FixedSizeList<Arrow.Float32>,
      length: n,
      nullCount: 0,
      child: arrow.makeData({ type: new arrow.Float32(), length: n * dim, data: flat }),
    });
    const utf8 = (v: (string | null)[]) => arrow.vectorFromArray(v, new arrow.Utf8()).data[0]!;
    const struct = arrow.makeData({
      type: new arrow.Struct(schema.fields),
      length: n,
      nullCount: 0,
      children: [utf8(ids), vectors, utf8(paths), utf8(captions), utf8(metas)],
    });
    return new arrow.Table([new arrow.RecordBatch(schema, struct)]);
  }
}

function schemaFor(dim: number, metric: Metric): Arrow.Schema {
  const { Field, Schema, Utf8, FixedSizeList, Float32 } = arrow;
  return new Schema(
    [
      new Field('id', new Utf8(), false),
      new Field('vector', new FixedSizeList(dim, new Field('item', new Float32(), true)), false),
      new Field('path', new Utf8(), true),
      new Field('caption', new Utf8(), true),
      new Field('meta', new Utf8(), true),
    ],
    new Map([['clipkit.metric', metric]]),
  );
}

type Row = { id: string; path: string | null; caption: string | null; meta: string | null };

function fromRow(r: Row): Omit<SearchHit, 'score'> {
  const hit: Omit<SearchHit, 'score'> = { id: r.id };
  if (r.path !== null && r.path !== undefined) hit.path = r.path;
  if (r.caption !== null && r.caption !== undefined) hit.caption = r.caption;
  if (r.meta) hit.metadata = JSON.parse(r.meta) as Record<string, unknown>;
  return hit;
}

/**
 * A vector of the right length with finite values and a non-zero norm (cosine similarity is undefined
 * for the zero vector, and LanceDB would silently never return it).
 */
function checkVector(v: Float32Array | readonly number[], dim: number, what: string): Float32Array {
  if (!(v instanceof Float32Array) && !Array.isArray(v)) throw new Error(`${what}: vector must be a Float32Array or a number array`);
  if (v.length !== dim) throw new Error(`${what}: vector has ${v.length} values, the store holds ${dim}-d vectors`);
  let norm = 0;
  for (let j = 0; j < dim; j++) {
    const x = v[j]!;
    if (typeof x !== 'number' || !Number.isFinite(x)) throw new Error(`${what}: vector[${j}] is ${x} (NaN and infinities are not allowed)`);
    norm += x * x;
  }
  if (norm === 0) throw new Error(`${what}: vector is all zeros (cosine similarity needs a direction)`);
  return v instanceof Float32Array ? v : Float32Array.from(v);
}

function checkIds(ids: readonly string[], op: string): string[] {
  if (!Array.isArray(ids)) throw new Error(`${op}: ids must be an array of strings`);
  for (const id of ids) if (typeof id !== 'string') throw new Error(`${op}: ids must be strings, got ${JSON.stringify(id)}`);
  return [...new Set(ids)];
}

function chunks<T>(xs: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < xs.length; i += size) out.push(xs.slice(i, i + size));
  return out;
}

function preview(ids: readonly string[]): string {
  return ids.slice(0, 5).map((s) => `'${s}'`).join(', ') + (ids.length > 5 ? ', …' : '');
}
