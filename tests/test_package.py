"""The plugin package is only the plugin: importing it (as ``--user-dir`` does) loads none of the
tools in ``fairseq_mixtape_tools`` (demo, benchmark, experiments, runner, bottleneck, ...)."""

import pathlib
import pkgutil
import subprocess
import sys

import fairseq_mixtape_tools

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_tools_are_a_separate_package():
    tools = {m.name for m in pkgutil.iter_modules(fairseq_mixtape_tools.__path__)}
    assert {"benchmark", "bottleneck", "demo", "experiments", "runner"} <= tools
    plugin = {m.name for m in pkgutil.iter_modules([str(REPO / "fairseq_mixtape")])}
    assert not plugin & tools, "tool modules left in the plugin package"


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
