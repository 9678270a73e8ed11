"""Helpers for BitGen's multi-process tests: gloo process groups on the CPU and `torchrun` launches of the CLI.

Test-only: this module is not part of the `bitgen` package. The notebooks' distributed tests import it with
`from tests.distributed import ...` after putting the repository root on `sys.path` (`repo_root()` finds it).
"""
import json, os, socket, subprocess, sys
from pathlib import Path
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def repo_root(start=None) -> Path:
    "The repository root: the first folder at or above `start` (default: cwd) holding tests/distributed.py"
    p = Path(start or Path.cwd()).resolve()
    for d in (p, *p.parents):
        if (d/'tests'/'distributed.py').exists(): return d
    raise FileNotFoundError(f"no tests/distributed.py at or above {p}")


def free_port() -> int:
    "A free TCP port on localhost for a process group's rendezvous"
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _entry(rank, world, port, fn, args):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try: fn(rank, world, *args)
    finally: dist.destroy_process_group()


def run_ranks(fn, *args, world:int=2):
    "Run `fn(rank, world, *args)` in `world` spawned processes joined in one gloo group (`fn` must be importable)"
    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)


# --- workers (module-level, so that spawned processes can import them) ---

def queue_worker(rank, world, out_dir):
    "Each rank enqueues its own rows (unequal counts) into a `FeatureQueue` and saves it"
    from bitgen.losses import FeatureQueue
    q = FeatureQueue(8)
    n = 3 if rank == 0 else 2
    q.enqueue(image_ids=torch.arange(n) + 10 * rank, text_feats=torch.full((n, 4), float(rank)))
    torch.save(q.state(), f"{out_dir}/rank{rank}.pt")


def gather_worker(rank, world, out_dir):
    "Gradients through `gather_rows`: rank r holds rows x_r; a loss on the gathered rows sends each rank its gradient"
    from bitgen.losses import gather_rows
    n = 3 if rank == 0 else 2                                  # unequal counts
    x = (torch.arange(n * 2, dtype=torch.float).view(n, 2) + 10 * rank).requires_grad_()
    xs, start = gather_rows(x)
    w = torch.arange(1., xs.numel() + 1).view_as(xs)
    (xs * w).sum().backward()                                   # every rank computes the same global loss
    torch.save({'xs': xs.detach(), 'start': start, 'grad': x.grad}, f"{out_dir}/rank{rank}.pt")


def model_step_worker(rank, world, out_dir, bs_local=3):
    "One DDP training step of the tiny model on this rank's slice of a fixed global batch; saves loss, grads, queue"
    from torch.nn.parallel import DistributedDataParallel as DDP
    from bitgen.model import BitGenModel, tiny_config
    torch.manual_seed(0)
    model = BitGenModel(tiny_config(momentum_dtype='float32'))   # float32 keys: equal to float rounding
    ddp = DDP(model, find_unused_parameters=True)   # the decoder feeds no loss while recon_weight == 0
    ids, imgs, image_ids = global_batch(bs_local * world)
    s = slice(rank * bs_local, (rank + 1) * bs_local)
    out = ddp(input_ids=ids[s], images=imgs[s], image_ids=image_ids[s], return_loss=True)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.save({'loss': out.loss.detach(), 'losses': out.losses, 'grads': grads, 'queue': model.loss_fn.queue.state()},
               f"{out_dir}/rank{rank}.pt")


def global_batch(bs:int, seq:int=7, size:int=28):
    "A fixed random batch for the tiny config: (input_ids, images, image_ids)"
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 64, (bs, seq), generator=g), torch.rand(bs, 3, size, size, generator=g), torch.arange(bs)


def one_rank_step(bs:int):
    "The same step as `model_step_worker` in one process on the whole global batch"
    from bitgen.model import BitGenModel, tiny_config
    torch.manual_seed(0)
    model = BitGenModel(tiny_config(momentum_dtype='float32'))
    ids, imgs, image_ids = global_batch(bs)
    out = model(input_ids=ids, images=imgs, image_ids=image_ids, return_loss=True)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {'loss': out.loss.detach(), 'losses': out.losses, 'grads': grads, 'queue': model.loss_fn.queue.state()}


# --- the CLI under torchrun ---

def train_cli(out, *args, nproc:int=1, timeout:int=600) -> subprocess.CompletedProcess:
    "Run `bitgen-train` (as `python -m bitgen.learner`), under `torchrun --nproc_per_node nproc` when nproc > 1"
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore', 'MPLBACKEND': 'Agg'}
    launch = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc), '--master_addr', '127.0.0.1',
              '--master_port', str(free_port())] if nproc > 1 else [sys.executable]
    cmd = [*launch, '-m', 'bitgen.learner', '--out', str(out), *map(str, args)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode: raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}")
    return res


def run_record(out) -> dict:
    "What a `bitgen-train` run left in `out`: per-epoch metrics, per-step losses, and the latest weights"
    from safetensors.torch import load_file
    out = Path(out)
    return {'metrics': json.loads((out/'metrics.json').read_text()), 'losses': json.loads((out/'losses.json').read_text()),
            'weights': load_file(out/'models'/'latest'/'model.safetensors')}



# --- the learner on several ranks, through the Python API ---

def tiny_learner(out, bs, seed=0, n_train=32, **kw):
    "A tiny full-precision shapes learner (`n_train` training and 16 validation images, 28 px), `bs` images per rank"
    import random
    import numpy as np
    from bitgen.data import shapes_dls
    from bitgen.model import tiny_config
    from bitgen.learner import stage1_learner
    torch.manual_seed(seed); random.seed(seed); np.random.seed(seed)
    dls = shapes_dls(n_train=n_train, n_valid=16, img_size=28, bs=bs, seed=seed)
    cfg = None if kw.get('resume') else tiny_config(vocab_size=len(dls.tokenizer), pad_token_id=0, bos_token_id=0,
                                                   eos_token_id=0, queue_size=24, bitnet=False,
                                                   momentum_dtype='float32')
    return stage1_learner(dls, cfg, lr=2e-3, accum=1, warmup_steps=2, max_warmup_frac=0.5, path=out, patience=None,
                          **{'retrieval': False, 'check_sync': True, **kw})


def resume_worker(rank, world, out_dir, bs=4):
    """On every rank: a 2-epoch fit whose checkpoint after epoch 1 is kept aside, then a new learner resumed from that
    checkpoint and fitted to epoch 2; rank 0 saves both final weights. The kept checkpoint is the one a run stopped after
    epoch 1 leaves (checkpoints are written at the end of every epoch), so one fit serves as the uninterrupted run.

    The same fit is traced as a GPU run would be (`tests.tracing.DeviceTracer`): every rank saves the collectives it
    issued (with the shapes, dtypes and placement of what it handed them), the host reads, host tensors meeting device ones,
    and the figures it recorded, retrieval recall included (computed by the ranks together). Every validation caption is
    the same, so no validation row has an ITM negative (an identical caption is never a negative). `ACCELERATE_MIXED_PRECISION=fp16` is set as `accelerate launch --mixed_precision fp16` would: fastai's callback
    owns mixed precision, so Accelerate must not add its own (each rank saves what its `Accelerator` was told)."""
    import os, shutil
    from fastai.callback.core import Callback
    from fastai.distributed import DistributedTrainer
    from bitgen.learner import unwrap, CheckpointCallback
    from tests.tracing import DeviceTracer
    os.environ['ACCELERATE_MIXED_PRECISION'] = 'fp16'
    seen = {}
    class KeepFirst(Callback):
        order = CheckpointCallback.order + 1   # after the epoch's checkpoint is written
        def before_train(self):
            seen['accelerate'] = [(cb.accelerator.mixed_precision, cb.accelerator.native_amp) for cb in self.learn.cbs
                                  if isinstance(cb, DistributedTrainer)]
        def after_epoch(self):
            if self.epoch == 0 and rank == 0: shutil.copytree(f"{out_dir}/full/models/latest", f"{out_dir}/part/models/latest")
            if self.epoch == 0 and world > 1: torch.distributed.barrier()
    fit = lambda learn, **kw: learn.fit_stage1(2, **kw)
    full = tiny_learner(f"{out_dir}/full", bs, n_train=16, retrieval=True)
    for i in full.dls.valid.dataset.ids: full.dls.valid.dataset.captions[i] = ['a red circle']   # no ITM negative in validation
    with full.no_bar(), full.no_logging(), DeviceTracer(collectives=True) as tr: fit(full, cbs=[KeepFirst()])
    torch.save({**tr.report(), 'calls': tr.calls, 'accelerate': seen['accelerate'], 'names': list(full.recorder.metric_names),
                'values': full.recorder.values}, f"{out_dir}/trace{rank}.pt")
    resumed = tiny_learner(f"{out_dir}/part", bs, n_train=16, resume=f"{out_dir}/part/models/latest")
    for i in resumed.dls.valid.dataset.ids: resumed.dls.valid.dataset.captions[i] = ['a red circle']
    with resumed.no_bar(), resumed.no_logging(): fit(resumed)
    if rank == 0:
        torch.save({'full': unwrap(full.model).state_dict(), 'resumed': unwrap(resumed.model).state_dict()},
                   f"{out_dir}/resume.pt")
