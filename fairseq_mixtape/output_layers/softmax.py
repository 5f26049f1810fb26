"""The baseline: log p(x|g) = log_softmax_x(g . w_x + b_x)."""

import torch

from .base import OutputLayer, check_option, register_output_layer


@register_output_layer("softmax")
class Softmax(OutputLayer):
    """A linear projection to the vocabulary; fairseq's log_softmax normalises it.

    Its log-probability matrix over contexts has rank <= d + 1: the softmax bottleneck.
    ``forward`` returns the logits.
    """

    scores_are_log_probs = False
    direct_target_log_probs = False

    def __init__(self, input_dim, num_tokens, embed_weight=None, embed_dim=None, bias=False):
        super().__init__(input_dim, num_tokens, embed_weight, embed_dim, bias)
        check_option(self.embed_dim == input_dim, "output embedding dim", self.embed_dim,
                     f"the decoder output dim {input_dim} (a single softmax has no projection; "
                     "set --decoder-output-dim / --decoder-out-embed-dim to match)")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.token_logits(features)  # (..., C) -> (..., V)
