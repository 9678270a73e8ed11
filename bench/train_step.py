"""Training-step speed of BitGen Stage 1: image-caption pairs per second of full optimizer steps, as ratios.

One step = forward with the Stage-1 loss (ITC vs the queue, ITM with hard negatives, memory ELBO) + backward + gradient
clipping + the learner's optimizer step + `post_step` (EMA of the momentum towers). Each variant runs in its own
process (one model, `--threads` threads); the parent asks every process for one step in turn, round after round, so
that the variants share the machine's noise, and reports the median over rounds of each per-round ratio, with min-max.

Variants (`--variants`, comma-separated; `--models card,tiny`):
- `bitlinear`: the default model (BitLinear text side); `linear`: the same with nn.Linear (`bitnet=False`);
- `compile`: BitLinear with `bitgen.learner.compile_towers` (torch.compile of the vision backbone and the blocks);
- `bf16` / `linear_bf16`: BitLinear / nn.Linear under bf16 autocast on the CPU, what
  `stage1_learner(mixed_precision='bf16')` runs (weights, gradients and optimizer state stay fp32);
- `vision`: the ceiling, the vision backbone's own forward + backward on the same images, with the same optimizer;
- `main`: the default model on another revision of BitGen (`--rev`, default `main`), from a `git worktree` made
  under /tmp, with the optimizer that revision's learner uses: the "faster than before" figure.

`--ddp` instead times the tiny or card model in 1 process at `--bs` and in 2 gloo processes at `--bs` each (global
batch 2 x bs) and reports pairs/s of both. On CUDA (`--device cuda`) steps run under bf16 autocast, as the learner does.

    python bench/train_step.py --models card --variants bitlinear,linear,vision,main --rounds 7 --threads 1
    python bench/train_step.py --models tiny --variants bitlinear,linear,compile
    python bench/train_step.py --models card --variants bitlinear,bf16,linear_bf16,main --rev b5f46b8
    python bench/train_step.py --ddp --models tiny
"""
import argparse, json, os, resource, statistics, subprocess, sys, tempfile, time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- worker side (one variant per process)
def build(model_name, variant, bs, device):
    import torch
    from bitgen.model import BitGenConfig, BitGenModel, tiny_config
    import bitgen.learner as L
    bitnet = variant not in ('linear', 'linear_bf16')
    if model_name == 'card': model, img, vocab = BitGenModel(BitGenConfig(bitnet=bitnet)), 224, 50257
    else: model, img, vocab = BitGenModel(tiny_config(bitnet=bitnet)), 56, 64
    if variant == 'compile': L.compile_towers(model)
    target = model.vision.backbone if variant == 'vision' else model
    target.to(device).train()
    params = [p for p in target.parameters() if p.requires_grad]
    if hasattr(L, 'stage1_opt'): opt = L.stage1_opt(L.stage1_splitter(target), lr=2e-4); opt.set_hyper('wd', [0.02, 0.])
    else:   # an older revision: the optimizer its learner used (fastai Adam, decoupled weight decay)
        from fastai.optimizer import Adam
        opt = Adam(params, lr=2e-4, wd=0.02)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (bs, 16), generator=g).to(device)
    imgs = torch.rand(bs, 3, img, img, generator=g).to(device)
    n = [0]
    def step():
        bf16 = device == 'cuda' or variant.endswith('bf16')
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            if variant == 'vision': loss = model.vision.features(imgs).float().square().mean()
            else: loss = model(input_ids=ids, images=imgs, image_ids=torch.arange(bs, device=device) + n[0] * bs,
                               return_loss=True).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if variant != 'vision': model.post_step()
        n[0] += 1
        if device == 'cuda': torch.cuda.synchronize()
    return step


def worker(args):
    import torch
    torch.set_num_threads(args.threads); torch.manual_seed(0)
    step = build(args.model, args.variant, args.bs, args.device)
    for _ in range(args.warmup): step()
    if args.device == 'cuda': torch.cuda.reset_peak_memory_stats()
    print('ready', flush=True)
    for line in sys.stdin:
        if line.strip() != 'step': break
        t0 = time.perf_counter(); step(); dt = time.perf_counter() - t0
        mem = torch.cuda.max_memory_allocated() if args.device == 'cuda' else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({'t': dt, 'mem': mem}), flush=True)


# ---------------------------------------------------------------- parent side
def worktree(rev):
    d = Path(tempfile.gettempdir())/f'bitgen-bench-{rev.replace("/", "_")}'
    if not d.exists(): subprocess.run(['git', '-C', str(REPO), 'worktree', 'add', '--detach', str(d), rev], check=True,
                                      capture_output=True)
    return d


def spawn(model, variant, a):
    env = {**os.environ, 'OMP_NUM_THREADS': str(a.threads), 'PYTHONWARNINGS': 'ignore'}
    src = worktree(a.rev) if variant == 'main' else REPO
    env['PYTHONPATH'] = str(src)
    cmd = [sys.executable, str(Path(__file__).resolve()), '--worker', '--model', model, '--variant', variant,
           '--bs', str(a.bs), '--threads', str(a.threads), '--device', a.device, '--warmup', str(a.warmup)]
    p = subprocess.Popen(cmd, env=env, cwd=str(src), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if line.strip() != 'ready': raise RuntimeError(f"{variant} worker failed to start")
    return p


def compare(model, a):
    procs = {v: spawn(model, v, a) for v in a.variants.split(',')}
    times, mems = {v: [] for v in procs}, {}
    for _ in range(a.rounds):
        for v, p in procs.items():
            p.stdin.write('step\n'); p.stdin.flush()
            r = json.loads(p.stdout.readline()); times[v].append(r['t']); mems[v] = r['mem']
    for p in procs.values(): p.stdin.write('stop\n'); p.stdin.flush(); p.wait()
    ref = 'bitlinear' if 'bitlinear' in times else next(iter(times))
    print(f"\n{a.device} {model} bs={a.bs} threads={a.threads} rounds={a.rounds}")
    print(f"{'variant':10s} {'ms/step':>9s} {'pairs/s':>8s} {'peak mem':>9s}   speed vs {ref}: median [min, max] of per-round ratios")
    for v, ts in times.items():
        r = [tr / tv for tr, tv in zip(times[ref], ts)]   # > 1: v is faster than ref
        med = statistics.median(ts)
        print(f"{v:10s} {med * 1e3:9.1f} {a.bs / med:8.2f} {mems[v] / 2**20:8.0f}M   "
              f"{statistics.median(r):.2f}x [{min(r):.2f}, {max(r):.2f}]")
    spread = max((max(ts) - min(ts)) / statistics.median(ts) for ts in times.values())
    if spread > 0.5: print(f"warning: step times vary by up to {spread:.0%} within a variant: the machine is busy; trust the ratios, not the times")


def ddp_worker(rank, world, model, bs, steps, out):
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.manual_seed(0)
    from bitgen.model import BitGenConfig, BitGenModel, tiny_config
    import bitgen.learner as L
    m = BitGenModel(BitGenConfig()) if model == 'card' else BitGenModel(tiny_config())
    img, vocab = (224, 50257) if model == 'card' else (56, 64)
    ddp = DDP(m, find_unused_parameters=True) if world > 1 else m
    opt = L.stage1_opt(L.stage1_splitter(m))
    g = torch.Generator().manual_seed(rank)
    ids, imgs = torch.randint(3, vocab, (bs, 16), generator=g), torch.rand(bs, 3, img, img, generator=g)
    ts = []
    for i in range(steps):
        t0 = time.perf_counter()
        loss = ddp(input_ids=ids, images=imgs, image_ids=torch.arange(bs) + (i * world + rank) * bs, return_loss=True).loss
        opt.zero_grad(); loss.backward(); opt.step(); m.post_step()
        ts.append(time.perf_counter() - t0)
    if rank == 0: Path(out).write_text(json.dumps(ts))


def ddp_compare(model, a):
    sys.path.insert(0, str(REPO))
    from tests.distributed import run_ranks
    import torch
    torch.set_num_threads(a.threads)
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for world in (1, 2):
            out = f"{d}/w{world}.json"
            if world == 1: ddp_worker(0, 1, model, a.bs, a.warmup + a.rounds, out)
            else: run_ranks(ddp_worker, model, a.bs, a.warmup + a.rounds, out, world=2)
            ts = json.loads(Path(out).read_text())[a.warmup:]
            res[world] = world * a.bs / statistics.median(ts)
    print(f"\ncpu {model} bs={a.bs} per process, 1 thread each: 1 process {res[1]:.2f} pairs/s, 2 gloo processes "
          f"{res[2]:.2f} pairs/s ({res[2] / res[1]:.2f}x)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', default='card,tiny')
    p.add_argument('--variants', default='bitlinear,linear,vision,main')
    p.add_argument('--rev', default='main')
    p.add_argument('--bs', type=int, default=8)
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--device', default='cpu')
    p.add_argument('--ddp', action='store_true')
    p.add_argument('--worker', action='store_true'); p.add_argument('--model'); p.add_argument('--variant')
    a = p.parse_args()
    if a.worker: return worker(a)
    bad = set(a.variants.split(',')) - {'bitlinear', 'linear', 'compile', 'vision', 'main', 'bf16', 'linear_bf16'}
    if bad: p.error(f"unknown variants {sorted(bad)}")
    for model in a.models.split(','):
        if a.ddp: ddp_compare(model, a)
        else: compare(model, a)


if __name__ == '__main__': main()
