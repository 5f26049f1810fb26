#!/usr/bin/env python
"""Soak test (a long run, not in CI): train a small Mixtape language model for many updates and
check every logged loss and saved checkpoint; see fairseq_mixtape_tools/soak.py or --help.

    python scripts/soak.py --data-bin runs/ptb/data-bin --updates 10000      # CPU
    python scripts/soak.py --data-bin runs/ptb/data-bin --precision fp16     # on a GPU
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from fairseq_mixtape_tools.soak import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
