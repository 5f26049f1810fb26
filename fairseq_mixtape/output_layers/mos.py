"""Mixture of Softmaxes (Yang, Dai, Salakhutdinov, Cohen, ICLR 2018)."""

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ContextMixture, check_components, register_output_layer, upcast


@register_output_layer("mos")
class MixtureOfSoftmaxes(ContextMixture):
    """K softmaxes over K context vectors, mixed by a context-dependent prior (MoS eq. 4):

        pi_k       = softmax_k(W_pi g)
        h_k        = c tanh(W_k g + e_k)     (c: the context scale, 1 in the paper)
        log p(x|g) = logsumexp_k( log pi_k + log_softmax_x(h_k . w_x + b_x) )

    The mixture is computed exactly in log space (the official code's ``log(p + 1e-8)`` floor
    caps log-probs at -18.4 and fakes rank). ``--output-context-dropout`` drops the context
    vectors with one mask per sequence shared over time steps ("dropoutl";
    ``ContextMixture.contexts``). Costs K full V-wide softmaxes per position. ``forward`` returns
    log p itself. Where the plugin's criterions need only the targets' log-probabilities (no
    label smoothing or accuracy), they call ``target_log_probs``, which computes them without
    the (..., V) mixture and keeps fewer (..., K, V) intermediates.
    """

    scores_are_log_probs = True
    direct_target_log_probs = True
    default_components = 15

    def __init__(self, input_dim, num_tokens, embed_weight=None, embed_dim=None, bias=False,
                 components: int = 15, context_dropout: float = 0.0,
                 context_scale: Optional[float] = None, context_activation: str = "tanh"):
        super().__init__(input_dim, num_tokens, embed_weight, embed_dim, bias)
        check_components(components)
        self.prior = nn.Linear(input_dim, components, bias=False)        # W_pi
        self.context = nn.Linear(input_dim, components * self.embed_dim)  # W_k, e_k stacked
        self.init_contexts(components, context_scale, context_dropout, context_activation)

    @classmethod
    def from_config(cls, cfg, first_target: int = 0, **common):
        return cls(**common, components=cls.components_from(cfg), **cls.context_settings(cfg))

    @property
    def scores_per_position(self) -> int:
        return self.components * self.num_tokens  # the (..., K, V) component scores

    def gate_priors(self, features):
        return F.softmax(upcast(self.prior(features)), dim=-1)

    def component_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The scores (..., K, V) whose log_softmax over V is each component's log-probability:
        the logits z_kx themselves, in float32 under fp16/bf16."""
        return upcast(logits)

    def log_prior_and_scores(self, features: torch.Tensor):
        """features (..., C) -> log pi (..., K) and the component scores s (..., K, V)."""
        log_prior = F.log_softmax(upcast(self.prior(features)), dim=-1)
        return log_prior, self.component_scores(self.token_logits(self.contexts(features)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        log_prior, scores = self.log_prior_and_scores(features)
        log_probs = F.log_softmax(scores, dim=-1)                              # (..., K, V)
        return torch.logsumexp(log_probs + log_prior.unsqueeze(-1), dim=-2)   # (..., K, V) -> (..., V)

    def target_log_probs(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """log p(y | g) of the targets y alone, features (..., C), target (...) -> (...): each
        component's target score and log-normaliser suffice,

            log p(y|g) = logsumexp_k( log pi_k + s_ky - logsumexp_x s_kx )

        with s_kx = ``component_scores`` (MoS: z_kx = h_k . w_x + b_x), so training keeps one
        (..., K, V) tensor, the scores, where ``forward`` keeps several for the whole mixture.
        The same numbers as ``forward`` at y, up to rounding."""
        log_prior, scores = self.log_prior_and_scores(features)                # (..., K), (..., K, V)
        index = target[..., None, None].expand(*scores.shape[:-1], 1)          # (...) -> (..., K, 1)
        target_scores = scores.gather(-1, index).squeeze(-1)                   # (..., K)
        return torch.logsumexp(log_prior + target_scores - torch.logsumexp(scores, dim=-1), dim=-1)
