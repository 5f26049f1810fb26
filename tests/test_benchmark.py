"""The benchmark's smoke run (--quick) writes a CSV, a PNG plot and a Markdown table that cover
every layer and section with finite, positive numbers. No timing is checked."""

import csv
import math

import pytest

from fairseq_mixtape_tools.benchmark import CHUNKED, LAYERS, main

pytestmark = pytest.mark.slow  # the benchmark itself

NUMBERS = ["time_ms_median", "time_ms_min", "time_ms_max", "time_ms_q1", "time_ms_q3",
           "throughput_per_s", "tensor_mb", "gflops", "params_m"]


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
    ratio_rows = [line for line in table.splitlines() if line.startswith("| transformer_wmt")]
    assert ratio_rows and all("n/a |" not in line.split("|")[2] for line in ratio_rows)


def test_mos_components_and_model_configurations(tmp_path):
    """--mos-components sets MoS's K in every section (default 15, the paper's); --model-args
    may be repeated, each configuration measured and reported on its own."""
    from fairseq_mixtape_tools.benchmark import layer_config, mixtape_flop_model, parse_args

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
    ratio_rows = [line for line in table.splitlines() if "| MoS-4 |" in line]
    assert len(ratio_rows) == 2 * 2 + 2  # output layer train/infer at --quick's 2 V; 2 lm
    assert "MoS-15" not in table
