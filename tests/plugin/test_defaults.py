"""The defaults that need no flag: the context scale matched to a softmax's initial spread, the
gate dimension d1 = min(64, E), and Mixtape's gate slots on ids that can be targets."""

import functools

import pytest
import torch
import torch.nn.functional as F
from fairseq.data import Dictionary

from fairseq_mixtape.models.wiring import check_gate_slots_seen, first_target
from fairseq_mixtape.output_layers import OutputLayerConfig, build_output_layer
from fairseq_mixtape.output_layers.base import matched_context_scale
from layers import build_layer
from refusals import refused

C, V = 32, 400


build = functools.partial(build_layer, input_dim=C, num_tokens=V)


def spread(layer, states):
    with torch.no_grad():
        return float(F.log_softmax(layer(states).double(), -1).std(-1).mean())


@pytest.mark.parametrize("name,K", [("mixtape", 1), ("mixtape", 4), ("mixtape", 8), ("mos", 1),
                                    ("mos", 4), ("mos_sigsoftmax", 3)])
def test_default_scale_matches_softmax_spread_on_fresh_states(name, K):
    """On states the rule never saw, the layer spreads its log-probs as a softmax over the same
    output embedding does (the rule's target), and the papers' c = 1 is far flatter."""
    layer = build(name, output_components=K).eval()
    papers = build(name, output_components=K, output_context_scale=1.0).eval()
    papers.load_state_dict({**layer.state_dict(), "context_scale": torch.tensor(1.0)})
    states = torch.randn(200, C, generator=torch.Generator().manual_seed(123))
    target = float(F.linear(torch.randn(200, C, generator=torch.Generator().manual_seed(7)),
                            layer.weight.detach()).std(-1).mean())
    assert 0.85 < spread(layer, states) / target < 1.18  # the rule estimates from 64 states
    assert spread(papers, states) / target < 0.7
    assert float(layer.context_scale) > 1.4


def test_rule_is_deterministic_and_leaves_the_global_random_state():
    layer = build("mos", output_components=4)
    state = torch.get_rng_state()
    first, second = matched_context_scale(layer), matched_context_scale(layer)
    assert first == second and torch.equal(torch.get_rng_state(), state)
    assert layer.training  # restored after the eval-mode measurement


@pytest.mark.parametrize("name", ["mixtape", "mos", "mos_sigsoftmax"])
def test_explicit_scale_overrides_the_rule(name):
    assert float(build(name, output_context_scale=1.0).context_scale) == 1.0  # the papers'
    assert float(build(name, output_context_scale=2.5).context_scale) == 2.5


def test_state_without_derived_buffers_loads_as_saved_before_they_existed():
    layer = build("mixtape", first_target=2, mixtape_frequent_tokens=10)
    assert float(layer.context_scale) != 1.0 and list(layer.frequent_ids) == list(range(2, 12))
    old = {k: v for k, v in layer.state_dict().items()
           if k not in ("context_scale", "gate_slot_start")}
    layer.load_state_dict(old)
    assert float(layer.context_scale) == 1.0 and list(layer.frequent_ids) == list(range(10))


@pytest.mark.parametrize("E,d1", [(16, 16), (32, 32), (64, 64), (512, 64)])
def test_gate_dim_defaults_to_min_64_and_E(E, d1):
    layer = build_output_layer(OutputLayerConfig(output_layer="mixtape"), E, V)
    assert layer.gate_dim == d1
    assert build_output_layer(OutputLayerConfig(output_layer="mixtape", mixtape_gate_dim=8),
                              E, V).gate_dim == 8


def test_gate_slots_start_after_bos_and_pad():
    dictionary = Dictionary()  # <s> 0, <pad> 1, </s> 2, <unk> 3
    for i in range(20):
        dictionary.add_symbol(f"w{i}", n=20 - i)
    assert first_target(dictionary) == 2


def test_gate_slots_refuse_tokens_never_seen():
    dictionary = Dictionary()
    for i in range(10):
        dictionary.add_symbol(f"w{i}", n=10 - i)
    dictionary.add_symbol("madeupword0000", n=0)  # fairseq-preprocess's padding to a multiple
    check_gate_slots_seen(dictionary, range(2, 2 + 12))  # ids 2..13 occur
    with pytest.raises(ValueError, match=r"--mixtape-frequent-tokens \(S\): got 13; allowed: at most 12"):
        check_gate_slots_seen(dictionary, range(2, 2 + 13))


@pytest.mark.slow
def test_logit_scale_script_checks_the_experiment_network(capsys):
    """scripts/logit_scale.py on the PTB experiment's network: every mixture within range by
    default (exit status 0 with --check), and the papers' c = 1 flagged (exit status 1)."""
    from fairseq_mixtape_tools import logit_scale as script

    assert script.main(["--networks", "ptb", "--check"]) == 0
    out = capsys.readouterr().out
    assert out.count("\nptb ") == 10 and "outside" not in out
    assert script.main(["--networks", "ptb", "--check", "--context-scale", "1"]) == 1
    assert "ratio outside [0.75, 1.33]" in capsys.readouterr().out


def test_logit_scale_script_builds_the_sweep_network_at_each_width(capsys):
    """scripts/logit_scale.py's sweep_E networks are the bottleneck sweep's model at that output
    width (the E-wide projection and tied embedding), and an unknown name is refused by name."""
    from fairseq_mixtape_tools import logit_scale as script

    vocab, argv = script.network_arguments("sweep_E32")
    assert vocab == 10000
    assert argv[argv.index("--decoder-output-dim") + 1] == "32"
    assert argv[argv.index("--decoder-input-dim") + 1] == "32"
    assert "--share-decoder-input-output-embed" in argv
    assert refused(script.main, ["--networks", "sweep_E48"], capsys).startswith(
        "--networks: got 'sweep_E48'")
