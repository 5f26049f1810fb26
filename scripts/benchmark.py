#!/usr/bin/env python
"""Benchmark the output layers (issue 5): see fairseq_mixtape/benchmark.py or --help.

    python scripts/benchmark.py            # default CPU run: CSV, PNG and Markdown in benchmarks/
    python scripts/benchmark.py --quick    # smoke run
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, uninstalled

from fairseq_mixtape.benchmark import main  # noqa: E402

if __name__ == "__main__":
    main()
