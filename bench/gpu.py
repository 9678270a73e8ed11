"""The card's training run on one GPU: is the GPU kept busy, and by what is it held back?

Prints, for the model card's configuration (BitGenConfig() defaults: card text model, queue 4096, momentum towers, ITM
with queue negatives, memory; a *random* DINOv2-small trained at 224 px), with bf16 mixed precision:

1. **step**: training pairs/s of `stage1_learner` at batch 128 (micro-batch; accumulation 2 as the card), measured over
   steady-state batches of a fit on captioned shapes held in memory (so the loader is not what is measured), with the
   learner's every callback on (schedule, accumulation, clipping, non-finite checks, post_step, recorder);
2. **ceiling**: the same DINOv2-small's forward + backward + AdamW step on the same images, plus the momentum tower's
   forward (no gradient), alone: the vision work a step cannot avoid. Target: step >= 0.5x ceiling;
3. **loader**: pairs/s of `coco_dls` at its default workers (`default_workers`) on 640x480 JPEGs written to a temporary
   folder (decode, random crop, uint8 batches pinned and copied to the GPU). Target: loader >= step;
4. **peak memory** of the fit (`torch.cuda.max_memory_allocated`);
5. **syncs per step**: host-device synchronisations in steady-state micro-batches, counted by CUDA's own
   `torch.cuda.set_sync_debug_mode('warn')` (one warning per synchronising call), without and with an optimizer step.
   Target: <= 5.

Sized to stay well under the 8 minutes the issue allows on one GPU (a JPEG fixture and three short timed phases), but
not yet run on one: the `total` line says what it took. `--device cpu --tiny` runs the same code on a CPU in seconds,
to check the script itself (no sync count there: CUDA counts them).

    python bench/gpu.py                      # one GPU, the card's figures
    python bench/gpu.py --bs 64 --steps 30   # another batch, fewer steps
    python bench/gpu.py --device cpu --tiny  # the script's own check, on a CPU
"""
import argparse, contextlib, json, os, sys, tempfile, time, warnings
from pathlib import Path


def _sync(device):
    import torch
    if device.type == 'cuda': torch.cuda.synchronize(device)


def card_config(tiny:bool, vocab:int):
    from bitgen.model import BitGenConfig, tiny_config
    kw = dict(vocab_size=vocab, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    return tiny_config(queue_size=64, **kw) if tiny else BitGenConfig(**kw)


def step_rate(a, device) -> dict:
    "Pairs/s of the learner's steady-state batches, peak memory, and syncs per micro-batch (CUDA)"
    import torch
    from fastai.callback.core import Callback
    from bitgen.data import shapes_dls
    from bitgen.learner import stage1_learner
    n_batches = a.warmup + a.steps + 2
    dls = shapes_dls(n_train=a.bs * n_batches, n_valid=a.bs, img_size=a.img_size, bs=a.bs, device=device)
    cfg = card_config(a.tiny, 50257 if not a.tiny else len(dls.tokenizer))
    learn = stage1_learner(dls, cfg, mixed_precision='bf16', accum=2, retrieval=False, patience=None, warmup_steps=10)
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == 'CheckpointCallback'])   # no disk writes in the timing
    from bitgen.learner import unwrap
    times, syncs, state = [], {}, {}
    class Clock(Callback):
        "Time the steady-state batches; then count the syncs of two more batches (one with an optimizer step)"
        order = -1000
        def before_batch(self):
            if not self.training: return
            if self.iter in (a.warmup, a.warmup + a.steps): _sync(device); times.append(time.perf_counter())
            if device.type == 'cuda' and self.iter in (a.warmup + a.steps, a.warmup + a.steps + 1):   # after the timed window
                state['caught'] = warnings.catch_warnings(record=True); state['log'] = state['caught'].__enter__()
                state['steps'] = unwrap(self.learn.model).loss_fn.optimizer_steps
                warnings.simplefilter('always'); torch.cuda.set_sync_debug_mode('warn')
    class ClockEnd(Callback):
        order = 1000
        def after_batch(self):
            if state.get('log') is None: return
            torch.cuda.set_sync_debug_mode(0); state['caught'].__exit__(None, None, None)
            stepped = unwrap(self.learn.model).loss_fn.optimizer_steps > state['steps']
            syncs['micro-batch + optimizer step' if stepped else 'micro-batch'] = [
                str(w.message)[:100] for w in state['log'] if 'synchroniz' in str(w.message)]
            state['log'] = None
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)
    with learn.no_bar(), learn.no_logging(): learn.fit_stage1(1, cbs=[Clock(), ClockEnd()])
    res = dict(pairs_per_s=a.bs * a.steps / (times[1] - times[0]))
    if device.type == 'cuda':
        res['peak_mem_gib'] = torch.cuda.max_memory_allocated(device) / 2**30
        res['syncs'] = {k: len(v) for k, v in syncs.items()}
        res['sync_calls'] = syncs   # what CUDA said of each
    return res


def ceiling_rate(a, device) -> dict:
    "Pairs/s of the vision tower alone: forward + backward + AdamW, and the momentum tower's forward"
    import copy, torch
    from bitgen.model import BitGenModel
    from bitgen.learner import stage1_opt, stage1_splitter
    model = BitGenModel(card_config(a.tiny, 64)).to(device).train()
    tower, momentum = model.vision, copy.deepcopy(model.vision).requires_grad_(False)
    opt = stage1_opt(stage1_splitter(tower), lr=2e-4)
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (a.bs, 3, a.img_size, a.img_size), dtype=torch.uint8, generator=g).to(device)
    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = tower(imgs).float().square().mean()
            with torch.no_grad(): momentum(imgs)
        loss.backward(); opt.step(); opt.zero_grad()
    for _ in range(a.warmup): step()
    _sync(device); t0 = time.perf_counter()
    for _ in range(a.steps): step()
    _sync(device)
    return dict(pairs_per_s=a.bs * a.steps / (time.perf_counter() - t0))


def loader_rate(a, device, n_images:int) -> dict:
    "Pairs/s of `coco_dls` (default workers) decoding 640x480 JPEGs to uint8 batches on the device"
    import numpy as np, torch
    import torch.nn.functional as F
    from PIL import Image
    from bitgen.data import coco_dls, shapes_tokenizer, default_workers
    d = Path(tempfile.mkdtemp())/'coco'; (d/'img').mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n_images):   # smooth random images: JPEG sizes like photos' (noise would compress badly)
        x = F.interpolate(torch.rand(1, 3, 12, 16, generator=g), size=(480, 640), mode='bicubic').clamp(0, 1)[0]
        Image.fromarray((x * 255).byte().permute(1, 2, 0).numpy()).save(d/'img'/f'{i}.jpg', quality=90)
    ann = dict(images=[dict(id=i, file_name=f'{i}.jpg') for i in range(n_images)],
               annotations=[dict(image_id=i, caption=f'a red circle above a blue square {i % 7}') for i in range(n_images)])
    (d/'cap.json').write_text(json.dumps(ann))
    dls = coco_dls(d/'cap.json', d/'img', d/'cap.json', d/'img', tokenizer=shapes_tokenizer(), bs=a.bs, img_size=a.img_size,
                   device=device, seed=0)
    workers = dls.train.fake_l.num_workers
    it, n, t0 = iter(dls.train), 0, None
    for k, b in enumerate(it):
        if k == 1: _sync(device); t0 = time.perf_counter()   # after the first batch: the workers are up
        elif k > 1: n += b[0].shape[0]
    _sync(device)
    return dict(pairs_per_s=n / (time.perf_counter() - t0), workers=workers, default_workers=default_workers(dls.train_ds, device),
                image_bytes=int(np.mean([os.path.getsize(d/'img'/f'{i}.jpg') for i in range(min(n_images, 50))])))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda')
    p.add_argument('--bs', type=int, default=128)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--steps', type=int, default=40, help='timed steps of the step and ceiling phases')
    p.add_argument('--warmup', type=int, default=8)
    p.add_argument('--loader-batches', type=int, default=12, help='batches the loader phase decodes')
    p.add_argument('--tiny', action='store_true', help='the tiny config (a check of the script, e.g. on a CPU)')
    p.add_argument('--json', help='also write the figures to this file')
    a = p.parse_args()
    import torch
    warnings.filterwarnings('ignore', category=FutureWarning)
    device = torch.device(a.device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f"CPU ({torch.backends.cpu.get_cpu_capability()})"
    print(f"bitgen bench/gpu.py | {name} | torch {torch.__version__} | CPU capability {torch.backends.cpu.get_cpu_capability()} "
          f"| {len(os.sched_getaffinity(0))} CPUs | {'tiny' if a.tiny else 'card'} config, bs {a.bs}, {a.img_size} px, bf16", flush=True)
    t_all = time.perf_counter()
    res = {}
    res['step'] = step_rate(a, device); print('step   ', res['step'], flush=True)
    res['ceiling'] = ceiling_rate(a, device); print('ceiling', res['ceiling'], flush=True)
    res['loader'] = loader_rate(a, device, a.bs * max(3, a.loader_batches))   # the first batch is not timed (workers start)
    print('loader ', res['loader'], flush=True)
    s, c, l = res['step']['pairs_per_s'], res['ceiling']['pairs_per_s'], res['loader']['pairs_per_s']
    print(f"\n{'training step':28s} {s:9.1f} pairs/s")
    print(f"{'DINOv2-S + momentum ceiling':28s} {c:9.1f} pairs/s   step / ceiling = {s / c:.2f}  (target >= 0.5: "
          f"{'met' if s / c >= 0.5 else 'NOT met'})")
    print(f"{'loader (' + str(res['loader']['workers']) + ' workers)':28s} {l:9.1f} pairs/s   loader / step = {l / s:.2f}  "
          f"(target >= 1: {'met' if l >= s else 'NOT met'})")
    if 'syncs' in res['step']:
        worst = max(res['step']['syncs'].values())
        print(f"{'syncs per micro-batch':28s} {res['step']['syncs']}  (target <= 5: {'met' if worst <= 5 else 'NOT met'})")
        print(f"{'peak memory':28s} {res['step']['peak_mem_gib']:9.2f} GiB")
    print(f"total {time.perf_counter() - t_all:.0f} s")
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == '__main__': main()
