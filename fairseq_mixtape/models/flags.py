"""The plugin's fairseq flags: ``OutputLayerConfig``'s fields as a ``FairseqDataclass`` (with
``--output-layer``'s choices), plus the one flag of the fairseq wiring, ``--output-layer-reads``."""

import dataclasses
from dataclasses import field

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from ..output_layers import OUTPUT_LAYERS, OutputLayerConfig
from ..output_layers.base import CONTEXT_ACTIVATIONS

WIRINGS = ("hidden", "projection")  # --output-layer-reads

OUTPUT_LAYER_READS_HELP = (
    "where a decoder narrows its hidden state g (width d) to the output width E before the "
    "output layer (Transformer --decoder-output-dim, LSTM --decoder-out-embed-dim): hidden (the "
    "papers' wiring) lets the mixtures (mos, mos_sigsoftmax, mixtape) read g itself, their maps "
    "of g taking the place of fairseq's linear projection; projection puts them after that "
    "projection (the plugin's wiring before version 0.2.0). softmax and sigsoftmax always read "
    "the projection, which is their layer. A checkpoint keeps the wiring it was trained with")


CHOICES = {"output_layer": list(OUTPUT_LAYERS),
           "output_context_activation": list(CONTEXT_ACTIVATIONS)}


def _flag(config_field: dataclasses.Field):
    choices = CHOICES.get(config_field.name)
    kind = ChoiceEnum(choices) if choices else config_field.type
    return (config_field.name, kind,
            field(default=config_field.default, metadata=dict(config_field.metadata)))


OutputLayerFlags = dataclasses.make_dataclass(
    "OutputLayerFlags",
    [_flag(f) for f in dataclasses.fields(OutputLayerConfig)] + [
        ("output_layer_reads", ChoiceEnum(list(WIRINGS)),
         field(default="hidden", metadata={"help": OUTPUT_LAYER_READS_HELP}))],
    bases=(FairseqDataclass,))
OutputLayerFlags.__module__ = __name__
OutputLayerFlags.__doc__ = "The plugin's flags (fairseq-train's --output-layer, ...)."
