"""Running fairseq's command-line tools as a user would (``python -m fairseq_cli.<tool>``, with
``--user-dir`` pointing at the plugin package), and reading their training logs, for the demo
and the experiment scripts."""

import importlib.util
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
from typing import Callable, Dict, List, Optional, Sequence, Set

# The plugin package fairseq_mixtape/ (not these tools): what --user-dir points at. Found
# without importing it (which would import fairseq) in this process.
PACKAGE_DIR = pathlib.Path(importlib.util.find_spec("fairseq_mixtape").origin).resolve().parent


class CommandFailed(RuntimeError):
    pass


_RUNNING: Set[subprocess.Popen] = set()  # the tools' processes running now
_STOPPING = threading.Event()
_PRINTING = threading.Lock()


def say(line: str) -> None:
    """Print ``line`` whole. Runs print from parallel threads, and print() writes its text and
    its newline separately, so that two lines printed at once could otherwise share one."""
    with _PRINTING:
        print(line, flush=True)


def stop_tools_on_terminate() -> None:
    """On SIGTERM (``kill PID`` of a script in the background) stop every tool process this
    script started and start no more, then exit: otherwise a fairseq-train keeps writing its run
    directory, unseen, while a rerun resumes the same run. Call from the main thread."""
    def terminate(signum, frame):
        _STOPPING.set()
        for proc in list(_RUNNING):
            proc.terminate()
        os.write(2, b"SIGTERM: stopped the fairseq tools this script started; rerun it to "
                    b"resume from the last checkpoints\n")  # os.write: safe in a handler
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, terminate)


def run_tool(tool: str, arguments: Sequence[str], log_path: pathlib.Path,
             on_line: Optional[Callable[[str], None]] = None, threads: int = 1,
             append: bool = False) -> str:
    """Run ``python -m fairseq_cli.<tool> ARGS`` with ``threads`` torch threads, stream its output
    to ``log_path`` (after what it holds, with ``append``; and each line to ``on_line``), and
    return this run's output; raise CommandFailed with its tail on failure."""
    command = [sys.executable, "-m", f"fairseq_cli.{tool}", *map(str, arguments)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    lines = []
    if _STOPPING.is_set():
        raise CommandFailed(f"fairseq_cli.{tool} not started: the script is terminating")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a" if append else "w") as log, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        _RUNNING.add(proc)
        try:
            if _STOPPING.is_set():  # the signal came while it started
                proc.terminate()
            log.write(" ".join(command) + "\n")
            for line in proc.stdout:
                log.write(line)
                log.flush()  # a live log, for long runs
                lines.append(line)
                if on_line:
                    on_line(line)
        finally:
            _RUNNING.discard(proc)
    output = "".join(lines)
    if proc.returncode != 0:
        raise CommandFailed(f"fairseq_cli.{tool} failed (exit {proc.returncode}); log: {log_path}"
                            f"\n{''.join(lines[-25:])}")
    return output


def train_progress_printer(layer: str, total_updates: int = 0) -> Callable[[str], None]:
    """A callback that prints one progress line per fairseq training log line (its
    ``--log-interval``), with the update count and the training perplexity fairseq reports."""
    def on_line(line: str):
        updates = re.search(r"num_updates=(\d+)", line)
        perplexity = re.search(r"\bppl=([\d.]+)", line)
        if updates and perplexity:
            total = f"/{total_updates}" if total_updates else ""  # 0: set by epochs
            say(f"    {layer:<14} update {int(updates.group(1)):>5}{total}"
                f"  train ppl {float(perplexity.group(1)):8.2f}")
    return on_line


def parse_train_log(output: str) -> Dict:
    """Parameters, updates, training time and the last validation loss (base 2) in
    fairseq-train's output. The training time is the sum of fairseq's per-epoch ``train_wall``:
    its own clock of the training loop, without start-up, validation and checkpointing;
    ``total_seconds`` is fairseq's "done training in" time (the last process's alone, where a run
    was resumed); ``valid_ppl_curve`` the validation perplexity after each epoch;
    ``mixture_entropy`` the last epoch's mean prior entropy (bits, mixtures only). Keys whose
    value is not in the log are left out."""
    def numbers(pattern: str) -> List[float]:
        return [float(found.replace(",", "")) for found in re.findall(pattern, output)]

    def last(pattern: str, default=float("nan")) -> float:
        found = numbers(pattern)
        return found[-1] if found else default

    epoch_walls = numbers(r"\| train \| epoch \d+ \|.*?\| train_wall ([\d.]+)")
    # epoch -> valid perplexity; a resumed run may validate an epoch twice: the last one counts
    curve = {int(epoch): float(ppl) for epoch, ppl in re.findall(
        r"\| epoch (\d+) \| valid on 'valid' subset \|.*?\| ppl ([\d.]+)", output)}
    found = dict(parameters=int(last(r"num\. shared model params: ([\d,]+)", -1)),
                 updates=int(last(r"num_updates[= ](\d+)", -1)),
                 train_seconds=sum(epoch_walls) if epoch_walls else float("nan"),
                 total_seconds=last(r"done training in ([\d.]+) seconds"),
                 valid_loss_base2=last(r"valid on 'valid' subset \| loss ([\d.]+)"))
    found = {key: value for key, value in found.items() if math.isfinite(value)}
    entropy = numbers(r"\| train \| epoch \d+ \|.*?\| mixture_entropy ([\d.]+)")
    if entropy:  # mixtures: the mean entropy of the priors (bits) over the last epoch
        found["mixture_entropy"] = entropy[-1]
    if curve:
        found["valid_ppl_curve"] = [curve[epoch] for epoch in sorted(curve)]
    return found
