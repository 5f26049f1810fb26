"""The plugin package is only the plugin: importing it (as ``--user-dir`` does) loads none of the
tools in ``fairseq_mixtape_tools`` (demo, benchmark, experiments, runner, bottleneck, ...)."""

import pathlib
import pkgutil
import subprocess
import sys

import pytest

import fairseq_mixtape_tools

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_tools_are_a_separate_package():
    tools = {m.name for m in pkgutil.iter_modules(fairseq_mixtape_tools.__path__)}
    assert {"benchmark", "bottleneck", "demo", "experiments", "runner"} <= tools
    plugin = {m.name for m in pkgutil.iter_modules([str(REPO / "fairseq_mixtape")])}
    assert not plugin & tools, "tool modules left in the plugin package"


@pytest.mark.slow
def test_importing_the_plugin_loads_no_tools():
    code = ("import sys, fairseq_mixtape; "
            "print('\\n'.join(m for m in sys.modules if m.split('.')[0] == 'fairseq_mixtape_tools'"
            " or m.split('.')[-1] in ('benchmark', 'demo', 'experiments', 'runner', 'bottleneck')"
            " and m.startswith('fairseq_mixtape')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, check=True)
    assert result.stdout.split() == []


def test_runner_points_user_dir_at_the_plugin():
    from fairseq_mixtape_tools.runner import PACKAGE_DIR

    assert PACKAGE_DIR == (REPO / "fairseq_mixtape").resolve()
    assert (PACKAGE_DIR / "__init__.py").is_file() and (PACKAGE_DIR / "output_layers").is_dir()


def run_python(*argv, cwd):
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_python_m_prints_the_plugin_dir_for_user_dir_from_anywhere(tmp_path):
    """``fairseq-train --user-dir "$(python -m fairseq_mixtape)"`` from a directory that is not
    the checkout: the printed directory is the plugin, and fairseq loads it from there."""
    printed = run_python("-m", "fairseq_mixtape", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.count("\n") == 1
    plugin_dir = pathlib.Path(printed.stdout.strip())
    assert plugin_dir.is_absolute() and plugin_dir == (REPO / "fairseq_mixtape").resolve()

    helped = run_python("-m", "fairseq_cli.train", "--help", "--user-dir", str(plugin_dir),
                        cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "output_layer_cross_entropy" in helped.stdout       # the plugin's criterion
    # fairseq's --help stops before the architecture's own options are added; a bad
    # --output-layer shows that the plugin's model options are there, with their choices
    parsed = run_python("-m", "fairseq_cli.train", str(tmp_path), "--user-dir", str(plugin_dir),
                        "--task", "language_modeling", "--arch", "transformer_lm_mixtape",
                        "--output-layer", "nope", cwd=tmp_path)
    assert parsed.returncode == 2
    assert "argument --output-layer: invalid choice: 'nope'" in parsed.stderr
    assert "'mixtape'" in parsed.stderr


@pytest.mark.slow
def test_relative_user_dir_from_the_checkout():
    """``--user-dir fairseq_mixtape`` from the repository root, as the README's examples run."""
    helped = run_python("-m", "fairseq_cli.train", "--help", "--user-dir", "fairseq_mixtape",
                        cwd=REPO)
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "output_layer_cross_entropy" in helped.stdout
