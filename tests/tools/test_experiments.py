"""The experiment scripts end to end on the real corpora, at smoke-test size (a few updates of
tiny models): every stage runs, the tables are written, a rerun skips finished steps, and the
measured ranks sit where they must (softmax at most d + 1, Mixtape above)."""

import json
import pathlib
import subprocess
import sys

import pytest

from fairseq_mixtape_tools.experiments import multi30k as m30k
from fairseq_mixtape_tools.experiments import ptb as ptb_experiment
from fairseq_mixtape_tools.experiments import sweep
from fairseq_mixtape_tools.experiments.common import (
    OUTPUT_VARIANTS, Run, format_mean, is_mos, mean_and_spread, parse_train_log, restore_finished,
    seeds_text, variant_arguments)
from refusals import refused

REPO = pathlib.Path(__file__).resolve().parents[2]
D = 16


def run_script(script, *argv):
    done = subprocess.run([sys.executable, str(REPO / script), *map(str, argv)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout


def truncated(corpus: pathlib.Path, to: pathlib.Path, lines: int, train_lines: int = 0):
    """A copy of a corpus folder with the first ``lines`` lines of each file (``train_lines``
    of the training files where given): the scripts' every stage at a fraction of the time."""
    to.mkdir()
    for path in corpus.iterdir():
        keep = train_lines if train_lines and "train" in path.name else lines
        (to / path.name).write_text("".join(path.read_text().splitlines(True)[:keep]))
    return to


def check_ranks(runs: dict):
    for name, run in runs.items():
        rank = run["rank"]
        assert rank["softmax_bound"] == D + 1 and rank["max_row_error"] < 1e-12
        if name.startswith("softmax"):
            assert rank["numerical_rank"] <= D + 1
        else:
            assert rank["numerical_rank"] > D + 1


@pytest.mark.slow
def test_ptb_experiment_smoke(shared_data, tmp_path, capsys):
    corpus = truncated(shared_data / "ptb", tmp_path / "ptb_data", 300)
    argv = ["examples/language_model/ptb_experiment.py", "--data", corpus,
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
    capsys.readouterr()  # the rerun in this process: the script's own start is shown above
    assert ptb_experiment.main([*map(str, argv[1:]), "--stages", "train,eval,rank,table"]) == 0
    assert capsys.readouterr().out.count("done already") == 2 * 4  # train, valid, test, rank


@pytest.mark.slow
def test_multi30k_experiment_smoke(shared_data, tmp_path):
    """Every stage at toy size, with a further test set: a BLEU line per test set and run, the
    length penalty tuned on the validation set once, and a table with a column per test set."""
    data = truncated(shared_data / "multi30k-en-de", tmp_path / "data", 100, train_lines=2000)
    for lang in ("en", "de"):  # a further test set, as users pass test_2017_flickr
        lines = (shared_data / "multi30k-en-de" / f"test_2016_flickr.{lang}").read_text()
        (data / f"extra_set.{lang}").write_text("".join(lines.splitlines(True)[:30]))
    out = run_script(
        "examples/translation/multi30k_experiment.py", "--data", data,
        "--out", tmp_path / "m30k", "--results-dir", tmp_path / "results",
        "--layers", "softmax,mixtape", "--seeds", "1", "--vocab-size", 500, "--dim", D,
        "--ffn-dim", 32, "--layers-per-stack", 1, "--max-epochs", 1, "--max-update", 2,
        "--beam", 1, "--lenpens", "0.6,1.0", "--rank-contexts", 40, "--test-sets", "extra_set")
    runs = json.loads((tmp_path / "results/multi30k.json").read_text())
    assert set(runs) == {"softmax_seed1", "mixtape_seed1"}
    lenpen = json.loads((tmp_path / "m30k/lenpen.json").read_text())
    assert set(lenpen["valid_bleu"]) == {"0.6", "1.0"} and lenpen["run"] == "softmax_seed1"
    for name, run in runs.items():
        assert run["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
        assert run["lenpen"] == lenpen["lenpen"]
        for test_set, sentences in (("test_2016_flickr", 100), ("extra_set", 30)):
            assert 0 <= run[f"bleu_{test_set}"] < 100
            hypotheses = (tmp_path / "m30k/runs" / name / f"{test_set}.hyp.de").read_text()
            assert len(hypotheses.splitlines()) == sentences  # every sentence, in order
            layer = name.split("_seed")[0]
            assert f"{layer} seed 1: {test_set}: BLEU = " in out
    check_ranks(runs)
    table = (tmp_path / "results/multi30k.md").read_text()
    assert "SacreBLEU nrefs:1" in table and "| BLEU test_2016_flickr | BLEU extra_set |" in table
    assert "| softmax | 1 |" in table and "| mixtape | 1 |" in table
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


def test_restore_finished_takes_only_finished_runs_whose_folder_is_gone(tmp_path, capsys):
    """A run finished up to its last step and missing from the work tree is written back from
    the results JSON; a run held only in part, and a run whose folder exists, are left alone."""
    results = tmp_path / "results.json"
    finished = {"train_seconds": 10, "test_ppl": 120.0, "rank": {"numerical_rank": 17}}
    results.write_text(json.dumps({"softmax_seed1": finished, "mixtape_seed1": {},
                                   "control_seed1": {"train_seconds": 5},
                                   "mos_seed1": finished}))
    root = tmp_path / "runs"
    runs = [Run(root, layer, 1) for layer in ("softmax", "mixtape", "control", "mos")]
    runs[3].dir.mkdir(parents=True)  # a run in progress: its checkpoints are what count
    restore_finished(runs, results)
    assert runs[0].result == finished
    assert json.loads((root / "softmax_seed1" / "result.json").read_text()) == finished
    assert [r.result for r in runs[1:]] == [{}, {}, {}]
    assert not (root / "control_seed1").exists()
    assert capsys.readouterr().out.count("restored from") == 1
    computed = []
    runs[0].step("train_seconds", lambda: computed.append(1) or {}, "fairseq-train")
    assert computed == []  # a restored run is not trained again
    restore_finished(runs, tmp_path / "missing.json")  # no results yet: nothing to restore


def test_multi30k_restore_takes_the_published_length_penalty(tmp_path):
    args = type("Args", (), {"out": tmp_path / "out", "results_dir": tmp_path / "results"})()
    args.results_dir.mkdir()
    tuning = {"lenpen": 2.2, "valid_bleu": {"1.0": 37.0, "2.2": 38.0}, "run": "softmax_seed1"}
    m30k.published_tuning_path(args).write_text(json.dumps(tuning))
    m30k.restore(args, [])
    assert m30k.recorded_lenpen(args) == 2.2 and m30k.read_tuning(args) == tuning
    m30k.published_tuning_path(args).write_text(json.dumps({**tuning, "lenpen": 1.0}))
    m30k.restore(args, [])
    assert m30k.recorded_lenpen(args) == 2.2  # the work folder's own tuning is kept


def test_table_caption_names_mos_seeds_only_where_mos_ran():
    assert seeds_text([1, 2], [1], ["softmax", "mos"]) == "seeds 1, 2 (MoS: 1)"
    assert seeds_text([1, 2], [1], ["softmax", "mixtape"]) == "seeds 1, 2"


@pytest.fixture(scope="module")
def ptb():
    return ptb_experiment


def ptb_refusal(ptb, capsys, argv):
    return refused(ptb.parse_args, argv, capsys)


@pytest.mark.parametrize("argv,expected", [
    (["--layers", "softmax,mixtap"], "--layers: got 'softmax,mixtap' (unknown: 'mixtap'); "
                                     "allowed: comma-separated output layers from softmax, "
                                     "mixtape, control, sigsoftmax, mos, mixtape_papers, "
                                     "mixtape_linear, mos_sigsoftmax"),
    (["--layers", "mos,mixtape,mos"], "--layers: got 'mos,mixtape,mos' (mos more than once)"),
    (["--seeds", "1,x"], "--seeds: got '1,x'; allowed: comma-separated whole numbers >= 0"),
    (["--seeds", "1,1"], "--seeds: got '1,1'"),
    (["--mos-seeds", "-1"], "--mos-seeds: got '-1'"),
    (["--components", "3"], "--components: got 3, which mixtape (in --layers) refuses"),
    (["--components", "3", "--layers", "softmax,mos"], None),          # MoS takes any K
    (["--dim", "0"], "--dim: got 0; allowed: whole numbers >= 1"),
    (["--dim", "30"], "--dim: got 30; allowed: a multiple of 4"),
    (["--updates", "-5"], "--updates: got -5; allowed: whole numbers >= 1"),
    (["--tokens-per-sample", "0"], "--tokens-per-sample: got 0"),
    (["--rank-contexts", "0"], "--rank-contexts: got 0"),
    (["--context-scale", "0"], "--context-scale: got 0.0"),
    (["--dropout", "1"], "--dropout: got 1.0; allowed: a probability in [0, 1)"),
    (["--stages", "train,bogus"], "--stages: got 'bogus'; allowed: prepare, train, eval, rank, "
                                  "table"),
])
def test_ptb_experiment_refuses_bad_options(ptb, capsys, tmp_path, argv, expected):
    data = tmp_path / "ptb"
    data.mkdir()
    for name in ptb.PTB_FILES:
        (data / name).write_text("a b\n")
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), *argv]
    if expected is None:
        assert ptb.parse_args(argv).components == 3
    else:
        assert expected in ptb_refusal(ptb, capsys, argv)


def test_ptb_experiment_refuses_missing_data(ptb, capsys, tmp_path):
    assert (f"--data: got '{tmp_path / 'none'}', which does not exist; allowed: a directory with "
            "ptb.train.txt, ptb.valid.txt, ptb.test.txt") in ptb_refusal(
                ptb, capsys, ["--data", str(tmp_path / "none")])
    (tmp_path / "ptb.train.txt").write_text("a b\n")
    assert "which lacks ptb.valid.txt, ptb.test.txt;" in ptb_refusal(
        ptb, capsys, ["--data", str(tmp_path)])
    # without the prepare stage the data is not read, but its output must be there
    assert "data-bin (made by the prepare stage) is missing" in ptb_refusal(
        ptb, capsys, ["--data", str(tmp_path / "none"), "--out", str(tmp_path / "out"),
                      "--stages", "train,eval"])
    (tmp_path / "out" / "data-bin").mkdir(parents=True)
    (tmp_path / "out" / "data-bin" / "dict.txt").write_text("a 1\n")
    args = ptb.parse_args(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "out"),
                           "--stages", "train,eval"])
    assert args.layers == list(ptb.LAYERS) and args.seeds == [1, 2] and args.mos_seeds == [1]


def test_multi30k_lenpen_tuning_widens_and_rescores(tmp_path, monkeypatch, capsys):
    """A wider --lenpens scores only the new penalties on the validation set; a run scored with
    a penalty that is no longer the best is generated again, one that still is is kept."""
    runs = [Run(tmp_path / "runs", "softmax", 1), Run(tmp_path / "runs", "mixtape", 1)]
    runs[0].dir.mkdir(parents=True)
    m30k.averaged(runs[0]).write_text("")
    valid_bleu = {0.6: 30.0, 1.0: 31.0, 1.4: 32.0, 1.8: 32.5, 2.2: 31.5}
    scored = []

    def translate(args, run, data_dir, subset, references_path, lenpen, log_name):
        scored.append(lenpen)
        return [], type("Bleu", (), {"score": valid_bleu[lenpen]})(), ""
    monkeypatch.setattr(m30k, "translate", translate)
    args = type("Args", (), {"out": tmp_path, "data": tmp_path, "seeds": [1],
                             "lenpens": [0.6, 1.0, 1.4]})()
    assert m30k.tuned_lenpen(args, runs) == 1.4 and scored == [0.6, 1.0, 1.4]
    assert m30k.tuned_lenpen(args, runs) == 1.4 and scored == [0.6, 1.0, 1.4]  # recorded
    args.lenpens = [0.6, 1.0, 1.4, 1.8, 2.2]
    assert m30k.tuned_lenpen(args, runs) == 1.8 and scored[3:] == [1.8, 2.2]
    tuning = json.loads((tmp_path / "lenpen.json").read_text())
    assert tuning["lenpen"] == 1.8 and len(tuning["valid_bleu"]) == 5
    assert tuning["run"] == "softmax_seed1"

    runs[0].record(lenpen=1.4, bleu_test_2016_flickr=37.0, bleu_line_test_2016_flickr="BLEU",
                   bleu_signature="nrefs:1", rank={"numerical_rank": 129})
    runs[1].record(lenpen=1.8, bleu_test_2016_flickr=38.0)
    for run in runs:
        m30k.forget_other_lenpen(run, 1.8)
    assert runs[0].result == {"rank": {"numerical_rank": 129}}  # scored again on the next step
    assert json.loads(runs[0].result_path.read_text()) == runs[0].result
    assert runs[1].result == {"lenpen": 1.8, "bleu_test_2016_flickr": 38.0}
    assert "softmax seed 1: scored with lenpen 1.4, now 1.8: generating again" in (
        capsys.readouterr().out)


# Flags of their own that let each experiment parse without data: no stage that reads a corpus.
NO_DATA = {ptb_experiment: ["--stages", "table"], m30k: ["--stages", "train"],
           sweep: ["--stages", "train"]}


@pytest.mark.parametrize("driver", NO_DATA, ids=lambda driver: driver.__name__.split(".")[-1])
@pytest.mark.parametrize("argv,expected", [
    (["--layers", "softmax,bogus"], "--layers: got 'softmax,bogus' (unknown: 'bogus'); allowed: "
                                    "comma-separated output layers from softmax, mixtape, "
                                    "control, sigsoftmax, mos, mixtape_papers, mixtape_linear, "
                                    "mos_sigsoftmax"),
    (["--layers", "mixtape,mixtape"], "--layers: got 'mixtape,mixtape' (mixtape more than once)"),
    (["--seeds", "1,1"], "--seeds: got '1,1'; allowed: comma-separated whole numbers >= 0, each "
                         "once (e.g. 1,2)"),
    (["--seeds", "-1"], "--seeds: got '-1'"),
    (["--stages", "bogus"], "--stages: got 'bogus'; allowed: prepare, train"),
    (["--threads", "0"], "--threads: got 0; allowed: whole numbers >= 1"),
    (["--rank-contexts", "0"], "--rank-contexts: got 0; allowed: whole numbers >= 1"),
    (["--lr", "0"], "--lr: got 0.0; allowed: a number > 0"),
    (["--dropout", "-0.1"], "--dropout: got -0.1; allowed: a probability in [0, 1)"),
])
def test_shared_flags_are_checked_alike(driver, argv, expected, capsys):
    """The flags the experiments share are checked by one function: the same refusal, word for
    word, from each."""
    assert expected in refused(driver.parse_args, [*NO_DATA[driver], *argv], capsys)


def test_seed_lists_other_than_seeds_may_be_empty():
    assert sweep.parse_args([*NO_DATA[sweep], "--extra-seeds", ""]).extra_seeds == []
    args = m30k.parse_args([*NO_DATA[m30k], "--control-seeds", "", "--mos-seeds", "0,2"])
    assert args.control_seeds == [] and args.mos_seeds == [0, 2]
    assert ptb_experiment.parse_args([*NO_DATA[ptb_experiment], "--mos-seeds", ""]).mos_seeds == []


def test_output_variants_take_the_experiments_k_and_context_scale():
    """--components sets K of the K = 4 mixtures, not the control's K = 1; --context-scale is
    added to MoS and Mixtape (overriding mixtape_papers' 1), not to the control nor to Mixtape
    with linear contexts; without them the variant's own flags."""
    assert variant_arguments("mixtape") == OUTPUT_VARIANTS["mixtape"]
    assert variant_arguments("mos_sigsoftmax", 8, 2.0) == [
        "--output-layer", "mos_sigsoftmax", "--output-components", 8,
        "--output-context-scale", 2.0]
    assert variant_arguments("control", 8, 2.0) == OUTPUT_VARIANTS["control"]
    assert variant_arguments("mixtape_linear", 8, 2.0) == [
        "--output-layer", "mixtape", "--output-components", 8,
        "--output-context-activation", "linear"]
    assert variant_arguments("mixtape_papers", None, 2.0)[-4:] == [
        "--output-context-scale", 1, "--output-context-scale", 2.0]
    assert variant_arguments("softmax", 8, 2.0) == ["--output-layer", "softmax"]
    assert [is_mos(v) for v in OUTPUT_VARIANTS] == [v in ("mos", "mos_sigsoftmax")
                                                    for v in OUTPUT_VARIANTS]


def test_ptb_takes_every_output_variant(tmp_path):
    args = ptb_experiment.parse_args([*NO_DATA[ptb_experiment], "--out", str(tmp_path),
                                      "--layers", ",".join(OUTPUT_VARIANTS), "--components", "2",
                                      "--seeds", "1", "--mos-seeds", "2"])
    runs = ptb_experiment.plan(args)
    assert [run.name for run in runs][-2:] == ["mos_seed2", "mos_sigsoftmax_seed2"]
    control = next(run for run in runs if run.layer == "control")
    flags = ptb_experiment.train_arguments(args, control)
    assert flags[flags.index("--output-components") + 1] == 1
