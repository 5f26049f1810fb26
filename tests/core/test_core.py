"""The core (output layers, their config and chunked loss) with torch alone. CI runs this file a
second time in a virtual environment without fairseq (.ci/run), where the package imports only
the core; here, beside fairseq, the same layers are built through the same API."""

import dataclasses
import importlib.util
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import fairseq_mixtape
from fairseq_mixtape import OutputLayerConfig, build_output_layer
from fairseq_mixtape.output_layers import upgraded_settings
from fairseq_mixtape.losses import chunked_token_losses
from layers import LAYERS, MIXTURES, build_layer

FAIRSEQ_INSTALLED = importlib.util.find_spec("fairseq") is not None
C, E, V = 12, 6, 40  # hidden width d, output embedding width E, vocabulary


def layer_of(name: str, **options):
    """K = 4 for Mixtape (a power of two), 3 for MoS; the mixtures' contexts E wide."""
    mixture = name in MIXTURES
    return build_layer(name, C, V, output_components=4 if name == "mixtape" else 3,
                       embed_dim=E if mixture else C, first_target=2, **options)


@pytest.mark.skipif(FAIRSEQ_INSTALLED, reason="fairseq is installed here; the environment "
                    "without it (.ci/run's .venv-core) runs this test")
def test_package_imports_the_core_alone_without_fairseq():
    assert fairseq_mixtape.FAIRSEQ is False
    assert "fairseq_mixtape.models" not in sys.modules and "fairseq" not in sys.modules


def test_another_missing_module_still_raises(tmp_path):
    """Only fairseq's own absence is tolerated: a fairseq that fails to import one of its
    dependencies makes the import fail, naming that dependency."""
    broken = tmp_path / "fairseq"
    broken.mkdir()
    (broken / "__init__.py").write_text("import a_dependency_that_is_missing\n")
    code = "import fairseq_mixtape"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path)}, timeout=120)
    assert done.returncode != 0
    assert "No module named 'a_dependency_that_is_missing'" in done.stderr


@pytest.mark.parametrize("name", LAYERS)
def test_every_layer_builds_normalises_and_trains_a_step(name):
    layer = layer_of(name).double()
    features = torch.randn(3, 5, C, dtype=torch.float64)
    log_probs = F.log_softmax(layer(features), dim=-1)                     # (3, 5, V)
    torch.testing.assert_close(log_probs.logsumexp(-1), torch.zeros(3, 5, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    target = torch.randint(2, V, (3, 5))
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    losses = []
    for _ in range(2):
        nll = chunked_token_losses(layer, features, target, padding_idx=-100, chunk_tokens=5).nll
        losses.append(nll.sum())
        optimizer.zero_grad()
        losses[-1].backward()
        optimizer.step()
    assert losses[1] < losses[0]
    full = -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)          # the whole (3, 5, V)
    torch.testing.assert_close(losses[0], full.sum().float(), rtol=1e-6, atol=0)  # float32 loss


def test_bad_value_names_the_option():
    with pytest.raises(ValueError, match=r"--output-components \(K\): got 3"):
        build_output_layer(OutputLayerConfig(output_layer="mixtape", output_components=3), C, V)


SAVED_BEFORE_THE_RENAME = dict(mos_context_dropout=0.29, mixtape_context_dropout=0.1,
                               compile_output_layer=True)


@pytest.mark.parametrize("name,dropout", [("mos", 0.29), ("mos_sigsoftmax", 0.29),
                                          ("mixtape", 0.1), ("softmax", 0.0), ("sigsoftmax", 0.0)])
def test_settings_saved_under_former_names_read_as_their_layer_read_them(name, dropout):
    """A config saved before --output-context-dropout holds MoS's and Mixtape's own names of it
    (and compile_output_layer, now chosen by each run): each layer gets the one it read."""
    saved = {**dataclasses.asdict(OutputLayerConfig(output_layer=name)),
             **SAVED_BEFORE_THE_RENAME}
    del saved["output_context_dropout"]
    upgraded = upgraded_settings(saved)
    assert not set(SAVED_BEFORE_THE_RENAME) & set(upgraded)
    cfg = OutputLayerConfig(**upgraded)
    assert cfg.output_context_dropout == dropout
    if dropout:
        assert layer_of(name, output_context_dropout=cfg.output_context_dropout
                        ).context_dropout == dropout
    # a config saved with the setting's name keeps it
    assert upgraded_settings({**saved, "output_context_dropout": 0.2})[
        "output_context_dropout"] == 0.2


def test_core_modules_do_not_import_fairseq():
    code = textwrap.dedent("""
        import sys
        import fairseq_mixtape.output_layers, fairseq_mixtape.losses
        core = [m for m in sys.modules if m.startswith("fairseq_mixtape")]
        print(sorted(core))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    if not FAIRSEQ_INSTALLED:
        assert "fairseq_mixtape.models" not in done.stdout
