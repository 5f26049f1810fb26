"""Tiny in-memory fairseq tasks and models of every family, built through fairseq's own CLI
parsing (so every flag, preset and default is the user's), for fast CPU tests."""

from fairseq import options
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.models import ARCH_MODEL_NAME_REGISTRY, MODEL_DATACLASS_REGISTRY
from fairseq.tasks.language_modeling import LanguageModelingTask
from fairseq.tasks.translation import TranslationTask

LAYERS = ["softmax", "mos", "mixtape", "sigsoftmax", "mos_sigsoftmax"]
TINY_TRANSFORMER = ["--decoder-layers", "1", "--decoder-embed-dim", "16",
                    "--decoder-ffn-embed-dim", "32", "--decoder-attention-heads", "2",
                    "--dropout", "0"]
TINY_LSTM = ["--decoder-layers", "1", "--decoder-embed-dim", "16", "--decoder-hidden-size",
             "16", "--decoder-out-embed-dim", "16", "--dropout", "0"]
FAMILIES = {  # family: (task, arch, tiny sizes)
    "transformer": ("translation", "transformer_mixtape", TINY_TRANSFORMER + [
        "--encoder-layers", "1", "--encoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32",
        "--encoder-attention-heads", "2"]),
    "lstm": ("translation", "lstm_mixtape", TINY_LSTM + [
        "--encoder-layers", "1", "--encoder-embed-dim", "16", "--encoder-hidden-size", "16"]),
    "transformer_lm": ("language_modeling", "transformer_lm_mixtape", TINY_TRANSFORMER + [
        "--decoder-input-dim", "16", "--decoder-output-dim", "16", "--tokens-per-sample", "16"]),
    "lstm_lm": ("language_modeling", "lstm_lm_mixtape", TINY_LSTM + ["--tokens-per-sample", "16"]),
}
TIED = {"transformer": "--share-all-embeddings"}  # the others: --share-decoder-input-output-embed
LAYER_SIZES = ["--output-components", "2", "--mixtape-gate-dim", "4",
               "--mixtape-frequent-tokens", "6"]


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
    argv = [data, "--task", task, "--arch", arch, "--output-layer", layer, "--cpu",
            *sizes, *layer_sizes, *tie, *extra]
    return options.parse_args_and_arch(options.get_training_parser(), argv)


def build(family: str, layer: str, *extra: str, tied=True):
    """(task, model) for a tiny ``family`` model with ``layer``, on an in-memory dictionary."""
    args = parse(family, layer, *extra, tied=tied)
    dictionary = tiny_dictionary()
    if FAMILIES[family][0] == "translation":
        task = TranslationTask(args, dictionary, dictionary)
    else:
        task = LanguageModelingTask(args, dictionary, output_dictionary=dictionary)
    if ARCH_MODEL_NAME_REGISTRY[args.arch] in MODEL_DATACLASS_REGISTRY:  # transformer_lm
        args = convert_namespace_to_omegaconf(args).model  # (slow: hydra; legacy models skip it)
    return task, task.build_model(args)
