"""The plugin makes fairseq checkpoints load under torch >= 2.6's weights_only=True through an
allowlist, without switching the protection off, and restores the NumPy aliases fairseq uses."""

import argparse
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils
from omegaconf import OmegaConf

from fairseq_mixtape import compat

REPO = pathlib.Path(__file__).resolve().parents[2]


class NotAllowlisted:
    def __init__(self):
        self.payload = "anything a pickle can run"


def test_protection_is_not_switched_off_globally():
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") in (None, "0", "")


def test_fairseq_checkpoint_objects_load_with_weights_only_while_fairseq_loads(tmp_path):
    """Inside fairseq's checkpoint loading the allowlist holds fairseq's classes; a user's own
    torch.load elsewhere sees torch's list, and the entries the user added stay."""
    checkpoint = {
        "args": argparse.Namespace(arch="transformer_mixtape", lr=[0.001], output_layer="mixtape"),
        "cfg": {"model": OmegaConf.create({"_name": "transformer_lm_mixtape", "dropout": 0.1}),
                "task": OmegaConf.create({"data": ["a", "b"]})},
        "model": {"decoder.output_projection.weight": torch.randn(3, 2)},
    }
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    with pytest.raises(pickle.UnpicklingError, match="argparse.Namespace"):
        torch.load(tmp_path / "checkpoint.pt")  # torch's default: weights_only=True
    torch.serialization.add_safe_globals([NotAllowlisted])  # the user's own entry
    try:
        with compat.fairseq_checkpoint_classes():
            loaded = torch.load(tmp_path / "checkpoint.pt")
        assert argparse.Namespace not in torch.serialization.get_safe_globals()
        assert NotAllowlisted in torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()
    assert loaded["args"].output_layer == "mixtape"
    assert loaded["cfg"]["model"].dropout == 0.1
    assert torch.equal(loaded["model"]["decoder.output_projection.weight"],
                       checkpoint["model"]["decoder.output_projection.weight"])
    assert getattr(checkpoint_utils.load_checkpoint_to_cpu, "__wrapped__", None) is not None


def test_unexpected_pickled_objects_are_still_refused(tmp_path):
    torch.save({"model": {}, "extra": NotAllowlisted()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        with compat.fairseq_checkpoint_classes():
            torch.load(tmp_path / "evil.pt")


def test_fairseq_loading_refused_names_the_fix(tmp_path):
    """With the plugin loaded, a checkpoint fairseq cannot load safely fails with what to do,
    torch's own error chained."""
    torch.save({"model": {}, "extra": NotAllowlisted()}, tmp_path / "odd.pt")
    with pytest.raises(pickle.UnpicklingError) as refused:
        checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "odd.pt"))
    message = str(refused.value)
    assert str(tmp_path / "odd.pt") in message
    assert "test_compat.NotAllowlisted" in message                    # what was refused
    assert '--user-dir "$(python -m fairseq_mixtape)"' in message       # the fix
    assert "import fairseq_mixtape" in message
    assert "add_safe_globals([test_compat.NotAllowlisted])" in message
    assert isinstance(refused.value.__cause__, pickle.UnpicklingError)
    assert "Weights only load failed" in str(refused.value.__cause__)


def test_other_loading_errors_pass_unchanged(tmp_path):
    (tmp_path / "truncated.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(pickle.UnpicklingError) as failed:
        checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "truncated.pt"))
    assert "fairseq_mixtape" not in str(failed.value) and failed.value.__cause__ is None


@pytest.mark.slow
def test_without_the_plugin_torch_refuses_an_lstm_checkpoint(tmp_path):
    """What a user sees loading a legacy-model (LSTM) checkpoint without the plugin: torch's
    refusal of argparse.Namespace, as docs/troubleshooting.md quotes it; with it, it loads."""
    from helpers import fairseq_train, make_lm_data

    fairseq_train(make_lm_data(tmp_path), "lstm_lm", "mixtape", tmp_path / "ckpt", 1)
    checkpoint = tmp_path / "ckpt" / "checkpoint_last.pt"
    load = ("from fairseq import checkpoint_utils; "
            f"checkpoint_utils.load_checkpoint_to_cpu({str(checkpoint)!r})")
    without = subprocess.run([sys.executable, "-c", load], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    assert without.returncode == 1
    refusal = ("WeightsUnpickler error: Unsupported global: GLOBAL argparse.Namespace was not an "
               "allowed global by default.")
    assert refusal in without.stderr
    assert refusal in (REPO / "docs" / "troubleshooting.md").read_text()
    model_cfg = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))["cfg"]["model"]
    assert isinstance(model_cfg, argparse.Namespace) and model_cfg.arch == "lstm_lm_mixtape"


def test_numpy_aliases_fairseq_uses():
    assert np.compat.long is int and np.int is int and np.float is float
    from fairseq.data import data_utils
    lengths = np.array([3, 5, 2, 7])
    batches = data_utils.batch_by_size(np.argsort(lengths), lambda i: lengths[i], max_tokens=10)
    assert sorted(int(i) for batch in batches for i in batch) == [0, 1, 2, 3]
