// Training curves as a small self-contained SVG (no plotting dependency): one panel per series.

export interface Series {
  title: string;
  points: [number, number][];
  /** Fixed y range, e.g. [0, 1] for accuracies; default: the data's range. */
  yRange?: [number, number];
}

const W = 480;
const H = 220;
const PAD = { l: 56, r: 16, t: 28, b: 36 };

function ticks(lo: number, hi: number, n = 5): number[] {
  if (hi <= lo) return [lo];
  const step = 10 ** Math.floor(Math.log10((hi - lo) / n));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((s) => (hi - lo) / s <= n) ?? step * 10;
  const out: number[] = [];
  for (let v = Math.ceil(lo / nice) * nice; v <= hi + 1e-12; v += nice) out.push(Number(v.toPrecision(6)));
  return out;
}

function panel(s: Series, y0: number): string {
  const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  if (pts.length === 0) return `<text x="${PAD.l}" y="${y0 + PAD.t}" font-size="12">${s.title}: no data</text>`;
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  const [xLo, xHi] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  const [yLo, yHi] = s.yRange ?? [Math.min(...ys), Math.max(...ys) === Math.min(...ys) ? Math.min(...ys) + 1 : Math.max(...ys)];
  const sx = (x: number): number => PAD.l + ((x - xLo) / (xHi - xLo)) * (W - PAD.l - PAD.r);
  const sy = (y: number): number => y0 + H - PAD.b - ((y - yLo) / (yHi - yLo)) * (H - PAD.t - PAD.b);
  const path = pts.map(([x, y], i) => `${i ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join('');
  const grid = ticks(yLo, yHi)
    .map((v) => `<line x1="${PAD.l}" x2="${W - PAD.r}" y1="${sy(v)}" y2="${sy(v)}" stroke="#ddd"/><text x="${PAD.l - 6}" y="${sy(v) + 4}" font-size="10" text-anchor="end">${v}</text>`)
    .join('');
  const xt = ticks(xLo, xHi)
    .map((v) => `<text x="${sx(v)}" y="${y0 + H - PAD.b + 14}" font-size="10" text-anchor="middle">${v}</text>`)
    .join('');
  return `${grid}${xt}<text x="${PAD.l}" y="${y0 + 16}" font-size="13" font-weight="bold">${s.title}</text><path d="${path}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>` +
    `<text x="${(W + PAD.l) / 2}" y="${y0 + H - 4}" font-size="10" text-anchor="middle">step</text>`;
}

export function curvesSvg(series: Series[]): string {
  const body = series.map((s, i) => panel(s, i * H)).join('');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H * series.length}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>${body}</svg>\n`;
}
