import os
import pathlib

import pytest
import torch

import fairseq_mixtape  # noqa: F401  (registers everything, applies compat shims)

SHARED_DATA = pathlib.Path(os.environ.get(
    "MIXTAPE_SHARED_DATA", pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture
def shared_data():
    """../shared/data beside the checkout; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real corpora not found at {SHARED_DATA} (set MIXTAPE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)

