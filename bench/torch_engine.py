#!/usr/bin/env python3
"""The PyTorch side of the engine benchmarks (bench/engine*.ts).

Usage: torch_engine.py BENCH ['{"json": "args"}']   with BENCH one of info, overhead, matmul, block,
adamw, train. Prints one JSON object:
{"cases": {name: [{"threads": n, "samples": [wall seconds, ...], "cpu": [CPU seconds, ...]}]}, "notes": {...}}. The TypeScript driver computes the statistics, with the same code as for our numbers.
Each benchmark does the same work as its TypeScript counterpart; the comments say where it differs.
"""
import json
import os
import sys
import time


def timeit(fn, warmup, reps):
    """Wall-clock and process CPU seconds (all threads) of each of `reps` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(reps):
        c0 = time.process_time()
        t0 = time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {'samples': wall, 'cpu': cpu}


def blas_in_use():
    """The BLAS shared library this process loaded (Debian's torch links the libblas.so.3 alternative)."""
    libs = set()
    with open('/proc/self/maps') as f:
        for line in f:
            path = line.split()[-1]
            name = os.path.basename(path).lower()
            if 'blas' in name or 'mkl' in name:
                libs.add(path)
    for path in sorted(libs):
        name, variant = os.path.basename(path), os.path.basename(os.path.dirname(path))
        if 'openblas' in path:
            # openblas-openmp follows torch.set_num_threads; openblas-pthread does not (it uses every core).
            return f'OpenBLAS ({variant})'
        if 'mkl' in name.lower():
            return 'MKL ' + name
        if '/blas/' in path:
            return 'reference BLAS (netlib) ' + name
    return ', '.join(sorted(os.path.basename(p) for p in libs)) or 'unknown'


def info(torch, _args):
    torch.ones(8, 8) @ torch.ones(8, 8)  # make sure the BLAS is loaded before looking for it
    return {'version': torch.__version__, 'blas': blas_in_use(), 'threadsDefault': torch.get_num_threads()}


def overhead(torch, a):
    torch.set_num_threads(1)
    x, y, out = torch.randn(4), torch.randn(4), torch.empty(4)
    return {'cases': {
        'add': [{'threads': 1, **timeit(lambda: torch.add(x, y), a['warmup'], a['reps'])}],
        'add_out': [{'threads': 1, **timeit(lambda: torch.add(x, y, out=out), a['warmup'], a['reps'])}],
    }}


def matmul(torch, a):
    x, w = torch.randn(a['M'], a['K']), torch.randn(a['K'], a['N'])
    out = torch.empty(a['M'], a['N'])
    runs = []
    for th in (1, 2):
        torch.set_num_threads(th)
        runs.append({'threads': th, **timeit(lambda: torch.matmul(x, w, out=out), a['warmup'], a['reps'])})
    return {'cases': {'mm': runs}}


def make_block(torch, D, H, F):
    """Pre-LN block with the math of src/nn/layers.ts transformer(): packed QKV projection, q scaled by
    1/sqrt(hd) before QK^T, softmax, A.V, out projection, exact GELU MLP. Hand-written rather than
    nn.MultiheadAttention so both sides run the same ops (MHA's fast path only applies to inference)."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(D), nn.LayerNorm(D)
            self.in_proj, self.out_proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
            self.c_fc, self.c_proj = nn.Linear(D, F), nn.Linear(F, D)

        def forward(self, x):
            n, t, _ = x.shape
            hd = D // H
            qkv = self.in_proj(self.ln_1(x)).reshape(n, t, 3, H, hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            att = torch.softmax((q * hd ** -0.5) @ k.transpose(-2, -1), dim=-1) @ v
            x = x + self.out_proj(att.transpose(1, 2).reshape(n, t, D))
            return x + self.c_proj(torch.nn.functional.gelu(self.c_fc(self.ln_2(x))))

    return Block()


def block(torch, a):
    B, T, D, H, F = a['B'], a['T'], a['D'], a['H'], a['F']
    blk = make_block(torch, D, H, F)
    x = torch.randn(B, T, D)
    r = torch.randn(B, T, D)
    xg = x.clone().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            blk(x)

    def fwdbwd():
        blk.zero_grad(set_to_none=True)
        xg.grad = None
        (blk(xg) * r).sum().backward()

    cases = {'fwd': [], 'fwdbwd': []}
    for th in a['threads']:
        torch.set_num_threads(th)
        cases['fwd'].append({'threads': th, **timeit(fwd, a['fwd']['warmup'], a['fwd']['reps'])})
        cases['fwdbwd'].append({'threads': th, **timeit(fwdbwd, a['bwd']['warmup'], a['bwd']['reps'])})
    return {'cases': cases}


def adamw(torch, a):
    n = a['total'] // a['tensors']
    cases = {'for-loop': [], 'foreach': []}
    for name, foreach in (('for-loop', False), ('foreach', True)):
        params = [torch.nn.Parameter(torch.randn(n) * 0.02) for _ in range(a['tensors'])]
        for p in params:
            p.grad = torch.randn(n) * 1e-3
        opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, foreach=foreach)
        opt.step()  # the first step allocates the moments; not timed
        for th in a['threads']:
            torch.set_num_threads(th)
            cases[name].append({'threads': th, **timeit(opt.step, a['warmup'], a['reps'])})
        del opt, params
    return {'cases': cases}


def train(torch, a):
    nn = torch.nn
    V, T, W, L, H, B, C = a['vocab'], a['seq'], a['width'], a['layers'], a['heads'], a['batch'], a['classes']

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.token_embedding = nn.Embedding(V, W)
            nn.init.normal_(self.token_embedding.weight, std=0.02)
            self.positional_embedding = nn.Parameter(torch.randn(T, W) * 0.01)
            self.blocks = nn.ModuleList([make_block(torch, W, H, W * a['mlpRatio']) for _ in range(L)])
            self.ln_final = nn.LayerNorm(W)
            self.head = nn.Linear(W, C)

        def forward(self, ids):
            h = self.token_embedding(ids) + self.positional_embedding
            for b in self.blocks:
                h = b(h)
            return self.head(self.ln_final(h).mean(1))

    ids = torch.randint(0, V, (B, T))
    y = torch.randint(0, C, (B,))
    runs, losses = [], None
    for th in a['threads']:
        torch.set_num_threads(th)
        torch.manual_seed(0)
        model = Classifier()
        # torch 1.13's default on CPU is the for-loop implementation (foreach=None → False).
        opt = torch.optim.AdamW(model.parameters(), lr=a['lr'], weight_decay=a['weightDecay'])
        seen = []

        def step():
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(ids), y)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), a['clip'])
            opt.step()
            seen.append(loss.item())

        runs.append({'threads': th, **timeit(step, a['warmup'], a['reps'])})
        losses = losses or seen
    return {'cases': {'step': runs}, 'notes': {'losses': losses}}


BENCHES = {'info': info, 'overhead': overhead, 'matmul': matmul, 'block': block, 'adamw': adamw, 'train': train}


def main():
    name = sys.argv[1]
    args = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    try:
        import torch
    except Exception as e:  # ImportError, or a broken install raising something else
        print(f'PyTorch not importable: {e}', file=sys.stderr)
        sys.exit(2)
    torch.manual_seed(0)
    print(json.dumps(BENCHES[name](torch, args)))


if __name__ == '__main__':
    main()
