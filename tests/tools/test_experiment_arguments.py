"""The experiments' fairseq-train arguments are those of the scripts they were before they became
the package fairseq_mixtape_tools.experiments: exactly, argument by argument, run by run, in the
order the runs are planned; and each experiment offers the same interface (common.Driver), which
is all these checks use.

tests/fixtures/experiment_train_arguments.json was made at commit ae83ef8 (the last one with the
experiments' code in examples/language_model/ptb_experiment.py,
examples/translation/multi30k_experiment.py and examples/language_model/bottleneck_sweep.py) by a
one-off script, run in an empty folder, that loaded those three scripts from their files and, for
each case's ``argv`` in the fixture, called the script's ``parse_args``, planned its runs
(``plan_runs`` for the PTB experiment, ``plan`` for the others) and trained each with
``Run.train`` while ``run_tool`` only recorded its arguments (the plugin folder written as
<PACKAGE_DIR>; the sweep's total updates, which it counts from its prepared data, are the case's
``total_updates``). The cases cover every output variant each experiment accepts, several seeds
and widths, the default flags and non-default ones. The same script recorded what
scripts/logit_scale.py's ``network_arguments`` returned for each of its experiment networks, and
scripts/gradient_norms.py's ``train_commands`` for three cases (with a stand-in prepared data-bin
and the sweep's ``updates_per_epoch`` returning the case's value).

One deliberate change since: the sweep's mixtape_linear takes the extra seeds at the smallest E,
as mixtape and its control do, so the run E8_mixtape_linear_seed2 was added to the sweep's
second case by hand (the arguments of E8_mixtape_linear_seed1 with --seed 2 and its own folder).
"""

import inspect
import json
import pathlib

import pytest

from fairseq_mixtape_tools import gradient_norms, logit_scale
from fairseq_mixtape_tools.experiments import common, multi30k, ptb, sweep
from fairseq_mixtape_tools.runner import PACKAGE_DIR

DRIVERS = {"ptb": ptb, "multi30k": multi30k, "sweep": sweep}

FIXTURE = json.loads((pathlib.Path(__file__).resolve().parents[1] / "fixtures"
                      / "experiment_train_arguments.json").read_text())
CASES = [(driver, index, case) for driver, cases in FIXTURE["drivers"].items()
         for index, case in enumerate(cases)]


def clean(arguments):
    return [str(a).replace(str(PACKAGE_DIR), "<PACKAGE_DIR>") for a in arguments]


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """What Run.train passes to fairseq-train, run by run; nothing runs. The run folders are
    made in an empty working directory (the cases' --out are relative)."""
    monkeypatch.chdir(tmp_path)
    calls = []

    def run_tool(tool, arguments, log_path, *rest, **options):
        log_path.write_text("")
        calls.append((tool, clean(arguments)))
        return ""
    monkeypatch.setattr(common, "run_tool", run_tool)
    return calls


@pytest.mark.parametrize("name", DRIVERS)
def test_every_experiment_offers_the_driver_interface(name):
    driver = DRIVERS[name]
    assert isinstance(driver, common.Driver)
    members = [member for member in vars(common.Driver) if not member.startswith("_")]
    assert set(members) == {"parse_args", "plan", "run_for", "train_arguments", "train",
                            "write_table", "main"}
    for member in members:
        expected = inspect.signature(getattr(common.Driver, member)).parameters
        found = inspect.signature(getattr(driver, member)).parameters
        assert list(found) == [p for p in expected if p != "self"], (name, member)
    assert driver.STAGES[-1] == "table" and "train" in driver.STAGES


@pytest.mark.parametrize("driver,index,case", CASES,
                         ids=[f"{driver}-{index}" for driver, index, _ in CASES])
def test_train_arguments_unchanged(recorded, driver, index, case):
    driver = DRIVERS[driver]
    args = driver.parse_args(case["argv"])
    if "total_updates" in case:  # the sweep's, which it counts from its prepared data
        args.total_updates = case["total_updates"]
    found = []
    for run in driver.plan(args):
        recorded.clear()
        driver.train(args, run)
        (tool, arguments), = recorded
        assert tool == "train"
        found.append({"name": run.name, "dir": str(run.dir), "train": arguments})
    assert [run["name"] for run in found] == [run["name"] for run in case["runs"]]
    for run, expected in zip(found, case["runs"]):
        assert run == expected


def test_logit_scale_networks_unchanged():
    for name, expected in FIXTURE["logit_scale"].items():
        assert logit_scale.network_arguments(name)[1] == expected, name


@pytest.mark.parametrize("index", range(len(FIXTURE["gradient_norms"])))
def test_gradient_norms_commands_unchanged(monkeypatch, tmp_path, index):
    case = FIXTURE["gradient_norms"][index]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prepared" / "data-bin").mkdir(parents=True)
    (tmp_path / "prepared" / "data-bin" / "train.bin").write_text("")
    monkeypatch.setattr(sweep, "updates_per_epoch", lambda args: case["updates_per_epoch"])
    commands = gradient_norms.train_commands(gradient_norms.parse_args(case["argv"]))
    assert {layer: clean(arguments) for layer, arguments in commands.items()} == case["commands"]
