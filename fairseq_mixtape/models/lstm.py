"""LSTM translation models with any output layer: --arch P_mixtape, P_mos."""

from fairseq.models import register_model
from fairseq.models.lstm import LSTMModel

from .wiring import WithOutputLayer, register_presets

PRESETS = ["lstm", "lstm_wiseman_iwslt_de_en", "lstm_luong_wmt_en_de"]


@register_model("lstm_with_output_layer")
class LSTMWithOutputLayer(WithOutputLayer, LSTMModel):
    @staticmethod
    def features_dim(model, args) -> int:
        return args.decoder_out_embed_dim

    def forward(self, src_tokens, src_lengths, prev_output_tokens, incremental_state=None,
                features_only: bool = False):
        """fairseq's LSTMModel.forward, plus the ``features_only`` of its other models."""
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths)
        if features_only:
            return self.decoder.extract_features(prev_output_tokens, encoder_out, incremental_state)
        return self.decoder(prev_output_tokens, encoder_out, incremental_state)


register_presets("lstm_with_output_layer", PRESETS)
