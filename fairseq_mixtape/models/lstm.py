"""LSTM translation models with any output layer: --arch P_mixtape, P_mos."""

from fairseq.models import register_model
from fairseq.models.lstm import LSTMModel

from .wiring import add_output_layer_args, attach_output_layer, register_presets

PRESETS = ["lstm", "lstm_wiseman_iwslt_de_en", "lstm_luong_wmt_en_de"]


@register_model("lstm_with_output_layer")
class LSTMWithOutputLayer(LSTMModel):
    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        add_output_layer_args(parser)

    @classmethod
    def build_model(cls, args, task):
        model = super().build_model(args, task)
        attach_output_layer(model.decoder, args, input_dim=args.decoder_out_embed_dim)
        return model

    def forward(self, src_tokens, src_lengths, prev_output_tokens, incremental_state=None,
                features_only: bool = False):
        """fairseq's LSTMModel.forward, plus the ``features_only`` of its other models."""
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths)
        if features_only:
            return self.decoder.extract_features(prev_output_tokens, encoder_out, incremental_state)
        return self.decoder(prev_output_tokens, encoder_out, incremental_state)


register_presets("lstm_with_output_layer", PRESETS)
