"""How the benchmark measures: the entries (one layer or model each, ``Result``), and
``measure()``, which times them and reads their memory. The sections (sections.py) and the grid
(grid.py) say what to measure; the report (report.py) writes it down.

Every configuration is measured interleaved: after two measurement steps (below) and
``--warmup`` untimed steps per entry, each of ``--repeats`` rounds times one step of every entry
(MoS in the first ``--mos-repeats`` rounds only; the order rotated from round to round), so that
the load of a shared machine falls on all entries alike. Times are reported as median, min, max
and quartiles, ratios as the median (and range) of the per-round ratios.

The measurement steps, each on a step of its own (optimiser state is created before either):
    ``tensor_mb``  the peak of the bytes of tensor storages created in the step and alive at once
                   (``memory.LiveTensorPeak``, a ``TorchDispatchMode``: device- and
                   allocator-independent), and ``gflops``, the step's matrix-product FLOPs by
                   ``torch.utils.flop_counter``'s formulas;
    ``peak_mb``    the memory the process sees the step add (``memory.peak_memory_mb``): on CPU
                   the growth of its resident set (RSS), on CUDA of the memory allocated.

An entry's name is its layer's (``LAYERS``), or a variant: ``CHUNKED`` (MoS through the chunked
criterion), a layer with the suffix ``COMPILED``, ``STOCK`` or ``LINEAR``.
"""

import gc
import math
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import torch

from ..memory import LiveTensorPeak, peak_memory_mb

LAYERS = ["softmax", "mos", "mixtape", "sigsoftmax"]
CHUNKED = "mos_chunked"  # MoS through the chunked criterion (a variant of the mos model)
COMPILED = "+compiled"   # suffix of a whole-model entry built with --compile-output-layer
STOCK = "+cross_entropy"  # suffix of a memory entry trained with fairseq's stock criterion
LINEAR = "+linear_cross_entropy"  # ... with the plugin criterion's --linear-cross-entropy
COMPILE_WARMUP = 2       # untimed steps of a compiled entry before measure(): compile, then run
DEFAULT_CHUNKS = "default"  # a --memory-chunk-tokens setting: the criterion's flag unset


@dataclass
class Result:
    """One entry's measurements at one shape: its per-round times and its memory and FLOPs."""
    section: str            # output_layer / mt / lm / beam
    mode: str               # train / infer / decode
    layer: str
    vocab: int
    dim: int
    tokens: int             # positions (output_layer), target tokens (mt, lm), sentences (beam)
    unit: str               # what tokens counts: positions / words / sentences
    times: List[float] = field(default_factory=list)  # seconds, one per round
    peak_mb: float = math.nan
    tensor_mb: float = math.nan
    gflops: float = math.nan
    params_m: float = math.nan
    model_args: str = ""    # the --model-args of the mt / lm / beam models
    chunk_tokens: int = 0   # memory: --output-chunk-tokens of the plugin criterion (0: n/a)
    chunk_setting: str = ""  # memory: the --memory-chunk-tokens setting it ran (chunk_name)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else math.nan  # memory: untimed

    def quartiles(self):
        if not self.times:
            return math.nan, math.nan
        if len(self.times) < 2:
            return self.times[0], self.times[0]
        q = statistics.quantiles(self.times, n=4, method="inclusive")
        return q[0], q[2]

    @property
    def throughput(self) -> float:
        return self.tokens / self.median


def chunk_name(setting) -> str:
    """A setting in the memory table: ``unset`` for the criterion's default."""
    return "unset" if setting == DEFAULT_CHUNKS else str(setting)


def layer_config(name: str, args):
    """The configuration of the output layer ``name`` as the benchmark builds it."""
    from fairseq_mixtape.output_layers import OutputLayerConfig

    return OutputLayerConfig(output_layer=name, **components(name, args))


def components(name: str, args) -> dict:
    """The output_components override of layer ``name`` (MoS's --mos-components)."""
    return {"output_components": args.mos_components} if name == "mos" else {}


def params_m(module) -> float:
    """Millions of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters()) / 1e6


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(results: Dict[str, Result], steps: Dict[str, Callable[[], None]], args,
            device: torch.device, label: str):
    """Fill ``results[name]`` for every entry of ``steps``: a tracked step (FLOPs, live
    tensors), a memory step, ``args.warmup`` untimed steps, then ``args.repeats`` interleaved
    timed rounds."""
    names, started = list(steps), time.perf_counter()
    for name in names:
        with LiveTensorPeak() as tracker:
            steps[name]()
        synchronize(device)
        results[name].tensor_mb = tracker.peak / 2 ** 20
        results[name].gflops = tracker.flops / 1e9
        results[name].peak_mb = peak_memory_mb(steps[name], device)
        for _ in range(args.warmup):
            steps[name]()
    gc.collect()
    gc.freeze()  # later collections skip everything alive now: no long pauses in timed steps
    for round_ in range(args.repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            if name.startswith("mos") and round_ >= args.mos_repeats:
                continue
            synchronize(device)
            start = time.perf_counter()
            steps[name]()
            synchronize(device)
            results[name].times.append(time.perf_counter() - start)
    gc.unfreeze()
    log(f"  {label}: " + ", ".join(f"{n} {results[n].median * 1e3:.1f} ms" for n in names)
        + f"  ({time.perf_counter() - started:.0f} s)")


def log(message: str):
    print(message, flush=True)


def autocast(args, device):
    if args.dtype == "float32":
        return nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, args.dtype))


def compiled_graphs() -> Dict[str, int]:
    """torch.compile's counts of graphs made so far in this process (since the last reset)."""
    from torch._dynamo.utils import counters

    return {f"{group}.{key}": value for group in ("stats", "aot_autograd", "inductor")
            for key, value in counters[group].items()}
