"""Sigsoftmax and the mixture of sigsoftmaxes (Kanai et al., NeurIPS 2018).

    sigsoftmax(z)_x = exp(z_x) sigmoid(z_x) / sum_x' exp(z_x') sigmoid(z_x')

computed in log space as log_softmax(z + logsigmoid(z)): exact and finite for any z, where
exp(z - max z) * sigmoid(z) would give 0/0 on an all-negative row.
"""

import torch
import torch.nn.functional as F

from .mos import MixtureOfSoftmaxes
from .base import register_output_layer, upcast
from .softmax import Softmax


def sigsoftmax_logits(z: torch.Tensor) -> torch.Tensor:
    """Logits whose log_softmax is log sigsoftmax(z), in float32 (or float64 for float64 z)."""
    z = upcast(z)
    return z + F.logsigmoid(z)


@register_output_layer("sigsoftmax")
class Sigsoftmax(Softmax):
    """A single sigsoftmax: same parameters as softmax, no extra cost but an elementwise op.
    ``forward`` returns the logits z + log sigmoid(z)."""

    scores_are_log_probs = False
    direct_target_log_probs = False

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return sigsoftmax_logits(self.token_logits(features))


@register_output_layer("mos_sigsoftmax")
class MixtureOfSigsoftmaxes(MixtureOfSoftmaxes):
    """MoS with each component's softmax replaced by a sigsoftmax; like MoS, ``forward``
    returns log p and ``target_log_probs`` needs no (..., V) mixture."""

    scores_are_log_probs = True
    direct_target_log_probs = True

    def component_scores(self, logits: torch.Tensor) -> torch.Tensor:
        return sigsoftmax_logits(logits)
