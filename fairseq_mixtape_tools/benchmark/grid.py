"""The output layer alone over a (V, E) grid, eagerly and compiled: ``benchmark.py --grid``.

    python scripts/benchmark.py --grid --threads 1     # <out-dir>/grid_cpu.{csv,md,png}
    python scripts/benchmark.py --grid --quick         # tiny sizes, 2 rounds (grid_cpu_quick.*)

What one step is: the training step of the layer alone on random features (1 sequence of N
positions, width E) and random targets, as the plugin's criterions compute it for one chunk:
``losses.token_losses`` (the layer's forward, float32 log_softmax, NLL of every
position), the backward of the summed NLL to the features and the parameters. Two modes:

``eager``     ``token_losses`` itself;
``compiled``  ``compiled_token_losses()``: the layer, log_softmax and loss compiled as one function,
              as the criterions run them with ``--compile-output-layer``. Compiling is done in
              untimed warm-up steps (one per layer; their seconds are reported as ``compile_s``).

Layers: softmax, Mixtape (K=4, S=0.1V, d1=min(64, E)) and MoS (K=``--mos-components``, 4 with
``--grid``). Each cell (E, V) builds the three layers, and each mode times them with the
benchmark's ``measure()``: rounds with one step of every layer, the order rotated from round to
round; a layer's time relative to softmax's is the median [min-max] of the per-round ratios in
that mode. The FLOP ratio beside it is that of the counted matrix-product FLOPs of the steps
(``LiveTensorPeak`` in measure()'s tracked step). That step runs eagerly in both modes:
torch.compile does not compile under a dispatch mode, so the compiled rows' FLOPs are the eager
step's, and their live-tensor peak is left out (their RSS peak is of a compiled step).

Before a cell runs, its peak memory is estimated from probe steps (below); a cell that would not
fit in the memory available (``/proc/meminfo`` MemAvailable, or free CUDA memory) with a margin
is not run: a row marks it skipped, with the estimate. The compiler's caches are reset
(``torch._dynamo.reset()``) before every cell.

Resumable: each (cell, mode) is appended to the CSV as it finishes; a rerun with the same
``--out-dir`` / ``--name`` measures only the (cell, mode) pairs the CSV does not hold (skipped
ones included: delete their rows to retry them). The Markdown tables and the heat map are
written from the whole CSV at the end of every run.

Estimates (printed before the first cell): the probes run each layer's eager step at V0 and
2 V0 (small) with PROBE_POSITIONS positions at the cell's E under ``LiveTensorPeak``;
parameters, FLOPs and the live-tensor peak are extrapolated linearly in V (Mixtape's S is a
fraction of V) and, less the parameter gradients, in N. Time = FLOPs / the FLOP rate of a
linear layer's forward and backward measured at that E + live-tensor bytes / the rate of a
float32 log-softmax and NLL step over them (both rates measured on CPU), plus COMPILE_S per
layer and cell compiled; fixed costs per step (Python, the tracked step's dispatch) are left out,
so tiny cells take many times their estimate. After each cell, the rest of the estimate is
scaled by the measured / estimated time of the cells so far.
"""

import csv
import gc
import math
import shlex
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..arguments import refuse
from ..bottleneck import pyplot
from ..memory import LiveTensorPeak, malloc_trim
from .measure import (Result, autocast, compiled_graphs, layer_config, log, measure, params_m,
                      synchronize)
from .report import describe_device, fmt, layer_label, load_average, paired_ratio

GRID_LAYERS = ["softmax", "mixtape", "mos"]
MODES = ["eager", "compiled"]
DIMS = [16, 64, 256, 1024]
VOCABS = [10000, 32000, 128000, 256000]
POSITIONS = 64        # the default grid in 30-60 minutes on one CPU core shared with other jobs
MOS_COMPONENTS = 4    # MoS's K with --grid (unless --mos-components)
QUICK = dict(grid_dims=[8, 16], grid_vocabs=[50, 100], grid_positions=8)  # --quick's defaults
MIN_VOCAB = 10        # Mixtape's S = 0.1 V: at least one token with its own gates
NO_PADDING = -1       # padding_idx of the loss: no target is padding, every position counts

PROBE_VOCAB = 200     # the probes' V0 (and 2 V0)
PROBE_POSITIONS = 16
RATE_VOCAB = 16000    # the width of the rate measurements' matrix products and log-softmax
COMPILE_S = 20.0      # rough seconds to compile one layer's step (inductor, one busy CPU core)
MEMORY_FACTOR = 1.25  # a cell runs where estimate x MEMORY_FACTOR + MEMORY_RESERVE_MB fits
MEMORY_RESERVE_MB = 1024.0

COLUMNS = ["dim", "vocab", "positions", "mode", "layer", "components", "status",
           "time_ms_median", "time_ms_min", "time_ms_max", "times_ms", "time_ratio_median",
           "time_ratio_min", "time_ratio_max", "gflops", "flop_ratio", "peak_mb", "tensor_mb",
           "compile_s", "seconds", "estimate_mb", "available_mb", "device", "dtype", "threads",
           "load", "note"]
CONFIG = ["positions", "components", "device", "dtype", "threads"]  # equal in one CSV


# ----------------------------------------------------------------------------- arguments
def add_arguments(parser):
    g = parser.add_argument_group(
        "output layer over a (V, E) grid (--grid; see fairseq_mixtape_tools/benchmark/grid.py)")
    g.add_argument("--grid", action="store_true",
                   help="instead of the sections: the training step of the output layer alone "
                        "(softmax, Mixtape, MoS), eager and compiled, at every (E, V); "
                        "resumable, to <out-dir>/<name>.csv (name: grid_<device>), .md, .png")
    g.add_argument("--grid-dims", type=int, nargs="+", default=DIMS, help="E (= d), each")
    g.add_argument("--grid-vocabs", type=int, nargs="+", default=VOCABS, help="V, each")
    g.add_argument("--grid-positions", type=int, default=POSITIONS, help="positions N per step")
    g.add_argument("--grid-modes", nargs="+", default=MODES, choices=MODES,
                   help="eager: losses.token_losses; compiled: "
                        "compiled_token_losses(), as with --compile-output-layer")


def resolve_args(parser, args):
    """MoS's K, and the checks of the grid flags (argparse errors that name the flag, the value
    and what is allowed, before any work)."""
    if args.mos_components is None:
        args.mos_components = MOS_COMPONENTS if args.grid else 15

    def check(ok, flag, value, allowed):
        if not ok:
            parser.error(f"{flag}: got {value}; allowed: {allowed}")

    for flag, values, least in [("--grid-dims", args.grid_dims, 1),
                                ("--grid-vocabs", args.grid_vocabs, MIN_VOCAB)]:
        bad = [v for v in values if v < least]
        check(not bad, flag, " ".join(map(str, bad)),
              f"whole numbers >= {least}" + (" (Mixtape's S = 0.1 V must be at least one token)"
                                             if least == MIN_VOCAB else ""))
        check(len(set(values)) == len(values), flag, " ".join(map(str, values)),
              "each value once")
    for flag, value in [("--grid-positions", args.grid_positions),
                        ("--mos-components", args.mos_components)]:
        check(value >= 1, flag, value, "a whole number >= 1")
    check(len(set(args.grid_modes)) == len(args.grid_modes), "--grid-modes",
          " ".join(args.grid_modes), "each of eager, compiled once")
    if args.grid:
        check(args.repeats >= 1, "--repeats", args.repeats,
              ">= 1 with --grid (ratios need a round)")
        check(args.mos_repeats >= 1, "--mos-repeats", args.mos_repeats,
              ">= 1 with --grid (MoS's ratio needs a round)")
        check(args.warmup >= 0, "--warmup", args.warmup, ">= 0")


# ----------------------------------------------------------------------------- one step
def train_step(losses, layer, features, target, args, device):
    """One training step of the layer alone: ``losses`` (token_losses or its compiled form) =
    forward, float32 log_softmax, NLL at every position; backward of the summed NLL to the
    features and the parameters; the gradients dropped."""
    with autocast(args, device):
        nll = losses(layer, features, target, padding_idx=NO_PADDING, smooth=False,
                     predict=False).nll                                    # (1, N)
    nll.sum().backward()
    layer.zero_grad(set_to_none=True)
    features.grad = None


def build_layer(name: str, dim: int, vocab: int, args, device):
    from fairseq_mixtape.output_layers import build_output_layer

    torch.manual_seed(args.seed)
    return build_output_layer(layer_config(name, args), dim, vocab).to(device)


def random_batch(dim: int, vocab: int, positions: int, device):
    """Features (1, N, E) with gradients and targets (1, N): one sequence of N positions, the
    (b, T, C) / (b, T) shapes of one chunk of the criterion."""
    features = torch.randn(1, positions, dim, device=device, requires_grad=True)
    target = torch.randint(0, vocab, (1, positions), device=device)
    return features, target


# ----------------------------------------------------------------------------- estimates
@dataclass
class Cost:
    """One layer's eager training step at one (E, V, N), extrapolated from probes."""
    params: float       # parameters (float32)
    live_bytes: float   # live-tensor peak of the step, parameter gradients included
    flops: float        # matrix-product FLOPs

    @property
    def activation_bytes(self) -> float:
        return self.live_bytes - 4 * self.params


def probe(name: str, dim: int, vocab: int, args) -> Cost:
    """The eager step of ``name`` at (dim, vocab, PROBE_POSITIONS) on CPU, under LiveTensorPeak."""
    cpu = torch.device("cpu")
    layer = build_layer(name, dim, vocab, args, cpu)
    features, target = random_batch(dim, vocab, PROBE_POSITIONS, cpu)
    from fairseq_mixtape.losses import token_losses

    with LiveTensorPeak() as tracker:
        train_step(token_losses, layer, features, target, args, cpu)
    return Cost(sum(p.numel() for p in layer.parameters()), tracker.peak, tracker.flops)


def layer_cost(name: str, dim: int, vocab: int, positions: int, args) -> Cost:
    """``name``'s step at (dim, vocab, positions), from probes at V0 and 2 V0: parameters,
    FLOPs and activation bytes are affine in V; FLOPs and activations proportional to N."""
    low, high = probe(name, dim, PROBE_VOCAB, args), probe(name, dim, 2 * PROBE_VOCAB, args)

    def at_vocab(y0, y1):
        return y0 + (y1 - y0) * (vocab - PROBE_VOCAB) / PROBE_VOCAB

    scale = positions / PROBE_POSITIONS
    params = at_vocab(low.params, high.params)
    activations = at_vocab(low.activation_bytes, high.activation_bytes) * scale
    return Cost(params, 4 * params + max(activations, 0.0), at_vocab(low.flops, high.flops) * scale)


def cell_memory_mb(costs: Dict[str, Cost]) -> float:
    """Estimated peak of a cell: every layer's parameters (all built at once) and the largest
    step (its live tensors, parameter gradients included), MiB."""
    held = sum(4 * c.params for c in costs.values())
    return (held + max(c.live_bytes for c in costs.values())) / 2 ** 20


def fits(estimate_mb: float, available: float) -> bool:
    return estimate_mb * MEMORY_FACTOR + MEMORY_RESERVE_MB <= available


def available_mb(device) -> float:
    """Memory a cell may use now: free CUDA memory, or /proc/meminfo's MemAvailable (CPU; inf
    where it cannot be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2 ** 20
    malloc_trim()  # return the previous cell's freed heap first
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.inf


def median_seconds(step, times=3) -> float:
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def measured_rates(dims: Sequence[int], positions: int) -> Tuple[Dict[int, float], float]:
    """Quick rates for the duration estimate (CPU, float32): FLOP/s of a linear layer's
    forward and backward, (N, E) x (E, RATE_VOCAB), at every E; and live-tensor bytes per second
    of a log_softmax + NLL step (forward and backward) over (N, RATE_VOCAB)."""
    flop_rates = {}
    for dim in dims:
        x = torch.randn(positions, dim, requires_grad=True)
        w = torch.randn(RATE_VOCAB, dim, requires_grad=True)
        seconds = median_seconds(lambda: F.linear(x, w).sum().backward())
        flop_rates[dim] = 6 * positions * RATE_VOCAB * dim / seconds
    scores = torch.randn(positions, RATE_VOCAB, requires_grad=True)
    target = torch.randint(0, RATE_VOCAB, (positions,))

    def softmax_loss():
        F.nll_loss(F.log_softmax(scores, dim=-1), target, reduction="sum").backward()

    with LiveTensorPeak() as tracker:
        softmax_loss()
    return flop_rates, tracker.peak / median_seconds(softmax_loss)


def steps_per_mode(name: str, args) -> int:
    """measure()'s steps of one layer: tracked, memory, warm-up, timed rounds."""
    rounds = min(args.repeats, args.mos_repeats) if name.startswith("mos") else args.repeats
    return 2 + args.warmup + rounds


def cell_seconds(costs: Dict[str, Cost], dim: int, modes, rates, args) -> float:
    """Estimated seconds of one cell in ``modes`` (an estimate: see the module docstring)."""
    flop_rates, byte_rate = rates
    total = 0.0
    for name, cost in costs.items():
        step = cost.flops / flop_rates[dim] + cost.activation_bytes / byte_rate
        for mode in modes:
            total += step * steps_per_mode(name, args)
            if mode == "compiled":
                total += step + COMPILE_S
    return total


# ----------------------------------------------------------------------------- measuring
def measure_cell(dim: int, vocab: int, mode: str, args, device) -> Dict[str, Tuple]:
    """Every layer at (dim, vocab) in ``mode``, interleaved: {layer: (Result, compile s, note)}."""
    from fairseq_mixtape.losses import compiled_token_losses, token_losses

    torch._dynamo.reset()  # no graphs (and guards) of the previous cell
    compiled_token_losses.cache_clear()  # and a fresh Compiled: no fallback carried over
    layers = {name: build_layer(name, dim, vocab, args, device) for name in GRID_LAYERS}
    torch.manual_seed(args.seed)
    features, target = random_batch(dim, vocab, args.grid_positions, device)
    losses = token_losses if mode == "eager" else compiled_token_losses()
    steps = {name: (lambda layer=layer: train_step(losses, layer, features, target, args, device))
             for name, layer in layers.items()}
    compile_s = compile_steps(steps, device) if mode == "compiled" else {}
    graphs = unique_graphs()
    entries = {name: Result("grid", mode, name, vocab, dim, args.grid_positions, "positions",
                            params_m=params_m(layer))
               for name, layer in layers.items()}
    measure(entries, steps, args, device, f"grid {mode} E={dim} V={vocab}")
    note = compiled_note(losses, graphs) if mode == "compiled" else ""
    if note:
        log(f"  WARNING: {note}")
    return {name: (entries[name], compile_s.get(name, math.nan), note) for name in GRID_LAYERS}


def compile_steps(steps, device) -> Dict[str, float]:
    """One untimed step per layer, which compiles its graphs (forward and backward): seconds."""
    seconds = {}
    for name, step in steps.items():
        started = time.perf_counter()
        step()
        synchronize(device)
        seconds[name] = time.perf_counter() - started
    return seconds


def unique_graphs() -> int:
    return compiled_graphs().get("stats.unique_graphs", 0)


def compiled_note(compiled, graphs_before: int) -> str:
    """'' where every timed step ran compiled graphs made in the warm-up; else what happened."""
    notes = []
    if compiled.failure:
        notes.append(f"ran eagerly (compiling failed: {compiled.failure})")
    if unique_graphs() != graphs_before:
        notes.append(f"compiled {unique_graphs() - graphs_before} graph(s) during the measurement")
    return "; ".join(notes)


# ----------------------------------------------------------------------------- the CSV
def read_rows(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_rows(path: Path, rows: List[Dict]):
    """Append ``rows`` (dicts over COLUMNS) to the CSV, with the header if it is new."""
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def config(args) -> Dict[str, str]:
    """The CONFIG columns of this run, as the CSV holds them."""
    return {"positions": str(args.grid_positions), "components": str(args.mos_components),
            "device": args.device, "dtype": args.dtype, "threads": str(torch.get_num_threads())}


def done_cells(rows, args, path: Path) -> set:
    """(E, V, mode) of the CSV's rows; an error where they were measured otherwise."""
    ours = config(args)
    for row in rows:
        theirs = {key: row[key] for key in CONFIG}
        if theirs != ours:
            refuse(f"--name: got {args.name!r}, whose {path} holds cells measured with "
                   f"{format_config(theirs)}; this run has {format_config(ours)}; allowed: "
                   "another --name or --out-dir, or the file removed")
    return {(int(row["dim"]), int(row["vocab"]), row["mode"]) for row in rows}


def format_config(values: Dict[str, str]) -> str:
    return ", ".join(f"{key} {value}" for key, value in values.items())


def measured_rows(dim, vocab, mode, measured, estimate, available, seconds, args) -> List[Dict]:
    """The CSV rows of one (cell, mode): one per layer, times relative to softmax's."""
    softmax = measured["softmax"][0]
    rows = []
    for name in GRID_LAYERS:
        r, compile_s, note = measured[name]
        ratio = paired_ratio(r, softmax)
        rows.append({**config(args), "dim": dim, "vocab": vocab, "mode": mode, "layer": name,
                     "components": args.mos_components, "status": "measured",
                     "time_ms_median": f"{r.median * 1e3:.3f}",
                     "time_ms_min": f"{min(r.times) * 1e3:.3f}",
                     "time_ms_max": f"{max(r.times) * 1e3:.3f}",
                     "times_ms": " ".join(f"{t * 1e3:.3f}" for t in r.times),
                     "time_ratio_median": f"{ratio[0]:.4f}", "time_ratio_min": f"{ratio[1]:.4f}",
                     "time_ratio_max": f"{ratio[2]:.4f}", "gflops": f"{r.gflops:.6g}",
                     "flop_ratio": f"{r.gflops / softmax.gflops:.4f}",
                     "peak_mb": f"{r.peak_mb:.2f}",
                     # the tracked step ran eagerly: no live-tensor peak of a compiled step
                     "tensor_mb": f"{r.tensor_mb:.6g}" if mode == "eager" else "",
                     "compile_s": "" if math.isnan(compile_s) else f"{compile_s:.2f}",
                     "seconds": f"{seconds:.1f}", "estimate_mb": f"{estimate:.2f}",
                     "available_mb": f"{available:.0f}", "load": load_average(), "note": note})
    return rows


def skipped_row(dim, vocab, mode, estimate, available, args) -> Dict:
    return {**config(args), "dim": dim, "vocab": vocab, "mode": mode, "layer": "",
            "status": "skipped", "estimate_mb": f"{estimate:.2f}",
            "available_mb": f"{available:.0f}", "load": load_average(),
            "note": f"estimated {estimate:.0f} MiB x {MEMORY_FACTOR} + {MEMORY_RESERVE_MB:.0f} MiB "
                    f"> {available:.0f} MiB available"}


# ----------------------------------------------------------------------------- the run
def run_grid(args, device) -> List[Result]:
    """Measure the (cell, mode) pairs the CSV lacks, appending each; then the tables and the
    heat map from the whole CSV. Returns the Results measured in this run."""
    out_dir = Path(args.out_dir)
    path = out_dir / f"{args.name}.csv"
    done = done_cells(read_rows(path), args, path)
    todo = pending(done, path, args)
    if not todo:
        log(f"grid: every cell is in {path}; nothing to measure")
    costs = {(dim, vocab): {name: layer_cost(name, dim, vocab, args.grid_positions, args)
                            for name in GRID_LAYERS} for dim, vocab, _ in todo}
    rates = measured_rates(sorted({dim for dim, _, _ in todo}), args.grid_positions)
    estimates = [cell_seconds(costs[dim, vocab], dim, modes, rates, args)
                 for dim, vocab, modes in todo]
    if todo:
        announce(todo, sum(estimates), rates, args)
    started, results = time.perf_counter(), []
    spent = expected = 0.0  # seconds of the cells measured so far: taken, estimated
    for index, (dim, vocab, modes) in enumerate(todo):
        cell_started = time.perf_counter()
        measured = run_cell(dim, vocab, modes, cell_memory_mb(costs[dim, vocab]), path, args,
                            device)
        if not measured:  # skipped
            continue
        results += measured
        seconds = time.perf_counter() - cell_started
        spent, expected = spent + seconds, expected + estimates[index]
        scale = spent / expected
        log(f"E={dim} V={vocab}: {seconds / 60:.1f} min (estimated {estimates[index] / 60:.1f}); "
            f"about {sum(estimates[index + 1:]) * scale / 60:.0f} min left (the estimate x "
            f"{scale:.2f}, measured / estimated so far)")
    write_outputs(read_rows(path), out_dir, args, device)
    log(f"grid: {len(todo)} cell(s) measured in {(time.perf_counter() - started) / 60:.1f} min; "
        f"wrote {out_dir / args.name}.csv, .md" + ("" if args.no_plot else ", .png"))
    return results


def pending(done: set, path: Path, args) -> List[Tuple[int, int, List[str]]]:
    """(E, V, modes) still to measure, in order; a log line for each (cell, mode) in the CSV."""
    todo = []
    for dim in args.grid_dims:
        for vocab in args.grid_vocabs:
            modes = [m for m in args.grid_modes if (dim, vocab, m) not in done]
            if len(modes) < len(args.grid_modes):
                log(f"E={dim} V={vocab}: {', '.join(m for m in args.grid_modes if m not in modes)}"
                    f" already in {path}, skipped")
            if modes:
                todo.append((dim, vocab, modes))
    return todo


def announce(todo, total: float, rates, args):
    """The expected duration, before the first cell."""
    flop_rates, byte_rate = rates
    log(f"grid: {len(todo)} cell(s) to measure, {args.grid_positions} positions per step, "
        f"{torch.get_num_threads()} thread(s), load average {load_average()}; expected duration "
        f"about {total / 60:.1f} min (an estimate: FLOPs at the measured "
        + ", ".join(f"{rate / 1e9:.1f}" for rate in flop_rates.values())
        + f" GFLOP/s (E = {', '.join(map(str, flop_rates))}), live tensors at "
        f"{byte_rate / 1e9:.2f} GB/s, {COMPILE_S:.0f} s of compiling per layer and cell)")


def run_cell(dim, vocab, modes, estimate, path, args, device) -> List[Result]:
    """One cell: skipped (a row per mode) where it would not fit, else measured; appended."""
    available = available_mb(device)
    if not fits(estimate, available):
        log(f"E={dim} V={vocab}: skipped, estimated {estimate:.0f} MiB (x {MEMORY_FACTOR} + "
            f"{MEMORY_RESERVE_MB:.0f}) > {available:.0f} MiB available")
        append_rows(path, [skipped_row(dim, vocab, mode, estimate, available, args)
                           for mode in modes])
        return []
    log(f"E={dim} V={vocab}: estimated peak {estimate:.{0 if estimate >= 10 else 2}f} MiB, "
        f"{available:.0f} MiB available")
    results = []
    for mode in modes:  # one mode at a time, each appended as it finishes
        started = time.perf_counter()
        measured = measure_cell(dim, vocab, mode, args, device)
        gc.collect()  # the layers and their graphs, before the next mode or cell
        torch._dynamo.reset()
        append_rows(path, measured_rows(dim, vocab, mode, measured, estimate, available,
                                        time.perf_counter() - started, args))
        results += [entry for entry, _, _ in measured.values()]
    return results


# ----------------------------------------------------------------------------- reporting
def cell_rows(rows) -> Dict[Tuple[int, int, str], Dict[str, Dict]]:
    """{(E, V, mode): {layer or 'skipped': row}}."""
    cells: Dict[Tuple[int, int, str], Dict[str, Dict]] = {}
    for row in rows:
        key = (int(row["dim"]), int(row["vocab"]), row["mode"])
        cells.setdefault(key, {})[row["layer"] or "skipped"] = row
    return cells


def grid_axes(rows, args) -> Tuple[List[int], List[int]]:
    """E and V of the CSV and of this run, ascending."""
    dims = sorted({int(r["dim"]) for r in rows} | set(args.grid_dims))
    vocabs = sorted({int(r["vocab"]) for r in rows} | set(args.grid_vocabs))
    return dims, vocabs


def cell_text(cell: Optional[Dict[str, Dict]], layer: str, sep=" ") -> str:
    """'1.62 (F 1.41)': time and FLOPs relative to softmax's; 'skipped (est. N MiB)'; 'n/a'."""
    if not cell:
        return "n/a"
    if "skipped" in cell:
        return f"skipped{sep}(est. {float(cell['skipped']['estimate_mb']) / 1024:.1f} GiB)"
    row = cell[layer]
    return f"{float(row['time_ratio_median']):.2f}{sep}(F {float(row['flop_ratio']):.2f})"


def ratio_tables(rows, args) -> List[str]:
    """Per layer and mode: E down, V across, time / softmax's (F: FLOPs / softmax's)."""
    cells, (dims, vocabs) = cell_rows(rows), grid_axes(rows, args)
    lines = []
    for layer in GRID_LAYERS[1:]:
        for mode in MODES:
            lines += [f"### {layer_label(layer, args)} / softmax, {mode}", "",
                      "| E \\ V | " + " | ".join(map(str, vocabs)) + " |",
                      "|---|" + "---|" * len(vocabs)]
            for dim in dims:
                lines.append(f"| {dim} | " + " | ".join(
                    cell_text(cells.get((dim, vocab, mode)), layer) for vocab in vocabs) + " |")
            lines.append("")
    return lines


def detail_table(rows, args) -> List[str]:
    """Every (E, V, mode): times, ratios [min-max], FLOPs, peak memory, compile seconds."""
    cells, (dims, vocabs) = cell_rows(rows), grid_axes(rows, args)
    names = [layer_label(n, args) for n in GRID_LAYERS]
    lines = ["| E | V | mode | " + " | ".join(f"{n} ms" for n in names)
             + " | " + " | ".join(f"{n} / softmax [min-max]" for n in names[1:])
             + " | GFLOP (" + " / ".join(names) + ") | peak RSS MiB | compile s | note |",
             "|---|---|---|" + "---|" * (2 * len(names) + 3)]
    for dim in dims:
        for vocab in vocabs:
            for mode in MODES:
                cell = cells.get((dim, vocab, mode))
                if not cell:
                    continue
                lines.append(f"| {dim} | {vocab} | {mode} | " + detail_cells(cell) + " |")
    return lines + [""]


def detail_cells(cell: Dict[str, Dict]) -> str:
    if "skipped" in cell:
        row = cell["skipped"]
        return " | ".join(["skipped"] + [""] * (2 * len(GRID_LAYERS) + 1) + [row["note"]])
    rs = [cell[name] for name in GRID_LAYERS]
    return " | ".join(
        [f"{float(r['time_ms_median']):.1f} [{float(r['time_ms_min']):.1f}-"
         f"{float(r['time_ms_max']):.1f}]" for r in rs]
        + [f"{float(r['time_ratio_median']):.2f} [{float(r['time_ratio_min']):.2f}-"
           f"{float(r['time_ratio_max']):.2f}]" for r in rs[1:]]
        + [" / ".join(fmt(float(r["gflops"]), 2) for r in rs),
           " / ".join(fmt(float(r["peak_mb"]), 0) for r in rs),
           " / ".join(fmt(float(r["compile_s"]), 1) for r in rs) if rs[0]["compile_s"] else "",
           "; ".join(sorted({r["note"] for r in rs if r["note"]}))])


def markdown(rows, args, device) -> str:
    measured = [r for r in rows if r["status"] == "measured"]
    seconds = sum({(r["dim"], r["vocab"], r["mode"]): float(r["seconds"])
                   for r in measured}.values())
    loads = [float(r["load"]) for r in rows if r["load"] not in ("", "n/a")]
    K = args.mos_components
    command = " ".join(["python scripts/benchmark.py", *map(shlex.quote, args.argv)])
    lines = [
        "# Output layer over a (V, E) grid: training step, eager and compiled", "",
        f"- command: `{command}`",
        f"- layers: softmax, Mixtape (K=4, S=0.1V, d1=min(64, E)), MoS-{K}; "
        f"{args.grid_positions} positions per step (one sequence), float32 log-softmax and "
        "NLL on random targets, backward to the features and the parameters",
        "- eager: `losses.token_losses`; compiled: `compiled_token_losses()` (the "
        "layer, log-softmax and loss compiled as one function, as `--compile-output-layer` runs "
        "them), after one untimed compiling step per layer; the compiler's caches reset before "
        "every cell",
        f"- device: {describe_device(device)}; dtype {args.dtype}; torch {torch.__version__}; "
        f"{torch.get_num_threads()} thread(s); 1-minute load average "
        + (f"{min(loads):.1f}-{max(loads):.1f} over the cells" if loads else "n/a"),
        f"- {args.repeats} timed rounds per cell and mode (MoS: the first "
        f"{min(args.mos_repeats, args.repeats)}; layers interleaved, order rotated) after a "
        f"tracked step, a memory step and {args.warmup} warm-up step(s); measuring took "
        f"{seconds / 60:.1f} min in all (compiling included)",
        "- time ratio: the median of the per-round ratios to softmax's time in the same mode; "
        "F: the ratio of counted matrix-product FLOPs (torch.utils.flop_counter formulas, "
        "counted on the eager step in both modes)",
        "- skipped: the cell's estimated peak memory (x "
        f"{MEMORY_FACTOR} + {MEMORY_RESERVE_MB:.0f} MiB) exceeded the memory available", ""]
    lines += ["## Time relative to softmax (F: FLOPs relative to softmax)", ""]
    lines += ratio_tables(rows, args)
    lines += ["## Every cell", "",
              "Times: median [min-max] ms; peak RSS: growth during one step (compiled: of a "
              "compiled step); compile s: the untimed compiling step of each layer.", ""]
    lines += detail_table(rows, args)
    return "\n".join(lines) + "\n"


def plot(rows, path: Path, args, device):
    """Heat maps of time / softmax's over (E, V): one row of panels per layer (Mixtape, MoS),
    eager and compiled side by side on one colour scale; cells annotated 'ratio (F flops)'."""
    import numpy as np

    plt = pyplot()
    cells, (dims, vocabs) = cell_rows(rows), grid_axes(rows, args)
    layers = GRID_LAYERS[1:]
    cmap = plt.get_cmap("YlOrRd").with_extremes(bad="lightgrey")  # grey: skipped or not run
    fig, axes = plt.subplots(len(layers), len(MODES), squeeze=False,
                             figsize=(max(10.0, 3.0 + 1.8 * len(vocabs) * len(MODES)),
                                      1.5 + max(2.0, 0.9 * len(dims)) * len(layers)))
    for row_axes, layer in zip(axes, layers):
        values = {mode: np.full((len(dims), len(vocabs)), np.nan) for mode in MODES}
        for mode in MODES:
            for i, dim in enumerate(dims):
                for j, vocab in enumerate(vocabs):
                    cell = cells.get((dim, vocab, mode))
                    if cell and "skipped" not in cell:
                        values[mode][i, j] = float(cell[layer]["time_ratio_median"])
        finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        for ax, mode in zip(row_axes, MODES):
            image = ax.imshow(np.ma.masked_invalid(values[mode]), cmap=cmap, vmin=low,
                              vmax=max(high, low + 1e-6), aspect="auto")
            for i, dim in enumerate(dims):
                for j, vocab in enumerate(vocabs):
                    dark = image.norm(values[mode][i, j]) > 0.6  # white text on dark cells
                    ax.text(j, i, cell_text(cells.get((dim, vocab, mode)), layer, sep="\n"),
                            ha="center", va="center", fontsize=8,
                            color="white" if dark else "black")
            ax.set_xticks(range(len(vocabs)), [str(v) for v in vocabs])
            ax.set_yticks(range(len(dims)), [str(d) for d in dims])
            ax.set_xlabel("vocabulary V")
            ax.set_ylabel("embedding size E")
            ax.set_title(f"{layer_label(layer, args)} / softmax time, {mode}", fontsize=10)
            fig.colorbar(image, ax=ax, fraction=0.04)
    fig.suptitle(f"Output layer alone, training step, {args.grid_positions} positions; "
                 f"{describe_device(device)}, {torch.get_num_threads()} thread(s)\n"
                 "time relative to softmax's in the same mode: median of per-round ratios "
                 "(F: matrix-product FLOPs relative to softmax's)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(rows, out_dir: Path, args, device):
    text = markdown(rows, args, device)
    (out_dir / f"{args.name}.md").write_text(text)
    if not args.no_plot:
        plot(rows, out_dir / f"{args.name}.png", args, device)
    print()
    print(text)
