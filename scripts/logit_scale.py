#!/usr/bin/env python
"""Each output layer's initial log-probability spread, and its ratio to a softmax's on the same
network: see fairseq_mixtape_tools/logit_scale.py or --help.

    python scripts/logit_scale.py                        # four networks, every layer and K
    python scripts/logit_scale.py --check                # exit 1 if a ratio is outside the range
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from fairseq_mixtape_tools.logit_scale import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
