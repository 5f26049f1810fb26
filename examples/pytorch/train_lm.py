"""Train a small causal Transformer language model with any output layer of fairseq-mixtape.

Plain PyTorch, no fairseq: a word-level corpus, a frequency-sorted vocabulary, a few
Transformer layers with a causal mask, the output layer from ``build_output_layer``, training on
the exact per-token NLL of ``chunked_token_losses``, valid and test perplexity, and a few sampled
sentences. Penn Treebank by default:

    python examples/pytorch/train_lm.py --output-layer mixtape --epochs 1 --dim 128 --embed-dim 32

Wiring, as in the fairseq plugin: the input embedding (V x E) is tied to the output embedding.
A mixture (mos, mos_sigsoftmax, mixtape) reads the d-wide hidden state g itself and maps it to
its K context vectors; softmax and sigsoftmax read P g, a linear projection to E, since a single
softmax has no map of its own. See README.md beside this file.
"""

import argparse
import math
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_mixtape.losses import chunked_token_losses
from fairseq_mixtape.output_layers import OUTPUT_LAYERS, OutputLayerConfig, build_output_layer
from fairseq_mixtape.output_layers.base import ContextMixture

REPO = Path(__file__).resolve().parents[2]
SPECIALS = ["<eos>", "<unk>"]   # ids 0 and 1; both can be targets (PTB's text has <unk> itself)
EOS, UNK = 0, 1
NO_PADDING = -100               # a padding index that never occurs: every position is a target
SPLITS = ("train", "valid", "test")


# ---------------------------------------------------------------------------------- arguments

class Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line and exit code 2 (argparse's own error() prints the usage before it)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def number(kind, minimum, allowed):
    """An argparse type: ``kind`` (int or float), finite and >= minimum."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"got {text!r}; allowed: {allowed}")
        return value
    return parse


def positive_float(text):
    value = number(float, 0.0, "a finite number > 0")(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a finite number > 0")
    return value


def probability(text):
    value = number(float, 0.0, "a probability in [0, 1)")(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a probability in [0, 1)")
    return value


def parse_args(argv=None):
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ptb"),
                   help="folder with ptb.{train,valid,test}.txt or {train,valid,test}.txt, one "
                        "sentence of whitespace-separated words a line (default: %(default)s)")
    p.add_argument("--output-layer", default="softmax", choices=list(OUTPUT_LAYERS))
    p.add_argument("--components", type=number(int, 1, "an integer >= 1"), default=None,
                   help="K for mos, mos_sigsoftmax (default 15) and mixtape (default 4, a power "
                        "of two); softmax and sigsoftmax have one")
    p.add_argument("--dim", type=number(int, 1, "an integer >= 1"), default=128,
                   help="d, the Transformer's width (default: %(default)s)")
    p.add_argument("--embed-dim", type=number(int, 1, "an integer >= 1"), default=None,
                   help="E, the width of the tied input/output embedding (default: d)")
    p.add_argument("--layers", type=number(int, 1, "an integer >= 1"), default=2,
                   help="Transformer layers (default: %(default)s)")
    p.add_argument("--heads", type=number(int, 1, "an integer >= 1"), default=4,
                   help="attention heads, a divisor of d (default: %(default)s)")
    p.add_argument("--dropout", type=probability, default=0.1, help="(default: %(default)s)")
    p.add_argument("--epochs", type=number(int, 1, "an integer >= 1"), default=1,
                   help="passes over the training text (default: %(default)s)")
    p.add_argument("--max-steps", type=number(int, 1, "an integer >= 1"), default=None,
                   help="stop after this many updates (default: train all epochs)")
    p.add_argument("--batch-size", type=number(int, 1, "an integer >= 1"), default=32,
                   help="blocks a batch (default: %(default)s)")
    p.add_argument("--seq-len", type=number(int, 1, "an integer >= 1"), default=64,
                   help="tokens a block (default: %(default)s)")
    p.add_argument("--lr", type=positive_float, default=2e-3,
                   help="peak learning rate of AdamW: linear warmup over a tenth of the updates "
                        "(at most 100), then cosine decay to a tenth of it "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="initialisation, batch order and samples "
                   "(default: %(default)s)")
    p.add_argument("--threads", type=number(int, 1, "an integer >= 1"), default=1,
                   help="CPU threads for torch (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, ... (default: cpu)")
    p.add_argument("--samples", type=number(int, 0, "an integer >= 0"), default=3,
                   help="sentences to sample at the end besides the greedy one")
    p.add_argument("--temperature", type=positive_float, default=0.8,
                   help="of the sampled sentences (default: %(default)s)")
    p.add_argument("--log-interval", type=number(int, 1, "an integer >= 1"), default=100,
                   help="updates between training-loss lines (default: %(default)s)")
    args = p.parse_args(argv)

    # the combinations argparse cannot check, each named by its flag, before any work
    layer = OUTPUT_LAYERS[args.output_layer]
    mixture = issubclass(layer, ContextMixture)
    if args.components is not None:
        if not mixture and args.components != 1:
            p.error(f"argument --components: got {args.components}; allowed: 1 or unset for "
                    f"{args.output_layer}, which has one softmax")
        if args.output_layer == "mixtape" and args.components & (args.components - 1):
            p.error(f"argument --components: got {args.components}; allowed: a power of two "
                    f"(1, 2, 4, 8, ...) for mixtape, whose priors are a sigmoid tree")
    if args.dim % args.heads:
        p.error(f"argument --heads: got {args.heads}; allowed: a divisor of --dim {args.dim}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"argument --device: got {args.device!r}; allowed: cpu, cuda, cuda:N, mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"argument --device: got {args.device!r}; allowed: cpu (no CUDA device here)")
    args.device = device
    args.files = data_files(p, Path(args.data))
    return p, args


def data_files(p, folder):
    """{split: path}: ptb.{split}.txt or {split}.txt in ``folder``."""
    allowed = ("a folder with ptb.train.txt, ptb.valid.txt, ptb.test.txt or train.txt, "
               "valid.txt, test.txt")
    if not folder.is_dir():
        p.error(f"argument --data: got {str(folder)!r}; allowed: {allowed} (no such folder)")
    for prefix in ("ptb.", ""):
        files = {split: folder / f"{prefix}{split}.txt" for split in SPLITS}
        if all(path.is_file() for path in files.values()):
            return files
    p.error(f"argument --data: got {str(folder)!r}; allowed: {allowed} (found "
            f"{', '.join(sorted(f.name for f in folder.glob('*.txt'))) or 'no .txt file'})")


# ---------------------------------------------------------------------------------- data

def read_words(path):
    """The file's words with <eos> after each line, after a first <eos> that starts the stream
    (so that the first word is a target too)."""
    words = ["<eos>"]
    with open(path, encoding="utf-8") as f:
        for line in f:
            words.extend(line.split())
            words.append("<eos>")
    return words


def build_vocabulary(train_words):
    """The special tokens, then the training words, most frequent first: Mixtape gives its own
    gates to the first S ids, which must be the S most frequent tokens."""
    counts = Counter(w for w in train_words if w not in SPECIALS)
    return SPECIALS + [w for w, _ in counts.most_common()]


def blocks(stream, length):
    """inputs, targets (n, length) of the n whole blocks of a stream of ids, and the rest
    (inputs, targets of one shorter block, or None)."""
    n = (len(stream) - 1) // length
    inputs = stream[:n * length].view(n, length)
    targets = stream[1:n * length + 1].view(n, length)
    rest = None
    if n * length + 1 < len(stream):
        rest = stream[n * length:-1].view(1, -1), stream[n * length + 1:].view(1, -1)
    return inputs, targets, rest


# ---------------------------------------------------------------------------------- model

class TransformerLM(nn.Module):
    """Token embedding (V x E, tied to the output layer) -> d, learned positions, pre-norm
    Transformer layers with a causal mask, then the output layer."""

    def __init__(self, args, vocab_size):
        super().__init__()
        d, E = args.dim, args.embed_dim or args.dim
        self.embed = nn.Embedding(vocab_size, E)
        nn.init.normal_(self.embed.weight, std=E ** -0.5)       # the output layer's own init
        self.embed_scale = E ** 0.5
        self.project_in = nn.Linear(E, d, bias=False) if E != d else nn.Identity()
        self.position = nn.Embedding(args.seq_len, d)
        self.dropout = nn.Dropout(args.dropout)
        layer = nn.TransformerEncoderLayer(d, args.heads, 4 * d, args.dropout, batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, args.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        cfg = OutputLayerConfig(output_layer=args.output_layer,
                                output_components=args.components)
        if issubclass(OUTPUT_LAYERS[args.output_layer], ContextMixture):
            self.project_out, input_dim = nn.Identity(), d       # a mixture reads g (width d)
        else:
            self.project_out = nn.Linear(d, E, bias=False) if E != d else nn.Identity()
            input_dim = E                                        # a softmax reads P g
        # ids 0 (<eos>) and 1 (<unk>) are targets too: Mixtape's own gates start at id 0
        self.output = build_output_layer(cfg, input_dim, vocab_size, embed_weight=self.embed.weight,
                                         embed_dim=E, first_target=0)

    def features(self, tokens):
        """tokens (B, T) -> the output layer's input (B, T, C)."""
        T = tokens.size(1)
        x = self.project_in(self.embed(tokens) * self.embed_scale)
        x = self.dropout(x + self.position(torch.arange(T, device=tokens.device)))
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=tokens.device)
        x = self.layers(x, mask=mask, is_causal=True)
        return self.project_out(self.norm(x))

    def token_nll(self, tokens, targets):
        """-log p(target | its block's previous tokens), exact, (B, T)."""
        return chunked_token_losses(self.output, self.features(tokens), targets, NO_PADDING,
                                    chunk_tokens=None).nll

    def next_log_probs(self, tokens):
        """log p(x | tokens) for the next token x: (B, V). Mixtures return log-probabilities,
        softmaxes logits: log_softmax gives log p for every layer."""
        return F.log_softmax(self.output(self.features(tokens)[:, -1]).float(), dim=-1)


# ---------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def perplexity(model, stream, args):
    """exp of the mean NLL over every token of the stream (each a target once), in blocks of
    --seq-len tokens, each block predicted from its own tokens only."""
    model.eval()
    inputs, targets, rest = blocks(stream, args.seq_len)
    batches = list(zip(inputs.split(args.batch_size), targets.split(args.batch_size)))
    total, count = 0.0, 0
    for x, y in batches + ([rest] if rest else []):
        total += model.token_nll(x.to(args.device), y.to(args.device)).double().sum().item()
        count += y.numel()
    model.train()
    return math.exp(total / count)


@torch.no_grad()
def sample(model, args, vocabulary, temperature=None, generator=None, max_words=30):
    """A sentence after <eos>: greedy (temperature None) or sampled at ``temperature``."""
    model.eval()
    tokens = torch.tensor([[EOS]], device=args.device)
    words = []
    for _ in range(max_words):
        log_probs = model.next_log_probs(tokens[:, -args.seq_len:])[0]
        if temperature is None:
            token = int(log_probs.argmax())
        else:
            probs = torch.softmax(log_probs / temperature, dim=-1).cpu()
            token = int(torch.multinomial(probs, 1, generator=generator))
        if token == EOS:
            break
        words.append(vocabulary[token])
        tokens = torch.cat([tokens, torch.tensor([[token]], device=args.device)], dim=1)
    model.train()
    return " ".join(words) or "(an empty sentence)"


# ---------------------------------------------------------------------------------- main

def main(argv=None):
    parser, args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    words = {split: read_words(path) for split, path in args.files.items()}
    vocabulary = build_vocabulary(words["train"])
    ids = {w: i for i, w in enumerate(vocabulary)}
    streams = {split: torch.tensor([ids.get(w, UNK) for w in ws])
               for split, ws in words.items()}
    train_x, train_y, _ = blocks(streams["train"], args.seq_len)
    if len(train_x) == 0:
        parser.error(f"argument --seq-len: got {args.seq_len}; allowed: at most "
                     f"{len(streams['train']) - 1}, the training text's tokens")
    print(f"data: {args.data}: {len(vocabulary)} types; tokens: "
          + ", ".join(f"{split} {len(s) - 1}" for split, s in streams.items()))

    model = TransformerLM(args, len(vocabulary)).to(args.device)
    layer = model.output
    parameters = sum(p.numel() for p in model.parameters())
    own = sum(p.numel() for n, p in layer.named_parameters() if n != "weight")
    print(f"model: Transformer, layers {args.layers}, d={args.dim}, E={layer.embed_dim}, "
          f"output layer {layer.name} (K={getattr(layer, 'components', 1)}): {parameters:,} "
          f"parameters, {own:,} of them in the output layer besides the tied embedding")

    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    total_steps = min(args.max_steps or math.inf, args.epochs * steps_per_epoch)
    warmup = max(1, min(100, total_steps // 10))

    def schedule(step):  # linear warmup, then cosine decay from 1 to 0.1
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98),
                                  weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    shuffle = torch.Generator().manual_seed(args.seed)

    step, start, running = 0, time.time(), []
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(train_x), generator=shuffle)
        for batch in order.split(args.batch_size):
            x, y = train_x[batch].to(args.device), train_y[batch].to(args.device)
            loss = model.token_nll(x, y).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            running.append(loss.item())
            if step % args.log_interval == 0 or step == total_steps:
                mean = sum(running) / len(running)
                print(f"epoch {epoch} step {step}/{total_steps} | train loss {mean:.3f} "
                      f"(ppl {math.exp(mean):.1f}) | lr {scheduler.get_last_lr()[0]:.2e} | "
                      f"{time.time() - start:.0f} s", flush=True)
                running = []
            if step == total_steps:
                break
        if step == total_steps:
            break
        print(f"epoch {epoch} | valid ppl {perplexity(model, streams['valid'], args):.2f}",
              flush=True)

    print(f"trained {step} steps in {time.time() - start:.0f} s")
    print(f"valid ppl {perplexity(model, streams['valid'], args):.2f}")
    print(f"test ppl {perplexity(model, streams['test'], args):.2f}")

    print(f"greedy: {sample(model, args, vocabulary)}")
    generator = torch.Generator().manual_seed(args.seed)
    for _ in range(args.samples):
        print(f"sample (temperature {args.temperature}): "
              f"{sample(model, args, vocabulary, args.temperature, generator)}")


if __name__ == "__main__":
    main()
