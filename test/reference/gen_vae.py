#!/usr/bin/env python3
"""Reference fixtures for clipkit's convolutional VAE (src/models/vae.ts), in plain PyTorch.

The same tiny VAE is written here with torch.nn (Conv2d weight [out, in, kh, kw], ConvTranspose2d
weight [in, out, kh, kw], Linear [out, in]; state_dict names equal to clipkit's parameter names),
initialised with a seed, and trained for one torch.optim.AdamW step on a fixed batch x and a fixed
noise eps. For every configuration in CONFIGS this writes into --out:

  vae_<cfg>.safetensors              the initial float32 weights
  vae_<cfg>_io.safetensors           x [B,3,32,32], eps [B,L], mu, logvar, mean (decoder output),
                                     loss [1], recon [1], kl [1]
  vae_<cfg>_grads.safetensors        d(loss)/d(param)
  vae_<cfg>_adamw_after.safetensors  the weights after one AdamW step
  vae_<cfg>.json                     clipkit's VaeConfig, beta, optimizer, loss value, versions

Model (as in vae.ts): x in [0,1] -> 2x-1 -> [Conv2d(4, stride 2, pad 1) -> act] per entry of
`channels` -> flatten -> Linear to mu and to logvar; z = mu + exp(logvar/2)*eps; Linear -> act ->
view [B,C,s,s] -> [ConvTranspose2d(4, stride 2, pad 1) -> act] ... -> logits [B,3,32,32];
mean = sigmoid(logits). Per image, in nats:
  gaussian: sum (x-mean)^2 / (2 sigma^2) + D log sigma + D/2 log 2 pi  (sigma = exp(dec.log_sigma),
            learned; for 'mse' sigma is the fixed config value)
  bce:      binary_cross_entropy_with_logits(logits, x, reduction=sum)
  kl:       -1/2 sum(1 + logvar - mu^2 - exp(logvar))
loss = mean over the batch of (nll + beta * kl). AdamW: weight decay on parameters with ndim >= 2
only (clipkit's VaeTrainer grouping), one step from zero moments.

The default PyTorch initialisation is used, except that the mu / logvar heads are moved (bias
+ 0.8·randn and + 0.5·randn, logvar weights ×3) so the KL term is not negligible.
Deterministic (seeds, one thread, torch.use_deterministic_algorithms): two runs give identical bytes.
Usage:  /usr/bin/python3 test/reference/gen_vae.py --out test/reference/fixtures
"""
import argparse
import json
import math
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {
    # SiLU, Gaussian likelihood with a learned sigma, beta 1 (the ELBO).
    "a": dict(seed=11, batch=3, beta=1.0, log_sigma=-0.9,
              config=dict(imageSize=32, channels=[4, 6, 8], latent=5, act="silu", recon="gaussian", logSigmaInit=-0.9, encoder="conv")),
    # ReLU, Bernoulli (BCE from logits), beta 0.5.
    "b": dict(seed=22, batch=2, beta=0.5,
              config=dict(imageSize=32, channels=[3, 5, 6], latent=4, act="relu", recon="bce", encoder="conv")),
    # ReLU, Gaussian with a fixed sigma (MSE), beta 2.
    "c": dict(seed=33, batch=2, beta=2.0,
              config=dict(imageSize=32, channels=[4, 4, 4], latent=3, act="relu", recon="mse", sigma=0.3, encoder="conv")),
}
ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, float32 tensor). 8-byte LE header length, JSON padded to 8, raw bytes."""
    header, chunks, off = {}, [], 0
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    for name, t in tensors:
        raw = t.detach().contiguous().to(torch.float32).numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for c in chunks:
            f.write(c)


class VAE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        k = len(c["channels"])
        self.side = c["imageSize"] // 2 ** k
        self.enc = nn.Module()
        cin = 3
        for i, cout in enumerate(c["channels"]):
            setattr(self.enc, f"conv{i + 1}", nn.Conv2d(cin, cout, 4, stride=2, padding=1))
            cin = cout
        f = cin * self.side * self.side
        self.enc.fc_mu = nn.Linear(f, c["latent"])
        self.enc.fc_logvar = nn.Linear(f, c["latent"])
        self.dec = nn.Module()
        self.dec.fc = nn.Linear(c["latent"], f)
        for i in range(k):
            cin = c["channels"][k - 1 - i]
            cout = 3 if i == k - 1 else c["channels"][k - 2 - i]
            setattr(self.dec, f"deconv{i + 1}", nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1))
        if c["recon"] == "gaussian":
            self.dec.log_sigma = nn.Parameter(torch.zeros(1))

    def act(self, x):
        return F.silu(x) if self.c["act"] == "silu" else F.relu(x)

    def forward(self, x, eps):
        k = len(self.c["channels"])
        h = 2 * x - 1
        for i in range(k):
            h = self.act(getattr(self.enc, f"conv{i + 1}")(h))
        h = h.flatten(1)
        mu, logvar = self.enc.fc_mu(h), self.enc.fc_logvar(h)
        z = mu + torch.exp(0.5 * logvar) * eps
        h = self.act(self.dec.fc(z)).view(x.shape[0], self.c["channels"][-1], self.side, self.side)
        for i in range(k):
            h = getattr(self.dec, f"deconv{i + 1}")(h)
            if i < k - 1:
                h = self.act(h)
        return mu, logvar, h  # h: logits


def losses(model, x, eps, beta):
    c = model.c
    mu, logvar, logits = model(x, eps)
    mean = torch.sigmoid(logits)
    d = x[0].numel()
    if c["recon"] == "bce":
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    else:
        log_sigma = model.dec.log_sigma if c["recon"] == "gaussian" else torch.tensor([math.log(c["sigma"])])
        sq = ((x - mean) ** 2).flatten(1).sum(1)
        nll = sq * 0.5 * torch.exp(-2 * log_sigma) + d * log_sigma + 0.5 * d * math.log(2 * math.pi)
    kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)
    loss = (nll + beta * kl).mean()
    return loss, nll.mean(), kl.mean(), mu, logvar, mean


def generate(name, spec, out):
    torch.manual_seed(spec["seed"])
    c = spec["config"]
    model = VAE(c)
    with torch.no_grad():
        # Move the heads off their near-zero start so that KL (and its gradient) is O(1), not ~0.01.
        model.enc.fc_mu.bias.add_(0.8 * torch.randn(c["latent"]))
        model.enc.fc_logvar.bias.add_(0.5 * torch.randn(c["latent"]))
        model.enc.fc_logvar.weight.mul_(3.0)
        if c["recon"] == "gaussian":
            model.dec.log_sigma.fill_(spec["log_sigma"])
    b, L = spec["batch"], c["latent"]
    x = torch.rand(b, 3, c["imageSize"], c["imageSize"])
    eps = torch.randn(b, L)
    params = list(model.state_dict().keys())
    before = [(n, p.detach().clone()) for n, p in model.named_parameters()]
    write_safetensors(os.path.join(out, f"vae_{name}.safetensors"), before)

    loss, recon, kl, mu, logvar, mean = losses(model, x, eps, spec["beta"])
    model.zero_grad()
    loss.backward()
    grads = [(n, p.grad.detach().clone()) for n, p in model.named_parameters()]
    write_safetensors(os.path.join(out, f"vae_{name}_grads.safetensors"), grads)
    write_safetensors(os.path.join(out, f"vae_{name}_io.safetensors"), [
        ("x", x), ("eps", eps), ("mu", mu), ("logvar", logvar), ("mean", mean),
        ("loss", loss.reshape(1)), ("recon", recon.reshape(1)), ("kl", kl.reshape(1))])

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": ADAMW["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"])
    opt.step()
    write_safetensors(os.path.join(out, f"vae_{name}_adamw_after.safetensors"), [(n, p.detach().clone()) for n, p in model.named_parameters()])

    meta = dict(config=c, seed=spec["seed"], batch=b, beta=spec["beta"], params=params,
                loss=loss.item(), recon=recon.item(), kl=kl.item(),
                optimizer=dict(lr=ADAMW["lr"], betas=list(ADAMW["betas"]), eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"],
                               decay="ndim >= 2 only"),
                torch=torch.__version__)
    with open(os.path.join(out, f"vae_{name}.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{name}: {sum(p.numel() for _, p in before)} parameters, loss {loss.item():.6f} (recon {recon.item():.4f}, kl {kl.item():.4f})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    for name, spec in CONFIGS.items():
        generate(name, spec, args.out)


if __name__ == "__main__":
    main()
