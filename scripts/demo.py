#!/usr/bin/env python
"""The project's demo: softmax vs MoS vs Mixtape (vs sigsoftmax) on a language where
the softmax bottleneck bites, through the real fairseq command-line tools.

    python scripts/demo.py            # 7-9 minutes on a 2-core CPU machine running other jobs
    python scripts/demo.py -h         # options: --data DIR, --work-dir, --updates, --seed, --layers

The logic lives in ``fairseq_mixtape_tools/demo.py`` (installed as the console script
fairseq-mixtape-demo).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from fairseq_mixtape_tools.demo import main  # noqa: E402

if __name__ == "__main__":
    main()
