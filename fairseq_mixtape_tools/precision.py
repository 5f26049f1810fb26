"""Numerics of every output layer under float16 / bfloat16, on CPU or GPU: the scores' dtype,
finiteness of log-probs and gradients, normalisation, and the gap to a float32 reference.

    python scripts/check_precision.py [--device cuda] [--vocab 32000] [--dim 512] [--positions 1024]

Each layer runs on ordinary features and on extreme ones (features x 100), in three modes:
autocast (weights float32, fairseq --amp), and weights and inputs cast (fairseq --fp16 / --bf16).
"""

import re

import torch
import torch.nn.functional as F

from fairseq_mixtape.output_layers import OUTPUT_LAYERS, OutputLayerConfig, build_output_layer
from fairseq_mixtape_tools.arguments import ArgumentParser, check_counts


def log_probs_and_grad(layer, features, targets, mode, dtype):
    layer = layer.to(dtype) if mode == "cast" else layer.float()
    features = features.detach().to(dtype if mode == "cast" else torch.float32).requires_grad_()
    with torch.autocast(features.device.type, dtype=dtype, enabled=mode == "autocast"):
        scores = layer(features)
    log_p = F.log_softmax(scores.float(), dim=-1)
    F.nll_loss(log_p, targets).backward()
    grads = [p.grad for p in layer.parameters()] + [features.grad]
    layer.zero_grad()
    return scores.dtype, log_p.detach(), all(torch.isfinite(g).all() for g in grads if g is not None)


def check(name, args, scale):
    torch.manual_seed(0)
    cfg = OutputLayerConfig(output_layer=name)
    layer = build_output_layer(cfg, args.dim, args.vocab).to(args.device).eval()
    features = torch.randn(args.positions, args.dim, device=args.device) * scale
    targets = torch.randint(0, args.vocab, (args.positions,), device=args.device)
    _, reference, _ = log_probs_and_grad(layer, features.double(), targets, "cast", torch.float64)
    rows = []
    for mode in ["autocast", "cast"]:
        for dtype in [torch.float16, torch.bfloat16]:
            out_dtype, log_p, grads_finite = log_probs_and_grad(layer, features, targets, mode,
                                                                dtype)
            finite = bool(torch.isfinite(log_p).all())
            norm_error = (log_p.double().exp().sum(-1) - 1).abs().max().item()
            target_gap = (log_p.double() - reference).gather(1, targets[:, None]).abs().max()
            rows.append(f"| {name} | x{scale:g} | {mode} | {str(dtype)[6:]} | {str(out_dtype)[6:]} "
                        f"| {finite and grads_finite} | {norm_error:.1e} | {target_gap.item():.3f} |")
    return rows


def main(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--positions", type=int, default=256)
    args = parser.parse_args(argv)
    check_counts(parser, args, ["--vocab", "--dim", "--positions"])
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        parser.error(f"--device: got {args.device!r}; allowed: cpu, cuda, cuda:N")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device: got {args.device!r}, but torch sees no CUDA device here; "
                     "allowed: cpu")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"device: {name}; V={args.vocab}, d={args.dim}, {args.positions} positions")
    print("| layer | features | mode | dtype | scores dtype | log p and grads finite "
          "| max abs(sum p - 1) | max abs log p(target) gap to float64 |")
    print("|---|---|---|---|---|---|---|---|")
    for name in OUTPUT_LAYERS:
        for scale in [1.0, 100.0]:
            print("\n".join(check(name, args, scale)), flush=True)

