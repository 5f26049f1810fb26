#!/usr/bin/env python
"""Benchmark the output layers: see fairseq_mixtape_tools/benchmark/ or --help (installed as
the console script fairseq-mixtape-benchmark).

    python scripts/benchmark.py          # default CPU run: CSV, PNG, Markdown in benchmark-results/
    python scripts/benchmark.py --quick  # smoke run
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from fairseq_mixtape_tools.benchmark import cli  # noqa: E402

if __name__ == "__main__":
    cli()
