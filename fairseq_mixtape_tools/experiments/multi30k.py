"""Multi30k English-German, trained to convergence: softmax vs Mixtape vs the no-mixture control
(Mixtape with K = 1) vs MoS on the same Transformer, with the same budget (epochs, batch,
schedule) and the same seeds; detokenized SacreBLEU on test_2016_flickr and any further test sets.

Steps (each finished one is skipped when the script is run again; an interrupted training run
resumes from its last checkpoint):
  prepare  a joint sentencepiece BPE model on the training text of both languages, the splits
           encoded with it, fairseq-preprocess --joined-dictionary into OUT/data-bin
  train    fairseq-train for --max-epochs epochs (inverse square-root schedule after a linear
           warm-up; validation loss every epoch; an epoch checkpoint every epoch), one run per
           (output layer, seed), in OUT/runs/LAYER_seedS/
  average  the average of the last --average epoch checkpoints: the evaluated model
  tune     the length penalty: the one of --lenpens with the best BLEU on the validation set, for
           the softmax run of the first seed only; then used unchanged for every run (a wider
           --lenpens later scores only the new penalties, and a run scored with a penalty that
           is no longer the best is generated again)
  generate fairseq-generate with beam --beam and the tuned length penalty on test_2016_flickr and
           every --test-sets NAME (NAME.en/NAME.de in --data), sentencepiece removed, scored
           against the raw reference with sacrebleu (13a): one BLEU line per test set
  rank     the log-probability matrix of the averaged model on test (fairseq_mixtape_tools.bottleneck)
  table    RESULTS_DIR/multi30k.md (mean and spread over seeds), multi30k.json and the length
           penalty tuning, multi30k_lenpen.json (--restore takes finished runs and the tuning
           back from these two files where a fresh work tree lacks them)

Everything runs through fairseq's command-line tools with --user-dir fairseq_mixtape, one torch
thread per process by default; --jobs runs several trainings at once. The default run (softmax
and Mixtape with 3 seeds, the control with 1) takes about 15-20 core-hours: an epoch of the
softmax run costs 5.6 core-minutes on an idle core (1.9 core-hours for 20 epochs); one such run
took 3.7 hours on a shared 2-core machine; the mixtures cost more per epoch. MoS (--layers
softmax,mixtape,control,mos; --mos-seeds) costs about 4.5 softmax runs per seed:
  python examples/translation/multi30k_experiment.py --data ../shared/data/multi30k-en-de \\
      --out runs/multi30k --jobs 1
"""

import argparse
import json
import math
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import threading

from ..arguments import ArgumentParser, check_counts, check_data_dir, comma_list
from ..runner import PACKAGE_DIR, run_tool, say
from .common import (
    OUTPUT_VARIANTS, REPO, Run, add_experiment_flags, check_experiment_flags, finish_experiment,
    format_mean, is_mos, measure_rank, plan_runs, rank_cell, restore_finished, run_in_parallel,
    scale_text, seconds_per_epoch, seeds_cell, start_experiment, values_of, variant_arguments,
    write_results)

LAYERS = ("softmax", "mixtape", "control")  # MoS on request: --layers softmax,...,mos
STAGES = ("prepare", "train", "average", "tune", "generate", "rank", "table")
SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}  # fairseq: Multi30k
TEST = SPLITS["test"]


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path,
                        default=REPO.parent / "shared/data/multi30k-en-de",
                        help="folder with raw {train,val,test_2016_flickr}.{en,de}")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/multi30k"),
                        help="work folder: sentencepiece model, data-bin, runs/")
    parser.add_argument("--results-dir", type=pathlib.Path,
                        default=REPO / "examples/translation/results",
                        help="where multi30k.md and multi30k.json go")
    parser.add_argument("--layers", default=",".join(LAYERS),
                        help=f"output layers to compare, from {', '.join(OUTPUT_VARIANTS)} "
                        f"(default: {','.join(LAYERS)}; mos, which costs several softmax runs, "
                        "is left out of the default run's budget)")
    parser.add_argument("--seeds", default="1,2,3",
                        help="training seeds (all layers but control and mos)")
    parser.add_argument("--control-seeds", default="1",
                        help="seeds of the control (Mixtape with K = 1)")
    parser.add_argument("--mos-seeds", default="1",
                        help="seeds of the MoS runs (each costs several softmax runs)")
    parser.add_argument("--test-sets", type=comma_list(str), default=[],
                        help="more test sets to score, NAME.en/NAME.de in --data (e.g. "
                             "test_2017_flickr,test_2017_mscoco,test_2018_flickr)")
    add_experiment_flags(parser, "--stages", "--jobs", stages=list(STAGES))
    parser.add_argument("--restore", action="store_true",
                        help="a run whose folder is missing (a fresh work tree) but whose "
                             "finished numbers RESULTS_DIR/multi30k.json holds is taken from it, "
                             "not trained again, and the length penalty from "
                             "multi30k_lenpen.json (those files must come from the same "
                             "settings)")
    parser.add_argument("--vocab-size", type=int, default=8000,
                        help="joint sentencepiece BPE vocabulary")
    parser.add_argument("--dim", type=int, default=128, help="d: embeddings and model width")
    add_experiment_flags(parser, "--ffn-dim")
    parser.add_argument("--layers-per-stack", type=int, default=3,
                        help="encoder layers = decoder layers")
    add_experiment_flags(parser, "--context-scale", "--max-epochs", max_epochs=20)
    parser.add_argument("--max-update", type=int, default=0,
                        help="stop a run after this many updates as well (0: no limit)")
    parser.add_argument("--max-tokens", type=int, default=2048, help="tokens per batch")
    parser.add_argument("--lr", type=float, default=0.002,
                        help="Adam peak learning rate (linear warm-up, then inverse square root)")
    add_experiment_flags(parser, "--warmup-updates", "--dropout", warmup_updates=800, dropout=0.2)
    parser.add_argument("--average", type=int, default=5,
                        help="the evaluated model averages the last N epoch checkpoints")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--lenpens", type=comma_list(float),
                        default=[0.6, 1.0, 1.4, 1.8, 2.2, 2.6, 3.0],
                        help="length penalties tried on the validation set (softmax, first "
                             "seed); a later, wider list scores only the new ones")
    add_experiment_flags(parser, "--threads", "--rank-contexts", helps={
        "--rank-contexts": "target positions (rows) of the log-probability matrix"})
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser, args):
    """Refuse bad values before any work, naming the flag, the value and what is allowed."""
    check_experiment_flags(parser, args, STAGES)
    check_counts(parser, args, [
        "--vocab-size", "--dim", "--ffn-dim", "--layers-per-stack", "--max-epochs",
        "--max-tokens", "--warmup-updates", "--average", "--beam"])
    if args.max_update < 0:
        parser.error(f"--max-update: got {args.max_update}; allowed: 0 (no limit) or a whole "
                     "number >= 1")
    if not args.lenpens:
        parser.error("--lenpens: got ''; allowed: at least one length penalty")
    needed = [f"{name}.{lang}" for name in args.test_sets for lang in ("en", "de")]
    if "prepare" in args.stages:
        needed += [f"{split}.{lang}" for split in SPLITS.values() for lang in ("en", "de")]
    if {"tune", "generate"} & set(args.stages):  # the references
        needed += [f"{SPLITS['valid']}.de", f"{TEST}.de"]
    if needed:
        check_data_dir(parser, args.data, "--data", [sorted(set(needed))])


def plan(args):
    """Seed by seed in increasing order, every layer, each only for its seeds (the control's
    and MoS's own); MoS last (plan_runs)."""
    seeds = sorted({seed for layer in args.layers for seed in seeds_of(args, layer)})
    return plan_runs(seeds, args.layers, lambda layer: seeds_of(args, layer),
                     lambda layer, seed: run_for(args, layer, seed))


def seeds_of(args, layer):
    if layer == "control":
        return args.control_seeds
    return args.mos_seeds if is_mos(layer) else args.seeds


def run_for(args, layer, seed):
    return Run(args.out / "runs", layer, seed)


def prepare(args):
    """Joint sentencepiece BPE, encoded splits, fairseq-preprocess --joined-dictionary."""
    import sentencepiece as spm

    bin_dir, spm_dir = args.out / "data-bin", args.out / "spm"
    if (bin_dir / "test.en-de.de.bin").is_file():
        print(f"    prepare: done already ({bin_dir})", flush=True)
        return
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


def prepare_test_set(args, name: str) -> pathlib.Path:
    """A further test set NAME.{en,de}, encoded with the BPE model and binarized with the
    training dictionary, in OUT/test-bin/NAME (split "test")."""
    import sentencepiece as spm

    bin_dir, spm_dir = args.out / "test-bin" / name, args.out / "spm"
    if (bin_dir / "test.en-de.de.bin").is_file():
        return bin_dir
    model = spm.SentencePieceProcessor(model_file=str(spm_dir / "spm.model"))
    for lang in ("en", "de"):
        pieces = model.encode((args.data / f"{name}.{lang}").read_text().splitlines(),
                              out_type=str)
        (spm_dir / f"{name}.{lang}").write_text("".join(" ".join(p) + "\n" for p in pieces))
    run_tool("preprocess", [
        "--source-lang", "en", "--target-lang", "de", "--testpref", spm_dir / name,
        "--destdir", bin_dir, "--srcdict", args.out / "data-bin/dict.en.txt",
        "--tgtdict", args.out / "data-bin/dict.de.txt", "--workers", 1],
        args.out / f"preprocess_{name}.log")
    return bin_dir


def train_arguments(args, run):
    layer_args = variant_arguments(run.layer, context_scale=args.context_scale)
    model = []
    for side in ("encoder", "decoder"):
        model += [f"--{side}-layers", args.layers_per_stack, f"--{side}-embed-dim", args.dim,
                  f"--{side}-ffn-embed-dim", args.ffn_dim, f"--{side}-attention-heads", 4,
                  f"--{side}-normalize-before"]  # pre-norm: stable at a short warm-up
    limit = ["--max-update", args.max_update] if args.max_update else []
    return [
        args.out / "data-bin", "--task", "translation", "--source-lang", "en",
        "--target-lang", "de", "--arch", "transformer_mixtape", *layer_args, *model,
        "--share-all-embeddings", "--dropout", args.dropout,
        "--criterion", "output_layer_label_smoothed_cross_entropy", "--label-smoothing", 0.1,
        "--max-tokens", args.max_tokens, "--max-epoch", args.max_epochs, *limit,
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", args.lr,
        "--clip-norm", 1.0, "--lr-scheduler", "inverse_sqrt",
        "--warmup-updates", args.warmup_updates, "--warmup-init-lr", 1e-7,
        "--log-interval", 50, "--log-format", "simple", "--save-interval", 1,
        "--keep-last-epochs", args.average, "--save-interval-updates", 500,
        "--keep-interval-updates", 1, "--num-workers", 0, "--cpu"]


def train(args, run):
    return run.train(train_arguments(args, run), args.max_update or 0, args.threads)


def averaged(run: Run) -> pathlib.Path:
    return run.dir / "checkpoint.averaged.pt"


def average(args, run):
    """The average of the last --average epoch checkpoints (fewer if fewer epochs ended; the
    last checkpoint itself if --max-update stopped the run inside its first epoch)."""
    epochs = sorted(int(m.group(1)) for path in run.dir.glob("checkpoint*.pt")
                    if (m := re.fullmatch(r"checkpoint(\d+)\.pt", path.name)))
    count = min(args.average, len(epochs))
    if count == 0:
        shutil.copyfile(run.checkpoint, averaged(run))
        return {"averaged_epochs": []}
    subprocess.run([sys.executable, str(REPO / "scripts/average_checkpoints.py"),
                    "--inputs", str(run.dir), "--num-epoch-checkpoints", str(count),
                    "--output", str(averaged(run))], check=True, capture_output=True)
    return {"averaged_epochs": epochs[-count:]}


def translate(args, run, data_dir, subset, references_path, lenpen, log_name):
    """fairseq-generate on ``subset`` of ``data_dir`` with the averaged model; returns the
    detokenized hypotheses in order and sacrebleu's corpus BLEU against the raw references."""
    import sacrebleu

    output = run_tool("generate", [
        data_dir, "--path", averaged(run), "--user-dir", PACKAGE_DIR,
        "--task", "translation", "--source-lang", "en", "--target-lang", "de",
        "--gen-subset", subset, "--beam", args.beam, "--lenpen", lenpen,
        "--max-len-a", 1.5, "--max-len-b", 10, "--batch-size", 64,
        "--required-batch-size-multiple", 1, "--remove-bpe", "sentencepiece",
        "--num-workers", 0, "--cpu"], run.dir / log_name, threads=args.threads)
    hypotheses = dict((int(i), text) for i, text in
                      re.findall(r"^D-(\d+)\t[^\t]*\t(.*)$", output, flags=re.M))
    references = references_path.read_text().splitlines()
    if len(hypotheses) != len(references):
        raise RuntimeError(f"{run.dir / log_name}: {len(hypotheses)} hypotheses "
                           f"for {len(references)} references")
    ordered = [hypotheses[i] for i in range(len(references))]
    metric = sacrebleu.BLEU()
    return ordered, metric.corpus_score(ordered, [references]), str(metric.get_signature())


TUNING_LOCK = threading.Lock()


def tuned_lenpen(args, runs):
    """The length penalty of --lenpens with the best validation BLEU for the softmax run of the
    first seed; None until that run is averaged. Each penalty's validation BLEU is kept in
    OUT/lenpen.json, so widening --lenpens later scores only the penalties not yet tried."""
    with TUNING_LOCK:
        tuning = read_tuning(args) or {"valid_bleu": {}}
        scores = {float(lenpen): bleu for lenpen, bleu in tuning["valid_bleu"].items()}
        missing = [lenpen for lenpen in args.lenpens if lenpen not in scores]
        if missing:
            reference = next((r for r in runs if r.layer == "softmax"
                              and r.seed == args.seeds[0]), None)
            if reference is None or not averaged(reference).is_file():
                return None
            for lenpen in missing:
                _, bleu, _ = translate(args, reference, args.out / "data-bin", "valid",
                                       args.data / f"{SPLITS['valid']}.de", lenpen,
                                       f"generate_valid_lenpen{lenpen:g}.log")
                scores[lenpen] = bleu.score
                say(f"    tune: softmax seed {reference.seed}, lenpen {lenpen:g}: valid BLEU "
                    f"{bleu.score:.2f}")
            tuning["run"] = reference.dir.name
        best = max(args.lenpens, key=scores.get)
        if missing or best != tuning.get("lenpen"):
            tuning = {"lenpen": best, "valid_bleu": dict(sorted(scores.items())),
                      "run": tuning["run"]}
            tuning_path(args).write_text(json.dumps(tuning, indent=1) + "\n")
        return best


def forget_other_lenpen(run, lenpen):
    """Drop a run's BLEU scores if they were made with another length penalty than ``lenpen``
    (the tuning was widened since), so that the generate step runs again."""
    if run.result.get("lenpen", lenpen) == lenpen:
        return
    say(f"    {run.layer} seed {run.seed}: scored with lenpen {run.result['lenpen']:g}, now "
        f"{lenpen:g}: generating again")
    for key in [k for k in run.result if k == "lenpen" or k.startswith("bleu_")]:
        del run.result[key]
    run.record()


def generate(args, run, lenpen):
    """BLEU of the averaged model on test_2016_flickr and every --test-sets set."""
    result = {"lenpen": lenpen}
    for name in [TEST, *args.test_sets]:
        data_dir = args.out / "data-bin" if name == TEST else prepare_test_set(args, name)
        hypotheses, bleu, signature = translate(args, run, data_dir, "test",
                                                args.data / f"{name}.de", lenpen,
                                                f"generate_{name}.log")
        (run.dir / f"{name}.hyp.de").write_text("".join(h + "\n" for h in hypotheses))
        result.update({f"bleu_{name}": bleu.score, f"bleu_line_{name}": str(bleu)})
        result["bleu_signature"] = signature
    return result


def execute(args, run, runs):
    """Every stage of one run; finished steps are skipped (their values are in result.json)."""
    describe = f"{args.max_epochs} epochs" + (f", <= {args.max_update} updates"
                                               if args.max_update else "")
    if "train" in args.stages:
        run.step("train_seconds", lambda: train(args, run), f"fairseq-train ({describe})")
    if "average" in args.stages and run.checkpoint.is_file():
        run.step("averaged_epochs", lambda: average(args, run),
                 f"average of the last {args.average} epoch checkpoints")
    if "generate" in args.stages and averaged(run).is_file():
        lenpen = tuned_lenpen(args, runs) if "tune" in args.stages else None
        lenpen = lenpen if lenpen is not None else recorded_lenpen(args)
        if lenpen is None:
            say(f"    {run.layer} seed {run.seed}: generate waits for the length penalty "
                "(tuned on the softmax run of the first seed)")
        else:
            forget_other_lenpen(run, lenpen)
            key = f"bleu_{args.test_sets[-1]}" if args.test_sets else f"bleu_{TEST}"
            run.step(key, lambda: generate(args, run, lenpen),
                     f"fairseq-generate (beam {args.beam}, lenpen {lenpen:g}) + sacrebleu")
            for name in [TEST, *args.test_sets]:
                if f"bleu_line_{name}" in run.result:
                    say(f"    {run.layer} seed {run.seed}: {name}: "
                        f"{run.result[f'bleu_line_{name}']}")
    if "rank" in args.stages and averaged(run).is_file():
        run.step("rank", lambda: measure_rank(run, args.out / "data-bin", args.rank_contexts,
                                              averaged(run)),
                 "log-probability matrix rank")


def tuning_path(args) -> pathlib.Path:
    return args.out / "lenpen.json"


def published_tuning_path(args) -> pathlib.Path:
    return args.results_dir / "multi30k_lenpen.json"


def restore(args, runs):
    """--restore: finished runs from RESULTS_DIR/multi30k.json, and OUT/lenpen.json from
    RESULTS_DIR/multi30k_lenpen.json, where the work folder lacks them."""
    restore_finished(runs, args.results_dir / "multi30k.json")
    if not tuning_path(args).is_file() and published_tuning_path(args).is_file():
        tuning_path(args).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(published_tuning_path(args), tuning_path(args))
        print(f"    tune: restored from {published_tuning_path(args)}", flush=True)


def read_tuning(args):
    """OUT/lenpen.json: the chosen ``lenpen``, each tried penalty's ``valid_bleu`` and the
    ``run`` they were scored with; None before the first tuning."""
    path = tuning_path(args)
    return json.loads(path.read_text()) if path.is_file() else None


def recorded_lenpen(args):
    tuning = read_tuning(args)
    return tuning["lenpen"] if tuning else None


def write_table(args, runs):
    by_layer = {layer: [r for r in runs if r.layer == layer] for layer in args.layers}
    softmax = by_layer.get("softmax", [])
    signature = next((r.result["bleu_signature"] for r in runs if "bleu_signature" in r.result),
                     "-")
    test_sets = [TEST, *args.test_sets]
    tuning = read_tuning(args)
    lines = [
        f"Multi30k En-De, Transformer {args.layers_per_stack}+{args.layers_per_stack} layers, "
        f"d = {args.dim} (FFN {args.ffn_dim}, pre-norm, all embeddings shared), joint "
        f"sentencepiece BPE {args.vocab_size}, K = 4 (control: K = 1), context scale "
        f"{scale_text(args.context_scale)}; {args.max_epochs} epochs of <= {args.max_tokens} "
        f"tokens" + (f" (at most {args.max_update} updates)" if args.max_update else "")
        + f", Adam lr {args.lr:g} after {args.warmup_updates} warm-up updates, inverse square "
        f"root decay, dropout {args.dropout:g}, label smoothing 0.1; the average of the last "
        f"{args.average} epoch checkpoints; beam {args.beam}, length penalty "
        + (f"{tuning['lenpen']:g} (best validation BLEU of the softmax run of seed "
           f"{args.seeds[0]} among {', '.join(f'{p:g}' for p in args.lenpens)})"
           if tuning else "-")
        + "; mean ± half the range over seeds. SacreBLEU " + signature + ".",
        "",
        "| output layer | seeds | params | " + " | ".join(f"BLEU {name}" for name in test_sets)
        + f" | {TEST} vs softmax | s / epoch | rank (numerical / 1e-3 / 1e-4 / 1e-5) |",
        "|---|---|---:|" + "---:|" * len(test_sets) + "---:|---:|---|"]
    softmax_bleu = values_of(softmax, f"bleu_{TEST}")
    for layer, group in by_layer.items():
        if not group:
            continue
        params = values_of(group, "parameters")
        bleu = values_of(group, f"bleu_{TEST}")
        reference = statistics.fmean(softmax_bleu) if softmax_bleu else math.nan
        lines.append(
            f"| {layer} | {seeds_cell(group, f'bleu_{TEST}')} "
            f"| {f'{int(params[0]):,}' if params else '-'} | "
            + " | ".join(format_mean(values_of(group, f"bleu_{name}")) for name in test_sets)
            + f" | {format_mean([b - reference for b in bleu])} "
            f"| {format_mean(seconds_per_epoch(group), 0)} | {rank_cell(group)} |")
    write_results(runs, lines, args.results_dir, "multi30k", args.seeds[0],
                  f"Multi30k test log-prob matrix ({args.rank_contexts} target positions), "
                  f"seed {args.seeds[0]}; dotted: d + 1")
    if tuning:  # after write_results, which makes the folder
        published_tuning_path(args).write_text(json.dumps(tuning, indent=1) + "\n")


def main(argv=None):
    args = parse_args(argv)
    started = start_experiment(args, prepare)
    runs = plan(args)
    if args.restore:
        restore(args, runs)
    print(f"{len(runs)} runs, {args.jobs} at a time", flush=True)
    failures = run_in_parallel(runs, lambda run: execute(args, run, runs), args.jobs)
    if "generate" in args.stages and not failures:
        for run in runs:  # those trained before the length penalty was tuned
            execute(args, run, runs)
    return finish_experiment(args, runs, write_table, started, failures)

