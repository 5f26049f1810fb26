"""The model families: presets, flags, tied embeddings, and the stock options that combine
(or fail clearly) with the output layers."""

import pytest
import torch
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.models import ARCH_MODEL_REGISTRY

from fairseq_mixtape.models import lstm, output_layer_of, transformer, transformer_lm
from fairseq_mixtape.models.wiring import PRESET_LAYERS
from fairseq_mixtape_tools.building import model_config, parse_train_args, task_on
from helpers import FAMILIES, LAYERS, build, parse, tiny_dictionary

ALL_PRESETS = transformer.PRESETS + lstm.PRESETS + transformer_lm.PRESETS + ["lstm_lm"]


def test_every_preset_has_mixtape_and_mos_architectures():
    assert len(ALL_PRESETS) == 12
    for preset in ALL_PRESETS:
        for layer in PRESET_LAYERS:
            assert f"{preset}_{layer}" in ARCH_MODEL_REGISTRY


def parse_stock_cli(*argv):
    return options.parse_args_and_arch(options.get_training_parser(), ["data-dir", *argv])


@pytest.mark.parametrize("arch,layer", [("transformer_wmt_en_de_mixtape", "mixtape"),
                                        ("transformer_vaswani_wmt_en_de_big_mos", "mos"),
                                        ("lstm_luong_wmt_en_de_mos", "mos")])
def test_preset_is_the_stock_network_with_the_output_layer(arch, layer):
    args = parse_stock_cli("--arch", arch)
    stock = parse_stock_cli("--arch", arch.rsplit("_", 1)[0])
    assert args.output_layer == layer and args.output_components is None  # layer's default K
    assert (args.mixtape_gate_dim, args.mixtape_frequent_tokens) == (None, 0.1)  # d1 = min(64, E)
    for name in ["decoder_embed_dim", "decoder_layers", "dropout", "encoder_embed_dim"]:
        assert getattr(args, name) == getattr(stock, name)
    assert parse_stock_cli("--arch", arch, "--output-layer", "softmax").output_layer == "softmax"


@pytest.mark.parametrize("family", ["transformer", "lstm_lm", "transformer_lm"])
def test_context_scale_flag_reaches_the_layer(family):
    matched = output_layer_of(build(family, "mixtape")[1])
    assert matched.configured_scale is None and float(matched.context_scale) > 1  # default
    papers = output_layer_of(build(family, "mixtape", "--output-context-scale", "1")[1])
    assert float(papers.context_scale) == 1.0
    _, model = build(family, "mos", "--output-context-scale", "4")
    assert float(output_layer_of(model).context_scale) == 4.0


def test_regulariser_flags_reach_the_layers():
    mixtape = output_layer_of(build("transformer", "mixtape")[1])
    assert (mixtape.context_dropout, mixtape.gate_dropout, mixtape.gate_noise) == (0, 0, 0)
    _, model = build("transformer", "mixtape", "--output-context-dropout", "0.3",
                     "--mixtape-gate-dropout", "0.2", "--mixtape-gate-noise", "0.5")
    mixtape = output_layer_of(model)
    assert (mixtape.context_dropout, mixtape.gate_dropout, mixtape.gate_noise) == (0.3, 0.2, 0.5)
    mos = output_layer_of(build("lstm_lm", "mos", "--output-context-dropout", "0.29")[1])
    assert mos.context_dropout == 0.29
    with pytest.raises(ValueError, match="--mixtape-gate-noise: got -1.0"):
        build("transformer_lm", "mixtape", "--mixtape-gate-noise", "-1")


@pytest.mark.parametrize("family,layer,former", [
    ("transformer", "mos", "--mos-context-dropout"),
    ("lstm_lm", "mos_sigsoftmax", "--mos-context-dropout"),
    ("transformer_lm", "mixtape", "--mixtape-context-dropout"),
    ("lstm", "mixtape", "--mos-context-dropout")])
def test_former_context_dropout_flags_are_aliases(family, layer, former):
    """--mos-context-dropout and --mixtape-context-dropout, the names of the context dropout
    before --output-context-dropout, set it, for every layer with context vectors; the parsed
    flags (what a checkpoint saves) hold it under its name alone."""
    args = parse(family, layer, former, "0.29")
    assert args.output_context_dropout == 0.29
    assert args.mos_context_dropout is args.mixtape_context_dropout is None
    assert output_layer_of(build(family, layer, former, "0.29")[1]).context_dropout == 0.29
    assert parse(family, layer).output_context_dropout == 0.0          # given under no name
    same = parse(family, layer, former, "0.29", "--output-context-dropout", "0.29")
    assert same.output_context_dropout == 0.29


@pytest.mark.parametrize("flags,named", [
    (["--output-context-dropout", "0.1", "--mos-context-dropout", "0.29"],
     "--output-context-dropout and --mos-context-dropout: got (0.1, 0.29)"),
    (["--mixtape-context-dropout", "0.3", "--mos-context-dropout", "0.29"],
     "--mos-context-dropout and --mixtape-context-dropout: got (0.29, 0.3)"),
    (["--mixtape-context-dropout", "0", "--output-context-dropout", "0.29"],
     "--output-context-dropout and --mixtape-context-dropout: got (0.29, 0.0)")])
def test_two_names_of_the_context_dropout_with_different_values_are_refused(flags, named):
    with pytest.raises(ValueError) as error:
        parse("transformer", "mixtape", *flags)
    assert str(error.value) == (
        f"{named}; allowed: one value: --mos-context-dropout and --mixtape-context-dropout are "
        "former names of --output-context-dropout")


def test_former_name_reaches_a_model_built_by_its_own_name():
    """A dataclass model named by its model's name (--arch transformer_lm_with_output_layer,
    no preset) reads the former name where it is built; two values are refused there too."""
    argv = ["unused-data-dir", "--task", "language_modeling", "--arch",
            "transformer_lm_with_output_layer", "--output-layer", "mos", "--cpu",
            *FAMILIES["transformer_lm"][2], "--mos-context-dropout", "0.29"]
    args = parse_train_args(argv)
    task = task_on(args, tiny_dictionary())
    assert output_layer_of(task.build_model(model_config(args))).context_dropout == 0.29
    args = parse_train_args([*argv, "--output-context-dropout", "0.1"])
    with pytest.raises(ValueError, match="--output-context-dropout and --mos-context-dropout"):
        task.build_model(model_config(args))


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_tied_embeddings_are_one_parameter(family, layer):
    _, model = build(family, layer)
    assert output_layer_of(model).weight is model.decoder.embed_tokens.weight
    names = [name for name, p in model.named_parameters()]
    assert len(names) == len(set(id(p) for p in model.parameters()))  # counted once


@pytest.mark.parametrize("layer", ["mos", "mixtape"])
def test_own_output_embedding_when_not_shared(layer):
    _, model = build("transformer_lm", layer, tied=False)
    assert output_layer_of(model).weight is not model.decoder.embed_tokens.weight


def test_decoder_output_dim_differs_from_tied_embedding():
    """A mixture reads the 16-wide hidden state and maps it to the tied 16-wide embedding: the
    stock projection to --decoder-output-dim 8 is not built into its path; after that projection
    (the 0.1 wiring) it maps 8 to 16. A single softmax cannot."""
    task, model = build("transformer_lm", "mixtape", "--decoder-output-dim", "8")
    layer = output_layer_of(model)
    assert layer.input_dim == 16 and layer.embed_dim == 16
    assert model.decoder.project_out_dim is None
    out, _ = model(torch.randint(4, 30, (2, 5)))
    assert out.shape == (2, 5, len(task.dictionary))
    _, old = build("transformer_lm", "mixtape", "--decoder-output-dim", "8",
                   "--output-layer-reads", "projection")
    assert output_layer_of(old).input_dim == 8 and output_layer_of(old).embed_dim == 16
    with pytest.raises(ValueError, match="output embedding dim"):
        build("transformer_lm", "softmax", "--decoder-output-dim", "8")


def test_adaptive_softmax_combines_only_with_softmax():
    with pytest.raises(ValueError, match="--output-layer.*adaptive"):
        build("transformer_lm", "mixtape", "--adaptive-softmax-cutoff", "10,20", tied=False)
    _, model = build("transformer_lm", "softmax", "--adaptive-softmax-cutoff", "10,20",
                     tied=False)
    assert model.decoder.adaptive_softmax is not None


def test_adaptive_input_with_tied_output_fails_clearly_and_works_untied():
    adaptive = ["--adaptive-input", "--adaptive-input-cutoff", "10,20", "--adaptive-input-factor",
                "2"]
    with pytest.raises(ValueError, match="--share-decoder-input-output-embed"):
        build("transformer_lm", "mixtape", *adaptive)
    _, model = build("transformer_lm", "mixtape", *adaptive, tied=False)
    assert type(model.decoder.embed_tokens).__name__ == "AdaptiveInput"
    out, _ = model(torch.randint(4, 30, (2, 5)))
    assert torch.isfinite(out).all()


def test_base_layers_are_kept(tmp_path):
    # BASE layers ask torch.distributed for the world size when built (stock fairseq too)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0,
                                         world_size=1)
    try:
        _, model = build("transformer", "mixtape", "--base-layers", "1")
    finally:
        torch.distributed.destroy_process_group()
    assert any(type(m).__name__ == "BaseLayer" for m in model.decoder.layers)
    assert type(output_layer_of(model)).__name__ == "Mixtape"


def test_bad_flag_value_names_the_flag():
    with pytest.raises(ValueError, match=r"--output-components \(K\): got 3"):
        build("transformer", "mixtape", "--output-components", "3")
    with pytest.raises(ValueError, match="--mixtape-frequent-tokens"):
        build("lstm_lm", "mixtape", "--mixtape-frequent-tokens", "100000")


def test_a_model_without_a_plugin_output_layer_is_named():
    task, model = build("transformer", "softmax")
    model.decoder.output_projection = torch.nn.Linear(16, len(task.target_dictionary))
    with pytest.raises(ValueError, match="no fairseq-mixtape output layer.*--arch"):
        output_layer_of(model)


def test_unsorted_dictionary_warns_about_gate_sharing(caplog):
    task, _ = build("lstm_lm", "mixtape")
    assert "not sorted by frequency" not in caplog.text  # fairseq-style sorted counts: silent
    task.dictionary.count[task.dictionary.nspecial + 3] = 10 ** 6
    task.build_model(parse("lstm_lm", "mixtape"))
    assert "--mixtape-frequent-tokens: the target dictionary is not sorted" in caplog.text


def test_adaptive_softmax_preset_takes_the_output_layer_instead():
    """The wiki103 preset ends in an adaptive softmax; P_mixtape puts Mixtape there, while
    P_mixtape --output-layer softmax keeps the stock adaptive softmax."""
    preset = "transformer_lm_wiki103"
    mixtape = parse_stock_cli("--task", "language_modeling", "--arch", f"{preset}_mixtape")
    assert mixtape.adaptive_softmax_cutoff is None and not mixtape.tie_adaptive_weights
    assert mixtape.adaptive_input  # the rest of the preset is unchanged
    softmax = parse_stock_cli("--task", "language_modeling", "--arch", f"{preset}_mixtape",
                              "--output-layer", "softmax")
    assert softmax.adaptive_softmax_cutoff is not None and softmax.tie_adaptive_weights
    task, _ = build("transformer_lm", "softmax")
    small = ["--decoder-embed-dim", "16", "--decoder-input-dim", "16", "--decoder-output-dim",
             "16", "--decoder-ffn-embed-dim", "32", "--decoder-layers", "1",
             "--decoder-attention-heads", "2", "--adaptive-input-cutoff", "10,20",
             "--adaptive-input-factor", "2"]
    args = parse_stock_cli("--task", "language_modeling", "--arch", f"{preset}_mixtape", *small)
    model = task.build_model(convert_namespace_to_omegaconf(args).model)
    assert type(output_layer_of(model)).__name__ == "Mixtape"
    out, _ = model(torch.randint(4, 30, (2, 5)))
    assert torch.isfinite(out).all()
