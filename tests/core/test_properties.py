"""Property-based checks over random shapes and options: every layer normalises, and Mixtape
agrees with the slow K x V reference, whatever V, K, S, d, d1, context scale, tying and bias
are."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from fairseq_mixtape.output_layers import OutputLayerConfig, build_output_layer
from layers import LAYERS
from references import mixtape_reference

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def layer_options(draw, names=tuple(LAYERS)):
    name = draw(st.sampled_from(names))
    vocab = draw(st.integers(1, 60))
    dim = draw(st.integers(1, 12))
    options = dict(output_layer=name, output_bias=draw(st.booleans()))
    if name == "mixtape":
        options.update(output_components=draw(st.sampled_from([1, 2, 4, 8])),
                       mixtape_gate_dim=draw(st.integers(1, 6)),
                       mixtape_frequent_tokens=draw(st.one_of(
                           st.integers(0, vocab), st.floats(0, 0.99))))
    elif name in ("mos", "mos_sigsoftmax"):
        options.update(output_components=draw(st.integers(1, 6)))
    if name in ("mixtape", "mos", "mos_sigsoftmax"):
        options.update(output_context_scale=draw(st.floats(0.1, 8)))
    tied = draw(st.booleans())
    positions = draw(st.integers(1, 5))
    return OutputLayerConfig(**options), vocab, dim, tied, positions


def build(cfg, vocab, dim, tied):
    embed_weight = nn.Parameter(torch.randn(vocab, dim, dtype=torch.float64)) if tied else None
    layer = build_output_layer(cfg, dim, vocab, embed_weight=embed_weight).double().eval()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.normal_()  # biases and gate biases too, not just their zero init
    return layer


@SETTINGS
@given(layer_options(), st.floats(0.1, 30))
def test_every_layer_normalises_with_finite_gradients(options, scale):
    cfg, vocab, dim, tied, positions = options
    layer = build(cfg, vocab, dim, tied)
    features = (torch.randn(2, positions, dim, dtype=torch.float64) * scale).requires_grad_()
    log_p = F.log_softmax(layer(features), dim=-1)
    assert log_p.shape == (2, positions, vocab) and torch.isfinite(log_p).all()
    assert torch.allclose(log_p.exp().sum(-1), torch.ones(2, positions, dtype=torch.float64))
    log_p[..., 0].sum().backward()
    assert torch.isfinite(features.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


@SETTINGS
@given(layer_options(names=("mixtape",)))
def test_mixtape_agrees_with_the_slow_reference(options):
    cfg, vocab, dim, tied, positions = options
    layer = build(cfg, vocab, dim, tied)
    features = torch.randn(positions, dim, dtype=torch.float64) * 2
    assert torch.allclose(layer(features), mixtape_reference(layer, features), rtol=0, atol=1e-9)
