"""Checkpoints across versions: checkpoints saved before output layers stored what they derive
at build time (the context scale, Mixtape's gate slots) load with today's code and give the
scores they gave then; new checkpoints store those values."""

from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils

from fairseq_mixtape.models import output_layer_of
from helpers import NARROW  # the d = 16, E = 8 flags the fixtures were made with

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"  # made by make.py there


def load(path: Path):
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(path)], arg_overrides={"data": str(LEGACY)})
    return models[0].eval(), task


@pytest.mark.parametrize("name,scale", [("mixtape", 1.0), ("mixtape_scale4", 4.0), ("mos", 1.0)])
def test_legacy_checkpoint_gives_its_old_scores(name, scale):
    expected = torch.load(LEGACY / "expected_scores.pt")
    model, _ = load(LEGACY / f"{name}.pt")
    layer = output_layer_of(model)
    assert float(layer.context_scale) == scale  # what it was trained with, not today's default
    if layer.name == "mixtape":
        assert list(layer.frequent_ids) == list(range(6))  # the first S ids, <s> and <pad> too
    with torch.no_grad():
        scores = model(expected["tokens"])[0]
    torch.testing.assert_close(scores, expected[name], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_new_checkpoint_stores_the_derived_values(tmp_path):
    from helpers import fairseq_train, make_lm_data

    state = fairseq_train(make_lm_data(tmp_path), "transformer_lm", "mixtape", tmp_path / "ckpt", 1)
    keys = [k for k in state["model"] if k.endswith(("context_scale", "gate_slot_start"))]
    assert len(keys) == 2
    model, _ = load(tmp_path / "ckpt" / "checkpoint_last.pt")
    layer = output_layer_of(model)
    assert list(layer.frequent_ids) == list(range(2, 8))  # <s> (0) and <pad> (1) have no slot
    scale = [v for k, v in state["model"].items() if k.endswith("context_scale")][0]
    assert float(layer.context_scale) == float(scale) != 1.0


PROJECTION = Path(__file__).resolve().parents[1] / "fixtures" / "projection_wiring"  # its make.py
FAMILIES = ("transformer_lm", "lstm_lm")
VARIANTS = ("mos", "mos_sigsoftmax", "mixtape", "control")
STOCK_PROJECTION = {"transformer_lm": "project_out_dim", "lstm_lm": "additional_fc"}
COMPONENTS = {"mixtape": ["--output-components", "4"], "control": ["--output-components", "1"],
              "mos": [], "mos_sigsoftmax": []}


def load_projection_fixture(key: str):
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(PROJECTION / f"{key}.pt")], arg_overrides={"data": str(PROJECTION)})
    return models[0].eval(), cfg


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpoint_of_the_projection_wiring_keeps_it_and_its_scores(family, variant):
    """Checkpoints of version 0.1, whose mixtures read fairseq's projection of the hidden state
    to E (d = 16, E = 8), keep that wiring under the hidden-state default and score as then."""
    key = f"{family}_{variant}"
    expected = torch.load(PROJECTION / "expected_scores.pt")
    model, cfg = load_projection_fixture(key)
    layer = output_layer_of(model)
    assert isinstance(getattr(model.decoder, STOCK_PROJECTION[family]), torch.nn.Linear)
    assert (layer.input_dim, layer.embed_dim) == (8, 8)
    assert cfg.model.output_layer_reads == "projection"  # what a later save records
    assert (layer.weight is model.decoder.embed_tokens.weight)  # still tied
    from helpers import build

    narrow = NARROW[family]
    _, built_old = build(family, variant.replace("control", "mixtape"), *narrow,
                         *COMPONENTS[variant], "--output-layer-reads", "projection")
    # the parameters in the order of the checkpoint's model, which its optimizer state follows
    assert [n for n, _ in model.named_parameters()] == [
        n for n, _ in built_old.named_parameters()]
    with torch.no_grad():
        scores = model(expected["tokens"])[0]
    torch.testing.assert_close(scores, expected[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_new_mixture_reads_the_hidden_state_without_the_stock_projection(family):
    """The same flags today build the papers' wiring: the mixture reads the 16-wide hidden
    state, the stock projection is gone, and such a checkpoint refuses the other wiring."""
    from helpers import build

    narrow = NARROW[family]
    _, model = build(family, "mixtape", *narrow)
    layer = output_layer_of(model)
    assert (layer.input_dim, layer.embed_dim) == (16, 8)
    assert getattr(model.decoder, STOCK_PROJECTION[family], None) is None
    assert not any(STOCK_PROJECTION[family] in name for name, _ in model.named_parameters())
    _, old = build(family, "mixtape", *narrow, "--output-layer-reads", "projection")
    assert output_layer_of(old).input_dim == 8
    with pytest.raises(ValueError, match="--output-layer-reads: got 'projection'"):
        old.load_state_dict(model.state_dict(), model_cfg=None)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_training_resumes_from_a_checkpoint_of_the_projection_wiring(family, tmp_path):
    """fairseq-train with today's default flags continues a 0.1 checkpoint (its optimizer state
    included) in the checkpoint's wiring, and saves that wiring in the new checkpoint."""
    import shutil

    from helpers import fairseq_train

    narrow = NARROW[family]
    save_dir = tmp_path / "ckpt"
    save_dir.mkdir()
    shutil.copy(PROJECTION / f"{family}_mixtape.pt", save_dir / "checkpoint_last.pt")
    from helpers import make_lm_data

    state = fairseq_train(make_lm_data(tmp_path), family, "mixtape", save_dir, 5,
                          "--output-components", "4", *narrow)
    assert state["optimizer_history"][-1]["num_updates"] == 5
    model_cfg = state["cfg"]["model"]
    model_cfg = model_cfg if isinstance(model_cfg, dict) else vars(model_cfg)  # LSTM: Namespace
    assert model_cfg["output_layer_reads"] == "projection"
    assert f"decoder.{STOCK_PROJECTION[family]}.weight" in state["model"]


# Checkpoints saved before --output-context-dropout: their configs hold the former names
# (0.1's transformer_lm only mos_context_dropout; later ones mixtape_context_dropout too), and
# each layer read its own: MoS mos_context_dropout, Mixtape mixtape_context_dropout.
FORMER_NAMES = [  # (fixture, its data folder, the saved former names, the layer's dropout)
    ("legacy/mos.pt", dict(mos_context_dropout=0.29), 0.29),
    ("projection_wiring/transformer_lm_mos.pt",
     dict(mos_context_dropout=0.29, mixtape_context_dropout=0.1), 0.29),
    ("projection_wiring/transformer_lm_mixtape.pt",
     dict(mos_context_dropout=0.1, mixtape_context_dropout=0.29), 0.29),
    ("projection_wiring/lstm_lm_mos_sigsoftmax.pt",       # an argparse namespace
     dict(mos_context_dropout=0.29, mixtape_context_dropout=0.0), 0.29),
    ("projection_wiring/lstm_lm_mixtape.pt",
     dict(mos_context_dropout=0.29, mixtape_context_dropout=0.0), 0.0),
    ("projection_wiring/transformer_lm_control.pt",      # mixtape, K = 1
     dict(mos_context_dropout=0.0, mixtape_context_dropout=0.29), 0.29),
]


@pytest.mark.parametrize("fixture,former,dropout", FORMER_NAMES)
def test_saved_former_context_dropout_names_load_as_the_layer_read_them(fixture, former,
                                                                        dropout, tmp_path):
    """A checkpoint whose saved config holds the context dropout under the former names loads
    with the value its layer read then, and scores as before (dropout is off in eval)."""
    from helpers import FIXTURES, load_checkpoint, with_saved_flags

    source = FIXTURES / fixture
    path = with_saved_flags(source, tmp_path, output_context_dropout=None, **former)
    model, cfg = load_checkpoint(path, source.parent)
    layer = output_layer_of(model)
    assert layer.context_dropout == dropout
    expected = torch.load(source.parent / "expected_scores.pt")
    with torch.no_grad():
        scores = model(expected["tokens"])[0]
    torch.testing.assert_close(scores, expected[source.stem], rtol=1e-5, atol=1e-5)
    assert cfg.model.output_context_dropout == dropout   # what a later save records
    assert cfg.model.mos_context_dropout is cfg.model.mixtape_context_dropout is None


def test_former_names_reach_a_model_built_by_its_own_name(tmp_path):
    """A dataclass model's config (transformer_lm's) is merged into its dataclass on loading,
    where its model's name is the architecture: the former name is read there too, and a former
    name loaded by load_model_ensemble as by load_model_ensemble_and_task."""
    from fairseq import checkpoint_utils

    from helpers import with_saved_flags

    path = with_saved_flags(LEGACY / "mos.pt", tmp_path, mos_context_dropout=0.29,
                            mixtape_context_dropout=0.0, _name="transformer_lm_with_output_layer")
    models, _ = checkpoint_utils.load_model_ensemble([str(path)],
                                                     arg_overrides={"data": str(LEGACY)})
    assert output_layer_of(models[0]).context_dropout == 0.29
