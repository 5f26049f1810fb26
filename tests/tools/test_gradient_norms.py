"""scripts/gradient_norms.py (fairseq_mixtape_tools/gradient_norms.py): the parameter groups
cover every parameter once (their squared norms add up to the norm fairseq clips), the output
layer's own parameters are named, the clip norm is the experiment's own, the table comes back
from a saved --json, and an unprepared experiment or a bad flag is refused before any training."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

from fairseq_mixtape_tools import gradient_norms
from helpers import random_corpus
from refusals import refused

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts/gradient_norms.py"
SWEEP = REPO / "examples/language_model/bottleneck_sweep.py"
TINY = ("--dims 8 --body-dim 16 --body-layers 1 --ffn-dim 32 --tokens-per-sample 16 "
        "--batch-size 8 --warmup-updates 2 --max-epochs 1")


def run(*argv, timeout=600):
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout)


def test_unprepared_experiment_refused(tmp_path, capsys):
    message = refused(gradient_norms.main, [  # no raw corpus either: only data-bin is read
        "--experiment-args", f"--data {tmp_path / 'no-corpus'} --out {tmp_path / 'nothing'}"],
        capsys)
    assert message.startswith("--experiment-args: no prepared data in")
    assert "--stages prepare" in message


def test_bad_flags_refused(capsys, tmp_path):
    assert ("--layers: got 'softmax,mixture' (unknown: 'mixture'); allowed: comma-separated "
            "output layers from softmax, mixtape") in refused(
                gradient_norms.parse_args, ["--layers", "softmax,mixture"], capsys)
    other = tmp_path / "other.json"
    other.write_text('{"softmax": [1, 2]}')
    assert f"--from-json: {other} is not a --json file of this script" in refused(
        gradient_norms.parse_args, ["--from-json", str(other)], capsys)


@pytest.mark.slow
def test_groups_add_up_to_the_clipped_norm(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for seed, split in enumerate(("train", "valid", "test")):
        random_corpus(corpus / f"{split}.txt", 300 if split == "train" else 40, 200, seed=seed)
    experiment = f"--data {corpus} --out {tmp_path / 'out'} {TINY}"
    prepared = run(SWEEP, *experiment.split(), "--stages", "prepare")
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    out = tmp_path / "norms.json"
    done = run(SCRIPT, "--experiment-args", experiment, "--layers", "softmax,mixtape",
               "--updates", 3, "--window", 2, "--json", out)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "| mixtape |" in done.stdout and "output: context" in done.stdout
    found = json.loads(out.read_text())
    for layer in ("softmax", "mixtape"):
        updates = found["updates"][layer]
        assert len(updates) == 3
        for update in updates:
            assert math.isclose(math.sqrt(sum(update["squares"].values())), update["norm"],
                                rel_tol=1e-4)
            assert update["clip_norm"] == 1.0 and update["clipped"] == (update["norm"] > 1.0)
        rows = found["summary"][layer]
        assert [row["updates"] for row in rows] == [[1, 3], [1, 2], [3, 3]]
        for row in rows:
            assert math.isclose(sum(row["shares"].values()), 1.0, rel_tol=1e-9)
        assert rows[2]["median_norm"] == updates[2]["norm"]
    gradient_norms.main(["--from-json", str(out)])  # the table again, from the saved updates
    assert "| mixtape | 1-3 |" in capsys.readouterr().out
    softmax_groups = set(found["summary"]["softmax"][0]["shares"])
    assert softmax_groups == {"body", "embeddings"}  # its word vectors are the embedding
    mixtape_groups = set(found["summary"]["mixtape"][0]["shares"])
    assert {"output: context", "output: shared_gate", "output: gate_hidden",
            "output: gate_embed", "output: gate_bias"} <= mixtape_groups
    gradient_norms.main(["--experiment-args", experiment + " --clip-norm 0", "--layers",
                         "softmax", "--updates", "2"])  # the experiment's own --clip-norm
    unclipped = capsys.readouterr().out
    assert "(clip norm 0)" in unclipped and "| softmax | 1-2 |" in unclipped
    assert "| 0% |" in unclipped
