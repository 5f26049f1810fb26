"""examples/pytorch/train_lm.py, the plain-PyTorch example: it trains at a tiny size and prints
finite perplexities and sampled sentences for softmax, Mixtape and MoS; bad input stops it
with one line naming the flag, exit code 2, before any work. The training runs are ``slow``
(subprocesses that import torch and fairseq anew and train: about 10 s each); the other checks
run the script's functions in this process, but for one bad --data run as a subprocess (about
7 s, nearly all of it the imports), which checks the real exit code and output."""

import importlib.util
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from refusals import refused

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "pytorch" / "train_lm.py"
TINY = ["--dim", "16", "--embed-dim", "8", "--heads", "2", "--layers", "1", "--seq-len", "16",
        "--batch-size", "8", "--max-steps", "4", "--log-interval", "2", "--samples", "2"]


def load_example():
    spec = importlib.util.spec_from_file_location("train_lm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = load_example()


@pytest.fixture
def corpus(tmp_path):
    """train/valid/test.txt of Zipf-distributed words w0..w39 (w0 the most frequent)."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    weights = [1.0 / (i + 1) for i in range(40)]
    for split, lines in (("train", 200), ("valid", 20), ("test", 20)):
        with open(tmp_path / f"{split}.txt", "w") as f:
            for _ in range(lines):
                f.write(" ".join(rng.choices(words, weights, k=rng.randint(2, 10))) + "\n")
    return tmp_path


def run(*argv):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["softmax", "mixtape", "mos"])
def test_trains_and_samples_at_a_tiny_size(corpus, layer):
    components = [] if layer == "softmax" else ["--components", "2"]
    result = run("--data", str(corpus), "--output-layer", layer, *components, *TINY)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"output layer {layer} (K={2 if components else 1})" in out
    assert "step 4/4" in out
    for split in ("valid", "test"):
        found = re.findall(rf"^{split} ppl (\S+)$", out, re.MULTILINE)
        assert len(found) == 1, out
        ppl = float(found[0])
        # finite and no worse than a few times uniform over the 42 types (40 words, <eos>, <unk>)
        assert math.isfinite(ppl) and 1 < ppl < 200, out
    greedy = re.findall(r"^greedy: (.*)$", out, re.MULTILINE)
    samples = re.findall(r"^sample \(temperature 0\.8\): (.*)$", out, re.MULTILINE)
    assert len(greedy) == 1 and len(samples) == 2, out
    known = {f"w{i}" for i in range(40)} | {"<unk>"}
    for sentence in greedy + samples:
        assert sentence == "(an empty sentence)" or set(sentence.split()) <= known, sentence


def test_bad_data_folder_exits_2_with_one_line_before_any_work(tmp_path):
    missing = tmp_path / "no-such-folder"
    result = run("--data", str(missing))
    assert result.returncode == 2
    assert result.stdout == ""                       # no work: nothing read, nothing trained
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--data" in lines[0] and str(missing) in lines[0] and "train.txt" in lines[0]


@pytest.mark.parametrize("argv, flag, allowed", [
    (["--components", "3", "--output-layer", "mixtape"], "--components", "a power of two"),
    (["--components", "2"], "--components", "1 or unset for softmax"),
    (["--dim", "0"], "--dim", "an integer >= 1"),
    (["--lr", "nan"], "--lr", "a finite number > 0"),
    (["--dropout", "1"], "--dropout", "a probability in [0, 1)"),
    (["--heads", "3"], "--heads", "a divisor of --dim 128"),
    (["--device", "nonsense"], "--device", "cpu"),
    (["--output-layer", "adaptive"], "--output-layer", "mixtape"),
])
def test_bad_flag_values_name_the_flag_the_value_and_what_is_allowed(corpus, capsys, argv, flag,
                                                                      allowed):
    message = refused(example.parse_args, ["--data", str(corpus), *argv], capsys)
    assert flag in message and argv[1] in message and allowed in message, message


def test_data_folder_without_the_files_names_what_it_found(tmp_path, capsys):
    (tmp_path / "train.txt").write_text("a b\n")
    message = refused(example.parse_args, ["--data", str(tmp_path)], capsys)
    assert "--data" in message and "found train.txt" in message, message


def test_ptb_file_names_are_accepted(tmp_path):
    for split in example.SPLITS:
        (tmp_path / f"ptb.{split}.txt").write_text("a b\n")
    _, args = example.parse_args(["--data", str(tmp_path)])
    assert args.files["test"] == tmp_path / "ptb.test.txt"


def test_vocabulary_is_sorted_by_frequency_after_the_special_tokens():
    words = "<eos> c b c a c b <eos> <unk> d <eos>".split()
    assert example.build_vocabulary(words) == ["<eos>", "<unk>", "c", "b", "a", "d"]


@pytest.mark.parametrize("length", [1, 3, 4, 10])
def test_blocks_make_every_token_a_target_once(length):
    stream = torch.arange(10)                         # 9 targets: tokens 1..9
    inputs, targets, rest = example.blocks(stream, length)
    if rest:
        inputs, targets = torch.cat([inputs.flatten(), rest[0].flatten()]), \
            torch.cat([targets.flatten(), rest[1].flatten()])
    assert targets.flatten().tolist() == list(range(1, 10))
    assert (inputs.flatten() + 1).tolist() == targets.flatten().tolist()  # each predicts the next


def test_the_first_word_of_a_file_is_a_target(tmp_path):
    path = tmp_path / "valid.txt"
    path.write_text("a b\nc\n")
    assert example.read_words(path) == ["<eos>", "a", "b", "<eos>", "c", "<eos>"]
