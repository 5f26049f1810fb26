"""End to end through fairseq's own command-line entry points, every family x every layer:
train a few updates, save, reload, generate or eval-lm, resume from checkpoint_last.pt.

The tools run in this process (``fairseq_cli.*.main``), which is what the console scripts call;
a few tests also run the real console scripts in a subprocess.
"""

import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli import eval_lm, generate

from fairseq_mixtape.models import output_layer_of
from fairseq_mixtape.output_layers import OutputLayer
from fairseq_mixtape_tools import average_checkpoints, demo, precision
from fairseq_mixtape_tools.benchmark import command as benchmark
from helpers import (FAMILIES, LAYERS, TRAIN_FLAGS, USER_DIR, fairseq_train, load_checkpoint,
                     make_lm_data, make_mt_data, with_saved_flags)
from refusals import refused, refused_command

pytestmark = pytest.mark.slow  # fairseq-train and the other tools, end to end
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {"translation": make_mt_data(root), "language_modeling": make_lm_data(root)}


def run(parser, main, argv):
    return main(convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, argv)))


def fairseq_generate(data_dir, checkpoint, results, *extra):
    run(options.get_generation_parser(), generate.main,
        [str(data_dir), "--user-dir", USER_DIR, "--path", str(checkpoint), "--gen-subset",
         "valid", "--batch-size", "8", "--cpu", "--num-workers", "0", "--results-path",
         str(results), *extra])
    lines = (results / "generate-valid.txt").read_text().splitlines()
    return [line.split("\t") for line in lines if line.startswith("H-")]


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_train_save_reload_evaluate_resume(family, layer, data, tmp_path, caplog):
    task = FAMILIES[family][0]
    save_dir = tmp_path / "checkpoints"
    checkpoint = fairseq_train(data[task], family, layer, save_dir, 2)
    assert checkpoint["optimizer_history"][-1]["num_updates"] == 2
    assert any(key.endswith(".weight") for key in checkpoint["model"])

    if task == "translation":
        hypotheses = fairseq_generate(data[task], save_dir / "checkpoint_last.pt", tmp_path,
                                      "--beam", "2", "--max-len-b", "6")
        assert len(hypotheses) == 16 and all(math.isfinite(float(h[1])) for h in hypotheses)
    else:
        results = run(options.get_eval_lm_parser(), eval_lm.main,
                      [str(data[task]), "--user-dir", USER_DIR, "--path",
                       str(save_dir / "checkpoint_last.pt"), "--gen-subset", "valid", "--cpu",
                       "--tokens-per-sample", "16", "--max-tokens", "400", "--num-workers", "0"])
        assert 1 < results["perplexity"] < 200  # a near-uniform model over ~48 symbols

    with caplog.at_level(logging.INFO):
        resumed = fairseq_train(data[task], family, layer, save_dir, 3)
    assert "@ 2 updates" in caplog.text  # loaded checkpoint_last.pt, did not start afresh
    assert resumed["optimizer_history"][-1]["num_updates"] == 3


@pytest.mark.parametrize("layer", ["mos", "mixtape"])
def test_generate_sampling_and_score_reference(layer, data, tmp_path):
    save_dir = tmp_path / "checkpoints"
    fairseq_train(data["translation"], "transformer", layer, save_dir, 2)
    checkpoint = save_dir / "checkpoint_last.pt"
    sampled = fairseq_generate(data["translation"], checkpoint, tmp_path / "sampled",
                               "--sampling", "--sampling-topk", "5", "--beam", "1",
                               "--temperature", "0.7", "--max-len-b", "6")
    assert len(sampled) == 16
    scored = fairseq_generate(data["translation"], checkpoint, tmp_path / "scored",
                              "--score-reference")
    references = (data["translation"].parent / "mt-raw" / "valid.en").read_text().splitlines()
    assert sorted(h[2] for h in scored) == sorted(references)  # scores the references as given
    assert all(float(h[1]) < 0 for h in scored)


def console(tool, *argv, stdin=None):
    """A real console script, in a subprocess, as a user runs it."""
    done = subprocess.run([str(BIN / tool), *argv], input=stdin, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_former_flag_names_and_compiling_through_the_tools(data, tmp_path, monkeypatch):
    """fairseq-train with --mos-context-dropout 0.29 (the flag's name before 0.3.0) trains MoS
    with context dropout 0.29, saves it as output_context_dropout and resumes with the same
    command; loaded, the layer has it. fairseq-eval-lm runs a checkpoint whose flags say
    compile_output_layer (saved by a compiled run) eagerly, and compiles it where
    --model-overrides asks."""
    lm = data["language_modeling"]
    save_dir = tmp_path / "checkpoints"
    state = fairseq_train(lm, "transformer_lm", "mos", save_dir, 1,
                          "--mos-context-dropout", "0.29")
    saved = state["cfg"]["model"]
    assert (saved["output_context_dropout"], saved["mos_context_dropout"]) == (0.29, None)
    resumed = fairseq_train(lm, "transformer_lm", "mos", save_dir, 2,
                            "--mos-context-dropout", "0.29")
    assert resumed["optimizer_history"][-1]["num_updates"] == 2
    model, _ = load_checkpoint(save_dir / "checkpoint_last.pt", lm)
    assert output_layer_of(model).context_dropout == 0.29
    compiled = []  # the context dropout of each layer compiled
    monkeypatch.setattr(OutputLayer, "compile_forward",
                        lambda layer: compiled.append(layer.context_dropout) or layer)
    path = with_saved_flags(save_dir / "checkpoint_last.pt", tmp_path, compile_output_layer=True)
    for overrides, expected in (("{}", []), ("{'compile_output_layer': True}", [0.29])):
        results = run(options.get_eval_lm_parser(), eval_lm.main,
                      [str(lm), "--user-dir", USER_DIR, "--path", str(path), "--gen-subset",
                       "valid", "--cpu", "--tokens-per-sample", "16", "--max-tokens", "400",
                       "--num-workers", "0", "--model-overrides", overrides])
        assert compiled == expected and 1 < results["perplexity"] < 200


def test_stock_transformer_with_the_plugin_loaded(data, tmp_path):
    """fairseq's own transformer still trains, saves and reloads with --user-dir (torch 2.13's
    weights_only checkpoint loading, no TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD)."""
    tiny = FAMILIES["transformer"][2]
    console("fairseq-train", str(data["translation"]), "--arch", "transformer", *tiny,
            *TRAIN_FLAGS, "--max-update", "2", "--save-dir", str(tmp_path), "--cpu")
    out = console("fairseq-generate", str(data["translation"]), "--user-dir", USER_DIR,
                  "--path", str(tmp_path / "checkpoint_last.pt"), "--gen-subset", "valid",
                  "--beam", "2", "--cpu")
    assert "Generate valid with beam=2: BLEU" in out


def test_interactive_and_validate_console_scripts(data, tmp_path):
    fairseq_train(data["translation"], "transformer", "mixtape", tmp_path, 2)
    checkpoint = str(tmp_path / "checkpoint_last.pt")
    out = console("fairseq-interactive", str(data["translation"]), "--user-dir", USER_DIR,
                  "--path", checkpoint, "--beam", "2", "--cpu", "--source-lang", "de",
                  "--target-lang", "en", stdin="w1 w2 w3\nw4 w5\n")
    assert out.count("\nH-") == 2
    out = console("fairseq-validate", str(data["translation"]), "--user-dir", USER_DIR,
                  "--path", checkpoint, "--cpu", "--valid-subset", "valid", "--task", "translation",
                  "--batch-size", "8")
    assert "valid on 'valid' subset | loss" in out


def test_python_hub_interface_translates_and_scores(data, tmp_path):
    from fairseq.models.transformer import TransformerModel
    from fairseq.models.transformer_lm import TransformerLanguageModel

    fairseq_train(data["translation"], "transformer", "mos", tmp_path / "mt", 2)
    translator = TransformerModel.from_pretrained(
        str(tmp_path / "mt"), "checkpoint_last.pt", data_name_or_path=str(data["translation"]))
    translation = translator.translate("w1 w2 w3", beam=2, max_len_b=6)
    assert isinstance(translation, str) and set(translation.split()) <= {
        f"w{i}" for i in range(40)} | {"<unk>"}

    fairseq_train(data["language_modeling"], "transformer_lm", "mixtape", tmp_path / "lm", 2)
    lm = TransformerLanguageModel.from_pretrained(
        str(tmp_path / "lm"), "checkpoint_last.pt",
        data_name_or_path=str(data["language_modeling"]))
    scores = lm.score("w1 w2 w3")["positional_scores"]
    assert scores.shape == (3,) and (scores < 0).all()  # one log-probability per word


def test_two_process_data_parallel_training_on_cpu(data, tmp_path):
    """fairseq's own data-parallel path, two processes over gloo (torchrun, legacy_ddp), with a
    mixture reading the hidden state (MoS shares the wiring; docs/reliability.md's commands run
    torchrun on a language model too)."""
    tiny, layer = FAMILIES["transformer"][2], "mixtape"
    port = str(29500 + os.getpid() % 400)
    out = console("torchrun", "--nproc_per_node", "2", "--master_port", port, str(BIN / "fairseq-train"), str(data["translation"]), "--arch",
                  f"transformer_{layer}", "--output-layer", layer, *tiny, "--share-all-embeddings",
                  *TRAIN_FLAGS, "--max-update", "3", "--save-dir", str(tmp_path), "--cpu",
                  "--distributed-world-size", "2", "--distributed-backend", "gloo",
                  "--ddp-backend", "legacy_ddp", "--criterion", "output_layer_cross_entropy")
    assert "distributed init (rank 1)" in out and "num_updates=3" in out
    hypotheses = fairseq_generate(data["translation"], tmp_path / "checkpoint_last.pt",
                                  tmp_path, "--beam", "2", "--max-len-b", "6")
    assert len(hypotheses) == 16


# User errors in the other tools: one line on stderr naming the flag and the value, exit
# status 2, before any work, never a traceback (tests/refusals.py). Each case runs the tool's
# main in this process; each command a user types runs once as a subprocess below.
REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "tests" / "fixtures" / "projection_wiring" / "transformer_lm_control.pt"
BAD_COMMAND_LINES = {  # case: (tool, argv, the message after "PROG: error: ")
    "benchmark --repeats": (benchmark, ["--repeats", "0"],
                            "--repeats: got 0; allowed: whole numbers >= 1"),
    "benchmark --vocabs": (benchmark, ["--vocabs", "100", "0"],
                           "--vocabs: got 0; allowed: whole numbers >= 1"),
    "benchmark --threads": (benchmark, ["--threads", "-1"],
                            "--threads: got -1; allowed: a number > 0"),
    "benchmark --out-dir": (benchmark, ["--out-dir", "a-file"],
                            "--out-dir: got 'a-file', not a directory"),
    "benchmark --model-args": (benchmark, ["--sections", "lm", "--model-args=--encoder-layers 2"],
                               "--model-args: got '--encoder-layers 2', which fairseq-train "
                               "refuses for the lm model (unrecognized arguments: "
                               "--encoder-layers 2)"),
    "average: no such input": (average_checkpoints, ["--inputs", "missing.pt", "--output",
                                                     "avg.pt"],
                               "--inputs: got 'missing.pt', which does not exist"),
    "average: not a checkpoint": (average_checkpoints, ["--inputs", "a-file", "--output",
                                                        "avg.pt"],
                                  "--inputs: got 'a-file', which torch.load cannot read ("),
    "average: two models": (average_checkpoints,
                            ["--inputs", str(CHECKPOINT),
                             str(CHECKPOINT.with_name("lstm_lm_control.pt")), "--output",
                             "avg.pt"],
                            f"--inputs: got '{CHECKPOINT.with_name('lstm_lm_control.pt')}', "
                            "whose parameters differ"),
    "average: too few": (average_checkpoints,
                         ["--inputs", ".", "--num-epoch-checkpoints", "2", "--output", "avg.pt"],
                         "--inputs: got '.', which holds 0 epoch checkpoints (none); allowed: "
                         "a folder with at least 2"),
    "average: no output folder": (average_checkpoints,
                                  ["--inputs", str(CHECKPOINT), "--output", "no/avg.pt"],
                                  "--output: got 'no/avg.pt', whose folder does not exist"),
    "precision --device": (precision, ["--device", "gpu"],
                           "--device: got 'gpu'; allowed: cpu, cuda"),
    "benchmark --device cuda": (benchmark, ["--device", "cuda"],
                                "--device: got 'cuda', but torch sees no CUDA device here"),
    "precision --device cuda": (precision, ["--device", "cuda"],
                                "--device: got 'cuda', but torch sees no CUDA device"),
    "precision --vocab": (precision, ["--vocab", "0"], "--vocab: got 0; allowed: whole numbers >= 1"),
    "demo --work-dir": (demo, ["--work-dir", "a-file/demo"],
                        "--work-dir: got 'a-file/demo', not a directory"),
}


@pytest.mark.parametrize("case", list(BAD_COMMAND_LINES))
def test_tools_refuse_bad_command_lines_in_one_line(case, tmp_path, monkeypatch, capsys):
    tool, argv, expected = BAD_COMMAND_LINES[case]
    (tmp_path / "a-file").write_text("not a checkpoint\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # as on a CPU-only machine
    assert refused(tool.main, argv, capsys).startswith(expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing written


@pytest.mark.parametrize("command,argv,expected", [
    ([BIN / "fairseq-mixtape-benchmark"], ["--repeats", "0"], "--repeats: got 0"),
    ([BIN / "fairseq-mixtape-demo"], ["--work-dir", "a-file/demo"], "--work-dir: got 'a-file/demo'"),
    ([sys.executable, REPO / "scripts" / "average_checkpoints.py"],
     ["--inputs", "missing.pt", "--output", "avg.pt"], "--inputs: got 'missing.pt'"),
    ([sys.executable, REPO / "scripts" / "check_precision.py"], ["--vocab", "0"],
     "--vocab: got 0"),
    ([sys.executable, REPO / "scripts" / "benchmark.py"], ["--repeats", "0"], "--repeats: got 0"),
], ids=["fairseq-mixtape-benchmark", "fairseq-mixtape-demo", "average_checkpoints.py",
        "check_precision.py", "benchmark.py"])
def test_the_commands_users_type_refuse_alike(command, argv, expected, tmp_path):
    (tmp_path / "a-file").write_text("not a checkpoint\n")
    prog, message = refused_command([*command, *argv], cwd=tmp_path)
    assert prog == Path(command[-1]).name and message.startswith(expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing written
