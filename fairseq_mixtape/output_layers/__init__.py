"""Output layers: one module each, one interface (``base.OutputLayer``), one registry.

    build_output_layer(cfg, input_dim, num_tokens, embed_weight=None)

builds the layer named by ``cfg.output_layer`` (an ``OutputLayerConfig``, or any object with
its fields, such as fairseq's argparse namespace). Needs torch alone: the fairseq plugin's flags
(``fairseq_mixtape.models.flags``) are made from ``OutputLayerConfig``'s fields.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

from .base import OUTPUT_LAYERS, OutputLayer, check_option, register_output_layer
from .softmax import Softmax  # noqa: I001  (import order = order of the --output-layer choices)
from .mos import MixtureOfSoftmaxes
from .mixtape import Mixtape
from .sigsoftmax import MixtureOfSigsoftmaxes, Sigsoftmax


@dataclass
class OutputLayerConfig:
    """The output layer's settings, one field per flag of the fairseq plugin (``--output-layer``,
    ``--output-components``, ...), with the same defaults."""

    output_layer: str = field(
        default="softmax",
        metadata={"help": "decoder output layer: softmax (baseline), mos (mixture of softmaxes), "
                          "mixtape, sigsoftmax, mos_sigsoftmax (mixture of sigsoftmaxes)"})
    output_components: Optional[int] = field(
        default=None,
        metadata={"help": "number of mixture components K (default: 15 for mos and "
                          "mos_sigsoftmax, 4 for mixtape, where it must be a power of two); "
                          "softmax and sigsoftmax have one"})
    output_bias: bool = field(
        default=False, metadata={"help": "add a learned per-token bias b_x to the output logits"})
    output_context_scale: Optional[float] = field(
        default=None,
        metadata={"help": "mos, mos_sigsoftmax, mixtape: multiply the K context vectors "
                          "tanh(W_k g + e_k) by this constant; 1 gives the papers' layer. Default: "
                          "set at build time so that the layer's initial log-probabilities "
                          "spread over the vocabulary as much as a softmax's (saved in the "
                          "checkpoint)"})
    output_context_activation: str = field(
        default="tanh",
        metadata={"help": "mos, mos_sigsoftmax, mixtape: the context vectors' activation: tanh "
                          "(the papers' h_k = tanh(W_k g + e_k)) or linear (h_k = W_k g + e_k, "
                          "unbounded; opt-in, not the papers' layer)"})
    output_context_dropout: float = field(
        default=0.0,
        metadata={"help": "mos, mos_sigsoftmax, mixtape: dropout on the K context vectors, one "
                          "mask per sequence shared over time steps (the MoS paper's dropoutl; "
                          "0.29 on PTB); training only"})
    mixtape_gate_dim: Optional[int] = field(
        default=None,
        metadata={"help": "mixtape: gate embedding size d1 of the frequent tokens' gates "
                          "(default: min(64, E), E the output embedding size)"})
    mixtape_frequent_tokens: float = field(
        default=0.1,
        metadata={"help": "mixtape: S, the most frequent tokens (the first S ids of a "
                          "frequency-sorted dictionary that can be targets: not <s> or <pad>) "
                          "that get their own gates; all others share one. A value in [0, 1) "
                          "is a fraction of the vocabulary, a whole number >= 1 a count"})
    mixtape_gate_dropout: float = field(
        default=0.0,
        metadata={"help": "mixtape: dropout on the frequent tokens' gate hidden layer "
                          "tanh(U_j g + a_j), one mask per sequence shared over time steps; "
                          "training only"})
    mixtape_gate_noise: float = field(
        default=0.0,
        metadata={"help": "mixtape: standard deviation sigma of Gaussian noise N(0, sigma^2) "
                          "added to the gate logits before the sigmoids (the K-1 shared ones of "
                          "each position, and the S frequent tokens' own); training only"})


def build_output_layer(cfg, input_dim: int, num_tokens: int, embed_weight=None,
                       embed_dim: Optional[int] = None, first_target: int = 0) -> OutputLayer:
    """The output layer named by ``cfg.output_layer``, configured from ``cfg``'s fields;
    ``first_target`` is the first token id that can be a target (Mixtape's first gate slot).
    The layer runs eagerly; ``compile_forward()`` on it runs it through torch.compile."""
    name = getattr(cfg, "output_layer", "softmax")
    check_option(name in OUTPUT_LAYERS, "--output-layer", name, ", ".join(OUTPUT_LAYERS))
    layer = OUTPUT_LAYERS[name]
    components = getattr(cfg, "output_components", None)
    check_option(components in (None, 1) or layer.default_components > 1,
                 "--output-components (K)", components, f"1 or unset for {name}, which has one")
    activation = getattr(cfg, "output_context_activation", "tanh")
    check_option(activation == "tanh" or layer.default_components > 1,
                 "--output-context-activation", activation,
                 f"tanh or unset for {name}, which has no context vectors")
    scale = getattr(cfg, "output_context_scale", None)
    check_option(scale in (None, 1.0) or layer.default_components > 1, "--output-context-scale",
                 scale, f"1 or unset for {name}, which has no context vectors")
    dropout = getattr(cfg, "output_context_dropout", 0.0)
    check_option(dropout in (None, 0.0) or layer.default_components > 1,
                 "--output-context-dropout", dropout,
                 f"0 or unset for {name}, which has no context vectors")
    common = dict(input_dim=input_dim, num_tokens=num_tokens, embed_weight=embed_weight,
                  embed_dim=embed_dim, bias=getattr(cfg, "output_bias", False))
    return layer.from_config(cfg, first_target=first_target, **common)


class Renamed(NamedTuple):
    """A setting's former name: ``name``, the setting's name now, and ``layers``, the layers
    that read the former name (the others ignored it)."""

    name: str
    layers: Tuple[str, ...]


# Settings that earlier versions named otherwise, by former name. Each former name stays a flag
# of the fairseq plugin, an alias of the setting (models.flags), and is read from saved configs.
RENAMED_SETTINGS: Dict[str, Renamed] = {
    "mos_context_dropout": Renamed("output_context_dropout", ("mos", "mos_sigsoftmax")),
    "mixtape_context_dropout": Renamed("output_context_dropout", ("mixtape",)),
}
# Settings that earlier versions saved with the layer's, which are now chosen by each run that
# builds a layer (--compile-output-layer: the layer's compile_forward()), not saved
RUN_SETTINGS = ("compile_output_layer",)


def upgraded_settings(saved: Mapping[str, Any]) -> Dict[str, Any]:
    """Settings saved by any version (the fields of an ``OutputLayerConfig`` as a dict, e.g. a
    checkpoint's), under this version's names. A saved config without a renamed setting (saved
    before the rename) gives it the value of the former name that its layer read, as that layer
    did: MoS's ``mos_context_dropout``, Mixtape's ``mixtape_context_dropout``; a layer that read
    none gets the default. Former names and ``RUN_SETTINGS`` are left out."""
    upgraded = {key: value for key, value in saved.items()
                if key not in RENAMED_SETTINGS and key not in RUN_SETTINGS}
    layer = saved.get("output_layer", "softmax")
    for former, renamed in RENAMED_SETTINGS.items():
        value = saved.get(former)
        if renamed.name not in saved and layer in renamed.layers and value is not None:
            upgraded[renamed.name] = value
    return upgraded


__all__ = ["OUTPUT_LAYERS", "OutputLayer", "OutputLayerConfig", "build_output_layer",
           "register_output_layer", "RENAMED_SETTINGS", "upgraded_settings", "Softmax",
           "MixtureOfSoftmaxes", "Mixtape", "Sigsoftmax", "MixtureOfSigsoftmaxes"]
