#!/usr/bin/env python
"""Penn Treebank: softmax vs MoS vs Mixtape vs sigsoftmax on the same small Transformer language
model; the experiment is fairseq_mixtape_tools/experiments/ptb.py (its steps and options: --help).

    python examples/language_model/ptb_experiment.py --data ../shared/data/ptb --out runs/ptb
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

from fairseq_mixtape_tools.experiments.ptb import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
