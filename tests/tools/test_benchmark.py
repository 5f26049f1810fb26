"""The benchmark's smoke run (--quick) writes a CSV, a PNG plot and a Markdown table that cover
every layer and section with finite, positive numbers. No timing is checked. Its modules import
one another without a cycle, and its flags are checked before any work."""

import ast
import csv
import math
import subprocess
from pathlib import Path

import pytest

from fairseq_mixtape_tools import benchmark
from fairseq_mixtape_tools.benchmark.command import OUT_DIR, main, parse_args
from fairseq_mixtape_tools.benchmark.measure import CHUNKED, LAYERS
from refusals import refused

PACKAGE = Path(benchmark.__file__).parent
REPO = PACKAGE.parents[1]
NUMBERS = ["time_ms_median", "time_ms_min", "time_ms_max", "time_ms_q1", "time_ms_q3",
           "throughput_per_s", "tensor_mb", "gflops", "params_m"]


@pytest.mark.slow  # the benchmark itself
def test_quick_benchmark_writes_csv_plot_and_table(tmp_path):
    # one thread: many tiny ops are slow on a loaded 2-core machine when two threads sync
    main(["--quick", "--threads", "1", "--out-dir", str(tmp_path), "--name", "quick"])

    with open(tmp_path / "quick.csv") as f:
        rows = list(csv.DictReader(f))
    seen = {(row["section"], row["mode"], row["layer"]) for row in rows}
    expected = {("output_layer", mode, layer) for mode in ("train", "infer") for layer in LAYERS}
    expected |= {(section, "train", layer)
                 for section in ("mt", "lm") for layer in LAYERS + [CHUNKED]}
    expected |= {("beam", "decode", layer) for layer in LAYERS}
    assert expected <= seen
    assert {int(row["vocab"]) for row in rows if row["section"] == "output_layer"} == {500, 1000}
    for row in rows:
        for column in NUMBERS:
            value = float(row[column])
            assert math.isfinite(value) and value > 0, (row["section"], row["layer"], column, value)
        # RSS growth of a tiny step can be zero pages; it must still be a number
        assert math.isfinite(float(row["peak_mb"])) and float(row["peak_mb"]) >= 0
        times = [float(t) for t in row["times_ms"].split()]
        assert len(times) == int(row["repeats"]) == 2 and all(t > 0 for t in times)

    png = (tmp_path / "quick.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000

    table = (tmp_path / "quick.md").read_text()
    for heading in ["## Output layer alone", "## transformer_wmt_en_de training step",
                    "## transformer_lm training step", "## Beam search", "## Ratios"]:
        assert heading in table
    for layer in LAYERS + [CHUNKED]:
        assert f"| {layer} |" in table
    assert "(1 + (K-1) S/V)" in table and "**1.30**" in table
    assert "| target |" not in table and "| held |" not in table  # targets: benchmarks/README.md
    ratio_rows = [line for line in table.splitlines() if line.startswith("| transformer_wmt")]
    assert ratio_rows and all("n/a |" not in line.split("|")[2] for line in ratio_rows)


@pytest.mark.slow  # the benchmark itself
def test_mos_components_and_model_configurations(tmp_path):
    """--mos-components sets MoS's K in every section (default 15, the paper's); --model-args
    may be repeated, each configuration measured and reported on its own."""
    from fairseq_mixtape_tools.benchmark.measure import layer_config
    from fairseq_mixtape_tools.benchmark.report import mixtape_flop_model

    defaults = parse_args([])
    assert defaults.mos_components == 15 and defaults.model_args == [""]
    assert layer_config("mos", defaults).output_components == 15
    args = parse_args(["--mos-components", "4", "--model-args", "--decoder-layers 2",
                       "--model-args", "--decoder-layers 3"])
    assert args.model_args == ["--decoder-layers 2", "--decoder-layers 3"]
    assert layer_config("mos", args).output_components == 4
    assert layer_config("mixtape", args).output_components is None  # Mixtape keeps K = 4
    # the FLOP model's d1 is the layer's default min(64, d)
    assert mixtape_flop_model(10000, 16) == mixtape_flop_model(10000, 16, gate_dim=16)
    assert mixtape_flop_model(10000, 512) == mixtape_flop_model(10000, 512, gate_dim=64)

    configs = ["--decoder-input-dim 16 --decoder-output-dim 16",
               "--decoder-input-dim 32 --decoder-output-dim 32"]
    main(["--quick", "--threads", "1", "--sections", "output_layer", "lm", "--layers", "softmax",
          "mos", "--mos-components", "4", "--no-mos-chunked", "--model-args", configs[0],
          "--model-args", configs[1], "--no-plot",
          "--out-dir", str(tmp_path), "--name", "shapes"])
    with open(tmp_path / "shapes.csv") as f:
        rows = list(csv.DictReader(f))
    lm = {(row["model_args"], row["layer"]): row for row in rows if row["section"] == "lm"}
    assert set(lm) == {(c, layer) for c in configs for layer in ("softmax", "mos")}
    assert [int(lm[c, "softmax"]["dim"]) for c in configs] == [16, 32]  # the embedding width E
    assert {row["components"] for row in rows if row["layer"] == "mos"} == {"4"}
    table = (tmp_path / "shapes.md").read_text()
    assert all(f"; `{c}`)" in table for c in configs)
    assert "## Ratios to softmax at every shape" in table
    assert "\n## Ratios\n" not in table  # no headline ratio was measured: no table of n/a rows
    ratio_rows = [line for line in table.splitlines() if "| MoS-4 |" in line]
    assert len(ratio_rows) == 2 * 2 + 2  # output layer train/infer at --quick's 2 V; 2 lm
    assert "MoS-15" not in table


@pytest.mark.slow  # the benchmark itself
def test_compiled_entries_measured_beside_eager(tmp_path):
    """--compile both: every layer's whole training step eagerly and with
    --compile-output-layer in the same rounds; the compiled graphs exist before the timed
    rounds (none compiled during them), and the Markdown compares both modes."""
    import torch

    try:
        main(["--quick", "--threads", "1", "--sections", "lm", "--layers", "softmax", "mixtape",
              "--no-mos-chunked", "--compile", "both", "--no-plot", "--out-dir", str(tmp_path),
              "--name", "compiled"])
    finally:
        torch._dynamo.reset()
    with open(tmp_path / "compiled.csv") as f:
        rows = {row["layer"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"softmax", "mixtape", "softmax+compiled", "mixtape+compiled"}
    for name, row in rows.items():
        assert float(row["throughput_per_s"]) > 0 and len(row["times_ms"].split()) == 2
        # a dispatch mode cannot see a compiled graph's tensors: left out, not misreported
        assert math.isnan(float(row["tensor_mb"])) == name.endswith("+compiled")
    assert rows["mixtape+compiled"]["components"] == "4"
    table = (tmp_path / "compiled.md").read_text()
    assert "none during the measurement" in table and "ran eagerly" not in table
    section = table.split("## Eager and compiled")[1].split("\n## ")[0]
    compared = [line for line in section.splitlines() if line.startswith("| mixtape | ")]
    assert len(compared) == 1 and compared[0].count(" [") == 3  # 3 per-round ratios
    assert "| lm | train | 1000 | 32 |  | mixtape+compiled |" in table  # vs softmax+compiled


MEMORY_SMALL = ["--sections", "memory", "--threads", "1", "--mos-components", "4",
                "--memory-vocabs", "2000", "--memory-batch", "2", "--memory-length", "32",
                "--memory-dim", "64", "--memory-chunk-tokens", "4096", "32", "--no-plot"]


@pytest.mark.slow  # the benchmark itself
def test_memory_under_fake_tensors_equals_computed(tmp_path):
    """The memory section's live-tensor peaks under FakeTensorMode (no arithmetic) are those
    of the computed step, byte for byte, for every layer, both criterions, whole and chunked
    (checkpointed) output layers; and the comparison tells steps apart: without the backward
    pass every peak is lower."""
    import torch

    from fairseq_mixtape_tools.benchmark.sections import memory_section

    peaks = {}
    for compute in ("real", "fake"):
        args = parse_args(MEMORY_SMALL + ["--memory-compute", compute])
        peaks[compute] = {(r.layer, r.chunk_tokens): (r.tensor_mb, r.gflops)
                          for r in memory_section(args, torch.device("cpu"))}
    expected = {(layer, chunk) for layer in LAYERS for chunk in (4096, 32)}
    assert set(peaks["fake"]) == expected | {("softmax+cross_entropy", 0),
                                             ("softmax+linear_cross_entropy", 0)}
    assert peaks["fake"] == peaks["real"]
    # F.linear_cross_entropy's matrix products run inside one op, unseen by the FLOP count
    assert all(mb > 0 and (gflops > 0 or layer.endswith("+linear_cross_entropy"))
               for (layer, _), (mb, gflops) in peaks["fake"].items())
    # 2 x 32 positions in chunks of 32: one sequence at a time, so less than unchunked
    assert peaks["fake"]["mos", 32][0] < peaks["fake"]["mos", 4096][0]

    args = parse_args(MEMORY_SMALL + ["--layers", "softmax", "mixtape",
                                      "--memory-chunk-tokens", "32"])  # fake
    forward_only = {(r.layer, r.chunk_tokens): r.tensor_mb
                    for r in memory_section(args, torch.device("cpu"), backward=False)}
    assert len(forward_only) == 4
    assert all(forward_only[key] < peaks["real"][key][0] for key in forward_only)


@pytest.mark.slow  # the benchmark itself
def test_memory_section_writes_tables(tmp_path):
    """Settings as numbers and ``default`` (the criterion's flag unset: at V = 2K, 4096)."""
    main(MEMORY_SMALL + ["--layers", "softmax", "mixtape", "--memory-chunk-tokens", "default",
                         "32", "--out-dir", str(tmp_path), "--name", "memory"])
    with open(tmp_path / "memory.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(row["layer"], row["chunk_tokens"]) for row in rows} == {
        ("softmax", "4096"), ("mixtape", "4096"), ("softmax", "32"), ("mixtape", "32"),
        ("softmax+cross_entropy", ""), ("softmax+linear_cross_entropy", "")}
    table = (tmp_path / "memory.md").read_text()
    assert "## Peak training memory at large vocabularies (2 x 32 target tokens, E = 64)" in table
    assert "| V | layer | MiB, chunks unset | MiB, chunks 32 |" in table
    assert "| 2K | unset (4096) | " in table and "| 2K | 32 (32) | " in table
    assert "FakeTensorMode" in table
    assert "## Ratios" not in table  # nothing timed


@pytest.mark.slow  # the benchmark itself
def test_memory_unset_chunks_follow_each_layer(tmp_path, monkeypatch):
    """Unset, MoS-K's chunks hold K times fewer positions than softmax's (K x V scores per
    position), and the table names both sizes."""
    from fairseq_mixtape import losses as chunked

    monkeypatch.setattr(chunked, "CHUNK_SCORES", 2000 * 64)  # softmax: 64 positions at V = 2K
    main(MEMORY_SMALL + ["--layers", "softmax", "mos", "--memory-chunk-tokens", "default",
                         "--out-dir", str(tmp_path), "--name", "memory"])
    with open(tmp_path / "memory.csv") as f:
        rows = {row["layer"]: row["chunk_tokens"] for row in csv.DictReader(f)}
    assert rows["softmax"] == "64" and rows["mos"] == "16"
    assert "| 2K | unset (16 MoS-4, 64 the others) | " in (tmp_path / "memory.md").read_text()


def grid_args(tmp_path, dims, vocabs, modes=("eager",)):
    return ["--grid", "--threads", "1", "--grid-dims", *map(str, dims), "--grid-vocabs",
            *map(str, vocabs), "--grid-positions", "8", "--grid-modes", *modes, "--repeats", "2",
            "--mos-repeats", "2", "--out-dir", str(tmp_path), "--name", "grid"]


def read_grid(tmp_path):
    with open(tmp_path / "grid.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # the benchmark itself
def test_grid_writes_tables_and_plot_and_resumes(tmp_path, capsys):
    """--grid: every (E, V) cell, its rows appended to the CSV; tables and heat map from it.
    A rerun measures only the (cell, mode) pairs the CSV lacks: here one cell compiled (each
    compiled graph costs seconds), then nothing."""
    from fairseq_mixtape_tools.benchmark.grid import GRID_LAYERS

    main(grid_args(tmp_path, [8, 16], [50, 100]))
    rows = read_grid(tmp_path)
    assert len(rows) == 4 * len(GRID_LAYERS)
    assert {(int(r["dim"]), int(r["vocab"]), r["mode"]) for r in rows} == {
        (d, v, "eager") for d in (8, 16) for v in (50, 100)}
    for row in rows:
        assert row["status"] == "measured" and row["components"] == "4"
        assert len(row["times_ms"].split()) == 2 and float(row["time_ms_median"]) > 0
        assert float(row["gflops"]) > 0 and float(row["tensor_mb"]) > 0
        if row["layer"] == "softmax":
            assert float(row["time_ratio_median"]) == float(row["flop_ratio"]) == 1
        else:  # Mixtape and MoS-4 do more matrix products than softmax
            assert float(row["flop_ratio"]) > 1 and float(row["time_ratio_median"]) > 0
    table = (tmp_path / "grid.md").read_text()
    for layer in ("mixtape", "MoS-4"):
        for mode in ("eager", "compiled"):
            assert f"### {layer} / softmax, {mode}" in table
    assert table.count("(F ") == 2 * 4  # Mixtape and MoS-4 at 4 cells, eager
    png = (tmp_path / "grid.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000

    capsys.readouterr()
    main(grid_args(tmp_path, [8], [50], modes=("eager", "compiled")))
    assert "E=8 V=50: eager already in" in capsys.readouterr().out
    rows = read_grid(tmp_path)
    compiled = [r for r in rows if r["mode"] == "compiled"]
    assert len(rows) == 5 * len(GRID_LAYERS) and len(compiled) == len(GRID_LAYERS)
    for row in compiled:
        assert (row["dim"], row["vocab"], row["status"]) == ("8", "50", "measured")
        assert float(row["compile_s"]) > 0 and row["tensor_mb"] == "" and not row["note"]
    assert (tmp_path / "grid.md").read_text().count("(F ") == 2 * 5

    main(grid_args(tmp_path, [8], [50], modes=("eager", "compiled")))
    assert "E=8 V=50: eager, compiled already in" in capsys.readouterr().out
    assert read_grid(tmp_path) == rows


def test_grid_refuses_a_csv_measured_with_other_settings(tmp_path, capsys):
    """A grid CSV holds one configuration (positions, K, device, dtype, threads): a run with
    another is refused before it measures, in one line naming --name and both."""
    from fairseq_mixtape_tools.benchmark import grid

    args = parse_args(grid_args(tmp_path, [8], [50]))
    ours = grid.config(args)
    rows = [{**ours, "positions": "999", "dim": "8", "vocab": "50", "mode": "eager"}]
    message = refused(lambda _: grid.done_cells(rows, args, tmp_path / "grid.csv"), [], capsys)
    assert message.startswith(f"--name: got 'grid', whose {tmp_path / 'grid.csv'} holds cells "
                              "measured with ")
    assert grid.format_config({**ours, "positions": "999"}) in message
    assert f"this run has {grid.format_config(ours)}" in message
    assert grid.done_cells(rows[:0], args, tmp_path / "grid.csv") == set()


@pytest.mark.slow  # the benchmark itself
def test_grid_skips_a_cell_that_would_not_fit(tmp_path, monkeypatch, capsys):
    """A cell whose estimated peak memory (with the margin) exceeds the memory available is
    not run: a row per mode says skipped, with the estimate; the tables say so too."""
    from fairseq_mixtape_tools.benchmark import grid

    args = parse_args(grid_args(tmp_path, [8], [50, 20000]))
    estimates = {vocab: grid.cell_memory_mb({name: grid.layer_cost(name, 8, vocab, 8, args)
                                             for name in grid.GRID_LAYERS})
                 for vocab in (50, 20000)}
    assert 0 < estimates[50] < estimates[20000]
    needed = {v: e * grid.MEMORY_FACTOR + grid.MEMORY_RESERVE_MB for v, e in estimates.items()}
    monkeypatch.setattr(grid, "available_mb", lambda device: (needed[50] + needed[20000]) / 2)
    main(grid_args(tmp_path, [8], [50, 20000]))
    rows = read_grid(tmp_path)
    assert [(r["vocab"], r["status"]) for r in rows] == [("50", "measured")] * 3 + [
        ("20000", "skipped")]
    assert float(rows[-1]["estimate_mb"]) == pytest.approx(estimates[20000], rel=1e-3)
    assert "E=8 V=20000: skipped, estimated" in capsys.readouterr().out
    assert "skipped (est." in (tmp_path / "grid.md").read_text()


@pytest.mark.parametrize("flags, message", [
    (["--grid-vocabs", "5"], "--grid-vocabs: got 5; allowed: whole numbers >= 10"),
    (["--grid-dims", "0", "16"], "--grid-dims: got 0; allowed: whole numbers >= 1"),
    (["--grid-dims", "16", "16"], "--grid-dims: got 16 16; allowed: each value once"),
    (["--grid-positions", "0"], "--grid-positions: got 0; allowed: a whole number >= 1"),
    (["--repeats", "0"], "--repeats: got 0; allowed: >= 1 with --grid"),
    (["--memory-chunk-tokens", "many"],
     "--memory-chunk-tokens: got 'many'; allowed: a whole number >= 0 or 'default'"),
])
def test_grid_flags_are_checked_before_any_work(flags, message, capsys):
    assert message in refused(parse_args, ["--grid", *flags], capsys)


def test_quick_supplies_defaults_only_for_flags_not_given():
    """--quick's sizes and rounds are defaults: a flag given keeps its value, in any order, even
    where it equals the flag's own default (--repeats 5)."""
    quick = parse_args(["--quick"])
    assert (quick.repeats, quick.vocabs, quick.dims, quick.warmup) == (2, [500, 1000], [32], 0)
    for argv in (["--quick", "--repeats", "5", "--vocabs", "2000", "--warmup", "1"],
                 ["--repeats", "5", "--vocabs", "2000", "--warmup", "1", "--quick"]):
        given = parse_args(argv)
        assert (given.repeats, given.vocabs, given.warmup) == (5, [2000], 1), argv
        assert (given.dims, given.mos_repeats, given.name) == ([32], 2, "benchmark_cpu_quick")
    grid = parse_args(["--quick", "--grid", "--grid-dims", "32"])
    assert (grid.grid_dims, grid.grid_vocabs, grid.grid_positions) == ([32], [50, 100], 8)


def test_default_out_dir_is_git_ignored():
    """Without --out-dir the results go to OUT_DIR, which git ignores wherever it is made: a run
    does not dirty the checkout, whose benchmarks/ holds the published results."""
    assert parse_args([]).out_dir == parse_args(["--grid"]).out_dir == OUT_DIR != "benchmarks"
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for folder in (OUT_DIR, f"examples/{OUT_DIR}"):
        ignored = subprocess.run(["git", "check-ignore", "-q", f"{folder}/benchmark_cpu.csv"],
                                 cwd=REPO)
        assert ignored.returncode == 0, f"{folder} is not git-ignored"
    published = subprocess.run(["git", "check-ignore", "-q", "benchmarks/benchmark_cpu.csv"],
                               cwd=REPO)
    assert published.returncode == 1


@pytest.mark.slow  # the benchmark itself
def test_results_go_to_the_default_out_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["--quick", "--threads", "1", "--sections", "output_layer", "--layers", "softmax",
          "--no-plot", "--name", "quick"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [OUT_DIR]
    assert sorted(p.name for p in (tmp_path / OUT_DIR).iterdir()) == ["quick.csv", "quick.md"]


def package_imports(module: str) -> set:
    """The modules of the benchmark package that ``module`` imports, at its top or in a function."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    return {name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1
            for name in ([node.module] if node.module else [a.name for a in node.names])}


def test_modules_depend_on_measurement_and_report_without_a_cycle():
    """The grid (like the sections and the report) depends on the measurement and the report
    only, never on the command line that runs it; ``__init__`` imports nothing when loaded."""
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    graph = {module: package_imports(module) for module in modules}
    assert graph == {"measure": set(), "report": {"measure"}, "sections": {"measure"},
                     "grid": {"measure", "report"},
                     "command": {"grid", "measure", "report", "sections"}}
    init = ast.parse((PACKAGE / "__init__.py").read_text())
    assert not [node for node in init.body if isinstance(node, (ast.Import, ast.ImportFrom))]
