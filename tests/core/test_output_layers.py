"""Output layers against their equations, written out independently (tests/references.py and
inline)."""

import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_mixtape.output_layers import OUTPUT_LAYERS, OutputLayerConfig, base, build_output_layer
from fairseq_mixtape.output_layers.mixtape import resolve_frequent_tokens
from fairseq_mixtape.output_layers.sigsoftmax import sigsoftmax_logits
from layers import LAYERS, build_layer
from references import (exact_log_sigsoftmax, manual_logsumexp, mixtape_reference,
                        mixtape_regularised_reference, mos_probability_space, tree_priors_reference)

C, V = 12, 50


build = functools.partial(build_layer, input_dim=C, num_tokens=V)


def log_probs(layer, features):
    return F.log_softmax(layer(features).double(), dim=-1)


def test_registry_has_the_five_layers():
    assert LAYERS == list(OUTPUT_LAYERS)
    assert sorted(LAYERS) == ["mixtape", "mos", "mos_sigsoftmax", "sigsoftmax", "softmax"]
    for name in LAYERS:
        assert build(name).name == name


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("bias", [False, True])
def test_probabilities_sum_to_one(name, bias):
    layer = build(name, output_bias=bias).eval()
    features = torch.randn(3, 7, C) * 3
    scores = layer(features)
    assert scores.shape == (3, 7, V)
    assert torch.allclose(log_probs(layer, features).exp().sum(-1), torch.ones(3, 7, dtype=torch.float64))
    if layer.scores_are_log_probs:  # mixtures return log p itself: log_softmax leaves it unchanged
        assert torch.allclose(scores.exp().sum(-1), torch.ones(3, 7), atol=1e-5)
        assert torch.allclose(F.log_softmax(scores, -1), scores, atol=1e-5)


# ---------------------------------------------------------------------------------- Mixtape
@pytest.mark.parametrize("K,frequent,start", [
    (2, 0.1, 0), (4, 0.1, 0), (4, 0.1, 2), (4, 7, 43), (8, 0.3, 2), (4, 0, 2), (2, V, 0),
    (2, V - 2, 2), (1, 0.1, 2)])
@pytest.mark.parametrize("bias,scale", [(False, 1.0), (True, None), (True, 4.0)])
def test_mixtape_shortcut_equals_naive_reference(K, frequent, start, bias, scale):
    """Own gates on ids start .. start+S-1 (at the start, in the middle, at the end)."""
    layer = build("mixtape", output_components=K, mixtape_frequent_tokens=frequent,
                  mixtape_gate_dim=5, output_bias=bias, output_context_scale=scale,
                  first_target=start).double()
    assert list(layer.frequent_ids) == list(range(start, start + layer.frequent))
    with torch.no_grad():
        if bias:
            layer.bias.normal_()
        if layer.frequent:
            layer.gate_bias.normal_()
    g = torch.randn(9, C, dtype=torch.float64) * 2
    assert layer.frequent == (resolve_frequent_tokens(frequent, V) if K > 1 else 0)
    assert torch.allclose(layer(g), mixtape_reference(layer, g), rtol=0, atol=1e-9)


def test_mixtape_frequent_tokens_as_count_or_fraction():
    assert resolve_frequent_tokens(0.1, 1000) == 100
    assert resolve_frequent_tokens(250, 1000) == 250
    assert resolve_frequent_tokens(0, 1000) == 0
    assert resolve_frequent_tokens(1000, 1000) == 1000


@pytest.mark.parametrize("K", [1, 2, 4, 8, 16])
def test_sigmoid_tree_priors_are_a_distribution(K):
    layer = build("mixtape", output_components=K)
    gate_logits = torch.randn(6, 11, max(K - 1, 1), dtype=torch.float64) * 10
    if K == 1:
        priors = layer.gate_priors(torch.randn(6, 11, C))
    else:
        priors = layer.tree_priors(gate_logits)
        reference = tree_priors_reference(gate_logits, list(range(K)))
        assert torch.allclose(priors, torch.stack([reference[k] for k in range(K)], -1), atol=1e-12)
    assert priors.shape[-1] == K and (priors >= 0).all()
    assert torch.allclose(priors.sum(-1).double(), torch.ones(priors.shape[:-1], dtype=torch.float64))


def test_sigmoid_tree_k4_matches_the_paper():
    layer = build("mixtape", output_components=4)
    l = torch.randn(5, 3)
    s1, s2, s3 = torch.sigmoid(l).unbind(-1)
    expected = torch.stack([s1 * s2, s1 * (1 - s2), (1 - s1) * s3, (1 - s1) * (1 - s3)], -1)
    assert torch.allclose(layer.tree_priors(l), expected)


def test_context_scale_multiplies_the_logits_of_one_component():
    """K = 1, no bias: logits are c tanh(H g + e) . w_x, so scaling by c scales every logit."""
    plain = build("mixtape", output_components=1, output_context_scale=1.0).double()
    scaled = build("mixtape", output_components=1, output_context_scale=4.0).double()
    weights = {k: v for k, v in plain.state_dict().items() if k != "context_scale"}
    scaled.load_state_dict(weights)  # a state without the scale keeps the configured one
    assert float(scaled.context_scale) == 4.0
    g = torch.randn(3, C, dtype=torch.float64)
    assert torch.allclose(scaled(g), 4.0 * plain(g), rtol=1e-12, atol=0)


def test_mixtape_k1_is_softmax_over_tanh_context():
    layer = build("mixtape", output_components=1).double()
    g = torch.randn(4, 5, C, dtype=torch.float64)
    expected = F.log_softmax(layer.context_scale * torch.tanh(layer.context(g)) @ layer.weight.t(), -1)
    assert torch.allclose(log_probs(layer, g), expected, atol=1e-12)
    assert not hasattr(layer, "shared_gate")  # no gates to learn with one component


# ---------------------------------------------------------------------------------- MoS
@pytest.mark.parametrize("scale", [1.0, 0.5, 4.0])
def test_mos_equals_probability_space_mixture(scale):
    layer = build("mos", output_components=5, output_bias=True,
                  output_context_scale=scale).double().eval()
    g = torch.randn(3, 4, C, dtype=torch.float64)
    assert torch.allclose(layer(g).exp(), mos_probability_space(layer, g), atol=1e-12)


def test_mos_is_exact_where_probability_space_underflows():
    layer = build("mos", output_components=3).double().eval()
    with torch.no_grad():
        layer.weight.mul_(400.0)  # logit gaps of thousands: many probabilities are 0 in float64
    g = torch.randn(2, 6, C, dtype=torch.float64)
    assert (mos_probability_space(layer, g) == 0).any(), "test needs underflow to be meaningful"
    h = layer.context_scale * torch.tanh(layer.context(g)).view(2, 6, 3, C)
    logits = h @ layer.weight.t()                                             # (2, 6, 3, V)
    log_softmax = logits - manual_logsumexp(logits, -1).unsqueeze(-1)
    log_pi = g @ layer.prior.weight.t()
    log_pi = log_pi - manual_logsumexp(log_pi, -1).unsqueeze(-1)
    expected = manual_logsumexp(log_softmax + log_pi.unsqueeze(-1), dim=-2)
    got = layer(g)
    assert torch.isfinite(got).all() and got.min() < -746  # exp() of it is 0 in float64
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)


def assert_one_mask_per_sequence(dropped, kept, p):
    """``dropped`` (B, T, ...) is ``kept`` times an inverted-dropout mask that must be one per
    sequence, shared over the T time steps: each unit is 0 at every time step of a sequence or
    kept / (1 - p) at every one, and the sequences' masks differ."""
    zeros = dropped == 0
    assert zeros.any() and not zeros.all() and (kept != 0).all()
    for t in range(1, zeros.shape[1]):  # the mask of each time step, of the same shape (B, ...)
        assert torch.equal(zeros[:, t], zeros[:, 0]), f"time step {t} has another mask"
    assert torch.allclose(dropped[~zeros], kept[~zeros] / (1 - p), rtol=1e-6, atol=0)
    assert any(not torch.equal(zeros[b], zeros[0]) for b in range(1, len(zeros))), \
        "every sequence has the same mask"


@pytest.mark.parametrize("name", ["mos", "mixtape"])
def test_context_dropout_one_mask_per_sequence_shared_over_time(name):
    layer = build(name, output_components=4, output_context_dropout=0.5)
    assert layer.context_dropout == 0.5
    g = torch.randn(6, 9, C)                  # other features at every time step
    torch.manual_seed(0)
    h = layer.train().contexts(g)             # (B, T, K, E)
    kept = layer.eval().contexts(g)
    assert_one_mask_per_sequence(h, kept, 0.5)
    assert torch.equal(layer.contexts(g), kept)  # eval: no dropout


# ---------------------------------------------------------------------------------- Mixtape's regularisers
REGULARISERS = dict(output_context_dropout=0.3, mixtape_gate_dropout=0.3, mixtape_gate_noise=0.5)


def build_mixtape(**options):
    return build("mixtape", output_components=4, mixtape_gate_dim=5, mixtape_frequent_tokens=7,
                 **options).double()


def record_draws(layer, monkeypatch):
    """Lists that fill, as ``layer`` runs, with its dropout masks and gate noise, in draw order."""
    masks, noise = [], []
    draw_mask, add_noise = base.sequence_dropout_mask, layer.gate_logit_noise

    def recorded_mask(x, p):
        masks.append(draw_mask(x, p))
        return masks[-1]

    def recorded_noise(logits):
        noisy = add_noise(logits)
        noise.append(noisy - logits)
        return noisy

    monkeypatch.setattr(base, "sequence_dropout_mask", recorded_mask)
    monkeypatch.setattr(layer, "gate_logit_noise", recorded_noise)
    return masks, noise


def test_mixtape_regularised_shortcut_equals_naive_reference(monkeypatch):
    """In training, the shortcut with the three regularisers is the naive layer (float64, all
    K x V logits) with the same masks on h_k and tanh(U_j g + a_j) and the same noisy gate
    logits; the masks are one per sequence."""
    layer = build_mixtape(first_target=2, output_bias=True, **REGULARISERS)
    masks, noise = record_draws(layer, monkeypatch)
    g = torch.randn(3, 5, C, dtype=torch.float64) * 2
    logits = layer.train()(g)
    K, E, S, d1 = 4, layer.embed_dim, layer.frequent, layer.gate_dim
    assert [m.shape for m in masks] == [(3, 1, K, E), (3, 1, K - 1, d1)]
    assert [n.shape for n in noise] == [(3, 5, K - 1), (3, 5, K - 1, S)]
    reference = mixtape_regularised_reference(layer, g, *masks, *noise)
    assert torch.allclose(logits, reference, rtol=0, atol=1e-9)
    assert not torch.allclose(logits, mixtape_regularised_reference(layer, g), atol=1e-3)


@pytest.mark.parametrize("options", [
    dict(output_context_dropout=0.3), dict(mixtape_gate_dropout=0.3),
    dict(mixtape_gate_noise=0.5), REGULARISERS])
def test_mixtape_regularisers_are_train_only(options):
    torch.manual_seed(0)
    plain = build_mixtape()
    regularised = build_mixtape(**options)
    regularised.load_state_dict(plain.state_dict())
    g = torch.randn(4, 6, C, dtype=torch.float64)
    expected = plain.eval()(g)
    assert torch.equal(regularised.eval()(g), expected)         # eval: exactly the plain layer
    assert torch.equal(plain.train()(g), expected)              # all at 0: train = eval
    assert not torch.allclose(regularised.train()(g), expected, atol=1e-3)  # train: changed


def test_mixtape_gate_dropout_zeroes_whole_gate_hidden_units_per_sequence():
    layer = build_mixtape(mixtape_gate_dropout=0.5)
    g = torch.randn(6, 9, C, dtype=torch.float64)
    torch.manual_seed(0)
    hidden = layer.train().gate_hidden_units(g)                 # (B, T, K-1, d1)
    kept = layer.eval().gate_hidden_units(g)
    assert hidden.shape == (6, 9, 3, layer.gate_dim)
    assert_one_mask_per_sequence(hidden, kept, 0.5)


def test_mixtape_gate_noise_has_the_right_std(monkeypatch):
    """One N(0, sigma^2) draw per position on each shared gate logit u_j . g, and one per
    position and frequent token on the frequent tokens' gate logits (loose statistical bounds:
    the sample std of n draws is within 5/sqrt(2n) relative of sigma with overwhelming odds)."""
    sigma = 0.5
    layer = build_mixtape(mixtape_gate_noise=sigma).train()
    _, noise = record_draws(layer, monkeypatch)
    torch.manual_seed(0)
    layer(torch.randn(8, 64, C, dtype=torch.float64))
    shared, frequent = noise
    assert shared.shape == (8, 64, 3) and frequent.shape == (8, 64, 3, layer.frequent)
    for draws in (shared, frequent):
        n = draws.numel()
        assert abs(draws.mean()) < 5 * sigma / n ** 0.5
        assert abs(draws.std() / sigma - 1) < 5 / (2 * n) ** 0.5
    assert not torch.equal(shared[:, 0], shared[:, 1])          # drawn for each position
    correlation = torch.corrcoef(shared.flatten(0, 1).t())      # of the K-1 gates' draws
    assert (correlation - torch.eye(3)).abs().max() < 0.2


@pytest.mark.parametrize("option,value,allowed", [
    ("output_context_dropout", 1.0, "a probability in [0, 1)"),
    ("output_context_dropout", -0.1, "a probability in [0, 1)"),
    ("mixtape_gate_dropout", float("nan"), "a probability in [0, 1)"),
    ("mixtape_gate_dropout", 1.5, "a probability in [0, 1)"),
    ("mixtape_gate_noise", -0.5, "a finite number >= 0"),
    ("mixtape_gate_noise", float("inf"), "a finite number >= 0"),
    ("mixtape_gate_noise", float("nan"), "a finite number >= 0"),
])
def test_bad_regulariser_values_name_the_flag_the_value_and_what_is_allowed(option, value, allowed):
    flag = "--" + option.replace("_", "-")
    with pytest.raises(ValueError) as error:
        build_output_layer(OutputLayerConfig(output_layer="mixtape", **{option: value}), C, V)
    assert str(error.value).startswith(f"{flag}: got {value!r}; allowed: {allowed}")


# ---------------------------------------------------------------------------------- Sigsoftmax
def test_sigsoftmax_matches_definition():
    layer = build("sigsoftmax").double()
    g = torch.randn(4, C, dtype=torch.float64)
    z = g @ layer.weight.t()
    unnormalised = z.exp() * torch.sigmoid(z)
    expected = unnormalised / unnormalised.sum(-1, keepdim=True)
    assert torch.allclose(log_probs(layer, g).exp(), expected, atol=1e-12)


@pytest.mark.parametrize("row", [[-300.0, -200.0, -150.0], [1e4, -1e4, 0.0], [-1e4, -1e4 + 1, -1e4 + 3]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sigsoftmax_is_finite_and_exact_on_extreme_rows(row, dtype):
    z = torch.tensor([row], dtype=dtype)
    got = F.log_softmax(sigsoftmax_logits(z), -1)
    assert torch.isfinite(got).all()
    expected = torch.tensor([exact_log_sigsoftmax(row)], dtype=torch.float64)
    finite = expected > -1e30  # mpmath's exact values: compare where float64 can hold them
    assert torch.allclose(got.double()[finite], expected[finite], rtol=1e-6, atol=1e-3 if dtype == torch.float32 else 1e-9)
    assert torch.allclose(got.double().exp().sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("K", [1, 3])
def test_mos_sigsoftmax_components_are_sigsoftmaxes(K):
    layer = build("mos_sigsoftmax", output_components=K).double().eval()
    g = torch.randn(5, C, dtype=torch.float64)
    pi = torch.softmax(g @ layer.prior.weight.t(), -1)
    z = layer.context_scale * torch.tanh(layer.context(g)).view(5, K, C) @ layer.weight.t()
    sig = z.exp() * torch.sigmoid(z)
    expected = (pi.unsqueeze(-1) * sig / sig.sum(-1, keepdim=True)).sum(-2)
    assert torch.allclose(layer(g).exp(), expected, atol=1e-12)


@pytest.mark.parametrize("name", ["mos", "mos_sigsoftmax"])
def test_target_log_probs_are_the_mixture_at_the_targets(name):
    """What the criterions train the MoS layers with where they need only log p(target): the
    whole mixture's log p at the targets, and the same gradients (float64)."""
    layer = build(name, output_components=3, output_bias=True,
                  output_context_scale=2.0).double().eval()
    g = torch.randn(3, 4, C, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, V, (3, 4))
    whole = layer(g).gather(-1, target.unsqueeze(-1)).squeeze(-1)              # (3, 4)
    alone = layer.target_log_probs(g, target)
    assert alone.shape == target.shape
    assert torch.allclose(alone, whole, rtol=0, atol=1e-12)
    inputs = [g, *layer.parameters()]
    for got, expected in zip(torch.autograd.grad(alone.sum(), inputs),
                             torch.autograd.grad(whole.sum(), inputs)):
        assert torch.allclose(got, expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------- all layers
RETURN_LOG_PROBS = ("mos", "mos_sigsoftmax")  # the others return logits


@pytest.mark.parametrize("name", LAYERS)
def test_each_layer_declares_what_it_returns_and_gives_the_targets_log_probs(name):
    """Each layer declares (in its own class) whether ``forward`` returns log p or logits and
    whether ``target_log_probs`` skips the (..., V) distribution: the MoS layers do both. Every
    layer's ``target_log_probs`` is log_softmax(forward) at the targets."""
    cls = OUTPUT_LAYERS[name]
    assert {"scores_are_log_probs", "direct_target_log_probs"} <= set(vars(cls))
    assert cls.scores_are_log_probs is cls.direct_target_log_probs is (name in RETURN_LOG_PROBS)
    layer = build(name, output_components=2, output_bias=True).double().eval()
    g = torch.randn(3, 4, C, dtype=torch.float64) * 2
    target = torch.randint(0, V, (3, 4))
    scores = layer(g)
    if layer.scores_are_log_probs:
        assert torch.allclose(scores.logsumexp(-1), torch.zeros(3, 4, dtype=torch.float64),
                              rtol=0, atol=1e-12)
    else:  # logits: not normalised
        assert not torch.allclose(scores.logsumexp(-1), torch.zeros(3, 4, dtype=torch.float64))
    expected = log_probs(layer, g).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(layer.target_log_probs(g, target), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", LAYERS)
def test_gradcheck_float64(name):
    layer = build(name, input_dim=4, num_tokens=9, output_components=2, mixtape_gate_dim=3,
                  mixtape_frequent_tokens=3, output_bias=True).double().eval()
    g = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in layer.named_parameters()]
    weights = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def log_p(g, *weights):
        return F.log_softmax(torch.func.functional_call(layer, dict(zip(names, weights)), (g,)), -1)

    assert torch.autograd.gradcheck(log_p, (g, *weights))


@pytest.mark.parametrize("start", [0, 2, 6])
def test_mixtape_gradcheck_with_the_frequent_block_anywhere(start):
    """The own-gate ids a .. a+S-1 at the start, in the middle and at the end of the vocabulary:
    the projection's placeholder block, overwritten by the gated logits, passes no gradient."""
    layer = build("mixtape", input_dim=4, num_tokens=9, output_components=4, mixtape_gate_dim=3,
                  mixtape_frequent_tokens=3, first_target=start).double().eval()
    g = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    weight = layer.weight.detach().clone().requires_grad_()

    def log_p(g, weight):
        return F.log_softmax(torch.func.functional_call(layer, {"weight": weight}, (g,)), -1)

    assert torch.autograd.gradcheck(log_p, (g, weight))


@pytest.mark.parametrize("name", LAYERS)
def test_tied_weights_share_storage_and_gradients(name):
    embed = nn.Embedding(V, C)
    layer = build(name, embed_weight=embed.weight).eval()
    assert layer.weight is embed.weight
    assert layer.weight.data_ptr() == embed.weight.data_ptr()
    tokens = torch.randint(0, V, (3, 4))
    targets = torch.randint(0, V, (3, 4))
    loss_in = embed(tokens).pow(2).sum()
    loss_out = F.nll_loss(log_probs(layer, torch.randn(3, 4, C)).view(-1, V), targets.view(-1))
    grad_in, = torch.autograd.grad(loss_in, embed.weight, retain_graph=True)
    grad_out, = torch.autograd.grad(loss_out, layer.weight, retain_graph=True)
    (loss_in + loss_out).backward()
    assert grad_out.abs().sum() > 0
    assert torch.allclose(embed.weight.grad, grad_in + grad_out.float())


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_normalise_in_float32(name, dtype):
    layer = build(name, output_components=2).eval()
    g = torch.randn(2, 5, C) * 4
    reference = log_probs(layer, g)
    layer = layer.to(dtype)
    scores = layer(g.to(dtype))
    if name != "softmax":  # softmax hands fairseq logits as-is; its log_softmax runs in float32
        assert scores.dtype == torch.float32
    got = F.log_softmax(scores.float(), -1)
    assert torch.isfinite(got).all()
    assert torch.allclose(got.exp().sum(-1), torch.ones(2, 5), atol=1e-5)
    assert torch.allclose(got.double(), reference, atol=0.15)  # half-precision weights and inputs


# ---------------------------------------------------------------------------------- bad config
@pytest.mark.parametrize("options,flag,allowed", [
    (dict(output_layer="softmaxx"), "--output-layer", "softmax, mos, mixtape"),
    (dict(output_layer="mixtape", output_components=3), "--output-components", "power of two"),
    (dict(output_layer="mixtape", output_components=0), "--output-components", "power of two"),
    (dict(output_layer="mos", output_components=0), "--output-components", "integer >= 1"),
    (dict(output_layer="mos_sigsoftmax", output_components=-2), "--output-components", "integer >= 1"),
    (dict(output_layer="softmax", output_components=4), "--output-components", "1 or unset"),
    (dict(output_layer="mixtape", mixtape_frequent_tokens=V + 1), "--mixtape-frequent-tokens", f"vocabulary size {V}"),
    (dict(output_layer="mixtape", mixtape_frequent_tokens=2.5), "--mixtape-frequent-tokens", "whole count"),
    (dict(output_layer="mixtape", mixtape_frequent_tokens=-0.1), "--mixtape-frequent-tokens", "fraction"),
    (dict(output_layer="mixtape", mixtape_gate_dim=0), "--mixtape-gate-dim", "integer >= 1"),
    (dict(output_layer="mixtape", mixtape_gate_dim=4.0), "--mixtape-gate-dim", "integer >= 1"),
    (dict(output_layer="mixtape", output_context_activation="relu"), "--output-context-activation", "tanh, linear"),
    (dict(output_layer="softmax", output_context_activation="linear"), "--output-context-activation", "no context vectors"),
    (dict(output_layer="mos", output_components=True), "--output-components", "integer >= 1"),
    (dict(output_layer="mixtape", output_components=2.0), "--output-components", "power of two"),
    (dict(output_layer="mixtape", mixtape_frequent_tokens=True), "--mixtape-frequent-tokens", "fraction"),
    (dict(output_layer="mos", output_context_dropout=1.0), "--output-context-dropout", "[0, 1)"),
    (dict(output_layer="mixtape", output_context_scale=0.0), "--output-context-scale", "> 0"),
    (dict(output_layer="mos", output_context_scale=-4.0), "--output-context-scale", "> 0"),
    (dict(output_layer="mos_sigsoftmax", output_context_scale=float("nan")), "--output-context-scale", "finite"),
    (dict(output_layer="mixtape", output_context_scale=float("inf")), "--output-context-scale", "finite"),
    (dict(output_layer="sigsoftmax", output_context_scale=4.0), "--output-context-scale", "no context vectors"),
    (dict(output_layer="mos", output_context_dropout=-0.1), "--output-context-dropout", "[0, 1)"),
    (dict(output_layer="mos_sigsoftmax", output_context_dropout=float("nan")), "--output-context-dropout", "[0, 1)"),
    (dict(output_layer="softmax", output_context_dropout=0.3), "--output-context-dropout", "no context vectors"),
    (dict(output_layer="sigsoftmax", output_context_dropout=0.3), "--output-context-dropout", "no context vectors"),
])
def test_bad_configuration_names_the_option(options, flag, allowed):
    with pytest.raises(ValueError) as error:
        build_output_layer(OutputLayerConfig(**options), C, V)
    assert flag in str(error.value) and allowed in str(error.value)


def test_tied_embedding_of_the_wrong_vocabulary_is_refused():
    with pytest.raises(ValueError, match="tied output embedding shape"):
        build("mixtape", embed_weight=nn.Parameter(torch.randn(V + 1, C)))


def test_softmax_needs_matching_embedding_dim_but_mixtures_project():
    with pytest.raises(ValueError, match="output embedding dim"):
        build("softmax", embed_weight=nn.Parameter(torch.randn(V, C + 4)))
    for name in ["mos", "mixtape"]:
        layer = build(name, embed_weight=nn.Parameter(torch.randn(V, C + 4))).eval()
        assert layer(torch.randn(2, C)).shape == (2, V)


@pytest.mark.parametrize("name", ["mixtape", "mos"])
def test_linear_contexts_drop_the_tanh(name):
    """--output-context-activation linear: h_k = c (W_k g + e_k), the rest of the layer as is."""
    from references import mixtape_reference, mos_probability_space

    cfg = OutputLayerConfig(output_layer=name, output_components=4,
                            output_context_activation="linear")
    layer = build_output_layer(cfg, C, V).double()
    g = torch.randn(6, C, dtype=torch.float64) * 3
    identity = lambda x: x  # noqa: E731
    if name == "mixtape":
        expected = torch.log_softmax(mixtape_reference(layer, g, identity), -1)
        tanh = torch.log_softmax(mixtape_reference(layer, g), -1)
    else:
        expected = mos_probability_space(layer, g, identity).log()
        tanh = mos_probability_space(layer, g).log()
    got = torch.log_softmax(layer(g), -1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    assert not torch.allclose(got, tanh, atol=1e-3)  # the tanh made a difference here
