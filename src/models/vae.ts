// A convolutional variational autoencoder (chapter 5.3; Kingma & Welling 2014).
//
//   encoder q(z|x):  x [N,3,S,S] → stride-2 4×4 convs (S → S/2 → … → S/2^k) → flatten → μ, log σ² [N,L]
//                    (or a ViT with mean pooling, then the same two linear heads)
//   sample:          z = μ + exp(½·log σ²)·ε,  ε ~ N(0, I) fed as the graph input `eps`, so the graph
//                    stays deterministic and a seeded generator makes every step reproducible
//   decoder p(x|z):  linear → reshape [N,C,S/2^k,S/2^k] → stride-2 4×4 transposed convs → logits [N,3,S,S]
//                    mean = sigmoid(logits) ∈ (0, 1)
//   loss:            −log p(x|z) + β·KL(q(z|x) ‖ N(0, I)), summed over an image, averaged over the batch
//
// Likelihoods (`recon`), all in nats per image so that with β = 1 the loss is the negative ELBO:
//   'gaussian'  N(x; mean, σ²) per pixel with one learned scalar σ (dec.log_sigma): a proper density,
//               so the ELBO bounds log p(x) (the σ-VAE of Rybkin et al. 2021; σ finds the right weight
//               between reconstruction and KL by itself)
//   'mse'       the same Gaussian with σ fixed (config `sigma`; √½ makes the term Σ(x−mean)² + const)
//   'bce'       Bernoulli with p = mean per pixel: binary cross-entropy against [0,1] intensities. Not a
//               normalised density for continuous pixels, so its "bits/dim" is not comparable.
// Parameter layouts are PyTorch's: Conv2d [out, in, kh, kw], ConvTranspose2d [in, out, kh, kw], Linear [out, in].
import { readFileSync, readdirSync } from 'node:fs';
import { Graph, type Dim, type Tensor } from '../graph/graph.js';
import * as o from '../graph/ops.js';
import { linearWith } from '../nn/layers.js';
import { vit, vitDefaults } from './vit.js';

type T = Tensor;

export interface VaeConfig {
  imageSize: number;
  /** Encoder widths, one stride-2 conv each (the decoder mirrors them): [64,128,256] takes 32 → 4. */
  channels: number[];
  latent: number;
  act: 'relu' | 'silu';
  recon: 'gaussian' | 'mse' | 'bce';
  /** The fixed σ of 'mse'. */
  sigma: number;
  /** Initial log σ of 'gaussian' (σ = e^−2 ≈ 0.14, near a typical CIFAR reconstruction error). */
  logSigmaInit: number;
  encoder: 'conv' | 'vit';
  /** The ViT encoder (encoder: 'vit'); mean-pooled, no projection. */
  vit?: { patchSize: number; width: number; layers: number; heads: number; mlpRatio?: number };
}

export const VAE_DEFAULTS: Omit<VaeConfig, 'channels' | 'latent'> = {
  imageSize: 32,
  act: 'silu',
  recon: 'gaussian',
  sigma: Math.SQRT1_2,
  logSigmaInit: -2,
  encoder: 'conv',
};

export function validateVae(c: VaeConfig): VaeConfig {
  const bad = (why: string): never => {
    throw new Error(`VAE config: ${why}`);
  };
  const posInt = (v: unknown): boolean => Number.isInteger(v) && (v as number) > 0;
  if (!posInt(c.imageSize)) bad(`imageSize must be a positive integer, got ${c.imageSize}`);
  if (!Array.isArray(c.channels) || c.channels.length === 0 || !c.channels.every(posInt)) bad(`channels must be a non-empty list of positive integers, got ${JSON.stringify(c.channels)}`);
  if (c.imageSize % 2 ** c.channels.length !== 0) bad(`imageSize ${c.imageSize} is not divisible by 2^${c.channels.length} (one halving per channel entry)`);
  if (!posInt(c.latent)) bad(`latent must be a positive integer, got ${c.latent}`);
  if (!['relu', 'silu'].includes(c.act)) bad(`act must be relu or silu, got ${c.act}`);
  if (!['gaussian', 'mse', 'bce'].includes(c.recon)) bad(`recon must be gaussian, mse or bce, got ${c.recon}`);
  if (!(c.sigma > 0)) bad(`sigma must be > 0, got ${c.sigma}`);
  if (!Number.isFinite(c.logSigmaInit)) bad(`logSigmaInit must be a number, got ${c.logSigmaInit}`);
  if (!['conv', 'vit'].includes(c.encoder)) bad(`encoder must be conv or vit, got ${c.encoder}`);
  if (c.encoder === 'vit' && !c.vit) bad(`encoder 'vit' needs a "vit" section {patchSize, width, layers, heads}`);
  return c;
}

/** Fills defaults into a partial config (a preset file or a checkpoint's metadata) and validates it. */
export function vaeConfig(c: Partial<VaeConfig> & Pick<VaeConfig, 'channels' | 'latent'>): VaeConfig {
  const known = new Set(['imageSize', 'channels', 'latent', 'act', 'recon', 'sigma', 'logSigmaInit', 'encoder', 'vit']);
  const unknown = Object.keys(c).filter((k) => !known.has(k));
  if (unknown.length) throw new Error(`VAE config: unknown key(s) ${unknown.join(', ')}`);
  return validateVae({ ...VAE_DEFAULTS, ...c });
}

// ---------------------------------------------------------------- presets (configs/vae/*.json)

const PRESETS = new URL('./configs/vae/', import.meta.url);

export function listVaePresets(): string[] {
  return readdirSync(PRESETS).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5)).sort();
}

/** A preset by name (vae-cifar), or a JSON file by path. */
export function loadVaeConfig(nameOrPath: string): VaeConfig {
  const isFile = nameOrPath.endsWith('.json');
  if (!isFile && !listVaePresets().includes(nameOrPath)) throw new Error(`unknown VAE preset '${nameOrPath}' (known: ${listVaePresets().join(', ')}; or pass a .json file)`);
  const text = readFileSync(isFile ? nameOrPath : new URL(`${nameOrPath}.json`, PRESETS), 'utf8');
  return vaeConfig(JSON.parse(text));
}

// ---------------------------------------------------------------- building blocks

const KERNEL = 4; // 4×4, stride 2, pad 1: halves (conv) or doubles (transposed conv) the side exactly
const HALVE = { strides: [2, 2], pads: [1, 1, 1, 1] };

function act(x: T, kind: VaeConfig['act']): T {
  // SiLU (x·sigmoid x) from two ops that both have gradient rules; no fused kernel is needed.
  return kind === 'relu' ? o.relu(x) : o.mul(x, o.sigmoid(x));
}

/** z = μ + σ·ε with σ = exp(½·log σ²): the reparameterisation that lets gradients reach μ and σ. */
export function reparameterize(mu: T, logvar: T, eps: T): T {
  return o.add(mu, o.mul(o.exp(o.mul(logvar, 0.5)), eps));
}

/** KL(N(μ, σ²) ‖ N(0, I)) per example [N] = −½ Σ_j (1 + log σ²_j − μ_j² − σ²_j). */
export function klDivergence(mu: T, logvar: T): T {
  const inner = o.sub(o.sub(o.add(logvar, 1), o.square(mu)), o.exp(logvar));
  return o.mul(o.reduceSum(inner, [1]), -0.5);
}

const imageAxes = (x: T): number[] => x.shape.slice(1).map((_, i) => i + 1);

/** −log N(x; mean, σ²) summed per image [N], with log σ a tensor broadcasting to [N] (e.g. [1]). */
export function gaussianNll(x: T, mean: T, logSigma: T): T {
  const d = x.shape.slice(1).reduce<number>((a, b) => a * (b as number), 1);
  const sq = o.reduceSum(o.square(o.sub(x, mean)), imageAxes(x)); // [N]
  const quad = o.mul(sq, o.mul(o.exp(o.mul(logSigma, -2)), 0.5)); // Σ(x−m)² / 2σ²
  return o.add(quad, o.add(o.mul(logSigma, d), 0.5 * d * Math.log(2 * Math.PI)));
}

/** Binary cross-entropy from logits per image [N], in the stable form relu(l) − l·x + log(1 + e^−|l|). */
export function bernoulliNll(x: T, logits: T): T {
  const soft = o.add(o.relu(logits), o.log(o.add(o.exp(o.neg(o.abs(logits))), 1)));
  return o.reduceSum(o.sub(soft, o.mul(logits, x)), imageAxes(x));
}

// ---------------------------------------------------------------- encoder and decoder

/** q(z|x): x [N,3,S,S] in [0,1] → μ, log σ² [N,L]. Parameters under `enc.`. */
export function encode(g: Graph, x: T, c: VaeConfig): { mu: T; logvar: T } {
  return g.scope('enc', () => {
    const n = x.shape[0]!;
    let h: T = o.sub(o.mul(x, 2), 1); // [0,1] → [−1,1]: centred inputs for the first layer
    if (c.encoder === 'conv') {
      let cin = 3;
      c.channels.forEach((cout, i) => {
        const w = g.param(`conv${i + 1}.weight`, [cout, cin, KERNEL, KERNEL], { kind: 'kaiming_uniform', fanIn: cin * KERNEL * KERNEL, fanOut: cout });
        const b = g.param(`conv${i + 1}.bias`, [cout], { kind: 'zeros' });
        h = act(o.conv(h, w, b, HALVE), c.act); // [N, cout, S/2^(i+1), S/2^(i+1)]
        cin = cout;
      });
      const side = c.imageSize / 2 ** c.channels.length;
      h = o.reshape(h, [n, cin * side * side]); // [N, C·s·s], PyTorch's flatten(1) order
    } else {
      const v = c.vit!;
      const cfg = vitDefaults({ imageSize: c.imageSize, patchSize: v.patchSize, width: v.width, layers: v.layers, heads: v.heads, mlpRatio: v.mlpRatio ?? 4, pool: 'mean', lnPre: false });
      h = g.scope('vit', () => vit(g, h, cfg)); // [N, W]
    }
    const f = h.shape[1] as number;
    const head = (name: string): T =>
      g.scope(name, () => linearWith(h, g.param('weight', [c.latent, f], { kind: 'kaiming_uniform', fanIn: f, fanOut: c.latent, gain: 1 }), g.param('bias', [c.latent], { kind: 'zeros' })));
    return { mu: head('fc_mu'), logvar: head('fc_logvar') }; // [N, L] each
  });
}

/** p(x|z): z [N,L] → logits [N,3,S,S]. Parameters under `dec.`. */
export function decode(g: Graph, z: T, c: VaeConfig): T {
  return g.scope('dec', () => {
    const n = z.shape[0]!;
    const k = c.channels.length;
    const side = c.imageSize / 2 ** k;
    const top = c.channels[k - 1]!;
    const fc = g.scope('fc', () =>
      linearWith(z, g.param('weight', [top * side * side, c.latent], { kind: 'kaiming_uniform', fanIn: c.latent, fanOut: top * side * side }), g.param('bias', [top * side * side], { kind: 'zeros' })),
    );
    let h = o.reshape(act(fc, c.act), [n, top, side, side]); // [N, C_k, s, s]
    for (let i = 0; i < k; i++) {
      const cin = c.channels[k - 1 - i]!;
      const last = i === k - 1;
      const cout = last ? 3 : c.channels[k - 2 - i]!;
      // A stride-2 4×4 transposed conv gives each output pixel 2×2 taps per input channel.
      const w = g.param(`deconv${i + 1}.weight`, [cin, cout, KERNEL, KERNEL], { kind: 'kaiming_uniform', fanIn: cin * 4, fanOut: cout, gain: last ? 1 : Math.SQRT2 });
      const b = g.param(`deconv${i + 1}.bias`, [cout], { kind: 'zeros' });
      h = o.convTranspose(h, w, b, HALVE); // [N, cout, 2s, 2s]
      if (!last) h = act(h, c.act);
    }
    return h; // logits [N, 3, S, S]
  });
}

// ---------------------------------------------------------------- the model as graphs

export interface VaeForward {
  g: Graph;
  x: T;
  eps: T;
  mu: T;
  logvar: T;
  /** Decoder mean in (0, 1) [N,3,S,S]. */
  mean: T;
  /** Per image [N]: −log p(x|z) in nats, KL in nats, Σ(x − mean)². */
  nll: T;
  kl: T;
  sqerr: T;
}

/** x, ε → every per-image term of the ELBO (the evaluation graph; the training graph adds β and the mean). */
export function vaeForward(c: VaeConfig, batch: Dim = 'N', name = 'vae'): VaeForward {
  validateVae(c);
  const g = new Graph(name);
  const x = g.input('x', [batch, 3, c.imageSize, c.imageSize]);
  const eps = g.input('eps', [batch, c.latent]);
  const { mu, logvar } = encode(g, x, c);
  const logits = decode(g, reparameterize(mu, logvar, eps), c);
  const mean = o.sigmoid(logits);
  let nll: T;
  if (c.recon === 'bce') nll = bernoulliNll(x, logits);
  else {
    const logSigma = c.recon === 'gaussian' ? g.param('dec.log_sigma', [1], { kind: 'const', value: c.logSigmaInit }) : o.constant(g, [Math.log(c.sigma)], [1]);
    nll = gaussianNll(x, mean, logSigma);
  }
  const sqerr = o.reduceSum(o.square(o.sub(x, mean)), [1, 2, 3]);
  return { g, x, eps, mu, logvar, mean, nll, kl: klDivergence(mu, logvar), sqerr };
}

export interface VaeTrainGraph extends VaeForward {
  /** β, a scalar input (so a β warmup never recompiles). */
  beta: T;
  /** Batch means: loss = recon + β·KL; mse per pixel. */
  loss: T;
  recon: T;
  klMean: T;
  mse: T;
}

/**
 * The training graph. The batch size is static: the Conv weight-gradient rule convolves with the
 * batch as the channel axis, which must be a number (so a partial last batch is dropped).
 */
export function vaeTrainGraph(c: VaeConfig, batch: number): VaeTrainGraph {
  const f = vaeForward(c, batch, 'vae-train');
  const beta = f.g.input('beta', []);
  const recon = o.reduceMean(f.nll, [0]);
  const klMean = o.reduceMean(f.kl, [0]);
  const loss = o.add(recon, o.mul(klMean, beta));
  const mse = o.div(o.reduceMean(f.sqerr, [0]), 3 * c.imageSize * c.imageSize);
  return { ...f, beta, loss, recon, klMean, mse };
}

/** z [N,L] → decoder mean [N,3,S,S] (sampling and interpolation). */
export function vaeDecodeGraph(c: VaeConfig): { g: Graph; z: T; mean: T } {
  validateVae(c);
  const g = new Graph('vae-decode');
  const z = g.input('z', ['N', c.latent]);
  return { g, z, mean: o.sigmoid(decode(g, z, c)) };
}

/** The number of parameter values. */
export function paramCount(values: ReadonlyMap<string, Float32Array>): number {
  let n = 0;
  for (const v of values.values()) n += v.length;
  return n;
}
