"""Helpers for tests that need real fairseq tasks and models: tiny binarized corpora, models
and criterions built from command-line style arguments, batches, a peak-memory tracker
(the benchmark's, fairseq_mixtape_tools.memory) and a float32 gradient comparison.

    data = make_mt_data(tmp_path)                      # or make_lm_data(tmp_path)
    built = build_from_args([str(data), "--task", "translation", "--arch", "transformer_mos",
                             *TINY_TRANSFORMER])
    sample = batch(built.task, size=4)
    loss, sample_size, logging_output = built.criterion(built.model, sample)
"""

import random
from pathlib import Path
from types import SimpleNamespace
from typing import List, Sequence

import torch

from fairseq import options, tasks
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from fairseq_mixtape.compat import fairseq_checkpoint_classes
from fairseq_mixtape_tools.building import model_config, parse_train_args, task_on, with_overrides
from fairseq_mixtape_tools.memory import LiveTensorPeak as PeakMemory  # noqa: F401
from layers import LAYERS, MIXTURES  # noqa: F401  (the registry's layers, for the tests' use)

# Flags for models small enough to build and run in milliseconds (dropout off: deterministic).
TINY_TRANSFORMER = [
    "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16",
    "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--dropout", "0"]
TINY_TRANSFORMER_LM = [
    "--decoder-layers", "1", "--decoder-embed-dim", "16", "--decoder-output-dim", "16",
    "--decoder-input-dim", "16", "--decoder-ffn-embed-dim", "32", "--decoder-attention-heads", "2",
    "--dropout", "0"]
TINY_LSTM = [
    "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16",
    "--encoder-hidden-size", "16", "--decoder-embed-dim", "16", "--decoder-hidden-size", "16",
    "--decoder-out-embed-dim", "16", "--dropout", "0"]
TINY_LSTM_LM = [
    "--decoder-layers", "1", "--decoder-embed-dim", "16", "--decoder-hidden-size", "16",
    "--decoder-out-embed-dim", "16", "--dropout", "0"]


def assert_same_gradient(got, expected, name):
    """Float32 gradients equal up to round-off: relative 1e-4, plus an absolute 1e-6 of the
    tensor's largest entry (at least 1e-6), since an entry summed from terms that large is only
    as exact as their last bits, which differ between CPUs' kernels."""
    atol = 1e-6 * max(1.0, expected.abs().max().item())
    error = (got - expected).abs().max().item()
    assert torch.allclose(got, expected, rtol=1e-4, atol=atol), f"{name}: max error {error:.3g}"


def random_corpus(path: Path, sentences: int, words: int, lengths=(2, 12), seed: int = 0):
    """Write ``sentences`` lines of Zipf-distributed words w0..w{words-1}, lengths uniform in
    ``lengths``, so that a dictionary built from it is frequency-sorted like a real one."""
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(words)]
    weights = [1.0 / (i + 1) for i in range(words)]
    with open(path, "w") as f:
        for _ in range(sentences):
            length = rng.randint(*lengths)
            f.write(" ".join(rng.choices(vocabulary, weights, k=length)) + "\n")


def preprocess(argv: Sequence[str]):
    """fairseq-preprocess, in this process (one worker)."""
    from fairseq_cli import preprocess as fairseq_preprocess

    parser = options.get_preprocessing_parser()
    fairseq_preprocess.main(parser.parse_args(["--workers", "1", *argv]))


def make_mt_data(directory, words: int = 40, sentences: int = 64, src: str = "de",
                 tgt: str = "en", joined: bool = True) -> Path:
    """A tiny binarized translation corpus (train, valid) in ``directory/mt-bin``.

    With ``joined`` both languages share one dictionary (for --share-all-embeddings)."""
    raw, destdir = Path(directory) / "mt-raw", Path(directory) / "mt-bin"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n, seed in [("train", sentences, 1), ("valid", max(sentences // 4, 4), 2)]:
        random_corpus(raw / f"{split}.{src}", n, words, seed=seed)
        random_corpus(raw / f"{split}.{tgt}", n, words, seed=seed + 100)
    preprocess(["--source-lang", src, "--target-lang", tgt, "--trainpref", str(raw / "train"),
                "--validpref", str(raw / "valid"), "--destdir", str(destdir),
                *(["--joined-dictionary"] if joined else [])])
    return destdir


def make_lm_data(directory, words: int = 40, sentences: int = 64) -> Path:
    """A tiny binarized language-modelling corpus (train, valid) in ``directory/lm-bin``."""
    raw, destdir = Path(directory) / "lm-raw", Path(directory) / "lm-bin"
    raw.mkdir(parents=True, exist_ok=True)
    random_corpus(raw / "train.txt", sentences, words, seed=1)
    random_corpus(raw / "valid.txt", max(sentences // 4, 4), words, seed=2)
    preprocess(["--only-source", "--trainpref", str(raw / "train.txt"),
                "--validpref", str(raw / "valid.txt"), "--destdir", str(destdir)])
    return destdir


def build_from_args(argv: List[str]) -> SimpleNamespace:
    """Parse fairseq-train style arguments and build what fairseq-train builds from them.

    Returns a namespace with ``cfg`` (the OmegaConf config), ``task``, ``model`` and
    ``criterion`` (``--criterion``, default cross_entropy)."""
    args = parse_train_args(argv)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    return SimpleNamespace(cfg=cfg, task=task, model=model,
                           criterion=task.build_criterion(cfg.criterion))


def build_model(built: SimpleNamespace, **overrides):
    """Another model from the configuration ``built`` was parsed from, with some fields changed
    (e.g. ``output_layer="mos"``): builds in milliseconds where parsing takes about a second."""
    return built.task.build_model(with_overrides(built.cfg.model, **overrides))


def batch(task, split: str = "train", size: int = 4, start: int = 0):
    """A collated batch of examples start..start+size-1 of ``split`` (loaded on first use)."""
    if split not in task.datasets:
        task.load_dataset(split)
    dataset = task.dataset(split)
    return dataset.collater([dataset[i] for i in range(start, start + size)])


# In-memory tiny models of every family (no data files), built through fairseq's CLI parsing.
FAMILIES = {  # family: (task, arch, tiny sizes)
    "transformer": ("translation", "transformer_mixtape", TINY_TRANSFORMER),
    "lstm": ("translation", "lstm_mixtape", TINY_LSTM),
    "transformer_lm": ("language_modeling", "transformer_lm_mixtape",
                       TINY_TRANSFORMER_LM + ["--tokens-per-sample", "16"]),
    "lstm_lm": ("language_modeling", "lstm_lm_mixtape", TINY_LSTM_LM + ["--tokens-per-sample", "16"]),
}
TIED = {"transformer": "--share-all-embeddings"}  # the others: --share-decoder-input-output-embed
# Flags that narrow each family's output to E = 8 below its hidden width d = 16, where the
# stock decoder projects g to E (Transformer project_out_dim, LSTM additional_fc). The
# translation Transformer's output embedding cannot be tied at E (--share-all-embeddings ties it
# to the 16-wide encoder embedding): build it with tied=False.
NARROW = {
    "transformer": ["--decoder-output-dim", "8"],
    "lstm": ["--decoder-embed-dim", "8", "--decoder-out-embed-dim", "8"],
    "transformer_lm": ["--decoder-input-dim", "8", "--decoder-output-dim", "8"],
    "lstm_lm": ["--decoder-embed-dim", "8", "--decoder-out-embed-dim", "8"],
}
NARROW_TIED = {"transformer": False}
LAYER_SIZES = ["--output-components", "2", "--mixtape-gate-dim", "4",
               "--mixtape-frequent-tokens", "6"]


# fairseq-train flags of the end-to-end tests (in-process fairseq_cli.train.main)
USER_DIR = str(Path(__file__).resolve().parents[1] / "fairseq_mixtape")
TRAIN_FLAGS = ["--user-dir", USER_DIR, "--optimizer", "adam", "--lr", "0.001", "--max-tokens",
               "400", "--seed", "1", "--no-progress-bar", "--no-epoch-checkpoints",
               "--log-format", "simple", "--log-interval", "1", "--num-workers", "0"]


def fairseq_train(data_dir, family, layer, save_dir, max_update, *extra):
    """Train a tiny ``family`` model with ``layer`` through fairseq_cli.train.main; returns the
    loaded checkpoint_last.pt."""
    from fairseq_cli import train

    args = parse(family, layer, *TRAIN_FLAGS, "--save-dir", str(save_dir), "--max-update",
                 str(max_update), *extra, data=str(data_dir))
    train.main(convert_namespace_to_omegaconf(args))
    with fairseq_checkpoint_classes():
        return torch.load(save_dir / "checkpoint_last.pt")


def tiny_dictionary(num_words: int = 30) -> Dictionary:
    dictionary = Dictionary()
    for i in range(num_words):
        dictionary.add_symbol(f"w{i}", n=num_words - i)  # frequency-sorted, as fairseq writes
    return dictionary


def parse(family: str, layer: str, *extra: str, data: str = "unused-data-dir", tied=True):
    """fairseq-train's argparse namespace for a tiny model of ``family`` with ``layer``, with
    input and output embeddings tied (all embeddings, for translation) unless ``tied=False``."""
    task, arch, sizes = FAMILIES[family]
    layer_sizes = LAYER_SIZES if layer not in ("softmax", "sigsoftmax") else LAYER_SIZES[2:]
    tie = [TIED.get(family, "--share-decoder-input-output-embed")] if tied else []
    return parse_train_args([data, "--task", task, "--arch", arch, "--output-layer", layer,
                             "--cpu", *sizes, *layer_sizes, *tie, *extra])


def build(family: str, layer: str, *extra: str, tied=True):
    """(task, model) for a tiny ``family`` model with ``layer``, on an in-memory dictionary."""
    args = parse(family, layer, *extra, tied=tied)
    task = task_on(args, tiny_dictionary())
    return task, task.build_model(model_config(args))


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def with_saved_flags(checkpoint: Path, folder: Path, **flags) -> Path:
    """A copy of ``checkpoint`` in ``folder`` whose saved model flags (``cfg.model``: a dict, or
    an LSTM's argparse namespace) hold ``flags``, as if it had been saved with them; a value
    None removes the flag (a checkpoint saved before it existed)."""
    with fairseq_checkpoint_classes():
        state = torch.load(checkpoint)
    saved = state["cfg"]["model"]
    saved = saved if isinstance(saved, dict) else vars(saved)
    for name, value in flags.items():
        if value is None:
            saved.pop(name, None)
        else:
            saved[name] = value
    path = Path(folder) / checkpoint.name
    torch.save(state, path)
    return path


def load_checkpoint(path: Path, data: Path, **overrides):
    """(model in eval mode, cfg) of a fairseq checkpoint, as fairseq-generate and fairseq-eval-lm
    load it (``load_model_ensemble_and_task``), with ``overrides`` as --model-overrides."""
    from fairseq import checkpoint_utils

    models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task(
        [str(path)], arg_overrides={"data": str(data), **overrides})
    return models[0].eval(), cfg
