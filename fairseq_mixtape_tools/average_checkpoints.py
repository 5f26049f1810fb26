"""Average the parameters of the last N fairseq checkpoints (Vaswani et al. 2017; Ott et al. 2018).

The pip packages of fairseq do not ship fairseq's ``scripts/average_checkpoints.py``; this is the
same computation (and the same flags), for checkpoints of models with fairseq-mixtape output
layers too. Importing ``fairseq_mixtape`` lets ``torch.load`` read fairseq checkpoints under
torch >= 2.6 (weights_only loading with the plugin's allowlist).

    python scripts/average_checkpoints.py --inputs checkpoints/run --num-epoch-checkpoints 10 \\
        --output checkpoints/run/checkpoint.avg10.pt
    python scripts/average_checkpoints.py --inputs checkpoints/run --num-update-checkpoints 5 ...
    python scripts/average_checkpoints.py --inputs a.pt b.pt c.pt --output avg.pt

The output keeps the newest input's configuration and training state, without its optimizer
state (not needed to generate or evaluate); it loads like any checkpoint.
"""

import collections
import os
import re
from pathlib import Path

import torch
from fairseq.checkpoint_utils import torch_persistent_save

from fairseq_mixtape.compat import fairseq_checkpoint_classes  # torch >= 2.6
from fairseq_mixtape_tools.arguments import ArgumentParser


class Refused(ValueError):
    """An input this script cannot use; the message names the flag, the value and what is
    allowed (printed as a one-line argparse error, exit status 2)."""


def last_n_checkpoints(folder, n, update_based, upper_bound=None):
    """The newest n of checkpoint<epoch>.pt (or checkpoint_<epoch>_<update>.pt), newest first."""
    pattern = re.compile(r"checkpoint_\d+_(\d+)\.pt$" if update_based else r"checkpoint(\d+)\.pt$")
    found = []
    for name in os.listdir(folder):
        match = pattern.fullmatch(name)
        if match and (upper_bound is None or int(match.group(1)) <= upper_bound):
            found.append((int(match.group(1)), name))
    if len(found) < n:
        kind = "update" if update_based else "epoch"
        raise Refused(f"--inputs: got {folder!r}, which holds {len(found)} {kind} checkpoints "
                      f"({', '.join(sorted(name for _, name in found)) or 'none'}); allowed: a "
                      f"folder with at least {n} (--num-{kind}-checkpoints)")
    return [os.path.join(folder, name) for _, name in sorted(found, reverse=True)[:n]]


def average_checkpoints(paths):
    """The state of paths[0] with the mean of all the paths' model parameters."""
    new_state, sums = None, collections.OrderedDict()
    for path in paths:
        try:
            with fairseq_checkpoint_classes():
                state = torch.load(path, map_location="cpu")
        except Exception as error:  # a text file, a truncated file, ...: torch's errors vary
            first = (str(error).strip().splitlines() or [""])[0]
            raise Refused(f"--inputs: got {str(path)!r}, which torch.load cannot read "
                          f"({type(error).__name__}: {first}); allowed: fairseq checkpoints")
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise Refused(f"--inputs: got {str(path)!r}, which has no 'model' parameters; "
                          "allowed: fairseq checkpoints")
        if new_state is None:
            new_state = state
        params = state["model"]
        if sums and list(params) != list(sums):
            raise Refused(f"--inputs: got {str(path)!r}, whose parameters differ from those of "
                          f"{str(paths[0])!r}; allowed: checkpoints of one model")
        for key, value in params.items():
            value = value.double() if value.is_floating_point() else value.clone()
            if key in sums:
                sums[key] += value
            else:
                sums[key] = value
    model = new_state["model"]
    for key, total in sums.items():
        if total.is_floating_point():
            model[key] = (total / len(paths)).to(model[key].dtype)
        else:
            model[key] = torch.div(total, len(paths), rounding_mode="floor")
    new_state.pop("last_optimizer_state", None)
    return new_state


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", nargs="+", required=True,
                        help="checkpoint files, or one folder with --num-*-checkpoints")
    parser.add_argument("--output", required=True, help="where to write the averaged checkpoint")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--num-epoch-checkpoints", type=int,
                       help="average the last N checkpoint<epoch>.pt of the folder")
    group.add_argument("--num-update-checkpoints", type=int,
                       help="average the last N checkpoint_<epoch>_<update>.pt of the folder")
    parser.add_argument("--checkpoint-upper-bound", type=int,
                        help="only checkpoints of at most this epoch (or update)")
    args = parser.parse_args(argv)

    flag, count = (("--num-epoch-checkpoints", args.num_epoch_checkpoints)
                   if args.num_epoch_checkpoints is not None else
                   ("--num-update-checkpoints", args.num_update_checkpoints))
    if count is not None and count < 1:
        parser.error(f"{flag}: got {count}; allowed: a whole number >= 1")
    output = Path(args.output)
    if any(path.exists() and not path.is_dir() for path in output.parents) or output.is_dir():
        parser.error(f"--output: got {args.output!r}, "
                     f"{'a folder' if output.is_dir() else 'under a file'}; allowed: a file name "
                     "in an existing folder")
    if not output.parent.is_dir():
        parser.error(f"--output: got {args.output!r}, whose folder does not exist; allowed: a "
                     "file name in an existing folder")
    try:
        if count:
            if len(args.inputs) != 1 or not os.path.isdir(args.inputs[0]):
                parser.error(f"--inputs: got {' '.join(args.inputs)!r}; allowed: one folder with "
                             f"{flag}")
            paths = last_n_checkpoints(args.inputs[0], count,
                                       args.num_update_checkpoints is not None,
                                       args.checkpoint_upper_bound)
        else:
            paths = args.inputs
            for path in paths:
                if not os.path.isfile(path):
                    parser.error(f"--inputs: got {path!r}, "
                                 f"{'a folder' if os.path.isdir(path) else 'which does not exist'}"
                                 "; allowed: checkpoint files (a folder with --num-*-checkpoints)")
        averaged = average_checkpoints(paths)
    except Refused as error:
        parser.error(str(error))
    print(f"averaged {len(paths)} checkpoints: {' '.join(os.path.basename(p) for p in paths)}")
    torch_persistent_save(averaged, args.output)
    print(f"wrote {args.output}")

