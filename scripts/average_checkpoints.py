#!/usr/bin/env python
"""Average the parameters of the last N fairseq checkpoints (the flags of fairseq's own
scripts/average_checkpoints.py, which its pip packages do not ship); see
fairseq_mixtape_tools/average_checkpoints.py or --help.

    python scripts/average_checkpoints.py --inputs checkpoints/run --num-epoch-checkpoints 10 \\
        --output checkpoints/run/checkpoint.avg10.pt
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from fairseq_mixtape_tools.average_checkpoints import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
