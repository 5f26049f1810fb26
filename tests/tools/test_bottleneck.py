"""The bottleneck diagnostic: ranks of matrices whose rank is known, and the command line on
trained checkpoints of all four families."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from fairseq_mixtape.compat import fairseq_checkpoint_classes

from fairseq_mixtape_tools.bottleneck import RankReport, effective_rank, main
from helpers import FAMILIES, fairseq_train, make_lm_data, make_mt_data
from refusals import refused, refused_command


def low_rank(rows, columns, rank, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, columns))


@pytest.mark.parametrize("rank", [1, 7, 60])
def test_exact_low_rank_matrix(rank):
    report = RankReport.of(low_rank(120, 300, rank))
    assert report.numerical_rank == rank
    assert all(r <= rank for r in report.effective_ranks.values())


def test_low_rank_plus_noise_is_numerically_full_but_effectively_low():
    signal = low_rank(100, 200, 5)
    noisy = signal + 1e-4 * np.random.default_rng(1).standard_normal(signal.shape)
    report = RankReport.of(noisy)
    assert report.numerical_rank == 100                  # the noise is far above rounding
    assert report.effective_ranks[1e-3] == 5             # ... but holds ~1e-9 of the energy
    assert RankReport.of(noisy, epsilons=[1e-12]).effective_ranks[1e-12] > 5


def test_effective_rank_by_hand():
    singular_values = np.array([3.0, 2.0, 1.0])         # energies 9, 13, 14 (of 14)
    assert effective_rank(singular_values, 0.1) == 2      # 13 >= 0.9 * 14
    assert effective_rank(singular_values, 1e-3) == 3
    assert effective_rank(singular_values, 0.5) == 1      # 9 >= 7
    with pytest.raises(ValueError, match="eps"):
        effective_rank(singular_values, 0.0)


@pytest.mark.parametrize("bias", [False, True])
def test_softmax_log_probs_reach_d_plus_1_and_a_mixture_more(bias):
    rng = np.random.default_rng(2)
    d, contexts, vocab = 8, 150, 90
    hidden = torch.from_numpy(rng.standard_normal((contexts, d)))
    weight = torch.from_numpy(rng.standard_normal((vocab, d)))
    offset = torch.from_numpy(rng.standard_normal(vocab)) if bias else 0.0
    softmax = torch.log_softmax(hidden @ weight.T + offset, dim=-1).numpy()
    assert RankReport.of(softmax).numerical_rank == d + 1 + bias
    other = torch.from_numpy(rng.standard_normal((contexts, d)))
    mixture = torch.logsumexp(torch.stack([  # two components, weights 1/2, in log space
        torch.log_softmax(hidden @ weight.T, -1), torch.log_softmax(other @ weight.T, -1)]),
        dim=0) - np.log(2)
    assert RankReport.of(mixture.numpy()).numerical_rank > 2 * (d + 1)


def test_float32_and_non_finite_matrices_are_refused():
    with pytest.raises(ValueError, match="float64"):
        RankReport.of(low_rank(10, 10, 2).astype(np.float32))
    matrix = low_rank(10, 10, 2)
    matrix[0, 0] = -np.inf
    with pytest.raises(ValueError, match="inf"):
        RankReport.of(matrix)


# A layer per family, so that the four families and the main layers are all exercised.
CHECKPOINT_LAYERS = {"transformer": "mixtape", "lstm": "mos", "transformer_lm": "softmax",
                     "lstm_lm": "sigsoftmax"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("bottleneck")
    data = {"translation": make_mt_data(root), "language_modeling": make_lm_data(root)}
    trained = {}
    for family, layer in CHECKPOINT_LAYERS.items():
        save_dir = root / family
        fairseq_train(data[FAMILIES[family][0]], family, layer, save_dir, 2)
        trained[family] = (save_dir / "checkpoint_last.pt", data[FAMILIES[family][0]])
    return trained


@pytest.mark.parametrize("family", list(CHECKPOINT_LAYERS))
@pytest.mark.slow
def test_command_line_on_a_checkpoint_of_every_family(family, checkpoints, tmp_path, capsys):
    checkpoint, data = checkpoints[family]
    plot, report_json = tmp_path / "spectrum.png", tmp_path / "ranks.json"
    [report] = main([str(checkpoint), "--data", str(data), "--subset", "valid",
                     "--contexts", "80", "--names", family, "--plot", str(plot),
                     "--json", str(report_json)])
    assert report.singular_values.dtype == np.float64
    assert report.max_row_error < 1e-12                  # rows are exact float64 log-probs
    with fairseq_checkpoint_classes():
        embedding = torch.load(checkpoint)["model"]["decoder.embed_tokens.weight"]
    assert report.shape == (80, len(embedding))
    bound = report.softmax_bound
    assert bound == 16 + 1                                # d = 16, no output bias
    if CHECKPOINT_LAYERS[family] == "softmax":
        assert report.numerical_rank <= bound
    else:  # mixtures, and sigsoftmax (log sigmoid is not linear in the hidden state)
        assert report.numerical_rank > bound
    assert plot.stat().st_size > 0
    assert json.loads(report_json.read_text())[0]["numerical_rank"] == report.numerical_rank
    assert f"{family}: 80 x" in capsys.readouterr().out


@pytest.mark.slow
def test_two_checkpoints_overlaid_in_one_plot(checkpoints, tmp_path):
    plot = tmp_path / "overlay.png"
    (lm, data), (other, _) = checkpoints["transformer_lm"], checkpoints["lstm_lm"]
    reports = main([str(lm), str(other), "--data", str(data), "--subset", "valid",
                    "--contexts", "50", "--plot", str(plot)])
    assert len(reports) == 2 and plot.stat().st_size > 0
    assert reports[0].numerical_rank <= reports[0].softmax_bound
    assert reports[1].numerical_rank > reports[1].softmax_bound  # sigsoftmax breaks it


def test_bad_arguments_name_the_flag(tmp_path, capsys):
    assert "--contexts: got 0" in refused(main, [str(tmp_path / "x.pt"), "--contexts", "0"],
                                          capsys)
    assert f"CHECKPOINT: got '{tmp_path / 'missing.pt'}', which does not exist" in refused(
        main, [str(tmp_path / "missing.pt")], capsys)


# User errors: one line on stderr naming the argument and the value, exit status 2, before any
# work, never a traceback. A checkpoint that needs no training: the language model of
# tests/fixtures/projection_wiring (trained on make_lm_data's corpus, whose folder is gone).
REPO = pathlib.Path(__file__).resolve().parents[2]
LM_CHECKPOINT = REPO / "tests" / "fixtures" / "projection_wiring" / "transformer_lm_control.pt"
LM_DICTIONARY = LM_CHECKPOINT.parent / "dict.txt"


def folder(root, name, files):
    """A data folder made by hand: ``files`` maps names to their text (empty .bin/.idx)."""
    path = root / name
    path.mkdir()
    for file, text in files.items():
        (path / file).write_text(text)
    return name


@pytest.fixture
def bad_inputs(tmp_path):
    """The bad checkpoints and data folders of the cases below, in tmp_path (the cwd)."""
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "random.pt")
    # a translation checkpoint as far as the checks read one: its task settings and a model
    torch.save({"model": {}, "args": None, "cfg": {"task": {
        "_name": "translation", "data": "gone", "source_lang": None, "target_lang": None}}},
        tmp_path / "translation.pt")
    lm_dictionary = LM_DICTIONARY.read_text()
    folder(tmp_path, "no-dict", {"test.bin": "", "test.idx": ""})
    folder(tmp_path, "mt-bin", {"dict.de.txt": "w1 1\n", "dict.en.txt": "w1 1\n",
                                "test.de-en.de.bin": "", "test.de-en.de.idx": "",
                                "test.de-en.en.bin": "", "test.de-en.en.idx": ""})
    folder(tmp_path, "valid-only", {"dict.txt": lm_dictionary, "valid.bin": "", "valid.idx": ""})
    folder(tmp_path, "lm-bin", {"dict.txt": lm_dictionary, "test.bin": "", "test.idx": ""})
    folder(tmp_path, "other-dict", {"dict.txt": "w1 5\nw2 3\n", "test.bin": "", "test.idx": ""})
    folder(tmp_path, "bad-dict", {"dict.txt": "w1\n", "test.bin": "", "test.idx": ""})
    (tmp_path / "a-file").write_text("")
    return tmp_path


LM = str(LM_CHECKPOINT)
BAD_INPUTS = {  # case: (argv, what the one line says)
    "missing checkpoint": (["missing.pt"], "CHECKPOINT: got 'missing.pt', which does not exist; "
                                           "allowed: a fairseq checkpoint file"),
    "checkpoint is a folder": (["no-dict"], "CHECKPOINT: got 'no-dict', a directory; allowed"),
    "text file": (["notes.txt"], "CHECKPOINT: got 'notes.txt', which torch.load cannot read ("),
    "torch file, not fairseq's": (["random.pt"], "CHECKPOINT: got 'random.pt', a torch file but "
                                                 "not a fairseq checkpoint"),
    "missing data folder": ([LM, "--data", "nowhere"],
                            f"--data (for {LM}, a language_modeling model): got 'nowhere', which "
                            "does not exist; allowed: a directory with dict.txt"),
    "data folder is a file": ([LM, "--data", "a-file"], f"--data (for {LM}, a language_modeling "
                                                        "model): got 'a-file', not a directory"),
    "no dict.txt": ([LM, "--data", "no-dict"], f"--data (for {LM}, a language_modeling model): "
                                               "got 'no-dict', which lacks dict.txt; allowed"),
    "translation data for a language model": (
        [LM, "--data", "mt-bin"], f"--data (for {LM}, a language_modeling model): got 'mt-bin', "
                                  "which lacks dict.txt"),
    "language model data for a translation model": (
        ["translation.pt", "--data", "lm-bin"], "--data (for translation.pt, a translation model): "
                                                "got 'lm-bin', which holds no SPLIT.SRC-TGT.LANG"),
    "translation data, no such split": (
        ["translation.pt", "--data", "mt-bin", "--subset", "valid"],
        "--subset: got 'valid', which 'mt-bin' lacks (no valid.de-en.de.bin, valid.de-en.de.idx, "
        "valid.de-en.en.bin, valid.de-en.en.idx); allowed: a split of that folder: test"),
    "no such split": ([LM, "--data", "valid-only"],
                      "--subset: got 'test', which 'valid-only' lacks (no test.bin, test.idx); "
                      "allowed: a split of that folder: valid"),
    "the checkpoint's own data folder is gone": (
        [LM], f"--data (not given: the data folder of {LM}, a language_modeling model): got "
              "'/tmp/"),
    "another dictionary": ([LM, "--data", "other-dict"],
                           f"--data (for {LM}, a language_modeling model): got 'other-dict', "
                           "whose dict.txt makes a dictionary of 6 entries, but the model's "
                           "decoder.embed_tokens.weight has 48; allowed: the data folder"),
    "a dictionary that is none": ([LM, "--data", "bad-dict"],
                                  f"--data (for {LM}, a language_modeling model): got 'bad-dict', "
                                  "whose dict.txt fairseq cannot read"),
    "labels": ([LM, "--data", "lm-bin", "--names", "a,b"], "--names: got 'a,b' (2 labels); "
                                                             "allowed: 1 comma-separated labels"),
    "json under a file": ([LM, "--data", "lm-bin", "--json", "a-file/ranks.json"],
                          "--json: got 'a-file/ranks.json', under a file"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_status_2(case, bad_inputs, monkeypatch, capsys):
    argv, expected = BAD_INPUTS[case]
    monkeypatch.chdir(bad_inputs)
    message = refused(main, argv, capsys)
    assert expected in message
    flag = expected.split(":")[0].split(" (")[0]  # CHECKPOINT, --data, --subset, ...
    assert message.startswith(flag), message


@pytest.mark.slow  # two subprocesses (fairseq's import: seconds)
def test_the_console_script_and_the_script_from_a_checkout_refuse_alike(bad_inputs):
    expected = ("CHECKPOINT: got 'random.pt', a torch file but not a fairseq checkpoint (no "
                "'model' with 'cfg' or 'args' in it); allowed: a fairseq checkpoint file (such as "
                "checkpoint_best.pt of fairseq-train)")
    console = pathlib.Path(sys.executable).parent / "fairseq-mixtape-bottleneck"
    assert refused_command([console, "random.pt"], bad_inputs) == (
        "fairseq-mixtape-bottleneck", expected)
    assert refused_command([sys.executable, REPO / "scripts" / "bottleneck.py", "random.pt"],
                           bad_inputs) == ("python scripts/bottleneck.py", expected)


def test_good_inputs_pass_the_checks(tmp_path, capsys):
    """The checks refuse nothing that works: the fixture's checkpoint on a corpus like the one
    it was trained on, its valid split."""
    data = make_lm_data(tmp_path)
    [report] = main([LM, "--data", str(data), "--subset", "valid", "--contexts", "20",
                     "--json", str(tmp_path / "new" / "ranks.json")])
    assert report.shape[0] == 20 and (tmp_path / "new" / "ranks.json").is_file()


@pytest.mark.slow
def test_console_script(checkpoints, tmp_path):
    """The installed fairseq-mixtape-bottleneck: exit status 0 and the report line."""
    checkpoint, data = checkpoints["transformer_lm"]
    script = pathlib.Path(sys.executable).parent / "fairseq-mixtape-bottleneck"
    done = subprocess.run([str(script), str(checkpoint), "--data", str(data), "--subset",
                           "valid", "--contexts", "20", "--names", "lm"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "lm: 20 x" in done.stdout and "numerical rank" in done.stdout
