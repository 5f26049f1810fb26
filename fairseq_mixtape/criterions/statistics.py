"""Statistics of a mixture's weights for the training log: how sharp they are and how much each
component is used. Summable per batch (``logging_outputs_can_be_summed``), averaged over
non-padding target positions by ``log_mixture_statistics``.

The weights are the layer's ``gate_priors(features)`` (..., K): MoS's prior pi_k(g), Mixtape's
shared sigmoid-tree priors (those of every token but the S frequent ones, whose priors are
token-specific). Single softmaxes have none and log nothing.
"""

import math
from typing import Dict, List

import torch

from fairseq import utils
from fairseq.logging import metrics

from ..output_layers import OutputLayer

POSITIONS = "mixture_positions"  # the count that the other statistics are averaged over
ENTROPY = "mixture_entropy"
WEIGHT = "mixture_weight_"       # + component index k, zero-padded to sort on TensorBoard


def weight_key(k: int, components: int) -> str:
    return f"{WEIGHT}{k:0{len(str(components - 1))}d}"


@torch.no_grad()
def mixture_statistics(layer: OutputLayer, features: torch.Tensor,
                       mask: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Sums over the positions where ``mask`` (B, T) is true, for features (B, T, C):

        mixture_positions      the number of positions
        mixture_entropy        sum of H(pi) = -sum_k pi_k ln pi_k (nats; 0 ln 0 = 0)
        mixture_weight_k       sum of pi_k, for each of the K components

    as 0-dim float32 tensors (no device synchronisation), or {} if the layer has no mixture.
    """
    priors = layer.gate_priors(features.detach())                     # (B, T, K) or None
    if priors is None:
        return {}
    priors = priors.float()
    weight = mask.unsqueeze(-1).to(priors.dtype)                       # (B, T, 1)
    entropy = torch.special.entr(priors).sum(-1, keepdim=True)         # (B, T, 1)
    usage = (priors * weight).flatten(0, -2).sum(0)                    # (K,)
    K = usage.numel()
    stats = {POSITIONS: weight.sum(), ENTROPY: (entropy * weight).sum()}
    stats.update({weight_key(k, K): usage[k] for k in range(K)})
    return stats


def log_mixture_statistics(logging_outputs: List[Dict]) -> None:
    """Log the per-position means: ``mixture_entropy`` in bits (like fairseq's loss) and each
    ``mixture_weight_k``, weighted by the number of positions."""
    positions = utils.item(sum(log.get(POSITIONS, 0) for log in logging_outputs))
    if not positions:
        return
    keys = sorted({key for log in logging_outputs for key in log if key.startswith(WEIGHT)})
    for key in [ENTROPY, *keys]:
        total = utils.item(sum(log.get(key, 0) for log in logging_outputs))
        unit = math.log(2) if key == ENTROPY else 1.0
        metrics.log_scalar(key, total / positions / unit, positions, round=3)
