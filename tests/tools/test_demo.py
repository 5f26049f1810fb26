"""The demo (scripts/demo.py, fairseq_mixtape_tools/demo.py): its synthetic language, and a tiny run
through the real fairseq command-line tools."""

import math
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from fairseq_mixtape_tools import demo
from refusals import refused

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def language():
    return demo.MarkovLanguage.random(demo.LanguageSpec())


def test_transitions_are_distributions(language):
    assert np.allclose(language.transitions.sum(axis=1), 1.0)
    assert (language.transitions > 0).all()          # the floor keeps every log-prob finite


def test_language_is_high_rank_beyond_the_demo_softmax(language):
    """A softmax over the demo's d-dimensional state reaches rank d + 1 at most; the true
    log-probability matrix must need far more, or the demo would show nothing."""
    log_probs = language.log_prob_matrix()
    softmax_rank = demo.ModelSpec().output_dim + 1
    assert np.isfinite(log_probs).all()
    assert demo.numerical_rank(log_probs) == language.num_states
    assert demo.centred_effective_rank(log_probs, eps=1e-3) > 4 * softmax_rank


def test_rank_measures_on_known_matrices():
    rng = np.random.default_rng(0)
    low_rank = rng.normal(size=(50, 3)) @ rng.normal(size=(3, 40))
    assert demo.numerical_rank(low_rank) == 3
    assert demo.centred_effective_rank(low_rank + 7.0) <= 3      # row shifts are free


def test_samples_follow_the_chain(language):
    """Sentences end at </s>; their loss under the true model is the chain's entropy rate."""
    rng = np.random.default_rng(0)
    sentences = language.sample_sentences(60_000, rng)
    tokens = sum(len(s) + 1 for s in sentences)
    assert 40_000 < tokens < 80_000
    assert all(0 not in s for s in sentences)
    P = language.transitions
    stationary = np.linalg.matrix_power(P, 100)[0]
    entropy_rate = -(stationary[:, None] * P * np.log(P)).sum()
    assert language.cross_entropy(sentences) == pytest.approx(entropy_rate, rel=0.02)


def test_write_corpus(tmp_path):
    language = demo.MarkovLanguage.random(demo.LanguageSpec(vocab_size=20, successors=3))
    true_perplexity = demo.write_corpus(language, tmp_path, dict(train=500, test=200), seed=0)
    assert 1.0 < true_perplexity < 21.0
    words = set((tmp_path / "train.txt").read_text().split())
    assert words <= set(language.words[1:])


def refusal(capsys, argv):
    """The message of parse_args' one-line refusal of ``argv``."""
    return refused(demo.parse_args, argv, capsys)


@pytest.mark.parametrize("argv,expected", [
    (["--layers", "softmax,nope"], "--layers: got 'softmax,nope' (unknown: 'nope'); allowed: "
                                   "comma-separated output layers from softmax, mos, mixtape"),
    (["--layers", ","], "--layers: got ','; allowed"),
    (["--layers", "mos,mos"], "--layers: got 'mos,mos' (mos more than once)"),
    (["--components", "3", "--layers", "mixtape"],
     "--components: got 3, which mixtape (in --layers) refuses: --output-components (K): got 3; "
     "allowed: a power of two >= 1"),
    (["--components", "3"], "which mixtape (in --layers) refuses"),   # the default layers
    (["--components", "0", "--layers", "mos"], "--components: got 0; allowed: a whole number >= 1"),
    (["--updates", "0"], "--updates: got 0; allowed: a number > 0"),
    (["--batch-size", "-4"], "--batch-size: got -4; allowed: a number > 0"),
    (["--lr", "0"], "--lr: got 0.0; allowed: a number > 0"),
    (["--output-dim", "0"], "--output-dim: got 0"),
    (["--mixtape-gate-dim", "0"], "--mixtape-gate-dim: got 0"),
    (["--vocab-size", "0"], "--vocab-size: got 0"),
    (["--test-tokens", "0"], "--test-tokens: got 0"),
    (["--seed", "-1"], "--seed: got -1; allowed: a whole number >= 0"),
    (["--successors", "20", "--vocab-size", "10"], "--successors: got 20; allowed: 1 to "
                                                   "--vocab-size (10)"),
    (["--mixtape-frequent-tokens", "2.5"], "--mixtape-frequent-tokens: got 2.5; allowed"),
    (["--mixtape-frequent-tokens", "200", "--vocab-size", "100"],
     "--mixtape-frequent-tokens: got 200; allowed: at most 102"),
    (["--data", "/nonexistent"], "--data: got '/nonexistent', which does not exist; allowed: a "
                                 "directory with train.txt, valid.txt, test.txt or dict.txt, "
                                 "train.bin, train.idx, test.bin, test.idx"),
])
def test_bad_options_are_refused_before_any_work(capsys, argv, expected):
    assert expected in refusal(capsys, argv)


def test_incomplete_data_dir_is_refused(tmp_path, capsys):
    (tmp_path / "train.txt").write_text("w1 w2\n")
    (tmp_path / "valid.txt").write_text("w1\n")
    assert (f"--data: got '{tmp_path}', which lacks test.txt; allowed: a directory with "
            "train.txt, valid.txt, test.txt or dict.txt") in refusal(capsys,
                                                                     ["--data", str(tmp_path)])
    (tmp_path / "dict.txt").write_text("w1 5\n")
    for name in ("train.bin", "train.idx", "test.bin"):
        (tmp_path / name).write_bytes(b"")
    assert "which lacks test.idx;" in refusal(capsys, ["--data", str(tmp_path)])
    assert "--data: got" in refusal(capsys, ["--data", str(tmp_path / "train.txt")])
    assert "not a directory" in refusal(capsys, ["--work-dir", str(tmp_path / "train.txt")])


@pytest.mark.slow
def test_script_refuses_at_once(tmp_path):
    """scripts/demo.py with a bad option: one usage error, no traceback, nothing written."""
    done = subprocess.run([sys.executable, str(REPO / "scripts/demo.py"), "--components", "3",
                           "--layers", "mixtape", "--work-dir", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith("python scripts/demo.py: error: --components")
    assert not (tmp_path / "w").exists()


def test_components_go_to_the_mixtures_only():
    assert demo.output_layer_arguments("softmax", 8, None, None) == ["--output-layer", "softmax"]
    assert demo.output_layer_arguments("mixtape", 8, None, None) == [
        "--output-layer", "mixtape", "--output-components", 8]
    assert demo.components_of("sigsoftmax", 8) == 1 and demo.components_of("mos", 8) == 8
    assert demo.components_of("mos", None) == 15


@pytest.mark.slow
def test_tiny_end_to_end(tmp_path, capsys):
    """Data, fairseq-preprocess, fairseq-train and fairseq-eval-lm for two layers, tiny."""
    results = demo.main([
        "--work-dir", str(tmp_path), "--layers", "softmax,mixtape", "--updates", "4",
        "--vocab-size", "12", "--successors", "3", "--train-tokens", "3000",
        "--test-tokens", "600", "--hidden-size", "8", "--output-dim", "4", "--batch-size", "4"])
    printed = capsys.readouterr().out
    assert [r.layer for r in results] == ["softmax", "mixtape"]
    assert all(math.isfinite(r.perplexity) and r.perplexity > 1 for r in results)
    assert all(r.updates == 4 and r.parameters > 0 for r in results)
    assert "| output layer | K | test ppl |" in printed
    for layer in ("softmax", "mixtape", "true model"):
        assert re.search(rf"^\| {layer}\b.*\| \d+\.\d\d \|", printed, re.MULTILINE), layer
    assert "update     4/4" in printed                  # progress from fairseq-train's log


@pytest.mark.slow
def test_user_data_raw_text_is_preprocessed(tmp_path):
    language = demo.MarkovLanguage.random(demo.LanguageSpec(vocab_size=10, successors=3))
    demo.write_corpus(language, tmp_path / "mine", dict(train=300, valid=100, test=100), seed=0)
    args = demo.parse_args(["--data", str(tmp_path / "mine"), "--work-dir", str(tmp_path / "w")])
    bin_dir, true_perplexity = demo.prepare_data(args)
    assert demo.is_binarized(bin_dir) and (bin_dir / "test.bin").is_file()
    assert true_perplexity is None                         # unknown for the user's language
    words = {line.split()[0] for line in open(bin_dir / "dict.txt")}
    assert set(language.words[1:]) <= words                 # (plus fairseq's madeupword padding)
    assert demo.dictionary_size(bin_dir) == 4 + len(words)


def test_user_data_binarized_is_used_as_is(tmp_path):
    (tmp_path / "dict.txt").write_text("w1 5\n")
    for name in ("train.bin", "train.idx", "test.bin", "test.idx"):
        (tmp_path / name).write_bytes(b"")
    args = demo.parse_args(["--data", str(tmp_path)])
    assert demo.prepare_data(args) == (tmp_path, None)
