"""The papers' wiring in every family: where a decoder narrows its hidden state g (d = 16) to the
output width E = 8, the mixtures read g itself (the stock projection removed), softmax and
sigsoftmax read the projection; outputs against an independent float64 reference of the papers'
layer on g, every parameter trained, generation and fairseq's tools on such models."""

import pytest
import torch
import torch.nn.functional as F

from fairseq_mixtape.models import output_layer_of
from fairseq_mixtape.models.wiring import STOCK_PROJECTIONS, stock_projection
from helpers import LAYERS, MIXTURES, NARROW, NARROW_TIED, build
from references import mixtape_reference, mos_probability_space

D, E = 16, 8
FAMILIES = list(NARROW)


def narrow(family, layer, *extra):
    """(task, model) of ``family`` with E = 8 < d = 16, ``layer``, float64, eval mode."""
    task, model = build(family, layer, *NARROW[family], *extra,
                        tied=NARROW_TIED.get(family, True))
    return task, model.double().eval()


def projection_of(model):
    """The model's stock projection to E (a Linear), or None."""
    name = stock_projection(model.decoder)
    return None if name is None else getattr(model.decoder, name)


def inputs(task, family):
    tokens = torch.randint(4, len(task.target_dictionary), (2, 5))
    if family in ("transformer", "lstm"):
        return (torch.randint(4, len(task.source_dictionary), (2, 6)), torch.tensor([6, 6]),
                tokens)
    return (tokens,)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("family", FAMILIES)
def test_mixtures_read_the_hidden_state_and_softmax_the_projection(family, layer):
    task, model = narrow(family, layer)
    output = output_layer_of(model)
    features, _ = model(*inputs(task, family), features_only=True)
    if layer in MIXTURES:
        assert (output.input_dim, output.embed_dim) == (D, E)
        assert projection_of(model) is None and features.shape[-1] == D
    else:
        assert (output.input_dim, output.embed_dim) == (E, E)
        assert projection_of(model).weight.shape == (E, D) and features.shape[-1] == E
    assert not any(name.split(".")[1] in STOCK_PROJECTIONS
                   for name, _ in model.named_parameters()) or layer not in MIXTURES


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_parameter_gets_a_gradient(family, layer):
    """No parameter is left unused (DDP needs no --find-unused-parameters)."""
    task, model = narrow(family, layer)
    model.train()
    out, _ = model(*inputs(task, family))
    F.log_softmax(out, dim=-1)[..., 5].sum().backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert not unused


def hidden_state(family, model, args):
    """g, d = 16 wide, from the stock decoder of the 0.1 wiring with the same body weights: the
    input of its projection to E (captured by a hook), independent of the new wiring's code."""
    old = build(family, output_layer_of(model).name, *NARROW[family], *args,
                "--output-layer-reads", "projection", tied=NARROW_TIED.get(family, True))[1]
    old = old.double().eval()
    body = {k: v for k, v in model.state_dict().items() if "output_projection" not in k
            and "fc_out" not in k}
    missing, _ = torch.nn.Module.load_state_dict(old, body, strict=False)  # the body only
    assert all("output_projection" in k or "fc_out" in k or k.split(".")[1] in STOCK_PROJECTIONS
               for k in missing)
    captured = []
    projection_of(old).register_forward_hook(lambda m, i, o: captured.append(i[0]))
    return old, captured


COMPONENTS = {"mixtape": ["--output-components", "4"], "control": ["--output-components", "1"],
              "mos": ["--output-components", "3"]}


@pytest.mark.parametrize("variant", list(COMPONENTS))
@pytest.mark.parametrize("family", FAMILIES)
def test_outputs_equal_the_papers_layer_on_the_hidden_state(family, variant):
    layer = "mos" if variant == "mos" else "mixtape"
    task, model = narrow(family, layer, *COMPONENTS[variant])
    args = COMPONENTS[variant]
    old, captured = hidden_state(family, model, args)
    x = inputs(task, family)
    with torch.no_grad():
        old(*x)
        g = captured[0]                                                    # (B, T, d)
        assert g.shape[-1] == D
        out = model(*x)[0]
        output = output_layer_of(model)
        if layer == "mos":
            expected = mos_probability_space(output, g).log()
        else:
            expected = F.log_softmax(mixtape_reference(output, g.reshape(-1, D)), -1).view_as(out)
    torch.testing.assert_close(F.log_softmax(out, -1), expected, rtol=0, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["mos", "mixtape"])
@pytest.mark.parametrize("family", FAMILIES)
def test_beam_search_scores_equal_teacher_forcing(family, layer):
    from fairseq.sequence_generator import SequenceGenerator
    from test_generation import full_forward_log_probs

    task, model = build(family, layer, *NARROW[family], tied=NARROW_TIED.get(family, True))
    model.eval()
    translation = family in ("transformer", "lstm")
    src = torch.randint(4, len(task.source_dictionary), (2, 5))
    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.full((2,), 5)}}
    generator = SequenceGenerator([model], task.target_dictionary, beam_size=2, max_len_b=7)
    for source, beam in zip(src, task.inference_step(generator, [model], sample)):
        for hypothesis in beam:
            expected = full_forward_log_probs(model, hypothesis["tokens"],
                                              source if translation else None)
            if not translation:  # the prefix is given, scored from its end
                expected = expected[-len(hypothesis["positional_scores"]):]
            torch.testing.assert_close(hypothesis["positional_scores"], expected, rtol=0,
                                       atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Checkpoints of Mixtape (K = 2) with E = 8 < d = 16, 3 updates, of every family."""
    from helpers import fairseq_train, make_lm_data, make_mt_data

    root = tmp_path_factory.mktemp("narrow")
    data = {"translation": make_mt_data(root), "language_modeling": make_lm_data(root)}
    checkpoints = {}
    for family in FAMILIES:
        task = "translation" if family in ("transformer", "lstm") else "language_modeling"
        extra = [*NARROW[family]]
        if not NARROW_TIED.get(family, True):
            extra = [*extra, "--share-decoder-input-output-embed"]  # tie at E, not all
        save_dir = root / family
        fairseq_train(data[task], family, "mixtape", save_dir, 3, *extra)
        checkpoints[family] = (save_dir / "checkpoint_last.pt", data[task])
    return checkpoints


@pytest.mark.slow
@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_generate_score_reference_equals_teacher_forcing(family, trained, tmp_path):
    """fairseq-generate --score-reference on a checkpoint of the new wiring gives each reference
    the sum of its teacher-forced log-probabilities."""
    from fairseq import checkpoint_utils
    from test_cli import fairseq_generate
    from test_generation import full_forward_log_probs

    checkpoint, data = trained[family]
    scored = fairseq_generate(data, checkpoint, tmp_path, "--score-reference")
    lines = (tmp_path / "generate-valid.txt").read_text().splitlines()
    positional = {int(line.split("\t")[0][2:]): [float(x) for x in line.split("\t")[1].split()]
                  for line in lines if line.startswith("P-")}
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)])
    model = models[0].eval()
    assert output_layer_of(model).input_dim == D and projection_of(model) is None
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    assert len(scored) == len(dataset)
    for index, scores in positional.items():
        item = dataset[index]
        with torch.no_grad():
            expected = full_forward_log_probs(model, item["target"], item["source"])
        # generate prints log-probs in base 2, rounded to 4 decimals
        expected = (expected / torch.log(torch.tensor(2.0))).tolist()
        assert scores == pytest.approx(expected, abs=2e-4)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["transformer_lm", "lstm_lm"])
def test_eval_lm_and_the_bottleneck_tool(family, trained):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import eval_lm

    from fairseq_mixtape_tools.bottleneck import measure_checkpoint
    from helpers import USER_DIR

    checkpoint, data = trained[family]
    argv = [str(data), "--user-dir", USER_DIR, "--path", str(checkpoint), "--gen-subset",
            "valid", "--cpu", "--tokens-per-sample", "16", "--max-tokens", "400",
            "--num-workers", "0"]
    results = eval_lm.main(convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_eval_lm_parser(), argv)))
    assert 1 < results["perplexity"] < 200
    report = measure_checkpoint(checkpoint, data, subset="valid", max_contexts=60)
    assert report.softmax_bound == E + 1                  # a softmax over the E-wide embedding
    assert report.numerical_rank > E + 1                  # Mixtape K = 2 on the 16-wide state
