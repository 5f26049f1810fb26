"""Speed and memory of the output layers, alone and inside fairseq models.

    python scripts/benchmark.py            # the default CPU run (4 minutes on 2 loaded cores)
    python scripts/benchmark.py --quick    # a smoke run with tiny sizes (well under a minute)
    python scripts/benchmark.py --grid     # the layer alone over (E, V), eager and compiled: grid.py
    python scripts/benchmark.py --device cuda --dtype bfloat16 --dims 512 1024 --positions 2048
    python scripts/benchmark.py --sections lm --mos-components 4 \
        --model-args '--decoder-input-dim 16 --decoder-output-dim 16' \
        --model-args '--decoder-input-dim 128 --decoder-output-dim 128'   # two model shapes
    python scripts/benchmark.py --sections mt --compile both   # eager and compiled models
    python scripts/benchmark.py --sections memory --mos-components 4   # memory at V=128K, 256K

Four sections by default, and ``memory`` on request, each for softmax, MoS (K=15, or
--mos-components), Mixtape (K=4, S=0.1V, d1=min(64, E)) and sigsoftmax:

``output_layer``
    the layer alone on random features (N positions, dimension d) at every vocabulary V:
    ``train`` = forward, log_softmax (float32), NLL on random targets, backward (features and
    parameters); ``infer`` = forward and log_softmax without autograd.
``mt``
    a whole training step of a ``transformer_wmt_en_de``-shaped model (each ``--model-args``
    configuration in turn) (``--arch
    transformer_wmt_en_de_mixtape --output-layer X --share-all-embeddings``, V shared): forward,
    the plugin's ``output_layer_cross_entropy`` loss, backward, (fused) Adam step; words per
    second = target tokens / step time, as fairseq reports ``wps``. ``mos_chunked`` is MoS
    trained through the same criterion with chunks of ``--mos-chunk-tokens`` target positions.
``lm``
    the same for a ``transformer_lm``-shaped model (``--share-decoder-input-output-embed``).
``beam``
    beam search (fairseq's ``SequenceGenerator``, beam 4) with the ``mt`` models on random
    sources, with min_len = max_len so that every layer decodes the same number of steps;
    sentences per second.
``memory`` (not in the default)
    the peak training memory (live tensors of forward, loss and backward) at the large
    vocabularies ``--memory-vocabs`` (128K, 256K), on a 1-layer ``transformer_lm`` of width
    ``--memory-dim`` (1024; 8 x 512 target tokens): every layer through
    ``output_layer_cross_entropy`` at each ``--memory-chunk-tokens`` (the criterion's default,
    4096, 512), and the softmax model through fairseq's ``cross_entropy``
    (``softmax+cross_entropy``) and the plugin's ``--linear-cross-entropy``. By default
    under ``FakeTensorMode`` (``FakeModelMode``): the step's tensors with their sizes and
    lifetimes but no arithmetic and no memory, so any size runs in seconds (equal, byte for
    byte, to the computed step's peak: tests/test_benchmark.py); ``--memory-compute real``
    computes it.

``--compile both`` (or ``compiled``) adds to ``mt`` and ``lm`` each layer's model built with
``--compile-output-layer`` (``<layer>+compiled``), in the same interleaved rounds, after
``COMPILE_WARMUP`` untimed steps that compile its graphs; a check after the rounds reports any
graph compiled during them, or a compiled function that fell back to eager.

Every configuration is measured interleaved: after two measurement steps (below) and
``--warmup`` untimed steps per layer, each of ``--repeats`` rounds times one step of every layer
(MoS in the first ``--mos-repeats`` rounds only; the order rotated from round to round), so that
the load of a shared machine falls on all layers alike. Times are reported as median, min, max
and quartiles, ratios as the median (and range) of the per-round ratios.

The measurement steps, each on a step of its own (optimiser state is created before either):
    ``tensor_mb``  the peak of the bytes of tensor storages created in the step and alive at once
                   (a ``TorchDispatchMode``: device- and allocator-independent), and ``gflops``,
                   the step's matrix-product FLOPs by ``torch.utils.flop_counter``'s formulas;
    ``peak_mb``    CPU: the growth of the process's resident set (RSS) during the step over its
                   RSS just before it, read from VmHWM after resetting it through
                   ``/proc/self/clear_refs`` and returning freed heap memory to the system
                   (``malloc_trim``); it also counts the allocator's heap fragmentation.
                   CUDA: ``torch.cuda.max_memory_allocated`` during the step minus the memory
                   allocated before it.

Results: ``<out-dir>/<name>.csv``, ``<name>.png`` (time and memory vs vocabulary, one line
per layer; vs d instead when there is one vocabulary and several d) and ``<name>.md`` (the
tables, every layer's ratios to softmax at every shape, and the ratios the project's speed and
memory targets are about, beside the FLOP model Mixtape ~ (1 + (K-1) S/V) x softmax), also
printed.
"""

import argparse
import csv
import ctypes
import gc
import math
import os
import platform
import shlex
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .arguments import ArgumentParser, check_counts, check_positive
from .memory import LiveTensorPeak

LAYERS = ["softmax", "mos", "mixtape", "sigsoftmax"]
SECTIONS = ["output_layer", "mt", "lm", "beam"]
CHUNKED = "mos_chunked"  # MoS through the chunked criterion (a variant of the mos model)
COMPILED = "+compiled"   # suffix of a whole-model entry built with --compile-output-layer
STOCK = "+cross_entropy"  # suffix of a memory entry trained with fairseq's stock criterion
LINEAR = "+linear_cross_entropy"  # ... with the plugin criterion's --linear-cross-entropy
COMPILE_WARMUP = 2       # untimed steps of a compiled entry before measure(): compile, then run
COLORS = {"softmax": "tab:blue", "mos": "tab:red", "mixtape": "tab:green",
          "sigsoftmax": "tab:orange", CHUNKED: "tab:purple"}

# transformer_lm's preset leaves decoder_input_dim / decoder_output_dim at 512 whatever the
# embedding size; the translation preset is transformer_wmt_en_de's own.
QUICK_MT_ARGS = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
                 "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
                 "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
                 "--decoder-attention-heads", "2"]
QUICK_LM_ARGS = ["--decoder-layers", "1", "--decoder-embed-dim", "32", "--decoder-input-dim", "32",
                 "--decoder-output-dim", "32", "--decoder-ffn-embed-dim", "64",
                 "--decoder-attention-heads", "2"]
QUICK = dict(vocabs=[500, 1000], dims=[32], positions=16, model_vocab=1000, mt_batch=2,
             mt_length=6, lm_batch=2, lm_length=8, beam_sentences=2, beam_length=4, repeats=2,
             mos_repeats=2, warmup=0)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = ArgumentParser(
        description="Benchmark softmax, MoS, Mixtape and sigsoftmax output layers: the layer "
                    "alone, whole fairseq training steps, beam search; time and peak memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="float16/bfloat16: run forward passes under torch.autocast")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 on CPU, torch's default on CUDA). On a "
                        "shared machine with fewer free cores than threads, every parallel op "
                        "waits for a descheduled thread: whole training steps ran 3-5x slower "
                        "with 2 threads than with 1 on the loaded 2-core machine of the README")
    p.add_argument("--layers", nargs="+", default=LAYERS, choices=LAYERS)
    p.add_argument("--sections", nargs="+", default=SECTIONS, choices=SECTIONS + ["memory"],
                   help="'memory' (not in the default): peak training memory at large "
                        "vocabularies, see --memory-vocabs")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per configuration")
    p.add_argument("--mos-repeats", type=int, default=3,
                   help="timed rounds of MoS (and mos_chunked), the first ones of the --repeats "
                        "rounds: MoS costs 4-15x the others, and its ratios are far from 1")
    p.add_argument("--warmup", type=int, default=0,
                   help="untimed steps per layer before the timed rounds (after the two "
                        "measurement steps, which also warm up)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mos-components", type=int, default=None,
                   help="MoS's K, in every section (Mixtape keeps its default K=4); default 15, "
                        "4 with --grid")
    g = p.add_argument_group("output layer alone")
    g.add_argument("--vocabs", type=int, nargs="+", default=[10000, 20000, 32000, 50000])
    g.add_argument("--dims", type=int, nargs="+", default=[512],
                   help="hidden sizes d (e.g. 512 1024)")
    g.add_argument("--positions", type=int, default=64, help="positions N per step")
    g = p.add_argument_group("whole models")
    g.add_argument("--model-vocab", type=int, default=32000, help="shared vocabulary of the models")
    g.add_argument("--mt-batch", type=int, default=4, help="translation: sentences per batch")
    g.add_argument("--mt-length", type=int, default=16,
                   help="translation: source and target tokens per sentence (eos included)")
    g.add_argument("--lm-batch", type=int, default=3, help="language model: sequences per batch")
    g.add_argument("--lm-length", type=int, default=24, help="language model: tokens per sequence")
    g.add_argument("--mos-chunk-tokens", type=int, default=None,
                   help="mos_chunked: --output-chunk-tokens of output_layer_cross_entropy "
                        "(default: one sequence per chunk)")
    g.add_argument("--no-mos-chunked", action="store_true",
                   help="leave out the MoS-through-the-chunked-criterion variant")
    g.add_argument("--compile", choices=["eager", "compiled", "both"], default="eager",
                   help="mt and lm training steps: the models as they are (eager), with "
                        "--compile-output-layer (entries named <layer>+compiled, after "
                        f"{COMPILE_WARMUP} untimed compiling steps), or both, interleaved")
    g.add_argument("--linear-cross-entropy", action="store_true",
                   help="output_layer train steps: also softmax's loss by the plugin "
                        "criterion's --linear-cross-entropy (torch's F.linear_cross_entropy), "
                        "entry softmax+linear_cross_entropy")
    g.add_argument("--beam-sentences", type=int, default=4, help="beam search: sentences per batch")
    g.add_argument("--beam-size", type=int, default=4)
    g.add_argument("--beam-length", type=int, default=10,
                   help="beam search: source length and output length (min_len = max_len)")
    g.add_argument("--model-args", action="append", default=None,
                   help="extra fairseq flags for both models, e.g. '--decoder-layers 3'; "
                        "repeat it to measure each configuration in turn (default: none)")
    g = p.add_argument_group("memory at large vocabularies (--sections memory)")
    g.add_argument("--memory-vocabs", type=int, nargs="+", default=[128000, 256000])
    g.add_argument("--memory-batch", type=int, default=8, help="sequences per batch")
    g.add_argument("--memory-length", type=int, default=512, help="target tokens per sequence")
    g.add_argument("--memory-dim", type=int, default=1024,
                   help="E: the embedding and output width of the 1-layer transformer_lm")
    g.add_argument("--memory-chunk-tokens", type=chunk_setting, nargs="+",
                   default=[DEFAULT_CHUNKS, 4096, 512],
                   help="--output-chunk-tokens of output_layer_cross_entropy, each measured: "
                        f"a number of positions, or {DEFAULT_CHUNKS!r} (the flag unset: 4096, "
                        "or 2^27 / V above V = 32K); the first is the GFLOP column's")
    g.add_argument("--memory-compute", choices=["fake", "real"], default="fake",
                   help="fake: the model and step under FakeTensorMode (shapes and allocations, "
                        "no arithmetic and no memory: any size fits); real: computed")
    g = p.add_argument_group("output")
    g.add_argument("--out-dir", default="benchmarks")
    g.add_argument("--name", default=None,
                   help="file name stem (default: benchmark_<device>; grid_<device> with --grid)")
    g.add_argument("--no-plot", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny vocabularies, dimensions and models, 2 rounds")
    from . import grid

    grid.add_arguments(p)
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    grid.resolve_args(p, args)
    check_benchmark_args(p, args)
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    args.model_args = args.model_args or [""]
    args.name = args.name or (("grid" if args.grid else "benchmark") + f"_{args.device}"
                              + ("_quick" if args.quick else ""))
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def check_benchmark_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad values before any work (one-line argparse errors naming the flag, the value and
    what is allowed), not a traceback minutes later from a later section."""
    check_counts(parser, args, ["--repeats", "--mos-repeats", "--vocabs", "--dims", "--positions",
                                "--model-vocab", "--mt-batch", "--mt-length", "--lm-batch",
                                "--lm-length", "--beam-sentences", "--beam-size",
                                "--beam-length", "--memory-vocabs", "--memory-batch",
                                "--memory-length", "--memory-dim"])
    check_positive(parser, args, ["--threads", "--mos-chunk-tokens"])
    if args.warmup < 0:
        parser.error(f"--warmup: got {args.warmup}; allowed: a whole number >= 0")
    out_dir = Path(args.out_dir)
    if (out_dir.exists() and not out_dir.is_dir()) or any(
            parent.exists() and not parent.is_dir() for parent in out_dir.parents):
        parser.error(f"--out-dir: got {args.out_dir!r}, not a directory; allowed: a directory, "
                     "made where it does not exist")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device: got 'cuda', but torch sees no CUDA device here; allowed: cpu")
    kinds = [kind for kind, sections in (("mt", ("mt", "beam")), ("lm", ("lm",)))
             if not args.grid and any(section in args.sections for section in sections)]
    for model_args in args.model_args or [""]:
        try:
            shlex.split(model_args)
        except ValueError as error:
            parser.error(f"--model-args: got {model_args!r} ({error}); allowed: fairseq-train "
                         "flags, quoted as in a shell")
        for kind in kinds:
            refusal = fairseq_refusal(model_argv(kind, args, args.device, model_args))
            if refusal:
                parser.error(f"--model-args: got {model_args!r}, which fairseq-train refuses for "
                             f"the {kind} model ({refusal}); allowed: fairseq-train flags of "
                             f"{model_argv(kind, args, args.device, '')[4]}")


def fairseq_refusal(argv: Sequence[str]) -> str:
    """fairseq-train's error for ``argv`` (its last line), or "" where it parses."""
    import contextlib
    import io

    from .building import parse_train_args  # (imports fairseq)

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            parse_train_args(argv)
    except SystemExit as exited:
        lines = captured.getvalue().strip().splitlines() or [f"exit status {exited.code}"]
        return lines[-1].split(": error: ", 1)[-1]
    return ""


# ----------------------------------------------------------------------------- measuring
@dataclass
class Result:
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


_LIBC = None


def _malloc_trim():
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
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _hwm_bytes()
        return True
    except OSError:
        return False


def peak_memory_mb(step: Callable[[], None], device: torch.device) -> float:
    """Run ``step`` once; the peak memory it adds, in MiB (see the module docstring)."""
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
    _malloc_trim()
    base = _rss_bytes()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size (VmHWM) to the current RSS
    step()
    return (_hwm_bytes() - base) / 2 ** 20


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


# ----------------------------------------------------------------------------- sections
def output_layer_section(args, device) -> List[Result]:
    """The output layer alone, at every d and V: train and infer steps."""
    from fairseq_mixtape.losses import linear_cross_entropy_losses
    from fairseq_mixtape.output_layers import build_output_layer

    results = []
    for dim in args.dims:
        for vocab in args.vocabs:
            torch.manual_seed(args.seed)
            layers = {name: build_output_layer(layer_config(name, args), dim, vocab).to(device)
                      for name in args.layers}
            features = torch.randn(args.positions, dim, device=device, requires_grad=True)
            target = torch.randint(0, vocab, (args.positions,), device=device)

            def train(layer):
                with autocast(args, device):
                    scores = layer(features)
                loss = F.nll_loss(F.log_softmax(scores.float(), dim=-1), target, reduction="sum")
                loss.backward()
                layer.zero_grad(set_to_none=True)
                features.grad = None

            def infer(layer, features=features.detach()):
                with torch.inference_mode(), autocast(args, device):
                    F.log_softmax(layer(features).float(), dim=-1)

            def train_linear(layer):
                linear_cross_entropy_losses(layer, features[None], target[None], -100,
                                            reduce=True).nll.backward()
                layer.zero_grad(set_to_none=True)
                features.grad = None

            for mode, run in [("train", train), ("infer", infer)]:
                entries = {name: Result("output_layer", mode, name, vocab, dim, args.positions,
                                        "positions", params_m=params_m(layer))
                           for name, layer in layers.items()}
                steps = {name: (lambda layer=layer, run=run: run(layer))
                         for name, layer in layers.items()}
                if mode == "train" and args.linear_cross_entropy and "softmax" in layers:
                    entries["softmax" + LINEAR] = Result(
                        "output_layer", mode, "softmax" + LINEAR, vocab, dim, args.positions,
                        "positions", params_m=params_m(layers["softmax"]))
                    steps["softmax" + LINEAR] = lambda: train_linear(layers["softmax"])
                measure(entries, steps, args, device, f"output layer {mode} d={dim} V={vocab}")
                results.extend(entries.values())
            del layers
    return results


def layer_config(name: str, args):
    from fairseq_mixtape.output_layers import OutputLayerConfig

    return OutputLayerConfig(output_layer=name, **components(name, args))


def components(name: str, args) -> dict:
    """The output_components override of layer ``name`` (MoS's --mos-components)."""
    return {"output_components": args.mos_components} if name == "mos" else {}


def model_argv(kind: str, args, device_type: str, model_args: str = "") -> List[str]:
    """The fairseq-train arguments of model_builder's model (the architecture at index 4)."""
    if kind == "mt":
        argv = ["unused-data", "--task", "translation", "--arch", "transformer_wmt_en_de_mixtape",
                "--share-all-embeddings", *(QUICK_MT_ARGS if args.quick else [])]
    else:
        argv = ["unused-data", "--task", "language_modeling", "--arch", "transformer_lm_mixtape",
                "--share-decoder-input-output-embed",
                "--tokens-per-sample", str(max(args.lm_length, 512)),
                *(QUICK_LM_ARGS if args.quick else [])]
    return argv + [*shlex.split(model_args), *(["--cpu"] if device_type == "cpu" else [])]


def model_builder(kind: str, args, device, dictionary, model_args: str = ""):
    """A function layer -> (task, model) for a transformer_wmt_en_de-shaped translation model
    (kind 'mt') or a transformer_lm-shaped language model ('lm'), configured through fairseq's
    own argument parsing (once; each layer then changes only ``output_layer``)."""
    argv = model_argv(kind, args, device.type, model_args)
    from . import building  # (imports fairseq)

    task, build_model = building.model_builder(argv, dictionary)

    def build(layer: str, **overrides):
        torch.manual_seed(args.seed)
        model = build_model(output_layer=layer, **components(layer, args), **overrides)
        # built on the CPU; fake tensors (the memory section) cannot be moved, even there
        return task, (model if device.type == "cpu" else model.to(device))

    return build


def random_tokens(dictionary, shape, device, generator):
    tokens = torch.randint(dictionary.nspecial, len(dictionary), shape, generator=generator)
    return tokens.to(device)


def mt_sample(dictionary, batch: int, length: int, device, generator):
    eos = dictionary.eos()
    src = random_tokens(dictionary, (batch, length), device, generator)
    tgt = random_tokens(dictionary, (batch, length), device, generator)
    src[:, -1] = tgt[:, -1] = eos
    prev = torch.cat([torch.full_like(tgt[:, :1], eos), tgt[:, :-1]], dim=1)
    lengths = torch.full((batch,), length, dtype=torch.long, device=device)
    return {"id": torch.arange(batch), "nsentences": batch, "ntokens": batch * length,
            "net_input": {"src_tokens": src, "src_lengths": lengths, "prev_output_tokens": prev},
            "target": tgt}


def lm_sample(dictionary, batch: int, length: int, device, generator):
    tokens = random_tokens(dictionary, (batch, length + 1), device, generator)
    lengths = torch.full((batch,), length, dtype=torch.long, device=device)
    return {"id": torch.arange(batch), "nsentences": batch, "ntokens": batch * length,
            "net_input": {"src_tokens": tokens[:, :-1], "src_lengths": lengths},
            "target": tokens[:, 1:].contiguous()}  # contiguous, as fairseq's batches (and
    # fairseq's cross_entropy, which views it flat) have it


def params_m(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


class Trainer:
    """A model, the plugin's chunked criterion and Adam: one training step as fairseq's."""

    def __init__(self, task, model, chunk_tokens: int, args, device, optimizer=None):
        from fairseq_mixtape.criterions import OutputLayerCrossEntropyCriterion

        self.model, self.args, self.device = model, args, device
        self.criterion = OutputLayerCrossEntropyCriterion(
            task, sentence_avg=False, output_chunk_tokens=chunk_tokens)
        self.optimizer = optimizer
        if optimizer is not None:
            return
        adam = dict(lr=1e-5, betas=(0.9, 0.98), eps=1e-8)
        try:  # one fused kernel, as fairseq's FusedAdam on GPU (torch >= 2.4 has it on CPU too)
            self.optimizer = torch.optim.Adam(model.parameters(), fused=True, **adam)
        except (RuntimeError, TypeError):
            self.optimizer = torch.optim.Adam(model.parameters(), **adam)
        # Create Adam's state now (a step on zero gradients changes no weight), so that no
        # measured step is the one that allocates it.
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def with_chunks(self, task, chunk_tokens: int) -> "Trainer":
        """The same model and optimiser, through the criterion with other chunks."""
        return Trainer(task, self.model, chunk_tokens, self.args, self.device, self.optimizer)

    def step(self, sample):
        self.model.train()
        with autocast(self.args, self.device):
            loss, sample_size, logging_output = self.criterion(self.model, sample)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def training_section(kind: str, args, device, dictionary, model_args: str = ""):
    """Whole training steps of every layer's model ('mt' or 'lm'): (results by name, the
    eager models by layer, the task), the models for beam search.

    With ``--compile compiled|both``, a model per layer built with --compile-output-layer
    (``<layer>+compiled``) is measured in the same rounds, after ``COMPILE_WARMUP`` untimed steps
    that compile its graphs (forward and backward); the timed rounds must not compile again
    (checked). Its ``tensor_mb`` and ``gflops`` are left out (NaN): a dispatch mode sees only
    the part of a compiled graph's work that goes through PyTorch operators."""
    if kind == "mt":
        length, batch = args.mt_length, args.mt_batch
    else:
        length, batch = args.lm_length, args.lm_batch
    generator = torch.Generator().manual_seed(args.seed)
    make = mt_sample if kind == "mt" else lm_sample
    sample = make(dictionary, batch, length, device, generator)
    trainers, models, task = {}, {}, None
    build = model_builder(kind, args, device, dictionary, model_args)
    variants = compile_variants(args)
    if COMPILED in variants:
        torch._dynamo.reset()  # a new model shape: no graphs (and guards) of the previous one
    for variant in variants:
        overrides = {"compile_output_layer": True} if variant == COMPILED else {}
        for layer in args.layers:
            task, models[layer + variant] = build(layer, **overrides)
            trainers[layer + variant] = Trainer(task, models[layer + variant], 4096, args, device)
        if "mos" in args.layers and not args.no_mos_chunked:
            chunk = args.mos_chunk_tokens or length
            trainers[CHUNKED + variant] = trainers["mos" + variant].with_chunks(task, chunk)
    entries = {name: Result(kind, "train", name, args.model_vocab, embed_dim(models, name),
                            sample["ntokens"], "words", params_m=params_m(trainer.model),
                            model_args=model_args)
               for name, trainer in trainers.items()}
    steps = {name: (lambda trainer=trainer: trainer.step(sample))
             for name, trainer in trainers.items()}
    label = f"{kind} training step" + (f" ({model_args})" if model_args else "")
    compiled = [name for name in steps if name.endswith(COMPILED)]
    # inductor's compile workers: no more than --threads processes (1: compiles in-process)
    workers = nullcontext()
    if compiled and args.threads:
        import torch._inductor.config as inductor_config

        workers = inductor_config.patch(compile_threads=args.threads)
    with workers:
        for name in compiled:
            started = time.perf_counter()
            for _ in range(COMPILE_WARMUP):
                steps[name]()
            log(f"  {label}: {name}: {COMPILE_WARMUP} compiling steps "
                f"({time.perf_counter() - started:.0f} s)")
        graphs = compiled_graphs()
        measure(entries, steps, args, device, label)
    if compiled:
        check_compiled(models, compiled, graphs, args, label)
        for name in compiled:
            entries[name].tensor_mb = entries[name].gflops = math.nan
    for trainer in trainers.values():
        trainer.optimizer = None  # free Adam's state before the next section
    del trainers
    eager = {name: model for name, model in models.items() if not name.endswith(COMPILED)}
    if not eager and kind == "mt" and "beam" in args.sections:  # beam search runs eagerly
        del models
        for layer in args.layers:
            task, eager[layer] = build(layer)
    return entries, eager, task


def compile_variants(args) -> List[str]:
    """The name suffixes of ``--compile``: '' (eager) and/or COMPILED."""
    return {"eager": [""], "compiled": [COMPILED], "both": ["", COMPILED]}[args.compile]


def compiled_graphs() -> Dict[str, int]:
    """torch.compile's counts of graphs made so far in this process (since the last reset)."""
    from torch._dynamo.utils import counters

    return {f"{group}.{key}": value for group in ("stats", "aot_autograd", "inductor")
            for key, value in counters[group].items()}


def check_compiled(models, names, graphs_before, args, label):
    """After the timed rounds: every compiled entry ran compiled (no eager fallback) and no
    graph was compiled during the measurement; a note for the Markdown, a warning if not."""
    from fairseq_mixtape.losses import compiled_token_losses
    from fairseq_mixtape.models.wiring import output_layer_of

    failures = {name: output_layer_of(models[name.replace(CHUNKED, "mos")]).compiled_forward
                .failure for name in names}
    failures["criterion"] = compiled_token_losses().failure
    failures = {name: failure for name, failure in failures.items() if failure}
    after = compiled_graphs()
    changed = {key: (graphs_before.get(key, 0), value) for key, value in after.items()
               if graphs_before.get(key, 0) != value}
    unique = graphs_before.get("stats.unique_graphs", 0)
    note = (f"{label}: {unique} graph(s) compiled in the untimed steps; "
            + ("none during the measurement" if not changed else
               "**compiled during the measurement**: " + ", ".join(
                   f"{key} {a} -> {b}" for key, (a, b) in changed.items()))
            + ("" if not failures else "; **ran eagerly** (compile failed): " + "; ".join(
                f"{name}: {failure}" for name, failure in failures.items())))
    if changed or failures:
        log("  WARNING: " + note)
    vars(args).setdefault("notes", []).append(note)


def embed_dim(models, name) -> int:
    model = models[name.replace(CHUNKED, "mos")]  # mos_chunked(+compiled): the mos model
    return model.decoder.embed_tokens.weight.shape[1]


def beam_section(models, task, args, device, dictionary, model_args: str = ""
                 ) -> Dict[str, Result]:
    from fairseq.sequence_generator import SequenceGenerator

    generator = torch.Generator().manual_seed(args.seed + 1)
    src = random_tokens(dictionary, (args.beam_sentences, args.beam_length), device, generator)
    src[:, -1] = dictionary.eos()
    lengths = torch.full((args.beam_sentences,), args.beam_length, dtype=torch.long, device=device)
    sample = {"id": torch.arange(args.beam_sentences),
              "net_input": {"src_tokens": src, "src_lengths": lengths}}
    steps, entries = {}, {}
    for layer, model in models.items():
        model.eval()
        search = SequenceGenerator([model], task.target_dictionary, beam_size=args.beam_size,
                                   max_len_a=0, max_len_b=args.beam_length,
                                   min_len=args.beam_length)

        def decode(search=search):
            with autocast(args, device):
                hypotheses = search.generate([search.model], sample)
            lengths = {len(h["tokens"]) for beam in hypotheses for h in beam}
            assert lengths == {args.beam_length + 1}, lengths  # every layer decodes alike

        steps[layer] = decode
        entries[layer] = Result("beam", "decode", layer, args.model_vocab,
                                model.decoder.embed_tokens.weight.shape[1], args.beam_sentences,
                                "sentences", params_m=params_m(model), model_args=model_args)
    measure(entries, steps, args, device,
            "beam search" + (f" ({model_args})" if model_args else ""))
    return entries


DEFAULT_CHUNKS = "default"


def chunk_setting(text: str):
    """--memory-chunk-tokens: ``DEFAULT_CHUNKS`` or a number of positions >= 0."""
    if text == DEFAULT_CHUNKS:
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(
        f"got {text!r}; allowed: a whole number >= 0 or {DEFAULT_CHUNKS!r}")


def chunk_positions(setting, layer) -> int:
    """The positions per chunk of a --memory-chunk-tokens setting for the output layer ``layer``
    (the default follows its scores per position: V, MoS K x V)."""
    from fairseq_mixtape.losses import default_chunk_tokens

    return default_chunk_tokens(layer.scores_per_position) if setting == DEFAULT_CHUNKS else setting


def chunk_name(setting) -> str:
    """A setting in the memory table: ``unset`` for the criterion's default."""
    return "unset" if setting == DEFAULT_CHUNKS else str(setting)


def memory_model_args(args) -> str:
    """The memory section's body: a 1-layer transformer_lm of width E = --memory-dim (input,
    output and embedding; FFN 4E; E/64 heads), its output embedding tied to the input one."""
    E = args.memory_dim
    return (f"--decoder-layers 1 --decoder-embed-dim {E} --decoder-input-dim {E} "
            f"--decoder-output-dim {E} --decoder-ffn-embed-dim {4 * E} "
            f"--decoder-attention-heads {max(1, E // 64)} "
            f"--tokens-per-sample {max(512, args.memory_length)}")


class FakeModelMode:
    """FakeTensorMode for a whole fairseq model: build the model inside ``with mode:`` (fake
    parameters: shapes, no memory), then run steps inside ``with mode, mode.step():``.

    In a step, an operator whose tensor inputs are all real (the token batch and what is computed
    from it alone: padding masks, positions) runs for real, and so does a factory whose result
    has at most ``SMALL`` elements (``torch.onnx.operators.shape_as_tensor`` writes into one), so
    that the model's data-dependent Python (``mask.any()``) works as in a real step; every other
    result is fake. The tensors are the ones a real step creates, with the same sizes and
    lifetimes, so a ``LiveTensorPeak`` entered inside the step sees the real step's peak."""

    SMALL = 64

    def __new__(cls):
        from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
        from torch.utils._pytree import tree_leaves

        class Mode(FakeTensorMode):
            stepping = False

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if not self.stepping:
                    return super().__torch_dispatch__(func, types, args, kwargs)
                tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
                if tensors and not any(isinstance(t, FakeTensor) for t in tensors):
                    return func(*args, **kwargs)  # this mode is off inside its handler: real
                out = super().__torch_dispatch__(func, types, args, kwargs)
                if not tensors and all(t.numel() <= cls.SMALL for t in tree_leaves(out)
                                       if isinstance(t, torch.Tensor)):
                    return func(*args, **kwargs)  # a small factory: real
                return out

            @contextmanager
            def step(self):
                self.stepping = True
                try:
                    yield
                finally:
                    self.stepping = False

        return Mode(allow_non_fake_inputs=True)


class RealMode:
    """``FakeModelMode``'s interface for computed steps (--memory-compute real)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def step(self):
        return nullcontext()


def memory_step(model, criterion, sample, backward: bool = True):
    """One training step's tensors: forward, loss and (unless told not to) backward."""
    model.train()
    loss, sample_size, logging_output = criterion(model, sample)
    if backward:
        loss.backward()


def memory_section(args, device, backward: bool = True) -> List[Result]:
    """Peak live-tensor memory of a training step (forward, loss, backward; no optimiser step)
    at each --memory-vocabs V: every layer through output_layer_cross_entropy at each
    --memory-chunk-tokens, and softmax through fairseq's cross_entropy (layer
    ``softmax+cross_entropy``, chunk_tokens 0) and with the plugin criterion's
    --linear-cross-entropy (``softmax+linear_cross_entropy``), on the 1-layer model of ``memory_model_args``.
    Fake (default) or computed (``--memory-compute real``); the context scale of MoS and
    Mixtape is fixed at 1 (matching it, the default, needs computed values; no shape changes)."""
    from fairseq.criterions.cross_entropy import CrossEntropyCriterion
    from fairseq_mixtape.criterions import OutputLayerCrossEntropyCriterion
    from fairseq_mixtape.models.wiring import output_layer_of

    from .building import dictionary_of

    model_args, results = memory_model_args(args), []
    tokens = args.memory_batch * args.memory_length
    if args.memory_compute == "fake":
        device = torch.device("cpu")  # fake tensors: the sizes are the same on any device
    for vocab in args.memory_vocabs:
        dictionary = dictionary_of(vocab)
        build = model_builder("lm", args, device, dictionary, model_args)
        sample = lm_sample(dictionary, args.memory_batch, args.memory_length, device,
                           torch.Generator().manual_seed(args.seed))
        for layer in args.layers:
            runs = [(layer, chunk) for chunk in args.memory_chunk_tokens]  # chunk: a setting
            runs += [(layer + STOCK, 0), (layer + LINEAR, 0)] if layer == "softmax" else []
            mode = FakeModelMode() if args.memory_compute == "fake" else RealMode()
            with mode:  # fake parameters belong to their mode: one mode per model
                task, model = build(layer, output_context_scale=1.0)
                for name, chunk in runs:
                    started = time.perf_counter()
                    criterion = (CrossEntropyCriterion(task, sentence_avg=False)
                                 if name.endswith(STOCK) else OutputLayerCrossEntropyCriterion(
                                     task, sentence_avg=False,
                                     output_chunk_tokens=None if chunk == DEFAULT_CHUNKS else chunk,
                                     linear_cross_entropy=name.endswith(LINEAR)))
                    gc.collect()
                    with mode.step(), LiveTensorPeak() as tracker:
                        memory_step(model, criterion, sample, backward)
                    model.zero_grad(set_to_none=True)
                    results.append(Result(
                        "memory", "train", name, vocab, args.memory_dim, tokens, "words",
                        tensor_mb=tracker.peak / 2 ** 20, gflops=tracker.flops / 1e9,
                        params_m=params_m(model), model_args=model_args,
                        chunk_tokens=chunk_positions(chunk, output_layer_of(model)),
                        chunk_setting=chunk_name(chunk) if name == layer else ""))
                    log(f"  memory V={vocab} {name} chunks {chunk or '-'}: "
                        f"{results[-1].tensor_mb:.0f} MiB, {results[-1].gflops:.0f} GFLOP "
                        f"({time.perf_counter() - started:.0f} s)")
            del model
            gc.collect()
    return results


# ----------------------------------------------------------------------------- reporting
def mixtape_flop_model(vocab: int, dim: int, components=4, frequent=0.1, gate_dim=None):
    """(the simple FLOP model 1 + (K-1) S/V, and the full multiply-add count of Mixtape's
    forward per position over softmax's V d: context K d^2, frequent tokens K S d, the others
    (V - S) d, gates (K-1) d1 (d + S); d1 = min(64, d) by default, as the layer's)."""
    gate_dim = min(64, dim) if gate_dim is None else gate_dim
    S = int(frequent * vocab)
    simple = 1 + (components - 1) * S / vocab
    macs = (components * dim * dim + components * S * dim + (vocab - S) * dim
            + (components - 1) * gate_dim * (dim + S) + (components - 1) * dim)
    return simple, macs / (vocab * dim)


def paired_ratio(a: Result, b: Result, invert=False):
    """Per-round ratio a/b of times (b/a with ``invert``, i.e. of throughputs): median, min, max."""
    ratios = [(y / x if invert else x / y) for x, y in zip(a.times, b.times)]
    return statistics.median(ratios), min(ratios), max(ratios)


def fmt_time(r: Result) -> str:
    scale = 1e3
    return (f"{r.median * scale:.1f} [{min(r.times) * scale:.1f}-{max(r.times) * scale:.1f}]")


def fmt(x: float, digits=1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_ratio(r) -> str:
    return "n/a" if r is None else f"{r[0]:.2f} [{r[1]:.2f}-{r[2]:.2f}]"


def find(results, section, layer, mode=None, vocab=None, dim=None) -> Optional[Result]:
    for r in results:
        if (r.section == section and r.layer == layer and (mode is None or r.mode == mode)
                and (vocab is None or r.vocab == vocab) and (dim is None or r.dim == dim)):
            return r
    return None


def layer_label(name: str, args) -> str:
    base, variant = split_variant(name)
    return (f"MoS-{args.mos_components}" if base == "mos" else base) + variant


def split_variant(name: str):
    """'mixtape+compiled' -> ('mixtape', '+compiled'); 'mixtape' -> ('mixtape', '')."""
    base, plus, variant = name.partition("+")
    return base, plus + variant


def shape_ratios(results: List[Result], args) -> List[str]:
    """Every layer's time, memory and FLOP ratios to softmax's at every measured shape."""
    mem = "CUDA" if args.device == "cuda" else "RSS"
    rows = ["## Ratios to softmax at every shape", "",
            "Time: median [min-max] of the per-round ratios (the layers ran interleaved, so a "
            "ratio is meaningful on a loaded machine where absolute times are not); memory: "
            f"peak ({mem}) and live-tensor peak; FLOPs: counted matrix-product FLOPs. "
            "A `+compiled` entry is compared with `softmax+compiled`.", "",
            "| section | mode | V | d | model args | layer / softmax | time | peak mem | "
            "tensors | FLOPs |", "|---|---|---|---|---|---|---|---|---|---|"]
    results = [r for r in results if r.times]  # not the (untimed) memory section
    shapes = []
    for r in results:
        key = (r.section, r.mode, r.vocab, r.dim, r.model_args)
        if split_variant(r.layer)[0] == "softmax" and key not in shapes:
            shapes.append(key)
    for section, mode, vocab, dim, model_args in shapes:
        base = [r for r in results if (r.section, r.mode, r.vocab, r.dim, r.model_args)
                == (section, mode, vocab, dim, model_args)]
        softmaxes = {r.layer: r for r in base if split_variant(r.layer)[0] == "softmax"}
        for r in base:
            # +compiled against softmax+compiled; softmax+linear_cross_entropy against softmax
            variant = "" if r.layer.endswith(LINEAR) else split_variant(r.layer)[1]
            softmax = softmaxes.get("softmax" + variant)
            if softmax is None or r is softmax:
                continue
            mems = [getattr(r, kind) / getattr(softmax, kind)
                    if getattr(softmax, kind) > 0 and not math.isnan(getattr(r, kind)) else None
                    for kind in ("peak_mb", "tensor_mb", "gflops")]
            rows.append(f"| {section} | {mode} | {vocab} | {dim} | "
                        f"{f'`{model_args}`' if model_args else ''} | "
                        f"{layer_label(r.layer, args)} | {fmt_ratio(paired_ratio(r, softmax))} | "
                        + " | ".join("n/a" if m is None else f"{m:.2f}" for m in mems) + " |")
    return rows + [""] if len(rows) > 6 else []


def ratios_table(results: List[Result], args) -> List[str]:
    """The ratios the speed and memory targets are about, and the FLOP model beside them."""
    V = 32000 if 32000 in args.vocabs else args.vocabs[len(args.vocabs) // 2]
    d = 512 if 512 in args.dims else args.dims[0]
    simple, full = mixtape_flop_model(V, d)
    simple_m, full_m = mixtape_flop_model(args.model_vocab, d)
    rows = []

    def row(what, a, b, invert, target, ok, flop_text="", kind="time"):
        if a is None or b is None:
            rows.append(f"| {what} | n/a | {flop_text} | {target} | n/a |")
            return
        if kind == "time":
            r = paired_ratio(a, b, invert)
            value, text = r[0], fmt_ratio(r)
        else:
            num, den = getattr(a, kind), getattr(b, kind)
            if not den > 0 or math.isnan(num):  # no memory reading on this platform
                rows.append(f"| {what} | n/a | {flop_text} | {target} | n/a |")
                return
            value = num / den
            text = f"{value:.2f}"
        rows.append(f"| {what} | {text} | {flop_text} | {target} | "
                    f"{'n/a' if ok is None else ('**yes**' if ok(value) else '**no**')} |")

    def flops(a, b, label="counted"):
        ok = a is not None and b is not None and b.gflops > 0
        return f"{a.gflops / b.gflops:.2f} ({label})" if ok else ""

    def inverse_flops(a, b):  # for throughput ratios a/b: FLOPs b/a
        return flops(b, a, "counted, FLOPs softmax/Mixtape")

    mt = {name: find(results, "mt", name) for name in LAYERS + [CHUNKED]}
    lm = {name: find(results, "lm", name) for name in LAYERS + [CHUNKED]}
    beam = {name: find(results, "beam", name) for name in LAYERS}
    ol = {(name, mode): find(results, "output_layer", name, mode, V, d)
          for name in LAYERS for mode in ("train", "infer")}
    K = args.mos_components
    # the MoS targets are about the paper's K = 15; at another K there is none to hold
    mos_target, mos_ok = (">= 5", lambda v: v >= 5) if K == 15 else ("", None)
    chunk_target = ("<= 2", lambda v: v <= 2) if K == 15 else ("", None)
    rows += ["| ratio (median of per-round ratios [min-max]) | measured | FLOPs | target "
             "| held |", "|---|---|---|---|---|"]
    mem, mem_name = "peak_mb", "CUDA" if args.device == "cuda" else "RSS"
    row("transformer_wmt_en_de training words/s, Mixtape / softmax", mt["mixtape"], mt["softmax"],
        True, ">= 0.85", lambda v: v >= 0.85, inverse_flops(mt["mixtape"], mt["softmax"]))
    row(f"transformer_wmt_en_de training step time, MoS-{K} / Mixtape", mt["mos"], mt["mixtape"],
        False, mos_target, mos_ok, flops(mt["mos"], mt["mixtape"]))
    row(f"output layer alone (V={V}, d={d}) training step time, MoS-{K} / Mixtape",
        ol["mos", "train"], ol["mixtape", "train"], False, mos_target, mos_ok,
        flops(ol["mos", "train"], ol["mixtape", "train"]))
    row(f"transformer_wmt_en_de peak training memory ({mem_name}), Mixtape / softmax",
        mt["mixtape"], mt["softmax"], False, "<= 1.25", lambda v: v <= 1.25, kind=mem)
    row("transformer_wmt_en_de peak training memory (live tensors), Mixtape / softmax",
        mt["mixtape"], mt["softmax"], False, "<= 1.25", lambda v: v <= 1.25, kind="tensor_mb")
    row(f"transformer_wmt_en_de peak training memory ({mem_name}), MoS-{K} chunked / softmax",
        mt[CHUNKED], mt["softmax"], False, *chunk_target, kind=mem)
    row(f"transformer_wmt_en_de peak training memory (live tensors), MoS-{K} chunked / softmax",
        mt[CHUNKED], mt["softmax"], False, *chunk_target, kind="tensor_mb")
    row("beam search sentences/s, Mixtape / softmax", beam["mixtape"], beam["softmax"], True,
        ">= 0.9", lambda v: v >= 0.9, inverse_flops(beam["mixtape"], beam["softmax"]))
    rows.append("| *other ratios* | | | | |")
    row(f"transformer_wmt_en_de peak training memory ({mem_name}), MoS-{K} unchunked / softmax",
        mt["mos"], mt["softmax"], False, "", None, kind=mem)
    row(f"transformer_wmt_en_de peak training memory (live tensors), MoS-{K} unchunked / softmax",
        mt["mos"], mt["softmax"], False, "", None, kind="tensor_mb")
    row(f"transformer_wmt_en_de step time, MoS-{K} chunked / Mixtape", mt[CHUNKED], mt["mixtape"],
        False, "", None, flops(mt[CHUNKED], mt["mixtape"]))
    row("transformer_lm training words/s, Mixtape / softmax", lm["mixtape"], lm["softmax"], True,
        "", None, inverse_flops(lm["mixtape"], lm["softmax"]))
    row(f"transformer_lm training step time, MoS-{K} / Mixtape", lm["mos"], lm["mixtape"], False,
        "", None, flops(lm["mos"], lm["mixtape"]))
    for kind, name in [(mem, mem_name), ("tensor_mb", "live tensors")]:
        row(f"transformer_lm peak training memory ({name}), Mixtape / softmax", lm["mixtape"],
            lm["softmax"], False, "", None, kind=kind)
        row(f"transformer_lm peak training memory ({name}), MoS-{K} chunked / softmax",
            lm[CHUNKED], lm["softmax"], False, "", None, kind=kind)
    model = f"model {simple:.2f}, full count {full:.2f}; "
    for mode, what in [("train", "train"), ("infer", "inference")]:
        row(f"output layer alone V={V} d={d}, {what} time, Mixtape / softmax",
            ol["mixtape", mode], ol["softmax", mode], False, "", None,
            model + flops(ol["mixtape", mode], ol["softmax", mode]))
    for kind, name in [(mem, mem_name), ("tensor_mb", "live tensors")]:
        row(f"output layer alone V={V} d={d}, peak train memory ({name}), Mixtape / softmax",
            ol["mixtape", "train"], ol["softmax", "train"], False, "", None, kind=kind)
    lines = ["## Ratios", "",
             f"FLOP model: a Mixtape output layer costs about (1 + (K-1) S/V) x softmax's: K=4, "
             f"S=0.1V: **{simple:.2f}**; counting the context projection (K d^2) and the gates "
             f"too, {full:.3f} at V={V}, d={d} ({full_m:.3f} at the models' V={args.model_vocab}). "
             "'counted' FLOPs are matrix-product FLOPs of the measured step from "
             "torch.utils.flop_counter.", ""] + rows
    return lines


def markdown(results: List[Result], args, device, seconds: float) -> str:
    mem_kind = "CUDA max allocated" if device.type == "cuda" else "RSS growth"
    command = " ".join(["python scripts/benchmark.py", *map(shlex.quote, args.argv)])
    lines = ["# Output-layer benchmark", "",
             f"- command: `{command}`",
             f"- layers: {', '.join(args.layers)}; MoS K={args.mos_components}, Mixtape K=4, "
             "S=0.1V, d1=min(64, E)",
             f"- device: {describe_device(device)}; dtype {args.dtype}; torch {torch.__version__}; "
             f"{torch.get_num_threads()} thread(s)"]
    if any(r.times for r in results):
        lines += [f"- {args.repeats} timed rounds per configuration (MoS: the first "
                  f"{min(args.mos_repeats, args.repeats)}; layers interleaved, order rotated), "
                  f"after a tracked step, a memory step and {args.warmup} warm-up step(s); "
                  f"times: median [min-max]",
                  f"- peak memory: {mem_kind} during one step, MiB (`peak`); live-tensor peak of "
                  "the same kind of step (`tensors`)"]
    if args.compile != "eager" and any(r.section in ("mt", "lm") for r in results):
        lines += [f"- `--compile {args.compile}`: `<layer>+compiled` is the same model built with "
                  "`--compile-output-layer` (the criterion runs each chunk's output layer, "
                  "log-softmax and loss through torch.compile), measured in the same rounds "
                  f"after {COMPILE_WARMUP} untimed compiling steps; its `tensors` and `GFLOP` "
                  "are n/a (a dispatch mode does not track a compiled step faithfully)"]
        lines += [f"- compiled graphs, {note}" for note in getattr(args, "notes", [])]
    lines += [f"- total wall time {seconds / 60:.1f} min; 1-minute load average "
              f"{args.load[0]} at the start, {args.load[-1]} at the end", ""]
    ol = [r for r in results if r.section == "output_layer"]
    if ol:
        lines += [f"## Output layer alone ({args.positions} positions per step)", "",
                  "| d | V | layer | train ms | infer ms | train peak MiB | infer peak MiB | "
                  "train tensors MiB | train GFLOP |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for d in args.dims:
            for V in args.vocabs:
                for name in args.layers + ["softmax" + LINEAR] * args.linear_cross_entropy:
                    tr = find(ol, "output_layer", name, "train", V, d)
                    inf = find(ol, "output_layer", name, "infer", V, d)
                    if tr is None:
                        continue
                    lines.append(f"| {d} | {V} | {name} | {fmt_time(tr)} | "
                                 f"{fmt_time(inf) if inf else '-'} | {fmt(tr.peak_mb)} | "
                                 f"{fmt(inf.peak_mb) if inf else '-'} | {fmt(tr.tensor_mb)} | "
                                 f"{fmt(tr.gflops, 2)} |")
        lines.append("")
    for section, title in [("mt", "transformer_wmt_en_de training step"),
                           ("lm", "transformer_lm training step")]:
        for model_args in args.model_args:
            rs = [r for r in results if r.section == section and r.model_args == model_args]
            if not rs:
                continue
            batch, length = ((args.mt_batch, args.mt_length) if section == "mt"
                             else (args.lm_batch, args.lm_length))
            lines += [f"## {title} (V={args.model_vocab}, {batch} x {length} target tokens per step"
                      + (f"; `{model_args}`" if model_args else "") + ")",
                      "",
                      "| layer | params M | step ms | words/s | peak MiB | tensors MiB | GFLOP |",
                      "|---|---|---|---|---|---|---|"]
            for r in rs:
                lines.append(f"| {r.layer} | {r.params_m:.1f} | {fmt_time(r)} | "
                             f"{r.throughput:.0f} | {fmt(r.peak_mb)} | {fmt(r.tensor_mb)} | "
                             f"{fmt(r.gflops, 1)} |")
            lines.append("")
    for model_args in args.model_args:
        rs = [r for r in results if r.section == "beam" and r.model_args == model_args]
        if not rs:
            continue
        lines += [f"## Beam search (transformer_wmt_en_de, beam {args.beam_size}, "
                  f"{args.beam_sentences} sentences of {args.beam_length} tokens, "
                  f"{args.beam_length} output tokens + eos"
                  + (f"; `{model_args}`" if model_args else "") + ")", "",
                  "| layer | batch ms | sentences/s | peak MiB | tensors MiB | GFLOP |",
                  "|---|---|---|---|---|---|"]
        for r in rs:
            lines.append(f"| {r.layer} | {fmt_time(r)} | {r.throughput:.2f} | {fmt(r.peak_mb)} | "
                         f"{fmt(r.tensor_mb)} | {fmt(r.gflops, 1)} |")
        lines.append("")
    lines += compiled_table(results, args)
    lines += memory_table(results, args)
    lines += shape_ratios(results, args)
    if any(r.times for r in results):
        lines += ratios_table(results, args)
    return "\n".join(lines) + "\n"


def compiled_table(results: List[Result], args) -> List[str]:
    """Per model shape, each layer eager and compiled (--compile both): words/s, the step-time
    ratio to softmax of the same mode, and compiled / eager, all per-round ratios."""
    rows = []
    for section, title in [("mt", "transformer_wmt_en_de"), ("lm", "transformer_lm")]:
        for model_args in args.model_args:
            rs = {r.layer: r for r in results
                  if r.section == section and r.model_args == model_args}
            pairs = [(name, r, rs.get(name + COMPILED)) for name, r in rs.items()
                     if not name.endswith(COMPILED) and name + COMPILED in rs]
            if not pairs:
                continue
            eager_sm, compiled_sm = rs.get("softmax"), rs.get("softmax" + COMPILED)
            rows += [f"### {title}" + (f", `{model_args}`" if model_args else ""), "",
                     "| layer | words/s eager | words/s compiled | time / softmax, eager | "
                     "time / softmax, compiled | compiled / eager time | RSS peak compiled / "
                     "eager |", "|---|---|---|---|---|---|---|"]
            for name, eager, compiled in pairs:
                to_softmax = [fmt_ratio(paired_ratio(r, sm)) if sm is not None and r is not sm
                              else "1" for r, sm in [(eager, eager_sm), (compiled, compiled_sm)]]
                rss = (compiled.peak_mb / eager.peak_mb
                       if eager.peak_mb > 0 and not math.isnan(compiled.peak_mb) else None)
                rows.append(f"| {layer_label(name, args)} | {eager.throughput:.0f} | "
                            f"{compiled.throughput:.0f} | {to_softmax[0]} | {to_softmax[1]} | "
                            f"{fmt_ratio(paired_ratio(compiled, eager))} | "
                            f"{'n/a' if rss is None else f'{rss:.2f}'} |")
            rows.append("")
    if not rows:
        return []
    return ["## Eager and compiled (`--compile-output-layer`) whole training steps", "",
            "Time ratios: median [min-max] of the per-round ratios (every entry ran in the same "
            "interleaved rounds); `time / softmax, compiled` is against `softmax+compiled`.",
            ""] + rows


def chunk_sizes(results: List[Result], vocab: int, setting: str, args) -> str:
    """The positions per chunk a setting gave at ``vocab``: one number where every layer had the
    same, else each layer's (``262 MoS-4, 1048 the others``)."""
    sizes = {r.layer: r.chunk_tokens for r in results
             if r.vocab == vocab and r.chunk_setting == setting}
    if len(set(sizes.values())) <= 1:
        return str(next(iter(sizes.values()), "n/a"))
    common = statistics.mode(sizes.values())
    return ", ".join([f"{c} {layer_label(name, args)}" for name, c in sizes.items() if c != common]
                     + [f"{common} the others"])


def memory_table(results: List[Result], args) -> List[str]:
    """The memory section: live-tensor peaks per V, layer and chunk size, and their ratios."""
    rs = [r for r in results if r.section == "memory"]
    if not rs:
        return []
    chunks = [chunk_name(c) for c in args.memory_chunk_tokens]  # settings, as the results hold them
    peak = {(r.vocab, r.layer, r.chunk_setting): r for r in rs}
    E = args.memory_dim
    lines = [f"## Peak training memory at large vocabularies ({args.memory_batch} x "
             f"{args.memory_length} target tokens, E = {E})", "",
             f"The live-tensor peak (MiB) of one training step: forward, loss and backward, no "
             f"optimiser step (the parameters exist before it and are not counted; their "
             f"gradients are). Model: a 1-layer `transformer_lm` (`{memory_model_args(args)}`, "
             "`--share-decoder-input-output-embed`), each output layer through the plugin's "
             "`output_layer_cross_entropy` with `--output-chunk-tokens` "
             + " and ".join(chunks)
             + (" (unset: 2^27 / V positions, MoS-K 2^27 / (K x V), at most 4096; whole sequences "
                "of at least one)" if chunk_name(DEFAULT_CHUNKS) in chunks else "")
             + ", and the softmax model through fairseq's "
             "`cross_entropy` (`softmax+cross_entropy`) and with the plugin criterion's "
             "`--linear-cross-entropy` (`softmax+linear_cross_entropy`, torch's chunked "
             "`F.linear_cross_entropy`). "
             + ("Computed under FakeTensorMode: the tensors' shapes and lifetimes without their "
                "arithmetic (no memory used; the context scale of MoS and Mixtape fixed at 1, "
                "which changes no shape)." if args.memory_compute == "fake" else
                "Computed for real."), "",
             "| V | layer | " + " | ".join(f"MiB, chunks {c}" for c in chunks)
             + f" | GFLOP (matrix products), chunks {chunks[0]} | params M |",
             "|---|---|" + "---|" * len(chunks) + "---|---|"]
    for vocab in args.memory_vocabs:
        first = {}  # layer -> its result at the first setting; the stock criteria have none
        for r in rs:
            if r.vocab == vocab and r.chunk_setting in (chunks[0], ""):
                first.setdefault(r.layer, r)
        for r in first.values():
            cells = ([fmt(peak[vocab, r.layer, c].tensor_mb, 0) if (vocab, r.layer, c) in peak
                      else "n/a" for c in chunks] if r.chunk_setting else
                     [fmt(r.tensor_mb, 0)] + ["(no chunks)"] * (len(chunks) - 1))
            lines.append(f"| {vocab // 1000}K | {layer_label(r.layer, args)} | "
                         + " | ".join(cells) + f" | {fmt(r.gflops, 0)} | {r.params_m:.0f} |")
    others = [name for name in args.layers if name != "softmax"]
    lines += ["", "| V | chunks | " + "".join(f"{layer_label(name, args)} / softmax | "
                                              for name in others)
              + "softmax (plugin) / softmax+cross_entropy | softmax+linear_cross_entropy / "
              "softmax+cross_entropy |",
              "|---|---|" + "---|" * (len(others) + 2)]

    def ratio(a, b):
        return "n/a" if a is None or b is None else f"{a.tensor_mb / b.tensor_mb:.2f}"

    for vocab in args.memory_vocabs:
        stock = peak.get((vocab, "softmax" + STOCK, ""))
        linear = peak.get((vocab, "softmax" + LINEAR, ""))
        for setting in chunks:
            softmax = peak.get((vocab, "softmax", setting))
            lines.append(f"| {vocab // 1000}K | {setting} ({chunk_sizes(rs, vocab, setting, args)}) | "
                         + "".join(f"{ratio(peak.get((vocab, name, setting)), softmax)} | "
                                   for name in others)
                         + f"{ratio(softmax, stock)} | {ratio(linear, stock)} |")
    return lines + [""]


def load_average() -> str:
    try:
        return "{:.1f}".format(os.getloadavg()[0])
    except OSError:
        return "n/a"


def describe_device(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def write_csv(results: List[Result], path: Path, args):
    columns = ["section", "mode", "layer", "vocab", "dim", "tokens", "unit", "device", "dtype",
               "threads", "repeats", "time_ms_median", "time_ms_min", "time_ms_max", "time_ms_q1",
               "time_ms_q3", "throughput_per_s", "peak_mb", "tensor_mb", "gflops", "params_m",
               "times_ms", "components", "model_args", "chunk_tokens"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in results:
            q1, q3 = r.quartiles()
            low, high = (min(r.times), max(r.times)) if r.times else (math.nan, math.nan)
            writer.writerow([r.section, r.mode, r.layer, r.vocab, r.dim, r.tokens, r.unit,
                             args.device, args.dtype, torch.get_num_threads(), len(r.times),
                             f"{r.median * 1e3:.3f}", f"{low * 1e3:.3f}",
                             f"{high * 1e3:.3f}", f"{q1 * 1e3:.3f}", f"{q3 * 1e3:.3f}",
                             f"{r.throughput:.3f}", f"{r.peak_mb:.2f}", f"{r.tensor_mb:.2f}",
                             f"{r.gflops:.4f}", f"{r.params_m:.3f}",
                             " ".join(f"{t * 1e3:.3f}" for t in r.times),
                             args.mos_components if split_variant(r.layer)[0] in ("mos", CHUNKED)
                             else {"mixtape": 4}.get(split_variant(r.layer)[0], 1), r.model_args,
                             r.chunk_tokens or ""])


def plot(results: List[Result], path: Path, args, device):
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq's root logger is at DEBUG
    import matplotlib.pyplot as plt

    ol = [r for r in results if r.section == "output_layer"]
    mem = "CUDA peak" if device.type == "cuda" else "peak RSS growth"
    panels = [("train", "times", "forward+backward time per step (ms)"),
              ("infer", "times", "inference time per step (ms)"),
              ("train", "peak_mb", f"training {mem} (MiB)"),
              ("infer", "peak_mb", f"inference {mem} (MiB)")]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    styles = ["-", "--", ":", "-."]
    by_dim = len(args.vocabs) == 1 and len(args.dims) > 1  # one line per layer over d
    for ax, (mode, what, title) in zip(axes.flat, panels):
        for i, (d, vocabs) in enumerate([(None, args.vocabs)] if by_dim else
                                        [(d, args.vocabs) for d in args.dims]):
            for name in args.layers:
                if by_dim:
                    rs = [find(ol, "output_layer", name, mode, vocabs[0], dim)
                          for dim in args.dims]
                    xs, label = [r.dim for r in rs], layer_label(name, args)
                else:
                    rs = [find(ol, "output_layer", name, mode, V, d) for V in vocabs]
                    xs, label = [r.vocab / 1000 for r in rs], f"{layer_label(name, args)} d={d}"
                if what == "times":
                    ys = [r.median * 1e3 for r in rs]
                    err = [[y - min(r.times) * 1e3 for y, r in zip(ys, rs)],
                           [max(r.times) * 1e3 - y for y, r in zip(ys, rs)]]
                    ax.errorbar(xs, ys, yerr=err, capsize=3, marker="o", ls=styles[i % 4],
                                color=COLORS[name], label=label)
                else:
                    ax.plot(xs, [r.peak_mb for r in rs], marker="o", ls=styles[i % 4],
                            color=COLORS[name], label=label)
        ax.set_title(title)
        if by_dim:
            ax.set_xscale("log", base=2)
            ax.set_xticks(args.dims, [str(dim) for dim in args.dims])
            ax.set_xlabel(f"feature and embedding size d = E (V = {args.vocabs[0]})")
        else:
            ax.set_xlabel("vocabulary size V (thousands)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"Output layer alone, {args.positions} positions, {describe_device(device)}, "
                 f"{args.dtype}; median of {args.repeats} interleaved rounds "
                 f"(MoS {min(args.mos_repeats, args.repeats)}; bars: min-max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> List[Result]:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args) -> List[Result]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    import fairseq_mixtape  # noqa: F401  (registers models, layers, criterions)

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.grid:
        from .grid import run_grid

        return run_grid(args, device)
    started, args.load = time.perf_counter(), [load_average()]
    log(f"benchmark on {describe_device(device)}, {torch.get_num_threads()} threads, {args.dtype}")
    results: List[Result] = []
    if "output_layer" in args.sections:
        results += output_layer_section(args, device)
    needs_mt = "mt" in args.sections or "beam" in args.sections
    if needs_mt or "lm" in args.sections:
        from .building import dictionary_of

        dictionary = dictionary_of(args.model_vocab)
    for model_args in args.model_args if needs_mt else []:
        if "mt" in args.sections:
            entries, models, task = training_section("mt", args, device, dictionary, model_args)
            results += entries.values()
        else:
            models, task = {}, None
            build = model_builder("mt", args, device, dictionary, model_args)
            for layer in args.layers:
                task, models[layer] = build(layer)
        if "beam" in args.sections:
            results += beam_section(models, task, args, device, dictionary,
                                    model_args).values()
        del models
        gc.collect()
    for model_args in args.model_args if "lm" in args.sections else []:
        entries, models, _ = training_section("lm", args, device, dictionary, model_args)
        results += entries.values()
        del models
        gc.collect()
    if "memory" in args.sections:
        results += memory_section(args, device)
    seconds = time.perf_counter() - started
    args.load.append(load_average())
    write_csv(results, out_dir / f"{args.name}.csv", args)
    if not args.no_plot and any(r.section == "output_layer" for r in results):
        plot(results, out_dir / f"{args.name}.png", args, device)
    text = markdown(results, args, device, seconds)
    (out_dir / f"{args.name}.md").write_text(text)
    print()
    print(text)
    log(f"wrote {out_dir / args.name}.csv, .png, .md ({seconds / 60:.1f} min)")
    return results


def cli() -> None:
    """The console script (its return value would become the exit status)."""
    main()


if __name__ == "__main__":
    cli()
