"""The output layers under test, built as a user builds them (``OutputLayerConfig`` and
``build_output_layer``), and the registry's lists of them. Torch and the core only: the core's
tests (tests/core) also run in an environment without fairseq.

    layer = build_layer("mixtape", 12, 50, output_components=4, mixtape_gate_dim=3)
"""

from fairseq_mixtape.output_layers import OUTPUT_LAYERS, OutputLayerConfig, build_output_layer

# Every output layer, in the registry's order; the mixtures are those with K components
# (softmax and sigsoftmax have one).
LAYERS = list(OUTPUT_LAYERS)
MIXTURES = [name for name in LAYERS if OUTPUT_LAYERS[name].default_components > 1]


def build_layer(name: str, input_dim: int, num_tokens: int, *, embed_weight=None,
                embed_dim=None, first_target: int = 0, **options):
    """Layer ``name`` reading ``input_dim`` features (d) over ``num_tokens`` tokens (V), with
    OutputLayerConfig's fields ``options``. ``output_components`` (K) goes to the mixtures only,
    so that one call builds every layer of a parametrised test (softmax and sigsoftmax, which
    have one component, refuse K > 1)."""
    if name not in MIXTURES:
        options.pop("output_components", None)
    return build_output_layer(OutputLayerConfig(output_layer=name, **options), input_dim,
                              num_tokens, embed_weight=embed_weight, embed_dim=embed_dim,
                              first_target=first_target)
