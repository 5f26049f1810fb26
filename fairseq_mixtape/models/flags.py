"""The plugin's fairseq flags: ``OutputLayerConfig``'s fields as a ``FairseqDataclass`` (with
``--output-layer``'s choices), the former names of renamed settings as aliases
(``--mos-context-dropout``, ``--mixtape-context-dropout``: ``--output-context-dropout``), and
the flags of the fairseq wiring: ``--output-layer-reads`` and ``--compile-output-layer``."""

import dataclasses
from dataclasses import field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from ..output_layers import OUTPUT_LAYERS, RENAMED_SETTINGS, OutputLayerConfig
from ..output_layers.base import CONTEXT_ACTIVATIONS

WIRINGS = ("hidden", "projection")  # --output-layer-reads

OUTPUT_LAYER_READS_HELP = (
    "where a decoder narrows its hidden state g (width d) to the output width E before the "
    "output layer (Transformer --decoder-output-dim, LSTM --decoder-out-embed-dim): hidden (the "
    "papers' wiring) lets the mixtures (mos, mos_sigsoftmax, mixtape) read g itself, their maps "
    "of g taking the place of fairseq's linear projection; projection puts them after that "
    "projection (the plugin's wiring before version 0.2.0). softmax and sigsoftmax always read "
    "the projection, which is their layer. A checkpoint keeps the wiring it was trained with")

COMPILE_OUTPUT_LAYER_HELP = (
    "run the output layer through torch.compile (dynamic shapes; where compiling fails, a "
    "warning, then the eager layer), and in the plugin criterions the layer, log-softmax and "
    "loss of each chunk; the same results and checkpoints as without it. A choice of the run "
    "that builds the model, not of the model: a checkpoint loaded by fairseq-generate, "
    "fairseq-eval-lm or checkpoint_utils.load_model_ensemble runs its layer eagerly, however it "
    "was trained, unless asked with --model-overrides \"{'compile_output_layer': True}\" "
    "(arg_overrides in Python)")

CHOICES = {"output_layer": list(OUTPUT_LAYERS),
           "output_context_activation": list(CONTEXT_ACTIVATIONS)}


def flag_name(key: str) -> str:
    """A setting's command-line flag: output_context_dropout -> --output-context-dropout."""
    return "--" + key.replace("_", "-")


def former_names(name: str):
    """The former names of the setting ``name`` (RENAMED_SETTINGS), in their table's order."""
    return [former for former, renamed in RENAMED_SETTINGS.items() if renamed.name == name]


def _flag(config_field: dataclasses.Field):
    """A core setting as a flag. A renamed setting's default is None, so that its flag and its
    former names' tell whether they were given (``wiring.merge_former_names`` sets it)."""
    choices = CHOICES.get(config_field.name)
    kind = ChoiceEnum(choices) if choices else config_field.type
    if former_names(config_field.name):
        return (config_field.name, Optional[config_field.type],
                field(default=None, metadata=dict(config_field.metadata)))
    return (config_field.name, kind,
            field(default=config_field.default, metadata=dict(config_field.metadata)))


def _former_flag(former: str):
    """A former name, an alias of its setting's flag."""
    name = RENAMED_SETTINGS[former].name
    kind = OutputLayerConfig.__dataclass_fields__[name].type
    return (former, Optional[kind], field(default=None, metadata={
        "help": f"the former name of {flag_name(name)}, the same setting for every layer"}))


OutputLayerFlags = dataclasses.make_dataclass(
    "OutputLayerFlags",
    [_flag(f) for f in dataclasses.fields(OutputLayerConfig)]
    + [_former_flag(former) for former in RENAMED_SETTINGS]
    + [("output_layer_reads", ChoiceEnum(list(WIRINGS)),
        field(default="hidden", metadata={"help": OUTPUT_LAYER_READS_HELP})),
       ("compile_output_layer", bool,
        field(default=False, metadata={"help": COMPILE_OUTPUT_LAYER_HELP}))],
    bases=(FairseqDataclass,))
OutputLayerFlags.__module__ = __name__
OutputLayerFlags.__doc__ = "The plugin's flags (fairseq-train's --output-layer, ...)."
