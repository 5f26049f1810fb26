"""Checks of the demo's and the experiment scripts' options, before any work: each refusal is an
``argparse`` error (usage and exit status 2) naming the flag, the value given and what is
allowed, not a traceback minutes later from deep inside fairseq."""

import argparse
import math
import os
import pathlib
import sys
from typing import Callable, List, NoReturn, Optional, Sequence


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line, ``prog: error: message``, with exit status
    2 (argparse's own prints the usage above it; --help still shows it)."""

    def error(self, message: str) -> NoReturn:
        refuse(message, self.prog)


def refuse(message: str, prog: Optional[str] = None) -> NoReturn:
    """A user's error, before any work: one line, ``prog: error: message``, on stderr and exit
    status 2 (``prog``: argparse's default, the command's file name). The parsers' refusals
    (ArgumentParser.error) and those found after parsing (e.g. a file's contents) alike."""
    sys.stderr.write(f"{prog or os.path.basename(sys.argv[0])}: error: {message}\n")
    raise SystemExit(2)


def comma_list(kind: Callable) -> Callable[[str], list]:
    """An argparse type: comma-separated values of ``kind`` ("16,32" -> [16, 32])."""
    return lambda text: [kind(item) for item in text.split(",") if item]


def check_choices(parser: argparse.ArgumentParser, flag: str, values: Sequence[str],
                  allowed: Sequence[str]) -> None:
    """Each of ``values`` (a list flag's) is one of ``allowed``."""
    for value in values:
        if value not in allowed:
            parser.error(f"{flag}: got {value!r}; allowed: {', '.join(allowed)}")


def check_counts(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 flags: Sequence[str]) -> None:
    """Each of ``flags``, a whole number or a list of them, is >= 1 (None: not given)."""
    for flag in flags:
        value = flag_value(args, flag)
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if item < 1:
                parser.error(f"{flag}: got {item}; allowed: whole numbers >= 1")


def check_probability(parser: argparse.ArgumentParser, flag: str, value: float) -> None:
    if not 0 <= value < 1:
        parser.error(f"{flag}: got {value}; allowed: a probability in [0, 1)")


def flag_dest(flag: str) -> str:
    """The attribute argparse stores ``flag`` in (``--mos-seeds``: ``mos_seeds``)."""
    return flag.lstrip("-").replace("-", "_")


def flag_value(args: argparse.Namespace, flag: str):
    return getattr(args, flag_dest(flag))


def has_flag(args: argparse.Namespace, flag: str) -> bool:
    return hasattr(args, flag_dest(flag))


def check_positive(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   flags: Sequence[str]) -> None:
    """Each of ``flags`` (a count or a size) is > 0 where it is set (None: its default)."""
    for flag in flags:
        value = flag_value(args, flag)
        if value is not None and not (math.isfinite(value) and value > 0):
            parser.error(f"{flag}: got {value}; allowed: a number > 0")


def parse_layers(parser: argparse.ArgumentParser, text: str, flag: str = "--layers",
                 choices: Optional[Sequence[str]] = None) -> List[str]:
    """Comma-separated output layer names, each once, each from ``choices`` (by default the
    layers the plugin registers; the experiments' output variants for theirs)."""
    if choices is None:
        from fairseq_mixtape.output_layers import OUTPUT_LAYERS as choices

    layers = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in layers if name not in choices]
    allowed = f"comma-separated output layers from {', '.join(choices)}"
    if unknown or not layers:
        which = f" (unknown: {', '.join(map(repr, unknown))})" if unknown else ""
        parser.error(f"{flag}: got {text!r}{which}; allowed: {allowed}")
    repeated = sorted({name for name in layers if layers.count(name) > 1})
    if repeated:
        parser.error(f"{flag}: got {text!r} ({', '.join(repeated)} more than once); allowed: "
                     f"{allowed}, each once")
    return layers


def parse_seeds(parser: argparse.ArgumentParser, text: str, flag: str,
                may_be_empty: bool = False) -> List[int]:
    """Comma-separated training seeds: whole numbers >= 0, each once; with ``may_be_empty``,
    also none ('')."""
    allowed = "comma-separated whole numbers >= 0, each once (e.g. 1,2)" + (
        ", or '' for none" if may_be_empty else "")
    if may_be_empty and not text.strip():
        return []
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        parser.error(f"{flag}: got {text!r}; allowed: {allowed}")
    if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
        parser.error(f"{flag}: got {text!r}; allowed: {allowed}")
    return seeds


def is_mixture(layer: str) -> bool:
    """Whether ``--output-components`` applies to the layer (softmax and sigsoftmax have one)."""
    from fairseq_mixtape.output_layers import OUTPUT_LAYERS

    return OUTPUT_LAYERS[layer].default_components > 1


def check_components(parser: argparse.ArgumentParser, components: Optional[int],
                     layers: Sequence[str], flag: str = "--components") -> None:
    """K suits every chosen mixture: each layer's own check, on a tiny layer built with it."""
    if components is None:
        return
    if components < 1:
        parser.error(f"{flag}: got {components}; allowed: a whole number >= 1")
    from fairseq_mixtape.output_layers import OutputLayerConfig, build_output_layer

    for layer in filter(is_mixture, layers):
        try:
            build_output_layer(OutputLayerConfig(output_layer=layer, output_components=components,
                                                 output_context_scale=1.0), 1, 2)
        except ValueError as error:
            parser.error(f"{flag}: got {components}, which {layer} (in --layers) refuses: "
                         f"{error}")


def check_data_dir(parser: argparse.ArgumentParser, path: pathlib.Path, flag: str,
                   layouts: Sequence[Sequence[str]]) -> None:
    """``path`` is a directory holding every file of one of ``layouts`` (lists of file names)."""
    expected = " or ".join(", ".join(layout) for layout in layouts)
    if not path.is_dir():
        problem = "not a directory" if path.exists() else "which does not exist"
        parser.error(f"{flag}: got {str(path)!r}, {problem}; allowed: a directory with {expected}")
    missing = [[name for name in layout if not (path / name).is_file()] for layout in layouts]
    if all(missing):  # name what the layout with the most files present lacks
        closest = max(zip(layouts, missing), key=lambda lm: len(lm[0]) - len(lm[1]))[1]
        parser.error(f"{flag}: got {str(path)!r}, which lacks {', '.join(closest)}; allowed: a "
                     f"directory with {expected}")
