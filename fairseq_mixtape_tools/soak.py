"""Soak test (a long run, not in CI; tests/tools/test_soak.py runs it at toy size): train a small
Mixtape language model for many updates on real data (Penn Treebank), in reduced precision where
available, then check that every logged loss stayed finite, that checkpoints were saved, and that
every saved checkpoint loads and evaluates to a finite perplexity.

    python scripts/soak.py --data-bin runs/ptb/data-bin --updates 10000      # CPU
    python scripts/soak.py --data-bin runs/ptb/data-bin --precision fp16     # on a GPU

Precision: fp16 on a GPU; on CPU fp32 by default. --precision memory_efficient_fp16 is fairseq's
float16 path on CPU: it trains (tests/plugin/test_reliability.py) but ran about 24x slower than fp32
here (0.14 vs 3.28 updates/s, 100 updates each). Prints one line per check and exits non-zero
if any check fails. Prepare PTB first with
examples/language_model/prepare.sh ptb --local DIR."""

import argparse
import math
import re
import time
from pathlib import Path

from .arguments import ArgumentParser
from .runner import PACKAGE_DIR, CommandFailed, run_tool, stop_tools_on_terminate

PRECISION_FLAGS = {"fp32": [], "amp": ["--amp"], "fp16": ["--fp16"],
                   "memory_efficient_fp16": ["--memory-efficient-fp16"]}


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-bin", type=Path, required=True,
                        help="fairseq-preprocess'd language-modelling data (dict.txt, train/valid)")
    parser.add_argument("--out", type=Path, default=Path("runs/soak"))
    parser.add_argument("--updates", type=int, default=10000)
    parser.add_argument("--save-every", type=int, default=1000, help="checkpoint interval")
    parser.add_argument("--precision", choices=sorted(PRECISION_FLAGS),
                        help="default: fp16 with a GPU, fp32 on CPU")
    parser.add_argument("--layer", default="mixtape")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="blocks of 35 tokens")
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="train on CPU even with a GPU")
    parser.add_argument("--check-only", action="store_true",
                        help="no training: check OUT/train.log and the checkpoints saved so far "
                             "(a run that was stopped or preempted)")
    args = parser.parse_args(argv)
    if not (args.data_bin / "dict.txt").is_file():
        parser.error(f"--data-bin: {args.data_bin} has no dict.txt (not binarized LM data)")
    if args.updates < args.save_every:
        parser.error(f"--updates: got {args.updates}; allowed: at least --save-every "
                     f"({args.save_every})")
    if args.precision is None:
        import torch

        args.precision = "fp16" if torch.cuda.is_available() and not args.cpu else "fp32"
    return args


def train(args) -> str:
    return run_tool("train", [
        args.data_bin, "--user-dir", PACKAGE_DIR, "--task", "language_modeling",
        "--arch", "transformer_lm_mixtape", "--output-layer", args.layer,
        "--decoder-layers", 2, "--decoder-embed-dim", args.dim, "--decoder-ffn-embed-dim",
        2 * args.dim, "--decoder-attention-heads", 4, "--share-decoder-input-output-embed",
        "--dropout", 0.1, "--criterion", "output_layer_label_smoothed_cross_entropy",
        "--label-smoothing", 0.1, "--tokens-per-sample", 35, "--sample-break-mode", "none",
        "--batch-size", args.batch_size, "--required-batch-size-multiple", 1,
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", args.lr,
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", 500, "--clip-norm", 1.0,
        "--max-update", args.updates, "--save-interval-updates", args.save_every,
        "--keep-interval-updates", -1, "--no-epoch-checkpoints", "--disable-validation",
        "--log-interval", 100, "--log-format", "simple", "--num-workers", 0, "--seed", 1,
        "--save-dir", args.out / "checkpoints", *PRECISION_FLAGS[args.precision],
        *(["--cpu"] if args.cpu else [])], args.out / "train.log", threads=args.threads)


def check(name: str, ok: bool, detail: str, failures: list) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        failures.append(name)


def main(argv=None) -> int:
    args = parse_args(argv)
    stop_tools_on_terminate()
    started = time.monotonic()
    failures = []
    try:
        output = (args.out / "train.log").read_text() if args.check_only else train(args)
    except (CommandFailed, FileNotFoundError) as error:
        print(error)
        return 1
    losses = [float(x) for x in re.findall(r"train_inner .*? loss=([^,]+),", output)]
    skipped = len(re.findall(r"gradient overflow detected|NaN or Inf found", output))
    check("training losses", bool(losses) and all(math.isfinite(x) for x in losses),
          f"{len(losses)} logged, first {losses[0] if losses else '-'}, last "
          f"{losses[-1] if losses else '-'}; {skipped} overflowing steps skipped by the loss "
          f"scaler", failures)
    updates = re.findall(r"num_updates=(\d+)", output)
    check("updates", bool(updates) and (args.check_only or int(updates[-1]) == args.updates),
          f"{updates[-1] if updates else 0} of {args.updates}", failures)
    checkpoints = sorted((args.out / "checkpoints").glob("checkpoint_*_*.pt"),
                         key=lambda path: int(path.stem.rsplit("_", 1)[1]))
    check("checkpoints", bool(checkpoints), f"{len(checkpoints)} saved every {args.save_every} "
          "updates" + ("" if checkpoints else " (fairseq saves none at the last update of an "
                       "epoch: choose a --save-every that epochs do not end on)"), failures)
    for checkpoint in checkpoints:
        try:
            result = run_tool("eval_lm", [
                args.data_bin, "--path", checkpoint, "--user-dir", PACKAGE_DIR,
                "--gen-subset", "valid", "--tokens-per-sample", 35, "--batch-size", 64,
                "--num-workers", 0, "--cpu"], args.out / f"eval_{checkpoint.stem}.log",
                threads=args.threads)
            perplexity = float(re.search(r"Perplexity: ([\d.]+|inf|nan)", result).group(1))
            check(checkpoint.name, math.isfinite(perplexity), f"loads; valid ppl {perplexity}",
                  failures)
        except CommandFailed as error:
            check(checkpoint.name, False, str(error).splitlines()[0], failures)
    print(f"{'PASSED' if not failures else 'FAILED: ' + ', '.join(failures)} "
          f"({args.precision}, {args.updates} updates, {time.monotonic() - started:.0f} s)")
    return 1 if failures else 0

