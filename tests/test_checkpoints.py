"""Checkpoints across versions: checkpoints saved before output layers stored what they derive
at build time (the context scale, Mixtape's gate slots) load with today's code and give the
scores they gave then; new checkpoints store those values."""

from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils

from fairseq_mixtape.models import output_layer_of

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"  # made by make.py there


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
