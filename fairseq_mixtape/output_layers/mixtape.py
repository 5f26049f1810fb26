"""Mixtape (Yang, Luong, Salakhutdinov, Le, NeurIPS 2019): one softmax over gated logits."""

import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .base import (OutputLayer, check_components, check_context_scale, check_option,
                   register_output_layer, tanh_contexts, upcast)


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

        h_k       = tanh(H_k g + e_k)        k = 1..K (times --output-context-scale; 1 in the paper)
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
                 components: int = 4, gate_dim: int = 64, frequent_tokens: float = 0.1,
                 context_scale: float = 1.0):
        super().__init__(input_dim, num_tokens, embed_weight, embed_dim, bias)
        check_components(components, power_of_two=True)
        check_option(isinstance(gate_dim, int) and gate_dim >= 1, "--mixtape-gate-dim (d1)",
                     gate_dim, "an integer >= 1")
        self.components, self.gate_dim = components, gate_dim
        self.context_scale = check_context_scale(context_scale)
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
                   gate_dim=cfg.mixtape_gate_dim, frequent_tokens=cfg.mixtape_frequent_tokens,
                   context_scale=getattr(cfg, "output_context_scale", 1.0))

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
        K, S = self.components, self.frequent
        h = tanh_contexts(self.context, features, K, self.context_scale)      # (..., K, E)
        if K == 1:
            return upcast(self.token_logits(h.squeeze(-2)))
        shared_logits = upcast(self.shared_gate(features))                    # (..., K-1)
        shared_gates = torch.sigmoid(shared_logits).unsqueeze(-1)             # (..., K-1, 1)
        mixed = tree_mix(upcast(h), shared_gates)                              # (..., E)
        mixed = mixed.to(self.weight.dtype)
        if S == 0:
            logits = upcast(F.linear(mixed, self.weight))                      # (..., V)
        else:
            # mixed . w_x for x >= S and h_k . w_x for x < S, in one autograd node
            rest, component_logits = SplitProjection.apply(mixed, h, self.weight, S)
            frequent = self.frequent_logits(features, shared_logits, upcast(component_logits))
            # cat promotes rest (e.g. bfloat16 under autocast) to frequent's float32 in its copy
            logits = torch.cat([frequent, rest], -1)                           # (..., V)
        return logits if self.bias is None else logits + self.bias

    def frequent_logits(self, features, shared_logits, component_logits) -> torch.Tensor:
        """Token-specific gates for the S frequent tokens: sum_k pi_{x,k} (h_k . w_x), (..., S).

        Computed in a (..., K, S) layout, contiguous along the tokens: given the K component
        logits h_k . w_x (..., K, S), the K-1 gate logits are one matmul, and the sigmoid tree
        mixes them level by level (``tree_mix``), so no (..., S, K) priors or index gathers are
        materialised."""
        K = self.components
        gate_hidden = torch.tanh(self.gate_hidden(features)).unflatten(-1, (K - 1, self.gate_dim))
        gate_logits = torch.matmul(gate_hidden, self.gate_embed.t())           # (..., K-1, S)
        # + the (float32) shared logits: promotes an autocast dtype to float32 in the same pass
        gate_logits = gate_logits + shared_logits.unsqueeze(-1) + self.gate_bias.t()
        return tree_mix(component_logits, torch.sigmoid(gate_logits))          # (..., S)


def tree_mix(values: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """sum_k pi_k values_k for the sigmoid tree's priors pi, without forming them.

    ``values`` (..., K, X) holds the K leaves, ``gates`` (..., K-1, X or 1) the sigmoids s_j of
    the K-1 nodes in heap order (node n's children are 2n+1, left, weight s_n, and 2n+2, right,
    weight 1 - s_n). Bottom-up, each node's value is s_n left + (1 - s_n) right, one ``lerp``
    per tree level: the same sum as sum_k pi_k values_k, e.g. for K = 4
    s_1 (s_2 v_1 + (1-s_2) v_2) + (1-s_1) (s_3 v_3 + (1-s_3) v_4). Returns (..., X).
    """
    depth = values.shape[-2].bit_length() - 1                  # log2 K
    # The gates of each level, deepest first, from one split (one node in backward), and the
    # left and right children as an unbind of pairs: no strided slices, whose backward passes
    # would each fill a zero tensor of the whole input.
    levels = gates.split([1 << level for level in range(depth)], dim=-2)
    for node_gates in reversed(levels):
        left, right = values.unflatten(-2, (-1, 2)).unbind(-2)
        values = torch.lerp(right, left, node_gates)
    return values.squeeze(-2)


class SplitProjection(torch.autograd.Function):
    """(rest_input (..., E), frequent_input (..., K, E), weight (V, E), S) ->
    (rest_input . w_x for x >= S: (..., V-S), frequent_input_k . w_x for x < S: (..., K, S)).

    Two matmuls with the two row blocks of one weight. Autograd through ``weight[S:]`` and
    ``weight[:S]`` would build the (V, E) weight gradient from two blocks and copy them into a
    new (V, E) tensor (slices: two zero-filled ones); here backward writes both blocks straight
    into one. Under autocast the matmuls run in the autocast dtype, as ``F.linear`` would.
    """

    @staticmethod
    def forward(ctx, rest_input, frequent_input, weight, split):
        device = weight.device.type
        dtype = autocast_dtype(device)
        if dtype is not None:
            rest_input, frequent_input, weight = (
                x.to(dtype) for x in (rest_input, frequent_input, weight))
        with torch.autocast(device, enabled=False):
            frequent_weight, rest_weight = weight.split([split, weight.shape[0] - split])
            rest = F.linear(rest_input, rest_weight)
            frequent = torch.matmul(frequent_input, frequent_weight.t())
        ctx.save_for_backward(rest_input, frequent_input, weight)
        ctx.split = split
        return rest, frequent

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rest, grad_frequent):
        rest_input, frequent_input, weight = ctx.saved_tensors
        S, E = ctx.split, weight.shape[1]
        frequent_weight, rest_weight = weight.split([S, weight.shape[0] - S])
        grad_rest, grad_frequent = grad_rest.to(weight.dtype), grad_frequent.to(weight.dtype)
        grad_rest_input = grad_frequent_input = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_rest_input = torch.matmul(grad_rest, rest_weight)
        if ctx.needs_input_grad[1]:
            grad_frequent_input = torch.matmul(grad_frequent, frequent_weight)
        if ctx.needs_input_grad[2]:
            grad_weight = torch.empty_like(weight)
            frequent_grad, rest_grad = grad_weight.split([S, weight.shape[0] - S])
            torch.mm(grad_frequent.reshape(-1, S).t(), frequent_input.reshape(-1, E),
                     out=frequent_grad)
            if rest_grad.numel():                                    # empty where S = V
                torch.mm(grad_rest.reshape(-1, rest_grad.shape[0]).t(),
                         rest_input.reshape(-1, E), out=rest_grad)
        return grad_rest_input, grad_frequent_input, grad_weight, None


def autocast_dtype(device_type: str):
    """The dtype that autocast gives matmuls on ``device_type`` now, or None outside autocast."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return None
    except TypeError:  # torch < 2.4: per-device functions
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
