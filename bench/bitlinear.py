"""BitLinear vs nn.Linear on the CPU at BitGen's sizes (dim 128, FFN 256, 256 tokens, batch 32).

Times, interleaved and repeated (median of `--reps` rounds, each the mean of `--iters` calls):
- a training step (forward + backward) of a stack of FFN-shaped layers (128->256->128, `--layers` times);
- the inference forward of the same stack: nn.Linear vs BitLinear in eval vs PackedBitLinear (int8 x ternary).
Prints the times and the ratios to nn.Linear. Targets (issue 2): BitLinear train step >= 0.8x nn.Linear speed,
packed inference <= 1.0x nn.Linear latency.

    python bench/bitlinear.py [--threads 2] [--reps 7]
"""
import argparse, copy, statistics, time
import torch, torch.nn as nn
from bitgen.bitlinear import BitLinear, pack_bitlinears


def stack(cls, dim=128, ffn=256, layers=2):
    mods = []
    for _ in range(layers): mods += [cls(dim, ffn, bias=False), nn.GELU(), cls(ffn, dim, bias=False)]
    return nn.Sequential(*mods)


def timeit(fn, iters):
    t0 = time.perf_counter()
    for _ in range(iters): fn()
    return (time.perf_counter() - t0) / iters * 1e3  # ms


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--reps', type=int, default=7)
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--bs', type=int, default=32)
    p.add_argument('--seq', type=int, default=256)
    p.add_argument('--layers', type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads); torch.manual_seed(0)
    x = torch.randn(a.bs, a.seq, 128)
    lin, bit = stack(nn.Linear, layers=a.layers), stack(BitLinear, layers=a.layers)
    bit.load_state_dict(lin.state_dict(), strict=False)  # same latent weights (BitLinear adds norm gains)

    def train_step(m):
        def f():
            m.zero_grad(set_to_none=True)
            m(x).square().mean().backward()
        return f

    bit_eval = copy.deepcopy(bit).eval()
    packed = pack_bitlinears(copy.deepcopy(bit).eval())

    fns = {'train nn.Linear': train_step(lin.train()), 'train BitLinear': train_step(bit.train())}
    fns |= {'infer nn.Linear': lambda: lin(x), 'infer BitLinear eval': lambda: bit_eval(x),
            'infer PackedBitLinear': lambda: packed(x)}
    for k, f in fns.items():  # warm-up
        with torch.set_grad_enabled(not k.startswith('infer')): f()
    times = {k: [] for k in fns}
    for _ in range(a.reps):
        for k, f in fns.items():  # interleaved: machine noise hits every variant alike
            with torch.set_grad_enabled(not k.startswith('infer')): times[k].append(timeit(f, a.iters))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"torch {torch.__version__}, {a.threads} threads, x {tuple(x.shape)}, {a.layers} x (128->256->128), "
          f"median of {a.reps} x {a.iters} calls")
    for k, v in med.items(): print(f"  {k:24s} {v:8.2f} ms")
    tr = med['train nn.Linear'] / med['train BitLinear']
    print(f"train step speed BitLinear / nn.Linear: {tr:.2f}x   (target >= 0.80x)")
    for k in ('infer BitLinear eval', 'infer PackedBitLinear'):
        print(f"latency {k[6:]} / nn.Linear: {med[k] / med['infer nn.Linear']:.2f}x" +
              ("   (target <= 1.00x)" if 'Packed' in k else ''))


if __name__ == '__main__': main()
