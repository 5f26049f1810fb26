"""--compile-output-layer: compiled results equal eager ones, fairseq's varying batch shapes do
not recompile, randomness stays deterministic for a seed, and where compiling fails the layer
falls back to eager with a warning naming the flag.

torch.compile (inductor) generates and builds C++ kernels on first use: each compiled graph
costs seconds, so these tests use small layers and few graphs.
"""

import copy
import logging

import pytest
import torch

from fairseq.criterions.cross_entropy import CrossEntropyCriterion

from fairseq_mixtape import compiled
from fairseq_mixtape.criterions.cross_entropy import (
    OutputLayerCrossEntropyCriterion, OutputLayerLabelSmoothedCrossEntropyCriterion)
from fairseq_mixtape.models.wiring import output_layer_of
from helpers import (FIXTURES, LAYERS, TINY_TRANSFORMER, assert_same_gradient, batch,
                     build_from_args, build_model, load_checkpoint, make_mt_data,
                     with_saved_flags)
from layers import build_layer

SHAPES = [(3, 7), (5, 2), (1, 11), (4, 9)]  # (batch, length) as fairseq's batches vary


@pytest.fixture(autouse=True)
def fresh_compiler():
    """Graphs are kept per code object, shared by all layers of a class: start each test
    without them (and one thread, as tiny layers run fastest)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(threads)


def small_layer(name):
    """d = 16, V = 60, K = 2 for the mixtures; Mixtape with gate slots of its own."""
    layer = build_layer(name, 16, 60, output_components=2)
    if hasattr(layer, "gate_embed"):
        assert layer.frequent > 0
    return layer


def outputs_and_gradients(layer, features):
    features = features.clone().requires_grad_()
    layer.zero_grad()
    scores = layer(features)
    (scores * torch.linspace(-1, 1, scores.shape[-1])).sum().backward()
    grads = [features.grad] + [p.grad.clone() for p in layer.parameters()]
    return scores.detach(), grads


@pytest.mark.parametrize("name", LAYERS)
def test_compiled_layer_equals_eager(name):
    """Scores and gradients (features and parameters) of the compiled layer are the eager
    layer's within float32 tolerance, over batches of varied shapes, in training and eval."""
    eager = small_layer(name)
    compiled_layer = copy.deepcopy(eager).compile_forward()
    assert compiled_layer.state_dict().keys() == eager.state_dict().keys()
    for shape in SHAPES:
        features = torch.randn(*shape, 16) * 3
        ours, our_grads = outputs_and_gradients(compiled_layer, features)
        theirs, their_grads = outputs_and_gradients(eager, features)
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)
        for a, b in zip(our_grads, their_grads):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    compiled_layer.eval()
    eager.eval()
    with torch.no_grad():
        features = torch.randn(2, 3, 16)
        assert torch.allclose(compiled_layer(features), eager(features), rtol=1e-5, atol=1e-5)
    assert compiled_layer.compiled_forward.failure is None


def unique_graphs():
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_varied_batch_shapes_do_not_recompile():
    """Dynamic shapes: one graph for a run of 12 batch shapes (training, with gradients). torch
    specialises sizes of 1, so a batch of one sequence, or of length one (incremental decoding),
    adds a graph each: at most 4 per mode, however many shapes follow."""
    layer = small_layer("softmax").compile_forward()
    before = unique_graphs()
    for batch_size, length in [(b, t) for b in (2, 3, 8) for t in (2, 5, 13, 40)]:
        layer(torch.randn(batch_size, length, 16, requires_grad=True)).sum().backward()
    assert unique_graphs() - before == 1
    for batch_size, length in [(1, 5), (4, 1), (1, 1), (1, 9), (7, 1), (6, 3)]:
        layer(torch.randn(batch_size, length, 16, requires_grad=True)).sum().backward()
    assert unique_graphs() - before == 4
    assert layer.compiled_forward.failure is None


def test_recompile_limit_falls_back_to_eager(monkeypatch, caplog):
    """Past the recompilation limit, one warning naming the flag, then eager results."""
    monkeypatch.setattr(compiled, "RECOMPILE_LIMIT", 1)
    layer = small_layer("softmax").compile_forward()
    layer(torch.randn(2, 3, 16))          # the one graph allowed
    features = torch.randn(1, 3, 16)      # a batch of one sequence would be a second graph
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        scores = layer(features)
    assert "FailOnRecompileLimitHit" in layer.compiled_forward.failure
    assert [r.getMessage() for r in caplog.records if "--compile-output-layer" in r.getMessage()]
    assert torch.equal(scores, layer.forward(features))
    caplog.clear()
    layer(features)                       # eager from now on, without more warnings
    assert not caplog.records


def test_compiler_failure_falls_back_to_eager(caplog):
    """A backend that fails: a warning naming the flag and the reason, then eager results."""
    def failing_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler here")

    layer = small_layer("mixtape").compile_forward()
    layer.compiled_forward.compiled = torch.compile(layer.forward, backend=failing_backend)
    features = torch.randn(2, 3, 16)
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        scores = layer(features)
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "--compile-output-layer" in message and "no C++ compiler here" in message
    assert torch.equal(scores, layer.forward(features))


def test_torch_compile_itself_raising_falls_back_to_eager(monkeypatch, caplog):
    """Where torch.compile cannot run at all (it raises when called, as an older torch does on a
    newer Python), the layer builds with a warning naming the flag, and runs eagerly."""
    def unavailable(*args, **kwargs):
        raise RuntimeError("torch.compile is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unavailable)
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        layer = small_layer("mixtape").compile_forward()
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "--compile-output-layer" in message and "not supported on this Python" in message
    features = torch.randn(2, 3, 16)
    assert torch.equal(layer(features), layer.forward(features))


@pytest.fixture(scope="module")
def translation(tmp_path_factory):
    """A tiny translation task and model arguments, with --compile-output-layer."""
    data = make_mt_data(tmp_path_factory.mktemp("data"))
    return build_from_args([str(data), "--task", "translation", "--arch", "transformer_mixtape",
                            "--share-all-embeddings", *TINY_TRANSFORMER,
                            "--output-components", "2", "--mixtape-gate-dim", "4",
                            "--mixtape-frequent-tokens", "6", "--compile-output-layer"])


def loss_and_grads(criterion, model, sample):
    model.zero_grad()
    loss, _, logging_output = criterion(model, sample)
    loss.backward()
    return loss.detach(), logging_output, {n: p.grad.clone() for n, p in model.named_parameters()
                                           if p.grad is not None}


def test_compiled_criterion_equals_fairseq(translation):
    """Through the flag: the plugin criterion, with chunks under activation checkpointing, label
    smoothing and accuracy, compiled, gives fairseq's stock loss and gradients (eager model)."""
    assert translation.cfg.model.compile_output_layer
    task = translation.task
    model = translation.model
    assert output_layer_of(model).compiled_forward is not None
    eager = build_model(translation, compile_output_layer=False)
    eager.load_state_dict(model.state_dict())
    assert output_layer_of(eager).compiled_forward is None
    model.train()
    eager.train()
    sample = batch(task, size=6)
    options = dict(label_smoothing=0.1, report_accuracy=True, output_chunk_tokens=30)
    ours = loss_and_grads(OutputLayerLabelSmoothedCrossEntropyCriterion(task, False, **options),
                          model, sample)
    from fairseq.criterions.label_smoothed_cross_entropy import (
        LabelSmoothedCrossEntropyCriterion)
    theirs = loss_and_grads(LabelSmoothedCrossEntropyCriterion(
        task, False, label_smoothing=0.1, report_accuracy=True), eager, sample)
    assert torch.allclose(ours[0], theirs[0], rtol=1e-5)
    assert ours[1]["n_correct"] == theirs[1]["n_correct"]
    for name, grad in theirs[2].items():
        assert_same_gradient(ours[2][name], grad, name)
    # the stock criterion calls the (compiled) layer itself
    stock = loss_and_grads(CrossEntropyCriterion(task, False), model, sample)
    reference = loss_and_grads(CrossEntropyCriterion(task, False), eager, sample)
    assert torch.allclose(stock[0], reference[0], rtol=1e-5)
    assert output_layer_of(model).compiled_forward.failure is None


def test_compiled_regularisers_are_deterministic_for_a_seed(translation):
    """With context and gate dropout and gate noise on, compiled and chunked: training works
    (finite loss, gradients), the same seed gives the same loss and gradients, another seed
    another loss."""
    task = translation.task
    model = build_model(translation, output_context_dropout=0.3, mixtape_gate_dropout=0.3,
                        mixtape_gate_noise=0.5)
    model.train()
    sample = batch(task, size=6)
    criterion = OutputLayerCrossEntropyCriterion(task, False, output_chunk_tokens=30)
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(loss_and_grads(criterion, model, sample))
    assert torch.isfinite(runs[0][0])
    assert torch.equal(runs[0][0], runs[1][0])
    for name, grad in runs[0][2].items():
        assert torch.isfinite(grad).all() and torch.equal(grad, runs[1][2][name]), name
    assert not torch.equal(runs[0][0], runs[2][0])
    assert output_layer_of(model).compiled_forward.failure is None


@pytest.mark.parametrize("fixture", ["projection_wiring/transformer_lm_mixtape.pt",
                                     "projection_wiring/lstm_lm_mos.pt", "legacy/mos.pt"])
def test_a_checkpoint_runs_eagerly_unless_its_loading_asks_to_compile(fixture, tmp_path):
    """--compile-output-layer is each run's choice, not the model's: a checkpoint whose saved
    flags hold it (saved by a compiled training run) loads eager, as fairseq-generate and
    fairseq-eval-lm load it; --model-overrides "{'compile_output_layer': True}" compiles it, also
    a checkpoint saved without the flag."""
    source = FIXTURES / fixture
    compiled_run = with_saved_flags(source, tmp_path, compile_output_layer=True)
    model, cfg = load_checkpoint(compiled_run, source.parent)
    assert output_layer_of(model).compiled_forward is None
    assert cfg.model.compile_output_layer is False          # what a later save records
    (tmp_path / "without").mkdir()
    without = with_saved_flags(source, tmp_path / "without", compile_output_layer=None)
    for path in (compiled_run, without):
        model, cfg = load_checkpoint(path, source.parent, compile_output_layer=True)
        assert output_layer_of(model).compiled_forward is not None
        assert cfg.model.compile_output_layer is True
