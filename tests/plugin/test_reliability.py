"""Reliability: extreme activations under float32 and CPU autocast, the precision
flags fairseq supports on CPU (and clear errors for those it does not), and resuming an
interrupted run onto exactly the updates of an uninterrupted one."""

import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

from helpers import fairseq_train, make_lm_data, make_mt_data
from layers import LAYERS, build_layer

V, C = 40, 8


def extreme_layer(name: str, case: str):
    """A layer whose parameters put it into one extreme ``case``."""
    layer = build_layer(name, C, V, output_components=4 if name == "mixtape" else 3,
                        output_bias=True, mixtape_frequent_tokens=10)
    with torch.no_grad():
        if case == "huge_logits":           # logits of order +-1e4
            layer.weight.normal_(std=40.0)
        elif case == "all_negative_rows":   # every logit about -1e4
            layer.bias.fill_(-1e4)
        elif case == "underflowing_prior":  # one component's prior is exp(-1e4) = 0 in float32
            if hasattr(layer, "prior"):
                layer.prior.weight.zero_()
                layer.prior.weight[1:, 0] = -1e4
            if hasattr(layer, "gate_bias"):
                layer.gate_bias.fill_(1e4)    # sigmoid tree: one leaf takes everything
                layer.shared_gate.weight.fill_(1e4)
    return layer


@pytest.mark.parametrize("autocast", [None, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["huge_logits", "all_negative_rows", "underflowing_prior"])
@pytest.mark.parametrize("name", LAYERS)
def test_extremes_give_finite_normalised_log_probs_and_gradients(name, case, autocast):
    torch.manual_seed(0)
    layer = extreme_layer(name, case)
    features = torch.randn(2, 6, C)
    features[..., 0] = features[..., 0].abs() * 1e2  # the underflowing prior's feature is large
    features.requires_grad_()
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        scores = layer(features)
    log_probs = F.log_softmax(scores.float(), dim=-1)  # what fairseq's get_normalized_probs does
    assert torch.isfinite(log_probs).all()
    assert torch.allclose(torch.logsumexp(log_probs, -1), torch.zeros(2, 6), atol=1e-4)
    target = torch.randint(0, V, (2, 6, 1))
    smoothed, nll = label_smoothed_nll_loss(log_probs, target, epsilon=0.1, reduce=True)
    assert torch.isfinite(smoothed) and torch.isfinite(nll)  # smoothing sums every log p
    smoothed.backward()
    assert torch.isfinite(features.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {"translation": make_mt_data(root), "language_modeling": make_lm_data(root)}


@pytest.mark.parametrize("flag,message", [
    ("--fp16", "--fp16: fairseq's FP16 optimizer needs a CUDA device"),
    ("--bf16", "--bf16: fairseq 0.12 trains in bfloat16 only on TPUs"),
])
@pytest.mark.slow
def test_precision_flags_fairseq_cannot_honour_here_fail_clearly(flag, message, data, tmp_path):
    with pytest.raises(ValueError, match=message):
        fairseq_train(data["language_modeling"], "transformer_lm", "mixtape", tmp_path, 1, flag)


@pytest.mark.parametrize("flag", ["--amp", "--memory-efficient-fp16"])
@pytest.mark.parametrize("layer", ["mixtape", "mos"])
@pytest.mark.slow
def test_training_under_the_precision_flags_fairseq_supports_on_cpu(flag, layer, data, tmp_path):
    checkpoint = fairseq_train(data["language_modeling"], "transformer_lm", layer, tmp_path, 3,
                               flag)
    assert checkpoint["optimizer_history"][-1]["num_updates"] == 3
    weights = checkpoint["model"]  # (fairseq saves float16 weights as float32)
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


@pytest.mark.parametrize("family,layer", [("transformer", "mixtape"), ("transformer", "mos"),
                                          ("lstm_lm", "mixtape")])
@pytest.mark.slow
def test_resumed_run_makes_the_same_updates_as_an_uninterrupted_one(family, layer, data,
                                                                     tmp_path):
    """Stop after 2 updates (mid-epoch), resume from checkpoint_last.pt to 5: the weights equal
    those of a run that went to 5 at once (same seed, dropout on, CPU)."""
    corpus = data[{"transformer": "translation"}.get(family, "language_modeling")]
    flags = ("--dropout", "0.1", "--max-tokens", "150")
    straight = fairseq_train(corpus, family, layer, tmp_path / "straight", 5, *flags)
    fairseq_train(corpus, family, layer, tmp_path / "resumed", 2, *flags)
    resumed = fairseq_train(corpus, family, layer, tmp_path / "resumed", 5, *flags)
    for run in (straight, resumed):
        assert run["optimizer_history"][-1]["num_updates"] == 5
    assert resumed["extra_state"]["train_iterator"] == straight["extra_state"]["train_iterator"]
    assert straight["model"].keys() == resumed["model"].keys()
    for name, weight in straight["model"].items():
        assert torch.equal(weight, resumed["model"][name]), name
