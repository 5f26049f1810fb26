"""Speed and memory of the output layers, alone and inside fairseq models: the benchmark
(``scripts/benchmark.py``, the console script ``fairseq-mixtape-benchmark``, or
``python -m fairseq_mixtape_tools.benchmark``). One job per module:

    command.py   the command line: flags, their checks, --quick; runs the rest
    sections.py  what is measured: the layer alone, whole training steps, beam search, memory
    grid.py      --grid: the layer alone over (E, V), eager and compiled, resumable
    measure.py   how it is measured: the entries, interleaved timed rounds, memory, FLOPs
    report.py    the CSV, Markdown and plot of the sections, and the helpers the grid's share

``cli`` and ``main`` are command.py's, imported when first used, so that importing one module
(the grid imports measure and report) does not import them all.
"""


def __getattr__(name: str):
    if name in ("cli", "main"):
        from . import command

        return getattr(command, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
