#!/usr/bin/env python
"""Rank of trained checkpoints' log-probability matrices: see fairseq_mixtape_tools/bottleneck.py
or --help (installed as the console script fairseq-mixtape-bottleneck).

    python scripts/bottleneck.py CKPT [CKPT ...] --data DATA_BIN --subset test --plot s.png
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from fairseq_mixtape_tools.bottleneck import main  # noqa: E402

if __name__ == "__main__":
    main(prog="python scripts/bottleneck.py")
