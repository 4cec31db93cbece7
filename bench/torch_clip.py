#!/usr/bin/env python3
"""The PyTorch side of the CLIP benchmarks (bench/clip.ts), on OpenAI's own clip/model.py.

Usage: torch_clip.py infer|train '{"json": "args"}'. Needs OPENAI_CLIP_DIR: the directory holding
OpenAI's `clip` package (clip/model.py from github.com/openai/CLIP; not part of clipkit).
Prints one JSON object, as bench/torch_engine.py does:
{"cases": {name: [{"threads": n, "samples": [wall s, ...], "cpu": [CPU s, ...]}]}, "notes": {...}}.

infer: builds CLIP ViT-B/32 with a seed, writes into args.dir
  weights.safetensors   its state_dict (OpenAI names), for clipkit's loadClip
  vision.onnx, text.onnx  torch.onnx.export of encode_image / encode_text (opset 17, dynamic batch)
  <name>.bin + io.json  the inputs and PyTorch's features for them (raw little-endian arrays)
  then times encode_image / encode_text (eval, no_grad, float32) at each thread count asked for.
train: times one training step of a small CLIP (CLIP's symmetric cross-entropy, torch.optim.AdamW,
  logit-scale clamp as OpenCLIP does), at each thread count asked for.
"""
import json
import os
import struct
import sys
import time


def timeit(fn, warmup, reps, budget=None, keep=None):
    """Wall and CPU seconds of `reps` calls after `warmup` calls. With `budget` (seconds), fewer reps
    (at least one) when the warmup call says they would not fit: with Debian's reference BLAS a
    ViT-B/32 call can take minutes. `keep` receives the last call's result (the reference features)."""
    first = None
    for _ in range(warmup):
        t0 = time.perf_counter()
        r = fn()
        first = time.perf_counter() - t0
    if budget and first and first * reps > budget:
        reps = max(1, int(budget // first))
    wall, cpu = [], []
    for _ in range(reps):
        c0 = time.process_time()
        t0 = time.perf_counter()
        r = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    if keep is not None:
        keep.append(r)
    return {'samples': wall, 'cpu': cpu}


def import_clip():
    d = os.environ.get('OPENAI_CLIP_DIR')
    if not d or not os.path.isfile(os.path.join(d, 'clip', 'model.py')):
        sys.stderr.write("OpenAI's model.py not found: set OPENAI_CLIP_DIR\n")
        sys.exit(3)
    sys.path.insert(0, d)
    # Import model.py alone (clip/__init__.py pulls in the tokenizer and torchvision downloads).
    import importlib.util
    spec = importlib.util.spec_from_file_location('openai_clip_model', os.path.join(d, 'clip', 'model.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_safetensors(path, tensors):
    """safetensors by hand: u64 LE header length, JSON header (padded with spaces to 8 bytes), raw data."""
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().to('cpu')
        b = t.numpy().tobytes()
        dtype = {'torch.float32': 'F32', 'torch.int64': 'I64'}[str(t.dtype)]
        header[name] = {'dtype': dtype, 'shape': list(t.shape), 'data_offsets': [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def vit_b32(mod):
    # CLIP(embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
    #      context_length, vocab_size, transformer_width, transformer_heads, transformer_layers)
    return mod.CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)


def infer(torch, a):
    mod = import_clip()
    torch.manual_seed(a.get('seed', 0))
    model = vit_b32(mod).float().eval()
    d = a['dir']
    write_safetensors(os.path.join(d, 'weights.safetensors'), model.state_dict())

    g = torch.Generator().manual_seed(1)
    bi, bt, ctx = a['imageBatch'], a['textBatch'], 77
    pixels = torch.randn(bi, 3, 224, 224, generator=g)
    # Full: random ids, the end token (49407, the largest id) at the last position: all 77 used.
    full = torch.randint(1, 49406, (bt, ctx), generator=g)
    full[:, 0] = 49406
    full[:, -1] = 49407
    # Short: "a photo of a dog"-length prompts: start, 5 word tokens, end, then zero padding.
    short = torch.zeros(bt, ctx, dtype=torch.int64)
    short[:, 0] = 49406
    short[:, 1:6] = torch.randint(1, 49406, (bt, 5), generator=g)
    short[:, 6] = 49407

    class Vision(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixels):
            return self.m.encode_image(pixels)

    class Text(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m.encode_text(input_ids)

    with torch.no_grad():
        torch.onnx.export(Vision(model), (pixels[:1],), os.path.join(d, 'vision.onnx'), opset_version=17,
                          input_names=['pixels'], output_names=['image_embeds'],
                          dynamic_axes={'pixels': {0: 'batch'}, 'image_embeds': {0: 'batch'}})
        torch.onnx.export(Text(model), (full[:1],), os.path.join(d, 'text.onnx'), opset_version=17,
                          input_names=['input_ids'], output_names=['text_embeds'],
                          dynamic_axes={'input_ids': {0: 'batch'}, 'text_embeds': {0: 'batch'}})

        io = {}

        def dump(name, t):
            t = t.contiguous()
            with open(os.path.join(d, name + '.bin'), 'wb') as f:
                f.write(t.numpy().tobytes())
            io[name] = {'dtype': str(t.dtype).replace('torch.', ''), 'shape': list(t.shape)}

        dump('pixels', pixels)
        dump('tokens_full', full)
        dump('tokens_short', short)

        # The timed calls' outputs are the reference features (no extra forward passes).
        cases = {'image': [], 'text_full': [], 'text_short': []}
        out = {'image': [], 'text_full': [], 'text_short': []}
        budget = a.get('budget')
        for th in a['threads']:
            torch.set_num_threads(th)
            cases['image'].append({'threads': th, **timeit(lambda: model.encode_image(pixels), **a['imageReps'], budget=budget, keep=out['image'])})
            cases['text_full'].append({'threads': th, **timeit(lambda: model.encode_text(full), **a['textReps'], budget=budget, keep=out['text_full'])})
        # The short prompts cost PyTorch the same as the full ones (all 77 positions are processed):
        # timed at the thread count that was best for the full ones only, to keep the run short.
        th = min(cases['text_full'], key=lambda r: sorted(r['samples'])[len(r['samples']) // 2])['threads']
        torch.set_num_threads(th)
        cases['text_short'].append({'threads': th, **timeit(lambda: model.encode_text(short), **a['textReps'], budget=budget, keep=out['text_short'])})
        dump('image_features', out['image'][-1])
        dump('text_full_features', out['text_full'][-1])
        dump('text_short_features', out['text_short'][-1])
        with open(os.path.join(d, 'io.json'), 'w') as f:
            json.dump(io, f)
    return {'cases': cases, 'notes': {'version': torch.__version__}}


def train(torch, a):
    mod = import_clip()
    F = torch.nn.functional
    torch.manual_seed(a.get('seed', 0))
    c = a['cfg']
    model = mod.CLIP(c['embed'], c['image'], c['vlayers'], c['vwidth'], c['patch'],
                     c['ctx'], c['vocab'], c['twidth'], c['theads'], c['tlayers']).float().train()
    o = a['adamw']
    decay = [p for n, p in model.named_parameters() if not (p.ndim < 2 or any(k in n for k in ('bn', 'ln', 'bias', 'logit_scale')))]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2 or any(k in n for k in ('bn', 'ln', 'bias', 'logit_scale'))]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': o['weightDecay']}, {'params': rest, 'weight_decay': 0.0}],
                            lr=o['lr'], betas=tuple(o['betas']), eps=o['eps'])
    g = torch.Generator().manual_seed(1)
    n = a['batch']
    pixels = torch.randn(n, 3, c['image'], c['image'], generator=g)
    tokens = torch.randint(1, c['vocab'] - 2, (n, c['ctx']), generator=g)
    tokens[:, 0] = c['vocab'] - 2
    tokens[:, -1] = c['vocab'] - 1
    labels = torch.arange(n)
    losses = []

    def step():
        img = model.encode_image(pixels)
        txt = model.encode_text(tokens)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        logits = model.logit_scale.exp() * img @ txt.t()
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.605170185988092)  # log(100), as OpenCLIP
        losses.append(loss.item())

    cases = {'step': []}
    for th in a['threads']:
        torch.set_num_threads(th)
        cases['step'].append({'threads': th, **timeit(step, **a['reps'], budget=a.get('budget'))})
    return {'cases': cases, 'notes': {'firstLoss': losses[0], 'lastLoss': losses[-1]}}


def main():
    import torch
    bench = sys.argv[1]
    args = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    out = {'infer': infer, 'train': train}[bench](torch, args)
    sys.stdout.write(json.dumps(out))


if __name__ == '__main__':
    main()
