"""Mixtape (Yang, Luong, Salakhutdinov, Le, NeurIPS 2019): one softmax over gated logits."""

import math
import numbers
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .base import (ContextMixture, check_components, check_noise, check_option, check_probability,
                   is_whole, register_output_layer, sequence_dropout, upcast)


def resolve_frequent_tokens(frequent_tokens: float, num_tokens: int) -> int:
    """S, the number of tokens with their own gates: a fraction of V in [0, 1) or a count."""
    allowed = f"a fraction in [0, 1) or a whole count from 1 to the vocabulary size {num_tokens}"
    flag = "--mixtape-frequent-tokens (S)"
    check_option(isinstance(frequent_tokens, numbers.Real) and not isinstance(frequent_tokens, bool)
                 and frequent_tokens >= 0, flag, frequent_tokens, allowed)
    if frequent_tokens < 1:
        return int(frequent_tokens * num_tokens)
    check_option(float(frequent_tokens).is_integer() and frequent_tokens <= num_tokens, flag,
                 frequent_tokens, allowed)
    return int(frequent_tokens)


def default_gate_dim(embed_dim: int) -> int:
    """d1 = min(64, E): the paper's 64, but never wider than the output embedding, so that the
    frequent tokens' gates (about (K-1) d1 (C + S) multiply-adds per position) stay cheaper than
    the logits (V E) when E is small."""
    return min(64, embed_dim)


def check_slot_start(first_target: int, frequent: int, num_tokens: int) -> int:
    """a, the first of the S own-gate ids a .. a+S-1, which must lie in the vocabulary."""
    check_option(0 <= first_target and first_target + frequent <= num_tokens,
                 "--mixtape-frequent-tokens (S)", frequent,
                 f"at most {num_tokens - first_target}: the ids from {first_target}, the first "
                 f"that can be a target, to the vocabulary's end {num_tokens}")
    return first_target


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
class Mixtape(ContextMixture):
    """Mixtape with logit-space vector gating, sigmoid-tree priors and gate sharing:

        h_k       = c tanh(H_k g + e_k)      k = 1..K (c: the context scale, 1 in the paper)
        logit_x   = sum_k pi_{x,k} (h_k . w_x) + b_x,      log p(x|g) = log_softmax_x(logit_x)
        pi_{x,.}  = sigmoid tree over K-1 gate logits l_{x,j}, e.g. K=4, s_j = sigmoid(l_{x,j}):
                    pi_1 = s_1 s_2, pi_2 = s_1 (1-s_2), pi_3 = (1-s_1) s_3, pi_4 = (1-s_1)(1-s_3)
        l_{x,j}   = v_x . tanh(U_j g + a_j) + u_j . g + b_{x,j}   for the S frequent x
        l_{x,j}   = u_j . g                                        for all other x (shared gates)

    The S frequent tokens are the ids a .. a+S-1 of a frequency-sorted dictionary, where a is
    the first id that can be a target (2 in fairseq's dictionaries, whose ids 0 and 1 are <s>
    and <pad>); ``gate_slot_start`` holds a and is saved in checkpoints.

    Gate sharing makes an exact shortcut possible: for the other tokens the priors pi_k do not
    depend on x, so logit_x = (sum_k pi_k h_k) . w_x is one matmul with a mixed context vector;
    only the S frequent tokens need K dot products each. K x V logits are never materialised.

    The regularisers of the tensorflow/mesh reference, in training only (0 = off; eval, generation
    and eval-lm are deterministic), in forms that keep the shortcut, for g_t at time step t:

        --output-context-dropout p:   h_k = c tanh(H_k g_t + e_k) * m_k / (1 - p),
                                      m ~ Bernoulli(1 - p)^(K x E) once per sequence
        --mixtape-gate-dropout p:     tanh(U_j g_t + a_j) * n_j / (1 - p) in l_{x,j},
                                      n ~ Bernoulli(1 - p)^((K-1) x d1) once per sequence
        --mixtape-gate-noise sigma:   l_{x,j} + eps_{x,j}, eps ~ N(0, sigma^2): for the other
                                      tokens one eps_j per position, shared as u_j . g is; for
                                      the S frequent x one eps_{x,j} each

    Both masks are shared over time steps, as MoS's context dropout and the reference's (whose
    noise_shape leaves out the length dimension); they are elementwise for features that are not
    (B, T, C). The reference drops the K x V component logits h_k . w_x instead of h_k, and draws
    the gate noise for each of the V tokens: both would need the K x V logits the shortcut avoids.
    Every gate logit carries one noise draw: the frequent tokens' l_{x,j} add u_j . g without the
    shared draw.

    ``forward`` returns the logits, one (..., V) tensor (the shortcut forms no K x V one);
    ``target_log_probs`` is their log_softmax at the targets.
    """

    scores_are_log_probs = False
    direct_target_log_probs = False
    default_components = 4

    def __init__(self, input_dim, num_tokens, embed_weight=None, embed_dim=None, bias=False,
                 components: int = 4, gate_dim: Optional[int] = None,
                 frequent_tokens: float = 0.1, context_scale: Optional[float] = None,
                 first_target: int = 0, context_dropout: float = 0.0, gate_dropout: float = 0.0,
                 gate_noise: float = 0.0, context_activation: str = "tanh"):
        super().__init__(input_dim, num_tokens, embed_weight, embed_dim, bias)
        check_components(components, power_of_two=True)
        self.gate_dropout = check_probability(gate_dropout, "--mixtape-gate-dropout")
        self.gate_noise = check_noise(gate_noise, "--mixtape-gate-noise")
        gate_dim = default_gate_dim(self.embed_dim) if gate_dim is None else gate_dim
        check_option(is_whole(gate_dim) and gate_dim >= 1, "--mixtape-gate-dim (d1)",
                     gate_dim, "an integer >= 1")
        self.gate_dim = gate_dim
        self.frequent = resolve_frequent_tokens(frequent_tokens, num_tokens) if components > 1 else 0
        self.slot_start = check_slot_start(first_target, self.frequent, num_tokens)
        self.register_buffer("gate_slot_start", torch.tensor(self.slot_start))
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
        self.init_contexts(components, context_scale, context_dropout, context_activation)

    @classmethod
    def from_config(cls, cfg, first_target: int = 0, **common):
        return cls(**common, components=cls.components_from(cfg),
                   gate_dim=getattr(cfg, "mixtape_gate_dim", None),
                   frequent_tokens=cfg.mixtape_frequent_tokens,
                   first_target=first_target,
                   gate_dropout=getattr(cfg, "mixtape_gate_dropout", 0.0),
                   gate_noise=getattr(cfg, "mixtape_gate_noise", 0.0),
                   **cls.context_settings(cfg))

    def legacy_buffers(self) -> Dict[str, float]:
        # before the slots were stored, the first S ids had their own gates
        return {**super().legacy_buffers(), "gate_slot_start": 0}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.slot_start = int(self.gate_slot_start)  # a Python int for the forward's splits

    @property
    def frequent_ids(self) -> range:
        """The ids of the S tokens with their own gates."""
        return range(self.slot_start, self.slot_start + self.frequent)

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
        K, S, a = self.components, self.frequent, self.slot_start
        h = self.contexts(features)                                            # (..., K, E)
        if K == 1:
            return upcast(self.token_logits(h.squeeze(-2)))
        shared_logits = upcast(self.shared_gate(features))                    # (..., K-1)
        noisy_logits = self.gate_logit_noise(shared_logits)                   # in training
        shared_gates = torch.sigmoid(noisy_logits).unsqueeze(-1)              # (..., K-1, 1)
        mixed = tree_mix(upcast(h), shared_gates)                              # (..., E)
        mixed = mixed.to(self.weight.dtype)
        if S == 0:
            logits = upcast(F.linear(mixed, self.weight))                      # (..., V)
        else:
            # mixed . w_x for every x, and h_k . w_x for the S frequent x, in one autograd node;
            # the frequent x's gated logits then overwrite their block of the (..., V) logits
            logits, component_logits = SplitProjection.apply(mixed, h, self.weight, a, S)
            frequent = self.frequent_logits(features, shared_logits, upcast(component_logits))
            # upcast: under autocast the logits come in its dtype (e.g. bfloat16), frequent's
            # are float32
            logits = FillBlock.apply(upcast(logits), frequent, a)             # (..., V)
        return logits if self.bias is None else logits + self.bias

    def frequent_logits(self, features, shared_logits, component_logits) -> torch.Tensor:
        """Token-specific gates for the S frequent tokens: sum_k pi_{x,k} (h_k . w_x), (..., S).

        Computed in a (..., K, S) layout, contiguous along the tokens: given the K component
        logits h_k . w_x (..., K, S), the K-1 gate logits are one matmul, and the sigmoid tree
        mixes them level by level (``tree_mix``), so no (..., S, K) priors or index gathers are
        materialised."""
        gate_logits = self.frequent_gate_logits(features, shared_logits)      # (..., K-1, S)
        return tree_mix(component_logits, torch.sigmoid(gate_logits))          # (..., S)

    def gate_hidden_units(self, features: torch.Tensor) -> torch.Tensor:
        """tanh(U_j g + a_j) (..., K-1, d1), in training times the gate dropout's mask (for
        features (B, T, C) one mask (B, 1, K-1, d1) per sequence)."""
        hidden = torch.tanh(self.gate_hidden(features)).unflatten(
            -1, (self.components - 1, self.gate_dim))
        return sequence_dropout(hidden, self.gate_dropout, self.training)

    def frequent_gate_logits(self, features, shared_logits) -> torch.Tensor:
        """l_{x,j} = v_x . tanh(U_j g + a_j) + u_j . g + b_{x,j} of the S frequent x, (..., K-1, S),
        with, in training, the gate dropout and noise; ``shared_logits`` u_j . g (..., K-1) as
        computed, without noise."""
        gate_logits = torch.matmul(self.gate_hidden_units(features), self.gate_embed.t())
        # + the (float32) shared logits: promotes an autocast dtype to float32 in the same pass
        gate_logits = gate_logits + shared_logits.unsqueeze(-1) + self.gate_bias.t()
        return self.gate_logit_noise(gate_logits)

    def gate_logit_noise(self, gate_logits: torch.Tensor) -> torch.Tensor:
        """gate_logits + eps, eps ~ N(0, sigma^2) elementwise, in training with sigma > 0."""
        if not self.training or self.gate_noise == 0:
            return gate_logits
        return gate_logits + torch.randn_like(gate_logits) * self.gate_noise


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
    """(mixed (..., E), contexts (..., K, E), weight (V, E), a, S) ->
    (mixed . w_x for every x: (..., V), contexts_k . w_x for a <= x < a+S: (..., K, S)).

    The (..., V) logits' block [a, a+S) is a placeholder, which ``FillBlock`` overwrites with the
    frequent tokens' gated logits: its gradient is discarded (as that of a constant), so only the
    blocks [0, a) and [a+S, V) reach ``mixed`` and ``weight``. The placeholder costs S E
    multiply-adds per position, but one matmul into one contiguous (..., V) tensor is cheaper
    than writing the two outer blocks apart and concatenating them (a V-wide copy), and
    backward writes the (V, E) weight gradient block by block into one tensor, where autograd
    through slices of ``weight`` would build and sum zero-filled ones. Under autocast the matmuls
    run in the autocast dtype, as ``F.linear`` would.
    """

    @staticmethod
    def forward(ctx, mixed, contexts, weight, start, frequent):
        device = weight.device.type
        dtype = autocast_dtype(device)
        if dtype is not None:
            mixed, contexts, weight = (x.to(dtype) for x in (mixed, contexts, weight))
        with torch.autocast(device, enabled=False):
            _, middle, _ = split_blocks(weight, start, frequent)
            outputs = F.linear(mixed, weight), torch.matmul(contexts, middle.t())
        ctx.save_for_backward(mixed, contexts, weight)
        ctx.blocks = start, frequent
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logits, grad_middle):
        mixed, contexts, weight = ctx.saved_tensors
        E = weight.shape[1]
        head, middle, tail = split_blocks(weight, *ctx.blocks)
        # (..., V) -> (positions, V): a view, also of a slice's gradient; its column blocks
        grad_head, _, grad_tail = split_blocks(
            grad_logits.to(weight.dtype).reshape(-1, weight.shape[0]), *ctx.blocks, dim=1)
        grad_middle = grad_middle.to(weight.dtype)
        flat_mixed = mixed.reshape(-1, E)                                  # (positions, E)
        grad_mixed = grad_contexts = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_mixed = torch.mm(grad_tail, tail)
            if head.shape[0]:
                grad_mixed = grad_mixed.addmm_(grad_head, head)
            grad_mixed = grad_mixed.view_as(mixed)
        if ctx.needs_input_grad[1]:
            grad_contexts = torch.matmul(grad_middle, middle)
        if ctx.needs_input_grad[2]:
            grad_weight = torch.empty_like(weight)
            for block, grad, inputs in zip(split_blocks(grad_weight, *ctx.blocks),
                                           (grad_head, grad_middle.reshape(-1, middle.shape[0]),
                                            grad_tail),
                                           (flat_mixed, contexts.reshape(-1, E), flat_mixed)):
                if block.numel():                    # the head is empty where a = 0, the tail
                    torch.mm(grad.t(), inputs, out=block)  # where a + S = V
        return grad_mixed, grad_contexts, grad_weight, None, None


class FillBlock(torch.autograd.Function):
    """(logits (..., V), block (..., S), a) -> logits with [..., a:a+S] = block, in place.

    Backward passes the gradient to ``logits`` whole, the overwritten block's part included,
    without zeroing it (a V-wide copy): only for logits whose producer discards that block's
    gradient, as ``SplitProjection``'s placeholder does.
    """

    @staticmethod
    def forward(ctx, logits, block, start):
        logits.narrow(-1, start, block.shape[-1]).copy_(block)
        ctx.mark_dirty(logits)
        ctx.block = start, block.shape[-1]
        return logits

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return grad, grad.narrow(-1, *ctx.block), None


def split_blocks(x: torch.Tensor, start: int, frequent: int, dim: int = 0):
    """The blocks [0, a), [a, a+S), [a+S, V) of a tensor along its V-long ``dim``, as views."""
    return x.split([start, frequent, x.shape[dim] - start - frequent], dim)


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
