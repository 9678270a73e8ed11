"""Training throughput of BitGen Stage 1: image-caption pairs per second of full optimizer steps.

For the card model (DINOv2-small shape, 224 px, GPT-2 vocabulary) and the tiny test model, each with BitLinear
(`bitnet=True`) and with nn.Linear (`bitnet=False`), on the CPU and, when present, on CUDA (bf16 autocast there, as the
learner does). One step = forward with the Stage-1 loss (ITC vs the queue, ITM with hard negatives, memory KL) +
backward + gradient clipping + AdamW step. Variants are interleaved; the figure is the median of `--reps` timed steps
after `--warmup` steps.

    python bench/train_step.py [--bs 8] [--reps 5] [--threads 2] [--devices cpu,cuda] [--models card,tiny]
"""
import argparse, statistics, time
import torch
from transformers import Dinov2Config
from bitgen.model import BitGenConfig, BitGenModel, tiny_config


def make(name, bitnet):
    if name == 'card': return BitGenModel(BitGenConfig(bitnet=bitnet, queue_size=1024)), 224, 50257
    return BitGenModel(tiny_config(bitnet=bitnet)), 56, 64


def stepper(model, bs, img, vocab, device, seq=16):
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.02)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (bs, seq), generator=g).to(device)
    imgs = torch.rand(bs, 3, img, img, generator=g).to(device)
    amp = torch.autocast('cuda', dtype=torch.bfloat16) if device == 'cuda' else torch.autocast('cpu', enabled=False)
    n = [0]
    def step():
        with amp:
            out = model(input_ids=ids, images=imgs, image_ids=torch.arange(bs, device=device) + n[0] * bs, return_loss=True)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); model.post_step(); n[0] += 1
        if device == 'cuda': torch.cuda.synchronize()
    return step


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--bs', type=int, default=8)
    p.add_argument('--reps', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--devices', default='cpu,cuda')
    p.add_argument('--models', default='card,tiny')
    a = p.parse_args()
    torch.set_num_threads(a.threads); torch.manual_seed(0)
    devices = [d for d in a.devices.split(',') if d == 'cpu' or torch.cuda.is_available()]
    for dev in devices:
        bs = a.bs if dev == 'cpu' else max(a.bs, 128)
        for name in a.models.split(','):
            steps = {}
            for bitnet in (True, False):
                model, img, vocab = make(name, bitnet)
                steps['BitLinear' if bitnet else 'nn.Linear'] = stepper(model, bs, img, vocab, dev)
            for f in steps.values():
                for _ in range(a.warmup): f()
            times = {k: [] for k in steps}
            for _ in range(a.reps):
                for k, f in steps.items():  # interleaved
                    t0 = time.perf_counter(); f(); times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"{dev} {name:4s} bs={bs:<4d} " + "  ".join(f"{k}: {bs / v:7.2f} pairs/s ({v * 1e3:7.1f} ms/step)"
                                                           for k, v in med.items()) +
                  f"  BitLinear/nn.Linear speed {med['nn.Linear'] / med['BitLinear']:.2f}x", flush=True)


if __name__ == '__main__': main()
