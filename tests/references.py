"""Independent float64 reference implementations of the output layers' equations, written out
the slow way (all K x V component logits, explicit sigmoid trees, probability-space mixtures,
arbitrary-precision sigsoftmax), for the tests to compare the layers against."""

import mpmath
import torch

from fairseq_mixtape.output_layers.mixtape import Mixtape
from fairseq_mixtape.output_layers.mos import MixtureOfSoftmaxes


# ---------------------------------------------------------------------------------- Mixtape
def tree_priors_reference(gate_logits, leaves, node=0):
    """Recursive sigmoid tree in heap order: node n's children are 2n+1 (left) and 2n+2."""
    if len(leaves) == 1:
        return {leaves[0]: torch.ones_like(gate_logits[..., 0])}
    s = torch.sigmoid(gate_logits[..., node])
    half = len(leaves) // 2
    left = tree_priors_reference(gate_logits, leaves[:half], 2 * node + 1)
    right = tree_priors_reference(gate_logits, leaves[half:], 2 * node + 2)
    out = {k: s * p for k, p in left.items()}
    out.update({k: (1 - s) * p for k, p in right.items()})
    return out


def mixtape_reference(layer: Mixtape, g, activation=torch.tanh):
    """All K x V component logits and all V token-specific priors, the slow way (float64)."""
    K, S, E = layer.components, layer.frequent, layer.embed_dim
    h = layer.context_scale * activation(layer.context(g)).view(-1, K, E)   # (N, K, E)
    component_logits = torch.einsum("nke,ve->nvk", h, layer.weight)     # (N, V, K)
    if K == 1:
        priors = torch.ones_like(component_logits)
    else:
        gate_logits = layer.shared_gate(g).unsqueeze(1).repeat(1, layer.num_tokens, 1)  # (N, V, K-1)
        if S > 0:
            t = torch.tanh(layer.gate_hidden(g)).view(-1, K - 1, layer.gate_dim)
            own = torch.einsum("njd,sd->nsj", t, layer.gate_embed) + layer.gate_bias  # (N, S, K-1)
            gate_logits[:, layer.frequent_ids] += own
        tree = tree_priors_reference(gate_logits, list(range(K)))
        priors = torch.stack([tree[k] for k in range(K)], dim=-1)
    logits = (priors * component_logits).sum(-1)
    return logits if layer.bias is None else logits + layer.bias


def mixtape_regularised_reference(layer: Mixtape, g, context_mask=1.0, gate_mask=1.0,
                                  shared_noise=0.0, frequent_noise=0.0):
    """The naive layer for g (B, T, C) with the given draws of the regularisers: all K x V
    component logits h_k . w_x and V x (K-1) gate logits, the frequent ones' slots at a.. a+S-1."""
    K, S, a = layer.components, layer.frequent, layer.slot_start
    h = layer.context_scale * torch.tanh(layer.context(g)).unflatten(-1, (K, -1)) * context_mask
    component_logits = torch.einsum("btke,ve->btvk", h, layer.weight)      # (B, T, V, K)
    shared = layer.shared_gate(g)                                          # (B, T, K-1)
    gate_logits = (shared + shared_noise).unsqueeze(2).repeat(1, 1, layer.num_tokens, 1)
    t = torch.tanh(layer.gate_hidden(g)).unflatten(-1, (K - 1, -1)) * gate_mask
    own = torch.einsum("btjd,sd->btsj", t, layer.gate_embed) + layer.gate_bias
    if torch.is_tensor(frequent_noise):
        frequent_noise = frequent_noise.transpose(-1, -2)                  # (B, T, S, K-1)
    gate_logits[:, :, a:a + S] = shared.unsqueeze(2) + own + frequent_noise
    tree = tree_priors_reference(gate_logits, list(range(K)))
    priors = torch.stack([tree[k] for k in range(K)], dim=-1)
    return (priors * component_logits).sum(-1) + layer.bias


# ---------------------------------------------------------------------------------- MoS
def mos_probability_space(layer: MixtureOfSoftmaxes, g, activation=torch.tanh):
    """sum_k pi_k softmax(h_k W^T + b): the explicit mixture, in probability space."""
    pi = torch.softmax(g @ layer.prior.weight.t(), -1)                       # (N, K)
    h = activation(layer.context(g)).view(*g.shape[:-1], layer.components, -1)
    logits = layer.context_scale * h @ layer.weight.t() + (0 if layer.bias is None else layer.bias)
    return (pi.unsqueeze(-1) * torch.softmax(logits, -1)).sum(-2)


def manual_logsumexp(a, dim):
    m = a.max(dim, keepdim=True).values
    return (m + (a - m).exp().sum(dim, keepdim=True).log()).squeeze(dim)


# ---------------------------------------------------------------------------------- Sigsoftmax
def exact_log_sigsoftmax(row):
    mpmath.mp.dps = 50
    terms = [mpmath.exp(z) / (1 + mpmath.exp(-z)) for z in row]
    total = mpmath.fsum(terms)
    return [float(mpmath.log(t / total)) for t in terms]
