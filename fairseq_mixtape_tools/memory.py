"""The live-tensor peak memory of a block of torch code, device- and allocator-independent (and
the FLOPs of its matrix products): for the benchmark and the tests.

    with LiveTensorPeak() as tracker:
        loss.backward()
    tracker.peak, tracker.flops   # bytes, FLOPs
"""

import math

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
