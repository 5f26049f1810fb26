"""The memory of a block of torch code, for the benchmark and the tests: the live-tensor peak,
device- and allocator-independent (and the FLOPs of its matrix products), and the peak the
process itself sees (RSS growth on CPU, allocated memory on CUDA).

    with LiveTensorPeak() as tracker:
        loss.backward()
    tracker.peak, tracker.flops   # bytes, FLOPs

    peak_memory_mb(step, device)  # MiB added by one call of step()
"""

import ctypes
import gc
import math
import os
from typing import Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

try:  # matrix-product FLOP formulas of torch's FlopCounterMode, keyed by op
    from torch.utils.flop_counter import flop_registry as FLOP_FORMULAS
except ImportError:  # older torch
    FLOP_FORMULAS = {}


class LiveTensorPeak(TorchDispatchMode):
    """Peak bytes of the tensor storages created inside the block (forward and backward) that
    are alive at once. Storages that existed before (parameters, inputs, optimiser state) are
    not counted, nor are their in-place updates. Also counts the FLOPs of the matrix products
    (``flops``) with the formulas of ``torch.utils.flop_counter`` (FlopCounterMode itself
    decomposes some ops, which changes what is allocated, so it is not used here).

    ``bound`` counts every storage seen until a scan drops the dead ones; it is scanned only
    when it would pass the peak, so the peak is exact at a fraction of a scan per op."""

    DECOMPOSE = {torch.ops.aten.linear.default, torch.ops.aten.matmul.default}

    def __init__(self):
        super().__init__()
        self.live = {}  # storage id -> (weak reference, bytes)
        self.bound = self.peak = 0
        self.flops = 0 if FLOP_FORMULAS else math.nan

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.DECOMPOSE:  # reach here whole without autograd (inference mode)
            with self:
                out = func.decompose(*args, **kwargs)  # into mm / addmm / bmm, seen here
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        formula = FLOP_FORMULAS.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        inputs = {StorageWeakRef(t.untyped_storage()).cdata
                  for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                ref = StorageWeakRef(storage)
                # views and in-place results share an input's storage: not a new one
                if ref.cdata in inputs:
                    continue
                seen = self.live.get(ref.cdata)
                if seen is None or seen[0].expired():  # new, or a dead one's address reused
                    self.live[ref.cdata] = (ref, storage.nbytes())
                    self.bound += storage.nbytes()
        if self.bound > self.peak:
            self.live = {key: entry for key, entry in self.live.items() if not entry[0].expired()}
            self.bound = sum(nbytes for _, nbytes in self.live.values())
            self.peak = max(self.peak, self.bound)
        return out


_LIBC = None


def malloc_trim():
    """Return the freed heap memory of glibc's allocator to the system (elsewhere: nothing)."""
    global _LIBC
    try:
        _LIBC = _LIBC or ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def rss_peak_supported() -> bool:
    """Whether this system lets the process reset and read its peak RSS (Linux /proc)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _hwm_bytes()
        return True
    except OSError:
        return False


def peak_memory_mb(step: Callable[[], None], device: torch.device) -> float:
    """Run ``step`` once; the peak memory it adds, in MiB. CUDA: ``max_memory_allocated`` during
    the step minus the memory allocated before it. CPU: the growth of the process's resident set
    (RSS) during the step over its RSS just before it, read from VmHWM after resetting it through
    ``/proc/self/clear_refs`` and returning freed heap memory to the system (``malloc_trim``); it
    also counts the allocator's heap fragmentation. NaN where /proc cannot tell."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    if not rss_peak_supported():
        step()
        return math.nan
    malloc_trim()
    base = _rss_bytes()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size (VmHWM) to the current RSS
    step()
    return (_hwm_bytes() - base) / 2 ** 20
