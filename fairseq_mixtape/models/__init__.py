"""fairseq models whose decoders end in any registered output layer."""

from . import lstm, lstm_lm, transformer, transformer_lm  # noqa: F401  (registers models)
from .wiring import output_layer_of, read_saved_flags_on_load  # noqa: F401

read_saved_flags_on_load()
