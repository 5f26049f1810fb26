"""Criterions for models with a fairseq-mixtape output layer (registered on import):

    output_layer_cross_entropy                  fairseq's cross_entropy, chunked, with statistics
    output_layer_label_smoothed_cross_entropy   fairseq's label_smoothed_cross_entropy, likewise
"""

from .cross_entropy import (  # noqa: F401  (registers the criterions)
    OutputLayerCrossEntropyCriterion,
    OutputLayerLabelSmoothedCrossEntropyCriterion,
)
