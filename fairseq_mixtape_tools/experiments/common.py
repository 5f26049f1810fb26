"""What the experiments (``ptb``, ``multi30k``, ``sweep``; launched by the scripts in
``examples/``) share: the interface each offers (``Driver``), the output variants they compare
and the flags they have in common (their definitions and checks), one training run per (output
layer, seed) through the real fairseq command-line tools, each finished step remembered in a JSON
file so that a rerun skips it, a table of mean and spread over seeds, and the start and the end
that each one's ``main`` has around its runs (``start_experiment``, ``finish_experiment``).

A run directory holds ``train.log`` (fairseq's output), ``checkpoint_last.pt`` and
``result.json``: everything measured about that run, read from the tools' own output.
"""

import argparse
import concurrent.futures
import json
import math
import pathlib
import statistics
import subprocess
import time
from typing import (Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple,
                    runtime_checkable)

from ..arguments import (check_choices, check_counts, check_positive, check_probability,
                         comma_list, flag_dest, flag_value, has_flag, parse_layers, parse_seeds)
from ..runner import (PACKAGE_DIR, parse_train_log, run_tool, say, stop_tools_on_terminate,
                      train_progress_printer)

# The checkout these tools run from: the experiments' default folders (../shared/data beside it,
# examples/*/results in it) and the scripts they call are found there.
REPO = pathlib.Path(__file__).resolve().parents[2]


def repo_path(path) -> str:
    """``path`` as a reader of the repository names it: relative to the checkout where it lies
    in it (a table's caption must not carry one machine's folders), else as given."""
    resolved = pathlib.Path(path).resolve()
    return (resolved.relative_to(REPO).as_posix() if resolved.is_relative_to(REPO)
            else str(path))

__all__ = ["REPO", "repo_path", "PACKAGE_DIR", "Driver", "OUTPUT_VARIANTS", "SCALED_VARIANTS",
           "variant_arguments", "takes_components", "is_mos", "EXPERIMENT_FLAGS",
           "add_experiment_flags", "check_experiment_flags", "Run", "plan_runs",
           "start_experiment", "run_in_parallel", "finish_experiment", "restore_finished",
           "plugin_commit", "evaluate_lm", "measure_rank", "parse_train_log", "mean_and_spread",
           "format_mean", "values_of", "relative_to", "seconds_per_epoch", "seeds_text",
           "seeds_cell", "scale_text", "rank_cell", "plot_run_spectra", "write_results"]


@runtime_checkable
class Driver(Protocol):
    """What each experiment (the modules ``ptb``, ``multi30k`` and ``sweep``) offers, alike: the
    scripts in ``examples/`` call its ``main``; the tools that reuse an experiment's training
    command (``gradient_norms``, ``logit_scale``) and the tests use the rest."""

    STAGES: Tuple[str, ...]  # its steps (--stages), in the order they run

    def parse_args(self, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
        """Its flags, checked before any work (a bad value stops it with an argparse error)."""

    def plan(self, args: argparse.Namespace) -> List["Run"]:
        """Its runs, in the order they run."""

    def run_for(self, args: argparse.Namespace, layer: str, seed: int) -> "Run":
        """One run of output variant ``layer`` and ``seed``, as ``plan`` makes them (the sweep's
        at its first --dims value), for the tools that take one run of each layer."""

    def train_arguments(self, args: argparse.Namespace, run: "Run") -> list:
        """The run's fairseq-train arguments, but for --user-dir, --seed and --save-dir, which
        ``Run.train`` adds."""

    def train(self, args: argparse.Namespace, run: "Run") -> Dict:
        """Its train step: fairseq-train of the run into its folder; what its log says."""

    def write_table(self, args: argparse.Namespace, runs: Sequence["Run"]) -> None:
        """Its table step: the results' table, every run's numbers (JSON) and its plots."""

    def main(self, argv: Optional[Sequence[str]] = None) -> int:
        """Every stage of --stages; the exit status."""


# The output variants the experiments compare (--layers), by name: their fairseq-train flags.
OUTPUT_VARIANTS = {
    "softmax": ["--output-layer", "softmax"],
    "mixtape": ["--output-layer", "mixtape", "--output-components", 4],
    # the same tanh context layer (with the scale the defaults give it) but no mixture: a softmax
    # bottleneck caps it at rank E + 1 too
    "control": ["--output-layer", "mixtape", "--output-components", 1],
    "sigsoftmax": ["--output-layer", "sigsoftmax"],
    "mos": ["--output-layer", "mos", "--output-components", 4],
    "mixtape_papers": ["--output-layer", "mixtape", "--output-components", 4,
                       "--output-context-scale", 1],  # the papers' unscaled contexts
    # Mixtape with linear contexts h_k = W_k g + e_k (no tanh; not the papers' layer)
    "mixtape_linear": ["--output-layer", "mixtape", "--output-components", 4,
                       "--output-context-activation", "linear"],
    "mos_sigsoftmax": ["--output-layer", "mos_sigsoftmax", "--output-components", 4],
}
# The variants whose contexts an experiment's --context-scale scales: MoS and Mixtape of K = 4
# (mixtape_papers included: the flag comes after its own scale of 1 and overrides it; not the
# control nor Mixtape with linear contexts).
SCALED_VARIANTS = ("mixtape", "mos", "mos_sigsoftmax", "mixtape_papers")


def takes_components(variant: str) -> bool:
    """Whether an experiment's --components sets the variant's K: the mixtures of K = 4, not the
    control, whose K = 1 is the point of it."""
    flags = OUTPUT_VARIANTS[variant]
    return "--output-components" in flags and flags[flags.index("--output-components") + 1] > 1


def variant_arguments(variant: str, components: Optional[int] = None,
                      context_scale: Optional[float] = None) -> list:
    """The fairseq-train flags of an output variant; ``components`` (where not None) replaces K
    where ``takes_components``, and ``context_scale`` is added for SCALED_VARIANTS."""
    flags = list(OUTPUT_VARIANTS[variant])
    if components is not None and takes_components(variant):
        flags[flags.index("--output-components") + 1] = components
    if context_scale is not None and variant in SCALED_VARIANTS:
        flags += ["--output-context-scale", context_scale]
    return flags


def is_mos(variant: str) -> bool:
    """MoS and MoS-sigsoftmax, which cost about K softmaxes a run: they run last, and for
    fewer seeds or widths."""
    return variant.startswith("mos")


# The seed lists of the experiments, and whether each may be empty ('': no such runs).
SEED_FLAGS = {"--seeds": False, "--mos-seeds": True, "--control-seeds": True,
              "--extra-seeds": True}


# The flags that two or more experiments define alike (the same type and help; the default may be
# each driver's own), for add_experiment_flags: parser.add_argument's options. A flag without a
# default here has a different one in each experiment: its driver gives its own. --stages' help
# lists the driver's stages, which are its default.
EXPERIMENT_FLAGS: Dict[str, Dict[str, Any]] = {
    "--stages": {"type": comma_list(str),
                 "help": lambda stages: f"steps to run, from {', '.join(stages)}"},
    "--jobs": {"type": int, "default": 1, "help": "runs trained at once"},
    "--threads": {"type": int, "default": 1, "help": "torch threads per process"},
    "--ffn-dim": {"type": int, "default": 512},
    "--context-scale": {"type": float, "default": None,
                        "help": "--output-context-scale of MoS and Mixtape (default: the "
                                "plugin's, matched to softmax's initial spread; 1 = the papers)"},
    "--max-epochs": {"type": int, "help": "epochs of every run"},
    "--tokens-per-sample": {"type": int},
    "--warmup-updates": {"type": int},
    "--dropout": {"type": float},
    "--rank-contexts": {"type": int, "default": 2000,
                        "help": "test contexts (rows) of the log-probability matrix"},
}


def add_experiment_flags(parser: argparse.ArgumentParser, *flags: str,
                         helps: Optional[Dict[str, str]] = None, **defaults) -> None:
    """Add the shared ``flags`` (EXPERIMENT_FLAGS) to an experiment's ``parser``, in the order
    given (their order in --help). ``defaults``, by the flag's attribute (``dropout=0.2``), are
    the driver's own defaults, needed where EXPERIMENT_FLAGS has none; ``helps``, by flag, the
    driver's own wording of a flag's help."""
    added = {flag_dest(flag) for flag in flags}
    unknown = [f"--{dest.replace('_', '-')}" for dest in defaults if dest not in added]
    unknown += [flag for flag in helps or {} if flag not in flags]
    if unknown:
        raise TypeError(f"a default or help of flags not added: {', '.join(unknown)}")
    for flag in flags:
        options = dict(EXPERIMENT_FLAGS[flag])
        if flag_dest(flag) in defaults:
            options["default"] = defaults[flag_dest(flag)]
        elif "default" not in options:
            raise TypeError(f"{flag}: the experiments' defaults differ; give the driver's own")
        if helps and flag in helps:
            options["help"] = helps[flag]
        elif callable(options.get("help")):
            options["help"] = options["help"](options["default"])
        parser.add_argument(flag, **options)


def check_experiment_flags(parser: argparse.ArgumentParser, args: argparse.Namespace,
                           stages: Sequence[str]) -> None:
    """The checks of the flags the experiments share, each that ``args`` has: --layers (output
    variants, each once) and the seed lists become lists; --stages from ``stages``; --jobs,
    --threads, --rank-contexts whole numbers >= 1; --lr and --context-scale > 0; --dropout a
    probability. Each experiment checks its own flags after these."""
    args.layers = parse_layers(parser, args.layers, choices=list(OUTPUT_VARIANTS))
    check_choices(parser, "--stages", args.stages, stages)
    for flag, may_be_empty in SEED_FLAGS.items():
        if has_flag(args, flag):
            setattr(args, flag_dest(flag), parse_seeds(parser, flag_value(args, flag), flag,
                                                       may_be_empty))
    check_counts(parser, args, [flag for flag in ("--jobs", "--threads", "--rank-contexts")
                                if has_flag(args, flag)])
    check_positive(parser, args, [flag for flag in ("--lr", "--context-scale")
                                  if has_flag(args, flag)])
    check_probability(parser, "--dropout", args.dropout)


class Run:
    """One (output layer, seed) training run and what was measured about it."""

    def __init__(self, root: pathlib.Path, layer: str, seed: int, name: str = ""):
        self.layer, self.seed = layer, seed
        self.name = name or f"{layer}_seed{seed}"  # its key in the results JSON
        self.dir = root / f"{layer}_seed{seed}"
        self.result_path = self.dir / "result.json"
        self.result: Dict = (json.loads(self.result_path.read_text())
                             if self.result_path.is_file() else {})

    @property
    def checkpoint(self) -> pathlib.Path:
        return self.dir / "checkpoint_last.pt"

    def check_settings(self, settings: Dict) -> None:
        """Record ``settings`` (what the run's numbers depend on beyond its flags: the wiring,
        the epochs, the plugin's commit) before its first step; a run whose folder holds a result
        recorded with other settings, or with none, is refused, not resumed or taken."""
        recorded = self.result.get("settings")
        if recorded is None and (self.result or self.checkpoint.is_file()):
            raise ValueError(f"{self.dir}: started without recorded settings (an older version "
                             "of the script); allowed: a new --out, or delete the folder")
        if recorded is not None and recorded != settings:
            differ = ", ".join(f"{key} {recorded.get(key)!r} (now {value!r})"
                               for key, value in settings.items() if recorded.get(key) != value)
            raise ValueError(f"{self.dir}: recorded with other settings: {differ}; allowed: the "
                             "same settings, a new --out, or delete the folder")
        if recorded is None:
            self.record(settings=settings)

    def record(self, **values) -> None:
        self.result.update(values)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.result_path.write_text(json.dumps(self.result, indent=1, sort_keys=True) + "\n")

    def step(self, key: str, compute: Callable[[], Dict], describe: str) -> None:
        """Run ``compute`` (which returns the values to record) unless ``key`` is recorded."""
        if key in self.result:
            say(f"    {self.layer} seed {self.seed}: {describe}: done already")
            return
        say(f"    {self.layer} seed {self.seed}: {describe}")
        self.record(**compute())

    def train(self, arguments: Sequence, total_updates: int, threads: int) -> Dict:
        """fairseq-train into this run's directory (resuming from its checkpoint_last.pt where
        an earlier attempt stopped); returns the numbers of the training log, all attempts."""
        self.dir.mkdir(parents=True, exist_ok=True)
        log = self.dir / "train.log"
        run_tool("train", [*arguments, "--user-dir", PACKAGE_DIR, "--seed", self.seed,
                           "--save-dir", self.dir],
                 log, train_progress_printer(f"{self.layer} s{self.seed}", total_updates),
                 threads=threads, append=True)
        return parse_train_log(log.read_text())  # every attempt: a resumed run's log continues


def plugin_commit() -> str:
    """The last commit that changed the plugin (``fairseq_mixtape/``) in the checkout these tools
    run from, with ``+changes`` where the plugin has uncommitted changes; ``unknown`` outside a
    git checkout."""
    def git(*argv):
        return subprocess.run(["git", "-C", str(PACKAGE_DIR), *argv], capture_output=True,
                              text=True).stdout.strip()

    try:
        commit = git("log", "-1", "--format=%H", "--", ".")
        changed = git("status", "--porcelain", "--", ".")
    except OSError:  # no git
        return "unknown"
    return (commit or "unknown") + ("+changes" if changed else "")


def plan_runs(seeds: Sequence[int], cells: Sequence[Any],
              seeds_of: Callable[[Any], Sequence[int]],
              make_run: Callable[[Any, int], Run]) -> List[Run]:
    """Seed by seed in the order of ``seeds``, every cell (an output variant; the sweep's
    (E, variant)) in its order, so that drifts in machine load hit all alike; each cell only for
    its ``seeds_of(cell)``; the MoS runs, which cost about K softmaxes each, last."""
    runs = [make_run(cell, seed) for seed in seeds for cell in cells if seed in seeds_of(cell)]
    return sorted(runs, key=lambda run: is_mos(run.layer))  # stable: seed by seed in each part


def evaluate_lm(run: Run, data_bin: pathlib.Path, subset: str, tokens_per_sample: int,
                threads: int = 1) -> Dict:
    """fairseq-eval-lm of the run's checkpoint on ``subset``, in blocks of
    ``tokens_per_sample`` tokens with no context beyond the block."""
    output = run_tool("eval_lm", [
        data_bin, "--path", run.checkpoint, "--user-dir", PACKAGE_DIR, "--gen-subset", subset,
        "--tokens-per-sample", tokens_per_sample, "--batch-size", 64, "--num-workers", 0,
        "--cpu"], run.dir / f"eval_{subset}.log", threads=threads)
    loss, perplexity = next(
        (float(a), float(b)) for line in output.splitlines()[::-1]
        for a, b in [line.split("Loss (base 2): ")[1].split(", Perplexity: ")]
        if "Loss (base 2): " in line)
    return {f"{subset}_loss_base2": loss, f"{subset}_ppl": perplexity}


def restore_finished(runs: Sequence[Run], results_json: pathlib.Path,
                     last_key: str = "rank") -> None:
    """Runs whose folder is gone (a fresh work tree) but whose numbers ``results_json`` (the
    script's committed results) holds up to its last step, ``last_key``: their result.json is
    written back from it, so that a rerun skips them instead of training them again. A run the
    file holds only in part, or not at all, is trained from the start (its checkpoints are gone)."""
    if not results_json.is_file():
        return
    saved = json.loads(results_json.read_text())
    for run in runs:
        entry = saved.get(run.name, {})
        if run.dir.exists() or last_key not in entry:
            continue
        run.record(**entry)
        print(f"    {run.name}: finished earlier, restored from {results_json} (its run folder "
              "was gone)", flush=True)


def run_in_parallel(runs: Sequence[Run], execute: Callable[[Run], None], jobs: int) -> List[str]:
    """``execute(run)`` for every run, ``jobs`` at a time (threads: each run's work is fairseq
    subprocesses); one failed run does not stop the others. Returns what failed, run by run."""
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(execute, run): run for run in runs}
    return [f"{futures[f].dir}: {f.exception()}" for f in futures if f.exception() is not None]


def start_experiment(args: argparse.Namespace,
                     prepare: Callable[[argparse.Namespace], None]) -> float:
    """The start of an experiment's main, once its flags are parsed: the tools it starts are
    stopped with it on SIGTERM (stop_tools_on_terminate), the clock starts, and ``prepare(args)``
    runs where --stages has prepare. Returns the start time, for finish_experiment."""
    stop_tools_on_terminate()
    started = time.monotonic()
    if "prepare" in args.stages:
        prepare(args)
    return started


def finish_experiment(args: argparse.Namespace, runs: Sequence[Run],
                      write_table: Callable[[argparse.Namespace, Sequence[Run]], None],
                      started: float, failures: Sequence[str] = ()) -> int:
    """The end of an experiment's main: ``write_table(args, runs)`` where --stages has table,
    then the runs that failed (``failures``, as run_in_parallel gives them) and the time since
    ``started``. Returns the exit status: 1 where a run failed, else 0."""
    if "table" in args.stages:
        write_table(args, runs)
    for failure in failures:
        print(f"failed: {failure}", flush=True)
    print(f"done in {time.monotonic() - started:.0f} s", flush=True)
    return 1 if failures else 0


def mean_and_spread(values: Sequence[float]) -> Optional[tuple]:
    """(mean, half the range) of the finite values; None when there are none."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    return statistics.fmean(values), (max(values) - min(values)) / 2


def seeds_text(seeds, mos_seeds, layers) -> str:
    """"seeds 1, 2 (MoS: 1)" for a table's caption; the MoS part only where MoS layers ran."""
    text = "seeds " + ", ".join(map(str, seeds))
    if any(map(is_mos, layers)):
        text += " (MoS: " + ", ".join(map(str, mos_seeds)) + ")"
    return text


def scale_text(scale: Optional[float]) -> str:
    """A table caption's context scale: the plugin's default or an explicit value."""
    return "matched to softmax (the default)" if scale is None else f"{scale:g}"


def format_mean(values: Sequence[float], digits: int = 2) -> str:
    """``mean ± half-range (n)`` for several values, the value alone for one, ``-`` for none."""
    summary = mean_and_spread(values)
    if summary is None:
        return "-"
    mean, spread = summary
    count = sum(1 for v in values if v is not None and math.isfinite(v))
    if count == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def values_of(runs: Sequence[Run], key: str) -> List[float]:
    return [run.result[key] for run in runs if key in run.result]


def seeds_cell(runs: Sequence[Run], key: str) -> str:
    """The seeds whose result has ``key``, and those still to finish in brackets."""
    done = [str(r.seed) for r in runs if key in r.result]
    todo = [str(r.seed) for r in runs if key not in r.result]
    return (",".join(done) + (f" ({','.join(todo)} to come)" if todo else "")).strip() or "-"


def seconds_per_epoch(runs: Sequence[Run]) -> List[float]:
    """Each run's training time over its epochs (the validated ones), for runs that have both."""
    return [run.result["train_seconds"] / len(run.result["valid_ppl_curve"]) for run in runs
            if "train_seconds" in run.result and run.result.get("valid_ppl_curve")]


def relative_to(values: Sequence[float], baseline: Sequence[float], percent=False) -> List[float]:
    """Each value over the baseline's mean (a ratio, or a change in percent); none where the
    baseline has no finite value above 0."""
    summary = mean_and_spread(baseline)
    reference = summary[0] if summary else 0.0
    if not reference > 0:  # none, or too short to be timed (fairseq rounds to seconds)
        return []
    return [(v / reference - 1) * 100 if percent else v / reference for v in values]


def rank_cell(runs: Sequence[Run]) -> str:
    """``numerical / eps-effective ranks`` of each run (seeds separated by ``;``)."""
    return "; ".join(
        f"{rank['numerical_rank']} / " + " / ".join(map(str, rank["effective_rank"]))
        for rank in (run.result["rank"] for run in runs if "rank" in run.result)) or "-"


def measure_rank(run: Run, data_bin: pathlib.Path, contexts: int,
                 checkpoint: Optional[pathlib.Path] = None) -> Dict:
    """The bottleneck diagnostic on the run's checkpoint (or ``checkpoint``) and the test split;
    the spectrum is saved beside it (spectrum.npy) for plot_run_spectra."""
    from ..bottleneck import measure_checkpoint

    report = measure_checkpoint(checkpoint or run.checkpoint, data_bin, subset="test",
                                max_contexts=contexts, name=run.layer,
                                spectrum_path=run.dir / "spectrum.npy")
    return {"rank": report.summary()}


def plot_run_spectra(runs: Sequence[Run], path: pathlib.Path, title: str) -> None:
    """One plot of the spectra of the runs that have one (bottleneck.plot_spectra)."""
    import numpy as np

    from ..bottleneck import RankReport, plot_spectra

    reports = []
    for run in runs:
        spectrum = run.dir / "spectrum.npy"
        if "rank" in run.result and spectrum.is_file():
            rank = run.result["rank"]
            reports.append(RankReport(
                f"{run.layer} (seed {run.seed})", (rank["rows"], rank["columns"]),
                np.load(spectrum), rank["numerical_rank"],
                dict(zip(rank["epsilons"], rank["effective_rank"])), rank["softmax_bound"]))
    if reports:
        plot_spectra(reports, path, title)


def write_results(runs: Sequence[Run], lines: Sequence[str], results_dir: pathlib.Path,
                  name: str, plot_seed: Optional[int] = None, plot_title: str = "") -> None:
    """NAME.md (the table), NAME.json (every run's numbers), NAME_spectra.png (the runs of
    ``plot_seed``; none without), and the table on stdout."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    (results_dir / f"{name}.json").write_text(json.dumps(
        {r.name: r.result for r in runs}, indent=1, sort_keys=True) + "\n")
    if plot_seed is not None:
        plot_run_spectra([r for r in runs if r.seed == plot_seed],
                         results_dir / f"{name}_spectra.png", plot_title)
    print("\n".join(lines), flush=True)
