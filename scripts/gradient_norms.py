#!/usr/bin/env python
"""Where the gradient of an experiment's first updates lies: see
fairseq_mixtape_tools/gradient_norms.py or --help.

    python scripts/gradient_norms.py --experiment sweep --experiment-args '--dims 16'
    python scripts/gradient_norms.py --experiment multi30k --updates 300
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from fairseq_mixtape_tools.gradient_norms import main  # noqa: E402

if __name__ == "__main__":
    main()
