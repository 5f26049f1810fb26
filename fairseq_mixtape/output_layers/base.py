"""The interface every output layer implements, and the registry that maps a name to it."""

import math
from typing import Callable, Dict, Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

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
    """Maps decoder features (..., C) to scores (..., V) whose log_softmax is log p(x | context).

    Softmax-like layers return logits; mixtures return normalised log-probabilities, which
    fairseq's single ``log_softmax`` (generator, scorer, stock criterions) leaves unchanged.

    The output embedding ``weight`` (V x E) is either the decoder's input embedding Parameter
    itself (tied) or the layer's own. It keeps the attribute name ``weight`` so fairseq's
    ``decoder.output_projection.weight`` checkpoint keys and upgrades keep working.
    """

    name: str = ""
    scores_are_log_probs: bool = False  # True where forward() already returns log p
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

    @classmethod
    def from_config(cls, cfg, **common) -> "OutputLayer":
        """Build from an ``OutputLayerConfig``; ``common`` holds the constructor's shared args."""
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

    def extra_repr(self) -> str:
        return f"in={self.input_dim}, vocab={self.num_tokens}, embed={self.embed_dim}"


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32, so normalisation and mixtures accumulate in float32."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def tanh_contexts(projection: nn.Linear, features: torch.Tensor, components: int,
                  scale: float = 1.0) -> torch.Tensor:
    """MoS's and Mixtape's K context vectors h_k = scale tanh(W_k g + c_k), (..., C) -> (..., K, E).

    ``projection`` holds the K maps (W_k, c_k) stacked: C -> K * E. The papers have scale = 1;
    the tanh then bounds each logit h_k . w_x by |w_x|_1, which makes the initial logits several
    times smaller than a softmax's over g (``--output-context-scale``, RESULTS.md).
    """
    h = torch.tanh(projection(features))
    if scale != 1.0:
        h = h * scale
    return h.unflatten(-1, (components, -1))                  # (..., K * E) -> (..., K, E)


def check_context_scale(scale) -> float:
    check_option(isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0,
                 "--output-context-scale", scale, "a finite number > 0 (1 = the papers)")
    return float(scale)


def check_components(components, power_of_two: bool = False):
    ok = isinstance(components, int) and components >= 1
    if power_of_two:
        ok = ok and components & (components - 1) == 0
        allowed = "a power of two >= 1 (1, 2, 4, 8, ...), for mixtape's sigmoid tree"
    else:
        allowed = "an integer >= 1"
    check_option(ok, "--output-components (K)", components, allowed)
