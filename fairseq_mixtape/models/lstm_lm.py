"""LSTM language models with any output layer: --arch lstm_lm_mixtape, lstm_lm_mos."""

from fairseq.models import register_model
from fairseq.models.lstm_lm import LSTMLanguageModel

from .wiring import WithOutputLayer, register_presets


@register_model("lstm_lm_with_output_layer")
class LSTMLanguageModelWithOutputLayer(WithOutputLayer, LSTMLanguageModel):
    @staticmethod
    def features_dim(model, args) -> int:
        return args.decoder_out_embed_dim

    def forward(self, src_tokens, src_lengths=None, incremental_state=None,
                features_only: bool = False):
        """fairseq's language-model forward, plus the ``features_only`` of its other models."""
        if features_only:
            return self.decoder.extract_features(src_tokens, incremental_state=incremental_state)
        return self.decoder(src_tokens, incremental_state=incremental_state)


register_presets("lstm_lm_with_output_layer", ["lstm_lm"])
