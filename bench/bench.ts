// What a benchmark is, for the driver (run.ts) and the files that define benchmarks.

export interface Ctx {
  /** Fewer repetitions and only the smaller sizes: a smoke test, not numbers to quote. */
  quick: boolean;
}

export interface Bench {
  /** Matched by the command-line filter, as is the group. */
  name: string;
  group: string;
  title: string;
  run(ctx: Ctx): Promise<void>;
}
