"""The benchmark's command line: its flags and their checks, then the sections (sections.py) or
the grid (grid.py), measured (measure.py) and reported (report.py).

    python scripts/benchmark.py            # the default CPU run (a few minutes)
    python scripts/benchmark.py --quick    # a smoke run with tiny sizes (well under a minute)
    python scripts/benchmark.py --grid     # the layer alone over (E, V), eager and compiled
    python scripts/benchmark.py --device cuda --dtype bfloat16 --dims 512 1024 --positions 2048
    python scripts/benchmark.py --sections lm --mos-components 4 \
        --model-args '--decoder-input-dim 16 --decoder-output-dim 16' \
        --model-args '--decoder-input-dim 128 --decoder-output-dim 128'   # two model shapes
    python scripts/benchmark.py --sections mt --compile both   # eager and compiled models
    python scripts/benchmark.py --sections memory --mos-components 4   # memory at V=128K, 256K

The results go to ``--out-dir``, by default ``OUT_DIR`` in the current folder, which git
ignores: a run leaves the published results (benchmarks/) as they are unless told to write there.
"""

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from ..arguments import ArgumentParser, check_counts, check_positive
from . import grid
from .measure import COMPILE_WARMUP, DEFAULT_CHUNKS, LAYERS, Result, log
from .report import describe_device, load_average, write_report
from .sections import SECTIONS, model_argv, run_sections

OUT_DIR = "benchmark-results"  # the default --out-dir, git-ignored (benchmarks/: published ones)
QUICK = dict(vocabs=[500, 1000], dims=[32], positions=16, model_vocab=1000, mt_batch=2,
             mt_length=6, lm_batch=2, lm_length=8, beam_sentences=2, beam_length=4, repeats=2,
             mos_repeats=2, warmup=0)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The benchmark's options, checked. With --quick, QUICK (and the grid's) supply the
    defaults of the flags the command line does not give; a flag given keeps its value."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK, **grid.QUICK)
        args = parser.parse_args(argv)
    grid.resolve_args(parser, args)
    check_benchmark_args(parser, args)
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    args.model_args = args.model_args or [""]
    args.name = args.name or (("grid" if args.grid else "benchmark") + f"_{args.device}"
                              + ("_quick" if args.quick else ""))
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description="Benchmark softmax, MoS, Mixtape and sigsoftmax output layers: the layer "
                    "alone, whole fairseq training steps, beam search; time and peak memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="float16/bfloat16: run forward passes under torch.autocast")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 on CPU, torch's default on CUDA). On a "
                        "machine with fewer free cores than threads, every parallel op waits for "
                        "a descheduled thread, and whole training steps run several times slower")
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
    g.add_argument("--out-dir", default=OUT_DIR,
                   help="folder of the CSV, Markdown and plot, made where it does not exist "
                        "(the published results are in the checkout's benchmarks/)")
    g.add_argument("--name", default=None,
                   help="file name stem (default: benchmark_<device>; grid_<device> with --grid)")
    g.add_argument("--no-plot", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny models, and tiny sizes and 2 rounds where the size and "
                        "round flags are not given")
    grid.add_arguments(p)
    return p


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

    from ..building import parse_train_args  # (imports fairseq)

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            parse_train_args(argv)
    except SystemExit as exited:
        lines = captured.getvalue().strip().splitlines() or [f"exit status {exited.code}"]
        return lines[-1].split(": error: ", 1)[-1]
    return ""


def chunk_setting(text: str):
    """--memory-chunk-tokens: ``DEFAULT_CHUNKS`` or a number of positions >= 0."""
    if text == DEFAULT_CHUNKS:
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(
        f"got {text!r}; allowed: a whole number >= 0 or {DEFAULT_CHUNKS!r}")


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
    device = torch.device(args.device)  # (parse_args refused cuda where torch sees none)
    import fairseq_mixtape  # noqa: F401  (registers models, layers, criterions)

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.grid:
        return grid.run_grid(args, device)
    started, args.load = time.perf_counter(), [load_average()]
    log(f"benchmark on {describe_device(device)}, {torch.get_num_threads()} threads, {args.dtype}")
    results = run_sections(args, device)
    seconds = time.perf_counter() - started
    args.load.append(load_average())
    write_report(results, out_dir, args, device, seconds)
    return results


def cli() -> None:
    """The console script (its return value would become the exit status)."""
    main()

