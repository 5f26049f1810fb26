"""Generation goes through fairseq's ordinary single-softmax path with every layer: incremental
beam search scores equal full-forward scores, and temperature gives a normalised distribution."""

import pytest
import torch
import torch.nn.functional as F
from fairseq.sequence_generator import EnsembleModel, SequenceGenerator

from helpers import LAYERS, build

pytestmark = pytest.mark.slow  # fairseq's beam search end to end, every family x layer


def full_forward_log_probs(model, tokens, src_tokens=None):
    """log p(tokens[t] | tokens[<t]) from one non-incremental forward pass, (L,)."""
    eos = torch.tensor([2])  # fairseq decoders start from eos (bos) for both MT and LM
    prev = torch.cat([eos, tokens[:-1]]).unsqueeze(0)
    if src_tokens is None:
        net_output = model(prev)
    else:
        net_output = model(src_tokens[None], torch.tensor([len(src_tokens)]), prev)
    log_probs = model.get_normalized_probs(net_output, log_probs=True)[0]     # (L, V)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(len(tokens)), atol=1e-5)
    return log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_beam_search_scores_equal_full_forward_translation(family, layer):
    task, model = build(family, layer)
    model.eval()
    src_tokens = torch.randint(4, len(task.source_dictionary), (3, 5))
    sample = {"net_input": {"src_tokens": src_tokens, "src_lengths": torch.full((3,), 5)}}
    generator = SequenceGenerator([model], task.target_dictionary, beam_size=3, max_len_b=7)
    hypotheses = task.inference_step(generator, [model], sample)
    for src, beam in zip(src_tokens, hypotheses):
        assert len(beam) == 3
        for hypothesis in beam:
            expected = full_forward_log_probs(model, hypothesis["tokens"], src)
            assert torch.allclose(hypothesis["positional_scores"], expected, atol=1e-5)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("family", ["transformer_lm", "lstm_lm"])
def test_beam_search_scores_equal_full_forward_language_model(family, layer):
    task, model = build(family, layer)
    model.eval()
    prefix = torch.randint(4, len(task.dictionary), (2, 3))
    sample = {"net_input": {"src_tokens": prefix, "src_lengths": torch.full((2,), 3)}}
    generator = SequenceGenerator([model], task.target_dictionary, beam_size=2, max_len_b=8)
    for beam in task.inference_step(generator, [model], sample):
        for hypothesis in beam:
            expected = full_forward_log_probs(model, hypothesis["tokens"])
            assert torch.allclose(hypothesis["positional_scores"], expected, atol=1e-5)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_gives_a_normalised_distribution(layer, temperature):
    task, model = build("transformer_lm", layer)
    model.eval()
    tokens = torch.randint(4, len(task.dictionary), (4, 6))
    log_p = model.get_normalized_probs(model(tokens), log_probs=True)[:, -1]  # (B, V)
    ensemble = EnsembleModel([model])
    with torch.no_grad():
        tempered, _ = ensemble.forward_decoder(tokens, [], [None], temperature=temperature)
    assert torch.allclose(tempered.exp().sum(-1), torch.ones(4), atol=1e-5)
    expected = F.log_softmax(log_p / temperature, dim=-1)  # p^(1/T), renormalised
    assert torch.allclose(tempered, expected, atol=1e-5)


@pytest.mark.parametrize("layer", ["mos", "mixtape"])
def test_incremental_decoding_computes_only_the_last_position(layer):
    task, model = build("transformer", layer)
    model.eval()
    seen = []
    handle = model.decoder.output_projection.register_forward_hook(
        lambda module, inputs, output: seen.append(inputs[0].shape))
    src_tokens = torch.randint(4, len(task.source_dictionary), (2, 5))
    sample = {"net_input": {"src_tokens": src_tokens, "src_lengths": torch.full((2,), 5)}}
    task.inference_step(SequenceGenerator([model], task.target_dictionary, beam_size=2,
                                          max_len_b=6), [model], sample)
    handle.remove()
    assert seen and all(shape[1] == 1 for shape in seen)  # (B * beam, 1, C) at every step
