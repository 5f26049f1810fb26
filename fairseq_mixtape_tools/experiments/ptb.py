"""Penn Treebank: softmax vs MoS vs Mixtape vs sigsoftmax on the same small Transformer language
model, the same budget (updates, batch, schedule) and the same seeds.

Steps (each finished one is skipped when the script is run again, so it can be interrupted):
  prepare  prepare.sh ptb --local DATA: fairseq-preprocess'd PTB in OUT/data-bin
  train    fairseq-train, one run per (output layer, seed), in OUT/runs/LAYER_seedS/
  eval     fairseq-eval-lm on valid and test (the training blocks, no extra context)
  rank     the test log-probability matrix of each checkpoint (fairseq_mixtape_tools.bottleneck):
           numerical and eps-effective ranks, and one overlaid spectrum plot
  table    RESULTS_DIR/ptb.md (mean and spread over seeds) and ptb.json (every run)

Everything runs through fairseq's command-line tools with --user-dir fairseq_mixtape, one torch
thread per process by default (fastest on a small shared CPU). Example (about an hour on 2 cores):
  python examples/language_model/ptb_experiment.py --data ../shared/data/ptb --out runs/ptb
"""

import argparse
import os
import pathlib
import subprocess
import sys

from ..arguments import ArgumentParser, check_components, check_counts, check_data_dir
from .common import (
    OUTPUT_VARIANTS, REPO, Run, add_experiment_flags, check_experiment_flags, evaluate_lm,
    finish_experiment, format_mean, is_mos, measure_rank, plan_runs, rank_cell, relative_to,
    scale_text, seeds_text, start_experiment, takes_components, values_of, variant_arguments,
    write_results)

LAYERS = ("softmax", "mixtape", "sigsoftmax", "mos")
STAGES = ("prepare", "train", "eval", "rank", "table")
PTB_FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
HEADS = 4  # --decoder-attention-heads


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path, default=REPO.parent / "shared/data/ptb",
                        help="folder with ptb.{train,valid,test}.txt (Mikolov's PTB)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/ptb"),
                        help="work folder: data-bin, runs/, logs")
    parser.add_argument("--results-dir", type=pathlib.Path,
                        default=REPO / "examples/language_model/results",
                        help="where ptb.md, ptb.json and the spectrum plot go")
    parser.add_argument("--layers", default=",".join(LAYERS),
                        help=f"output layers to compare, from {', '.join(OUTPUT_VARIANTS)}")
    parser.add_argument("--seeds", default="1,2", help="training seeds")
    parser.add_argument("--mos-seeds", default="1",
                        help="seeds of the MoS runs (each costs about K softmax runs here)")
    add_experiment_flags(parser, "--stages", stages=list(STAGES),
                         helps={"--stages": "steps to run, in order"})
    parser.add_argument("--dim", type=int, default=256,
                        help=f"d: the Transformer's width, so the rank a softmax reaches (d + 1); "
                             f"a multiple of {HEADS}, the attention heads")
    parser.add_argument("--embed-dim", type=int, default=512,
                        help="tied input/output embeddings (transformer_lm's default input and "
                             "output dims; projected to and from --dim)")
    add_experiment_flags(parser, "--ffn-dim")
    parser.add_argument("--decoder-layers", type=int, default=2)
    parser.add_argument("--components", type=int, default=4,
                        help="K of MoS and Mixtape (a power of two for Mixtape)")
    add_experiment_flags(parser, "--context-scale")
    parser.add_argument("--updates", type=int, default=400, help="updates per run")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="blocks of --tokens-per-sample tokens per update")
    add_experiment_flags(parser, "--tokens-per-sample", tokens_per_sample=35)
    parser.add_argument("--lr", type=float, default=0.003,
                        help="Adam peak learning rate (linear warm-up, then linear decay to 0)")
    add_experiment_flags(parser, "--dropout", "--threads", "--rank-contexts", dropout=0.1)
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser, args):
    """Refuse bad values and combinations before any work (argparse errors naming the flag)."""
    check_experiment_flags(parser, args, STAGES)
    check_counts(parser, args, ["--dim", "--embed-dim", "--ffn-dim", "--decoder-layers",
                                "--updates", "--batch-size", "--tokens-per-sample"])
    if args.dim % HEADS:
        parser.error(f"--dim: got {args.dim}; allowed: a multiple of {HEADS} (the attention "
                     "heads)")
    layers = [OUTPUT_VARIANTS[variant][1] for variant in args.layers if takes_components(variant)]
    check_components(parser, args.components, list(dict.fromkeys(layers)))
    if "prepare" in args.stages:
        check_data_dir(parser, args.data, "--data", [PTB_FILES])
    elif ({"train", "eval", "rank"} & set(args.stages)
          and not (args.out / "data-bin" / "dict.txt").is_file()):
        parser.error(f"--stages: got {','.join(args.stages)}, but {args.out / 'data-bin'} (made "
                     "by the prepare stage) is missing; allowed: add prepare, or an --out that "
                     "holds it")


def plan(args):
    """Seed by seed, every layer; MoS last, for --mos-seeds (plan_runs)."""
    seeds = list(dict.fromkeys([*args.seeds, *args.mos_seeds]))
    return plan_runs(seeds, args.layers,
                     lambda layer: args.mos_seeds if is_mos(layer) else args.seeds,
                     lambda layer, seed: run_for(args, layer, seed))


def run_for(args, layer, seed):
    return Run(args.out / "runs", layer, seed)


def prepare(args):
    """prepare.sh ptb --local DATA: fairseq-preprocess'd PTB in OUT/data-bin."""
    # prepare.sh calls fairseq-preprocess: the one of this Python's environment, activated or not
    path = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    subprocess.run(["bash", str(REPO / "examples/language_model/prepare.sh"), "ptb",
                    "--local", str(args.data), "--out", str(args.out), "--workers", "2"],
                   check=True, env=dict(os.environ, PATH=path))


def train_arguments(args, run):
    arch = "transformer_lm_mos" if is_mos(run.layer) else "transformer_lm_mixtape"
    layer_args = variant_arguments(run.layer, args.components, args.context_scale)
    return [
        args.out / "data-bin", "--task", "language_modeling", "--arch", arch, *layer_args,
        "--decoder-layers", args.decoder_layers, "--decoder-embed-dim", args.dim,
        "--decoder-input-dim", args.embed_dim, "--decoder-output-dim", args.embed_dim,
        "--decoder-ffn-embed-dim", args.ffn_dim, "--decoder-attention-heads", 4,
        "--share-decoder-input-output-embed", "--dropout", args.dropout,
        "--criterion", "output_layer_cross_entropy",
        "--tokens-per-sample", args.tokens_per_sample, "--sample-break-mode", "none",
        "--batch-size", args.batch_size, "--required-batch-size-multiple", 1,
        "--max-update", args.updates, "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)",
        "--lr", args.lr, "--clip-norm", 1.0,
        "--lr-scheduler", "polynomial_decay", "--warmup-updates", max(1, args.updates // 20),
        "--total-num-update", args.updates, "--end-learning-rate", 0.0,
        "--log-interval", max(1, args.updates // 10), "--log-format", "simple",
        "--disable-validation", "--no-epoch-checkpoints", "--num-workers", 0, "--cpu"]


def train(args, run):
    return run.train(train_arguments(args, run), args.updates, args.threads)


def write_table(args, runs):
    by_layer = {layer: [r for r in runs if r.layer == layer] for layer in args.layers}
    softmax = by_layer.get("softmax", [])
    lines = [
        f"PTB, Transformer LM {args.decoder_layers} layers of width d = {args.dim} (FFN "
        f"{args.ffn_dim}), tied {args.embed_dim}-d embeddings, K = {args.components}, "
        f"context scale {scale_text(args.context_scale)}, {args.updates} updates of {args.batch_size} x "
        f"{args.tokens_per_sample} tokens, "
        f"{seeds_text(args.seeds, args.mos_seeds, args.layers)}; "
        f"mean ± half the range over seeds.",
        "",
        "| output layer | params | valid ppl | test ppl | test vs softmax | train time (s) "
        "| time vs softmax | rank (numerical / 1e-3 / 1e-4 / 1e-5) |",
        "|---|---:|---:|---:|---:|---:|---:|---|"]
    for layer, group in by_layer.items():
        test, seconds = values_of(group, "test_ppl"), values_of(group, "train_seconds")
        params = values_of(group, "parameters")
        params = f"{int(params[0]):,}" if params else "-"
        lines.append(
            f"| {layer} | {params} | {format_mean(values_of(group, 'valid_ppl'))} "
            f"| {format_mean(test)} "
            f"| {format_mean(relative_to(test, values_of(softmax, 'test_ppl'), True), 1)}% "
            f"| {format_mean(seconds, 0)} "
            f"| {format_mean(relative_to(seconds, values_of(softmax, 'train_seconds')))}x "
            f"| {rank_cell(group)} |")
    write_results(runs, lines, args.results_dir, "ptb", args.seeds[0],
                  f"PTB test log-prob matrix ({args.rank_contexts} contexts), seed "
                  f"{args.seeds[0]}; dotted: d + 1")


def main(argv=None):
    args = parse_args(argv)
    started = start_experiment(args, prepare)
    runs = plan(args)
    for run in runs:
        if "train" in args.stages:
            run.step("train_seconds", lambda: train(args, run),
                     f"fairseq-train ({args.updates} updates)")
        if "eval" in args.stages:
            for subset in ("valid", "test"):
                run.step(f"{subset}_ppl", lambda: evaluate_lm(
                    run, args.out / "data-bin", subset, args.tokens_per_sample, args.threads),
                         f"fairseq-eval-lm --gen-subset {subset}")
        if "rank" in args.stages:
            run.step("rank", lambda: measure_rank(run, args.out / "data-bin", args.rank_contexts),
                     "log-probability matrix rank")
    return finish_experiment(args, runs, write_table, started)

