"""A CPU stand-in for a GPU run, for BitGen's tests: what a step reads back to the host, which tensors it makes on the
host and mixes with the model's, and what it hands to collectives.

Test-only: this module is not part of the `bitgen` package. On a GPU, reading a tensor's values on the host (`.item()`,
`bool(t)`, `.tolist()`, `.cpu()`, `nonzero`, boolean indexing, `torch.multinomial`'s and `torch.linalg.solve`'s checks)
waits for every queued kernel: a host-device synchronisation. A tensor made without a device is on the CPU, and meeting a
GPU tensor it is an error (or a blocking copy); NCCL refuses CPU tensors. None of that shows when everything runs on the
CPU. `DeviceTracer` makes it show: inside it, every tensor that existed before (the model's parameters and buffers, the
batch, caches) counts as being "on the device", and so does everything computed from one; a tensor made inside without
a `device` (a factory call, `.cpu()`) is "on the host". It records every host read of a device tensor, every op that mixes
a host tensor (of one or more dimensions: a 0-dim CPU tensor is allowed beside CUDA ones) with device ones, every copy of
a host tensor to a device, and, with `collectives=True`, every `torch.distributed` call with the shapes, dtypes and
placement of what it was handed.

Code that decides by `tensor.is_cpu` whether a host read is free (`bitgen.encoder._reads_on_host`) must be told that it is
not: `DeviceTracer` patches that one decision.
"""
import contextlib, weakref
from unittest import mock
import torch
import torch.distributed as dist
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

_FACTORIES = {torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.linspace,
              torch.logspace, torch.eye, torch.rand, torch.randn, torch.randint, torch.randperm, torch.scalar_tensor,
              torch.empty_strided, torch.from_numpy}
_READS = {Tensor.item, Tensor.tolist, Tensor.numpy, Tensor.__bool__, Tensor.__int__, Tensor.__float__, Tensor.__index__,
          Tensor.__repr__, Tensor.__format__, Tensor.cpu, torch.nonzero, Tensor.nonzero, torch.masked_select,
          Tensor.masked_select, torch.unique, Tensor.unique, torch.unique_consecutive, torch.multinomial, Tensor.multinomial,
          torch.linalg.solve, torch.linalg.inv, torch.linalg.cholesky, torch.linalg.pinv, torch.equal, Tensor.equal,
          torch.allclose, Tensor.allclose, torch.is_nonzero, Tensor.is_nonzero, torch.argwhere, Tensor.argwhere}
_COLLECTIVES = ('all_reduce', 'all_gather', 'all_gather_into_tensor', 'reduce_scatter', 'reduce_scatter_tensor', 'broadcast',
                'reduce', 'gather', 'scatter', 'all_to_all', 'all_to_all_single', 'barrier', 'send', 'recv')

def _name(func) -> str: return getattr(func, '__qualname__', getattr(func, '__name__', str(func)))

def _bool_index(args) -> bool:
    "Whether an indexing call (`x[idx]`, `x[idx] = v`) is given a bool tensor: it runs `nonzero`, a host read"
    idx = args[1] if len(args) > 1 else None
    idx = idx if isinstance(idx, tuple) else (idx,)
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in idx)

def _device_arg(args, kwargs) -> bool:
    "Whether a `.to(...)` call names a device (else it only changes the dtype, or copies another tensor's)"
    if kwargs.get('device') is not None: return True
    return any(isinstance(a, (torch.device, str, int)) and not isinstance(a, bool) for a in args[1:])

class DeviceTracer(TorchFunctionMode):
    "Inside: record host reads of device tensors (`reads`), host tensors mixed with device ones (`mixed`), uploads and collectives"
    def __init__(self, collectives:bool=False, # Also record every `torch.distributed` call
                 record:bool=True, # Record from the start (else only between `start` and `stop`; tensors are classified throughout)
                ):
        super().__init__()
        self.collectives, self.recording, self.host = collectives, record, set()   # host: ids of host-made tensors
        self.reads, self.mixed, self.uploads, self.calls, self.windows = [], [], [], [], {}

    def start(self, name:str):
        "Record from here to `stop`, as window `name`"
        self.recording, self._window = True, (name, len(self.reads), len(self.mixed), len(self.uploads), len(self.calls))

    def stop(self) -> dict:
        "End the window: its report (as `report`), also kept in `windows`"
        name, r, m, u, c = self._window
        self.recording = False
        self.windows[name] = rep = self.report(slice(r, None), slice(m, None), slice(u, None), slice(c, None))
        return rep

    def _is_host(self, t) -> bool: return id(t) in self.host
    def _mark_host(self, t):
        if id(t) in self.host: return
        self.host.add(id(t)); weakref.finalize(t, self.host.discard, id(t))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ts = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, Tensor)]
        dev = [t for t in ts if not self._is_host(t)]
        if not self.recording: pass
        elif dev and (func in _READS or (func in (Tensor.__getitem__, Tensor.__setitem__) and _bool_index(args))
                    or (func is torch.where and len(args) + len(kwargs) == 1)):
            self.reads.append(_name(func))
        if self.recording and dev and any(self._is_host(t) and t.ndim > 0 for t in ts) and func is not Tensor.to:
            self.mixed.append((_name(func), [tuple(t.shape) for t in ts if self._is_host(t)]))
        out = func(*args, **kwargs)
        if func in _FACTORIES: host = kwargs.get('device') is None
        elif func is Tensor.to:
            to_dev = _device_arg(args, kwargs)
            if to_dev and self._is_host(args[0]) and self.recording: self.uploads.append(bool(kwargs.get('non_blocking', False)))
            host = self._is_host(args[0]) and not to_dev
        elif func in (Tensor.cpu, Tensor.tolist, Tensor.numpy, Tensor.pin_memory): host = True
        else: host = not dev   # computed from host tensors only (or from none): on the host
        for o in tree_flatten(out)[0]:
            if not isinstance(o, Tensor): continue
            if host: self._mark_host(o)
            else: self.host.discard(id(o))   # e.g. `x.to(device)`, which returns `x` itself when it is already there
        return out

    def _record(self, name, fn):
        "A collective that records its name and the (shape, dtype, on-the-host) of every tensor handed to it"
        def call(*args, **kwargs):
            ts = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, Tensor)]
            if self.recording: self.calls.append((name, [(tuple(t.shape), str(t.dtype).split('.')[-1], self._is_host(t)) for t in ts]))
            return fn(*args, **kwargs)
        return call

    def __enter__(self):
        self._patches = contextlib.ExitStack()
        import bitgen.encoder
        if hasattr(bitgen.encoder, '_reads_on_host'):   # (a BitGen before asynchronous checks has no such decision)
            self._patches.enter_context(mock.patch.object(bitgen.encoder, '_reads_on_host', lambda t: False))   # "not a CPU"
        if self.collectives:
            for n in _COLLECTIVES:
                if hasattr(dist, n): self._patches.enter_context(mock.patch.object(dist, n, self._record(n, getattr(dist, n))))
        return super().__enter__()

    def __exit__(self, *exc):
        try: return super().__exit__(*exc)
        finally: self._patches.close()

    def report(self, r=slice(None), m=slice(None), u=slice(None), c=slice(None)) -> dict:
        "What was seen: host reads by op, host tensors mixed with device ones, uploads (and how many blocked), collectives"
        from collections import Counter
        reads, uploads, calls = self.reads[r], self.uploads[u], self.calls[c]
        return dict(reads=dict(Counter(reads)), n_reads=len(reads), mixed=self.mixed[m], uploads=len(uploads),
                    blocking_uploads=uploads.count(False), collectives=[n for n, _ in calls],
                    host_to_collective=[(n, s) for n, s in calls if any(h for *_, h in s)])
