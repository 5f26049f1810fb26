#!/usr/bin/env python
"""Multi30k English-German, trained to convergence: softmax vs Mixtape vs the no-mixture control
vs MoS on the same Transformer; the experiment is fairseq_mixtape_tools/experiments/multi30k.py
(its steps, options and cost: --help).

    python examples/translation/multi30k_experiment.py --data ../shared/data/multi30k-en-de \\
        --out runs/multi30k --jobs 1
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout, uninstalled

from fairseq_mixtape_tools.experiments.multi30k import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
