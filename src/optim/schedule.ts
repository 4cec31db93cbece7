// Learning-rate schedules: functions of the (0-based) step.

export type Schedule = (step: number) => number;

export function constantLr(lr: number, warmup = 0): Schedule {
  return (step) => (step < warmup ? (lr * (step + 1)) / warmup : lr);
}

/** Linear warmup to `lr` over `warmup` steps, then cosine decay to `minLr` at `total` (OpenCLIP's cosine_lr). */
export function warmupCosine(lr: number, warmup: number, total: number, minLr = 0): Schedule {
  if (!(total > 0) || warmup < 0 || warmup > total) throw new Error(`warmupCosine: need 0 ≤ warmup (${warmup}) ≤ total (${total}), total > 0`);
  return (step) => {
    if (step < warmup) return (lr * (step + 1)) / warmup;
    const e = step - warmup;
    const es = total - warmup;
    if (es <= 0) return lr;
    const frac = Math.min(e / es, 1);
    return minLr + 0.5 * (1 + Math.cos(Math.PI * frac)) * (lr - minLr);
  };
}
