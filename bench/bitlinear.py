"""BitLinear vs nn.Linear on the CPU at BitGen's sizes (dim 128, FFN 256).

A stack of FFN-shaped layers (128->256->128, `--layers` times), timed as
- a training step (forward + backward): nn.Linear vs BitLinear (latent weights, straight-through estimators);
- inference at batch 1 with 16, 64 and 256 tokens and at batch 32 x 256 tokens: nn.Linear vs BitLinear in eval under
  `torch.inference_mode` (its cached packed form) vs PackedBitLinear (int8 x ternary, RMSNorm folded into the quantiser).
Every figure is a ratio to nn.Linear timed in the same rounds: each round runs every variant in turn (`--iters` calls
each), the ratio of a round is variant / nn.Linear of that round, and the median of the per-round ratios is printed with
their min-max, for 1 and 2 threads. A load average above the free cores prints a WARNING.
Targets: BitLinear train step >= 0.8x nn.Linear speed; QAT eval <= 1.2x packed latency.

    python bench/bitlinear.py [--threads 1 2] [--reps 9] [--iters 5]
"""
import argparse, copy, os, statistics, time
import torch, torch.nn as nn
from bitgen.bitlinear import BitLinear, pack_bitlinears


def stack(cls, dim=128, ffn=256, layers=2):
    mods = []
    for _ in range(layers): mods += [cls(dim, ffn, bias=False), nn.GELU(), cls(ffn, dim, bias=False)]
    return nn.Sequential(*mods)


def rounds(fns, base, reps, iters, grad):
    "Interleaved rounds: {name: (median ms, median ratio to `base`, min ratio, max ratio)}"
    times = {k: [] for k in fns}
    for r in range(reps + 1):   # the first round warms up
        for k, f in fns.items():
            with torch.set_grad_enabled(grad(k)), torch.inference_mode(not grad(k)):
                t0 = time.perf_counter()
                for _ in range(iters): f()
                if r: times[k].append((time.perf_counter() - t0) / iters * 1e3)
    out = {}
    for k, v in times.items():
        ratios = [a / b for a, b in zip(v, times[base])]
        out[k] = (statistics.median(v), statistics.median(ratios), min(ratios), max(ratios))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    p.add_argument('--reps', type=int, default=9)
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--layers', type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(0)
    lin, bit = stack(nn.Linear, layers=a.layers), stack(BitLinear, layers=a.layers)
    bit.load_state_dict(lin.state_dict(), strict=False)  # same latent weights (BitLinear adds norm gains)
    bit_eval = copy.deepcopy(bit).eval()
    packed = pack_bitlinears(copy.deepcopy(bit_eval))

    def train_step(m, x):
        def f():
            m.zero_grad(set_to_none=True)
            m(x).square().mean().backward()
        return f

    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {a.layers} x (128->256->128), ratio to nn.Linear: median of {a.reps} interleaved "
          f"rounds [min-max] (ms of nn.Linear)")
    for t in a.threads:
        torch.set_num_threads(t)
        if load + t > (os.cpu_count() or 1) + 0.5:
            print(f"WARNING: load average {load:.2f} on {os.cpu_count()} cores: fewer than {t} free core(s), "
                  "the figures measure contention too")
        xt = torch.randn(32, 256, 128)
        r = rounds({'nn.Linear': train_step(lin.train(), xt), 'BitLinear': train_step(bit.train(), xt)},
                   'nn.Linear', a.reps, a.iters, grad=lambda k: True)
        ms, ratio, lo, hi = r['BitLinear']
        print(f"{t} thread(s), train step, x (32, 256, 128): BitLinear {ratio:.2f}x [{lo:.2f}-{hi:.2f}] of nn.Linear "
              f"({r['nn.Linear'][0]:.2f} ms): speed {1 / ratio:.2f}x (target >= 0.80x)")
        for shape in ((1, 16), (1, 64), (1, 256), (32, 256)):
            x = torch.randn(*shape, 128)
            r = rounds({'nn.Linear': lambda: lin(x), 'BitLinear eval': lambda: bit_eval(x), 'Packed': lambda: packed(x)},
                       'nn.Linear', a.reps, a.iters, grad=lambda k: False)
            q, pk = r['BitLinear eval'], r['Packed']
            print(f"{t} thread(s), inference, x {shape + (128,)}: BitLinear eval {q[1]:.2f}x [{q[2]:.2f}-{q[3]:.2f}], "
                  f"Packed {pk[1]:.2f}x [{pk[2]:.2f}-{pk[3]:.2f}] of nn.Linear ({r['nn.Linear'][0]:.3f} ms); "
                  f"eval / packed {q[1] / pk[1]:.2f}x (target <= 1.20x)")


if __name__ == '__main__': main()
