"""Cross-entropy criterions for models with a fairseq-mixtape output layer, computed over chunks.

    --criterion output_layer_cross_entropy
    --criterion output_layer_label_smoothed_cross_entropy --label-smoothing 0.1

They give fairseq's ``cross_entropy`` / ``label_smoothed_cross_entropy`` loss, sample size and
nll_loss (and ``--ignore-prefix-size``, ``--report-accuracy``), but run the output layer on the
decoder features chunk by chunk under activation checkpointing (``chunked``), which bounds the
memory of the N x K x V mixture activations, and log the mixture weights' statistics
(``statistics``).
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.dataclass import FairseqDataclass
from omegaconf import II

from ..models.wiring import output_layer_of
from ..output_layers import Softmax
from ..output_layers.base import check_option, is_whole
from ..losses import TokenLosses, chunked_token_losses, linear_cross_entropy_losses
from .statistics import log_mixture_statistics, mixture_statistics


@dataclass
class OutputLayerCrossEntropyConfig(FairseqDataclass):
    output_chunk_tokens: Optional[int] = field(
        default=None,
        metadata={"help": "run the output layer and the loss on chunks of whole sequences of "
                          "about this many target positions (padding included; at least one "
                          "sequence), each recomputed in backward, so that only one chunk's "
                          "output-layer activations (MoS: positions x K x V) exist at a time; "
                          "0: the whole batch at once; unset: 4096, or 2^27 / V where the "
                          "vocabulary V is over 32K (V = 256K: 524; MoS: 2^27 / (K x V))"})
    linear_cross_entropy: bool = field(
        default=False,
        metadata={"help": "softmax layer, without label smoothing or --report-accuracy: the "
                          "loss by torch's F.linear_cross_entropy (torch >= 2.13), which never "
                          "keeps a positions x V logits tensor (less memory, the same loss; on "
                          "CPU several times slower at large V: benchmarks/README.md)"})
    ignore_prefix_size: int = field(
        default=0, metadata={"help": "ignore the first N target positions of every sequence"})
    report_accuracy: bool = field(
        default=False, metadata={"help": "report the accuracy of the most probable token"})
    sentence_avg: bool = II("optimization.sentence_avg")


@dataclass
class OutputLayerLabelSmoothedCrossEntropyConfig(OutputLayerCrossEntropyConfig):
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "epsilon for label smoothing, 0 means no label smoothing (as in "
                          "label_smoothed_cross_entropy: weight eps/(V-1) on each other token)"})


def check_linear_cross_entropy(label_smoothing: float, report_accuracy: bool):
    """--linear-cross-entropy gives the plain loss only: torch's smoothing is eps/V per token,
    not fairseq's eps/(V-1), and it gives no argmax."""
    check_option(hasattr(F, "linear_cross_entropy"), "--linear-cross-entropy", torch.__version__,
                 "torch >= 2.13, which has F.linear_cross_entropy")
    check_option(label_smoothing == 0, "--linear-cross-entropy with --label-smoothing",
                 label_smoothing, "0 (fairseq's smoothing is computed on the logits)")
    check_option(not report_accuracy, "--linear-cross-entropy with --report-accuracy", True,
                 "off (the argmax needs the logits)")


@register_criterion("output_layer_cross_entropy", dataclass=OutputLayerCrossEntropyConfig)
class OutputLayerCrossEntropyCriterion(FairseqCriterion):
    """-sum_t log p(y_t | context) over non-padding targets, the output layer run in chunks.

    With ``label_smoothing`` eps > 0 (the label-smoothed subclass), fairseq's smoothed loss:
    (1 - eps - eps_i) nll + eps_i sum_x -log p(x), eps_i = eps / (V - 1).
    """

    name = "output_layer_cross_entropy"

    def __init__(self, task, sentence_avg, output_chunk_tokens=None, ignore_prefix_size=0,
                 report_accuracy=False, label_smoothing=0.0, linear_cross_entropy=False):
        super().__init__(task)
        if linear_cross_entropy:
            check_linear_cross_entropy(label_smoothing, report_accuracy)
        self.linear_cross_entropy = linear_cross_entropy
        check_option(output_chunk_tokens is None or (is_whole(output_chunk_tokens)
                                                     and output_chunk_tokens >= 0),
                     "--output-chunk-tokens", output_chunk_tokens,
                     "0 (no chunks), a number of target positions per chunk, or unset (4096, "
                     "fewer at large vocabularies)")
        check_option(is_whole(ignore_prefix_size) and ignore_prefix_size >= 0,
                     "--ignore-prefix-size", ignore_prefix_size,
                     "an integer >= 0")
        check_option(0.0 <= label_smoothing < 1.0, "--label-smoothing", label_smoothing,
                     "a probability in [0, 1)")
        self.sentence_avg = sentence_avg
        self.output_chunk_tokens = output_chunk_tokens
        self.ignore_prefix_size = ignore_prefix_size
        self.report_accuracy = report_accuracy
        self.eps = label_smoothing

    def output_layer(self, model):
        """The model's OutputLayer, or a ValueError that says what to use instead."""
        try:
            return output_layer_of(model)
        except ValueError as error:
            raise ValueError(
                f"--criterion {self.name}: {type(model).__name__} has no fairseq-mixtape output "
                "layer; use one of the plugin's architectures (--arch *_mixtape, *_mos, any "
                "--output-layer; with --user-dir fairseq_mixtape), or for other models fairseq's "
                "cross_entropy or label_smoothed_cross_entropy") from error

    def forward(self, model, sample, reduce=True):
        """Compute the loss for the given sample: (loss, sample_size, logging_output)."""
        layer = self.output_layer(model)
        features, extra = model(**sample["net_input"], features_only=True)    # (B, T, C)
        target = model.get_targets(sample, (features, extra))                 # (B, T)
        if self.ignore_prefix_size > 0:
            features = features[:, self.ignore_prefix_size:]
            target = target[:, self.ignore_prefix_size:]
        if self.linear_cross_entropy:
            losses = linear_cross_entropy_losses(self.softmax_layer(layer), features, target,
                                                 self.padding_idx, reduce)
        else:
            losses = chunked_token_losses(layer, features, target, self.padding_idx,
                                          self.output_chunk_tokens, smooth=self.eps > 0,
                                          predict=self.report_accuracy)
        loss, nll_loss = self.combine(losses, layer.num_tokens, reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        mask = target.ne(self.padding_idx)                                    # (B, T)
        if self.report_accuracy:
            correct = losses.predicted.eq(target).logical_and(mask)
            logging_output["n_correct"] = utils.item(correct.sum())
            logging_output["total"] = utils.item(mask.sum())
        logging_output.update(mixture_statistics(layer, features, mask))
        return loss, sample_size, logging_output

    @staticmethod
    def softmax_layer(layer):
        check_option(type(layer) is Softmax, "--linear-cross-entropy with --output-layer",
                     layer.name, "softmax only (a single softmax over g . w_x + b_x)")
        return layer

    def combine(self, losses: TokenLosses, vocab_size: int, reduce: bool):
        """(loss, nll_loss): summed, or per position (B*T,) without ``reduce``, as fairseq's
        ``label_smoothed_nll_loss`` combines them (plain nll where eps = 0)."""
        nll, smooth = losses.nll.reshape(-1), losses.smooth
        if reduce:
            nll = nll.sum()
        if self.eps == 0:
            return nll, nll
        smooth = smooth.reshape(-1).sum() if reduce else smooth.reshape(-1)
        eps_i = self.eps / (vocab_size - 1)
        return (1.0 - self.eps - eps_i) * nll + eps_i * smooth, nll

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """loss and nll_loss (bits per token), ppl and accuracy as label_smoothed_cross_entropy
        logs them, and the mixture statistics."""
        LabelSmoothedCrossEntropyCriterion.reduce_metrics(logging_outputs)
        log_mixture_statistics(logging_outputs)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


@register_criterion("output_layer_label_smoothed_cross_entropy",
                    dataclass=OutputLayerLabelSmoothedCrossEntropyConfig)
class OutputLayerLabelSmoothedCrossEntropyCriterion(OutputLayerCrossEntropyCriterion):
    """output_layer_cross_entropy with ``--label-smoothing``, as label_smoothed_cross_entropy."""

    name = "output_layer_label_smoothed_cross_entropy"
