"""The project's demo: a language on which the softmax bottleneck bites, and the real fairseq CLI
training softmax, MoS, Mixtape (and sigsoftmax) on it with identical budgets.

The synthetic language is a first-order Markov chain over ``V`` words plus the end-of-sentence
symbol. Each word is followed by one of a few random successors (Dirichlet weights), smoothed by
a small uniform floor so every log-probability is finite. Its true log-probability matrix (one
row per context = previous token) is a shifted random sparse pattern: full rank, about V. A
softmax over a ``d``-dimensional decoder state (d << V) can only express log-probability
matrices of rank <= d + 1; a mixture can do much better. Since the true chain is known, the
demo also reports the true model's perplexity on the test text: the floor no model can beat.

Everything runs through the real command-line tools (``fairseq-preprocess``, ``fairseq-train``,
``fairseq-eval-lm``, as ``python -m fairseq_cli.*``) with ``--user-dir`` pointing at the
plugin package ``fairseq_mixtape/``, exactly as a user would run them. ``scripts/demo.py`` is the command-line entry point.
"""

import argparse
import dataclasses
import math
import pathlib
import re
import shutil
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from fairseq.criterions import CRITERION_REGISTRY

import fairseq_mixtape  # noqa: F401  (registers the plugin's layers, models and criterions)
from fairseq_mixtape.output_layers import OUTPUT_LAYERS

from . import bottleneck
from .arguments import (ArgumentParser, check_components, check_data_dir, check_positive,
                        is_mixture, parse_layers)
from .runner import PACKAGE_DIR, CommandFailed, parse_train_log, run_tool, train_progress_printer

DEFAULT_LAYERS = ("softmax", "sigsoftmax", "mos", "mixtape")
EOS = "</s>"
RAW_FILES = ("train.txt", "valid.txt", "test.txt")
BINARIZED_FILES = ("dict.txt", "train.bin", "train.idx", "test.bin", "test.idx")


# The plugin's criterion where it registers one (importing fairseq_mixtape has), else fairseq's.
CRITERION = next(c for c in ("output_layer_cross_entropy", "cross_entropy")
                 if c in CRITERION_REGISTRY)


# --------------------------------------------------------------------------------------------
# The synthetic language


@dataclasses.dataclass
class LanguageSpec:
    """How to draw the Markov chain: V words, each followed by ``successors`` random words."""

    vocab_size: int = 128
    successors: int = 16
    concentration: float = 1.0      # Dirichlet concentration of the successor weights
    floor: float = 0.01             # uniform mass mixed into every row (finite log-probs)
    mean_sentence_length: float = 30.0
    seed: int = 1


class MarkovLanguage:
    """A first-order Markov chain over states 0 (end of sentence) and 1..V (words ``w1..wV``).

    ``transitions[i, j]`` = P(next = j | previous = i). A sentence starts in state 0 and ends
    when it returns there, exactly like fairseq's token stream, where every line ends in ``</s>``
    and the next line's first word is predicted from that ``</s>``.
    """

    def __init__(self, transitions: np.ndarray):
        self.transitions = transitions
        self.words = [EOS] + [f"w{i}" for i in range(1, transitions.shape[0])]

    @classmethod
    def random(cls, spec: LanguageSpec) -> "MarkovLanguage":
        rng = np.random.default_rng(spec.seed)
        V = spec.vocab_size
        eos_prob = 1.0 / spec.mean_sentence_length
        transitions = np.zeros((V + 1, V + 1))
        transitions[0, 1:] = 1.0 / V                       # sentences start anywhere
        for word in range(1, V + 1):
            successors = rng.choice(np.arange(1, V + 1), size=spec.successors, replace=False)
            weights = rng.dirichlet(np.full(spec.successors, spec.concentration))
            transitions[word, successors] = (1.0 - eos_prob) * weights
            transitions[word, 0] = eos_prob
        transitions = (1.0 - spec.floor) * transitions + spec.floor / (V + 1)
        return cls(transitions)

    @property
    def num_states(self) -> int:
        return self.transitions.shape[0]

    def log_prob_matrix(self) -> np.ndarray:
        """log P(next | previous), one row per context, float64, all finite."""
        return np.log(self.transitions)

    def sample_sentences(self, num_tokens: int, rng: np.random.Generator) -> List[List[int]]:
        """Whole sentences (word ids, without the final 0) totalling about ``num_tokens`` tokens
        counting each end of sentence. Draws many sentences in parallel, one step at a time."""
        cumulative = np.cumsum(self.transitions, axis=1)
        cumulative[:, -1] = 1.0
        mean_length = 1.0 / self.transitions[1:, 0].mean()
        num_sentences = max(1, int(round(num_tokens / mean_length)))
        state = np.zeros(num_sentences, dtype=np.int64)
        alive = np.ones(num_sentences, dtype=bool)
        steps = []
        while alive.any():
            draws = rng.random(num_sentences)
            state = np.where(alive, (cumulative[state] < draws[:, None]).sum(axis=1), 0)
            steps.append(state)
            alive &= state != 0
        walks = np.stack(steps, axis=1)
        return [list(row[:np.argmin(row)]) if (row == 0).any() else list(row) for row in walks]

    def cross_entropy(self, sentences: Sequence[Sequence[int]]) -> float:
        """The true model's loss in nats per token on ``sentences``, every ``</s>`` counted, as
        fairseq-eval-lm counts tokens."""
        log_probs = self.log_prob_matrix()
        total, count = 0.0, 0
        for sentence in sentences:
            path = np.asarray([0, *sentence, 0])
            total -= log_probs[path[:-1], path[1:]].sum()
            count += len(path) - 1
        return total / count

    def to_text(self, sentences: Sequence[Sequence[int]]) -> str:
        return "".join(" ".join(self.words[i] for i in s) + "\n" for s in sentences)


def numerical_rank(matrix: np.ndarray) -> int:
    """Singular values above s_max * eps * sqrt(m + n + 1) / 2 (float64; bottleneck.py)."""
    return bottleneck.numerical_rank(np.linalg.svd(matrix, compute_uv=False), matrix.shape)


def centred_effective_rank(matrix: np.ndarray, eps: float = 1e-3) -> int:
    """bottleneck.effective_rank of the matrix with each row's mean removed first (a shift a
    softmax's normaliser provides for free): the fewest singular values of the centred matrix
    whose squares hold 1 - eps of the total."""
    centred = matrix - matrix.mean(axis=1, keepdims=True)
    return bottleneck.effective_rank(np.linalg.svd(centred, compute_uv=False), eps)


def write_corpus(language: MarkovLanguage, text_dir: pathlib.Path, sizes: Dict[str, int],
                 seed: int) -> float:
    """Write ``{split}.txt`` for each split; return the true model's test perplexity."""
    text_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    test_loss = float("nan")
    for split, num_tokens in sizes.items():
        sentences = language.sample_sentences(num_tokens, rng)
        (text_dir / f"{split}.txt").write_text(language.to_text(sentences))
        if split == "test":
            test_loss = language.cross_entropy(sentences)
    return math.exp(test_loss)


def is_binarized(data_dir: pathlib.Path) -> bool:
    """fairseq-preprocess'd: the dictionary, and the train and test splits the demo uses."""
    return all((data_dir / name).is_file() for name in BINARIZED_FILES)


def preprocess(text_dir: pathlib.Path, bin_dir: pathlib.Path, log_dir: pathlib.Path,
               workers: int = 1) -> None:
    """fairseq-preprocess --only-source on {train,valid,test}.txt into ``bin_dir``."""
    if bin_dir.exists():
        shutil.rmtree(bin_dir)
    run_tool("preprocess", [
        "--only-source", "--trainpref", text_dir / "train.txt", "--validpref",
        text_dir / "valid.txt", "--testpref", text_dir / "test.txt", "--destdir", bin_dir,
        "--workers", workers], log_dir / "preprocess.log")


def dictionary_size(bin_dir: pathlib.Path) -> int:
    """Entries in a fairseq dictionary: the 4 special symbols plus the lines of dict.txt."""
    return 4 + sum(1 for _ in open(bin_dir / "dict.txt"))


def target_tokens(bin_dir: pathlib.Path) -> int:
    """Tokens that can be targets, which Mixtape's gate slots cover from ``</s>`` on: ``</s>``,
    ``<unk>`` and the words dict.txt lists with a count (not the never-seen symbols
    fairseq-preprocess pads it with, nor ``<s>`` and ``<pad>``)."""
    return 2 + sum(1 for line in open(bin_dir / "dict.txt") if int(line.split()[1]) > 0)


@dataclasses.dataclass
class ModelSpec:
    """The network every output layer sits on, and the training budget (the same for all)."""

    arch: str = "lstm_lm_mixtape"
    embed_dim: int = 64             # input embedding
    hidden_size: int = 64           # LSTM state
    output_dim: int = 8             # E: the output embedding (softmax reads the state projected to E)
    layers: int = 1
    updates: int = 600
    batch_size: int = 32
    tokens_per_sample: int = 32
    lr: float = 0.03
    seed: int = 1
    log_interval: int = 50
    threads: int = 1                # torch threads per fairseq process

    def train_arguments(self) -> List[str]:
        return [
            "--task", "language_modeling", "--arch", self.arch,
            "--decoder-embed-dim", self.embed_dim, "--decoder-hidden-size", self.hidden_size,
            "--decoder-out-embed-dim", self.output_dim, "--decoder-layers", self.layers,
            "--dropout", 0.0,
            "--tokens-per-sample", self.tokens_per_sample, "--sample-break-mode", "none",
            "--batch-size", self.batch_size, "--max-update", self.updates,
            "--optimizer", "adam", "--lr", self.lr, "--clip-norm", 1.0,
            "--seed", self.seed, "--log-interval", self.log_interval, "--log-format", "simple",
            "--disable-validation", "--no-epoch-checkpoints", "--num-workers", 0, "--cpu"]


def output_layer_arguments(layer: str, components: Optional[int],
                           frequent_tokens: Optional[float], gate_dim: Optional[int]) -> List[str]:
    arguments = ["--output-layer", layer]
    if components is not None and is_mixture(layer):  # softmax and sigsoftmax have one
        arguments += ["--output-components", components]
    if layer == "mixtape" and frequent_tokens is not None:
        arguments += ["--mixtape-frequent-tokens", frequent_tokens]
    if layer == "mixtape" and gate_dim is not None:
        arguments += ["--mixtape-gate-dim", gate_dim]
    return arguments


@dataclasses.dataclass
class Result:
    """One output layer's row of the table; every number is read from fairseq's output."""

    layer: str
    components: int
    perplexity: float
    parameters: int
    train_seconds: float
    updates: int


def components_of(layer: str, components: Optional[int]) -> int:
    if components is None or not is_mixture(layer):
        return OUTPUT_LAYERS[layer].default_components
    return components


def train(layer: str, bin_dir: pathlib.Path, work_dir: pathlib.Path, model: ModelSpec,
          layer_arguments: Sequence[str], criterion: str) -> dict:
    """fairseq-train one output layer; returns its checkpoint, parameters, updates, and the
    training time fairseq reports (its loop, without start-up and model building)."""
    save_dir = work_dir / "checkpoints" / layer
    if save_dir.exists():
        shutil.rmtree(save_dir)
    output = run_tool("train", [
        bin_dir, "--user-dir", PACKAGE_DIR, *model.train_arguments(), *layer_arguments,
        "--criterion", criterion, "--save-dir", save_dir],
        work_dir / "logs" / f"train_{layer}.log", train_progress_printer(layer, model.updates),
        threads=model.threads)
    found = parse_train_log(output)
    return dict(checkpoint=save_dir / "checkpoint_last.pt",
                seconds=found.get("total_seconds", float("nan")),
                parameters=found["parameters"], updates=found["updates"])


def evaluate(layer: str, bin_dir: pathlib.Path, checkpoint: pathlib.Path,
             work_dir: pathlib.Path, model: ModelSpec) -> float:
    """fairseq-eval-lm on the test split; the perplexity fairseq prints."""
    output = run_tool("eval_lm", [
        bin_dir, "--path", checkpoint, "--user-dir", PACKAGE_DIR, "--gen-subset", "test",
        "--tokens-per-sample", model.tokens_per_sample, "--batch-size", 64, "--num-workers", 0,
        "--cpu"], work_dir / "logs" / f"eval_{layer}.log", threads=model.threads)
    match = re.search(r"Loss \(base 2\): [\d.]+, Perplexity: ([\d.]+)", output)
    if not match:
        raise CommandFailed(f"no perplexity in fairseq-eval-lm output for {layer}")
    return float(match.group(1))


# --------------------------------------------------------------------------------------------
# The table


def format_table(results: Sequence[Result], true_perplexity: Optional[float]) -> str:
    """A Markdown table: one row per output layer (and the true model where it is known)."""
    baseline = next((r.perplexity for r in results if r.layer == "softmax"), None)
    lines = ["| output layer | K | test ppl | vs softmax | params | train time | updates |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        change = f"{100 * (r.perplexity / baseline - 1):+.1f}%" if baseline else "-"
        lines.append(f"| {r.layer} | {r.components} | {r.perplexity:.2f} | {change} "
                     f"| {r.parameters:,} | {r.train_seconds:.0f} s | {r.updates} |")
    if true_perplexity is not None:
        lines.append(f"| true model (lower bound) | | {true_perplexity:.2f} | | | | |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The command line


def parse_args(argv: Optional[Sequence[str]] = None,
               prog: str = "python scripts/demo.py") -> argparse.Namespace:
    parser = ArgumentParser(
        prog=prog,
        description="Train the same small LSTM language model with softmax, MoS, Mixtape and "
                    "sigsoftmax output layers (identical budget and seed) through fairseq's "
                    "command-line tools, and compare their test perplexities. Without --data it "
                    "builds a synthetic language whose true log-probability matrix is full rank, "
                    "so a softmax over a d-dimensional state cannot express it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path,
                        help="your own data instead of the synthetic language: a directory with "
                             "raw train.txt, valid.txt, test.txt (one sentence a line, tokens "
                             "separated by spaces), or a fairseq-preprocess'd LM directory "
                             "(dict.txt, train.bin/.idx, test.bin/.idx)")
    parser.add_argument("--work-dir", type=pathlib.Path, default=pathlib.Path("work/demo"),
                        help="where data, checkpoints and logs go")
    parser.add_argument("--layers", default=",".join(DEFAULT_LAYERS),
                        help="comma-separated output layers to compare, from "
                             + ", ".join(OUTPUT_LAYERS))
    parser.add_argument("--updates", type=int, default=ModelSpec.updates,
                        help="training updates per model")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the language and training (>= 0)")
    parser.add_argument("--output-dim", type=int, default=ModelSpec.output_dim,
                        help="E, the output embedding size (softmax and sigsoftmax read the LSTM "
                             "state projected to E; the mixtures read the state itself)")
    parser.add_argument("--hidden-size", type=int, default=ModelSpec.hidden_size,
                        help="LSTM state and input embedding size")
    parser.add_argument("--lr", type=float, default=ModelSpec.lr, help="Adam learning rate")
    parser.add_argument("--batch-size", type=int, default=ModelSpec.batch_size,
                        help=f"sequences of {ModelSpec.tokens_per_sample} tokens per update")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per fairseq process (these models are tiny: one "
                             "thread is fastest, and far faster on a busy machine)")
    parser.add_argument("--components", type=int,
                        help="K for every mixture, a power of two for Mixtape (default: each "
                             "layer's own: MoS 15, Mixtape 4); softmax and sigsoftmax have one")
    parser.add_argument("--mixtape-frequent-tokens", type=float,
                        help="Mixtape's S (a fraction of V or a count); default: every token "
                             "owns its gates on the synthetic language (its words are equally "
                             "frequent, V is small), Mixtape's own default with --data")
    parser.add_argument("--mixtape-gate-dim", type=int,
                        help="Mixtape's gate embedding size d1; default: d, so that the gates "
                             "see no more dimensions than the softmax does")
    synthetic = parser.add_argument_group("synthetic language (ignored with --data)")
    synthetic.add_argument("--vocab-size", type=int, default=LanguageSpec.vocab_size)
    synthetic.add_argument("--successors", type=int, default=LanguageSpec.successors,
                           help="random successors of each word")
    synthetic.add_argument("--train-tokens", type=int, default=200_000)
    synthetic.add_argument("--test-tokens", type=int, default=20_000,
                           help="tokens in each of valid and test")
    args = parser.parse_args(argv)
    check_demo_args(parser, args)
    return args


def check_demo_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad values and combinations before any work (argparse errors naming the flag);
    ``args.layers`` becomes the list of layer names."""
    args.layers = parse_layers(parser, args.layers)
    check_positive(parser, args, ["--updates", "--output-dim", "--hidden-size", "--lr",
                                  "--batch-size", "--threads", "--mixtape-gate-dim",
                                  "--vocab-size", "--successors", "--train-tokens",
                                  "--test-tokens"])
    if args.seed < 0:
        parser.error(f"--seed: got {args.seed}; allowed: a whole number >= 0")
    check_components(parser, args.components, args.layers)
    frequent = args.mixtape_frequent_tokens
    if frequent is not None and not (0 <= frequent < 1 or float(frequent).is_integer()):
        parser.error(f"--mixtape-frequent-tokens: got {frequent:g}; allowed: a fraction in "
                     "[0, 1) of the vocabulary or a whole count >= 1")
    if any(path.exists() and not path.is_dir()
           for path in [args.work_dir, *args.work_dir.parents]):
        parser.error(f"--work-dir: got {str(args.work_dir)!r}, not a directory; allowed: a "
                     "directory, made where it does not exist")
    if args.data is not None:
        check_data_dir(parser, args.data, "--data", [RAW_FILES, BINARIZED_FILES])
        return
    if args.successors > args.vocab_size:
        parser.error(f"--successors: got {args.successors}; allowed: 1 to --vocab-size "
                     f"({args.vocab_size})")
    targets = args.vocab_size + 2  # </s>, <unk> and the words: the tokens that can be targets
    if frequent is not None and frequent >= 1 and frequent > targets:
        parser.error(f"--mixtape-frequent-tokens: got {frequent:g}; allowed: at most {targets} "
                     f"(the tokens that can be targets: --vocab-size words, </s>, <unk>), or a "
                     "fraction in [0, 1)")


def stage(message: str) -> None:
    print(f"\n== {message}", flush=True)


def prepare_data(args) -> Tuple[pathlib.Path, Optional[float]]:
    """The binarized data directory, and the true test perplexity where the language is known."""
    bin_dir = args.work_dir / "data-bin"
    if args.data is not None and is_binarized(args.data):
        stage(f"data: the binarized directory {args.data}")
        return args.data, None
    true_perplexity = None
    if args.data is not None:
        text_dir = args.data
        stage(f"data: raw text from {text_dir}")
    else:
        text_dir = args.work_dir / "text"
        spec = LanguageSpec(vocab_size=args.vocab_size, successors=args.successors,
                            seed=args.seed)
        language = MarkovLanguage.random(spec)
        stage(f"data: synthetic Markov language, V={spec.vocab_size} words, "
              f"{spec.successors} random successors each (+{spec.floor:g} uniform floor)")
        rank = numerical_rank(language.log_prob_matrix())
        print(f"    true log-prob matrix {language.num_states}x{language.num_states}: numerical "
              f"rank {rank}, 99.9%-energy rank "
              f"{centred_effective_rank(language.log_prob_matrix())} "
              f"(a softmax over E={args.output_dim} reaches at most {args.output_dim + 1})",
              flush=True)
        sizes = dict(train=args.train_tokens, valid=args.test_tokens, test=args.test_tokens)
        true_perplexity = write_corpus(language, text_dir, sizes, seed=args.seed)
        print(f"    wrote {text_dir}/{{train,valid,test}}.txt "
              f"({args.train_tokens:,} / {args.test_tokens:,} / {args.test_tokens:,} tokens); "
              f"true model's test perplexity {true_perplexity:.2f}", flush=True)
    stage("preprocess: fairseq-preprocess --only-source")
    start = time.monotonic()
    preprocess(text_dir, bin_dir, args.work_dir / "logs")
    print(f"    {bin_dir} ({dictionary_size(bin_dir)} dictionary entries, "
          f"{time.monotonic() - start:.0f} s)", flush=True)
    return bin_dir, true_perplexity


def main(argv: Optional[Sequence[str]] = None,
         prog: str = "python scripts/demo.py") -> List[Result]:
    args = parse_args(argv, prog)
    started = time.monotonic()
    bin_dir, true_perplexity = prepare_data(args)
    model = ModelSpec(embed_dim=args.hidden_size, hidden_size=args.hidden_size,
                      output_dim=args.output_dim, updates=args.updates,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      threads=args.threads, log_interval=max(1, args.updates // 6))
    frequent = args.mixtape_frequent_tokens
    if frequent is None and args.data is None:  # every token that can be a target owns gates
        frequent = target_tokens(bin_dir)
    results = []
    for layer in args.layers:
        stage(f"train {layer}: fairseq-train --arch {model.arch} --output-layer {layer} "
              f"(E={model.output_dim}, {model.updates} updates, seed {model.seed}, "
              f"--criterion {CRITERION})")
        trained = train(layer, bin_dir, args.work_dir, model,
                        output_layer_arguments(layer, args.components, frequent,
                                               args.mixtape_gate_dim or model.output_dim),
                        CRITERION)
        print(f"    eval {layer}: fairseq-eval-lm --gen-subset test", flush=True)
        perplexity = evaluate(layer, bin_dir, trained["checkpoint"], args.work_dir, model)
        results.append(Result(layer, components_of(layer, args.components), perplexity,
                              trained["parameters"], trained["seconds"], trained["updates"]))
        print(f"    {layer}: test perplexity {perplexity:.2f} "
              f"(training {trained['seconds']:.0f} s)", flush=True)
    total_seconds = time.monotonic() - started
    stage(f"results: test perplexity from fairseq-eval-lm (total {total_seconds:.0f} s; logs in "
          f"{args.work_dir / 'logs'})")
    print(format_table(results, true_perplexity), flush=True)
    return results


def cli() -> None:
    """The console script (its return value would become the exit status)."""
    main(prog="fairseq-mixtape-demo")
