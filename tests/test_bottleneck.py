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


def test_bad_arguments_name_the_flag(tmp_path):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x.pt"), "--contexts", "0"])
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        main([str(tmp_path / "missing.pt")])


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
