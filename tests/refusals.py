"""The one check of a tool's refusal of bad input: exit status 2, nothing on stdout, and one line
on stderr, ``PROG: error: MESSAGE``, never a traceback. Tests then check what MESSAGE names
(the flag or file, the value, what is allowed).

    message = refused(sweep.parse_args, ["--dims", "0"], capsys)          # in this process
    prog, message = refused_command(["fairseq-mixtape-bottleneck", "x.pt"], cwd=tmp_path)

In this process where the tool has a ``main(argv)`` or ``parse_args(argv)`` (fast); as a
subprocess once per console script or launcher, to show the command a user types refuses alike.
"""

import os
import subprocess
from typing import Callable, List, Sequence, Tuple

import pytest

SEPARATOR = ": error: "


def one_line_error(stdout: str, stderr: str) -> Tuple[str, str]:
    """(PROG, MESSAGE) of the single ``PROG: error: MESSAGE`` line of a refusal's output."""
    assert stdout == "", f"a refusal printed to stdout:\n{stdout[-2000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"a refusal is one line on stderr, got {len(lines)}:\n{stderr[-3000:]}"
    prog, separator, message = lines[0].partition(SEPARATOR)
    assert separator, f"not 'PROG{SEPARATOR}MESSAGE': {lines[0]}"
    return prog, message


def refused(call: Callable[[List[str]], object], argv: Sequence[str], capsys) -> str:
    """MESSAGE of the refusal of ``call(argv)`` (a tool's main or parse_args), run here."""
    capsys.readouterr()  # what came before is not the refusal's
    with pytest.raises(SystemExit) as exited:
        call(list(argv))
    assert exited.value.code == 2, f"exit status {exited.value.code!r}, not 2"
    return one_line_error(*capsys.readouterr())[1]


def refused_command(command: Sequence[str], cwd, timeout: int = 300) -> Tuple[str, str]:
    """(PROG, MESSAGE) of the refusal of ``command``, run as a subprocess in ``cwd``."""
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, (f"exit status {done.returncode}, not 2\n"
                                  f"{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return one_line_error(done.stdout, done.stderr)
