"""Quality of the Stage-1 recipe on real photos: train several variants for the same budget, report retrieval and losses.

Every variant trains the card-width text model (`BitGenConfig` defaults: 3+2 BitNet blocks of width 128, GPT-2
vocabulary) with `stage1_learner` on a COCO-format training split for a fixed budget of optimizer steps (or minutes,
converted to steps from a short timing run), then is scored on an evaluation split: Recall@1/5/10 in both directions
over every image and caption, ITM accuracy (each positive pair against its hard negatives, 0.5 = chance), each loss
term, training pairs/s. Seeds are repeated and the table shows the mean and the spread (min-max) over seeds.

Variants (`--variants`, comma-separated):
  card          ternary text model, the card's queue (4096, momentum 0.995 with its warmup, momentum distillation 0.4),
                pretrained CNN tower
  fp            as card with `bitnet=False` (nn.Linear everywhere): the full-precision baseline
  batch_only    as card with `queue_size=0`: in-batch contrast (CLIP's loss), no momentum towers
  dinov2        as card with a DINOv2-small tower trained from scratch instead of the pretrained CNN

    python bench/quality.py --train-ann TRAIN.json --train-images DIR --valid-ann DEV.json --valid-images DIR \\
        --tokenizer GPT2_FOLDER --cnn-weights mobilenet_v2.pth --minutes 30 --img-size 224 --grid 4 --seeds 0 1 \\
        [--eval-ann EVAL.json --eval-images DIR] [--variants card,fp,batch_only,dinov2] [--cache-vision] [--json out.json]

`--config` gives `BitGenConfig` overrides (JSON) to every variant. With the frozen pretrained CNN the queue does best
with a sharp initial temperature and more momentum distillation than ALBEF's 0.4 (figures in `bitgen.model`):
`--cache-vision --steps 1500 --config '{"temperature": 0.07, "distill_alpha": 0.6}'`.
"""
import argparse, contextlib, json, math, os, random, statistics, tempfile, time, warnings
import numpy as np
import torch

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')   # spinning OpenMP threads cost a lot on a shared machine
warnings.filterwarnings('ignore', category=FutureWarning)

from transformers.utils import logging as hf_logging
from bitgen.data import coco_dls, CocoCaptions
from bitgen.model import BitGenConfig, BitGenModel, _bf16_autocast
from bitgen.learner import stage1_learner, unwrap
from bitgen.eval import retrieval_recall, chance_recall

VARIANTS = {
    'card': {},
    'fp': dict(bitnet=False),
    'batch_only': dict(queue_size=0),
    'dinov2': dict(vision_backbone='dinov2'),
}


def build(a, tok, variant, seed):
    "The model of a variant (card-width text side), with its vision tower's pretrained weights loaded"
    torch.manual_seed(seed); random.seed(seed); np.random.seed(seed)
    kw = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id or tok.eos_token_id,
              eos_token_id=tok.eos_token_id, max_position_embeddings=a.max_length, vision_backbone=a.cnn,
              freeze_vision=not a.train_backbone, image_size=a.img_size, vision_grid=a.grid)
    kw.update(json.loads(a.config))
    kw.update(VARIANTS[variant])
    if kw['vision_backbone'] == 'dinov2': kw['freeze_vision'] = False   # from scratch: it has to learn
    model = BitGenModel(BitGenConfig(**kw))
    if kw['vision_backbone'] != 'dinov2' and a.cnn_weights: model.load_vision_weights(a.cnn_weights)
    return model


def cache(a, variant) -> bool:
    "Whether `variant` runs with `--cache-vision` (a frozen pretrained CNN only)"
    return a.cache_vision and variant != 'dinov2' and not a.train_backbone


def run(a, variant, seed, steps, eval_ds):
    "Train one variant for `steps` optimizer steps (rounded to whole epochs) and score it"
    dls = coco_dls(a.train_ann, a.train_images, a.valid_ann, a.valid_images, tokenizer=a.tokenizer, bs=a.bs,
                   img_size=a.img_size, max_length=a.max_length, seed=seed, num_workers=a.num_workers,
                   augment=not cache(a, variant))
    model = build(a, dls.tokenizer, variant, seed)
    if cache(a, variant): model.vision.cache_features()
    epochs = max(1, round(steps * a.accum / len(dls.train)))
    with tempfile.TemporaryDirectory() as d:
        learn = stage1_learner(dls, model=model, lr=a.lr, accum=a.accum, warmup_steps=a.warmup, patience=None,
                               retrieval=False, path=d, mixed_precision=a.mixed_precision or 'auto')
        t0, c0 = time.time(), time.process_time()
        with learn.no_bar(), learn.no_logging(): learn.fit_stage1(epochs)
        train_s, train_cpu_s = time.time() - t0, time.process_time() - c0
    m = unwrap(learn.model).eval()
    names = learn.recorder.metric_names[1:-1]
    last = dict(zip(names, map(float, learn.recorder.values[-1])))
    t0 = time.time()
    rec = retrieval_recall(m, eval_ds, tokenizer=dls.tokenizer, bs=a.bs, max_length=a.max_length)
    res = dict(variant=variant, seed=seed, epochs=epochs, opt_steps=epochs * len(dls.train) // a.accum,
               train_min=train_s / 60, train_cpu_min=train_cpu_s / 60, pairs_per_s=epochs * len(dls.train) * a.bs / train_s,
               eval_s=time.time() - t0, **rec, mean_r5=(rec['i2t_r5'] + rec['t2i_r5']) / 2,
               **{k: last[k] for k in ('itc', 'itm', 'itm_acc', 'memory', 'mem_rec', 'kl', 'temp') if k in last})
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}), flush=True)
    return res


def steps_for(a, minutes, variant):
    """Optimizer steps of `variant` that fit in `minutes`, from a short timed run (data loading included).
    With `--cache-vision` the first epoch runs the backbone on every image and later epochs reuse its features, so
    both rates are timed: new batches, then the same batches again from the cache (plus their measured load time)."""
    cached = cache(a, variant)
    dls = coco_dls(a.train_ann, a.train_images, a.valid_ann, a.valid_images, tokenizer=a.tokenizer, bs=a.bs,
                   img_size=a.img_size, max_length=a.max_length, seed=0, num_workers=a.num_workers, augment=not cached)
    model = build(a, dls.tokenizer, variant, 0).train()
    if cached: model.vision.cache_features()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = _bf16_autocast(next(model.parameters()).device.type) if a.mixed_precision == 'bf16' else contextlib.nullcontext()
    def step(b):
        imgs, ids, mask, iid = b
        with amp: out = model(input_ids=ids, attention_mask=mask, images=imgs, image_ids=iid, return_loss=True)
        opt.zero_grad(); out.loss.backward(); opt.step(); model.post_step()
    n = min(6, len(dls.train)); w = 2 if n > 3 else 0           # timed batches, the first `w` of them warm-up
    it, batches, load, new = iter(dls.train), [], [], []
    for i in range(n):
        t0 = time.time(); b = next(it)[:4]; t1 = time.time(); step(b); t2 = time.time()
        batches.append(b); load.append(t1 - t0); new.append(t2 - t0)
    per_new = statistics.median(new[w:]) * a.accum * 1.1     # +10%: the per-epoch validation
    if not cached: return max(1, int(minutes * 60 / per_new))
    again = []
    for b in batches[w:]:
        t0 = time.time(); step(b); again.append(time.time() - t0)
    per_hit = (statistics.median(again) + statistics.median(load[w:])) * a.accum * 1.1
    first = len(dls.train) // a.accum                          # the first epoch's steps, all cache misses
    budget = minutes * 60
    if budget <= first * per_new: return max(1, int(budget / per_new))
    return first + int((budget - first * per_new) / per_hit)


def summary(results, chance) -> str:
    "Mean and min-max over seeds per variant"
    keys = ['i2t_r1', 'i2t_r5', 'i2t_r10', 't2i_r1', 't2i_r5', 't2i_r10', 'mean_r5', 'itm_acc', 'itc', 'itm', 'mem_rec',
            'kl', 'temp', 'pairs_per_s', 'train_min', 'train_cpu_min']
    lines = [f"{'variant':<11}" + ''.join(f"{k:>17}" for k in keys)]
    for v in dict.fromkeys(r['variant'] for r in results):
        rs = [r for r in results if r['variant'] == v]
        cells = []
        for k in keys:
            xs = [r[k] for r in rs if k in r]
            cells.append(f"{statistics.mean(xs):.3f} [{min(xs):.3f},{max(xs):.3f}]" if len(xs) > 1 else
                         (f"{xs[0]:.3f}" if xs else '-'))
        lines.append(f"{v:<11}" + ''.join(f"{c:>17}" for c in cells))
    lines.append(f"{'chance':<11}" + ''.join(f"{chance.get(k, float('nan')):>17.4f}" if k in chance else f"{'':>17}" for k in keys))
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for k in ('train-ann', 'train-images', 'valid-ann', 'valid-images'): p.add_argument(f'--{k}', required=True)
    p.add_argument('--eval-ann'); p.add_argument('--eval-images')
    p.add_argument('--tokenizer', default='gpt2')
    p.add_argument('--cnn', default='mobilenet_v2', help='torchvision CNN of the pretrained tower')
    p.add_argument('--cnn-weights', help='its torchvision weights file (or name)')
    p.add_argument('--train-backbone', action='store_true', help='train the CNN too (default: frozen)')
    p.add_argument('--cache-vision', action='store_true',
                   help='frozen CNN: compute its features once per image and reuse them (training images resized, not cropped)')
    p.add_argument('--variants', default='card,fp,batch_only,dinov2')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    p.add_argument('--minutes', type=float, help='training budget per variant and seed (converted to steps once)')
    p.add_argument('--steps', type=int, help='training budget in optimizer steps (instead of --minutes)')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--grid', type=int, default=None,
                   help="pool the backbone's patch tokens to GRID x GRID (vision_grid): 224 px features at 128 px's token cost")
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--accum', type=int, default=1)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--warmup', type=int, default=100)
    p.add_argument('--max-length', type=int, default=32)
    p.add_argument('--num-workers', type=int, default=0)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--mixed-precision', choices=['bf16'], default=None,
                   help='train under bf16 autocast (stage1_learner(mixed_precision="bf16"); on a CPU with native bf16)')
    p.add_argument('--config', default='{}', help='JSON of BitGenConfig overrides for every variant')
    p.add_argument('--json', help='write the per-run results and the budget here')
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    hf_logging.set_verbosity_error(); hf_logging.disable_progress_bar()
    bad = set(a.variants.split(',')) - set(VARIANTS)
    if bad: p.error(f"unknown variants {sorted(bad)}; choose from {list(VARIANTS)}")
    if (a.minutes is None) == (a.steps is None): p.error("give exactly one of --minutes and --steps")
    variants = a.variants.split(',')
    steps = {v: a.steps or steps_for(a, a.minutes, v) for v in variants}   # a time budget: each variant its own steps
    eval_ds = CocoCaptions(a.eval_ann or a.valid_ann, a.eval_images or a.valid_images, a.img_size, train=False)
    n_img = len(eval_ds.ids); chance = chance_recall(n_img, len(eval_ds.all_captions()) / n_img)
    chance['mean_r5'] = (chance['i2t_r5'] + chance['t2i_r5']) / 2
    chance['itm_acc'] = 0.5
    print(f"budget: optimizer steps per run {steps} (bs {a.bs} x accum {a.accum}); eval split: {n_img} images", flush=True)
    results = [run(a, v, s, steps[v], eval_ds) for v in variants for s in a.seeds]
    print(summary(results, chance))
    if a.json:
        with open(a.json, 'w') as f: json.dump(dict(args=vars(a), steps=steps, chance=chance, results=results), f, indent=1)


if __name__ == '__main__': main()
