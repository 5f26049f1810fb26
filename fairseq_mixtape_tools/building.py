"""Tiny-to-full fairseq models without data files: a task on an in-memory dictionary and models
built from fairseq-train style arguments, parsed once, each model then changing some fields of
that configuration (e.g. ``output_layer``). For the benchmark and the tests.

    task, build = model_builder(["unused-data", "--task", "translation", "--arch",
                                 "transformer_mixtape", "--cpu"], dictionary_of(1000))
    model = build(output_layer="mixtape")
"""

import copy
from argparse import Namespace
from typing import Callable, Sequence, Tuple

import fairseq_mixtape  # noqa: F401  (registers the plugin's architectures)
from fairseq import options
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.models import ARCH_MODEL_NAME_REGISTRY, MODEL_DATACLASS_REGISTRY
from fairseq.tasks.language_modeling import LanguageModelingTask
from fairseq.tasks.translation import TranslationTask
from omegaconf import open_dict


def dictionary_of(vocab: int) -> Dictionary:
    """An in-memory fairseq Dictionary of exactly ``vocab`` entries, frequency-sorted."""
    dictionary = Dictionary()
    for i in range(vocab - len(dictionary)):
        dictionary.add_symbol(f"w{i}", n=vocab - i)
    assert len(dictionary) == vocab
    return dictionary


def parse_train_args(argv: Sequence[str]) -> Namespace:
    """fairseq-train's argparse namespace for ``argv`` (data directory first)."""
    return options.parse_args_and_arch(options.get_training_parser(), list(argv))


def task_on(args: Namespace, dictionary: Dictionary):
    """The translation (source = target dictionary) or language-modelling task of ``args`` on
    ``dictionary``, without loading data."""
    if args.task == "translation":
        return TranslationTask(args, dictionary, dictionary)
    return LanguageModelingTask(args, dictionary, output_dictionary=dictionary)


def model_config(args: Namespace):
    """What ``task.build_model`` takes for ``args``' architecture: the namespace itself for
    models configured by argparse (lstm, transformer), the model's OmegaConf config for
    dataclass models (transformer_lm; slow: hydra)."""
    if ARCH_MODEL_NAME_REGISTRY[args.arch] in MODEL_DATACLASS_REGISTRY:
        return convert_namespace_to_omegaconf(args).model
    return args


def with_overrides(cfg, **overrides):
    """A copy of a model configuration (namespace or OmegaConf) with some fields changed."""
    if isinstance(cfg, Namespace):
        return Namespace(**{**vars(cfg), **overrides})
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        for key, value in overrides.items():
            cfg[key] = value
    return cfg


def model_builder(argv: Sequence[str], dictionary: Dictionary) -> Tuple[object, Callable]:
    """(task, build): the task of fairseq-train arguments ``argv`` on ``dictionary``, and a
    function ``build(**overrides)`` returning a new model of that configuration with the given
    fields changed (parsing, the slow part, happens once)."""
    args = parse_train_args(argv)
    task, cfg = task_on(args, dictionary), model_config(args)

    def build(**overrides):
        return task.build_model(with_overrides(cfg, **overrides))

    return task, build
