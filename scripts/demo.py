#!/usr/bin/env python
"""The project's demo (main job): softmax vs MoS vs Mixtape (vs sigsoftmax) on a language where
the softmax bottleneck bites, through the real fairseq command-line tools.

    python scripts/demo.py            # about 5 minutes on 2 CPU cores
    python scripts/demo.py -h         # options: --data DIR, --work-dir, --updates, --seed, --layers

The logic lives in ``fairseq_mixtape/demo.py``.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout

from fairseq_mixtape.demo import main  # noqa: E402

if __name__ == "__main__":
    main()
