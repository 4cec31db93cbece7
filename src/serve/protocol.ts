// Messages between the inference pool (main thread) and its workers (infer-worker.ts).

export interface WorkerInit {
  /** Paths of the exported towers (ONNX Runtime reads them, external data included). */
  vision: string;
  /** Text towers by sequence length (a job's token rows pick the one of their length). */
  texts: { length: number; path: string }[];
  /** ONNX Runtime intra-op threads per session. */
  threads: number;
  imageSize: number;
}

export type Job =
  /** Encoded image files (JPEG, PNG, …), decoded and preprocessed in the worker. */
  | { op: 'images'; images: Uint8Array[] }
  /** Preprocessed pixels [n, 3, S, S]. */
  | { op: 'pixels'; pixels: Float32Array; n: number }
  /** Token ids [n, L], L the length of one of the text towers. */
  | { op: 'texts'; ids: BigInt64Array; n: number };

export type ToInferWorker = Job & { id: number };

export interface JobResult {
  /** [rows, D]: one row per input, or per decodable image for 'images'. */
  features: Float32Array;
  /** 'images' only: per input, null or why it could not be decoded. */
  errors?: (string | null)[];
}

export type FromInferWorker = { id: number; ok: true; features: Float32Array; errors?: (string | null)[] } | { id: number; ok: false; error: string } | { ready: boolean; error?: string };
