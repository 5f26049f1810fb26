"""The interface every output layer implements, and the registry that maps a name to it."""

import math
import numbers
from typing import Any, Callable, Dict, Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..compiled import Compiled

OUTPUT_LAYERS: Dict[str, Type["OutputLayer"]] = {}


def register_output_layer(name: str) -> Callable:
    def register(cls):
        if name in OUTPUT_LAYERS:
            raise ValueError(f"output layer {name!r} is registered twice")
        cls.name = name
        OUTPUT_LAYERS[name] = cls
        return cls

    return register


def check_option(ok: bool, flag: str, value, allowed: str):
    """Raise a ValueError that names the flag, the value given and what is allowed."""
    if not ok:
        raise ValueError(f"{flag}: got {value!r}; allowed: {allowed}")


class OutputLayer(nn.Module):
    """Maps decoder features g (..., C) to scores s (..., V) whose log_softmax is the model's
    log-probability, log p(x | g) = log_softmax_x(s(g)).

    What ``forward`` returns, each layer declares (``scores_are_log_probs``):

    - logits, which fairseq's single ``log_softmax`` (generator, scorer, stock criterions)
      normalises: softmax, sigsoftmax, Mixtape (``scores_are_log_probs = False``);
    - log p itself, normalised, which that ``log_softmax`` leaves unchanged up to rounding: MoS
      and the mixture of sigsoftmaxes (``scores_are_log_probs = True``).

    ``target_log_probs(g, y)`` is log p(y | g) of given targets y alone. Each layer declares
    whether it computes them without the (..., V) distribution (``direct_target_log_probs``):
    MoS and the mixture of sigsoftmaxes do, from each component's target score and
    log-normaliser; the others take ``log_softmax`` of ``forward`` at y, which costs what the
    whole distribution costs. The plugin's criterions and the Hugging Face head call
    ``target_log_probs`` where they need the targets' log-probabilities alone and the layer
    computes them directly.

    The output embedding ``weight`` (V x E) is either the decoder's input embedding Parameter
    itself (tied) or the layer's own. It keeps the attribute name ``weight`` so fairseq's
    ``decoder.output_projection.weight`` checkpoint keys and upgrades keep working.
    """

    name: str = ""
    scores_are_log_probs: bool = False     # forward returns log p itself, not logits
    direct_target_log_probs: bool = False  # target_log_probs without the (..., V) distribution
    default_components: int = 1

    def __init__(self, input_dim: int, num_tokens: int, embed_weight: Optional[nn.Parameter] = None,
                 embed_dim: Optional[int] = None, bias: bool = False):
        super().__init__()
        check_option(num_tokens >= 1, "vocabulary size", num_tokens, "at least 1")
        if embed_weight is not None:
            check_option(embed_weight.dim() == 2 and embed_weight.shape[0] == num_tokens,
                         "tied output embedding shape", tuple(embed_weight.shape),
                         f"(vocabulary size {num_tokens}, embedding dim)")
            self.weight = embed_weight
        else:
            embed_dim = embed_dim or input_dim
            self.weight = nn.Parameter(torch.empty(num_tokens, embed_dim))
            nn.init.normal_(self.weight, mean=0.0, std=embed_dim ** -0.5)
        self.bias = nn.Parameter(torch.zeros(num_tokens)) if bias else None
        self.input_dim = input_dim
        self.num_tokens = num_tokens

    @property
    def embed_dim(self) -> int:
        return self.weight.shape[1]

    @property
    def scores_per_position(self) -> int:
        """Entries per position of the largest score tensor the layer forms: V (MoS: K x V). The
        criterions size their default chunks by it."""
        return self.num_tokens

    @classmethod
    def from_config(cls, cfg, first_target: int = 0, **common) -> "OutputLayer":
        """Build from an ``OutputLayerConfig``; ``common`` holds the constructor's shared args,
        ``first_target`` the first token id that can be a target (used by Mixtape's gates)."""
        return cls(**common)

    @classmethod
    def components_from(cls, cfg) -> int:
        """K from ``cfg.output_components``, or this layer's default where it is unset."""
        components = getattr(cfg, "output_components", None)
        return cls.default_components if components is None else components

    def token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., E) -> hidden . w_x + b_x for every token x: (..., V)."""
        return F.linear(hidden, self.weight, self.bias)

    def gate_priors(self, features: torch.Tensor) -> Optional[torch.Tensor]:
        """Context-level mixture weights (..., K) for statistics; None for single softmaxes."""
        return None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def target_log_probs(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """log p(y | g) of the targets y alone, features (..., C), target (...) -> (...), in
        float32 (or float64 for float64 scores). Here from the whole distribution,
        log_softmax_x(s(g)) at x = y; layers with ``direct_target_log_probs`` compute it
        without that (..., V) tensor."""
        log_probs = F.log_softmax(upcast(self.forward(features)), dim=-1)      # (..., V)
        return log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)

    compiled_forward: Optional[Compiled] = None

    def compile_forward(self) -> "OutputLayer":
        """``--compile-output-layer``: from now on, calling the layer runs ``forward`` through
        ``torch.compile`` (``compiled.Compiled``: dynamic shapes, eager fallback); ``forward``
        itself stays eager. Parameters, buffers and state-dict keys are unchanged."""
        self.compiled_forward = Compiled(self.forward, f"the {self.name} output layer")
        return self

    def __call__(self, *args, **kwargs):
        if self.compiled_forward is not None:
            return self.compiled_forward(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def legacy_buffers(self) -> Dict[str, float]:
        """Buffers this layer derives at build time, with the value each had implicitly in
        checkpoints saved before it was stored; loading such a checkpoint restores that value."""
        return {}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, value in self.legacy_buffers().items():
            state_dict.setdefault(prefix + name, torch.tensor(value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"in={self.input_dim}, vocab={self.num_tokens}, embed={self.embed_dim}"


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32, so normalisation and mixtures accumulate in float32."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


CONTEXT_ACTIVATIONS = ("tanh", "linear")  # --output-context-activation


class ContextMixture(OutputLayer):
    """What MoS and Mixtape share: K context vectors h_k = c tanh(W_k g + e_k) from one stacked
    map ``self.context`` (C -> K * E), the context scale c, and dropout on the context vectors
    (``--output-context-dropout p``, ``self.context_dropout``; 0 = off, the default), in
    training only, one mask per sequence shared over time steps:

        h_k = c tanh(W_k g_t + e_k) * m_k / (1 - p),   m ~ Bernoulli(1 - p)^(K x E) per sequence

    The papers have c = 1. The tanh then bounds each logit h_k . w_x, and mixing K contexts
    flattens them further, so such a layer starts with log-probabilities several times flatter
    than a softmax's over the same output embedding, and trains slowly at first (RESULTS.md). By
    default c is therefore set once, at build time, to ``matched_context_scale``: the value at
    which the freshly initialised layer's log-probabilities spread over the vocabulary as much as
    a softmax's. It is a buffer, saved in checkpoints; ``--output-context-scale c`` sets it
    instead (1 = the papers' layer).

    ``--output-context-activation linear`` (opt-in; not the papers' layer) drops the tanh:
    h_k = c (W_k g_t + e_k), so that a context is no longer bounded; everything else is the same.
    """

    context_dropout: float = 0.0
    context_activation: str = "tanh"

    @staticmethod
    def context_settings(cfg) -> Dict[str, Any]:
        """The context vectors' settings in ``cfg`` (``--output-context-scale``,
        ``--output-context-dropout``, ``--output-context-activation``), as keyword arguments
        of a mixture's constructor: c, p and the activation."""
        return dict(context_scale=getattr(cfg, "output_context_scale", None),
                    context_dropout=getattr(cfg, "output_context_dropout", 0.0),
                    context_activation=getattr(cfg, "output_context_activation", "tanh"))

    def init_contexts(self, components: int, context_scale: Optional[float],
                      context_dropout: float = 0.0, context_activation: str = "tanh"):
        """Call at the end of the subclass's __init__, once every parameter exists."""
        check_option(context_activation in CONTEXT_ACTIVATIONS, "--output-context-activation",
                     context_activation, ", ".join(CONTEXT_ACTIVATIONS))
        self.context_activation = context_activation
        self.context_dropout = check_probability(context_dropout, "--output-context-dropout")
        self.components = components
        self.configured_scale = check_context_scale(context_scale)
        self.register_buffer("context_scale", torch.tensor(1.0))
        self.context_scale.fill_(self.configured_scale if self.configured_scale is not None
                                 else matched_context_scale(self))

    def contexts(self, features: torch.Tensor) -> torch.Tensor:
        """features (..., C) -> the K context vectors h (..., K, E); in training with context
        dropout, for features (B, T, C), one mask (B, 1, K, E) per sequence (MoS's dropoutl)."""
        h = self.context(features)
        if self.context_activation == "tanh":
            h = torch.tanh(h)
        h = h * self.context_scale
        h = h.unflatten(-1, (self.components, -1))             # (..., K * E) -> (..., K, E)
        return sequence_dropout(h, self.context_dropout, self.training)

    def legacy_buffers(self) -> Dict[str, float]:
        # before the scale was stored, a layer had the configured scale, by default 1
        return {**super().legacy_buffers(), "context_scale": self.configured_scale or 1.0}


def sequence_dropout_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """An inverted-dropout mask for x, with values 0 and 1 / (1 - p): for 4-dim x (B, T, ...),
    a mask (B, 1, ...), one per sequence, shared over the time steps; for other shapes, one of
    x's own shape (elementwise)."""
    shape = (x.shape[0], 1, *x.shape[2:]) if x.dim() == 4 else x.shape
    keep = 1.0 - p
    return x.new_empty(shape).bernoulli_(keep) / keep


def sequence_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """x times a ``sequence_dropout_mask`` in training with p > 0; x itself otherwise."""
    if not training or p == 0:
        return x
    return x * sequence_dropout_mask(x, p)


def matched_context_scale(layer: ContextMixture, iterations: int = 3) -> float:
    """The context scale c at which ``layer``, as initialised, spreads its log-probabilities over
    the vocabulary as much as a softmax over its output embedding does: for random states
    g ~ N(0, I), std_x log p(x | g) = std_x (z . w_x) with z ~ N(0, I_E), averaged over states.

    Needs no data: the states are drawn from a fixed generator (the global random state is not
    touched), so the same weights give the same c. Mixtape's logits are linear in c, so one step
    of c <- c * target / spread(c) is exact; MoS's log-mixture is nearly linear at this spread,
    and a few steps settle it.
    """
    generator = torch.Generator().manual_seed(0)
    weight = layer.weight.detach().float().cpu()
    states = max(1, min(64, 2 ** 22 // (layer.num_tokens * layer.components)))
    with torch.no_grad():
        target = F.linear(torch.randn(states, layer.embed_dim, generator=generator),
                          weight).std(-1).mean()
        features = torch.randn(states, layer.input_dim, generator=generator).to(
            device=layer.weight.device, dtype=layer.weight.dtype)
        training = layer.training
        layer.eval()                                            # no dropout or noise
        scale = 1.0
        for _ in range(iterations):
            layer.context_scale.fill_(scale)
            log_probs = F.log_softmax(upcast(layer(features)).double(), dim=-1)
            scale *= float(target / log_probs.std(-1).mean())
        layer.train(training)
    return scale


def check_context_scale(scale) -> Optional[float]:
    """None (match a softmax's initial spread) or a finite number > 0."""
    check_option(scale is None or (isinstance(scale, (int, float)) and math.isfinite(scale)
                                   and scale > 0),
                 "--output-context-scale", scale,
                 "a finite number > 0 (1 = the papers' layer), or unset (match a softmax's "
                 "initial spread)")
    return None if scale is None else float(scale)


def check_probability(p, flag: str) -> float:
    """A dropout probability in [0, 1) (NaN is refused: it fails both comparisons)."""
    check_option(isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p < 1.0,
                 flag, p, "a probability in [0, 1)")
    return float(p)


def check_noise(std, flag: str) -> float:
    """A standard deviation of Gaussian noise: a finite number >= 0 (0 = off)."""
    check_option(isinstance(std, (int, float)) and not isinstance(std, bool)
                 and math.isfinite(std) and std >= 0,
                 flag, std, "a finite number >= 0 (a standard deviation; 0 = no noise)")
    return float(std)


def is_whole(value) -> bool:
    """An integer, as a count or size must be: not a bool (True is an int to Python), a float
    (2.5, or 2.0) or a string."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_components(components, power_of_two: bool = False):
    ok = is_whole(components) and components >= 1
    if power_of_two:
        ok = ok and components & (components - 1) == 0
        allowed = "a power of two >= 1 (1, 2, 4, 8, ...), for mixtape's sigmoid tree"
    else:
        allowed = "an integer >= 1"
    check_option(ok, "--output-components (K)", components, allowed)
