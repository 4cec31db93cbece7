// The progress line on stderr: items done, throughput and ETA. On a terminal one line redrawn in place
// (at most 4 times a second); otherwise (logs, CI) a new line every 10 seconds.

export interface Progress {
  update(done: number, failed: number): void;
  end(): void;
}

export function progressLine(what: string, total: number | undefined, resumedFrom = 0): Progress {
  const tty = !!process.stderr.isTTY;
  const t0 = performance.now();
  let last = -Infinity;
  let state = { done: 0, failed: 0 };
  const text = (): string => {
    const secs = (performance.now() - t0) / 1000;
    const rate = state.done / Math.max(secs, 1e-3);
    const all = resumedFrom + state.done;
    const parts = [total !== undefined ? `${all}/${total} (${((100 * all) / Math.max(total, 1)).toFixed(1)}%)` : `${all}`, `${rate.toFixed(1)} images/s`];
    if (total !== undefined && rate > 0) parts.push(`ETA ${clock(Math.max(0, total - all) / rate)}`);
    if (state.failed) parts.push(`${state.failed} unreadable`);
    return `${what}: ${parts.join(' · ')}`;
  };
  return {
    update(done, failed) {
      state = { done, failed };
      const now = performance.now();
      if (now - last < (tty ? 250 : 10_000)) return;
      last = now;
      process.stderr.write(tty ? `\r${text()}\x1b[K` : `${text()}\n`);
    },
    end() {
      process.stderr.write(tty ? `\r${text()}\x1b[K\n` : `${text()}\n`);
    },
  };
}

function clock(s: number): string {
  const t = Math.round(s);
  const h = Math.floor(t / 3600);
  const m = Math.floor((t % 3600) / 60);
  const sec = t % 60;
  return h ? `${h}:${String(m).padStart(2, '0')}:${String(sec).padStart(2, '0')}` : `${m}:${String(sec).padStart(2, '0')}`;
}
