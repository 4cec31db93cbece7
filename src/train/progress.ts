// A progress line for long runs: step/total, loss, learning rate, samples/s and ETA. On a terminal it
// redraws one line; otherwise (CI, logs) it prints a line every `every` steps.

export class Progress {
  private lastPrint = 0;
  private readonly tty = !!process.stderr.isTTY;
  private started = Date.now();

  constructor(
    public total: number | undefined,
    private readonly every = 25,
    private readonly out: NodeJS.WriteStream = process.stderr,
  ) {}

  update(step: number, m: { loss: number; lr: number; samplesPerSec: number }): void {
    const now = Date.now();
    if (this.tty ? now - this.lastPrint < 200 : step % this.every !== 0 && step !== this.total) return;
    this.lastPrint = now;
    const frac = this.total ? Math.min(step / this.total, 1) : undefined;
    const eta = frac ? ((now - this.started) / frac - (now - this.started)) / 1e3 : undefined;
    const bar = frac !== undefined ? `[${'#'.repeat(Math.round(frac * 20)).padEnd(20, '.')}] ` : '';
    const line = `${bar}step ${step}${this.total ? `/${this.total}` : ''}  loss ${m.loss.toFixed(4)}  lr ${m.lr.toExponential(2)}  ${m.samplesPerSec.toFixed(1)} samples/s${eta !== undefined ? `  ETA ${fmt(eta)}` : ''}`;
    if (this.tty) this.out.write(`\r${line}\x1b[K`);
    else this.out.write(`${line}\n`);
  }

  /** A message on its own line (keeps the progress line intact on a terminal). */
  note(msg: string): void {
    this.out.write(this.tty ? `\r\x1b[K${msg}\n` : `${msg}\n`);
  }

  end(): void {
    if (this.tty) this.out.write('\n');
  }
}

function fmt(s: number): string {
  if (!Number.isFinite(s)) return '?';
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.floor(s % 60);
  return h ? `${h}h${String(m).padStart(2, '0')}m` : `${m}m${String(sec).padStart(2, '0')}s`;
}
