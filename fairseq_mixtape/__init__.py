"""fairseq-mixtape: output layers that break the softmax bottleneck.

The core, which needs torch alone: the output layers (``output_layers``: ``build_output_layer``,
``OutputLayerConfig``) and their exact chunked loss (``losses``). The fairseq plugin on top of
it (``models``, ``criterions``, ``compat``) is loaded with ``fairseq-train --user-dir
path/to/fairseq_mixtape`` or ``import fairseq_mixtape`` where fairseq is installed: importing it
then makes fairseq 0.12 work under torch >= 2.6 and NumPy 2 (see ``compat``) and registers the
models, architectures and criterions. Without fairseq, the core alone is imported.
"""

from .output_layers import OUTPUT_LAYERS, OutputLayerConfig, build_output_layer
from .losses import chunked_token_losses

try:
    import fairseq  # noqa: F401
except ModuleNotFoundError as error:  # only fairseq's own absence; any other error raises
    if error.name != "fairseq":
        raise
    FAIRSEQ = False
else:
    FAIRSEQ = True
    from . import compat

    compat.apply()
    from . import models  # noqa: E402,F401  (registers the models and architectures)
    from . import criterions  # noqa: E402,F401  (registers the criterions)

__version__ = "0.3.0"
__all__ = ["OUTPUT_LAYERS", "OutputLayerConfig", "build_output_layer", "chunked_token_losses",
           "FAIRSEQ"]
