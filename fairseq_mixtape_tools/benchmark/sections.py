"""What the benchmark measures: its sections, each for softmax, MoS (K=15, or
--mos-components), Mixtape (K=4, S=0.1V, d1=min(64, E)) and sigsoftmax. Four by default
(``SECTIONS``), and ``memory`` on request:

``output_layer``
    the layer alone on random features (N positions, dimension d) at every vocabulary V:
    ``train`` = forward, log_softmax (float32), NLL on random targets, backward (features and
    parameters); ``infer`` = forward and log_softmax without autograd.
``mt``
    a whole training step of a ``transformer_wmt_en_de``-shaped model (each ``--model-args``
    configuration in turn) (``--arch
    transformer_wmt_en_de_mixtape --output-layer X --share-all-embeddings``, V shared): forward,
    the plugin's ``output_layer_cross_entropy`` loss, backward, (fused) Adam step; words per
    second = target tokens / step time, as fairseq reports ``wps``. ``mos_chunked`` is MoS
    trained through the same criterion with chunks of ``--mos-chunk-tokens`` target positions.
``lm``
    the same for a ``transformer_lm``-shaped model (``--share-decoder-input-output-embed``).
``beam``
    beam search (fairseq's ``SequenceGenerator``, beam 4) with the ``mt`` models on random
    sources, with min_len = max_len so that every layer decodes the same number of steps;
    sentences per second.
``memory`` (not in the default)
    the peak training memory (live tensors of forward, loss and backward) at the large
    vocabularies ``--memory-vocabs`` (128K, 256K), on a 1-layer ``transformer_lm`` of width
    ``--memory-dim`` (1024; 8 x 512 target tokens): every layer through
    ``output_layer_cross_entropy`` at each ``--memory-chunk-tokens`` (the criterion's default,
    4096, 512), and the softmax model through fairseq's ``cross_entropy``
    (``softmax+cross_entropy``) and the plugin's ``--linear-cross-entropy``. By default
    under ``FakeTensorMode`` (``FakeModelMode``): the step's tensors with their sizes and
    lifetimes but no arithmetic and no memory, so any size runs in seconds (equal, byte for
    byte, to the computed step's peak: tests/tools/test_benchmark.py); ``--memory-compute real``
    computes it.

``--compile both`` (or ``compiled``) adds to ``mt`` and ``lm`` each layer's model built with
``--compile-output-layer`` (``<layer>+compiled``), in the same interleaved rounds, after
``COMPILE_WARMUP`` untimed steps that compile its graphs; a check after the rounds reports any
graph compiled during them, or a compiled function that fell back to eager.

How each entry is measured (interleaved rounds, memory, FLOPs): measure.py.
"""

import gc
import math
import shlex
import time
from contextlib import contextmanager, nullcontext
from typing import Dict, List

import torch
import torch.nn.functional as F

from ..memory import LiveTensorPeak
from .measure import (CHUNKED, COMPILE_WARMUP, COMPILED, DEFAULT_CHUNKS, LINEAR, STOCK, Result,
                      autocast, chunk_name, compiled_graphs, components, layer_config, log,
                      measure, params_m)

SECTIONS = ["output_layer", "mt", "lm", "beam"]

# transformer_lm's preset leaves decoder_input_dim / decoder_output_dim at 512 whatever the
# embedding size; the translation preset is transformer_wmt_en_de's own.
QUICK_MT_ARGS = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
                 "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
                 "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
                 "--decoder-attention-heads", "2"]
QUICK_LM_ARGS = ["--decoder-layers", "1", "--decoder-embed-dim", "32", "--decoder-input-dim", "32",
                 "--decoder-output-dim", "32", "--decoder-ffn-embed-dim", "64",
                 "--decoder-attention-heads", "2"]


def run_sections(args, device) -> List[Result]:
    """Every section of ``args.sections``, in order; the mt models serve beam search too."""
    results: List[Result] = []
    if "output_layer" in args.sections:
        results += output_layer_section(args, device)
    needs_mt = "mt" in args.sections or "beam" in args.sections
    if needs_mt or "lm" in args.sections:
        from ..building import dictionary_of

        dictionary = dictionary_of(args.model_vocab)
    for model_args in args.model_args if needs_mt else []:
        if "mt" in args.sections:
            entries, models, task = training_section("mt", args, device, dictionary, model_args)
            results += entries.values()
        else:
            models, task = {}, None
            build = model_builder("mt", args, device, dictionary, model_args)
            for layer in args.layers:
                task, models[layer] = build(layer)
        if "beam" in args.sections:
            results += beam_section(models, task, args, device, dictionary,
                                    model_args).values()
        del models
        gc.collect()
    for model_args in args.model_args if "lm" in args.sections else []:
        entries, models, _ = training_section("lm", args, device, dictionary, model_args)
        results += entries.values()
        del models
        gc.collect()
    if "memory" in args.sections:
        results += memory_section(args, device)
    return results


def output_layer_section(args, device) -> List[Result]:
    """The output layer alone, at every d and V: train and infer steps."""
    from fairseq_mixtape.losses import linear_cross_entropy_losses
    from fairseq_mixtape.output_layers import build_output_layer

    results = []
    for dim in args.dims:
        for vocab in args.vocabs:
            torch.manual_seed(args.seed)
            layers = {name: build_output_layer(layer_config(name, args), dim, vocab).to(device)
                      for name in args.layers}
            features = torch.randn(args.positions, dim, device=device, requires_grad=True)
            target = torch.randint(0, vocab, (args.positions,), device=device)

            def train(layer):
                with autocast(args, device):
                    scores = layer(features)
                loss = F.nll_loss(F.log_softmax(scores.float(), dim=-1), target, reduction="sum")
                loss.backward()
                layer.zero_grad(set_to_none=True)
                features.grad = None

            def infer(layer, features=features.detach()):
                with torch.inference_mode(), autocast(args, device):
                    F.log_softmax(layer(features).float(), dim=-1)

            def train_linear(layer):
                linear_cross_entropy_losses(layer, features[None], target[None], -100,
                                            reduce=True).nll.backward()
                layer.zero_grad(set_to_none=True)
                features.grad = None

            for mode, run in [("train", train), ("infer", infer)]:
                entries = {name: Result("output_layer", mode, name, vocab, dim, args.positions,
                                        "positions", params_m=params_m(layer))
                           for name, layer in layers.items()}
                steps = {name: (lambda layer=layer, run=run: run(layer))
                         for name, layer in layers.items()}
                if mode == "train" and args.linear_cross_entropy and "softmax" in layers:
                    entries["softmax" + LINEAR] = Result(
                        "output_layer", mode, "softmax" + LINEAR, vocab, dim, args.positions,
                        "positions", params_m=params_m(layers["softmax"]))
                    steps["softmax" + LINEAR] = lambda: train_linear(layers["softmax"])
                measure(entries, steps, args, device, f"output layer {mode} d={dim} V={vocab}")
                results.extend(entries.values())
            del layers
    return results


def model_argv(kind: str, args, device_type: str, model_args: str = "") -> List[str]:
    """The fairseq-train arguments of model_builder's model (the architecture at index 4)."""
    if kind == "mt":
        argv = ["unused-data", "--task", "translation", "--arch", "transformer_wmt_en_de_mixtape",
                "--share-all-embeddings", *(QUICK_MT_ARGS if args.quick else [])]
    else:
        argv = ["unused-data", "--task", "language_modeling", "--arch", "transformer_lm_mixtape",
                "--share-decoder-input-output-embed",
                "--tokens-per-sample", str(max(args.lm_length, 512)),
                *(QUICK_LM_ARGS if args.quick else [])]
    return argv + [*shlex.split(model_args), *(["--cpu"] if device_type == "cpu" else [])]


def model_builder(kind: str, args, device, dictionary, model_args: str = ""):
    """A function layer -> (task, model) for a transformer_wmt_en_de-shaped translation model
    (kind 'mt') or a transformer_lm-shaped language model ('lm'), configured through fairseq's
    own argument parsing (once; each layer then changes only ``output_layer``)."""
    argv = model_argv(kind, args, device.type, model_args)
    from .. import building  # (imports fairseq)

    task, build_model = building.model_builder(argv, dictionary)

    def build(layer: str, **overrides):
        torch.manual_seed(args.seed)
        model = build_model(output_layer=layer, **components(layer, args), **overrides)
        # built on the CPU; fake tensors (the memory section) cannot be moved, even there
        return task, (model if device.type == "cpu" else model.to(device))

    return build


def random_tokens(dictionary, shape, device, generator):
    tokens = torch.randint(dictionary.nspecial, len(dictionary), shape, generator=generator)
    return tokens.to(device)


def mt_sample(dictionary, batch: int, length: int, device, generator):
    eos = dictionary.eos()
    src = random_tokens(dictionary, (batch, length), device, generator)
    tgt = random_tokens(dictionary, (batch, length), device, generator)
    src[:, -1] = tgt[:, -1] = eos
    prev = torch.cat([torch.full_like(tgt[:, :1], eos), tgt[:, :-1]], dim=1)
    lengths = torch.full((batch,), length, dtype=torch.long, device=device)
    return {"id": torch.arange(batch), "nsentences": batch, "ntokens": batch * length,
            "net_input": {"src_tokens": src, "src_lengths": lengths, "prev_output_tokens": prev},
            "target": tgt}


def lm_sample(dictionary, batch: int, length: int, device, generator):
    tokens = random_tokens(dictionary, (batch, length + 1), device, generator)
    lengths = torch.full((batch,), length, dtype=torch.long, device=device)
    return {"id": torch.arange(batch), "nsentences": batch, "ntokens": batch * length,
            "net_input": {"src_tokens": tokens[:, :-1], "src_lengths": lengths},
            "target": tokens[:, 1:].contiguous()}  # contiguous, as fairseq's batches (and
    # fairseq's cross_entropy, which views it flat) have it


class Trainer:
    """A model, the plugin's chunked criterion and Adam: one training step as fairseq's."""

    def __init__(self, task, model, chunk_tokens: int, args, device, optimizer=None):
        from fairseq_mixtape.criterions import OutputLayerCrossEntropyCriterion

        self.model, self.args, self.device = model, args, device
        self.criterion = OutputLayerCrossEntropyCriterion(
            task, sentence_avg=False, output_chunk_tokens=chunk_tokens)
        self.optimizer = optimizer
        if optimizer is not None:
            return
        adam = dict(lr=1e-5, betas=(0.9, 0.98), eps=1e-8)
        try:  # one fused kernel, as fairseq's FusedAdam on GPU (torch >= 2.4 has it on CPU too)
            self.optimizer = torch.optim.Adam(model.parameters(), fused=True, **adam)
        except (RuntimeError, TypeError):
            self.optimizer = torch.optim.Adam(model.parameters(), **adam)
        # Create Adam's state now (a step on zero gradients changes no weight), so that no
        # measured step is the one that allocates it.
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def with_chunks(self, task, chunk_tokens: int) -> "Trainer":
        """The same model and optimiser, through the criterion with other chunks."""
        return Trainer(task, self.model, chunk_tokens, self.args, self.device, self.optimizer)

    def step(self, sample):
        self.model.train()
        with autocast(self.args, self.device):
            loss, sample_size, logging_output = self.criterion(self.model, sample)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def training_section(kind: str, args, device, dictionary, model_args: str = ""):
    """Whole training steps of every layer's model ('mt' or 'lm'): (results by name, the
    eager models by layer, the task), the models for beam search.

    With ``--compile compiled|both``, a model per layer built with --compile-output-layer
    (``<layer>+compiled``) is measured in the same rounds, after ``COMPILE_WARMUP`` untimed steps
    that compile its graphs (forward and backward); the timed rounds must not compile again
    (checked). Its ``tensor_mb`` and ``gflops`` are left out (NaN): a dispatch mode sees only
    the part of a compiled graph's work that goes through PyTorch operators."""
    if kind == "mt":
        length, batch = args.mt_length, args.mt_batch
    else:
        length, batch = args.lm_length, args.lm_batch
    generator = torch.Generator().manual_seed(args.seed)
    make = mt_sample if kind == "mt" else lm_sample
    sample = make(dictionary, batch, length, device, generator)
    trainers, models, task = {}, {}, None
    build = model_builder(kind, args, device, dictionary, model_args)
    variants = compile_variants(args)
    if COMPILED in variants:
        torch._dynamo.reset()  # a new model shape: no graphs (and guards) of the previous one
    for variant in variants:
        overrides = {"compile_output_layer": True} if variant == COMPILED else {}
        for layer in args.layers:
            task, models[layer + variant] = build(layer, **overrides)
            trainers[layer + variant] = Trainer(task, models[layer + variant], 4096, args, device)
        if "mos" in args.layers and not args.no_mos_chunked:
            chunk = args.mos_chunk_tokens or length
            trainers[CHUNKED + variant] = trainers["mos" + variant].with_chunks(task, chunk)
    entries = {name: Result(kind, "train", name, args.model_vocab, embed_dim(models, name),
                            sample["ntokens"], "words", params_m=params_m(trainer.model),
                            model_args=model_args)
               for name, trainer in trainers.items()}
    steps = {name: (lambda trainer=trainer: trainer.step(sample))
             for name, trainer in trainers.items()}
    label = f"{kind} training step" + (f" ({model_args})" if model_args else "")
    compiled = [name for name in steps if name.endswith(COMPILED)]
    # inductor's compile workers: no more than --threads processes (1: compiles in-process)
    workers = nullcontext()
    if compiled and args.threads:
        import torch._inductor.config as inductor_config

        workers = inductor_config.patch(compile_threads=args.threads)
    with workers:
        for name in compiled:
            started = time.perf_counter()
            for _ in range(COMPILE_WARMUP):
                steps[name]()
            log(f"  {label}: {name}: {COMPILE_WARMUP} compiling steps "
                f"({time.perf_counter() - started:.0f} s)")
        graphs = compiled_graphs()
        measure(entries, steps, args, device, label)
    if compiled:
        check_compiled(models, compiled, graphs, args, label)
        for name in compiled:
            entries[name].tensor_mb = entries[name].gflops = math.nan
    for trainer in trainers.values():
        trainer.optimizer = None  # free Adam's state before the next section
    del trainers
    eager = {name: model for name, model in models.items() if not name.endswith(COMPILED)}
    if not eager and kind == "mt" and "beam" in args.sections:  # beam search runs eagerly
        del models
        for layer in args.layers:
            task, eager[layer] = build(layer)
    return entries, eager, task


def compile_variants(args) -> List[str]:
    """The name suffixes of ``--compile``: '' (eager) and/or COMPILED."""
    return {"eager": [""], "compiled": [COMPILED], "both": ["", COMPILED]}[args.compile]


def check_compiled(models, names, graphs_before, args, label):
    """After the timed rounds: every compiled entry ran compiled (no eager fallback) and no
    graph was compiled during the measurement; a note for the Markdown, a warning if not."""
    from fairseq_mixtape.losses import compiled_token_losses
    from fairseq_mixtape.models.wiring import output_layer_of

    failures = {name: output_layer_of(models[name.replace(CHUNKED, "mos")]).compiled_forward
                .failure for name in names}
    failures["criterion"] = compiled_token_losses().failure
    failures = {name: failure for name, failure in failures.items() if failure}
    after = compiled_graphs()
    changed = {key: (graphs_before.get(key, 0), value) for key, value in after.items()
               if graphs_before.get(key, 0) != value}
    unique = graphs_before.get("stats.unique_graphs", 0)
    note = (f"{label}: {unique} graph(s) compiled in the untimed steps; "
            + ("none during the measurement" if not changed else
               "**compiled during the measurement**: " + ", ".join(
                   f"{key} {a} -> {b}" for key, (a, b) in changed.items()))
            + ("" if not failures else "; **ran eagerly** (compile failed): " + "; ".join(
                f"{name}: {failure}" for name, failure in failures.items())))
    if changed or failures:
        log("  WARNING: " + note)
    vars(args).setdefault("notes", []).append(note)


def embed_dim(models, name) -> int:
    model = models[name.replace(CHUNKED, "mos")]  # mos_chunked(+compiled): the mos model
    return model.decoder.embed_tokens.weight.shape[1]


def beam_section(models, task, args, device, dictionary, model_args: str = ""
                 ) -> Dict[str, Result]:
    from fairseq.sequence_generator import SequenceGenerator

    generator = torch.Generator().manual_seed(args.seed + 1)
    src = random_tokens(dictionary, (args.beam_sentences, args.beam_length), device, generator)
    src[:, -1] = dictionary.eos()
    lengths = torch.full((args.beam_sentences,), args.beam_length, dtype=torch.long, device=device)
    sample = {"id": torch.arange(args.beam_sentences),
              "net_input": {"src_tokens": src, "src_lengths": lengths}}
    steps, entries = {}, {}
    for layer, model in models.items():
        model.eval()
        search = SequenceGenerator([model], task.target_dictionary, beam_size=args.beam_size,
                                   max_len_a=0, max_len_b=args.beam_length,
                                   min_len=args.beam_length)

        def decode(search=search):
            with autocast(args, device):
                hypotheses = search.generate([search.model], sample)
            lengths = {len(h["tokens"]) for beam in hypotheses for h in beam}
            assert lengths == {args.beam_length + 1}, lengths  # every layer decodes alike

        steps[layer] = decode
        entries[layer] = Result("beam", "decode", layer, args.model_vocab,
                                model.decoder.embed_tokens.weight.shape[1], args.beam_sentences,
                                "sentences", params_m=params_m(model), model_args=model_args)
    measure(entries, steps, args, device,
            "beam search" + (f" ({model_args})" if model_args else ""))
    return entries


def chunk_positions(setting, layer) -> int:
    """The positions per chunk of a --memory-chunk-tokens setting for the output layer ``layer``
    (the default follows its scores per position: V, MoS K x V)."""
    from fairseq_mixtape.losses import default_chunk_tokens

    return default_chunk_tokens(layer.scores_per_position) if setting == DEFAULT_CHUNKS else setting


def memory_model_args(args) -> str:
    """The memory section's body: a 1-layer transformer_lm of width E = --memory-dim (input,
    output and embedding; FFN 4E; E/64 heads), its output embedding tied to the input one."""
    E = args.memory_dim
    return (f"--decoder-layers 1 --decoder-embed-dim {E} --decoder-input-dim {E} "
            f"--decoder-output-dim {E} --decoder-ffn-embed-dim {4 * E} "
            f"--decoder-attention-heads {max(1, E // 64)} "
            f"--tokens-per-sample {max(512, args.memory_length)}")


class FakeModelMode:
    """FakeTensorMode for a whole fairseq model: build the model inside ``with mode:`` (fake
    parameters: shapes, no memory), then run steps inside ``with mode, mode.step():``.

    In a step, an operator whose tensor inputs are all real (the token batch and what is computed
    from it alone: padding masks, positions) runs for real, and so does a factory whose result
    has at most ``SMALL`` elements (``torch.onnx.operators.shape_as_tensor`` writes into one), so
    that the model's data-dependent Python (``mask.any()``) works as in a real step; every other
    result is fake. The tensors are the ones a real step creates, with the same sizes and
    lifetimes, so a ``LiveTensorPeak`` entered inside the step sees the real step's peak."""

    SMALL = 64

    def __new__(cls):
        from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
        from torch.utils._pytree import tree_leaves

        class Mode(FakeTensorMode):
            stepping = False

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if not self.stepping:
                    return super().__torch_dispatch__(func, types, args, kwargs)
                tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
                if tensors and not any(isinstance(t, FakeTensor) for t in tensors):
                    return func(*args, **kwargs)  # this mode is off inside its handler: real
                out = super().__torch_dispatch__(func, types, args, kwargs)
                if not tensors and all(t.numel() <= cls.SMALL for t in tree_leaves(out)
                                       if isinstance(t, torch.Tensor)):
                    return func(*args, **kwargs)  # a small factory: real
                return out

            @contextmanager
            def step(self):
                self.stepping = True
                try:
                    yield
                finally:
                    self.stepping = False

        return Mode(allow_non_fake_inputs=True)


class RealMode:
    """``FakeModelMode``'s interface for computed steps (--memory-compute real)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def step(self):
        return nullcontext()


def memory_step(model, criterion, sample, backward: bool = True):
    """One training step's tensors: forward, loss and (unless told not to) backward."""
    model.train()
    loss, sample_size, logging_output = criterion(model, sample)
    if backward:
        loss.backward()


def memory_section(args, device, backward: bool = True) -> List[Result]:
    """Peak live-tensor memory of a training step (forward, loss, backward; no optimiser step)
    at each --memory-vocabs V: every layer through output_layer_cross_entropy at each
    --memory-chunk-tokens, and softmax through fairseq's cross_entropy (layer
    ``softmax+cross_entropy``, chunk_tokens 0) and with the plugin criterion's
    --linear-cross-entropy (``softmax+linear_cross_entropy``), on the 1-layer model of ``memory_model_args``.
    Fake (default) or computed (``--memory-compute real``); the context scale of MoS and
    Mixtape is fixed at 1 (matching it, the default, needs computed values; no shape changes)."""
    from fairseq.criterions.cross_entropy import CrossEntropyCriterion
    from fairseq_mixtape.criterions import OutputLayerCrossEntropyCriterion
    from fairseq_mixtape.models.wiring import output_layer_of

    from ..building import dictionary_of

    model_args, results = memory_model_args(args), []
    tokens = args.memory_batch * args.memory_length
    if args.memory_compute == "fake":
        device = torch.device("cpu")  # fake tensors: the sizes are the same on any device
    for vocab in args.memory_vocabs:
        dictionary = dictionary_of(vocab)
        build = model_builder("lm", args, device, dictionary, model_args)
        sample = lm_sample(dictionary, args.memory_batch, args.memory_length, device,
                           torch.Generator().manual_seed(args.seed))
        for layer in args.layers:
            runs = [(layer, chunk) for chunk in args.memory_chunk_tokens]  # chunk: a setting
            runs += [(layer + STOCK, 0), (layer + LINEAR, 0)] if layer == "softmax" else []
            mode = FakeModelMode() if args.memory_compute == "fake" else RealMode()
            with mode:  # fake parameters belong to their mode: one mode per model
                task, model = build(layer, output_context_scale=1.0)
                for name, chunk in runs:
                    started = time.perf_counter()
                    criterion = (CrossEntropyCriterion(task, sentence_avg=False)
                                 if name.endswith(STOCK) else OutputLayerCrossEntropyCriterion(
                                     task, sentence_avg=False,
                                     output_chunk_tokens=None if chunk == DEFAULT_CHUNKS else chunk,
                                     linear_cross_entropy=name.endswith(LINEAR)))
                    gc.collect()
                    with mode.step(), LiveTensorPeak() as tracker:
                        memory_step(model, criterion, sample, backward)
                    model.zero_grad(set_to_none=True)
                    results.append(Result(
                        "memory", "train", name, vocab, args.memory_dim, tokens, "words",
                        tensor_mb=tracker.peak / 2 ** 20, gflops=tracker.flops / 1e9,
                        params_m=params_m(model), model_args=model_args,
                        chunk_tokens=chunk_positions(chunk, output_layer_of(model)),
                        chunk_setting=chunk_name(chunk) if name == layer else ""))
                    log(f"  memory V={vocab} {name} chunks {chunk or '-'}: "
                        f"{results[-1].tensor_mb:.0f} MiB, {results[-1].gflops:.0f} GFLOP "
                        f"({time.perf_counter() - started:.0f} s)")
            del model
            gc.collect()
    return results
