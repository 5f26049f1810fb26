"""Transformer language models with any output layer: --arch P_mixtape, P_mos."""

from dataclasses import dataclass

from fairseq.models import register_model
from fairseq.models.transformer_lm import TransformerLanguageModel, TransformerLanguageModelConfig

from ..output_layers.base import check_option
from .flags import OutputLayerFlags
from .wiring import WithOutputLayer, register_presets

PRESETS = ["transformer_lm", "transformer_lm_wiki103", "transformer_lm_gbw"]


@dataclass
class TransformerLanguageModelWithOutputLayerConfig(TransformerLanguageModelConfig,
                                                    OutputLayerFlags):
    pass


@register_model("transformer_lm_with_output_layer",
                dataclass=TransformerLanguageModelWithOutputLayerConfig)
class TransformerLanguageModelWithOutputLayer(WithOutputLayer, TransformerLanguageModel):
    @classmethod
    def build_model(cls, args, task):
        tied = args.share_decoder_input_output_embed and not args.tie_adaptive_weights
        check_option(not (tied and (args.adaptive_input or args.character_embeddings)),
                     "--share-decoder-input-output-embed", True,
                     "only with an ordinary input embedding: --adaptive-input and "
                     "--character-embeddings have no single weight matrix to tie")
        return super().build_model(args, task)


register_presets("transformer_lm_with_output_layer", PRESETS)
