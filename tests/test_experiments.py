"""The experiment scripts end to end on the real corpora, at smoke-test size (a few updates of
tiny models): every stage runs, the tables are written, a rerun skips finished steps, and the
measured ranks sit where they must (softmax at most d + 1, Mixtape above)."""

import json
import pathlib
import subprocess
import sys

import pytest

from fairseq_mixtape_tools.experiments import format_mean, mean_and_spread, parse_train_log, seeds_text

REPO = pathlib.Path(__file__).resolve().parents[1]
D = 16


def run_script(script, *argv):
    done = subprocess.run([sys.executable, str(REPO / script), *map(str, argv)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout


def check_ranks(runs: dict):
    for name, run in runs.items():
        rank = run["rank"]
        assert rank["softmax_bound"] == D + 1 and rank["max_row_error"] < 1e-12
        if name.startswith("softmax"):
            assert rank["numerical_rank"] <= D + 1
        else:
            assert rank["numerical_rank"] > D + 1


def test_ptb_experiment_smoke(shared_data, tmp_path):
    argv = ["examples/language_model/ptb_experiment.py", "--data", shared_data / "ptb",
            "--out", tmp_path / "ptb", "--results-dir", tmp_path / "results",
            "--layers", "softmax,mixtape", "--seeds", "1", "--dim", D, "--ffn-dim", 32,
            "--decoder-layers", 1, "--updates", 2, "--rank-contexts", 40]
    out = run_script(*argv)
    table = (tmp_path / "results/ptb.md").read_text()
    assert "| softmax |" in table and "| mixtape |" in table and "nan" not in table
    runs = json.loads((tmp_path / "results/ptb.json").read_text())
    assert set(runs) == {"softmax_seed1", "mixtape_seed1"}
    for run in runs.values():
        assert run["updates"] == 2 and run["test_ppl"] > 1 and run["valid_ppl"] > 1
    check_ranks(runs)
    assert "fairseq-train" in out
    rerun = run_script(*argv, "--stages", "train,eval,rank,table")
    assert rerun.count("done already") == 2 * 4  # train, valid, test, rank of both runs


def test_multi30k_experiment_smoke(shared_data, tmp_path):
    out = run_script(
        "examples/translation/multi30k_experiment.py", "--data", shared_data / "multi30k-en-de",
        "--out", tmp_path / "m30k", "--results-dir", tmp_path / "results",
        "--layers", "softmax,mixtape", "--seeds", "1", "--vocab-size", 500, "--dim", D,
        "--ffn-dim", 32, "--layers-per-stack", 1, "--updates", 2, "--beam", 1,
        "--rank-contexts", 40)
    runs = json.loads((tmp_path / "results/multi30k.json").read_text())
    assert set(runs) == {"softmax_seed1", "mixtape_seed1"}
    for name, run in runs.items():
        assert run["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
        assert 0 <= run["test_bleu"] < 100
        hypotheses = (tmp_path / "m30k/runs" / name / "test.hyp.de").read_text().splitlines()
        assert len(hypotheses) == 1000  # every test sentence, in order
    check_ranks(runs)
    assert "SacreBLEU nrefs:1" in (tmp_path / "results/multi30k.md").read_text()
    assert "fairseq-generate" in out


def test_train_log_parsing_and_summaries():
    log = """num. shared model params: 1,234 (num. trained: 1,234)
epoch 001 | loss 9.1 | ppl 550 | num_updates 300 | train_wall 40 | wall 50
epoch 002 | loss 8.1 | ppl 275 | num_updates 400 | train_wall 12 | wall 63
INFO | train | epoch 001 | loss 9.1 | num_updates 300 | train_wall 40 | wall 50
INFO | train | epoch 002 | loss 8.1 | num_updates 400 | train_wall 12 | wall 63
done training in 70.5 seconds"""
    parsed = parse_train_log(log)
    assert parsed["parameters"] == 1234 and parsed["updates"] == 400
    assert parsed["train_seconds"] == 52 and parsed["total_seconds"] == 70.5
    assert mean_and_spread([1.0, 3.0]) == (2.0, 1.0) and mean_and_spread([]) is None
    assert format_mean([1.0, 3.0]) == "2.00 ± 1.00" and format_mean([2.5]) == "2.50"
    assert format_mean([]) == "-"


def test_table_caption_names_mos_seeds_only_where_mos_ran():
    assert seeds_text([1, 2], [1], ["softmax", "mos"]) == "seeds 1, 2 (MoS: 1)"
    assert seeds_text([1, 2], [1], ["softmax", "mixtape"]) == "seeds 1, 2"
