"""The softmax bottleneck where it binds: a sweep of the output width E on a word-level corpus
(Penn Treebank by default), every model trained to a plateau with the same budget.

One fixed ``transformer_lm`` body of width d (``--body-dim``) with a tied input/output
embedding of width E (``--decoder-input-dim E --decoder-output-dim E``). Softmax and sigsoftmax
read the body's hidden state g projected linearly to E (fairseq's ``project_out_dim``), so their
log-probability rank is <= E + 1; the mixtures read g itself, as in the papers (their maps of g
take the projection's place; ``--output-layer-reads projection`` puts them after it instead, the
wiring of the plugin before version 0.2.0). The layers compared at each E:

  softmax         log_softmax((P g) . w_x)
  mixtape         Mixtape, K = 4, the plugin's defaults
  control         Mixtape with K = 1: the same tanh context layer (and the scale the defaults give
                  it) without a mixture, so a softmax bottleneck caps it at rank E + 1 too
  sigsoftmax      Kanai et al.'s sigsoftmax (costs what softmax costs; not run by default)
  mos             Mixture of Softmaxes, K = 4 (only at --mos-dims: it costs about K softmaxes)
  mixtape_papers  Mixtape with the papers' unscaled contexts, --output-context-scale 1 (only at
                  --papers-dims)
  mixtape_linear  Mixtape with linear contexts h_k = W_k g + e_k, --output-context-activation
                  linear (not the papers' layer; not run by default; only at --linear-dims
                  where that is given)

Every run: --max-epochs epochs, Adam with linear warm-up and linear decay to 0 at the last update,
validation every epoch, checkpoints every epoch and every --save-updates updates (a rerun resumes
unfinished runs from them and skips finished steps; with --restore, a fresh work tree takes the
finished runs from the committed sweep.json). Each run's result.json records its settings (the
wiring, the epochs, the plugin's commit): a run folder recorded with other settings is refused.
``--reuse OLD/sweep.json`` takes, from a sweep with the other wiring, the runs that the wiring
does not change (softmax and sigsoftmax at every E, every layer at the widest E = d, where there
is no projection) instead of training them again. Then fairseq-eval-lm on valid and test
(blocks of --tokens-per-sample tokens, no context beyond the block), the numerical and
eps-effective ranks of the test log-probability matrix, and the results: OUT_RESULTS/sweep.{md,json},
sweep_ppl.png (test perplexity against E), sweep_relative.png (relative to softmax; both with
the mixtures of the --reuse sweep dashed) and sweep_curves.png (every run's validation
perplexity by epoch).

  python examples/language_model/bottleneck_sweep.py --jobs 2        # 15-30 core-hours
  (measured on PTB: 6-11 minutes per epoch of a softmax-cost run with a core to itself, up to
  21 on a shared machine; each of the two MoS-4 runs costs several softmax runs)
  python examples/language_model/bottleneck_sweep.py --dims 16 --layers softmax,mixtape \\
      --max-epochs 1                                                 # a quick look
"""

import argparse
import json
import math
import pathlib
import sys

from ..arguments import ArgumentParser, check_counts, comma_list
from ..runner import run_tool
from .common import (
    OUTPUT_VARIANTS, REPO, Run, add_experiment_flags, check_experiment_flags, evaluate_lm,
    finish_experiment, format_mean, is_mos, mean_and_spread, measure_rank, plan_runs,
    plugin_commit, rank_cell, relative_to, repo_path, restore_finished, run_in_parallel,
    seconds_per_epoch, seeds_cell, start_experiment, values_of, variant_arguments, write_results)

DEFAULT_VARIANTS = ["softmax", "mixtape", "control", "mos", "mixtape_papers"]
EXTRA_SEED_VARIANTS = ("softmax", "mixtape", "control", "mixtape_linear")
SPLIT_NAMES = ("ptb.{}.txt", "{}.txt", "wiki.{}.tokens")
STAGES = ("prepare", "train", "eval", "rank", "table")
RUN_STAGES = {"train", "eval", "rank"}  # the stages that work in a run's folder
WIRINGS = ("hidden", "projection")
UNWIRED = ("softmax", "sigsoftmax")  # layers that read the projection in both wirings
PLATEAU = 2.0  # % improvement of valid perplexity over the last epoch that counts as a plateau


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path, default=REPO.parent / "shared/data/ptb",
                        help="folder with a word-level corpus: train/valid/test files named "
                             + ", ".join(n.format("X") for n in SPLIT_NAMES))
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/sweep_hidden"),
                        help="work folder: data-bin, runs/E*/VARIANT_seedS/")
    parser.add_argument("--results-dir", type=pathlib.Path,
                        default=REPO / "examples/language_model/results/sweep_hidden",
                        help="where sweep.md, sweep.json and the plots go")
    parser.add_argument("--output-layer-reads", choices=WIRINGS, default="hidden",
                        help="what the mixtures read: the body's hidden state (the papers' "
                             "wiring) or its linear projection to E (the wiring before 0.2.0)")
    parser.add_argument("--reuse", type=pathlib.Path,
                        help="sweep.json of a sweep with the other wiring: its finished softmax "
                             "and sigsoftmax runs, and every run at E = --body-dim, are taken "
                             "instead of trained (they must have run --max-epochs epochs)")
    parser.add_argument("--dims", type=comma_list(int), default=[16, 32, 64, 128],
                        help="output widths E")
    parser.add_argument("--layers", default=",".join(DEFAULT_VARIANTS),
                        help=f"output layers, from {', '.join(OUTPUT_VARIANTS)} (default: "
                             f"{','.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--seeds", default="1", help="seeds of every run")
    parser.add_argument("--extra-seeds", default="2",
                        help="more seeds for softmax, mixtape, control and mixtape_linear at the "
                             "smallest E")
    parser.add_argument("--mos-dims", type=comma_list(int), default=[16, 64],
                        help="the E at which mos runs")
    parser.add_argument("--papers-dims", type=comma_list(int), default=[16],
                        help="the E at which mixtape_papers runs")
    parser.add_argument("--linear-dims", type=comma_list(int), default=None,
                        help="the E at which mixtape_linear runs (default: every --dims)")
    add_experiment_flags(parser, "--stages", "--jobs", stages=list(STAGES))
    parser.add_argument("--restore", action="store_true",
                        help="a run whose folder is missing (a fresh work tree) but whose "
                             "finished numbers RESULTS_DIR/sweep.json holds is taken from it, "
                             "not trained again (that file must come from the same settings)")
    add_experiment_flags(parser, "--threads", "--max-epochs", max_epochs=6,
                         helps={"--threads": "torch threads per run"})
    parser.add_argument("--body-dim", type=int, default=128, help="width of the Transformer")
    parser.add_argument("--body-layers", type=int, default=2)
    add_experiment_flags(parser, "--ffn-dim", "--tokens-per-sample", tokens_per_sample=64)
    parser.add_argument("--batch-size", type=int, default=32, help="blocks per update")
    parser.add_argument("--lr", type=float, default=0.002, help="Adam's peak learning rate")
    add_experiment_flags(parser, "--warmup-updates", "--dropout", warmup_updates=200, dropout=0.1)
    parser.add_argument("--clip-norm", type=float, default=1.0,
                        help="the whole gradient's norm is clipped to this (0: not clipped)")
    parser.add_argument("--save-updates", type=int, default=500,
                        help="a mid-epoch checkpoint every N updates, to resume from")
    add_experiment_flags(parser, "--rank-contexts")
    args = parser.parse_args(argv)
    check_args(parser, args)
    args.total_updates = None  # counted from the prepared data when first needed: total_updates
    return args


def check_args(parser, args):
    """Refuse bad values before any work, naming the flag, the value and what is allowed."""
    check_experiment_flags(parser, args, STAGES)
    check_counts(parser, args, [
        "--dims", "--mos-dims", "--papers-dims", "--linear-dims", "--max-epochs", "--body-dim",
        "--body-layers", "--ffn-dim", "--tokens-per-sample", "--batch-size", "--save-updates"])
    if not args.dims:
        parser.error("--dims: got ''; allowed: at least one output width")
    if args.clip_norm < 0:
        parser.error(f"--clip-norm: got {args.clip_norm:g}; allowed: a number >= 0 (0: no "
                     "clipping)")
    if args.reuse is not None:
        args.reused = reused_sweep(parser, args.reuse)
    if "prepare" in args.stages:
        args.corpus = {split: corpus_file(parser, args.data, split)
                       for split in ("train", "valid", "test")}


def reused_sweep(parser, path: pathlib.Path) -> dict:
    """The finished runs of --reuse, read once: {run name: its recorded values}."""
    if not path.is_file():
        parser.error(f"--reuse: no such file {path}; allowed: a sweep.json")
    try:
        saved = json.loads(path.read_text())
    except ValueError as error:
        parser.error(f"--reuse: {path} is not JSON ({error}); allowed: a sweep.json")
    if not isinstance(saved, dict):
        parser.error(f"--reuse: {path} holds a {type(saved).__name__}; allowed: a sweep.json "
                     "(an object of runs by name)")
    return saved


def corpus_file(parser, folder: pathlib.Path, split: str) -> pathlib.Path:
    found = [folder / name.format(split) for name in SPLIT_NAMES
             if (folder / name.format(split)).is_file()]
    if not found:
        parser.error(f"--data: no {split} file in {folder}; allowed: one of "
                     + ", ".join(name.format(split) for name in SPLIT_NAMES))
    return found[0]


def plan(args):
    """Every (E, variant, seed) run: seed by seed (--seeds, then --extra-seeds), every E, every
    variant; MoS last (plan_runs)."""
    seeds = list(dict.fromkeys([*args.seeds, *args.extra_seeds]))
    cells = [(dim, variant) for dim in args.dims for variant in args.layers]
    return plan_runs(seeds, cells, lambda cell: seeds_of(args, *cell),
                     lambda cell, seed: sweep_run(args, *cell, seed))


def only_at(args, variant):
    """The widths ``variant`` runs at, where it runs at fewer than --dims (else None): MoS at
    --mos-dims, mixtape_papers at --papers-dims, mixtape_linear at --linear-dims where given."""
    if is_mos(variant):
        return args.mos_dims
    return {"mixtape_papers": args.papers_dims, "mixtape_linear": args.linear_dims}.get(variant)


def seeds_of(args, dim, variant):
    """--seeds; the extra seeds too for EXTRA_SEED_VARIANTS at the smallest E; none at a width
    that the variant does not run at (only_at)."""
    widths = only_at(args, variant)
    if widths is not None and dim not in widths:
        return []
    extra = variant in EXTRA_SEED_VARIANTS and dim == min(args.dims)
    return [*args.seeds, *args.extra_seeds] if extra else args.seeds


def run_name(dim, variant, seed) -> str:
    """A run's key in sweep.json (and in --reuse's)."""
    return f"E{dim}_{variant}_seed{seed}"


def sweep_run(args, dim, variant, seed):
    run = Run(args.out / "runs" / f"E{dim}", variant, seed, name=run_name(dim, variant, seed))
    run.dim = dim
    return run


def run_for(args, layer, seed):
    return sweep_run(args, args.dims[0], layer, seed)


def prepare(args):
    bin_dir = args.out / "data-bin"
    if (bin_dir / "test.bin").is_file():
        print(f"    prepare: done already ({bin_dir})", flush=True)
        return
    run_tool("preprocess", [
        "--only-source", "--trainpref", args.corpus["train"], "--validpref", args.corpus["valid"],
        "--testpref", args.corpus["test"], "--destdir", bin_dir, "--workers", 1],
        args.out / "preprocess.log")


def updates_per_epoch(args) -> int:
    """fairseq's batches per epoch: blocks of --tokens-per-sample over the whole training
    stream (--sample-break-mode none), --batch-size blocks a batch."""
    from fairseq.data import data_utils

    dataset = data_utils.load_indexed_dataset(str(args.out / "data-bin" / "train"), None)
    blocks = math.ceil(int(dataset.sizes.sum()) / args.tokens_per_sample)
    return math.ceil(blocks / args.batch_size)


def total_updates(args) -> int:
    """Every run's updates: --max-epochs epochs of the prepared data, counted once."""
    if args.total_updates is None:
        args.total_updates = updates_per_epoch(args) * args.max_epochs
    return args.total_updates


def train_arguments(args, run):
    dim, total = run.dim, total_updates(args)
    return [
        args.out / "data-bin", "--task", "language_modeling", "--arch", "transformer_lm_mixtape",
        *variant_arguments(run.layer), "--output-layer-reads", args.output_layer_reads,
        "--decoder-layers", args.body_layers,
        "--decoder-embed-dim", args.body_dim, "--decoder-ffn-embed-dim", args.ffn_dim,
        "--decoder-attention-heads", 4, "--decoder-input-dim", dim, "--decoder-output-dim", dim,
        "--share-decoder-input-output-embed", "--dropout", args.dropout,
        "--criterion", "output_layer_cross_entropy",
        "--tokens-per-sample", args.tokens_per_sample, "--sample-break-mode", "none",
        "--batch-size", args.batch_size, "--required-batch-size-multiple", 1,
        "--max-epoch", args.max_epochs, "--max-update", total,
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", args.lr,
        "--clip-norm", args.clip_norm,
        "--lr-scheduler", "polynomial_decay", "--warmup-updates", args.warmup_updates,
        "--total-num-update", total, "--end-learning-rate", 0.0,
        "--log-interval", 100, "--log-format", "simple", "--no-epoch-checkpoints",
        "--save-interval-updates", args.save_updates, "--keep-interval-updates", 1,
        "--save-interval", 1,
        "--num-workers", 0, "--cpu"]


def train(args, run):
    result = run.train(train_arguments(args, run), total_updates(args), args.threads)
    curve = result.get("valid_ppl_curve", [])
    if len(curve) >= 2:
        result["last_epoch_gain_percent"] = (curve[-2] / curve[-1] - 1) * 100
    return result


def settings(args) -> dict:
    """What a run's numbers depend on beyond its flags, recorded in its result.json."""
    return {"output_layer_reads": args.output_layer_reads, "max_epochs": args.max_epochs,
            "plugin_commit": plugin_commit()}


def reuse_unchanged(args, runs) -> None:
    """Take from ``--reuse`` (a sweep.json of the other wiring) the finished runs that the
    wiring does not change: softmax and sigsoftmax, and every layer at E = d (no projection);
    they are marked ``reused_from`` and not trained. An entry of another length is refused."""
    for run in runs:
        entry = args.reused.get(run.name, {})
        if (run.layer not in UNWIRED and run.dim != args.body_dim) or "rank" not in entry:
            continue
        epochs = len(entry.get("valid_ppl_curve", []))
        if epochs != args.max_epochs:
            raise ValueError(f"--reuse: {args.reuse} holds {run.name} trained for {epochs} "
                             f"epochs; allowed: runs of --max-epochs {args.max_epochs}")
        run.result = {**entry, "reused_from": str(args.reuse)}
        run.reused = True
        print(f"    {run.name}: reused from {args.reuse} (the wiring does not change it)",
              flush=True)


def execute(args, run):
    """Every stage of one run; finished steps are skipped (their values are in result.json)."""
    if getattr(run, "reused", False):
        return
    bin_dir = args.out / "data-bin"
    if RUN_STAGES & set(args.stages):  # a table alone reads the runs, and records nothing
        run.check_settings(args.settings)
    if "train" in args.stages:
        run.step("train_seconds", lambda: train(args, run),
                 f"E = {run.dim}: fairseq-train ({args.max_epochs} epochs, "
                 f"{total_updates(args)} updates)")
    if "eval" in args.stages and run.checkpoint.is_file():
        for subset in ("valid", "test"):
            run.step(f"{subset}_ppl", lambda: evaluate_lm(
                run, bin_dir, subset, args.tokens_per_sample, args.threads),
                f"E = {run.dim}: fairseq-eval-lm --gen-subset {subset}")
    if "rank" in args.stages and run.checkpoint.is_file():
        run.step("rank", lambda: measure_rank(run, bin_dir, args.rank_contexts),
                 f"E = {run.dim}: log-probability matrix rank")


def cell(runs, key, digits=1):
    return format_mean(values_of(runs, key), digits)


def relative(runs, baseline, key="test_ppl"):
    """Each run's value over the baseline runs' mean, as a change in percent."""
    changes = relative_to(values_of(runs, key), values_of(baseline, key), percent=True)
    return format_mean(changes, 1) + "%" if changes else "-"


def plateau_cell(runs):
    gains = values_of(runs, "last_epoch_gain_percent")
    text = "; ".join(f"{g:.1f}" for g in gains) or "-"
    return text + (" (not a plateau)" if any(g >= PLATEAU for g in gains) else "")


def write_table(args, runs):
    by_cell = {}
    for run in runs:
        by_cell.setdefault((run.dim, run.layer), []).append(run)
    lines = [
        f"Output-width sweep on {args.data.name}: transformer_lm body {args.body_layers} layers x "
        f"{args.body_dim} (FFN {args.ffn_dim}), tied E-dim embeddings; softmax and sigsoftmax "
        "read the hidden state projected linearly to E, the mixtures read "
        + ("the hidden state itself (the papers' wiring)" if args.output_layer_reads == "hidden"
           else "that projection (the wiring before 0.2.0)")
        + (f"; runs marked * reused from {repo_path(args.reuse)}" if args.reuse else "")
        + f"; {args.max_epochs} epochs ({total_updates(args)} updates of {args.batch_size} x "
        f"{args.tokens_per_sample} tokens), Adam lr {args.lr:g}, {args.warmup_updates} warm-up "
        f"updates then linear decay to 0, "
        + (f"gradient norm clipped at {args.clip_norm:g}" if args.clip_norm else "no clipping")
        + f", dropout {args.dropout:g}; perplexity from "
        f"fairseq-eval-lm on blocks of {args.tokens_per_sample} tokens (no extra context); "
        f"mean ± half the range over seeds where there are several.",
        "",
        "| E | output layer | seeds | params | valid ppl | test ppl | vs softmax | vs control "
        "| last-epoch valid gain (%) | rank (numerical / 1e-3 / 1e-4 / 1e-5) | gate entropy "
        "(bits) | s / epoch |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    for dim in args.dims:
        softmax, control = by_cell.get((dim, "softmax"), []), by_cell.get((dim, "control"), [])
        for variant in args.layers:
            group = by_cell.get((dim, variant))
            if not group:
                continue
            params = values_of(group, "parameters")
            lines.append(
                f"| {dim} | {variant}{'*' if any(getattr(r, 'reused', False) for r in group) else ''} "
                f"| {seeds_cell(group, 'test_ppl')} "
                f"| {f'{int(params[0]):,}' if params else '-'} | {cell(group, 'valid_ppl')} "
                f"| {cell(group, 'test_ppl')} | {relative(group, softmax)} "
                f"| {relative(group, control)} | {plateau_cell(group)} | {rank_cell(group)} "
                f"| {cell(group, 'mixture_entropy', 3)} "
                f"| {format_mean(seconds_per_epoch(group), 0)} |")
    write_results(runs, lines, args.results_dir, "sweep")
    plot(args, by_cell)
    plot_curves(args, by_cell)


def other_wiring(args) -> dict:
    """{variant: {E: [test ppl by seed]}} of the mixtures in ``--reuse`` (the sweep with the
    other wiring), for the plots' dashed lines, with the seeds that this sweep runs at each E
    (seeds_of); at E = d, where there is no projection, they are the runs that this sweep reuses,
    so each dashed line meets its solid one there."""
    if args.reuse is None:
        return {}
    found = {}
    for variant in args.layers:
        if variant in UNWIRED:
            continue
        for dim in args.dims:
            entries = [args.reused.get(run_name(dim, variant, seed), {})
                       for seed in seeds_of(args, dim, variant)]
            values = [entry["test_ppl"] for entry in entries if "test_ppl" in entry]
            if values:
                found.setdefault(variant, {})[dim] = values
    return found


def plot(args, by_cell):
    """sweep_ppl.png: test perplexity against E; sweep_relative.png: over softmax's. With
    --reuse, the mixtures of the other wiring too, dashed (other_wiring)."""
    from ..bottleneck import pyplot  # when needed: it imports torch

    plt = pyplot()
    softmax = {dim: mean_and_spread(values_of(by_cell.get((dim, "softmax"), []), "test_ppl"))
               for dim in args.dims}
    colours = {variant: f"C{i}" for i, variant in enumerate(args.layers)}
    other = ("after the projection" if args.output_layer_reads == "hidden"
             else "reading the hidden state")
    series = [(variant, colours[variant], "-", {
        dim: values_of(by_cell.get((dim, variant), []), "test_ppl") for dim in args.dims})
        for variant in args.layers]
    series += [(f"{variant}, {other}", colours[variant], "--", values)
               for variant, values in other_wiring(args).items()]
    for name, relative_to_softmax in (("sweep_ppl", False), ("sweep_relative", True)):
        fig, ax = plt.subplots(figsize=(8.4, 4.4))
        for label, colour, linestyle, values in series:
            points = []
            for dim in args.dims:
                summary = mean_and_spread(values.get(dim, []))
                if summary is None or (relative_to_softmax and softmax[dim] is None):
                    continue
                mean, spread = summary
                if relative_to_softmax:
                    mean, spread = mean / softmax[dim][0], spread / softmax[dim][0]
                points.append((dim, mean, spread))
            if points:
                dims, means, spreads = zip(*points)
                ax.errorbar(dims, means, yerr=spreads, marker="o", capsize=3, label=label,
                            color=colour, linestyle=linestyle)
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.dims, [str(d) for d in args.dims])
        ax.set_xlabel("output width E (softmax rank <= E + 1)")
        ax.set_ylabel("test perplexity / softmax's" if relative_to_softmax else "test perplexity")
        if relative_to_softmax:
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(f"{args.data.name}: output-width sweep, {args.max_epochs} epochs")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        fig.savefig(args.results_dir / f"{name}.png", dpi=120)
        plt.close(fig)


def plot_curves(args, by_cell):
    """sweep_curves.png: every run's validation perplexity by epoch, one panel per E."""
    from ..bottleneck import pyplot  # when needed: it imports torch

    plt = pyplot()
    fig, axes = plt.subplots(1, len(args.dims), figsize=(3.2 * len(args.dims), 3.6),
                             squeeze=False)
    colours = {variant: f"C{i}" for i, variant in enumerate(args.layers)}
    for ax, dim in zip(axes[0], args.dims):
        for variant in args.layers:
            for run in by_cell.get((dim, variant), []):
                curve = run.result.get("valid_ppl_curve")
                if curve:
                    ax.plot(range(1, len(curve) + 1), curve, marker=".", color=colours[variant],
                            linestyle="-" if run.seed == args.seeds[0] else "--",
                            label=f"{variant} seed {run.seed}")
        ax.set_yscale("log")
        ax.set_title(f"E = {dim}")
        ax.set_xlabel("epoch")
        if ax.has_data():
            ax.legend(fontsize=6)
    axes[0][0].set_ylabel("valid perplexity")
    fig.suptitle(f"{args.data.name}: validation perplexity by epoch", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.results_dir / "sweep_curves.png", dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    started = start_experiment(args, prepare)
    total = total_updates(args)
    args.settings = settings(args)  # once: the plugin's commit asks git
    runs = plan(args)
    if args.restore:
        restore_finished(runs, args.results_dir / "sweep.json")
    if args.reuse:
        try:
            reuse_unchanged(args, runs)
        except ValueError as error:
            print(error, file=sys.stderr, flush=True)
            return 2
    print(f"{len(runs)} runs, {total} updates each, {args.jobs} at a time", flush=True)
    failures = run_in_parallel(runs, lambda run: execute(args, run), args.jobs)
    return finish_experiment(args, runs, write_table, started, failures)

