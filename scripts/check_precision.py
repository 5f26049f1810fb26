#!/usr/bin/env python
"""Numerics of every output layer under float16 / bfloat16, on CPU or GPU; see fairseq_mixtape_tools/precision.py or --help.

    python scripts/check_precision.py [--device cuda] [--vocab 32000] [--dim 512] [--positions 1024]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from fairseq_mixtape_tools.precision import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
