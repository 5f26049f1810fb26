"""fairseq-mixtape: output layers that break the softmax bottleneck, as a fairseq plugin.

Use it with ``fairseq-train --user-dir path/to/fairseq_mixtape`` or ``import fairseq_mixtape``.
Importing it makes fairseq 0.12 work under torch >= 2.6 and NumPy 2 (see ``compat``) and
registers the output layers.
"""

from . import compat

compat.apply()

from .output_layers import OUTPUT_LAYERS, OutputLayerConfig, build_output_layer  # noqa: E402
from . import models  # noqa: E402,F401  (registers the models and architectures)
from . import criterions  # noqa: E402,F401  (registers the criterions)

__version__ = "0.2.0"
__all__ = ["OUTPUT_LAYERS", "OutputLayerConfig", "build_output_layer"]
