"""The benchmark's report: from the sections' results, ``<out-dir>/<name>.csv`` (one row per
entry), ``<name>.png`` (time and memory vs vocabulary, one line per layer; vs d instead when there
is one vocabulary and several d) and ``<name>.md`` (the tables, every layer's ratios to softmax
at every shape, and the headline ratios beside the FLOP model Mixtape ~ (1 + (K-1) S/V) x
softmax), also printed. The formatting helpers here serve the grid's report too.
"""

import csv
import math
import os
import platform
import shlex
import statistics
from pathlib import Path
from typing import List, Optional

import torch

from ..bottleneck import pyplot
from .measure import (CHUNKED, COMPILE_WARMUP, COMPILED, DEFAULT_CHUNKS, LAYERS, LINEAR, STOCK,
                      Result, chunk_name, log)

COLORS = {"softmax": "tab:blue", "mos": "tab:red", "mixtape": "tab:green",
          "sigsoftmax": "tab:orange", CHUNKED: "tab:purple"}


def write_report(results: List[Result], out_dir: Path, args, device, seconds: float):
    """The CSV, the plot (where the output layer was measured) and the Markdown, printed too."""
    write_csv(results, out_dir / f"{args.name}.csv", args)
    written = ["csv"]
    if not args.no_plot and any(r.section == "output_layer" for r in results):
        plot(results, out_dir / f"{args.name}.png", args, device)
        written.append("png")
    text = markdown(results, args, device, seconds)
    (out_dir / f"{args.name}.md").write_text(text)
    print()
    print(text)
    log(f"wrote {out_dir / args.name}.{', .'.join(written + ['md'])} ({seconds / 60:.1f} min)")


def mixtape_flop_model(vocab: int, dim: int, components=4, frequent=0.1, gate_dim=None):
    """(the simple FLOP model 1 + (K-1) S/V, and the full multiply-add count of Mixtape's
    forward per position over softmax's V d: context K d^2, frequent tokens K S d, the others
    (V - S) d, gates (K-1) d1 (d + S); d1 = min(64, d) by default, as the layer's)."""
    gate_dim = min(64, dim) if gate_dim is None else gate_dim
    S = int(frequent * vocab)
    simple = 1 + (components - 1) * S / vocab
    macs = (components * dim * dim + components * S * dim + (vocab - S) * dim
            + (components - 1) * gate_dim * (dim + S) + (components - 1) * dim)
    return simple, macs / (vocab * dim)


def paired_ratio(a: Result, b: Result, invert=False):
    """Per-round ratio a/b of times (b/a with ``invert``, i.e. of throughputs): median, min, max."""
    ratios = [(y / x if invert else x / y) for x, y in zip(a.times, b.times)]
    return statistics.median(ratios), min(ratios), max(ratios)


def fmt_time(r: Result) -> str:
    scale = 1e3
    return (f"{r.median * scale:.1f} [{min(r.times) * scale:.1f}-{max(r.times) * scale:.1f}]")


def fmt(x: float, digits=1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_ratio(r) -> str:
    return "n/a" if r is None else f"{r[0]:.2f} [{r[1]:.2f}-{r[2]:.2f}]"


def find(results, section, layer, mode=None, vocab=None, dim=None) -> Optional[Result]:
    for r in results:
        if (r.section == section and r.layer == layer and (mode is None or r.mode == mode)
                and (vocab is None or r.vocab == vocab) and (dim is None or r.dim == dim)):
            return r
    return None


def layer_label(name: str, args) -> str:
    base, variant = split_variant(name)
    return (f"MoS-{args.mos_components}" if base == "mos" else base) + variant


def split_variant(name: str):
    """'mixtape+compiled' -> ('mixtape', '+compiled'); 'mixtape' -> ('mixtape', '')."""
    base, plus, variant = name.partition("+")
    return base, plus + variant


def shape_ratios(results: List[Result], args) -> List[str]:
    """Every layer's time, memory and FLOP ratios to softmax's at every measured shape."""
    mem = "CUDA" if args.device == "cuda" else "RSS"
    rows = ["## Ratios to softmax at every shape", "",
            "Time: median [min-max] of the per-round ratios (the layers ran interleaved, so a "
            "ratio is meaningful on a loaded machine where absolute times are not); memory: "
            f"peak ({mem}) and live-tensor peak; FLOPs: counted matrix-product FLOPs. "
            "A `+compiled` entry is compared with `softmax+compiled`.", "",
            "| section | mode | V | d | model args | layer / softmax | time | peak mem | "
            "tensors | FLOPs |", "|---|---|---|---|---|---|---|---|---|---|"]
    results = [r for r in results if r.times]  # not the (untimed) memory section
    shapes = []
    for r in results:
        key = (r.section, r.mode, r.vocab, r.dim, r.model_args)
        if split_variant(r.layer)[0] == "softmax" and key not in shapes:
            shapes.append(key)
    for section, mode, vocab, dim, model_args in shapes:
        base = [r for r in results if (r.section, r.mode, r.vocab, r.dim, r.model_args)
                == (section, mode, vocab, dim, model_args)]
        softmaxes = {r.layer: r for r in base if split_variant(r.layer)[0] == "softmax"}
        for r in base:
            # +compiled against softmax+compiled; softmax+linear_cross_entropy against softmax
            variant = "" if r.layer.endswith(LINEAR) else split_variant(r.layer)[1]
            softmax = softmaxes.get("softmax" + variant)
            if softmax is None or r is softmax:
                continue
            mems = [getattr(r, kind) / getattr(softmax, kind)
                    if getattr(softmax, kind) > 0 and not math.isnan(getattr(r, kind)) else None
                    for kind in ("peak_mb", "tensor_mb", "gflops")]
            rows.append(f"| {section} | {mode} | {vocab} | {dim} | "
                        f"{f'`{model_args}`' if model_args else ''} | "
                        f"{layer_label(r.layer, args)} | {fmt_ratio(paired_ratio(r, softmax))} | "
                        + " | ".join("n/a" if m is None else f"{m:.2f}" for m in mems) + " |")
    return rows + [""] if len(rows) > 6 else []


def ratios_table(results: List[Result], args) -> List[str]:
    """The headline ratios (Mixtape and MoS against softmax and each other, in time and memory)
    and the FLOP model beside them. The targets they are held against are in the benchmarks'
    documentation (benchmarks/README.md), not here."""
    V = 32000 if 32000 in args.vocabs else args.vocabs[len(args.vocabs) // 2]
    d = 512 if 512 in args.dims else args.dims[0]
    simple, full = mixtape_flop_model(V, d)
    simple_m, full_m = mixtape_flop_model(args.model_vocab, d)
    rows = []

    def row(what, a, b, invert, flop_text="", kind="time"):
        if a is None or b is None:  # a section or layer this run did not measure
            return
        if kind == "time":
            text = fmt_ratio(paired_ratio(a, b, invert))
        else:
            num, den = getattr(a, kind), getattr(b, kind)
            if not den > 0 or math.isnan(num):  # no memory reading on this platform
                rows.append(f"| {what} | n/a | {flop_text} |")
                return
            text = f"{num / den:.2f}"
        rows.append(f"| {what} | {text} | {flop_text} |")

    def flops(a, b, label="counted"):
        ok = a is not None and b is not None and b.gflops > 0
        return f"{a.gflops / b.gflops:.2f} ({label})" if ok else ""

    def inverse_flops(a, b):  # for throughput ratios a/b: FLOPs b/a
        return flops(b, a, "counted, FLOPs softmax/Mixtape")

    mt = {name: find(results, "mt", name) for name in LAYERS + [CHUNKED]}
    lm = {name: find(results, "lm", name) for name in LAYERS + [CHUNKED]}
    beam = {name: find(results, "beam", name) for name in LAYERS}
    ol = {(name, mode): find(results, "output_layer", name, mode, V, d)
          for name in LAYERS for mode in ("train", "infer")}
    K = args.mos_components
    rows += ["| ratio (median of per-round ratios [min-max]) | measured | FLOPs |", "|---|---|---|"]
    mem, mem_name = "peak_mb", "CUDA" if args.device == "cuda" else "RSS"
    row("transformer_wmt_en_de training words/s, Mixtape / softmax", mt["mixtape"], mt["softmax"],
        True, inverse_flops(mt["mixtape"], mt["softmax"]))
    row(f"transformer_wmt_en_de training step time, MoS-{K} / Mixtape", mt["mos"], mt["mixtape"],
        False, flops(mt["mos"], mt["mixtape"]))
    row(f"output layer alone (V={V}, d={d}) training step time, MoS-{K} / Mixtape",
        ol["mos", "train"], ol["mixtape", "train"], False,
        flops(ol["mos", "train"], ol["mixtape", "train"]))
    row(f"transformer_wmt_en_de peak training memory ({mem_name}), Mixtape / softmax",
        mt["mixtape"], mt["softmax"], False, kind=mem)
    row("transformer_wmt_en_de peak training memory (live tensors), Mixtape / softmax",
        mt["mixtape"], mt["softmax"], False, kind="tensor_mb")
    row(f"transformer_wmt_en_de peak training memory ({mem_name}), MoS-{K} chunked / softmax",
        mt[CHUNKED], mt["softmax"], False, kind=mem)
    row(f"transformer_wmt_en_de peak training memory (live tensors), MoS-{K} chunked / softmax",
        mt[CHUNKED], mt["softmax"], False, kind="tensor_mb")
    row("beam search sentences/s, Mixtape / softmax", beam["mixtape"], beam["softmax"], True,
        inverse_flops(beam["mixtape"], beam["softmax"]))
    row(f"transformer_wmt_en_de peak training memory ({mem_name}), MoS-{K} unchunked / softmax",
        mt["mos"], mt["softmax"], False, kind=mem)
    row(f"transformer_wmt_en_de peak training memory (live tensors), MoS-{K} unchunked / softmax",
        mt["mos"], mt["softmax"], False, kind="tensor_mb")
    row(f"transformer_wmt_en_de step time, MoS-{K} chunked / Mixtape", mt[CHUNKED], mt["mixtape"],
        False, flops(mt[CHUNKED], mt["mixtape"]))
    row("transformer_lm training words/s, Mixtape / softmax", lm["mixtape"], lm["softmax"], True,
        inverse_flops(lm["mixtape"], lm["softmax"]))
    row(f"transformer_lm training step time, MoS-{K} / Mixtape", lm["mos"], lm["mixtape"], False,
        flops(lm["mos"], lm["mixtape"]))
    for kind, name in [(mem, mem_name), ("tensor_mb", "live tensors")]:
        row(f"transformer_lm peak training memory ({name}), Mixtape / softmax", lm["mixtape"],
            lm["softmax"], False, kind=kind)
        row(f"transformer_lm peak training memory ({name}), MoS-{K} chunked / softmax",
            lm[CHUNKED], lm["softmax"], False, kind=kind)
    model = f"model {simple:.2f}, full count {full:.2f}; "
    for mode, what in [("train", "train"), ("infer", "inference")]:
        row(f"output layer alone V={V} d={d}, {what} time, Mixtape / softmax",
            ol["mixtape", mode], ol["softmax", mode], False,
            model + flops(ol["mixtape", mode], ol["softmax", mode]))
    for kind, name in [(mem, mem_name), ("tensor_mb", "live tensors")]:
        row(f"output layer alone V={V} d={d}, peak train memory ({name}), Mixtape / softmax",
            ol["mixtape", "train"], ol["softmax", "train"], False, kind=kind)
    if len(rows) == 2:  # the header alone: none of these sections ran
        return []
    lines = ["## Ratios", "",
             f"FLOP model: a Mixtape output layer costs about (1 + (K-1) S/V) x softmax's: K=4, "
             f"S=0.1V: **{simple:.2f}**; counting the context projection (K d^2) and the gates "
             f"too, {full:.3f} at V={V}, d={d} ({full_m:.3f} at the models' V={args.model_vocab}). "
             "'counted' FLOPs are matrix-product FLOPs of the measured step from "
             "torch.utils.flop_counter.", ""] + rows
    return lines


def markdown(results: List[Result], args, device, seconds: float) -> str:
    mem_kind = "CUDA max allocated" if device.type == "cuda" else "RSS growth"
    command = " ".join(["python scripts/benchmark.py", *map(shlex.quote, args.argv)])
    lines = ["# Output-layer benchmark", "",
             f"- command: `{command}`",
             f"- layers: {', '.join(args.layers)}; MoS K={args.mos_components}, Mixtape K=4, "
             "S=0.1V, d1=min(64, E)",
             f"- device: {describe_device(device)}; dtype {args.dtype}; torch {torch.__version__}; "
             f"{torch.get_num_threads()} thread(s)"]
    if any(r.times for r in results):
        lines += [f"- {args.repeats} timed rounds per configuration (MoS: the first "
                  f"{min(args.mos_repeats, args.repeats)}; layers interleaved, order rotated), "
                  f"after a tracked step, a memory step and {args.warmup} warm-up step(s); "
                  f"times: median [min-max]",
                  f"- peak memory: {mem_kind} during one step, MiB (`peak`); live-tensor peak of "
                  "the same kind of step (`tensors`)"]
    if args.compile != "eager" and any(r.section in ("mt", "lm") for r in results):
        lines += [f"- `--compile {args.compile}`: `<layer>+compiled` is the same model built with "
                  "`--compile-output-layer` (the criterion runs each chunk's output layer, "
                  "log-softmax and loss through torch.compile), measured in the same rounds "
                  f"after {COMPILE_WARMUP} untimed compiling steps; its `tensors` and `GFLOP` "
                  "are n/a (a dispatch mode does not track a compiled step faithfully)"]
        lines += [f"- compiled graphs, {note}" for note in getattr(args, "notes", [])]
    lines += [f"- total wall time {seconds / 60:.1f} min; 1-minute load average "
              f"{args.load[0]} at the start, {args.load[-1]} at the end", ""]
    ol = [r for r in results if r.section == "output_layer"]
    if ol:
        lines += [f"## Output layer alone ({args.positions} positions per step)", "",
                  "| d | V | layer | train ms | infer ms | train peak MiB | infer peak MiB | "
                  "train tensors MiB | train GFLOP |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for d in args.dims:
            for V in args.vocabs:
                for name in args.layers + ["softmax" + LINEAR] * args.linear_cross_entropy:
                    tr = find(ol, "output_layer", name, "train", V, d)
                    inf = find(ol, "output_layer", name, "infer", V, d)
                    if tr is None:
                        continue
                    lines.append(f"| {d} | {V} | {name} | {fmt_time(tr)} | "
                                 f"{fmt_time(inf) if inf else '-'} | {fmt(tr.peak_mb)} | "
                                 f"{fmt(inf.peak_mb) if inf else '-'} | {fmt(tr.tensor_mb)} | "
                                 f"{fmt(tr.gflops, 2)} |")
        lines.append("")
    for section, title in [("mt", "transformer_wmt_en_de training step"),
                           ("lm", "transformer_lm training step")]:
        for model_args in args.model_args:
            rs = [r for r in results if r.section == section and r.model_args == model_args]
            if not rs:
                continue
            batch, length = ((args.mt_batch, args.mt_length) if section == "mt"
                             else (args.lm_batch, args.lm_length))
            lines += [f"## {title} (V={args.model_vocab}, {batch} x {length} target tokens per step"
                      + (f"; `{model_args}`" if model_args else "") + ")",
                      "",
                      "| layer | params M | step ms | words/s | peak MiB | tensors MiB | GFLOP |",
                      "|---|---|---|---|---|---|---|"]
            for r in rs:
                lines.append(f"| {r.layer} | {r.params_m:.1f} | {fmt_time(r)} | "
                             f"{r.throughput:.0f} | {fmt(r.peak_mb)} | {fmt(r.tensor_mb)} | "
                             f"{fmt(r.gflops, 1)} |")
            lines.append("")
    for model_args in args.model_args:
        rs = [r for r in results if r.section == "beam" and r.model_args == model_args]
        if not rs:
            continue
        lines += [f"## Beam search (transformer_wmt_en_de, beam {args.beam_size}, "
                  f"{args.beam_sentences} sentences of {args.beam_length} tokens, "
                  f"{args.beam_length} output tokens + eos"
                  + (f"; `{model_args}`" if model_args else "") + ")", "",
                  "| layer | batch ms | sentences/s | peak MiB | tensors MiB | GFLOP |",
                  "|---|---|---|---|---|---|"]
        for r in rs:
            lines.append(f"| {r.layer} | {fmt_time(r)} | {r.throughput:.2f} | {fmt(r.peak_mb)} | "
                         f"{fmt(r.tensor_mb)} | {fmt(r.gflops, 1)} |")
        lines.append("")
    lines += compiled_table(results, args)
    lines += memory_table(results, args)
    lines += shape_ratios(results, args)
    if any(r.times for r in results):
        lines += ratios_table(results, args)
    return "\n".join(lines) + "\n"


def compiled_table(results: List[Result], args) -> List[str]:
    """Per model shape, each layer eager and compiled (--compile both): words/s, the step-time
    ratio to softmax of the same mode, and compiled / eager, all per-round ratios."""
    rows = []
    for section, title in [("mt", "transformer_wmt_en_de"), ("lm", "transformer_lm")]:
        for model_args in args.model_args:
            rs = {r.layer: r for r in results
                  if r.section == section and r.model_args == model_args}
            pairs = [(name, r, rs.get(name + COMPILED)) for name, r in rs.items()
                     if not name.endswith(COMPILED) and name + COMPILED in rs]
            if not pairs:
                continue
            eager_sm, compiled_sm = rs.get("softmax"), rs.get("softmax" + COMPILED)
            rows += [f"### {title}" + (f", `{model_args}`" if model_args else ""), "",
                     "| layer | words/s eager | words/s compiled | time / softmax, eager | "
                     "time / softmax, compiled | compiled / eager time | RSS peak compiled / "
                     "eager |", "|---|---|---|---|---|---|---|"]
            for name, eager, compiled in pairs:
                to_softmax = [fmt_ratio(paired_ratio(r, sm)) if sm is not None and r is not sm
                              else "1" for r, sm in [(eager, eager_sm), (compiled, compiled_sm)]]
                rss = (compiled.peak_mb / eager.peak_mb
                       if eager.peak_mb > 0 and not math.isnan(compiled.peak_mb) else None)
                rows.append(f"| {layer_label(name, args)} | {eager.throughput:.0f} | "
                            f"{compiled.throughput:.0f} | {to_softmax[0]} | {to_softmax[1]} | "
                            f"{fmt_ratio(paired_ratio(compiled, eager))} | "
                            f"{'n/a' if rss is None else f'{rss:.2f}'} |")
            rows.append("")
    if not rows:
        return []
    return ["## Eager and compiled (`--compile-output-layer`) whole training steps", "",
            "Time ratios: median [min-max] of the per-round ratios (every entry ran in the same "
            "interleaved rounds); `time / softmax, compiled` is against `softmax+compiled`.",
            ""] + rows


def chunk_sizes(results: List[Result], vocab: int, setting: str, args) -> str:
    """The positions per chunk a setting gave at ``vocab``: one number where every layer had the
    same, else each layer's (``262 MoS-4, 1048 the others``)."""
    sizes = {r.layer: r.chunk_tokens for r in results
             if r.vocab == vocab and r.chunk_setting == setting}
    if len(set(sizes.values())) <= 1:
        return str(next(iter(sizes.values()), "n/a"))
    common = statistics.mode(sizes.values())
    return ", ".join([f"{c} {layer_label(name, args)}" for name, c in sizes.items() if c != common]
                     + [f"{common} the others"])


def memory_table(results: List[Result], args) -> List[str]:
    """The memory section: live-tensor peaks per V, layer and chunk size, and their ratios."""
    rs = [r for r in results if r.section == "memory"]
    if not rs:
        return []
    chunks = [chunk_name(c) for c in args.memory_chunk_tokens]  # settings, as the results hold them
    peak = {(r.vocab, r.layer, r.chunk_setting): r for r in rs}
    E = args.memory_dim
    lines = [f"## Peak training memory at large vocabularies ({args.memory_batch} x "
             f"{args.memory_length} target tokens, E = {E})", "",
             f"The live-tensor peak (MiB) of one training step: forward, loss and backward, no "
             f"optimiser step (the parameters exist before it and are not counted; their "
             f"gradients are). Model: a 1-layer `transformer_lm` (`{rs[0].model_args}`, "
             "`--share-decoder-input-output-embed`), each output layer through the plugin's "
             "`output_layer_cross_entropy` with `--output-chunk-tokens` "
             + " and ".join(chunks)
             + (" (unset: 2^27 / V positions, MoS-K 2^27 / (K x V), at most 4096; whole sequences "
                "of at least one)" if chunk_name(DEFAULT_CHUNKS) in chunks else "")
             + ", and the softmax model through fairseq's "
             "`cross_entropy` (`softmax+cross_entropy`) and with the plugin criterion's "
             "`--linear-cross-entropy` (`softmax+linear_cross_entropy`, torch's chunked "
             "`F.linear_cross_entropy`). "
             + ("Computed under FakeTensorMode: the tensors' shapes and lifetimes without their "
                "arithmetic (no memory used; the context scale of MoS and Mixtape fixed at 1, "
                "which changes no shape)." if args.memory_compute == "fake" else
                "Computed for real."), "",
             "| V | layer | " + " | ".join(f"MiB, chunks {c}" for c in chunks)
             + f" | GFLOP (matrix products), chunks {chunks[0]} | params M |",
             "|---|---|" + "---|" * len(chunks) + "---|---|"]
    for vocab in args.memory_vocabs:
        first = {}  # layer -> its result at the first setting; the stock criteria have none
        for r in rs:
            if r.vocab == vocab and r.chunk_setting in (chunks[0], ""):
                first.setdefault(r.layer, r)
        for r in first.values():
            cells = ([fmt(peak[vocab, r.layer, c].tensor_mb, 0) if (vocab, r.layer, c) in peak
                      else "n/a" for c in chunks] if r.chunk_setting else
                     [fmt(r.tensor_mb, 0)] + ["(no chunks)"] * (len(chunks) - 1))
            lines.append(f"| {vocab // 1000}K | {layer_label(r.layer, args)} | "
                         + " | ".join(cells) + f" | {fmt(r.gflops, 0)} | {r.params_m:.0f} |")
    others = [name for name in args.layers if name != "softmax"]
    lines += ["", "| V | chunks | " + "".join(f"{layer_label(name, args)} / softmax | "
                                              for name in others)
              + "softmax (plugin) / softmax+cross_entropy | softmax+linear_cross_entropy / "
              "softmax+cross_entropy |",
              "|---|---|" + "---|" * (len(others) + 2)]

    def ratio(a, b):
        return "n/a" if a is None or b is None else f"{a.tensor_mb / b.tensor_mb:.2f}"

    for vocab in args.memory_vocabs:
        stock = peak.get((vocab, "softmax" + STOCK, ""))
        linear = peak.get((vocab, "softmax" + LINEAR, ""))
        for setting in chunks:
            softmax = peak.get((vocab, "softmax", setting))
            lines.append(f"| {vocab // 1000}K | {setting} ({chunk_sizes(rs, vocab, setting, args)}) | "
                         + "".join(f"{ratio(peak.get((vocab, name, setting)), softmax)} | "
                                   for name in others)
                         + f"{ratio(softmax, stock)} | {ratio(linear, stock)} |")
    return lines + [""]


def load_average() -> str:
    try:
        return "{:.1f}".format(os.getloadavg()[0])
    except OSError:
        return "n/a"


def describe_device(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def write_csv(results: List[Result], path: Path, args):
    columns = ["section", "mode", "layer", "vocab", "dim", "tokens", "unit", "device", "dtype",
               "threads", "repeats", "time_ms_median", "time_ms_min", "time_ms_max", "time_ms_q1",
               "time_ms_q3", "throughput_per_s", "peak_mb", "tensor_mb", "gflops", "params_m",
               "times_ms", "components", "model_args", "chunk_tokens"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in results:
            q1, q3 = r.quartiles()
            low, high = (min(r.times), max(r.times)) if r.times else (math.nan, math.nan)
            writer.writerow([r.section, r.mode, r.layer, r.vocab, r.dim, r.tokens, r.unit,
                             args.device, args.dtype, torch.get_num_threads(), len(r.times),
                             f"{r.median * 1e3:.3f}", f"{low * 1e3:.3f}",
                             f"{high * 1e3:.3f}", f"{q1 * 1e3:.3f}", f"{q3 * 1e3:.3f}",
                             f"{r.throughput:.3f}", f"{r.peak_mb:.2f}", f"{r.tensor_mb:.2f}",
                             f"{r.gflops:.4f}", f"{r.params_m:.3f}",
                             " ".join(f"{t * 1e3:.3f}" for t in r.times),
                             args.mos_components if split_variant(r.layer)[0] in ("mos", CHUNKED)
                             else {"mixtape": 4}.get(split_variant(r.layer)[0], 1), r.model_args,
                             r.chunk_tokens or ""])


def plot(results: List[Result], path: Path, args, device):
    plt = pyplot()
    ol = [r for r in results if r.section == "output_layer"]
    mem = "CUDA peak" if device.type == "cuda" else "peak RSS growth"
    panels = [("train", "times", "forward+backward time per step (ms)"),
              ("infer", "times", "inference time per step (ms)"),
              ("train", "peak_mb", f"training {mem} (MiB)"),
              ("infer", "peak_mb", f"inference {mem} (MiB)")]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    styles = ["-", "--", ":", "-."]
    by_dim = len(args.vocabs) == 1 and len(args.dims) > 1  # one line per layer over d
    for ax, (mode, what, title) in zip(axes.flat, panels):
        for i, (d, vocabs) in enumerate([(None, args.vocabs)] if by_dim else
                                        [(d, args.vocabs) for d in args.dims]):
            for name in args.layers:
                if by_dim:
                    rs = [find(ol, "output_layer", name, mode, vocabs[0], dim)
                          for dim in args.dims]
                    xs, label = [r.dim for r in rs], layer_label(name, args)
                else:
                    rs = [find(ol, "output_layer", name, mode, V, d) for V in vocabs]
                    xs, label = [r.vocab / 1000 for r in rs], f"{layer_label(name, args)} d={d}"
                if what == "times":
                    ys = [r.median * 1e3 for r in rs]
                    err = [[y - min(r.times) * 1e3 for y, r in zip(ys, rs)],
                           [max(r.times) * 1e3 - y for y, r in zip(ys, rs)]]
                    ax.errorbar(xs, ys, yerr=err, capsize=3, marker="o", ls=styles[i % 4],
                                color=COLORS[name], label=label)
                else:
                    ax.plot(xs, [r.peak_mb for r in rs], marker="o", ls=styles[i % 4],
                            color=COLORS[name], label=label)
        ax.set_title(title)
        if by_dim:
            ax.set_xscale("log", base=2)
            ax.set_xticks(args.dims, [str(dim) for dim in args.dims])
            ax.set_xlabel(f"feature and embedding size d = E (V = {args.vocabs[0]})")
        else:
            ax.set_xlabel("vocabulary size V (thousands)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"Output layer alone, {args.positions} positions, {describe_device(device)}, "
                 f"{args.dtype}; median of {args.repeats} interleaved rounds "
                 f"(MoS {min(args.mos_repeats, args.repeats)}; bars: min-max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
