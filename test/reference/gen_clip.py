#!/usr/bin/env python3
"""Reference fixtures for clipkit's CLIP, produced by OpenAI's own CLIP model code on PyTorch.

OpenAI's code is NOT part of this repository. Pass the directory that holds their `clip`
package (a checkout of the openai/CLIP repository on GitHub, or any directory containing
`clip/__init__.py` and `clip/model.py` from it) with --openai-clip-dir. Only `clip.model` is
imported (it needs torch and numpy only; `clip/clip.py` would pull in torchvision and is not
used).

For every configuration in CONFIGS this writes, into --out:

  clip_<cfg>.safetensors              perturbed float32 weights, OpenAI's state_dict key names
  clip_<cfg>_io.safetensors           inputs and outputs: images, tokens, image_features,
                                      text_features, logits_per_image, train_logits, loss
  clip_<cfg>_grads.safetensors        d(loss)/d(param) for every parameter (same key names)
  clip_<cfg>_adamw_after.safetensors  weights after one AdamW step (+ OpenCLIP's logit_scale clamp)
  clip_<cfg>.json                     config (OpenCLIP form), token ids, optimizer, versions

Everything is seeded and single-threaded: two runs with the same torch build write identical
bytes. `--check` re-reads the files with this script's own safetensors reader and verifies
that they reproduce (forward outputs, loss, gradients, AdamW step).

Usage:
  python3 gen_clip.py --openai-clip-dir DIR --out test/reference/fixtures [--check]
"""
import argparse
import hashlib
import importlib
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Configurations. Arguments are those of OpenAI's CLIP(...) constructor. OpenAI's model.py fixes
# the ViT head count at vision_width // 64 (head width 64); text heads are given explicitly.
CONFIGS = {
    # 1 vision head (64 // 64), 3 text heads of width 16, 2 + 2 layers, 4x4 patch grid.
    "a": dict(seed=1001, clip=dict(
        embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
        context_length=16, vocab_size=100, transformer_width=48, transformer_heads=3,
        transformer_layers=2)),
    # 2 vision heads (128 // 64), 4 text heads of width 16, 3x3 grid of 16x16 patches.
    # One vision layer only to keep the files small (a 128-wide block is ~197k parameters).
    "b": dict(seed=2002, clip=dict(
        embed_dim=24, image_resolution=48, vision_layers=1, vision_width=128, vision_patch_size=16,
        context_length=12, vocab_size=64, transformer_width=64, transformer_heads=4,
        transformer_layers=1)),
}

N_IMAGES = 4
N_TEXTS = 5            # forward fixture: logits_per_image is [4, 5]
N_TRAIN = 4            # AdamW fixture: square batch of the first 4 images and first 4 texts

# OpenCLIP's defaults for CLIP training (open_clip_train), used for the one-step fixture.
ADAMW = dict(lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
LOGIT_SCALE_INIT = math.log(1 / 0.07) + 0.3   # away from OpenAI's init ln(1/0.07) on purpose
LOGIT_SCALE_MAX = math.log(100)               # OpenCLIP clamps logit_scale to [0, ln 100]


# ---------------------------------------------------------------------------------------------
# safetensors, written and read by hand (no dependency on the safetensors package).
_DT = {torch.float32: ("F32", "<f4"), torch.int64: ("I64", "<i8")}
_NP = {"F32": "<f4", "I64": "<i8"}


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, tensor) in file order; metadata: {str: str}."""
    header, chunks, off = {"__metadata__": {k: str(v) for k, v in metadata.items()}}, [], 0
    for name, t in tensors:
        t = t.detach().contiguous()
        st_dtype, np_dtype = _DT[t.dtype]
        raw = t.numpy().astype(np_dtype, copy=False).tobytes(order="C")
        header[name] = {"dtype": st_dtype, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for c in chunks:
            f.write(c)


def read_safetensors(path):
    """Returns ({name: tensor} in header order, metadata)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    meta = header.pop("__metadata__", {})
    out, cursor = {}, 0
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        b, en = e["data_offsets"]
        assert b == cursor, f"{path}: hole/overlap before {name}"
        arr = np.frombuffer(data[b:en], dtype=_NP[e["dtype"]]).reshape(e["shape"])
        out[name] = torch.from_numpy(arr.copy())
        cursor = en
    assert cursor == len(data), f"{path}: trailing bytes"
    return {k: out[k] for k in header}, meta


# ---------------------------------------------------------------------------------------------
def import_openai_clip(d):
    d = os.path.abspath(d)
    if not os.path.isfile(os.path.join(d, "clip", "model.py")):
        sys.exit(f"--openai-clip-dir: no clip/model.py under {d}")
    sys.path.insert(0, d)
    m = importlib.import_module("clip.model")
    with open(os.path.join(d, "clip", "model.py"), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    return m, sha


def no_decay(name, p):
    """OpenCLIP's exclusion rule: these get weight_decay 0."""
    return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def build(cm, cfg):
    torch.manual_seed(cfg["seed"])
    model = cm.CLIP(**cfg["clip"]).float()
    # Perturb every parameter away from its init so that e.g. LayerNorm (1/0), zero biases and
    # the default logit scale cannot hide a loader that ignores them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(LOGIT_SCALE_INIT)
            elif p.ndim <= 1:   # LayerNorm weight/bias, biases, class_embedding
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.add_(torch.randn_like(p) * 0.02 * (1 + p.abs().mean()))
    return model


def make_inputs(cfg):
    c = cfg["clip"]
    g = torch.Generator().manual_seed(cfg["seed"] + 7)
    R, L, V = c["image_resolution"], c["context_length"], c["vocab_size"]
    images = torch.randn(N_IMAGES, 3, R, R, generator=g)
    sot, eot = V - 2, V - 1
    # Sequence lengths including sot and eot: full context (eot at the last position), sot+eot
    # only, and three in between. The first N_TRAIN include both extremes.
    lengths = [L, 2, L // 2, 5, L - 3][:N_TEXTS]
    tokens = torch.zeros(N_TEXTS, L, dtype=torch.int64)
    for i, n in enumerate(lengths):
        tokens[i, 0] = sot
        tokens[i, 1:n - 1] = torch.randint(1, V - 2, (n - 2,), generator=g)   # ordinary ids 1..V-3
        tokens[i, n - 1] = eot
    return images, tokens, sot, eot, lengths


def clip_loss(model, images, tokens):
    img = model.encode_image(images)
    txt = model.encode_text(tokens)
    img = img / img.norm(dim=1, keepdim=True)
    txt = txt / txt.norm(dim=1, keepdim=True)
    logits = model.logit_scale.exp() * img @ txt.t()
    labels = torch.arange(logits.shape[0])
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    return loss, logits


def state_list(model):
    # model.state_dict() of OpenAI's CLIP holds exactly the parameters: the causal attn_mask is a
    # plain attribute of ResidualAttentionBlock, not a registered buffer.
    sd = model.state_dict()
    names = [n for n, _ in model.named_parameters()]
    assert list(sd.keys()) == names, "unexpected buffers in state_dict: %s" % (set(sd) - set(names))
    return [(k, v.detach().clone()) for k, v in sd.items()]


def run(cm, cfg):
    model = build(cm, cfg)
    weights = state_list(model)
    images, tokens, sot, eot, lengths = make_inputs(cfg)

    model.eval()
    with torch.no_grad():
        image_features = model.encode_image(images)
        text_features = model.encode_text(tokens)
        logits_per_image, _ = model(images, tokens)

    # One training step, OpenCLIP style.
    model.train()   # no dropout anywhere in model.py; train/eval give the same numbers
    decay = [(n, p) for n, p in model.named_parameters() if not no_decay(n, p)]
    nodecay = [(n, p) for n, p in model.named_parameters() if no_decay(n, p)]
    opt = torch.optim.AdamW(
        [{"params": [p for _, p in nodecay], "weight_decay": 0.0},
         {"params": [p for _, p in decay], "weight_decay": ADAMW["weight_decay"]}],
        lr=ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"])
    opt.zero_grad()
    loss, train_logits = clip_loss(model, images[:N_TRAIN], tokens[:N_TRAIN])
    loss.backward()
    grads = [(n, p.grad.detach().clone()) for n, p in model.named_parameters()]
    opt.step()
    with torch.no_grad():
        before_clamp = float(model.logit_scale)
        model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
        clamp_changed = float(model.logit_scale) != before_clamp
    after = state_list(model)

    io = [("images", images), ("tokens", tokens), ("image_features", image_features),
          ("text_features", text_features), ("logits_per_image", logits_per_image),
          ("train_logits", train_logits.detach()), ("loss", loss.detach().reshape(1))]
    c = cfg["clip"]
    meta = {
        "generator": "test/reference/gen_clip.py",
        "openai_clip_args": c,
        "openclip_config": {
            "embed_dim": c["embed_dim"], "quick_gelu": True,
            "vision_cfg": {"image_size": c["image_resolution"], "layers": c["vision_layers"],
                           "width": c["vision_width"], "patch_size": c["vision_patch_size"],
                           "head_width": 64},
            "text_cfg": {"context_length": c["context_length"], "vocab_size": c["vocab_size"],
                         "width": c["transformer_width"], "heads": c["transformer_heads"],
                         "layers": c["transformer_layers"]},
        },
        "vision_heads": c["vision_width"] // 64,
        "seed": cfg["seed"],
        "perturbation": "after OpenAI's init: logit_scale = ln(1/0.07)+0.3; 1-D params += 0.1*randn; "
                        ">=2-D params += 0.02*(1+mean|p|)*randn (in named_parameters order)",
        "tokens": {"sot": sot, "eot": eot, "pad": 0, "ordinary": [1, c["vocab_size"] - 3],
                   "lengths_including_sot_eot": lengths,
                   "pooling": "text.argmax(dim=-1), i.e. the position of the eot (highest) id"},
        "forward": {"images": N_IMAGES, "texts": N_TEXTS, "mode": "eval, torch.no_grad, float32",
                    "outputs": ["image_features = encode_image(images) (unnormalised)",
                                "text_features = encode_text(tokens) (unnormalised)",
                                "logits_per_image = model(images, tokens)[0]"]},
        "train_step": {
            "batch": f"images[:{N_TRAIN}], tokens[:{N_TRAIN}]",
            "loss": "(CE(logits, arange) + CE(logits.T, arange)) / 2, logits = logit_scale.exp() * "
                    "normalize(encode_image) @ normalize(encode_text).T",
            "loss_value": float(loss),
            "optimizer": {"type": "torch.optim.AdamW", "lr": ADAMW["lr"], "betas": list(ADAMW["betas"]),
                          "eps": ADAMW["eps"], "weight_decay": ADAMW["weight_decay"], "amsgrad": False,
                          "step": 1, "state_before": "fresh (no previous moments)"},
            "weight_decay_rule": "0 for params with ndim < 2 or name containing 'bn', 'ln', 'bias', "
                                 "'logit_scale'; weight_decay otherwise",
            "decay_params": [n for n, _ in decay],
            "no_decay_params": [n for n, _ in nodecay],
            "logit_scale_clamp": [0.0, LOGIT_SCALE_MAX],
            "logit_scale_before_clamp": before_clamp,
            "logit_scale_clamp_changed_value": clamp_changed,
            "token_embedding_rows_with_zero_grad": int((dict(grads)["token_embedding.weight"].abs().sum(1) == 0).sum()),
            "note": "rows with zero gradient still shrink by (1 - lr*weight_decay) where weight decay applies "
                    "(token_embedding.weight decays); Adam's update is 0/(0+eps) = 0 there",
        },
        "state_dict_excluded": "nothing: the causal text attention mask (-inf above the diagonal) is a plain "
                               "attribute in model.py, not a parameter or buffer, so it is not in state_dict",
        "logit_scale_shape": "[] (0-d scalar, as in OpenAI's checkpoints)",
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
    }
    return model, weights, io, grads, after, meta


def write_all(out, name, weights, io, grads, after, meta, sha):
    meta = dict(meta, openai_clip_model_py_sha256=sha)
    st_meta = {"format": "pt", "source": "OpenAI CLIP clip/model.py (not vendored)",
               "torch_version": torch.__version__}
    write_safetensors(os.path.join(out, f"clip_{name}.safetensors"), weights, st_meta)
    write_safetensors(os.path.join(out, f"clip_{name}_io.safetensors"), io, st_meta)
    write_safetensors(os.path.join(out, f"clip_{name}_grads.safetensors"), grads, st_meta)
    write_safetensors(os.path.join(out, f"clip_{name}_adamw_after.safetensors"), after, st_meta)
    with open(os.path.join(out, f"clip_{name}.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


def check(cm, cfg, out, name):
    """Reload everything with read_safetensors and verify it reproduces."""
    w, _ = read_safetensors(os.path.join(out, f"clip_{name}.safetensors"))
    io, _ = read_safetensors(os.path.join(out, f"clip_{name}_io.safetensors"))
    g, _ = read_safetensors(os.path.join(out, f"clip_{name}_grads.safetensors"))
    a, _ = read_safetensors(os.path.join(out, f"clip_{name}_adamw_after.safetensors"))
    with open(os.path.join(out, f"clip_{name}.json")) as f:
        meta = json.load(f)

    torch.manual_seed(12345)   # a fresh, differently initialised model: everything must come from w
    model = cm.CLIP(**cfg["clip"]).float().eval()
    model.load_state_dict(w, strict=True)
    with torch.no_grad():
        imf = model.encode_image(io["images"])
        txf = model.encode_text(io["tokens"])
        lpi, _ = model(io["images"], io["tokens"])
    for k, v in [("image_features", imf), ("text_features", txf), ("logits_per_image", lpi)]:
        assert torch.equal(v, io[k]), f"{name}: {k} does not reproduce bit-exactly"

    # Independent recomputation of the loss (plain formula, no model.forward).
    imn = F.normalize(imf[:N_TRAIN], dim=1)
    txn = F.normalize(txf[:N_TRAIN], dim=1)
    logits = w["logit_scale"].exp() * imn @ txn.t()
    lab = torch.arange(N_TRAIN)
    loss = (F.cross_entropy(logits, lab) + F.cross_entropy(logits.t(), lab)) / 2
    assert torch.allclose(loss, io["loss"][0], rtol=1e-5, atol=1e-6), (float(loss), float(io["loss"][0]))
    assert torch.allclose(logits, io["train_logits"], rtol=1e-5, atol=1e-5)

    # Gradients: recompute with autograd from the reloaded weights.
    model.train()
    model.zero_grad()
    l2, _ = clip_loss(model, io["images"][:N_TRAIN], io["tokens"][:N_TRAIN])
    l2.backward()
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, g[n]), f"{name}: grad {n} does not reproduce"

    # AdamW step 1 written out by hand (decoupled decay; bias corrections 1-b1, 1-b2).
    opt = meta["train_step"]["optimizer"]
    lr, (b1, b2), eps, wd = opt["lr"], opt["betas"], opt["eps"], opt["weight_decay"]
    nod = set(meta["train_step"]["no_decay_params"])
    worst = 0.0
    for n in w:
        p, gr = w[n].double(), g[n].double()
        p = p * (1 - lr * (0.0 if n in nod else wd))
        m, v = (1 - b1) * gr, (1 - b2) * gr * gr
        p = p - lr * (m / (1 - b1)) / ((v / (1 - b2)).sqrt() + eps)
        if n == "logit_scale":
            p = p.clamp(0, math.log(100))
        worst = max(worst, float((p - a[n].double()).abs().max()))
    assert worst < 1e-6, f"{name}: AdamW step mismatch {worst}"
    zero = [n for n in g if float(g[n].abs().max()) == 0.0]
    print(f"check {name}: forward bit-exact, loss {float(io['loss'][0]):.6f}, grads bit-exact, "
          f"AdamW by hand max |diff| {worst:.2e}; params with all-zero grad: {zero or 'none'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--openai-clip-dir", required=True,
                    help="directory containing OpenAI's `clip` package (clip/model.py)")
    ap.add_argument("--out", required=True, help="output directory for the fixtures")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of: " + ",".join(CONFIGS))
    ap.add_argument("--check", action="store_true", help="after writing, reload and verify the files")
    ap.add_argument("--check-only", action="store_true", help="verify existing files, write nothing")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    cm, sha = import_openai_clip(args.openai_clip_dir)
    os.makedirs(args.out, exist_ok=True)
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        if not args.check_only:
            _, weights, io, grads, after, meta = run(cm, cfg)
            write_all(args.out, name, weights, io, grads, after, meta, sha)
            total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out)
                        if f.startswith(f"clip_{name}.") or f.startswith(f"clip_{name}_"))
            print(f"wrote clip_{name}*: {total} bytes, loss {meta['train_step']['loss_value']:.6f}")
        if args.check or args.check_only:
            check(cm, cfg, args.out, name)


if __name__ == "__main__":
    main()
