"""fairseq_mixtape.huggingface: the output layers on a tiny randomly initialised GPT-2, against
float64 references written out here, Hugging Face's own loss and teacher-forced scores."""

import ast
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install transformers): the "
    "Hugging Face head (fairseq_mixtape.huggingface) is not tested")

from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel  # noqa: E402

import fairseq_mixtape  # noqa: E402
from fairseq_mixtape.huggingface import (  # noqa: E402
    CONFIG_KEY, MODEL_TYPE, load_with_output_layer, with_output_layer)

V, T = 101, 9
LAYERS = ["softmax", "mos", "mixtape", "sigsoftmax", "mos_sigsoftmax"]
SMALL = {"mos": dict(output_components=3), "mos_sigsoftmax": dict(output_components=3),
         "mixtape": dict(output_components=4, mixtape_frequent_tokens=10, output_bias=True)}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_gpt2(tied: bool = True) -> GPT2LMHeadModel:
    """The tiny GPT-2 (no download), in eval mode; no end-of-sequence token, so that generation
    runs its full length."""
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=V, n_positions=64,
                        bos_token_id=None, eos_token_id=None, pad_token_id=0,
                        tie_word_embeddings=tied)
    return GPT2LMHeadModel(config).eval()


def tiny_with(name: str, tied: bool = True, **options):
    small = dict(SMALL.get(name, {}))
    if "frequent_token_ids" in options:                 # S is their number
        small.pop("mixtape_frequent_tokens", None)
    return with_output_layer(tiny_gpt2(tied), name, **{**small, **options})


def batch(rows: int = 3, length: int = T):
    return torch.randint(0, V, (rows, length))


def labels_of(ids):
    """The ids as labels, with some positions ignored (-100)."""
    labels = ids.clone()
    labels[0, 3] = labels[1, 5:] = -100
    return labels


def hidden_of(model, ids):
    with torch.no_grad():
        return model.transformer(ids).last_hidden_state.double()


def mean_nll(log_probs, labels):
    """Hugging Face's causal LM loss from full log-probabilities (B, T, V): position t predicts
    labels[:, t+1], -100 ignored, mean over the predicted tokens."""
    targets = labels[:, 1:]
    kept = targets.ne(-100)
    picked = log_probs[:, :-1].gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -picked[kept].sum() / kept.sum()


# --- float64 references, written out from the parameters, in token-id order ----------------


def softmax_reference(layer, g):
    logits = g @ layer.weight.double().t()
    return F.log_softmax(logits, -1)


def mos_reference(layer, g):
    K, E = layer.components, layer.embed_dim
    log_prior = F.log_softmax(g @ layer.prior.weight.double().t(), -1)                 # (..., K)
    h = layer.context_scale.double() * torch.tanh(
        g @ layer.context.weight.double().t() + layer.context.bias.double())
    logits = h.unflatten(-1, (K, E)) @ layer.weight.double().t()                       # (..., K, V)
    return torch.logsumexp(log_prior.unsqueeze(-1) + F.log_softmax(logits, -1), dim=-2)


def mixtape_reference(layer, g, own_ids):
    """Mixtape with K = 4 for every token id x: logit_x = sum_k pi_{x,k} h_k . w_x + b_x,
    pi_1 = s_1 s_2, pi_2 = s_1 (1-s_2), pi_3 = (1-s_1) s_3, pi_4 = (1-s_1)(1-s_3), s_j the
    sigmoid of l_{x,j} = u_j . g (+ v . tanh(U_j g + a_j) + b_j with gate row i for
    own_ids[i])."""
    assert layer.components == 4
    E, d1 = layer.embed_dim, layer.gate_dim
    h = layer.context_scale.double() * torch.tanh(
        g @ layer.context.weight.double().t() + layer.context.bias.double())
    h = h.unflatten(-1, (4, E))                                                         # (N, 4, E)
    component = h @ layer.weight.double().t()                                           # (N, 4, V)
    shared = g @ layer.shared_gate.weight.double().t()                                  # (N, 3)
    gate_logits = shared.unsqueeze(-1).repeat(1, 1, layer.num_tokens)                   # (N, 3, V)
    units = torch.tanh(g @ layer.gate_hidden.weight.double().t()
                       + layer.gate_hidden.bias.double()).unflatten(-1, (3, d1))        # (N, 3, d1)
    for row, x in enumerate(own_ids):
        gate_logits[:, :, x] += units @ layer.gate_embed[row].double() + \
            layer.gate_bias[row].double()
    s = torch.sigmoid(gate_logits)
    priors = torch.stack([s[:, 0] * s[:, 1], s[:, 0] * (1 - s[:, 1]),
                          (1 - s[:, 0]) * s[:, 2], (1 - s[:, 0]) * (1 - s[:, 2])], dim=1)
    logits = (priors * component).sum(1) + layer.bias.double()
    return F.log_softmax(logits, -1)


def reference_log_probs(model, ids):
    layer, g = model.output_layer, hidden_of(model, ids).flatten(0, 1)
    if layer.name == "softmax":
        log_probs = softmax_reference(layer, g)
    elif layer.name == "mos":
        log_probs = mos_reference(layer, g)
    else:
        log_probs = mixtape_reference(layer, g, model.lm_head.frequent_token_ids)
    return log_probs.view(*ids.shape, -1)


# --- the loss and the log-probabilities -----------------------------------------------------


@pytest.mark.parametrize("name,options", [
    ("softmax", {}), ("mos", {}), ("mixtape", {}),
    ("mixtape", dict(token_counts=torch.rand(V))),
    ("mixtape", dict(frequent_token_ids=[7, 99, 3, 50, 0, 64, 12, 31, 88, 45], tied=False))])
def test_loss_and_logits_equal_a_float64_reference(name, options):
    model = tiny_with(name, **options)
    ids = batch()
    labels = labels_of(ids)
    reference = reference_log_probs(model, ids)
    out = model(ids, labels=labels)
    torch.testing.assert_close(out.logits.double(), reference, rtol=0, atol=1e-5)
    assert abs(out.loss.item() - mean_nll(reference, labels).item()) < 1e-5
    assert out.logits.dtype == torch.float32


@pytest.mark.parametrize("name", LAYERS)
def test_chunked_loss_and_its_gradients_equal_the_full_forwards(name):
    """The labelled forward's chunked loss (one sequence per chunk, checkpointed) against the
    mean NLL of the unlabelled forward's log-probabilities, and their gradients."""
    options = dict(token_counts=torch.rand(V)) if name == "mixtape" else {}
    model = tiny_with(name, chunk_tokens=T - 1, **options)
    ids = batch()
    labels = labels_of(ids)
    chunked = model(ids, labels=labels).loss
    chunked_grads = torch.autograd.grad(chunked, list(model.parameters()))
    full = mean_nll(model(ids).logits, labels)
    full_grads = torch.autograd.grad(full, list(model.parameters()))
    assert abs(chunked.item() - full.item()) < 1e-5
    for got, expected in zip(chunked_grads, full_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_log_probs_normalise_and_softmax_keeps_the_models_distribution():
    stock = tiny_gpt2()
    ids, labels = batch(), labels_of(batch())
    expected_logits = stock(ids).logits.log_softmax(-1)
    expected_loss = stock(ids, labels=labels).loss
    model = with_output_layer(stock, "softmax")
    out = model(ids, labels=labels)
    torch.testing.assert_close(out.logits, expected_logits, rtol=0, atol=1e-6)
    assert abs(out.loss.item() - expected_loss.item()) < 1e-6     # Hugging Face's own loss
    for name in LAYERS:
        log_probs = tiny_with(name)(ids).logits
        torch.testing.assert_close(log_probs.logsumexp(-1), torch.zeros(ids.shape),
                                   rtol=0, atol=1e-5)


def test_training_mode_loss_alone_and_mos_never_forms_the_whole_mixture(monkeypatch):
    """In training, given labels, only the loss: MoS then runs its target_log_probs, a chunk
    (here one sequence) at a time, and never its forward (the (B, T, V) mixture)."""
    model = tiny_with("mos", chunk_tokens=T - 1).train()
    layer = model.output_layer
    sizes = []
    target_log_probs = layer.target_log_probs

    def spy(features, target):
        sizes.append(features.shape[0])
        return target_log_probs(features, target)

    def refuse(*args, **kwargs):
        raise AssertionError("the whole mixture was formed")

    monkeypatch.setattr(layer, "target_log_probs", spy)
    monkeypatch.setattr(layer, "forward", refuse)
    ids = batch()
    out = model(ids, labels=ids)
    assert out.logits is None and torch.isfinite(out.loss)
    assert sizes and max(sizes) == 1
    out.loss.backward()


def test_eval_mode_given_labels_logits_without_gradient():
    model = tiny_with("mos", chunk_tokens=T - 1)
    ids = batch()
    out = model(ids, labels=ids)
    assert out.logits.requires_grad is False and out.loss.requires_grad
    torch.testing.assert_close(out.logits, model(ids).logits.detach(), rtol=0, atol=1e-6)


def test_num_items_in_batch_and_logits_to_keep():
    model = tiny_with("mixtape")
    ids = batch()
    labels = labels_of(ids)
    mean = model(ids, labels=labels).loss
    summed = model(ids, labels=labels, num_items_in_batch=torch.tensor(5))
    predicted = labels[:, 1:].ne(-100).sum()
    torch.testing.assert_close(summed.loss, mean * predicted / 5)
    last = model(ids, logits_to_keep=1).logits
    torch.testing.assert_close(last, model(ids).logits[:, -1:], rtol=0, atol=1e-6)


# --- generation -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["softmax", "mos", "mixtape"])
def test_greedy_scores_equal_teacher_forced_log_probs(name):
    model = tiny_with(name, **(dict(token_counts=torch.rand(V)) if name == "mixtape" else {}))
    prompt = batch(2, 4)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                         do_sample=False, output_scores=True, return_dict_in_generate=True)
    sequences = out.sequences
    assert sequences.shape == (2, 10)
    forced = model(sequences).logits                                     # (2, 10, V)
    for step, scores in enumerate(out.scores):
        position = prompt.shape[1] - 1 + step
        torch.testing.assert_close(scores, forced[:, position], rtol=0, atol=1e-5)
        assert torch.equal(sequences[:, position + 1], forced[:, position].argmax(-1))


def test_beam_search_scores_are_sums_of_teacher_forced_log_probs():
    model = tiny_with("mixtape", token_counts=torch.rand(V))
    prompt = batch(2, 4)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5,
                         num_beams=3, do_sample=False, length_penalty=0.0,
                         output_scores=True, return_dict_in_generate=True)
    forced = model(out.sequences).logits
    generated = out.sequences[:, 4:]
    picked = forced[:, 3:-1].gather(-1, generated.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(out.sequences_scores, picked.sum(-1), rtol=0, atol=1e-4)


def test_sampling_draws_from_the_layers_distribution():
    """Sampling with temperature tau: the scores are the teacher-forced log-probabilities / tau;
    and over many draws the first token's frequencies follow p (sharpened here, by a 20 times
    larger context scale, so that p is far from uniform and the check has power)."""
    model = tiny_with("mixtape", token_counts=torch.rand(V))
    prompt = batch(1, 4)
    torch.manual_seed(1)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=3,
                         do_sample=True, temperature=0.5, top_k=0, top_p=1.0,
                         output_scores=True, return_dict_in_generate=True)
    forced = model(out.sequences).logits
    for step, scores in enumerate(out.scores):
        torch.testing.assert_close(scores, forced[:, 3 + step] / 0.5, rtol=0, atol=1e-5)
    with torch.no_grad():
        model.output_layer.context_scale *= 20
    p = model(prompt).logits[0, -1].double().exp()
    assert 0.5 * (p - 1 / V).abs().sum() > 0.5                     # total variation from uniform
    draws = 4000
    many = model.generate(prompt.repeat(draws, 1), attention_mask=torch.ones(draws, 4,
                          dtype=torch.long), max_new_tokens=1, do_sample=True, top_k=0,
                          top_p=1.0, temperature=1.0)
    frequencies = torch.bincount(many[:, -1], minlength=V).double() / draws
    assert 0.5 * (frequencies - p).abs().sum() < 0.06


# --- saving and loading ---------------------------------------------------------------------


@pytest.mark.parametrize("name,tied,options", [
    ("mixtape", True, dict(token_counts=torch.rand(V))),
    ("mixtape", False, dict(frequent_token_ids=[5, 1, 77])),
    ("mos", True, {}), ("softmax", False, {})])
def test_save_and_load_round_trip_exactly(tmp_path, name, tied, options):
    model = tiny_with(name, tied=tied, **options)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == MODEL_TYPE
    assert saved["architectures"] == ["GPT2LMHeadModel"]
    assert saved[CONFIG_KEY]["output_layer"]["output_layer"] == name
    loaded = load_with_output_layer(tmp_path).eval()
    assert type(loaded) is type(model)
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    for key in state:
        assert torch.equal(state[key], loaded_state[key]), key
    for key in ("tree_nodes", "tree_signs"):            # derived, not saved: rebuilt on load
        if hasattr(model.output_layer, key):
            assert torch.equal(getattr(model.output_layer, key), getattr(loaded.output_layer, key))
    assert (loaded.output_layer.weight is loaded.transformer.wte.weight) is tied
    assert loaded.lm_head.frequent_token_ids == model.lm_head.frequent_token_ids
    ids = batch()
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert torch.equal(loaded(ids, labels=ids).loss, model(ids, labels=ids).loss)
    prompt = batch(2, 3)
    assert torch.equal(loaded.generate(prompt, max_new_tokens=4, do_sample=False),
                       model.generate(prompt, max_new_tokens=4, do_sample=False))


def test_compiling_is_chosen_by_each_process_and_not_saved(tmp_path):
    """compile_output_layer=True compiles the layer where it is given (with_output_layer,
    load_with_output_layer), and config.json does not hold it: a loaded model runs eagerly
    unless its loading asks."""
    model = tiny_with("mos", compile_output_layer=True, output_context_dropout=0.29)
    assert model.output_layer.compiled_forward is not None
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())[CONFIG_KEY]["output_layer"]
    assert "compile_output_layer" not in saved and saved["output_context_dropout"] == 0.29
    assert load_with_output_layer(tmp_path).output_layer.compiled_forward is None
    assert load_with_output_layer(
        tmp_path, compile_output_layer=True).output_layer.compiled_forward is not None


@pytest.mark.parametrize("name,dropout", [("mos", 0.29), ("mixtape", 0.1)])
def test_a_config_saved_under_the_former_names_loads_as_saved(tmp_path, name, dropout):
    """config.json of an earlier version: the context dropout under MoS's and Mixtape's former
    names, and compile_output_layer. Each layer reads its own name, runs eagerly, and gives
    the scores it gave when saved; saved again, the config holds the setting's name alone."""
    model = tiny_with(name).eval()
    model.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    settings = saved[CONFIG_KEY]["output_layer"]
    today = dict(settings)
    del settings["output_context_dropout"]
    settings.update(mos_context_dropout=0.29, mixtape_context_dropout=0.1,
                    compile_output_layer=True)
    path.write_text(json.dumps(saved))
    loaded = load_with_output_layer(tmp_path).eval()
    assert loaded.output_layer.context_dropout == dropout
    assert loaded.output_layer.compiled_forward is None
    ids = batch()
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    loaded.save_pretrained(tmp_path / "again")                 # saved under today's names
    resaved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert resaved[CONFIG_KEY]["output_layer"] == {**today, "output_context_dropout": dropout}


def test_the_stock_loaders_refuse_the_checkpoint_naming_the_loader(tmp_path):
    tiny_with("mixtape").save_pretrained(tmp_path)
    for load in (AutoModelForCausalLM.from_pretrained, AutoConfig.from_pretrained):
        with pytest.raises(ValueError, match=r"load_with_output_layer\(path\)"):
            load(tmp_path)


def test_the_stock_loader_refuses_without_this_module_imported(tmp_path):
    """In a process that never imported fairseq_mixtape, transformers refuses the model type."""
    tiny_with("mixtape").save_pretrained(tmp_path)
    code = textwrap.dedent(f"""
        from transformers import AutoModelForCausalLM
        try:
            AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})
        except ValueError as error:
            print("refused:", error)
        else:
            print("loaded")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "`fairseq_mixtape`" in done.stdout, done.stdout


def test_the_package_does_not_import_this_module():
    """``import fairseq_mixtape`` needs no transformers: its __init__ imports neither."""
    tree = ast.parse(pathlib.Path(fairseq_mixtape.__file__).read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names]
    imported += [f"{node.module}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 for alias in node.names]
    assert not [name for name in imported if "huggingface" in name or "transformers" in name]


def test_the_loader_refuses_a_stock_checkpoint(tmp_path):
    tiny_gpt2().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type: got 'gpt2'.*AutoModelForCausalLM"):
        load_with_output_layer(tmp_path)


# --- Mixtape's own-gate tokens: the frequency order -----------------------------------------


def gate_rows_reached(model, x):
    """The gate_embed rows that token x's score depends on (nonzero gradient)."""
    g = torch.randn(5, 32)
    score = model.lm_head.scores(g)[:, x].sum()
    gradient, = torch.autograd.grad(score, model.output_layer.gate_embed)
    return gradient.abs().sum(-1).nonzero().flatten().tolist()


def test_the_most_frequent_ids_get_their_own_gates():
    counts = torch.rand(V)
    counts[[40, 41]] = counts.max() + 1                     # a tie: the smaller id first
    model = tiny_with("mixtape", token_counts=counts, mixtape_frequent_tokens=0.1)
    chosen = model.lm_head.frequent_token_ids
    assert len(chosen) == 10 == model.output_layer.frequent
    assert chosen[:2] == [40, 41]
    assert set(chosen) == set(torch.sort(-counts, stable=True).indices[:10].tolist())
    for row, x in enumerate(chosen):
        assert gate_rows_reached(model, x) == [row]
    for x in set(range(V)) - set(chosen):
        assert gate_rows_reached(model, x) == []


def test_listed_ids_get_their_own_gates_and_only_their_scores_move():
    ids = [99, 3, 42]
    model = tiny_with("mixtape", frequent_token_ids=ids)
    assert model.lm_head.frequent_token_ids == ids and model.output_layer.frequent == 3
    g = torch.randn(4, 32)
    with torch.no_grad():
        before = model.lm_head.scores(g)
        model.output_layer.gate_embed[1] += 1.0           # the gate row of id 3
        after = model.lm_head.scores(g)
    moved = (after - before).abs().amax(0).nonzero().flatten().tolist()
    assert moved == [3]


def test_without_counts_or_ids_the_first_ids_own_the_gates():
    model = tiny_with("mixtape")
    assert model.lm_head.frequent_token_ids == list(range(10))
    assert model.lm_head.token_order is None
    assert gate_rows_reached(model, 4) == [4] and gate_rows_reached(model, 50) == []


@pytest.mark.parametrize("options,message", [
    (dict(output_layer="mos", token_counts=torch.rand(V)), "only with output_layer='mixtape'"),
    (dict(token_counts=torch.rand(V), frequent_token_ids=[1]), "at most one of them"),
    (dict(token_counts=torch.rand(V - 1)), r"token_counts \(length\): got 100"),
    (dict(frequent_token_ids=[1, 1]), "distinct token ids"),
    (dict(frequent_token_ids=[V]), r"token ids in \[0, 101\)"),
    (dict(frequent_token_ids=[1, 2], mixtape_frequent_tokens=3), "number of frequent_token_ids"),
    (dict(token_counts=torch.rand(V), output_components=1), "without own gates"),
    (dict(output_component=4), "with_output_layer keyword: got 'output_component'"),
    (dict(mos_context_dropout=0.29), "with_output_layer keyword: got 'mos_context_dropout'.*"
                                     "output_context_dropout"),
    (dict(token_counts=torch.rand(V), compile_output_layer=True),
     "compile_output_layer: got True; allowed: False with a token order"),
])
def test_wrong_settings_are_refused_by_name(options, message):
    options = {"output_layer": "mixtape", **options}
    with pytest.raises(ValueError, match=message):
        with_output_layer(tiny_gpt2(), **options)


def test_resize_token_embeddings_is_refused_and_a_second_layer_too():
    model = tiny_with("mixtape")
    with pytest.raises(ValueError, match="resize_token_embeddings: refused.*then call "
                                         "with_output_layer"):
        model.resize_token_embeddings(V + 3)
    with pytest.raises(ValueError, match="has an output layer already"):
        with_output_layer(model, "mos")
