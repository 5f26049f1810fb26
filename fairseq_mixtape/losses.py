"""The output layer and the token losses over chunks of whole sequences.

Each chunk runs under activation checkpointing, so the large intermediates of the output layer
(MoS: K log-softmaxes of (b, T, K, V)) exist for one chunk at a time, in the forward pass and
again, recomputed, in the backward pass. Chunks are whole sequences (batch rows) because MoS's
context dropout samples one mask per sequence, shared over time steps; checkpointing restores
the RNG state before recomputing, so the recomputed masks are the ones of the forward pass.

Where the layer is compiled (``--compile-output-layer``), a chunk's layer, log-softmax and loss
run as one compiled function (``compiled_token_losses``), so the compiler can fuse across them.
"""

from functools import lru_cache, partial
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .compiled import Compiled
from .output_layers import OutputLayer


class TokenLosses(NamedTuple):
    """Per-position terms of the loss, each (B, T) and 0 at padding."""

    nll: torch.Tensor                  # -log p(target)
    smooth: Optional[torch.Tensor]     # -sum_x log p(x), for label smoothing; None unless asked
    predicted: Optional[torch.Tensor]  # argmax_x log p(x), long, also at padding; None unless asked


DEFAULT_CHUNK_TOKENS = 4096  # target positions per chunk, at vocabularies up to 32K
CHUNK_SCORES = 2 ** 27       # positions x scores per chunk by default: 512 MiB of float32 scores


def default_chunk_tokens(scores_per_position: int) -> int:
    """``--output-chunk-tokens`` where it is unset, from the layer's ``scores_per_position`` (V;
    MoS: K x V): 4096 positions, or fewer above 32K scores per position, so that a chunk's
    scores keep to about 2^27 entries (V = 256K: 524 positions; MoS-4 at V = 128K: 262)."""
    return max(1, min(DEFAULT_CHUNK_TOKENS, CHUNK_SCORES // scores_per_position))


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
    scores are finite, so log p is finite and the smoothing sum never meets -inf. A layer with
    ``direct_target_log_probs`` (MoS) gives log p(target) through its ``target_log_probs`` where
    neither the smoothing sum nor the prediction is asked for: the same numbers up to rounding,
    without the (b, T, V) mixture.
    """
    pad = target.eq(padding_idx)
    if layer.direct_target_log_probs and not (smooth or predict):  # MoS: no (b, T, V)
        nll = -layer.target_log_probs(features, target).float().masked_fill(pad, 0.0)
        return TokenLosses(nll, None, None)
    lprobs = F.log_softmax(layer.forward(features).float(), dim=-1)  # (b, T, V), eager layer
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1).masked_fill(pad, 0.0)
    smooth_loss = -lprobs.sum(-1).masked_fill(pad, 0.0) if smooth else None
    predicted = lprobs.detach().argmax(-1) if predict else None
    return TokenLosses(nll, smooth_loss, predicted)


def linear_cross_entropy_losses(layer: OutputLayer, features: torch.Tensor, target: torch.Tensor,
                                padding_idx: int, reduce: bool) -> TokenLosses:
    """-log p(target) of a softmax layer, log_softmax(g . w_x + b_x), by torch's chunked
    ``F.linear_cross_entropy``: it never keeps the (positions, V) logits, and recomputes them in
    backward. ``nll`` is (B, T), 0 at padding, or its sum with ``reduce``."""
    nll = F.linear_cross_entropy(
        features.flatten(0, -2), layer.weight, target.flatten(),     # (B, T, C) -> (B * T, C)
        linear_bias=layer.bias, reduction="sum" if reduce else "none", ignore_index=padding_idx,
        options=torch.nn.LinearCrossEntropyOptions())
    return TokenLosses(nll if reduce else nll.view_as(target), None, None)


@lru_cache(maxsize=None)
def compiled_token_losses() -> Compiled:
    """``token_losses`` through torch.compile: one per process, made on first use."""
    return Compiled(token_losses, "the output layer with its log-softmax and loss")


def chunked_token_losses(layer: OutputLayer, features: torch.Tensor, target: torch.Tensor,
                         padding_idx: int, chunk_tokens: Optional[int], smooth: bool = False,
                         predict: bool = False) -> TokenLosses:
    """``token_losses`` over chunks of ``rows_per_chunk`` sequences, concatenated: (B, T) each;
    ``chunk_tokens`` None: ``default_chunk_tokens`` of the layer's scores per position.

    With gradients enabled and more than one chunk, each chunk is checkpointed (non-reentrant):
    only its (b, T) results are kept for backward, where the chunk is recomputed alone.
    """
    losses = token_losses if layer.compiled_forward is None else compiled_token_losses()
    compute = partial(losses, layer, padding_idx=padding_idx, smooth=smooth, predict=predict)
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(layer.scores_per_position)
    rows = rows_per_chunk(*target.shape, chunk_tokens)
    if rows >= target.size(0):
        return compute(features, target)  # one chunk: checkpointing would only add a recomputation
    if torch.is_grad_enabled():
        compute = partial(checkpoint, compute, use_reentrant=False)
    chunks = [compute(f, t) for f, t in zip(features.split(rows), target.split(rows))]
    return TokenLosses(*(None if parts[0] is None else torch.cat(parts) for parts in zip(*chunks)))
