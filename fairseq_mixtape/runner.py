"""Running fairseq's command-line tools as a user would (``python -m fairseq_cli.<tool>``, with
``--user-dir`` pointing at this package), for the demo and the experiment scripts."""

import os
import pathlib
import re
import subprocess
import sys
from typing import Callable, Optional, Sequence

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


class CommandFailed(RuntimeError):
    pass


def run_tool(tool: str, arguments: Sequence[str], log_path: pathlib.Path,
             on_line: Optional[Callable[[str], None]] = None, threads: int = 1) -> str:
    """Run ``python -m fairseq_cli.<tool> ARGS`` with ``threads`` torch threads, stream its output
    to ``log_path`` (and each line to ``on_line``), and return the output; raise CommandFailed
    with its tail on failure."""
    command = [sys.executable, "-m", f"fairseq_cli.{tool}", *map(str, arguments)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    lines = []
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log, subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        log.write(" ".join(command) + "\n")
        for line in proc.stdout:
            log.write(line)
            log.flush()  # a live log, for long runs
            lines.append(line)
            if on_line:
                on_line(line)
    output = "".join(lines)
    if proc.returncode != 0:
        raise CommandFailed(f"fairseq_cli.{tool} failed (exit {proc.returncode}); log: {log_path}"
                            f"\n{''.join(lines[-25:])}")
    return output



def train_progress_printer(layer: str, total_updates: int) -> Callable[[str], None]:
    """A callback that prints one progress line per fairseq training log line (its
    ``--log-interval``), with the update count and the training perplexity fairseq reports."""
    def on_line(line: str):
        updates = re.search(r"num_updates=(\d+)", line)
        perplexity = re.search(r"\bppl=([\d.]+)", line)
        if updates and perplexity:
            print(f"    {layer:<14} update {int(updates.group(1)):>5}/{total_updates}"
                  f"  train ppl {float(perplexity.group(1)):8.2f}", flush=True)
    return on_line
