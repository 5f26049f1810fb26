#!/usr/bin/env python
"""The scale of each output layer's log-probabilities at initialisation, on the same network: their
standard deviation over the vocabulary at each position (for a softmax, that of its logits),
averaged over a batch of random token sequences, and the mean largest log-probability. A
mixture's context vectors tanh(H_k g + e_k) are bounded, so its initial logits can be much
smaller than a softmax's over the layer-normed state g, which may slow early training (RESULTS.md).

    python scripts/logit_scale.py DATA_BIN --layers softmax,mixtape,mos -- \\
        --task language_modeling --arch transformer_lm_mixtape --decoder-layers 2 ...

Everything after ``--`` is fairseq-train's model arguments (without --output-layer, and without
the mixture flags that --components and --context-scale set).
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import fairseq_mixtape  # noqa: E402,F401  (registers the models)
from fairseq import options, tasks  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_bin")
    parser.add_argument("--layers", default="softmax,mixtape,mos")
    parser.add_argument("--components", type=int, default=4, help="K of the mixtures")
    parser.add_argument("--context-scale", type=float, default=1.0,
                        help="--output-context-scale of the mixtures (1 = the papers)")
    parser.add_argument("--seed", type=int, default=1)
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, model_args = parser.parse_args(argv[:split]), argv[split + 1:]
    for layer in args.layers.split(","):
        mixture = [] if layer in ("softmax", "sigsoftmax") else [
            "--output-components", str(args.components),
            "--output-context-scale", str(args.context_scale)]
        parsed = options.parse_args_and_arch(options.get_training_parser(), [
            args.data_bin, *model_args, "--output-layer", layer, *mixture, "--cpu"])
        cfg = convert_namespace_to_omegaconf(parsed)
        task = tasks.setup_task(cfg.task)
        torch.manual_seed(args.seed)
        model = task.build_model(cfg.model).eval()
        tokens = torch.randint(task.target_dictionary.nspecial, len(task.target_dictionary),
                               (8, 35), generator=torch.Generator().manual_seed(args.seed))
        with torch.no_grad():
            if cfg.task._name == "translation":
                scores = model(tokens, torch.full((8,), 35), tokens)[0].float()
            else:
                scores = model(tokens)[0].float()
        log_probs = torch.log_softmax(scores, dim=-1)
        print(f"{layer:<15} log-prob std over the vocabulary {log_probs.std(-1).mean():.3f}   "
              f"largest log p {log_probs.max(-1).values.mean():.2f}", flush=True)


if __name__ == "__main__":
    main()
