"""The output layer and the token losses over chunks of whole sequences.

Each chunk runs under activation checkpointing, so the large intermediates of the output layer
(MoS: K log-softmaxes of (b, T, K, V)) exist for one chunk at a time, in the forward pass and
again, recomputed, in the backward pass. Chunks are whole sequences (batch rows) because MoS's
context dropout samples one mask per sequence, shared over time steps; checkpointing restores
the RNG state before recomputing, so the recomputed masks are the ones of the forward pass.
"""

from functools import partial
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..output_layers import OutputLayer


class TokenLosses(NamedTuple):
    """Per-position terms of the loss, each (B, T) and 0 at padding."""

    nll: torch.Tensor                  # -log p(target)
    smooth: Optional[torch.Tensor]     # -sum_x log p(x), for label smoothing; None unless asked
    predicted: Optional[torch.Tensor]  # argmax_x log p(x), long, also at padding; None unless asked


def rows_per_chunk(batch_size: int, length: int, chunk_tokens: int) -> int:
    """Sequences per chunk: as many whole sequences of ``length`` target positions as fit in
    ``chunk_tokens`` positions, at least one; all of them for ``chunk_tokens`` = 0."""
    if chunk_tokens <= 0:
        return batch_size
    return max(1, min(batch_size, chunk_tokens // max(length, 1)))


def token_losses(layer: OutputLayer, features: torch.Tensor, target: torch.Tensor,
                 padding_idx: int, smooth: bool, predict: bool) -> TokenLosses:
    """One chunk: features (b, T, C), target (b, T) -> TokenLosses of (b, T) tensors.

    log p = log_softmax(scores) in float32, as fairseq's ``get_normalized_probs`` computes it
    (for mixtures, whose scores are log-probabilities, the identity up to rounding). Every layer's
    scores are finite, so log p is finite and the smoothing sum never meets -inf.
    """
    lprobs = F.log_softmax(layer(features).float(), dim=-1)          # (b, T, V)
    pad = target.eq(padding_idx)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1).masked_fill(pad, 0.0)
    smooth_loss = -lprobs.sum(-1).masked_fill(pad, 0.0) if smooth else None
    predicted = lprobs.detach().argmax(-1) if predict else None
    return TokenLosses(nll, smooth_loss, predicted)


def chunked_token_losses(layer: OutputLayer, features: torch.Tensor, target: torch.Tensor,
                         padding_idx: int, chunk_tokens: int, smooth: bool = False,
                         predict: bool = False) -> TokenLosses:
    """``token_losses`` over chunks of ``rows_per_chunk`` sequences, concatenated: (B, T) each.

    With gradients enabled and more than one chunk, each chunk is checkpointed (non-reentrant):
    only its (b, T) results are kept for backward, where the chunk is recomputed alone.
    """
    compute = partial(token_losses, layer, padding_idx=padding_idx, smooth=smooth, predict=predict)
    rows = rows_per_chunk(*target.shape, chunk_tokens)
    if rows >= target.size(0):
        return compute(features, target)  # one chunk: checkpointing would only add a recomputation
    if torch.is_grad_enabled():
        compute = partial(checkpoint, compute, use_reentrant=False)
    chunks = [compute(f, t) for f, t in zip(features.split(rows), target.split(rows))]
    return TokenLosses(*(None if parts[0] is None else torch.cat(parts) for parts in zip(*chunks)))
