"""Transformer translation models with any output layer: --arch P_mixtape, P_mos."""

from fairseq.models import register_model
from fairseq.models.transformer import TransformerModel

from .wiring import add_output_layer_args, attach_output_layer, register_presets

PRESETS = ["transformer", "transformer_iwslt_de_en", "transformer_wmt_en_de",
           "transformer_vaswani_wmt_en_de_big", "transformer_wmt_en_de_big"]


@register_model("transformer_with_output_layer")
class TransformerWithOutputLayer(TransformerModel):
    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        add_output_layer_args(parser)

    @classmethod
    def build_model(cls, args, task):
        model = super().build_model(args, task)
        attach_output_layer(model.decoder, args, input_dim=model.decoder.output_embed_dim)
        return model


register_presets("transformer_with_output_layer", PRESETS)
