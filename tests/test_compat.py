"""The plugin makes fairseq checkpoints load under torch >= 2.6's weights_only=True through an
allowlist, without switching the protection off, and restores the NumPy aliases fairseq uses."""

import argparse
import os
import pickle

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf


class NotAllowlisted:
    def __init__(self):
        self.payload = "anything a pickle can run"


def test_protection_is_not_switched_off_globally():
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") in (None, "0", "")


def test_fairseq_checkpoint_objects_load_with_weights_only(tmp_path):
    checkpoint = {
        "args": argparse.Namespace(arch="transformer_mixtape", lr=[0.001], output_layer="mixtape"),
        "cfg": {"model": OmegaConf.create({"_name": "transformer_lm_mixtape", "dropout": 0.1}),
                "task": OmegaConf.create({"data": ["a", "b"]})},
        "model": {"decoder.output_projection.weight": torch.randn(3, 2)},
    }
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    loaded = torch.load(tmp_path / "checkpoint.pt")  # torch's default: weights_only=True
    assert loaded["args"].output_layer == "mixtape"
    assert loaded["cfg"]["model"].dropout == 0.1
    assert torch.equal(loaded["model"]["decoder.output_projection.weight"],
                       checkpoint["model"]["decoder.output_projection.weight"])


def test_unexpected_pickled_objects_are_still_refused(tmp_path):
    torch.save({"model": {}, "extra": NotAllowlisted()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        torch.load(tmp_path / "evil.pt")


def test_numpy_aliases_fairseq_uses():
    assert np.compat.long is int and np.int is int and np.float is float
    from fairseq.data import data_utils
    lengths = np.array([3, 5, 2, 7])
    batches = data_utils.batch_by_size(np.argsort(lengths), lambda i: lengths[i], max_tokens=10)
    assert sorted(int(i) for batch in batches for i in batch) == [0, 1, 2, 3]
