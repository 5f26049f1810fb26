"""The output-width sweep (fairseq_mixtape_tools/experiments/sweep.py, launched by
examples/language_model/bottleneck_sweep.py): its run plan, its up-front errors, and every stage
end to end at toy size on real text."""

import json
import pathlib
import subprocess
import sys

import pytest

from fairseq_mixtape_tools.experiments import sweep
from refusals import refused

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples/language_model/bottleneck_sweep.py"


def names(runs):
    return [f"E{r.dim}/{r.layer}/{r.seed}" for r in runs]


def test_plan_extra_seeds_at_the_smallest_width_and_mos_last(tmp_path):
    args = sweep.parse_args(["--out", str(tmp_path), "--stages", "train", "--dims", "16,64",
                             "--layers", "softmax,mixtape,control,mixtape_papers,mixtape_linear,mos",
                             "--mos-dims", "64", "--papers-dims", "16", "--extra-seeds", "2"])
    planned = names(sweep.plan(args))
    assert planned == [
        "E16/softmax/1", "E16/mixtape/1", "E16/control/1", "E16/mixtape_papers/1",
        "E16/mixtape_linear/1",
        "E64/softmax/1", "E64/mixtape/1", "E64/control/1", "E64/mixtape_linear/1",
        "E16/softmax/2", "E16/mixtape/2", "E16/control/2", "E16/mixtape_linear/2",
        "E64/mos/1"]
    runs = sweep.plan(args)
    assert runs[0].dir == tmp_path / "runs" / "E16" / "softmax_seed1"
    args.linear_dims = [64]
    assert [name for name in names(sweep.plan(args)) if "linear" in name] == \
        ["E64/mixtape_linear/1"]


def test_the_plots_take_the_other_wirings_mixtures_from_reuse(tmp_path):
    """The dashed lines: each mixture of --reuse with a test perplexity, at every width of
    --dims (E = d included, where the wiring changes nothing), with the seeds that this sweep
    runs there; softmax and sigsoftmax (the same in both wirings), unfinished runs, other layers,
    other widths and other seeds are left out."""
    old = tmp_path / "sweep.json"
    old.write_text(json.dumps({
        "E16_mixtape_seed1": {"test_ppl": 230.0}, "E16_mixtape_seed2": {"test_ppl": 232.0},
        "E16_softmax_seed1": {"test_ppl": 225.0}, "E16_mos_seed1": {"valid_ppl_curve": [300.0]},
        "E32_control_seed1": {"test_ppl": 178.0}, "E128_mixtape_seed1": {"test_ppl": 117.0},
        "E16_mixtape_papers_seed1": {"test_ppl": 290.0}, "E64_mixtape_seed1": {"test_ppl": 137.0}}))
    args = sweep.parse_args(["--out", str(tmp_path), "--stages", "table", "--dims", "16,32,128",
                             "--layers", "softmax,mixtape,control,mos", "--reuse", str(old)])
    assert sweep.other_wiring(args) == {"mixtape": {16: [230.0, 232.0], 128: [117.0]},
                                        "control": {32: [178.0]}}
    args = sweep.parse_args(["--out", str(tmp_path), "--stages", "table", "--dims", "16,32,128",
                             "--layers", "mixtape,control", "--seeds", "2", "--extra-seeds", "",
                             "--reuse", str(old)])
    assert sweep.other_wiring(args) == {"mixtape": {16: [232.0]}}
    args.reuse = None
    assert sweep.other_wiring(args) == {}


@pytest.mark.parametrize("text,message", [
    ("{", "is not JSON (Expecting property name"),
    ("[1]", "holds a list; allowed: a sweep.json (an object of runs by name)"),
])
def test_reuse_that_is_not_a_sweep_json_refused(text, message, capsys, tmp_path):
    old = tmp_path / "sweep.json"
    old.write_text(text)
    assert f"--reuse: {old} {message}" in refused(
        sweep.parse_args, ["--out", str(tmp_path), "--stages", "table", "--reuse", str(old)],
        capsys)


@pytest.mark.parametrize("argv,message", [
    (["--layers", "softmax,mixture"], "--layers: got 'softmax,mixture' (unknown: 'mixture'); "
                                      "allowed: comma-separated output layers from softmax, "
                                      "mixtape, control"),
    (["--layers", "softmax,softmax"], "--layers: got 'softmax,softmax' (softmax more than once)"),
    (["--seeds", "1,1"], "--seeds: got '1,1'; allowed: comma-separated whole numbers >= 0, each "
                         "once"),
    (["--seeds", ""], "--seeds: got ''; allowed: comma-separated whole numbers >= 0"),
    (["--extra-seeds", "x"], "--extra-seeds: got 'x'; allowed: comma-separated whole numbers "
                             ">= 0, each once (e.g. 1,2), or '' for none"),
    (["--jobs", "0"], "--jobs: got 0; allowed: whole numbers >= 1"),
    (["--lr", "-1"], "--lr: got -1.0; allowed: a number > 0"),
    (["--dims", "16,0"], "--dims: got 0; allowed: whole numbers >= 1"),
    (["--linear-dims", "0"], "--linear-dims: got 0; allowed: whole numbers >= 1"),
    (["--dropout", "1.5"], "--dropout: got 1.5; allowed: a probability in [0, 1)"),
    (["--clip-norm", "-1"], "--clip-norm: got -1; allowed: a number >= 0 (0: no clipping)"),
    (["--stages", "train,plot"], "--stages: got 'plot'"),
])
def test_bad_options_refused_before_any_work(argv, message, capsys, tmp_path):
    assert message in refused(sweep.parse_args,
                              ["--out", str(tmp_path), "--stages", "train", *argv],  # last wins
                              capsys)


def test_corpus_without_a_split_refused(tmp_path, capsys):
    (tmp_path / "train.txt").write_text("a b\n")
    (tmp_path / "valid.txt").write_text("a b\n")
    assert "--data: no test file in" in refused(
        sweep.parse_args, ["--data", str(tmp_path), "--out", str(tmp_path / "out")], capsys)


@pytest.mark.slow
def test_sweep_smoke(shared_data, tmp_path, capsys):
    corpus = tmp_path / "corpus"  # a tiny corpus named X.txt (the script also reads ptb.X.txt)
    corpus.mkdir()
    for split in ("train", "valid", "test"):
        lines = (shared_data / "ptb" / f"ptb.{split}.txt").read_text().splitlines(True)
        (corpus / f"{split}.txt").write_text("".join(lines[:200]))
    argv = [sys.executable, str(SCRIPT), "--data", str(corpus), "--out", str(tmp_path / "out"),
            "--results-dir", str(tmp_path / "results"), "--dims", "8",
            "--layers", "softmax,mixtape", "--extra-seeds", "", "--max-epochs", "2",
            "--body-dim", "16", "--body-layers", "1", "--ffn-dim", "32",
            "--tokens-per-sample", "16", "--batch-size", "8", "--warmup-updates", "5",
            "--rank-contexts", "30", "--jobs", "2"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    runs = json.loads((tmp_path / "results/sweep.json").read_text())
    assert set(runs) == {"E8_softmax_seed1", "E8_mixtape_seed1"}
    for name, run in runs.items():
        dim = int(name[1:name.index("_")])
        assert len(run["valid_ppl_curve"]) == 2 and "last_epoch_gain_percent" in run
        assert run["test_ppl"] > 1 and run["valid_ppl"] > 1
        rank = run["rank"]
        assert rank["softmax_bound"] == dim + 1
        if "mixtape_" in name:  # K = 4 breaks the E + 1 cap; softmax does not
            assert rank["numerical_rank"] > dim + 1
        else:
            assert rank["numerical_rank"] <= dim + 1
        assert ("mixture_entropy" in run) == ("softmax" not in name)
    table = (tmp_path / "results/sweep.md").read_text()
    assert "| 8 | softmax | 1 |" in table and "| 8 | mixtape | 1 |" in table
    assert "nan" not in table
    for plot in ("sweep_ppl.png", "sweep_relative.png", "sweep_curves.png"):
        assert (tmp_path / "results" / plot).stat().st_size > 10_000
    # the reruns in this process: the script's own start is shown above
    capsys.readouterr()
    assert sweep.main([*argv[2:], "--stages", "train,eval,rank,table"]) == 0
    assert capsys.readouterr().out.count("done already") == 2 * 4

    # a fresh work tree: the run folders are gone, the results JSON is kept
    import shutil
    shutil.rmtree(tmp_path / "out" / "runs")
    assert sweep.main([*argv[2:], "--stages", "train,eval,rank,table", "--restore"]) == 0
    restored = capsys.readouterr().out
    assert restored.count("restored from") == 2
    steps = [line for line in restored.splitlines() if ": E = " in line]
    assert len(steps) == 2 and all(line.endswith("fairseq-train (2 epochs, "
                                                 f"{runs['E8_softmax_seed1']['updates']} "
                                                 "updates): done already") for line in steps)
    assert json.loads((tmp_path / "results/sweep.json").read_text()) == runs
