"""Mixtape (Yang, Luong, Salakhutdinov, Le, NeurIPS 2019): one softmax over gated logits."""

import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import OutputLayer, check_components, check_option, register_output_layer, upcast


def resolve_frequent_tokens(frequent_tokens: float, num_tokens: int) -> int:
    """S, the number of tokens with their own gates: a fraction of V in [0, 1) or a count."""
    allowed = f"a fraction in [0, 1) or a whole count from 1 to the vocabulary size {num_tokens}"
    flag = "--mixtape-frequent-tokens (S)"
    check_option(frequent_tokens >= 0, flag, frequent_tokens, allowed)
    if frequent_tokens < 1:
        return int(frequent_tokens * num_tokens)
    check_option(float(frequent_tokens).is_integer() and frequent_tokens <= num_tokens, flag,
                 frequent_tokens, allowed)
    return int(frequent_tokens)


def sigmoid_tree_paths(components: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Root-to-leaf paths of a complete binary tree with K leaves and K-1 gates (heap order).

    Returns ``nodes`` (K, log2 K), the gate index at each level of leaf k's path, and ``signs``
    (K, log2 K), +1 where the path goes left (weight s) and -1 where it goes right (1 - s).
    """
    depth = int(math.log2(components))
    nodes = torch.zeros(components, depth, dtype=torch.long)
    signs = torch.ones(components, depth)
    for leaf in range(components):
        for level in range(depth):
            prefix = leaf >> (depth - level)                # the path taken above this level
            nodes[leaf, level] = (1 << level) - 1 + prefix
            signs[leaf, level] = -1.0 if (leaf >> (depth - level - 1)) & 1 else 1.0
    return nodes, signs


@register_output_layer("mixtape")
class Mixtape(OutputLayer):
    """Mixtape with logit-space vector gating, sigmoid-tree priors and gate sharing:

        h_k       = tanh(H_k g + e_k)                                  k = 1..K
        logit_x   = sum_k pi_{x,k} (h_k . w_x) + b_x,      log p(x|g) = log_softmax_x(logit_x)
        pi_{x,.}  = sigmoid tree over K-1 gate logits l_{x,j}, e.g. K=4, s_j = sigmoid(l_{x,j}):
                    pi_1 = s_1 s_2, pi_2 = s_1 (1-s_2), pi_3 = (1-s_1) s_3, pi_4 = (1-s_1)(1-s_3)
        l_{x,j}   = v_x . tanh(U_j g + a_j) + u_j . g + b_{x,j}   for the S most frequent x (ids < S)
        l_{x,j}   = u_j . g                                        for all other x (shared gates)

    Gate sharing makes an exact shortcut possible: for x >= S the priors pi_k do not depend on x,
    so logit_x = (sum_k pi_k h_k) . w_x is one V-wide matmul with a mixed context vector; only the
    S frequent tokens need K dot products each. K x V logits are never materialised.
    """

    default_components = 4

    def __init__(self, input_dim, num_tokens, embed_weight=None, embed_dim=None, bias=False,
                 components: int = 4, gate_dim: int = 64, frequent_tokens: float = 0.1):
        super().__init__(input_dim, num_tokens, embed_weight, embed_dim, bias)
        check_components(components, power_of_two=True)
        check_option(isinstance(gate_dim, int) and gate_dim >= 1, "--mixtape-gate-dim (d1)",
                     gate_dim, "an integer >= 1")
        self.components, self.gate_dim = components, gate_dim
        self.frequent = resolve_frequent_tokens(frequent_tokens, num_tokens) if components > 1 else 0
        self.context = nn.Linear(input_dim, components * self.embed_dim)  # H_k, e_k stacked
        if components > 1:
            gates = components - 1
            self.shared_gate = nn.Linear(input_dim, gates, bias=False)     # u_j
            nodes, signs = sigmoid_tree_paths(components)
            self.register_buffer("tree_nodes", nodes, persistent=False)
            self.register_buffer("tree_signs", signs, persistent=False)
        if self.frequent > 0:
            self.gate_hidden = nn.Linear(input_dim, gates * gate_dim)      # U_j, a_j stacked
            self.gate_embed = nn.Parameter(torch.empty(self.frequent, gate_dim))  # v_x
            self.gate_bias = nn.Parameter(torch.zeros(self.frequent, gates))     # b_{x,j}
            nn.init.normal_(self.gate_embed, std=gate_dim ** -0.5)

    @classmethod
    def from_config(cls, cfg, **common):
        return cls(**common, components=cls.components_from(cfg),
                   gate_dim=cfg.mixtape_gate_dim, frequent_tokens=cfg.mixtape_frequent_tokens)

    def tree_priors(self, gate_logits: torch.Tensor) -> torch.Tensor:
        """Gate logits (..., K-1) -> priors (..., K): product of sigmoids along each leaf's path."""
        path_logits = gate_logits[..., self.tree_nodes] * self.tree_signs  # (..., K, log2 K)
        return torch.sigmoid(path_logits).prod(dim=-1)

    def gate_priors(self, features):
        """The shared priors pi_k(g) of the infrequent tokens, (..., K)."""
        if self.components == 1:
            return features.new_ones(*features.shape[:-1], 1, dtype=upcast(features).dtype)
        return self.tree_priors(upcast(self.shared_gate(features)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        K, E, S = self.components, self.embed_dim, self.frequent
        h = torch.tanh(self.context(features)).unflatten(-1, (K, E))          # (..., K, E)
        if K == 1:
            return upcast(self.token_logits(h.squeeze(-2)))
        shared_logits = upcast(self.shared_gate(features))                    # (..., K-1)
        shared_priors = self.tree_priors(shared_logits)                        # (..., K)
        mixed = (shared_priors.unsqueeze(-1) * upcast(h)).sum(dim=-2)          # (..., E)
        logits = upcast(F.linear(mixed.to(self.weight.dtype), self.weight[S:]))  # (..., V-S)
        if S > 0:
            logits = torch.cat([self.frequent_logits(features, h, shared_logits), logits], -1)
        return logits if self.bias is None else logits + self.bias

    def frequent_logits(self, features, h, shared_logits) -> torch.Tensor:
        """Token-specific gates for the S frequent tokens: sum_k pi_{x,k} (h_k . w_x), (..., S)."""
        K, S = self.components, self.frequent
        gate_hidden = torch.tanh(self.gate_hidden(features)).unflatten(-1, (K - 1, self.gate_dim))
        token_gates = (gate_hidden @ self.gate_embed.t()).transpose(-1, -2)    # (..., S, K-1)
        gate_logits = upcast(token_gates) + shared_logits.unsqueeze(-2) + self.gate_bias
        priors = self.tree_priors(gate_logits)                                 # (..., S, K)
        component_logits = (h @ self.weight[:S].t()).transpose(-1, -2)         # (..., S, K)
        return (priors * upcast(component_logits)).sum(dim=-1)
