"""Each output layer's initial log-probability spread, and its ratio to a softmax's on the same
network: the standard deviation over the vocabulary of log p(x | context) at each position,
averaged over random token sequences, for freshly initialised models (no training, no data).

A mixture's context vectors c tanh(H_k g + e_k) are bounded; with the papers' c = 1 its initial
logits are several times flatter than a softmax's, which slows early training (RESULTS.md). By
default the plugin sets c at build time so that the spreads match; this prints how well they do.

    python scripts/logit_scale.py                        # four networks, every layer and K
    python scripts/logit_scale.py --networks ptb --context-scale 1       # the papers' layers
    python scripts/logit_scale.py --check                # exit 1 if a ratio is outside the range

Networks: ``ptb`` and ``multi30k`` are the models of examples/language_model/ptb_experiment.py
and examples/translation/multi30k_experiment.py with their default flags; ``sweep_E16`` ...
``sweep_E128`` the model of examples/language_model/bottleneck_sweep.py at output width E (not
run by default: ``--networks sweep_E16,sweep_E128``); ``transformer_wmt_en_de`` (all embeddings
shared) and ``transformer_lm`` are fairseq's presets.
"""

import argparse

import torch
import torch.nn.functional as F
from fairseq.tasks.translation import TranslationTask

from .arguments import ArgumentParser, check_choices
from .building import dictionary_of, model_builder
from .experiments import multi30k, ptb, sweep

PRESETS = {  # name: (vocabulary size, fairseq-train arguments)
    "transformer_wmt_en_de": (32000, ["--task", "translation", "--arch",
                                      "transformer_wmt_en_de_mixtape", "--share-all-embeddings"]),
    "transformer_lm": (32000, ["--task", "language_modeling", "--arch", "transformer_lm_mixtape",
                               "--share-decoder-input-output-embed"]),
}
EXPERIMENTS = {  # name: (vocabulary size, the experiment whose default model it is)
    "ptb": (10000, ptb),
    "multi30k": (8000, multi30k),
}
SWEEP_VOCAB = 10000  # the sweep's model at each width E
SWEEP_NETWORKS = {f"sweep_E{dim}": dim for dim in (16, 32, 64, 128)}
NETWORKS = [*EXPERIMENTS, *PRESETS, *SWEEP_NETWORKS]
LAYERS = [("mixtape", 1), ("mixtape", 4), ("mixtape", 16), ("mos", 1), ("mos", 4), ("mos", 15),
          ("mos_sigsoftmax", 1), ("mos_sigsoftmax", 4), ("mos_sigsoftmax", 15)]
ALLOWED = (0.75, 1.33)


def network_arguments(name: str):
    """(vocabulary size, fairseq-train arguments) of a named network."""
    if name in PRESETS:
        vocab, argv = PRESETS[name]
        return vocab, ["unused-data", *argv]
    if name in SWEEP_NETWORKS:
        vocab, experiment = SWEEP_VOCAB, sweep
        args = sweep.parse_args(["--stages", "train", "--dims", str(SWEEP_NETWORKS[name])])
        args.total_updates = 1  # its data is not read: the network does not depend on it
    else:
        vocab, experiment = EXPERIMENTS[name]
        args = experiment.parse_args([])
    run = experiment.run_for(args, "softmax", 1)
    return vocab, [str(a) for a in experiment.train_arguments(args, run)]


def spread(model, task, seed: int) -> float:
    """Mean over positions of std_x log p(x | context), on random tokens (8 x 32)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(task.target_dictionary.nspecial, len(task.target_dictionary), (8, 32),
                           generator=generator)
    with torch.no_grad():
        if isinstance(task, TranslationTask):
            scores = model(tokens, torch.full((8,), 32), tokens)[0]
        else:
            scores = model(tokens)[0]
    return float(F.log_softmax(scores.double(), dim=-1).std(-1).mean())


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", default=",".join([*EXPERIMENTS, *PRESETS]),
                        help=f"comma-separated, from {', '.join(NETWORKS)} (default: the first "
                             "four)")
    parser.add_argument("--context-scale", type=float, default=None,
                        help="--output-context-scale of the mixtures (default: the plugin's, "
                             "matched to softmax; 1 = the papers)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 unless every ratio lies in [{ALLOWED[0]}, {ALLOWED[1]}]")
    args = parser.parse_args(argv)
    networks = args.networks.split(",")
    check_choices(parser, "--networks", networks, NETWORKS)
    outside = []
    print(f"{'network':<22} {'layer':<15} {'K':>3} {'scale c':>8} {'spread':>7} {'/ softmax':>9}")
    for network in networks:
        vocab, argv_ = network_arguments(network)
        task, build = model_builder([*argv_, "--cpu"], dictionary_of(vocab))
        torch.manual_seed(args.seed)
        softmax = spread(build(output_layer="softmax").eval(), task, args.seed)
        print(f"{network:<22} {'softmax':<15} {1:>3} {'-':>8} {softmax:7.3f} {1:9.2f}", flush=True)
        for layer, components in LAYERS:
            torch.manual_seed(args.seed)
            model = build(output_layer=layer, output_components=components,
                          output_context_scale=args.context_scale).eval()
            scale = float(model.decoder.output_projection.context_scale)
            value = spread(model, task, args.seed)
            ratio = value / softmax
            flag = "" if ALLOWED[0] <= ratio <= ALLOWED[1] else "  outside"
            if flag:
                outside.append(f"{network} {layer} K={components}")
            print(f"{network:<22} {layer:<15} {components:>3} {scale:8.2f} {value:7.3f} "
                  f"{ratio:9.2f}{flag}", flush=True)
    if outside:
        print(f"ratio outside [{ALLOWED[0]}, {ALLOWED[1]}]: {'; '.join(outside)}")
    return 1 if args.check and outside else 0

