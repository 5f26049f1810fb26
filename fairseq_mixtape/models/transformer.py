"""Transformer translation models with any output layer: --arch P_mixtape, P_mos."""

from fairseq.models import register_model
from fairseq.models.transformer import TransformerModel

from .wiring import WithOutputLayer, register_presets

PRESETS = ["transformer", "transformer_iwslt_de_en", "transformer_wmt_en_de",
           "transformer_vaswani_wmt_en_de_big", "transformer_wmt_en_de_big"]


@register_model("transformer_with_output_layer")
class TransformerWithOutputLayer(WithOutputLayer, TransformerModel):
    pass


register_presets("transformer_with_output_layer", PRESETS)
