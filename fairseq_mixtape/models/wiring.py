"""What every model family shares: the flags, the P_mixtape / P_mos presets, and putting the
output layer in the place of a stock decoder's output projection.

A family's model class is ``WithOutputLayer`` + fairseq's stock class: it builds the stock
model, then ``attach_output_layer``; it adds nothing else (but, for LSTMs, fairseq's
``features_only`` convention).
"""

import dataclasses
import logging
from typing import Iterable

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY, register_model_architecture
from fairseq.models.lstm import LSTMDecoder
from fairseq.utils import safe_getattr, safe_hasattr

from ..output_layers import OutputLayer, OutputLayerConfig, build_output_layer
from ..output_layers.base import check_option

logger = logging.getLogger(__name__)

PRESET_LAYERS = ("mixtape", "mos")  # --arch P_mixtape, --arch P_mos


class WithOutputLayer:
    """Mixin before a stock fairseq model class: its flags plus the output layer's, and its
    stock build followed by ``attach_output_layer``."""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        if getattr(cls, "__dataclass", None) is None:  # dataclass models: in their config
            add_output_layer_args(parser)

    @classmethod
    def build_model(cls, args, task):
        model = super().build_model(args, task)
        attach_output_layer(model.decoder, args, cls.features_dim(model, args))
        return model

    @staticmethod
    def features_dim(model, args) -> int:
        """The size of the decoder features the output layer receives."""
        return model.decoder.output_embed_dim  # Transformer decoders


def add_output_layer_args(parser):
    """The OutputLayerConfig flags, without defaults, so that arch presets can set them."""
    gen_parser_from_dataclass(parser, OutputLayerConfig(), delete_default=True)


def set_output_layer_defaults(args, layer: str):
    args.output_layer = safe_getattr(args, "output_layer", layer)
    for field in dataclasses.fields(OutputLayerConfig):
        if not safe_hasattr(args, field.name) or getattr(args, field.name) is None:
            setattr(args, field.name, field.default)


def register_presets(model_name: str, presets: Iterable[str]):
    """Register ``P_mixtape`` and ``P_mos`` for every stock preset P: the same network with
    that output layer by default (``--output-layer`` still picks any layer)."""
    for preset in presets:
        for layer in PRESET_LAYERS:
            arch = f"{preset}_{layer}"
            if arch not in ARCH_MODEL_REGISTRY:  # idempotent if the plugin is imported twice
                register_model_architecture(model_name, arch)(_preset(preset, layer))


def _preset(preset: str, layer: str):
    stock_preset = ARCH_CONFIG_REGISTRY[preset]

    def architecture(args):
        set_output_layer_defaults(args, layer)
        asked_for_adaptive_softmax = safe_getattr(args, "adaptive_softmax_cutoff") is not None
        stock_preset(args)
        if args.output_layer != "softmax" and not asked_for_adaptive_softmax:
            # presets such as transformer_lm_wiki103 end in an adaptive softmax: the chosen
            # output layer takes its place (an explicit --adaptive-softmax-cutoff still fails)
            args.adaptive_softmax_cutoff = None
            args.tie_adaptive_weights = False

    architecture.__name__ = f"{preset}_{layer}"
    return architecture


def attach_output_layer(decoder, args, input_dim: int):
    """Replace a stock decoder's output projection by the OutputLayer that ``args`` names."""
    name = safe_getattr(args, "output_layer", "softmax")
    if getattr(decoder, "adaptive_softmax", None) is not None:
        check_option(name == "softmax", "--output-layer", name,
                     "softmax only, with --adaptive-softmax-cutoff (adaptive softmax is an output "
                     "layer of its own)")
        return
    embed_weight = decoder.embed_tokens.weight if decoder.share_input_output_embed else None
    dictionary = decoder.dictionary
    layer = build_output_layer(args, input_dim, len(dictionary), embed_weight,
                               first_target=first_target(dictionary))
    if getattr(layer, "frequent", 0) > 0:
        check_gate_slots_seen(dictionary, layer.frequent_ids)
        warn_if_not_frequency_sorted(dictionary, layer.frequent_ids)
    if isinstance(decoder, LSTMDecoder):
        # LSTMDecoder.output_layer() projects through fc_out unless it ties the embedding;
        # the OutputLayer holds the tied weight itself, so it always takes fc_out's place.
        decoder.share_input_output_embed = False
        decoder.fc_out = layer
    else:
        decoder.output_projection = layer


def first_target(dictionary) -> int:
    """The first id that can be a target: not <s> or <pad> (never predicted in fairseq) and
    seen in the data (a count > 0). 2 for every dictionary fairseq-preprocess writes."""
    never = {dictionary.bos(), dictionary.pad()}
    return next((i for i, count in enumerate(dictionary.count) if i not in never and count > 0),
                len(dictionary))


def check_gate_slots_seen(dictionary, frequent_ids: range):
    """Own gates only for tokens seen in the data: ids with count 0 (fairseq-preprocess's
    padding symbols at the end) are never targets."""
    for i in frequent_ids:
        check_option(dictionary.count[i] > 0, "--mixtape-frequent-tokens (S)", len(frequent_ids),
                     f"at most {i - frequent_ids.start}: id {i} ({dictionary[i]}) never occurs "
                     "in the data, so it cannot be a target")


def warn_if_not_frequency_sorted(dictionary, frequent_ids: range):
    """Gate sharing gives the ids a .. a+S-1 their own gates: right only if ids are sorted by
    frequency, as fairseq-preprocess writes dictionaries. fairseq dictionaries carry counts."""
    counts = dictionary.count[dictionary.nspecial:]
    unsorted = next((i for i in range(1, len(counts)) if counts[i] > counts[i - 1]), None)
    if unsorted is not None:
        logger.warning(
            "--mixtape-frequent-tokens: the target dictionary is not sorted by frequency (id %d "
            "occurs %d times, more than id %d); Mixtape gives its own gates to ids %d to %d, "
            "which are then not the most frequent tokens. Binarize with fairseq-preprocess, or "
            "sort the dictionary, or set --mixtape-frequent-tokens 0 to share all gates.",
            unsorted + dictionary.nspecial, counts[unsorted], unsorted + dictionary.nspecial - 1,
            frequent_ids.start, frequent_ids.stop - 1)


def output_layer_of(model) -> OutputLayer:
    """The OutputLayer of a model built by this plugin (for the criterions and tools)."""
    decoder = model.decoder
    projection = "fc_out" if isinstance(decoder, LSTMDecoder) else "output_projection"
    layer = getattr(decoder, projection, None)  # a stock decoder may have none (tied, adaptive)
    if not isinstance(layer, OutputLayer):
        raise ValueError(
            f"{type(model).__name__} has no fairseq-mixtape output layer: use one of the "
            "--arch *_mixtape / *_mos architectures (with --user-dir fairseq_mixtape)")
    return layer
