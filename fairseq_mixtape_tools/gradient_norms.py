"""Where the gradient of an experiment's first updates lies: its norm before clipping, split
into the body and each part of the output layer, for each output layer, on the experiment's own
network, data, optimiser and learning-rate schedule (its fairseq-train command, stopped after
--updates updates; nothing is saved).

With the parameters split into groups G, the gradient norm fairseq clips is

    ||g||^2 = sum_G ||g_G||^2,    share(G) = ||g_G||^2 / ||g||^2

and clipping scales every group by min(1, --clip-norm / ||g||): where an output layer's own
parameters carry most of ||g||, the body's gradient is scaled down with them (under Adam, which
divides each parameter's step by its running gradient scale, this reweights the updates over
time rather than shrinking every step alike). Groups: ``embeddings`` (the token embedding, tied
with the output layer's word vectors w_x), ``body`` (every other parameter outside the output
layer) and ``output: NAME`` for each parameter of the output layer (Mixtape: ``context`` (H_k,
e_k), ``shared_gate`` (u_j), ``gate_hidden`` (U_j, a_j), ``gate_embed`` (v_x), ``gate_bias``
(b_x,j)).

    python scripts/gradient_norms.py --experiment sweep --experiment-args '--dims 16'
    python scripts/gradient_norms.py --experiment multi30k --updates 300

The experiment's data must be prepared (its ``prepare`` stage, under its --out); its flags go
in --experiment-args, as that script takes them.
"""

import argparse
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict

from .arguments import ArgumentParser, check_counts, parse_layers
from .experiments import multi30k, sweep
from .experiments.common import OUTPUT_VARIANTS, REPO
from .runner import PACKAGE_DIR

# The measuring process imports these tools from the checkout (REPO), as this process does.

EXPERIMENTS = {"sweep": sweep, "multi30k": multi30k}
SCRIPTS = {"sweep": "examples/language_model/bottleneck_sweep.py",  # that launch them
           "multi30k": "examples/translation/multi30k_experiment.py"}


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", choices=sorted(EXPERIMENTS), default="sweep")
    parser.add_argument("--experiment-args", default="",
                        help="the experiment script's own flags (--out, --dims, model sizes); "
                             "the sweep's first --dims value is the E measured")
    parser.add_argument("--layers", default="softmax,mixtape,control",
                        help="output layers, as the experiments name them: "
                             + ", ".join(OUTPUT_VARIANTS))
    parser.add_argument("--updates", type=int, default=200, help="updates measured per layer")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=pathlib.Path, default=None,
                        help="write every update's group norms here")
    parser.add_argument("--window", type=int, default=0,
                        help="also a row for each run of this many updates (0: none)")
    parser.add_argument("--from-json", type=pathlib.Path, default=None,
                        help="no training: the table of the updates in an earlier --json file")
    parser.add_argument("--child", nargs=2, metavar=("COMMAND_JSON", "OUT"),
                        help=argparse.SUPPRESS)  # the measuring process, started by measure
    args = parser.parse_args(argv)
    args.layers = parse_layers(parser, args.layers, choices=list(OUTPUT_VARIANTS))
    check_counts(parser, args, ["--updates"])
    if args.window < 0:
        parser.error(f"--window: got {args.window}; allowed: a whole number >= 0")
    if args.from_json:
        if not args.from_json.is_file():
            parser.error(f"--from-json: no file {args.from_json}")
        try:
            args.saved = json.loads(args.from_json.read_text())["updates"]
        except (ValueError, KeyError, TypeError):
            parser.error(f"--from-json: {args.from_json} is not a --json file of this script "
                         "(JSON with every layer's 'updates')")
    elif not args.child:
        # the experiment's own flags; --stages train: it checks no raw corpus (only its prepared
        # data-bin is used)
        args.options = EXPERIMENTS[args.experiment].parse_args(
            [*shlex.split(args.experiment_args), "--stages", "train"])
        check_prepared(parser, args)
    return args


def check_prepared(parser, args) -> None:
    """Refuse, before any work, an experiment whose data is not prepared."""
    data_bin = args.options.out / "data-bin"
    if not (data_bin / "train.bin").is_file() and not any(data_bin.glob("train.*.bin")):
        parser.error(f"--experiment-args: no prepared data in {data_bin}; run "
                     f"{SCRIPTS[args.experiment]} --stages prepare (with the same --out) first")


def train_commands(args):
    """Each of --layers' fairseq-train arguments: the experiment's, stopped after --updates
    updates (its schedule unchanged: the sweep's decay still spans its whole run), saving
    nothing."""
    experiment, options = EXPERIMENTS[args.experiment], args.options
    commands = {layer: experiment.train_arguments(options, experiment.run_for(options, layer,
                                                                              args.seed))
                for layer in args.layers}
    return {layer: [str(a) for a in arguments] + [
        "--user-dir", str(PACKAGE_DIR), "--seed", str(args.seed), "--max-update", str(args.updates),
        "--no-save", "--disable-validation", "--log-interval", str(args.updates)]
        for layer, arguments in commands.items()}


def group_of(name: str) -> str:
    if "embed_tokens" in name:
        return "embeddings"
    if ".output_projection." in name:  # fairseq's decoder holds the output layer there
        return "output: " + name.split(".output_projection.", 1)[1].split(".")[0]
    return "body"


def measure_in_this_process(arguments, out_path: pathlib.Path) -> None:
    """fairseq-train with its gradient clipping wrapped: each update's squared group norms,
    taken after fairseq's gradient normalisation and before clipping, one JSON line each."""
    from fairseq import trainer
    from fairseq_cli import train

    clip = trainer.Trainer.clip_grad_norm

    def clip_grad_norm(self, clip_norm):
        squares = defaultdict(float)
        for name, parameter in self.model.named_parameters():
            if parameter.grad is not None:
                squares[group_of(name)] += float(parameter.grad.detach().float().pow(2).sum())
        norm = clip(self, clip_norm)  # a tensor, as fairseq's train_step needs it
        value = float(norm)
        record = {"norm": value, "clip_norm": clip_norm, "clipped": 0 < clip_norm < value,
                  "squares": squares}  # clipped: as fairseq counts its logged "clip"
        with open(out_path, "a") as out:
            out.write(json.dumps(record) + "\n")
        return norm

    trainer.Trainer.clip_grad_norm = clip_grad_norm
    sys.argv = ["fairseq-train", *arguments]
    train.cli_main()


def measure(layer: str, arguments, work: pathlib.Path):
    """One layer's updates, measured in a fresh process (one torch thread, as the experiments)."""
    command_path, out = work / f"{layer}.command.json", work / f"{layer}.jsonl"
    command_path.write_text(json.dumps(arguments))
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=path)
    done = subprocess.run([sys.executable, "-m", "fairseq_mixtape_tools.gradient_norms", "--child",
                           str(command_path), str(out)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"fairseq-train with --output-layer variant {layer} failed:\n"
                 + "\n".join(done.stdout.splitlines()[-15:] + done.stderr.splitlines()[-15:]))
    return [json.loads(line) for line in out.read_text().splitlines()]


def summary(updates, first: int = 1):
    """Over ``updates`` (numbered from ``first``): the median norm, the share of updates
    clipped, and each group's mean share of ||g||^2."""
    groups = sorted({g for u in updates for g in u["squares"]})
    norms = [u["norm"] for u in updates]
    return {"updates": [first, first + len(updates) - 1], "clip_norm": updates[0]["clip_norm"],
            "median_norm": statistics.median(norms),
            "clipped": statistics.fmean(u["clipped"] for u in updates),
            "shares": {g: statistics.fmean(u["squares"].get(g, 0.0) / sum(u["squares"].values())
                                           for u in updates) for g in groups}}


def summaries(updates, window: int):
    """All the updates, then (with ``window``) each run of ``window`` updates."""
    windows = range(0, len(updates), window) if window else []
    return [summary(updates)] + [summary(updates[start:start + window], start + 1)
                                 for start in windows]


def table(results) -> str:
    groups = sorted({g for rows in results.values() for row in rows for g in row["shares"]},
                    key=lambda g: (g.startswith("output"), g))
    clip = sorted({f"{row['clip_norm']:g}" for rows in results.values() for row in rows})
    lines = [f"Gradient norm before clipping (clip norm {', '.join(clip)}) and each group's "
             "mean share of ||g||^2", "",
             "| output layer | updates | median norm | clipped | " + " | ".join(groups) + " |",
             "|---|---|---:|---:|" + "---:|" * len(groups)]
    for layer, rows in results.items():
        for row in rows:
            cells = [f"{100 * row['shares'][g]:.0f}%" if g in row["shares"] else "-"
                     for g in groups]
            lines.append(f"| {layer} | {row['updates'][0]}-{row['updates'][1]} | "
                         f"{row['median_norm']:.3f} | {100 * row['clipped']:.0f}% | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        command_path, out = map(pathlib.Path, args.child)
        measure_in_this_process(json.loads(command_path.read_text()), out)
        return
    if args.from_json:
        raw = args.saved
    else:
        commands, raw = train_commands(args), {}
        with tempfile.TemporaryDirectory() as work:
            for layer, arguments in commands.items():
                print(f"{layer}: {args.updates} updates ...", flush=True)
                raw[layer] = measure(layer, arguments, pathlib.Path(work))
    results = {layer: summaries(updates, args.window) for layer, updates in raw.items()}
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"summary": results, "updates": raw}, indent=1) + "\n")


if __name__ == "__main__":  # the measuring process that measure starts (python -m)
    main()
