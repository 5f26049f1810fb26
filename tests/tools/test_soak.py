"""scripts/soak.py (fairseq_mixtape_tools/soak.py) at toy size: it trains, evaluates every saved
checkpoint and passes; it fails on a log with a non-finite loss; and it refuses bad flags before
any work."""

import re

import pytest

from fairseq_mixtape_tools import soak
from helpers import make_lm_data
from refusals import refused


@pytest.fixture(scope="module")
def data_bin(tmp_path_factory):
    return make_lm_data(tmp_path_factory.mktemp("soak"), words=40, sentences=64)


@pytest.mark.slow
def test_soak_trains_and_checks_every_checkpoint(data_bin, tmp_path, capsys):
    """200 updates (it logs every 100), a checkpoint every 100, each evaluated; epochs of 3
    updates (16 blocks of 35 tokens, 6 a batch), so that none ends on a checkpoint's update."""
    code = soak.main(["--data-bin", str(data_bin), "--out", str(tmp_path), "--updates", "200",
                      "--save-every", "100", "--dim", "16", "--batch-size", "6", "--cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"ok   training losses: 2 logged, first [\d.]+, last [\d.]+", out), out
    assert "ok   updates: 200 of 200" in out
    assert "ok   checkpoints: 2 saved every 100 updates" in out
    assert re.search(r"ok   checkpoint_\d+_100\.pt: loads; valid ppl [\d.]+", out), out
    assert re.search(r"ok   checkpoint_\d+_200\.pt: loads; valid ppl [\d.]+", out), out
    assert "PASSED (fp32, 200 updates" in out


def test_check_only_fails_on_a_non_finite_loss(data_bin, tmp_path, capsys):
    (tmp_path / "train.log").write_text(
        "| INFO | train_inner | epoch 001:    100 / 4 loss=9.1, ppl=550, num_updates=100\n"
        "| INFO | train_inner | epoch 001:    200 / 4 loss=nan, ppl=nan, num_updates=200\n")
    code = soak.main(["--data-bin", str(data_bin), "--out", str(tmp_path), "--check-only",
                      "--updates", "200", "--save-every", "100"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL training losses: 2 logged, first 9.1, last nan" in out
    assert "FAIL checkpoints: 0 saved every 100 updates" in out  # none in OUT/checkpoints
    assert "FAILED: training losses, checkpoints" in out


@pytest.mark.parametrize("argv,message", [
    (["--updates", "10", "--save-every", "100"],
     "--updates: got 10; allowed: at least --save-every (100)"),
    (["--precision", "fp8"], "--precision: invalid choice: 'fp8'"),
])
def test_bad_flags_refused(data_bin, argv, message, capsys):
    assert message in refused(soak.parse_args, ["--data-bin", str(data_bin), *argv], capsys)


def test_data_without_a_dictionary_refused(tmp_path, capsys):
    assert f"--data-bin: {tmp_path} has no dict.txt" in refused(
        soak.parse_args, ["--data-bin", str(tmp_path)], capsys)
