#!/usr/bin/env python
"""The softmax bottleneck where it binds: a sweep of the output width E on a word-level corpus;
the experiment is fairseq_mixtape_tools/experiments/sweep.py (its layers, steps and options:
--help).

    python examples/language_model/bottleneck_sweep.py --jobs 2        # 15-30 core-hours
    python examples/language_model/bottleneck_sweep.py --dims 16 --layers softmax,mixtape \\
        --max-epochs 1                                                 # a quick look
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

from fairseq_mixtape_tools.experiments.sweep import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
