"""What every model family shares: the flags, the P_mixtape / P_mos presets, putting the
output layer in the place of a stock decoder's output projection, and reading the flags that
checkpoints of earlier versions saved.

A family's model class is ``WithOutputLayer`` + fairseq's stock class: it builds the stock
model, then ``attach_output_layer``; it adds nothing else (but, for LSTMs, fairseq's
``features_only`` convention).
"""

import contextlib
import dataclasses
import functools
import logging
from typing import Iterable, Optional

import torch.nn as nn

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY, register_model_architecture
from fairseq.models.lstm import LSTMDecoder
from fairseq.utils import safe_getattr, safe_hasattr
from omegaconf import OmegaConf, open_dict

from ..output_layers import (OUTPUT_LAYERS, RENAMED_SETTINGS, OutputLayer, OutputLayerConfig,
                             build_output_layer, upgraded_settings)
from ..output_layers.base import ContextMixture, check_option
from .flags import WIRINGS, OutputLayerFlags, flag_name, former_names

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
        merge_former_names(args)
        model = super().build_model(args, task)
        attach_output_layer(model.decoder, args, cls.features_dim(model, args))
        model.output_layer_args = args  # to rebuild the layer for an older checkpoint's wiring
        return model

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        keep_checkpoint_wiring(self, state_dict, model_cfg)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    @staticmethod
    def features_dim(model, args) -> int:
        """E, the width of the stock decoder's features (after its projection, if any)."""
        return model.decoder.output_embed_dim  # Transformer decoders


def add_output_layer_args(parser):
    """The plugin's flags, without defaults, so that arch presets can set them."""
    gen_parser_from_dataclass(parser, OutputLayerFlags(), delete_default=True)


def set_output_layer_defaults(args, layer: str):
    merge_former_names(args)
    args.output_layer = safe_getattr(args, "output_layer", layer)
    for field in dataclasses.fields(OutputLayerFlags):
        if not safe_hasattr(args, field.name) or getattr(args, field.name) is None:
            setattr(args, field.name, field.default)


def merge_former_names(args) -> None:
    """A renamed setting given under its flag or its former names (``--output-context-dropout``,
    ``--mos-context-dropout``, ``--mixtape-context-dropout``) takes the value given, for every
    layer; given under two of them with different values, it is refused, naming both. Then the
    former names are unset (None) and the setting holds the value, or its default where none was
    given. Runs where the flags are parsed (the presets) and where a model is built."""
    for name in dict.fromkeys(renamed.name for renamed in RENAMED_SETTINGS.values()):
        names = [name, *former_names(name)]
        given = {key: safe_getattr(args, key, None) for key in names
                 if safe_getattr(args, key, None) is not None}
        check_option(len(set(given.values())) <= 1, " and ".join(map(flag_name, given)),
                     tuple(given.values()),
                     f"one value: {' and '.join(map(flag_name, names[1:]))} are former names "
                     f"of {flag_name(name)}")
        value = next(iter(given.values()), OutputLayerConfig.__dataclass_fields__[name].default)
        set_config(args, **{name: value}, **dict.fromkeys(names[1:]))


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


def attach_output_layer(decoder, args, features_dim: int):
    """Replace a stock decoder's output projection by the OutputLayer that ``args`` names.

    ``features_dim`` is E, the width of the stock decoder's features: the output embedding's.
    Where the decoder narrows its hidden state g (width d) to E with a linear projection P
    (Transformer ``project_out_dim``, LSTM ``additional_fc``), a mixture (MoS, mixture of
    sigsoftmaxes, Mixtape) reads g itself, as in the papers (``--output-layer-reads hidden``):
    its maps of g take P's place, and P is removed from the decoder, so that no parameter goes
    unused. Softmax and sigsoftmax read P g: the projection is their layer."""
    name = safe_getattr(args, "output_layer", "softmax")
    if getattr(decoder, "adaptive_softmax", None) is not None:
        check_option(name == "softmax", "--output-layer", name,
                     "softmax only, with --adaptive-softmax-cutoff (adaptive softmax is an output "
                     "layer of its own)")
        return
    reads = safe_getattr(args, "output_layer_reads", None) or "hidden"
    check_option(reads in WIRINGS, "--output-layer-reads", reads, ", ".join(WIRINGS))
    input_dim = features_dim
    projection = stock_projection(decoder)
    if projection is not None and reads == "hidden" and reads_hidden_state(name):
        input_dim = getattr(decoder, projection).in_features               # d
        remove_stock_projection(decoder)
    install_output_layer(decoder, args, input_dim, features_dim)


def install_output_layer(decoder, args, input_dim: int, embed_dim: int):
    """Build the OutputLayer (reading ``input_dim``-wide features, with an ``embed_dim``-wide
    output embedding, the decoder's input embedding where tied) in the output projection's
    place, and log which width it reads."""
    embed_weight = decoder.embed_tokens.weight if decoder.share_input_output_embed else None
    dictionary = decoder.dictionary
    layer = build_output_layer(args, input_dim, len(dictionary), embed_weight, embed_dim,
                               first_target=first_target(dictionary))
    if safe_getattr(args, "compile_output_layer", False):
        layer.compile_forward()
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
    projection = stock_projection(decoder)
    logger.info("output layer %s reads %s (width %d); output embedding width %d", layer.name,
                f"the decoder's {projection}" if projection else "the decoder's hidden state",
                input_dim, layer.embed_dim)
    return layer


STOCK_PROJECTIONS = ("project_out_dim", "additional_fc")  # Transformer's, LSTM's (E < d)


def reads_hidden_state(name: str) -> bool:
    """Whether ``--output-layer NAME`` takes the place of a stock projection to E under
    ``--output-layer-reads hidden``: the mixtures, whose maps of g the papers apply to the
    hidden state; a softmax's (and sigsoftmax's) layer is the projection itself."""
    return name in OUTPUT_LAYERS and issubclass(OUTPUT_LAYERS[name], ContextMixture)


def stock_projection(decoder) -> Optional[str]:
    """The name of the decoder's linear projection from its hidden state to E, if it has one:
    the Transformer's ``project_out_dim`` (None where d = E), the LSTM's ``additional_fc``
    (absent where d = E)."""
    return next((name for name in STOCK_PROJECTIONS
                 if isinstance(getattr(decoder, name, None), nn.Linear)), None)


def remove_stock_projection(decoder) -> None:
    """Remove the projection: fairseq's Transformer tests ``project_out_dim is not None``, its
    LSTM ``hasattr(self, "additional_fc")``."""
    if isinstance(decoder, LSTMDecoder):
        del decoder.additional_fc
    else:
        decoder.project_out_dim = None


def keep_checkpoint_wiring(model, state_dict, model_cfg) -> None:
    """Before ``model`` loads ``state_dict``: a checkpoint whose mixture read the stock
    projection (``--output-layer-reads projection``, and every checkpoint of version 0.1) keeps
    that wiring, even where the model was built to read the hidden state (the default since
    0.2.0): the projection is put back and the layer rebuilt to read its E-wide output, so the
    checkpoint gives its old scores exactly and resumes training with its optimizer state.
    ``model_cfg`` (which fairseq saves with later checkpoints) then says ``projection``. The
    opposite, a checkpoint without the projection loaded into a model built with it, is refused
    with a message naming the flag."""
    decoder = model.decoder
    layer = output_layer_of(model, required=False)
    if layer is None or not reads_hidden_state(layer.name):
        return
    name = "additional_fc" if isinstance(decoder, LSTMDecoder) else "project_out_dim"
    weight = state_dict.get(f"decoder.{name}.weight")
    built = stock_projection(decoder) is not None
    if built and weight is None:
        raise ValueError(
            f"--output-layer-reads: got 'projection'; allowed: 'hidden' for this checkpoint, "
            f"whose {layer.name} layer reads the decoder's hidden state (it has no decoder.{name})")
    if weight is None or built:
        return
    logger.warning("the checkpoint's %s layer reads the decoder's %s (--output-layer-reads "
                   "projection, the wiring before version 0.2.0): kept", layer.name, name)
    projection = nn.Linear(weight.shape[1], weight.shape[0],
                           bias=f"decoder.{name}.bias" in state_dict).to(layer.weight)
    # where the stock decoder registers it, before the output layer: the parameters' order,
    # which the optimizer's saved state follows, is the one the checkpoint was trained with
    register_before(decoder, name, projection, "fc_out" if name == "additional_fc"
                    else "output_projection")
    decoder.share_input_output_embed = layer.weight is decoder.embed_tokens.weight
    args = set_config(model_cfg if model_cfg is not None else model.output_layer_args,
                      output_layer_reads="projection")
    install_output_layer(decoder, args, layer.embed_dim, layer.embed_dim).to(layer.weight)


def upgrade_saved_flags(model_cfg, overrides: Optional[dict] = None) -> None:
    """A checkpoint's saved model flags (its ``cfg.model``, or an older checkpoint's argparse
    namespace), in place, as this version reads them:

    - saved before a setting was renamed (without the setting's name), the setting takes the
      value of the former name that the saved layer read (``upgraded_settings``: MoS
      ``mos_context_dropout``, Mixtape ``mixtape_context_dropout``); the former names are unset;
    - ``compile_output_layer`` is the loading run's choice, ``overrides`` (fairseq's
      ``arg_overrides``, ``--model-overrides``), False where it does not ask: not the training
      run's, which the checkpoint saved."""
    names = dict.fromkeys(renamed.name for renamed in RENAMED_SETTINGS.values())
    missing = [name for name in names if not has_key(model_cfg, name)]  # saved before the rename
    formers = [former for name in missing for former in former_names(name)
               if has_key(model_cfg, former)]
    saved = {key: getattr(model_cfg, key) for key in ("output_layer", *formers)
             if has_key(model_cfg, key)}
    upgraded = upgraded_settings(saved)
    set_config(model_cfg, **{name: upgraded[name] for name in missing if name in upgraded},
               **dict.fromkeys(formers),
               compile_output_layer=bool((overrides or {}).get("compile_output_layer", False)))


def has_key(cfg, key: str) -> bool:
    """Whether ``cfg`` (an OmegaConf config or an argparse namespace) holds ``key``."""
    return key in cfg if OmegaConf.is_config(cfg) else hasattr(cfg, key)


def saved_model_flags(state: dict):
    """The saved model flags of a checkpoint's ``state`` that are this plugin's models': its
    argparse namespace (older checkpoints) and its ``cfg.model``, those that name one of the
    plugin's architectures."""
    configs = [state.get("args"), (state.get("cfg") or {}).get("model")]
    for cfg in configs:
        arch = cfg is not None and (safe_getattr(cfg, "_name", None) or safe_getattr(cfg, "arch"))
        if arch in ARCH_MODEL_REGISTRY and issubclass(ARCH_MODEL_REGISTRY[arch], WithOutputLayer):
            yield cfg


def read_saved_flags_on_load() -> None:
    """fairseq's ``checkpoint_utils.load_checkpoint_to_cpu``, which every loading of a
    checkpoint goes through (fairseq-generate, fairseq-eval-lm, fairseq-interactive,
    ``load_model_ensemble`` and ``load_model_ensemble_and_task``, ``from_pretrained``,
    fairseq-train's resume), passes the saved flags of the plugin's models through
    ``upgrade_saved_flags`` before any model is built from them: fairseq would build a model of a
    dataclass config without the keys its dataclass does not know, and pass the others on
    unread. (fairseq-train builds the model it resumes from its command line, where the former
    names are aliases: ``merge_former_names``.)"""
    from fairseq import checkpoint_utils

    load = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(load, "reads_saved_flags", False):
        return

    @functools.wraps(load)
    def load_reading_saved_flags(path, arg_overrides=None, *args, **kwargs):
        state = load(path, arg_overrides, *args, **kwargs)
        for cfg in saved_model_flags(state):
            upgrade_saved_flags(cfg, arg_overrides)
        return state

    load_reading_saved_flags.reads_saved_flags = True
    checkpoint_utils.load_checkpoint_to_cpu = load_reading_saved_flags


def register_before(parent: nn.Module, name: str, module: nn.Module, before: str) -> None:
    """Register ``module`` as ``parent.name``: in its own place in the order of submodules where
    that name is registered already (as None), else just before ``parent.before``."""
    if name in parent._modules:
        parent._modules[name] = module
        return
    items = list(parent._modules.items())
    parent._modules.clear()
    for key, value in items:
        if key == before:
            parent._modules[name] = module
        parent._modules[key] = value


def set_config(cfg, **values):
    """``cfg`` (an OmegaConf config or an argparse namespace) with ``values`` set in place."""
    with open_dict(cfg) if OmegaConf.is_config(cfg) else contextlib.nullcontext():
        for key, value in values.items():
            setattr(cfg, key, value)
    return cfg


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


def output_layer_of(model, required: bool = True) -> Optional[OutputLayer]:
    """The OutputLayer of a model built by this plugin (for the criterions and tools); for other
    models a ValueError, or None where not ``required``."""
    decoder = model.decoder
    projection = "fc_out" if isinstance(decoder, LSTMDecoder) else "output_projection"
    layer = getattr(decoder, projection, None)  # a stock decoder may have none (tied, adaptive)
    if isinstance(layer, OutputLayer):
        return layer
    if not required:
        return None
    raise ValueError(
        f"{type(model).__name__} has no fairseq-mixtape output layer: use one of the "
        "--arch *_mixtape / *_mos architectures (with --user-dir fairseq_mixtape)")
