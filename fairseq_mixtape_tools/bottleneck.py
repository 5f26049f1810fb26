"""Measure the softmax bottleneck of a trained model: the rank of its log-probability matrix.

Stack the model's full log-probability rows ``log p(. | c_i)`` for N contexts of a data split
into an N x V matrix A (float64 throughout: the model itself runs in float64, so a row is exact
to ~1e-16, not float32's ~1e-7, which would make every matrix look full rank) and report, from
its singular values s_1 >= s_2 >= ...:

* the numerical rank: #{i : s_i > s_1 * eps64 * sqrt(N + V + 1) / 2} (Numerical Recipes'
  threshold, the rounding noise of a float64 matrix of this shape);
* the eps-effective rank for eps = 1e-3, 1e-4, 1e-5: the smallest k with
  sum_{i<=k} s_i^2 >= (1 - eps) sum_i s_i^2;
* the normalised spectrum s_i / s_1 (saved, and plotted with several models overlaid).

A softmax over a d-dimensional hidden state gives log p = H W^T + 1 b^T - lse 1^T: rank at most
d + 1, or d + 2 with an output bias (Yang et al., ICLR 2018, the "softmax bottleneck"); a
mixture (MoS, Mixtape) is not bounded so. Rank alone does not predict perplexity: report it beside
perplexity. Pitfall: a mixture computed in probability space with an epsilon floor
(log(sum_k pi_k p_k + 1e-8)) looks full rank whatever the model; the plugin's layers are exact.

    python scripts/bottleneck.py CHECKPOINT [CHECKPOINT ...] --data DATA_BIN --subset test \\
        --contexts 2000 --plot spectrum.png
"""

import argparse
import dataclasses
import inspect
import json
import logging
import math
import os
import pathlib
import pickle
import zipfile
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .arguments import ArgumentParser, check_data_dir

EPSILONS = (1e-3, 1e-4, 1e-5)
logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Ranks of a matrix


def numerical_rank(singular_values: np.ndarray, shape: Sequence[int]) -> int:
    """Singular values above s_max * eps64 * sqrt(m + n + 1) / 2."""
    if singular_values.size == 0 or singular_values[0] == 0:
        return 0
    tolerance = (singular_values[0] * np.finfo(np.float64).eps
                 * math.sqrt(shape[0] + shape[1] + 1) / 2)
    return int((singular_values > tolerance).sum())


def effective_rank(singular_values: np.ndarray, eps: float) -> int:
    """The fewest leading singular values whose squares hold 1 - eps of the total."""
    if not 0 < eps < 1:
        raise ValueError(f"eps: got {eps}; allowed: 0 < eps < 1")
    energy = np.cumsum(singular_values.astype(np.float64) ** 2)
    if energy.size == 0 or energy[-1] == 0:
        return 0
    return int(min(np.searchsorted(energy, (1.0 - eps) * energy[-1]) + 1, energy.size))


@dataclasses.dataclass
class RankReport:
    """The spectrum of one log-probability (or any) matrix and its ranks."""

    name: str
    shape: tuple
    singular_values: np.ndarray             # float64, descending
    numerical_rank: int
    effective_ranks: Dict[float, int]       # eps -> eps-effective rank
    softmax_bound: Optional[int] = None     # d + 1 (+1 with bias) for the model's output layer
    max_row_error: Optional[float] = None   # max_i |logsumexp_x A[i, x]|: 0 for log-probs

    @classmethod
    def of(cls, matrix: np.ndarray, name: str = "matrix", softmax_bound: Optional[int] = None,
           epsilons: Sequence[float] = EPSILONS) -> "RankReport":
        matrix = np.asarray(matrix)
        if matrix.dtype != np.float64:
            raise ValueError(f"{name}: the matrix is {matrix.dtype}; ranks need float64 (float32 "
                             "rounding alone makes a low-rank matrix look full rank)")
        if matrix.ndim != 2 or not np.isfinite(matrix).all():
            raise ValueError(f"{name}: need a finite 2-d matrix, got shape {matrix.shape}"
                             f"{'' if np.isfinite(matrix).all() else ' with inf/nan entries'}")
        singular_values = np.linalg.svd(matrix, compute_uv=False)
        return cls(name, tuple(matrix.shape), singular_values,
                   numerical_rank(singular_values, matrix.shape),
                   {eps: effective_rank(singular_values, eps) for eps in epsilons},
                   softmax_bound)

    def summary(self) -> dict:
        """JSON-friendly: everything but the spectrum itself."""
        return dict(name=self.name, rows=self.shape[0], columns=self.shape[1],
                    numerical_rank=self.numerical_rank,
                    effective_rank=[self.effective_ranks[e] for e in sorted(
                        self.effective_ranks, reverse=True)],
                    epsilons=sorted(self.effective_ranks, reverse=True),
                    softmax_bound=self.softmax_bound, max_row_error=self.max_row_error)

    def line(self) -> str:
        effective = ", ".join(f"{self.effective_ranks[e]} (eps {e:g})"
                              for e in sorted(self.effective_ranks, reverse=True))
        bound = "" if self.softmax_bound is None else f"; a softmax reaches <= {self.softmax_bound}"
        return (f"{self.name}: {self.shape[0]} x {self.shape[1]} log-prob matrix: numerical rank "
                f"{self.numerical_rank}; effective rank {effective}{bound}")


# --------------------------------------------------------------------------------------------
# Log-probability rows of a fairseq checkpoint


class UnusableInput(ValueError):
    """A checkpoint or data folder this tool cannot use. The message is one line that names the
    argument, the value and what is allowed; the command line prints it as an argparse error
    (exit status 2)."""


CHECKPOINT_ALLOWED = "a fairseq checkpoint file (such as checkpoint_best.pt of fairseq-train)"


def one_line(error: BaseException) -> str:
    """``Type: first line of the message`` (torch's and fairseq's messages run over lines; of
    load_state_dict's, its first size mismatch)."""
    lines = str(error).strip().splitlines()
    line = next((line for line in lines if "size mismatch" in line), lines[0] if lines else "")
    return type(error).__name__ + (f": {line.strip()}" if line else "")


def read_checkpoint(checkpoint: pathlib.Path) -> Mapping:
    """The state of a fairseq checkpoint, its tensors memory-mapped where the file is in torch's
    zip format (so reading a large checkpoint's configuration costs little); UnusableInput where
    the file is not a fairseq checkpoint."""
    from fairseq_mixtape.compat import REFUSED_GLOBAL, fairseq_checkpoint_classes

    value = f"CHECKPOINT: got {str(checkpoint)!r}"
    mmap = {"mmap": True} if ("mmap" in inspect.signature(torch.load).parameters
                              and zipfile.is_zipfile(checkpoint)) else {}
    try:
        with fairseq_checkpoint_classes():
            state = torch.load(checkpoint, map_location="cpu", **mmap)
    except pickle.UnpicklingError as error:
        refused = REFUSED_GLOBAL.search(str(error))
        if refused is None:
            raise UnusableInput(f"{value}, which torch.load cannot read ({one_line(error)}); "
                                f"allowed: {CHECKPOINT_ALLOWED}") from error
        raise UnusableInput(
            f"{value}, which holds the class {refused.group(1)}: not one of those fairseq "
            f"checkpoints hold, so torch's safe loading (weights_only) refuses it; allowed: "
            f"{CHECKPOINT_ALLOWED} (see docs/troubleshooting.md)") from error
    except Exception as error:  # a text file, a truncated file, ...: torch's errors vary
        raise UnusableInput(f"{value}, which torch.load cannot read ({one_line(error)}); "
                            f"allowed: {CHECKPOINT_ALLOWED}") from error
    if not (isinstance(state, Mapping) and isinstance(state.get("model"), Mapping)
            and (state.get("cfg") is not None or state.get("args") is not None)):
        raise UnusableInput(f"{value}, a torch file but not a fairseq checkpoint (no 'model' "
                            f"with 'cfg' or 'args' in it); allowed: {CHECKPOINT_ALLOWED}")
    return state


def task_settings(state: Mapping) -> Tuple[Optional[str], Mapping]:
    """(task name, task settings: data, source_lang, ...) of a checkpoint's state, from its
    configuration or, in old checkpoints, its argparse namespace."""
    cfg = state.get("cfg")
    if cfg is not None and cfg.get("task") is not None:
        return cfg["task"].get("_name"), cfg["task"]
    args = vars(state["args"]) if state.get("args") is not None else {}
    return args.get("task"), args


def load_model(checkpoint: pathlib.Path, data: Optional[pathlib.Path] = None):
    """(model in float64 eval mode on CPU, task) from a fairseq checkpoint of any family.

    A file that is not a fairseq checkpoint, or a model that cannot be built on ``data``, raises
    UnusableInput (a missing file FileNotFoundError)."""
    from fairseq import checkpoint_utils

    import fairseq_mixtape  # noqa: F401  (registers the plugin's models: its checkpoints load)

    checkpoint = pathlib.Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {checkpoint}")
    overrides = {"data": str(data)} if data is not None else {}
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint), overrides)
    except Exception as error:
        read_checkpoint(checkpoint)  # the reason, where it is that the file is no checkpoint
        raise UnusableInput(f"CHECKPOINT: got {str(checkpoint)!r}, which fairseq cannot load "
                            f"({one_line(error)}); allowed: {CHECKPOINT_ALLOWED}") from error
    try:
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
            [str(checkpoint)], arg_overrides=overrides, state=state)
    except Exception as error:
        folder = data if data is not None else task_settings(state)[1].get("data")
        if isinstance(error, RuntimeError) and "size mismatch" in str(error):
            raise UnusableInput(
                f"--data: got {str(folder)!r}, whose dictionary does not fit "
                f"{checkpoint}'s model ({one_line(error)}); allowed: the data folder the "
                "checkpoint was trained on, or one with the same dictionary") from error
        raise UnusableInput(
            f"CHECKPOINT: got {str(checkpoint)!r}, whose model fairseq cannot build on the data "
            f"folder {str(folder)!r} ({one_line(error)}); allowed: {CHECKPOINT_ALLOWED} of a "
            "model that fairseq or a loaded plugin registers, with its data folder") from error
    return models[0].double().eval(), task


def softmax_bound(model) -> Optional[int]:
    """d + 1 (+ 1 with an output bias): the most a softmax over this model's output space
    reaches, d being the narrowest width between the decoder's last layer and the output
    embedding (a decoder that projects its state up, like transformer_lm with a wider
    --decoder-output-dim, or an LSTM's additional_fc, adds no rank); for a mixture that reads
    the hidden state itself, in the place of that projection, its input width counts as the
    projection's would; None where the model has no fairseq-mixtape output layer."""
    from fairseq_mixtape.models.wiring import output_layer_of, stock_projection

    try:
        layer = output_layer_of(model)
    except ValueError:
        return None
    width = min(layer.embed_dim, layer.input_dim)
    projection = stock_projection(model.decoder)
    if projection is not None:
        width = min(width, getattr(model.decoder, projection).in_features)
    return width + 1 + (layer.bias is not None)


@torch.no_grad()
def log_prob_rows(model, task, subset: str = "test", max_contexts: int = 2000,
                  max_tokens: int = 4096) -> np.ndarray:
    """The first ``max_contexts`` target positions of ``subset`` (in the dataset's order, padding
    skipped): their full log-probability rows, float64, (N, V)."""
    try:
        task.load_dataset(subset)
    except FileNotFoundError as error:
        folder = getattr(getattr(task, "cfg", None), "data", None)
        raise UnusableInput(f"--subset: got {subset!r}, which the data folder "
                            f"{str(folder)!r} lacks ({one_line(error)}); allowed: a split of "
                            "the data folder (train, valid, test, ...)") from error
    dataset = task.dataset(subset)
    batches = task.get_batch_iterator(
        dataset, max_tokens=max_tokens, max_positions=model.max_positions(),
        ignore_invalid_inputs=True, required_batch_size_multiple=1, num_workers=0,
    ).next_epoch_itr(shuffle=False)
    pad = task.target_dictionary.pad()
    rows, count = [], 0
    for sample in batches:
        if not sample or count >= max_contexts:
            break
        net_output = model(**sample["net_input"])
        if getattr(model.decoder, "adaptive_softmax", None) is not None:
            log_probs = model.get_normalized_probs(net_output, log_probs=True)
        else:  # scores: logits, or a mixture's log-probs, which log_softmax leaves as they are
            log_probs = torch.log_softmax(net_output[0].double(), dim=-1)
        selected = log_probs[sample["target"] != pad]    # (positions, V)
        rows.append(selected[:max_contexts - count].double())
        count += rows[-1].shape[0]
    if count == 0:
        raise ValueError(f"--subset {subset}: no target positions")
    return torch.cat(rows).numpy()


def measure_checkpoint(checkpoint, data=None, subset: str = "test", max_contexts: int = 2000,
                       name: Optional[str] = None,
                       spectrum_path: Optional[pathlib.Path] = None) -> RankReport:
    """The RankReport of a checkpoint's log-probability matrix on ``subset``; with
    ``spectrum_path`` the singular values are also saved there (.npy)."""
    model, task = load_model(checkpoint, data)
    matrix = log_prob_rows(model, task, subset, max_contexts)
    if matrix.shape[0] < min(max_contexts, matrix.shape[1]):
        logger.warning("%s: only %d contexts in %s (asked for %d): the rank cannot exceed that",
                       checkpoint, matrix.shape[0], subset, max_contexts)
    report = RankReport.of(matrix, name or str(checkpoint), softmax_bound(model))
    report.max_row_error = float(np.abs(np.logaddexp.reduce(matrix, axis=1)).max())
    if spectrum_path is not None:
        np.save(spectrum_path, report.singular_values)
    return report


# --------------------------------------------------------------------------------------------
# The plot and the command line


def pyplot():
    """matplotlib.pyplot, drawing to files (the Agg backend: no display needed), with matplotlib's
    messages below WARNING left out (fairseq's root logger is at DEBUG): for every plot of the
    tools (this diagnostic's, the benchmark's, the experiments')."""
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_spectra(reports: Sequence[RankReport], path: pathlib.Path, title: str = "") -> None:
    """Normalised singular values s_i / s_1 (log scale) of every report, overlaid; a dotted line
    at each report's softmax bound d + 1."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for report in reports:
        spectrum = report.singular_values / report.singular_values[0]
        line, = ax.plot(np.arange(1, spectrum.size + 1), spectrum,
                        label=f"{report.name} (rank {report.numerical_rank})")
        if report.softmax_bound is not None:
            ax.axvline(report.softmax_bound, color=line.get_color(), ls=":", lw=1)
    floor = np.finfo(np.float64).eps
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.set_xlabel("index i of singular value")
    ax.set_ylabel("s_i / s_1")
    ax.set_title(title or "log-probability matrix spectrum (dotted: softmax bound d + 1)",
                 fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser(prog: str = "fairseq-mixtape-bottleneck") -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=prog,
        description="Rank of the log-probability matrix of trained fairseq checkpoints (any "
                    "family, any output layer, fairseq-mixtape or stock): numerical rank, "
                    "eps-effective ranks and the singular-value spectrum, computed in float64.")
    parser.add_argument("checkpoints", nargs="+", type=pathlib.Path, metavar="CHECKPOINT",
                        help="checkpoint files")
    parser.add_argument("--data", type=pathlib.Path,
                        help="binarized data folder (default: the one in the checkpoint)")
    parser.add_argument("--subset", default="test", help="data split whose contexts are used")
    parser.add_argument("--contexts", type=int, default=2000,
                        help="rows: target positions taken in order (more than the vocabulary "
                             "is pointless: the rank is at most min(rows, V))")
    parser.add_argument("--names", help="comma-separated labels, one per checkpoint")
    parser.add_argument("--plot", type=pathlib.Path, help="PNG of the overlaid spectra")
    parser.add_argument("--json", type=pathlib.Path, help="write the reports here")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None,
               parser: Optional[argparse.ArgumentParser] = None) -> argparse.Namespace:
    """The options, checked before any work: argparse errors (exit status 2) that name the
    argument, the value and what is allowed, for bad values, missing or unreadable checkpoints
    and data folders that do not suit the checkpoints' tasks."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if args.contexts < 1:
        parser.error(f"--contexts: got {args.contexts}; allowed: at least 1")
    names = args.names
    args.names = names.split(",") if names else [str(c) for c in args.checkpoints]
    if len(args.names) != len(args.checkpoints):
        parser.error(f"--names: got {names!r} ({len(args.names)} labels); allowed: "
                     f"{len(args.checkpoints)} comma-separated labels, one per checkpoint")
    for flag in ("--plot", "--json"):
        path = getattr(args, flag[2:])
        if path is not None and (path.is_dir() or any(parent.exists() and not parent.is_dir()
                                                       for parent in path.parents)):
            parser.error(f"{flag}: got {str(path)!r}, "
                         f"{'a directory' if path.is_dir() else 'under a file'}; allowed: a file "
                         "name (its folder is made where it does not exist)")
    for checkpoint in args.checkpoints:
        if not checkpoint.is_file():
            problem = "a directory" if checkpoint.is_dir() else "which does not exist"
            parser.error(f"CHECKPOINT: got {str(checkpoint)!r}, {problem}; allowed: "
                         f"{CHECKPOINT_ALLOWED}")
    for checkpoint in args.checkpoints:
        try:
            state = read_checkpoint(checkpoint)
        except UnusableInput as error:
            parser.error(str(error))
        check_data(parser, checkpoint, state, args.data, args.subset)
    return args


def language_pair(task: Mapping, folder: pathlib.Path) -> Tuple[Optional[str], Optional[str]]:
    """A translation checkpoint's languages: its --source-lang / --target-lang, or else those
    that fairseq infers from the file names in the data folder."""
    source, target = task.get("source_lang"), task.get("target_lang")
    if source is None or target is None:
        from fairseq.data.data_utils import infer_language_pair

        source, target = infer_language_pair(str(folder))
    return source, target


def check_data(parser: argparse.ArgumentParser, checkpoint: pathlib.Path, state: Mapping,
               data: Optional[pathlib.Path], subset: str) -> None:
    """The data folder (``data``, or the one the checkpoint records) holds the dictionaries of
    the checkpoint's task, as large as the model's embeddings, and the ``subset`` split, in
    fairseq-preprocess's layout; checked for the language modelling and translation tasks
    (fairseq reports on the others when loading)."""
    name, task = task_settings(state)
    if data is None:
        data = task.get("data")
        if not data:
            parser.error(f"--data: not given, and {str(checkpoint)!r} records no data folder; "
                         "allowed: the binarized data folder of the checkpoint's task")
        kind = f"--data (not given: the data folder of {checkpoint}, a {name} model)"
    else:
        kind = f"--data (for {checkpoint}, a {name} model)"
    if "://" in str(data) or name not in ("language_modeling", "translation"):
        return
    folder = pathlib.Path(str(data).split(os.pathsep)[0])  # fairseq: shards a:b, the first
    if name == "language_modeling":
        check_data_dir(parser, folder, kind, [["dict.txt"]])
        check_dictionary(parser, kind, folder, "dict.txt", state, "decoder.embed_tokens.weight")
        prefixes = [subset]
        splits = sorted(f.name[:-4] for f in folder.glob("*.bin") if "." not in f.name[:-4])
    else:
        source, target = language_pair(task, folder) if folder.is_dir() else (
            task.get("source_lang") or "SRC", task.get("target_lang") or "TGT")
        if source is None:
            parser.error(f"{kind}: got {str(folder)!r}, which holds no SPLIT.SRC-TGT.LANG files "
                         "(the language pair); allowed: a translation data folder of "
                         "fairseq-preprocess --source-lang SRC --target-lang TGT")
        check_data_dir(parser, folder, kind, [[f"dict.{source}.txt", f"dict.{target}.txt"]])
        check_dictionary(parser, kind, folder, f"dict.{source}.txt", state,
                         "encoder.embed_tokens.weight")
        check_dictionary(parser, kind, folder, f"dict.{target}.txt", state,
                         "decoder.embed_tokens.weight")
        pair = f"{target}-{source}" if any(folder.glob(f"{subset}.{target}-{source}.*")) \
            else f"{source}-{target}"
        prefixes = [f"{subset}.{pair}.{lang}" for lang in (source, target)]
        splits = sorted({f.name.split(".")[0] for f in folder.glob(f"*.{pair}.{source}.bin")})
    missing = [file for prefix in prefixes if not (folder / prefix).is_file()  # raw text
               for file in (f"{prefix}.bin", f"{prefix}.idx") if not (folder / file).is_file()]
    if missing:
        parser.error(f"--subset: got {subset!r}, which {str(folder)!r} lacks (no "
                     f"{', '.join(missing)}); allowed: a split of that folder: "
                     f"{', '.join(splits) or 'none there'}")


def check_dictionary(parser: argparse.ArgumentParser, kind: str, folder: pathlib.Path,
                     file: str, state: Mapping, embedding: str) -> None:
    """The dictionary ``folder/file`` has as many entries as the checkpoint's ``embedding`` has
    rows (where the model has that embedding: adaptive inputs have others)."""
    from fairseq.data import Dictionary

    try:
        size = len(Dictionary.load(str(folder / file)))
    except Exception as error:  # fairseq raises bare Exceptions on a bad line
        parser.error(f"{kind}: got {str(folder)!r}, whose {file} fairseq cannot read "
                     f"({one_line(error)}); allowed: a dictionary of fairseq-preprocess")
    rows = getattr(state["model"].get(embedding), "shape", [size])[0]
    if rows != size:
        parser.error(f"{kind}: got {str(folder)!r}, whose {file} makes a dictionary of {size} "
                     f"entries, but the model's {embedding} has {rows}; allowed: the data folder "
                     "the checkpoint was trained on, or one with the same dictionary")


def main(argv: Optional[Sequence[str]] = None,
         prog: str = "fairseq-mixtape-bottleneck") -> List[RankReport]:
    parser = build_parser(prog)
    args = parse_args(argv, parser)
    reports = []
    for checkpoint, name in zip(args.checkpoints, args.names):
        try:
            report = measure_checkpoint(checkpoint, args.data, args.subset, args.contexts, name)
        except UnusableInput as error:  # found only when fairseq builds the model
            parser.error(str(error))
        print(report.line(), flush=True)
        reports.append(report)
    if args.plot:
        plot_spectra(reports, args.plot)
        print(f"spectra: {args.plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r.summary() for r in reports], indent=1) + "\n")
    return reports


def cli() -> None:
    """The console script (its return value would become the exit status)."""
    main()


if __name__ == "__main__":
    cli()
