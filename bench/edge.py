"""Edge export at the model card's configuration: sizes, latency ratios to fp32 and peak memory (BitGenConfig() defaults,
random init).

Builds (all from one seed):
  (a) fp32: the model with nn.Linear in place of BitLinear (bitnet=False), the baseline of every ratio,
  (b) QAT eval: BitLinear with latent weights, in eval mode (its cached packed form under inference_mode),
  (c) packed: (b) exported (base3, int8 embedding) and loaded with `load_packed` (blocks fused: `fuse_blocks`),
  (c unfused): the same file loaded with `load_packed(fuse=False)`, to show what fusing the blocks gives,
  (d) fully ternary packed: bitnet_vision=True, exported and loaded the same way.
Runtimes: PyTorch eager, PyTorch `torch.compile` (unless --no-compile), ONNX Runtime (`export_onnx` of (a): "ORT fp32";
of (c) and (d): "ORT packed").

Latency, batch 1, for each thread count: text features at 16, 64 and 256 tokens and image features of one 224 px image.
Every figure is a ratio to (a) eager timed in the same rounds: each round runs every variant once (`--number` calls
each), in turn; the ratio of a round is variant / (a) of that round, and the table shows the median of the per-round
ratios with their min-max. Interleaving makes the ratios robust to load that comes and goes; the min-max says how
much it moved them. Before timing, the script checks the machine: a load average above the free cores, or a big matmul
that does not speed up with the threads, prints a WARNING (the figures then measure contention as much as code).

Memory: peak resident set size of loading a variant and running one image-caption inference (text features, image
features, one fused ITM pass), each in a fresh subprocess, measured from after the imports: the peak mark is reset
once torch / bitgen / onnxruntime are imported (`/proc/self/clear_refs`, Linux) and the RSS at that point subtracted
from the peak that follows; ratio to (a) loaded with `from_pretrained`.

Kernels: the packed builds run the ternary product `load_packed(kernel=--kernel)` picks (default auto: the fastest exact
product on this CPU, see `bitgen.bitlinear.pick_kernel`); the script prints the CPU's capability, its int8 flags and the
timing behind the choice. `--kernels int8 u8s8 float` adds eager rows of (c) and (d) forced to each kernel.

Targets (printed with met / NOT met): every packed row ((c), (c unfused), (d), any forced kernel) <= 1.0x fp32 in the
same runtime (eager vs eager, compiled vs compiled, ORT vs ORT), at every caption length and for the image: a row above is
printed as FAIL and the script exits with status 1 (after writing --json); where the CPU has fast int8 (the auto kernel
is int8): packed text <= 0.6x and fully ternary image <= 0.4x fp32 eager; QAT eval <= 1.2x packed; ONNX bundle of the
fully ternary build <= 16 MB with a text side <= 8 MB; peak RSS of packed load + inference <= 0.8x fp32.
Writes everything to `--json` (bench/*.json is git-ignored). About 10 minutes on 2 cores (--no-compile: 4).

    python bench/edge.py [--threads 1 2] [--reps 7] [--number 3] [--no-compile] [--no-onnx] [--tiny] [--kernel auto]
                         [--kernels int8 u8s8 float] [--json bench/edge.json]
"""
import argparse, json, os, platform, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROWS_TEXT = (16, 64, 256)


def _status(key: str) -> int:
    "A size (bytes) from /proc/self/status: VmRSS (resident now) or VmHWM (peak resident since the last reset)"
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(key + ':'): return int(line.split()[1]) * 1024
    raise RuntimeError(f'no {key} in /proc/self/status')


def _after_import() -> int:
    "Reset the peak-RSS mark (Linux: `5 > /proc/self/clear_refs`) so that the import's own peak is not counted; RSS now"
    Path('/proc/self/clear_refs').write_text('5')
    return _status('VmRSS')


def rss_child(variant: str, path: str, size: int):
    "Subprocess body: load `variant` from `path`, run one image-caption inference, print RSS after import and the peak"
    import numpy as np
    if variant.startswith('ort'):
        import onnxruntime as ort
        base = _after_import()
        so = ort.SessionOptions(); so.intra_op_num_threads = 1
        s = {k: ort.InferenceSession(str(Path(path)/f'{k}.onnx'), so, providers=['CPUExecutionProvider'])
             for k in ('image_encoder', 'text_encoder', 'itm')}
        ids, mask = np.full((1, 16), 7, np.int64), np.ones((1, 16), np.int64)
        emb, tokens = s['image_encoder'].run(None, {'pixel_values': np.random.rand(1, 3, size, size).astype(np.float32)})
        t, states = s['text_encoder'].run(None, {'input_ids': ids, 'attention_mask': mask})
        s['itm'].run(None, dict(text_states=states, attention_mask=mask, image_tokens=tokens))
    else:
        import torch
        from bitgen.model import BitGenModel
        from bitgen.export import load_packed
        from bitgen.fusion import fused_encode
        torch.set_num_threads(1)
        base = _after_import()
        m = BitGenModel.from_pretrained(path).eval() if variant == 'fp32' else load_packed(path, fuse=variant != 'packed unfused',
                                                                                             kernel=os.environ.get('BITGEN_BENCH_KERNEL', 'auto'))
        with torch.inference_mode():
            ids, img = torch.full((1, 16), 7), torch.rand(1, 3, size, size)
            m.get_text_features(ids); tok = m.vision(img); m._image_feats(m._image_stream(tok))
            ft, fi = fused_encode(m.encoder, m.fusion, ids, torch.ones_like(ids), tok)
            m.itm_head(torch.cat([ft[:, 0], fi[:, 0]], -1))
    print(json.dumps(dict(after_import=base, peak=_status('VmHWM'))))


def peak_rss(variant, path, size, kernel='auto') -> dict:
    r = subprocess.run([sys.executable, __file__, '--rss-child', variant, str(path), str(size)], capture_output=True,
                       text=True, timeout=600, env=os.environ | dict(OMP_NUM_THREADS='1', BITGEN_BENCH_KERNEL=kernel))
    if r.returncode: raise RuntimeError(f"memory run of {variant} failed:\n{r.stderr[-2000:]}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return d | dict(load_and_infer=d['peak'] - d['after_import'])


def fmt(d: dict) -> str: return f"{d['ratio']:.2f} [{d['lo']:.2f}-{d['hi']:.2f}]"


def rounds(fns: dict, base: str, reps: int, number: int, warmup: int = 1) -> dict:
    "Interleaved rounds: {name: ms (median), ratio (median of per-round ratios to `base`), lo, hi}; base spread as noise"
    times = {k: [] for k in fns}
    for r in range(warmup + reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(number): f()
            if r >= warmup: times[k].append((time.perf_counter() - t0) / number * 1e3)
    out = {}
    for k, v in times.items():
        ratios = [a / b for a, b in zip(v, times[base])]
        out[k] = dict(ms=statistics.median(v), ratio=statistics.median(ratios), lo=min(ratios), hi=max(ratios))
    b = times[base]
    out['_noise'] = (max(b) - min(b)) / statistics.median(b)   # spread of the baseline over the rounds
    return out


def machine_check(threads: int) -> list:
    "Warnings about a machine too loaded for the timings to mean much"
    import torch
    from bitgen.export import median_latency
    warns, cores = [], os.cpu_count() or 1
    load = os.getloadavg()[0]
    if load + threads > cores + 0.5:
        warns.append(f"load average {load:.2f} on {cores} cores: fewer than {threads} free core(s) for the timings")
    if threads > 1:
        x = torch.randn(1024, 1024)
        t1, tn = (median_latency({'mm': lambda: x @ x}, reps=5, number=3, threads=t)['mm'] for t in (1, threads))
        if t1 / tn < 1 + 0.3 * (threads - 1):
            warns.append(f"a 1024^2 matmul runs only {t1 / tn:.2f}x faster on {threads} threads than on 1: the "
                         f"{threads}-thread timings measure contention (OpenMP threads waiting for a core)")
    return warns


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    p.add_argument('--reps', type=int, default=7)
    p.add_argument('--number', type=int, default=3, help='calls per variant per round (image: 1)')
    p.add_argument('--json', default=str(Path(__file__).with_name('edge.json')))
    p.add_argument('--no-compile', dest='compile', action='store_false', help='skip torch.compile (needs a C++ compiler)')
    p.add_argument('--no-onnx', dest='onnx', action='store_false', help='skip ONNX Runtime')
    p.add_argument('--tiny', action='store_true', help='a tiny configuration: checks that the script runs (seconds)')
    p.add_argument('--kernel', default='auto', help='ternary product of the packed builds: auto, int8, u8s8 or float')
    p.add_argument('--kernels', nargs='*', default=[], help='also time (c) and (d) eager forced to each of these kernels')
    p.add_argument('--rss-child', nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.rss_child: return rss_child(a.rss_child[0], a.rss_child[1], int(a.rss_child[2]))

    import torch
    import torch.nn.functional as F
    from transformers.utils import logging
    from bitgen.model import BitGenConfig, BitGenModel, tiny_config
    from bitgen.export import export_packed, load_packed, export_onnx, size_report, size_table
    from bitgen.bitlinear import PackedBitLinear, pick_kernel, cpu_facts, KERNELS
    for k in [a.kernel, *a.kernels]:
        if k not in KERNELS: p.error(f"kernel must be one of {list(KERNELS)}, got {k!r}")
    logging.disable_progress_bar()
    cfg = (lambda **kw: tiny_config(image_size=56, max_position_embeddings=256, **kw)) if a.tiny else BitGenConfig
    size = 56 if a.tiny else 224
    tmp = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    # momentum=0: no EMA towers (training-only state that the export drops; (a) would carry them into its file and RAM)
    fp32, qat, full = (BitGenModel(cfg(momentum=0.0, **kw)).eval() for kw in (dict(bitnet=False), {}, dict(bitnet_vision=True)))
    sizes = {}
    for name, m in (('a', fp32), ('b', qat)):
        m.save_pretrained(tmp/name); sizes[name] = size_report(tmp/name/'model.safetensors', m)
    sizes['c'] = export_packed(qat, tmp/'c.safetensors', embeddings='int8')
    sizes['d'] = export_packed(full, tmp/'d.safetensors', embeddings='int8')
    torch.set_num_threads(a.threads[0])   # the kernel is timed (and chosen) at the first thread count
    models = {'a': fp32, 'b': qat, 'c': load_packed(tmp/'c.safetensors', kernel=a.kernel),
              'c unfused': load_packed(tmp/'c.safetensors', fuse=False, kernel=a.kernel), 'd': load_packed(tmp/'d.safetensors', kernel=a.kernel)}
    for k in a.kernels:
        models[f'c {k}'], models[f'd {k}'] = (load_packed(tmp/f'{v}.safetensors', kernel=k) for v in 'cd')
    kernels = {k: sorted({l.kernel for l in m.modules() if isinstance(l, PackedBitLinear)}) for k, m in models.items() if k[0] in 'cd'}
    facts = cpu_facts()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{'tiny config' if a.tiny else 'BitGenConfig() defaults (text 128 wide, vocab 50257; DINOv2-small)'}, "
          f"random init, image {size} px")
    print(f"CPU capability {facts['capability']}, int8 flags {facts['int8_flags'] or 'none'}, quantized engine "
          f"{facts['quantized_engine']}; kernels of the packed builds: " + ', '.join(f"({k}) {'/'.join(v)}" for k, v in kernels.items()))
    choice = {}
    for k in 'cd':
        layers = [l for l in models[k].modules() if isinstance(l, PackedBitLinear)]
        kern, info = pick_kernel([(l.in_features, l.out_features) for l in layers], details=True)
        choice[k] = info
        print(f"  ({k}) auto -> {kern}: timed {', '.join(f'{n} {info[n] / 1e3:.2f} ms' for n in ('int8', 'u8s8', 'float') if n in info)} "
              f"(the model's {len(layers)} layer products at {info.get('tokens')} tokens, {info.get('threads')} thread(s))")
    print()
    print(size_table({'(a) fp32': sizes['a'], '(b) QAT fp32': sizes['b'], '(c) packed': sizes['c'],
                      '(d) all ternary': sizes['d']}), '\n')

    onnx_sizes, sessions = {}, {}
    if a.onnx:
        import onnxruntime as ort
        for k in 'acd':
            t0 = time.time()
            onnx_sizes[k] = export_onnx(models[k], tmp/f'onnx_{k}', image_size=size)
            print(f"ONNX export of ({k}): {sum(onnx_sizes[k].values()) / 1e6:.3f} MB "
                  f"({', '.join(f'{n} {b / 1e6:.3f}' for n, b in onnx_sizes[k].items())}) in {time.time() - t0:.0f} s")
        print()

    ids = {n: torch.randint(0, 50257 if not a.tiny else 64, (1, n)) for n in ROWS_TEXT}
    img = torch.rand(1, 3, size, size)
    with torch.inference_mode():   # the builds compute what they should: packed = QAT, ORT = PyTorch
        cos = dict(text_c_vs_b=F.cosine_similarity(models['c'].get_text_features(ids[16]), qat.get_text_features(ids[16])).item())
    compiled = {}
    if a.compile:
        try:
            t0 = time.time()
            for k in 'acd':
                compiled[k, 'text'] = torch.compile(models[k].get_text_features, dynamic=False)
                compiled[k, 'image'] = torch.compile(models[k].get_image_features, dynamic=False)
            with torch.inference_mode():
                for (k, part), f in compiled.items():
                    for n in ROWS_TEXT if part == 'text' else (None,): f(ids[n]) if part == 'text' else f(img)
            print(f"torch.compile of (a), (c), (d): {time.time() - t0:.0f} s\n")
        except Exception as e:
            print(f"torch.compile unavailable here: {type(e).__name__}: {str(e)[:200]}\n"); compiled = {}

    res, warns_all = {}, {}
    for t in a.threads:
        warns = machine_check(t); warns_all[t] = warns
        for w in warns: print(f"WARNING ({t} thread(s)): {w}")
        torch.set_num_threads(t)
        if a.onnx:
            so = ort.SessionOptions(); so.intra_op_num_threads, so.inter_op_num_threads = t, 1
            sessions = {(k, g): ort.InferenceSession(str(tmp/f'onnx_{k}'/f'{g}.onnx'), so, providers=['CPUExecutionProvider'])
                        for k in 'acd' for g in ('text_encoder', 'image_encoder')}
        res[t] = {}
        with torch.inference_mode():
            for row in [f'text {n}' for n in ROWS_TEXT] + [f'image {size}']:
                if row.startswith('text'):
                    x = ids[int(row.split()[1])]
                    fns = {f'{k} eager': (lambda m=m, x=x: m.get_text_features(x)) for k, m in models.items()}
                    fns |= {f'{k} compiled': (lambda f=f, x=x: f(x)) for (k, part), f in compiled.items() if part == 'text'}
                    feed = dict(input_ids=x.numpy(), attention_mask=torch.ones_like(x).numpy())
                    fns |= {f'{k} ORT': (lambda s=s, feed=feed: s.run(['text_embeds'], feed)) for (k, g), s in sessions.items()
                            if g == 'text_encoder'}
                    number = a.number
                else:
                    fns = {f'{k} eager': (lambda m=m: m.get_image_features(img)) for k, m in models.items()}
                    fns |= {f'{k} compiled': (lambda f=f: f(img)) for (k, part), f in compiled.items() if part == 'image'}
                    feed = dict(pixel_values=img.numpy())
                    fns |= {f'{k} ORT': (lambda s=s: s.run(['image_embeds'], feed)) for (k, g), s in sessions.items()
                            if g == 'image_encoder'}
                    number = 1
                res[t][row] = rounds(fns, 'a eager', a.reps, number)
        print(f"latency, batch 1, {t} thread(s): ratio to (a) fp32 eager, median of {a.reps} interleaved rounds [min-max]; "
              f"ms of (a)")
        cols = list(res[t][f'text {ROWS_TEXT[0]}'])[:-1]
        print(f"  {'':10s}" + ''.join(f"{c:>20s}" for c in cols) + f"{'(a) ms':>10s}{'noise':>8s}")
        for row, r in res[t].items():
            cells = ''.join(f"{fmt(r[c]) if c in r else '-':>20s}" for c in cols)
            flag = '  <- noisy' if r['_noise'] > 0.3 else ''
            print(f"  {row:10s}" + cells + f"{r['a eager']['ms']:10.2f}{r['_noise']:8.2f}{flag}")
        print()

    fails = []
    for t, rows in res.items():   # every packed row against fp32 in the same runtime
        for row, r in rows.items():
            for col in r:
                if col.startswith('_') or col[0] not in 'cd': continue
                base = 'a ' + col.split()[-1]
                if base in r and r[col]['ratio'] / r[base]['ratio'] > 1.0:   # medians of per-round ratios, as the targets
                    fails.append(f"{t} thread(s), {row}: ({col}) is {r[col]['ratio'] / r[base]['ratio']:.2f}x ({base})")
    for f in fails: print(f"FAIL: packed slower than fp32 in the same runtime: {f}")
    if not fails: print("every packed row at most 1.0x fp32 in its runtime")
    print()

    mem = {}
    print("peak RSS of load + one image-caption inference, from after the imports (fresh process each, 1 thread)")
    for k, path in (('fp32', tmp/'a'), ('c packed', tmp/'c.safetensors'), ('c unfused', tmp/'c.safetensors'), ('d packed', tmp/'d.safetensors'),
                    *((('ort c', tmp/'onnx_c'), ('ort d', tmp/'onnx_d'), ('ort a', tmp/'onnx_a')) if a.onnx else ())):
        mem[k] = peak_rss({'fp32': 'fp32', 'c unfused': 'packed unfused'}.get(k, 'ort' if k.startswith('ort') else 'packed'), path, size, a.kernel)
        print(f"  {k:10s} {mem[k]['load_and_infer'] / 1e6:8.1f} MB  ({mem[k]['load_and_infer'] / mem['fp32']['load_and_infer']:.2f}x fp32)"
              f"   [RSS after import {mem[k]['after_import'] / 1e6:.0f} MB]")
    print()

    def verdict(name, value, target, unit='x'):
        ok = value <= target
        print(f"target: {name}: {value:.2f}{unit} (target <= {target}{unit}) -> {'met' if ok else 'NOT met'}"
              + ('' if ok else f" (by {(value / target - 1) * 100:.0f}%)"))
    t1 = res.get(1) or res[a.threads[0]]
    tl = f" ({1 if 1 in res else a.threads[0]} thread)"
    fast_int8 = choice['c']['kernel'] == 'int8'
    for n in ROWS_TEXT: verdict(f"packed text path, eager, {n} tokens{tl}", t1[f'text {n}']['c eager']['ratio'], 0.6 if fast_int8 else 1.0)
    verdict(f"fully ternary image path, eager{tl}", t1[f'image {size}']['d eager']['ratio'], 0.4 if fast_int8 else 1.0)
    if a.onnx:
        for row in [f'text {n}' for n in ROWS_TEXT] + [f'image {size}']:
            r = t1[row]
            for k in 'cd': verdict(f"ORT ({k}) / ORT fp32, {row}{tl}", r[f'{k} ORT']['ratio'] / r['a ORT']['ratio'], 1.0)
    for n in ROWS_TEXT:
        verdict(f"QAT eval / packed, text {n} tokens{tl}", t1[f'text {n}']['b eager']['ratio'] / t1[f'text {n}']['c eager']['ratio'], 1.2)
    verdict(f"QAT eval / packed, image{tl}", t1[f'image {size}']['b eager']['ratio'] / t1[f'image {size}']['c eager']['ratio'], 1.2)
    if a.onnx:
        d = onnx_sizes['d']
        verdict("ONNX bundle of the fully ternary build", sum(d.values()) / 1e6, 16, ' MB')
        verdict("ONNX text side (text encoder + ITM scorer)", (d['text_encoder.onnx'] + d['itm.onnx']) / 1e6, 8, ' MB')
    verdict("peak RSS, packed (c) load + inference / fp32", mem['c packed']['load_and_infer'] / mem['fp32']['load_and_infer'], 0.8)
    verdict("peak RSS, fully ternary (d) load + inference / fp32", mem['d packed']['load_and_infer'] / mem['fp32']['load_and_infer'], 0.8)
    for n in (16, 64):
        r = t1[f'text {n}']
        print(f"fusing the blocks: packed (c) / (c unfused), text {n} tokens{tl}: {r['c eager']['ratio'] / r['c unfused eager']['ratio']:.2f}x")
    print(f"packed vs QAT text features: cosine {cos['text_c_vs_b']:.6f}")
    Path(a.json).write_text(json.dumps(dict(sizes=sizes, onnx_sizes=onnx_sizes, latency={str(t): v for t, v in res.items()},
                                            memory=mem, warnings={str(t): w for t, w in warns_all.items()}, cosine=cos,
                                            cpu=facts, kernels=kernels, kernel_choice=choice, fails=fails,
                                            reps=a.reps, number=a.number, torch=torch.__version__, tiny=a.tiny), indent=1))
    print(f"wrote {a.json}")
    if fails: sys.exit(1)


if __name__ == '__main__': main()
