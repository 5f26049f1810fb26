#!/usr/bin/env python
"""Multi30k English-German: softmax vs MoS vs Mixtape on the same small Transformer, the same
budget (updates, batch, schedule) and the same seeds; detokenized SacreBLEU on test_2016_flickr.

Steps (each finished one is skipped when the script is run again, so it can be interrupted):
  prepare  a joint sentencepiece BPE model on the training text of both languages, the splits
           encoded with it, fairseq-preprocess --joined-dictionary into OUT/data-bin
  train    fairseq-train, one run per (output layer, seed), in OUT/runs/LAYER_seedS/
  generate fairseq-generate --gen-subset test (beam 5), sentencepiece removed, scored against
           the raw reference with sacrebleu (its default 13a tokenization)
  rank     the log-probability matrix of each checkpoint on test (fairseq_mixtape_tools.bottleneck)
  table    RESULTS_DIR/multi30k.md (mean and spread over seeds) and multi30k.json

Everything runs through fairseq's command-line tools with --user-dir fairseq_mixtape, one torch
thread per process by default. Example (about an hour on 2 cores):
  python examples/translation/multi30k_experiment.py --data ../shared/data/multi30k-en-de \\
      --out runs/multi30k
"""

import argparse
import math
import pathlib
import re
import shutil
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fairseq_mixtape_tools.experiments import (  # noqa: E402
    format_mean, measure_rank, plan_runs, rank_cell, relative_to, scale_text, seeds_text,
    values_of, write_results)
from fairseq_mixtape_tools.runner import PACKAGE_DIR, run_tool  # noqa: E402

LAYERS = ("softmax", "mixtape", "mos")
STAGES = ("prepare", "train", "generate", "rank", "table")
SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}  # fairseq: Multi30k


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path,
                        default=REPO.parent / "shared/data/multi30k-en-de",
                        help="folder with raw {train,val,test_2016_flickr}.{en,de}")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/multi30k"),
                        help="work folder: sentencepiece model, data-bin, runs/")
    parser.add_argument("--results-dir", type=pathlib.Path,
                        default=REPO / "examples/translation/results",
                        help="where multi30k.md and multi30k.json go")
    parser.add_argument("--layers", default=",".join(LAYERS), help="output layers to compare")
    parser.add_argument("--seeds", default="1,2", help="training seeds")
    parser.add_argument("--mos-seeds", default="1",
                        help="seeds of the MoS runs (each costs about K softmax runs here)")
    parser.add_argument("--stages", default=",".join(STAGES), help="steps to run, in order")
    parser.add_argument("--vocab-size", type=int, default=8000,
                        help="joint sentencepiece BPE vocabulary")
    parser.add_argument("--dim", type=int, default=128, help="d: embeddings and model width")
    parser.add_argument("--ffn-dim", type=int, default=512)
    parser.add_argument("--layers-per-stack", type=int, default=3,
                        help="encoder layers = decoder layers")
    parser.add_argument("--components", type=int, default=4, help="K of MoS and Mixtape")
    parser.add_argument("--context-scale", type=float, default=None,
                        help="--output-context-scale of MoS and Mixtape (default: the plugin's, "
                             "matched to softmax's initial spread; 1 = the papers)")
    parser.add_argument("--updates", type=int, default=400, help="updates per run")
    parser.add_argument("--max-tokens", type=int, default=2048, help="tokens per batch")
    parser.add_argument("--lr", type=float, default=0.002,
                        help="Adam peak learning rate (linear warm-up, then linear decay to 0)")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--rank-contexts", type=int, default=2000,
                        help="target positions (rows) of the log-probability matrix")
    args = parser.parse_args(argv)
    args.layers = args.layers.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.mos_seeds = [int(s) for s in args.mos_seeds.split(",")]
    args.stages = args.stages.split(",")
    unknown = set(args.stages) - set(STAGES)
    if unknown:
        parser.error(f"--stages: unknown {sorted(unknown)}; choose from {', '.join(STAGES)}")
    return args


def prepare(args):
    """Joint sentencepiece BPE, encoded splits, fairseq-preprocess --joined-dictionary."""
    import sentencepiece as spm

    bin_dir, spm_dir = args.out / "data-bin", args.out / "spm"
    if (bin_dir / "test.en-de.de.bin").is_file():
        print(f"    prepare: done already ({bin_dir})", flush=True)
        return
    for split in SPLITS.values():
        for lang in ("en", "de"):
            if not (args.data / f"{split}.{lang}").is_file():
                sys.exit(f"--data: {args.data / f'{split}.{lang}'} missing (need raw Multi30k "
                         f"{{train,val,test_2016_flickr}}.{{en,de}})")
    spm_dir.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=[str(args.data / f"train.{lang}") for lang in ("en", "de")],
        model_prefix=str(spm_dir / "spm"), vocab_size=args.vocab_size, model_type="bpe",
        character_coverage=1.0, num_threads=2, bos_id=-1, eos_id=-1, unk_id=0,
        minloglevel=2)
    model = spm.SentencePieceProcessor(model_file=str(spm_dir / "spm.model"))
    for ours, theirs in SPLITS.items():
        for lang in ("en", "de"):
            lines = (args.data / f"{theirs}.{lang}").read_text().splitlines()
            pieces = model.encode(lines, out_type=str)
            (spm_dir / f"{ours}.{lang}").write_text("".join(" ".join(p) + "\n" for p in pieces))
    if bin_dir.exists():
        shutil.rmtree(bin_dir)
    run_tool("preprocess", [
        "--source-lang", "en", "--target-lang", "de", "--trainpref", spm_dir / "train",
        "--validpref", spm_dir / "valid", "--testpref", spm_dir / "test", "--destdir", bin_dir,
        "--joined-dictionary", "--workers", 2], args.out / "preprocess.log")


def train_arguments(args, layer):
    arch = "transformer_mos" if layer.startswith("mos") else "transformer_mixtape"
    layer_args = ["--output-layer", layer]
    if layer in ("mos", "mixtape", "mos_sigsoftmax"):
        layer_args += ["--output-components", args.components]
        if args.context_scale is not None:
            layer_args += ["--output-context-scale", args.context_scale]
    model = []
    for side in ("encoder", "decoder"):
        model += [f"--{side}-layers", args.layers_per_stack, f"--{side}-embed-dim", args.dim,
                  f"--{side}-ffn-embed-dim", args.ffn_dim, f"--{side}-attention-heads", 4,
                  f"--{side}-normalize-before"]  # pre-norm: stable at a short warm-up
    return [
        args.out / "data-bin", "--task", "translation", "--source-lang", "en",
        "--target-lang", "de", "--arch", arch, *layer_args, *model, "--share-all-embeddings",
        "--dropout", args.dropout, "--criterion", "output_layer_label_smoothed_cross_entropy",
        "--label-smoothing", 0.1, "--max-tokens", args.max_tokens, "--max-update", args.updates,
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", args.lr,
        "--clip-norm", 1.0, "--lr-scheduler", "polynomial_decay",
        "--warmup-updates", max(1, args.updates // 10), "--total-num-update", args.updates,
        "--end-learning-rate", 0.0, "--log-interval", max(1, args.updates // 12),
        "--log-format", "simple", "--disable-validation", "--no-epoch-checkpoints",
        "--num-workers", 0, "--cpu"]


def generate(args, run):
    output = run_tool("generate", [
        args.out / "data-bin", "--path", run.checkpoint, "--user-dir", PACKAGE_DIR,
        "--task", "translation", "--source-lang", "en", "--target-lang", "de",
        "--gen-subset", "test", "--beam", args.beam, "--max-len-a", 1.5, "--max-len-b", 10,
        "--batch-size", 64,
        "--required-batch-size-multiple", 1, "--remove-bpe", "sentencepiece",
        "--num-workers", 0, "--cpu"], run.dir / "generate_test.log", threads=args.threads)
    hypotheses = dict((int(i), text) for i, text in
                      re.findall(r"^D-(\d+)\t[^\t]*\t(.*)$", output, flags=re.M))
    references = (args.data / f"{SPLITS['test']}.de").read_text().splitlines()
    if len(hypotheses) != len(references):
        raise RuntimeError(f"{run.dir / 'generate_test.log'}: {len(hypotheses)} hypotheses "
                           f"for {len(references)} references")
    (run.dir / "test.hyp.de").write_text(
        "".join(hypotheses[i] + "\n" for i in range(len(references))))
    import sacrebleu

    metric = sacrebleu.BLEU()
    bleu = metric.corpus_score([hypotheses[i] for i in range(len(references))], [references])
    return {"test_bleu": bleu.score, "bleu": str(bleu),
            "bleu_signature": str(metric.get_signature())}


def write_table(args, runs):
    by_layer = {layer: [r for r in runs if r.layer == layer] for layer in args.layers}
    softmax = by_layer.get("softmax", [])
    signature = next((r.result["bleu_signature"] for r in runs if "bleu_signature" in r.result),
                     "-")
    lines = [
        f"Multi30k En-De, Transformer {args.layers_per_stack}+{args.layers_per_stack} layers, "
        f"d = {args.dim} (FFN {args.ffn_dim}, all embeddings shared), joint sentencepiece BPE "
        f"{args.vocab_size}, K = {args.components}, context scale {scale_text(args.context_scale)}, "
        f"{args.updates} updates of <= {args.max_tokens} tokens, beam {args.beam}; "
        f"{seeds_text(args.seeds, args.mos_seeds, args.layers)}; "
        f"mean ± half the range over seeds. SacreBLEU {signature}.",
        "",
        "| output layer | params | test BLEU | vs softmax | train time (s) | time vs softmax "
        "| rank (numerical / 1e-3 / 1e-4 / 1e-5) |",
        "|---|---:|---:|---:|---:|---:|---|"]
    for layer, group in by_layer.items():
        bleu, seconds = values_of(group, "test_bleu"), values_of(group, "train_seconds")
        softmax_bleu = statistics.fmean(values_of(softmax, "test_bleu") or [math.nan])
        params = values_of(group, "parameters")
        params = f"{int(params[0]):,}" if params else "-"
        lines.append(f"| {layer} | {params} | {format_mean(bleu)} "
                     f"| {format_mean([b - softmax_bleu for b in bleu])} "
                     f"| {format_mean(seconds, 0)} "
                     f"| {format_mean(relative_to(seconds, values_of(softmax, 'train_seconds')))}x "
                     f"| {rank_cell(group)} |")
    write_results(runs, lines, args.results_dir, "multi30k", args.seeds[0],
                  f"Multi30k test log-prob matrix ({args.rank_contexts} target positions), "
                  f"seed {args.seeds[0]}; dotted: d + 1")


def main(argv=None):
    args = parse_args(argv)
    started = time.monotonic()
    if "prepare" in args.stages:
        prepare(args)
    runs = plan_runs(args.out / "runs", args.layers, args.seeds, args.mos_seeds)
    for run in runs:
        if "train" in args.stages:
            run.step("train_seconds",
                     lambda: run.train(train_arguments(args, run.layer), args.updates,
                                       args.threads),
                     f"fairseq-train ({args.updates} updates)")
        if "generate" in args.stages:
            run.step("test_bleu", lambda: generate(args, run), "fairseq-generate + sacrebleu")
        if "rank" in args.stages:
            run.step("rank", lambda: measure_rank(run, args.out / "data-bin", args.rank_contexts),
                     "log-probability matrix rank")
    if "table" in args.stages:
        write_table(args, runs)
    print(f"done in {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
