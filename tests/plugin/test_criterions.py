"""The chunked criterions against fairseq's own, on tiny real models of every family."""

import math

import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.logging import metrics

from fairseq_mixtape.criterions import (OutputLayerCrossEntropyCriterion,
                                        OutputLayerLabelSmoothedCrossEntropyCriterion)
from fairseq_mixtape import losses as chunked
from fairseq_mixtape.losses import (default_chunk_tokens, rows_per_chunk,
                                                token_losses)
from fairseq_mixtape.models import output_layer_of
from fairseq_mixtape.output_layers import OutputLayerConfig, build_output_layer
from helpers import (LAYERS, MIXTURES, TINY_LSTM, TINY_LSTM_LM, TINY_TRANSFORMER,
                     TINY_TRANSFORMER_LM, PeakMemory, assert_same_gradient, batch, build_from_args,
                     build_model, make_lm_data, make_mt_data)

LM = ["--task", "language_modeling", "--tokens-per-sample", "16", "--sample-break-mode", "eos"]
FAMILIES = {  # family -> (corpus, arguments); the criterion flags are checked in test_flags
    "transformer": ("mt", ["--task", "translation", "--arch", "transformer_mos",
                           "--share-all-embeddings", *TINY_TRANSFORMER,
                           "--criterion", "output_layer_label_smoothed_cross_entropy",
                           "--label-smoothing", "0.1", "--output-chunk-tokens", "32",
                           "--ignore-prefix-size", "1", "--report-accuracy", "--sentence-avg"]),
    "lstm": ("mt", ["--task", "translation", "--arch", "lstm_mos", *TINY_LSTM]),
    "transformer_lm": ("lm", [*LM, "--arch", "transformer_lm_mos", *TINY_TRANSFORMER_LM]),
    "lstm_lm": ("lm", [*LM, "--arch", "lstm_lm_mos", "--share-decoder-input-output-embed",
                       *TINY_LSTM_LM, "--criterion", "output_layer_cross_entropy"]),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; several contend on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    """family -> what fairseq-train builds from its arguments (parsed once, on first use)."""
    root = tmp_path_factory.mktemp("data")
    corpora, built = {}, {}

    def get(family):
        if family not in built:
            corpus, argv = FAMILIES[family]
            if corpus not in corpora:
                corpora[corpus] = (make_mt_data if corpus == "mt" else make_lm_data)(root)
            built[family] = build_from_args([str(corpora[corpus]), *argv])
        return built[family]

    return get


def model_and_sample(parsed, family, layer, size=6, **options):
    built = parsed(family)
    torch.manual_seed(0)
    model = build_model(built, output_layer=layer, **options)
    return built.task, model, batch(built.task, size=size)


def run(criterion, model, sample, **kwargs):
    """loss, sample_size, logging_output and the gradient of every parameter."""
    model.zero_grad()
    loss, sample_size, logging_output = criterion(model, sample, **kwargs)
    loss.sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), sample_size, logging_output, grads


def assert_same(ours, theirs):
    loss, sample_size, logging_output, grads = ours
    ref_loss, ref_sample_size, ref_logging_output, ref_grads = theirs
    assert sample_size == ref_sample_size
    assert torch.allclose(loss, ref_loss.view_as(loss), rtol=1e-5, atol=1e-5)
    for key, value in ref_logging_output.items():
        ours, theirs = (torch.as_tensor(v).float() for v in (logging_output[key], value))
        assert torch.allclose(ours, theirs.view_as(ours), rtol=1e-5, atol=1e-5), key
    assert grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        assert_same_gradient(grads[name], grad, name)


# ------------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("layer", LAYERS)
def test_same_loss_and_gradients_as_fairseq(parsed, family, layer):
    task, model, sample = model_and_sample(parsed, family, layer)
    model.train()  # dropout is 0: deterministic, but the training code paths
    assert sample["target"].eq(task.target_dictionary.pad()).any() or family.endswith("lm")
    ours = OutputLayerCrossEntropyCriterion(task, sentence_avg=False, output_chunk_tokens=1)
    assert_same(run(ours, model, sample), run(CrossEntropyCriterion(task, False), model, sample))
    smoothed = dict(label_smoothing=0.1, ignore_prefix_size=1, report_accuracy=True)
    for sentence_avg, chunk_tokens in [(False, 30), (True, 0)]:  # chunks of 2-3 rows, none
        ours = OutputLayerLabelSmoothedCrossEntropyCriterion(
            task, sentence_avg, output_chunk_tokens=chunk_tokens, **smoothed)
        theirs = LabelSmoothedCrossEntropyCriterion(task, sentence_avg, **smoothed)
        assert_same(run(ours, model, sample), run(theirs, model, sample))


@pytest.mark.parametrize("family", ["transformer", "transformer_lm"])
def test_linear_cross_entropy_is_fairseq_cross_entropy(parsed, family):
    """--linear-cross-entropy (softmax): fairseq's loss and gradients, summed and per position,
    with a per-token bias too."""
    for bias in (False, True):
        task, model, sample = model_and_sample(parsed, family, "softmax", output_bias=bias)
        ours = OutputLayerCrossEntropyCriterion(task, False, linear_cross_entropy=True)
        theirs = CrossEntropyCriterion(task, False)
        assert_same(run(ours, model, sample), run(theirs, model, sample))
        unreduced, _, _ = ours(model, sample, reduce=False)
        reference, _, _ = theirs(model, sample, reduce=False)
        assert torch.allclose(unreduced, reference.view_as(unreduced), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options,flag", [
    (dict(label_smoothing=0.1), "--linear-cross-entropy with --label-smoothing: got 0.1"),
    (dict(report_accuracy=True), "--linear-cross-entropy with --report-accuracy: got True"),
])
def test_linear_cross_entropy_refuses_what_it_cannot_give(parsed, options, flag):
    with pytest.raises(ValueError, match=flag):
        OutputLayerLabelSmoothedCrossEntropyCriterion(parsed("transformer").task, False,
                                                      linear_cross_entropy=True, **options)
    task, model, sample = model_and_sample(parsed, "transformer", "sigsoftmax")
    criterion = OutputLayerCrossEntropyCriterion(task, False, linear_cross_entropy=True)
    with pytest.raises(ValueError, match="--output-layer: got 'sigsoftmax'; allowed: softmax"):
        criterion(model, sample)


def test_unreduced_losses_are_fairseq_per_position_losses(parsed):
    task, model, sample = model_and_sample(parsed, "transformer", "mos")
    ours = OutputLayerCrossEntropyCriterion(task, sentence_avg=False, output_chunk_tokens=1)
    loss, _, _ = ours(model, sample, reduce=False)
    ref_loss, _, _ = CrossEntropyCriterion(task, False)(model, sample, reduce=False)
    assert loss.shape == ref_loss.shape == (sample["target"].numel(),)
    assert torch.allclose(loss, ref_loss, atol=1e-5)


def test_chunked_without_gradients_for_validation(parsed):
    task, model, sample = model_and_sample(parsed, "lstm_lm", "mos")
    model.eval()
    with torch.no_grad():
        losses = [OutputLayerCrossEntropyCriterion(task, False, output_chunk_tokens=chunk)(
            model, sample)[0] for chunk in (0, 1)]
    assert not losses[1].requires_grad and torch.allclose(*losses)


def test_rows_per_chunk():
    assert rows_per_chunk(8, 12, 0) == 8       # 0: one chunk
    assert rows_per_chunk(8, 12, 1) == 1       # a single sequence is the smallest chunk
    assert rows_per_chunk(8, 12, 36) == 3
    assert rows_per_chunk(8, 12, 4096) == 8
    assert rows_per_chunk(3, 0, 10) == 3


def test_default_chunks_keep_a_chunks_scores_to_2_to_the_27():
    """Unset --output-chunk-tokens: 4096 positions up to V = 32K, 2^27 / V above (V = 256K:
    512 positions, one 512-token sequence of a batch per chunk)."""
    assert [default_chunk_tokens(V) for V in (10, 10_000, 32_000, 32_768, 65_536, 256_000,
                                              2 ** 28)] == [4096, 4096, 4096, 4096, 2048, 524, 1]
    assert rows_per_chunk(8, 512, default_chunk_tokens(256_000)) == 1


@pytest.mark.parametrize("layer,components", [("mixtape", 1), ("mos", 3)])
def test_unset_chunks_follow_the_scores_per_position(parsed, monkeypatch, layer, components):
    """The criterion's default resolves per model, from its scores per position (V; MoS:
    K x V): with 2^27 scaled down to T x V x K entries, every chunk token_losses sees is one
    sequence of length T; scaled to T x V x K - 1, still one (a chunk holds at least one);
    scaled to 2 T x V x K, two."""
    options = {"output_components": components} if layer == "mos" else {}
    task, model, sample = model_and_sample(parsed, "transformer_lm", layer, size=4, **options)
    rows, length = sample["target"].shape
    scores = length * len(task.target_dictionary) * components
    assert output_layer_of(model).scores_per_position * length == scores
    seen = []

    def spy(layer, features, *args, **kwargs):
        seen.append(features.shape[0])
        return token_losses(layer, features, *args, **kwargs)

    monkeypatch.setattr(chunked, "token_losses", spy)
    for chunk_scores, per_chunk in [(scores, 1), (scores - 1, 1), (2 * scores, 2)]:
        seen.clear()
        monkeypatch.setattr(chunked, "CHUNK_SCORES", chunk_scores)
        OutputLayerCrossEntropyCriterion(task, False)(model, sample)
        assert seen == [per_chunk] * (rows // per_chunk)


# ------------------------------------------------------------------------------- memory, dropout
def test_chunks_bound_peak_memory_in_forward_and_backward(parsed):
    """MoS with K=15: the (N, K, V) activations of one sequence at a time, also in backward."""
    task, model, sample = model_and_sample(parsed, "transformer", "mos", size=8,
                                           output_components=15)
    tokens, vocab = sample["target"].numel(), len(task.target_dictionary)
    results, peaks = [], []
    for chunk_tokens in [0, 1]:
        criterion = OutputLayerCrossEntropyCriterion(task, False, output_chunk_tokens=chunk_tokens)
        with PeakMemory() as memory:
            results.append(run(criterion, model, sample))
        peaks.append(memory.peak)
    unchunked, chunked = peaks
    assert unchunked > 2 * tokens * 15 * vocab * 4  # several (N, K, V) float32 tensors at once
    assert chunked < 0.4 * unchunked
    assert_same(*results)


MIXTAPE_REGULARISERS = dict(output_context_dropout=0.3, mixtape_gate_dropout=0.3,
                            mixtape_gate_noise=0.5)


@pytest.mark.parametrize("layer,options", [("mos", dict(output_context_dropout=0.5)),
                                           ("mixtape", MIXTAPE_REGULARISERS)])
def test_random_draws_are_recomputed_identically(parsed, layer, options):
    """Backward recomputes each checkpointed chunk with the RNG state of its forward pass: the
    gradient is that of the loss with the forward's draws (MoS: context dropout; Mixtape: context
    and gate dropout, one mask per sequence, and gate noise), as in the same chunks computed
    without checkpoints under the same seed."""
    task, model, sample = model_and_sample(parsed, "transformer", layer, **options)
    model.train()
    output_layer = output_layer_of(model)
    assert output_layer.context_dropout > 0
    if layer == "mixtape":
        assert (output_layer.gate_dropout, output_layer.gate_noise) == (0.3, 0.5)
        assert output_layer.frequent > 0
    criterion = OutputLayerCrossEntropyCriterion(task, False, output_chunk_tokens=1)
    torch.manual_seed(1)
    loss, _, _, grads = run(criterion, model, sample)

    torch.manual_seed(1)  # the same computation by hand: one sequence at a time, no checkpoints
    model.zero_grad()
    features, _ = model(**sample["net_input"], features_only=True)
    target, pad = sample["target"], task.target_dictionary.pad()
    ref_loss = sum(token_losses(output_layer, features[i:i + 1], target[i:i + 1], pad, False,
                                False).nll.sum() for i in range(len(target)))
    ref_loss.backward()
    assert torch.allclose(loss, ref_loss.detach(), rtol=1e-6)
    for name, p in model.named_parameters():
        assert_same_gradient(grads[name], p.grad, name)

    torch.manual_seed(2)  # and the draws do matter: other draws, another loss
    assert not torch.allclose(criterion(model, sample)[0], loss)


# ------------------------------------------------------------------------------- statistics
def reduced(logging_outputs, criterion_class=OutputLayerCrossEntropyCriterion):
    with metrics.aggregate() as aggregation:
        criterion_class.reduce_metrics(logging_outputs)
    return aggregation.get_smoothed_values()


@pytest.mark.parametrize("layer", LAYERS)
def test_mixture_statistics(parsed, layer):
    task, model, sample = model_and_sample(parsed, "transformer", layer)
    criterion = OutputLayerCrossEntropyCriterion(task, False, ignore_prefix_size=1,
                                                 report_accuracy=True)
    _, _, logging_output = criterion(model, sample)
    logged = reduced([logging_output, logging_output])  # as from two workers, or update-freq 2
    assert {"loss", "nll_loss", "ppl", "accuracy"} <= logged.keys()
    if layer not in MIXTURES:
        assert not [key for key in logging_output if key.startswith("mixture")]
        return
    with torch.no_grad():
        features, _ = model(**sample["net_input"], features_only=True)
        priors = output_layer_of(model).gate_priors(features[:, 1:])        # (B, T-1, K)
    priors = priors[sample["target"][:, 1:].ne(task.target_dictionary.pad())]  # (n, K)
    K = priors.shape[-1]
    assert K == {"mos": 15, "mixtape": 4, "mos_sigsoftmax": 15}[layer]
    weights = [f"mixture_weight_{k:02d}" if K > 10 else f"mixture_weight_{k}" for k in range(K)]
    entropy = -(priors * priors.log()).sum(-1)
    assert logging_output["mixture_positions"] == len(priors)
    assert torch.allclose(logging_output["mixture_entropy"], entropy.sum(), rtol=1e-5)
    assert torch.allclose(torch.stack([logging_output[key] for key in weights]), priors.sum(0),
                          rtol=1e-5)
    bits = entropy.mean().item() / math.log(2)
    assert math.isclose(logged["mixture_entropy"], bits, abs_tol=1e-3)
    assert 0 < logged["mixture_entropy"] <= math.log2(K)
    assert math.isclose(sum(logged[key] for key in weights), 1.0, abs_tol=K * 1e-3)


def test_entropy_of_one_hot_weights_is_exactly_zero(parsed):
    task, model, sample = model_and_sample(parsed, "lstm_lm", "mos", output_components=3)
    with torch.no_grad():
        output_layer_of(model).prior.weight.zero_()[0] = 1e4  # pi = one-hot (exact 0s)
    _, _, logging_output = OutputLayerCrossEntropyCriterion(task, False)(model, sample)
    assert logging_output["mixture_entropy"] == 0
    assert logging_output["mixture_weight_1"] + logging_output["mixture_weight_2"] < 1e-3


# ------------------------------------------------------------------------------- stock fairseq
@pytest.mark.parametrize("family", ["transformer", "lstm_lm"])
@pytest.mark.parametrize("layer", LAYERS)
def test_stock_criterions_work_with_every_layer(parsed, family, layer):
    task, model, sample = model_and_sample(parsed, family, layer)
    net_output = model(**sample["net_input"])
    lprobs = model.get_normalized_probs(net_output, log_probs=True)         # (B, T, V)
    assert torch.allclose(lprobs.exp().sum(-1), torch.ones(lprobs.shape[:-1]), atol=1e-5)
    for criterion in [CrossEntropyCriterion(task, False),
                      LabelSmoothedCrossEntropyCriterion(task, False, 0.1)]:
        model.zero_grad()
        loss, sample_size, _ = criterion(model, sample)
        assert torch.isfinite(loss) and sample_size == sample["ntokens"]
        loss.backward()
        for name, p in output_layer_of(model).named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------- flags, errors
def test_flags(parsed):
    criterion = parsed("transformer").criterion
    assert type(criterion) is OutputLayerLabelSmoothedCrossEntropyCriterion
    assert (criterion.eps, criterion.output_chunk_tokens, criterion.ignore_prefix_size,
            criterion.report_accuracy, criterion.sentence_avg) == (0.1, 32, 1, True, True)
    criterion = parsed("lstm_lm").criterion
    assert type(criterion) is OutputLayerCrossEntropyCriterion
    assert (criterion.eps, criterion.output_chunk_tokens, criterion.sentence_avg) == (0, None,
                                                                                      False)


@pytest.mark.parametrize("options,flag", [
    (dict(output_chunk_tokens=-1), "--output-chunk-tokens"),
    (dict(output_chunk_tokens=2.5), "--output-chunk-tokens"),
    (dict(output_chunk_tokens=True), "--output-chunk-tokens"),
    (dict(ignore_prefix_size=0.5), "--ignore-prefix-size"),
    (dict(label_smoothing=1.0), "--label-smoothing"),
    (dict(ignore_prefix_size=-1), "--ignore-prefix-size"),
])
def test_bad_flags_name_the_flag(parsed, options, flag):
    with pytest.raises(ValueError, match=flag):
        OutputLayerLabelSmoothedCrossEntropyCriterion(parsed("lstm").task, False, **options)


@pytest.mark.parametrize("family,stock", [
    ("transformer", {}),
    ("lstm", dict(share_decoder_input_output_embed=True)),  # a decoder without fc_out
])
def test_model_without_output_layer_gets_a_clear_error(parsed, family, stock):
    built = parsed(family)
    arch = family  # fairseq's own architecture, without the plugin's output layer
    model = build_model(built, arch=arch, _name=arch, **stock)
    assert type(model).__name__ in ("TransformerModel", "LSTMModel")
    sample = batch(built.task)
    for criterion in [OutputLayerCrossEntropyCriterion(built.task, False),
                      OutputLayerLabelSmoothedCrossEntropyCriterion(built.task, False,
                                                                    label_smoothing=0.1)]:
        with pytest.raises(ValueError) as error:
            criterion(model, sample)
        message = str(error.value)
        assert f"--criterion {criterion.name}: {type(model).__name__} has no" in message
        assert "--arch *_mixtape" in message and "label_smoothed_cross_entropy" in message


# ------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("layer", LAYERS)
def test_smoothing_term_is_finite_on_extreme_features(layer):
    """Label smoothing sums log p over the whole vocabulary: every layer's log p is finite."""
    cfg = OutputLayerConfig(output_layer=layer, output_bias=True)
    output_layer = build_output_layer(cfg, input_dim=8, num_tokens=50)
    with torch.no_grad():
        for p in output_layer.parameters():
            p.normal_(std=30.0)
    features = torch.randn(3, 5, 8) * 1e3
    target = torch.randint(2, 50, (3, 5))
    losses = token_losses(output_layer, features, target, padding_idx=1, smooth=True, predict=True)
    assert torch.isfinite(losses.smooth).all() and torch.isfinite(losses.nll).all()
    assert (losses.smooth >= 0).all() and (losses.nll >= 0).all()
    lprobs = F.log_softmax(output_layer(features).float(), -1)
    assert torch.equal(losses.predicted, lprobs.argmax(-1))


@pytest.mark.parametrize("layer", ["mos", "mos_sigsoftmax"])
def test_mos_losses_without_smoothing_skip_the_whole_mixture(layer, monkeypatch):
    """Without label smoothing or accuracy the MoS layers' loss comes from ``target_log_probs``,
    not from the (b, T, V) mixture of ``forward``: the same -log p(target), 0 at padding."""
    output_layer = build_output_layer(OutputLayerConfig(output_layer=layer), input_dim=8,
                                      num_tokens=50)
    features, target = torch.randn(3, 5, 8), torch.randint(2, 50, (3, 5))
    target[0, -1] = 1  # padding
    whole = token_losses(output_layer, features, target, padding_idx=1, smooth=True,
                         predict=False).nll
    monkeypatch.setattr(output_layer, "forward",
                        lambda *_: pytest.fail("the whole mixture was computed"))
    alone = token_losses(output_layer, features, target, padding_idx=1, smooth=False,
                         predict=False)
    assert alone.smooth is None and alone.predicted is None and alone.nll[0, -1] == 0
    assert torch.allclose(alone.nll, whole, rtol=1e-5, atol=1e-6)
