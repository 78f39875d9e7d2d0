"""What the CLI prints: rich tables on stdout, a progress bar on stderr, CSV for machines.

Kept apart from ``cli`` so the command definitions stay a thin layer over the library.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from ..options import WEIGHT_ONLY
from ..reports import HEADS, SCALINGS, Head
from ..evaluation.costs import separable_blocks
from ..runtime import devices
from ..staging import write_text_atomic
from .console import fitted_table, make_console
from .html import format_db, format_spread


def print_eval(report) -> None:
    labelled = report.labelled
    elsewhere = report.device != "cpu"  # emulated ARM or a board: rows compare with this CPU's
    where = f"; .tflite/.onnx on {report.device} ({devices.kind(report.device)})" if elsewhere else ""
    columns = ["artifact", *(["device", "same as x86", "max |diff| vs x86"] if elsewhere else []),
               *(["top-1", "vs float (95%)", "top-5"] if labelled else []), "agreement", "SQNR (dB)", "mean KL",
               *(["classes changed"] if labelled else [])]
    rows = []
    for row in report.rows:
        sqnr = "inf" if math.isinf(row["sqnr_db"]) else f"{row['sqnr_db']:.1f}"
        cells = [Path(row["artifact"]).name + " *" if row.get("compared") else row["artifact"]]
        if elsewhere:
            exact = "x86_identical" in row
            cells += [row["device"], f"{row['x86_identical']:.2%}" if exact else "-",
                      f"{row['x86_max_abs_diff']:.2g}" if exact else "-"]
        if labelled:
            cells += [f"{row['top1']:.2%}", _change(row, report.row(report.reference)),
                      f"{row['top5']:.2%}" if "top5" in row else "-"]
        cells += [f"{row['agreement']:.2%}", sqnr, f"{max(row['mean_kl'], 0.0):.4f}"]
        if labelled:
            changes = row["per_class_change"]
            worst = min(changes.items(), key=lambda kv: kv[1], default=None)
            cells.append(f"{len(changes)}" + (f" (worst {worst[0]}: {worst[1]:+.1%})" if worst and worst[1] < 0 else ""))
        rows.append(cells)
    console = make_console()
    console.print(fitted_table(console, f"{report.samples} images from {report.data_source} (reference: "
                               f"{report.reference}{where})", columns, rows, names=("device",),
                               optional=("classes changed", "top-5", "mean KL", "max |diff| vs x86")))
    compared = [row for row in report.rows if row.get("compared")]
    if compared:
        dropped = any(row.get("background_dropped") for row in compared)
        console.print(f"* compared, not part of the build ({', '.join(row['artifact'] for row in compared)}); "
                      f"scored against {report.reference}" + ("; background output 0 dropped" if dropped else ""))
    if labelled:
        console.print(f"vs float: top-1 change in points, ± the half-width of its 95% interval on these "
                      f"{report.samples} images (paired image by image); a change inside it is not resolved by them")
    if report.head != "classes":
        console.print(_head_note(report.head))
    _warn(console, report.warnings)


def _warn(console, warnings) -> None:
    from rich.markup import escape

    for warning in warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")


def _change(row: dict, reference: dict) -> str:
    """A row's top-1 change against the reference with its 95% half-width: "-0.80 ±1.24"."""
    if row is reference:
        return "-"
    half = row.get("top1_change_ci95", float("nan"))
    return f"{100 * (row['top1'] - reference['top1']):+.2f}" + ("" if math.isnan(half) else f" ±{100 * half:.2f}")


def _head_note(kind: str) -> str:
    """The line under a drift table that says how a head other than argmax was read."""
    return f"{'multi-label' if Head(kind).multi_label else 'binary'} head: {HEADS[kind]}"


def _op_counts(counts: dict[str, int]) -> str:
    """{"Add": 10, "Conv": 15} as "10 Add, 15 Conv"."""
    return ", ".join(f"{n} {op}" for op, n in counts.items())


FALLBACK_LINES = 8  # optional refinements that fell back, printed one per line; the rest counted


def print_quantize(result) -> None:
    console = make_console()
    fold = result.fold
    cal = result.calibration
    console.print(
        f"folded {len(fold.folded)} BatchNorm layers; max |orig - folded| = {fold.max_abs_diff:.2e} "
        f"(relative {fold.rel_diff:.1e} <= {fold.rel_tolerance:g}) on {fold.samples} images"
    )
    if fold.unfolded:
        console.print(f"[yellow]not folded:[/] {', '.join(fold.unfolded)}")
    scaling = result.input_scaling
    if scaling is not None:
        how = (f"as asked (--preprocess {scaling.requested})" if scaling.requested != "auto" else
               f"read off {scaling.batchnorm}'s training statistics" if scaling.decisive else "auto's default")
        console.print(f"input scaling: {scaling.chosen}, {SCALINGS[scaling.chosen]}; {how}")
        if scaling.warning:
            console.print(f"[yellow]warning:[/] {scaling.warning}")
    if result.equalization is not None:
        e = result.equalization
        console.print(f"equalized {e.pairs} conv -> ReLU -> conv pairs in {e.seconds:.1f} s; largest channel "
                      f"scale {e.max_scale:.3g}x; {e.dead_channels} never-active channels zeroed")
    if result.dither is not None:
        d = result.dither
        console.print(f"dithered {len(d.channels)} of {d.layer}'s {d.of} channels into {d.channels_after} ({d.counts}; copies a k-th "
                      f"of an int8 step apart, averaged by {d.pointwise})"
                      + (f", {len(d.reused)} of them in channels the model cannot use" if d.reused else "")
                      + (f", {len(d.duplicates)} exact copies to fill the block" if d.duplicates else "")
                      + f"; +{d.added_macs / 1e6:.2f}M multiply-adds per image; float outputs within {d.max_change:.1e}")
    if result.refinement is not None:
        r = result.refinement
        console.print(f"refined for {result.precision} ({r.method}): {r.layers} layers on {r.samples} images in {r.seconds:.1f} s; "
                      f"largest bias shift {r.max_shift:.3g}"
                      + (f"; {len(r.validated)} layers short of calibration positions checked on held-out "
                         f"folds, {len(r.rounded_to_nearest)} of them rounded to nearest" if r.validated else "")
                      + (f" ({', '.join(r.rounded_to_nearest)})" if r.rounded_to_nearest else ""))
    if result.logit_floor is not None:
        f = result.logit_floor
        console.print(f"logit floor: int8 {f.layer} floored at {f.floor:.3g} (was {f.calibrated_range[0]:.3g}), "
                      f"{f.step_ratio:.2f}x finer step; {f.share_below:.0%} of logits raised")
    if result.quantization_aware is not None:
        learned = result.quantization_aware
        console.print(f"quantization-aware trained: the ranges training learned for {len(learned['layers'])} layer "
                      f"outputs{' and the input' if learned['input_range'] else ''} replace calibrated ones; the "
                      "weights stay as trained (no refinement)")
    elif result.activation_ranges:
        shrink = [(high - low) / (max(cal_high, 0) - min(cal_low, 0))
                  for _, low, high, cal_low, cal_high in result.activation_ranges]
        console.print(f"int8 ranges: {len(shrink)} tensor(s) no ReLU bounds narrowed to {min(shrink):.0%} to "
                      f"{max(shrink):.0%} of their calibration range")
    if result.mixed_precision is not None:
        m = result.mixed_precision
        where = "with 16-bit activations" if m.kept_in == "int16" else "in float"
        console.print(f"mixed precision: {len(m.float_layers)} layer(s) {where} ({', '.join(m.float_layers) or 'none'}; "
                      f"{m.float_mac_share:.1%} of the multiply-adds); worst agreement loss {m.agreement_loss:.1f} "
                      f"points" + (f" (budget {m.max_disagreement:g}: {'met' if m.met else 'NOT met'})" if m.max_disagreement is not None else ""))
    console.print(
        f"calibration: {len(cal.calib)} samples from {cal.source} (seed {cal.seed}), "
        f"{len(cal.holdout)} held out, {len(cal.skipped)} unreadable skipped"
    )
    files = []
    for artifact in result.artifacts:
        check = ""
        if artifact.precision in WEIGHT_ONLY:
            check = f"{artifact.details['weights']} weights, float activations"
        elif artifact.format == "tflite" and artifact.quantized:
            floats = artifact.details["float_ops"]
            wide = artifact.details.get("int16_layers", ())
            full = {"int8": "full int8", "int16x8": "int16 activations, int8 weights",
                    "mixed": f"int8, {len(wide)} layers' activations int16"}[artifact.precision]
            check = f"{'mixed' if floats else full}, {floats} float ops, io {artifact.details['io']}"
        elif artifact.format == "onnx" and artifact.quantized:
            kept = artifact.details.get("float_nodes", 0)
            kind = {"uint8": "QDQ U8S8", "int16": "QDQ S16S8"}.get(artifact.details.get("activations"), "QDQ S8S8")
            check = f"{kind}, {kept} float nodes" if kept else f"{kind}, all Conv/Gemm weights int8 in the file"
            if artifact.details.get("int16_layers"):
                check += f", {len(artifact.details['int16_layers'])} layers' activations int16"
        files.append([artifact.file, artifact.format, artifact.precision, f"{artifact.size / 1024:.1f}", check])
    console.print(fitted_table(console, f"artifacts in {result.output_dir}",
                               ["file", "format", "precision", "size (KiB)", "check"], files,
                               left=("format", "precision", "check")))
    for artifact in result.artifacts:
        if artifact.details.get("session_options"):
            options = ", ".join(f"{k}={v!r}" for k, v in artifact.details["session_options"].items())
            console.print(f"[yellow]note:[/] load {artifact.file} with InferenceSession(..., {options}); "
                          "ONNX Runtime >= 1.21 otherwise quantizes its float layers")
        for key, value in artifact.details.get("session_config", {}).items():
            console.print(f"[yellow]note:[/] load {artifact.file} with options.add_session_config_entry({key!r}, "
                          f"{value!r}): on x86-64 CPUs without VNNI ONNX Runtime's default int8 kernels "
                          "saturate and lose most of the accuracy; other CPUs ignore it")
        unfused = artifact.details.get("runtime_float_ops")
        if unfused and artifact.precision in ("int16x8", "mixed"):
            console.print(f"[yellow]note:[/] {artifact.details['runtime_checked_on']} has no 16-bit integer kernels: "
                          f"it runs {_op_counts(unfused)} of {artifact.file} in float between its dequantize and "
                          "quantize steps (the results are the 16-bit ones; the speed is float's or slower)"
                          + (" where activations are 16-bit" if artifact.precision == "mixed" else ""))
        elif unfused:
            console.print(f"[yellow]note:[/] {artifact.details['runtime_checked_on']} runs "
                          f"{_op_counts(unfused)} of {artifact.file} in float: "
                          "the file is int8 there, but this runtime does not fuse those node units on this CPU "
                          "(on x86-64: int8 residual Adds and the convolutions that share their inputs; aarch64 "
                          "fuses them), so it runs slower here than full int8 would"
                          + ("; for x86-64, quantize with --onnx-activations uint8"
                             if artifact.details.get("activations") == "int8" else ""))
    for fallback in result.fallbacks[:FALLBACK_LINES]:
        console.print(f"[yellow]fell back:[/] {fallback.setting} for {fallback.layer}: {fallback.reason}")
    if len(result.fallbacks) > FALLBACK_LINES:
        console.print(f"[yellow]fell back:[/] {len(result.fallbacks) - FALLBACK_LINES} more (manifest.json: fallbacks)")
    held = "held-out" if cal.holdout else "calibration (no images held out)"
    agreement = ("label agreement" if result.head.multi_label
                 else "top-1 agreement" if result.head.kind == "classes" else "class agreement")
    drift = []
    for row in result.drift:
        sqnr = "inf" if math.isinf(row.sqnr_db) else f"{row.sqnr_db:.1f}"
        low, high = row.agreement_ci95
        drift.append([row.artifact, f"{row.agreement:.1%} ({low:.1%} to {high:.1%})", sqnr, f"{row.max_abs_diff:.4f}"])
    console.print(fitted_table(console, f"{result.precision} vs float model on {result.drift[0].samples if result.drift else 0} "
                               f"{held} images", ["artifact", f"{agreement} (95%)", "SQNR (dB)", "max |diff|"], drift))
    if result.head.kind != "classes":
        console.print(_head_note(result.head.kind))
    _warn(console, result.warnings)
    console.print(f"done in {result.seconds:.1f} s")


def print_arm_status(state: dict) -> None:
    click.echo(f"cache:    {state['cache']} ({state['disk_mb']} MB)")
    click.echo(f"ready:    {'yes' if state['ready'] else 'no (run: mobiledeploy arm setup)'}")
    click.echo(f"qemu:     {state['qemu'] or 'not found'}" + (f" (version {state['qemu_version']})"
                                                             if state["qemu_version"] else ""))
    click.echo(f"sysroot:  {state['sysroot']} (python3.11: {'yes' if state['sysroot_python'] else 'no'})")
    wheels = ", ".join(f"{k} {v}" for k, v in state["wheels"].items()) or "none"
    click.echo(f"wheels:   {wheels}")
    if state.get("setup_seconds") is not None:
        click.echo(f"set up in {state['setup_seconds']} s")
    for name, about in state["cpus"].items():
        click.echo(f"  --device arm:{name:<12} {about}")


def print_analyze(report, top: int) -> None:
    console = make_console()
    for name, layers in report.layers.items():
        final = layers[-1].sqnr_db if layers else float("nan")
        rows = [[r.layer, r.kind, format_db(r.sqnr_db), f"{r.lost_db:+.1f}", f"{r.levels_used:.0%}",
                 r.weight_layer or "-", format_spread(r.weight_spread)] for r in report.worst(name, top)]
        console.print(fitted_table(console, f"{name}: {top} layers that lose the most SQNR ({report.samples} images; "
                                   f"last tensor {format_db(final)} dB)",
                                   ["layer", "type", "SQNR dB", "lost dB", "levels used", "weight layer",
                                    "weight spread"], rows, names=("type", "weight layer"),
                                   optional=("weight spread", "weight layer")))


def print_bench(report) -> None:
    settings = report.settings
    emulated = devices.kind(report.device) == "emulated"
    title_device = {"emulated": f"{report.device} EMULATED by qemu (not device latency)",
                    "board": f"{report.device} (device latency)"}.get(devices.kind(report.device), report.device)
    columns = ["artifact", "runtime", "KiB", "init", "first", "median", "p90", "p99", "std", "inf/s", "peak MB",
               "GMAC/s", "vs float", "agreement"]
    rows = []
    for r in report.rows:
        gmacs = r.gmacs_per_second
        speed = f"{r.speedup_vs_float:.2f}x" if r.speedup_vs_float is not None else "-"
        rows.append([r.artifact, r.runtime.split(" (")[0], f"{r.size / 1024:.0f}", f"{r.init_ms:.1f}",
                     f"{r.first_ms:.2f}", f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.p99_ms:.3f}",
                     f"{r.std_ms:.3f}", f"{r.per_second:.0f}", f"{r.peak_rss_mb:.1f}",
                     "-" if gmacs is None else f"{gmacs:.1f}", speed,
                     "-" if r.agreement is None else f"{r.agreement:.1%}"])
    console = make_console()
    console.print(fitted_table(console, f"{title_device}: {settings.num_threads} thread(s), batch {settings.batch_size}, "
                               f"inputs {report.inputs}; times in ms over >= {settings.num_runs} runs / "
                               f"{settings.min_secs:g} s (mean/min/max in --json and --csv)", columns, rows,
                               names=("runtime",), optional=("init", "first", "p99", "std", "peak MB", "GMAC/s", "KiB",
                                                            "inf/s", "p90")))
    if any(r.agreement is not None for r in report.rows):
        console.print("agreement: top-1 agreement with float on the build's held-out images, as quantize "
                      "measured it (eval measures it on your data)")
    cpu = report.rows[0].cpu if report.rows else ""
    if not emulated and cpu:
        console.print(f"CPU: {cpu} (the features that pick the int8 kernels)")
    board = report.rows[0].board if report.rows else {}
    if board:
        console.print("board: " + ", ".join(part for part in (
            f"{board['cores']} cores" if board.get("cores") else "",
            f"governor {board['governor']}" if board.get("governor") else "",
            f"{board['temperature_c']:.0f} °C" if board.get("temperature_c") is not None else "",
            " ".join(f"{name} {board[name]}" for name in ("numpy", "onnxruntime", "ai-edge-litert") if name in board),
        ) if part))
    if emulated:
        console.print(f"emulated CPU: {cpu}. Trust from emulation: the kernel family those features "
                      "select, MACs, file sizes and outputs; not the times, which are 100-500x slower than "
                      "hardware and rank float vs int8 differently.")
    for r in report.rows:
        if r.precision != "float32" and r.speedup_vs_float and not emulated:
            word = "faster" if r.speedup_vs_float >= 1 else "slower"
            factor = r.speedup_vs_float if r.speedup_vs_float >= 1 else 1 / r.speedup_vs_float
            console.print(f"{r.artifact} is {factor:.2f}x {word} than the float {r.format} file")
    for r in report.rows:
        if r.precision in ("int16x8", "mixed"):
            console.print(f"[yellow]note:[/] {r.artifact}: " + (
                "LiteRT has no optimized kernels for 16-bit activations (its reference ones run them) and its "
                "hardware delegates do not take them" if r.format == "tflite" else
                "ONNX Runtime has no 16-bit integer kernels: it computes those node units in float between "
                "their dequantize and quantize steps") + "; the time is that, not the device's best")
    if report.fastest is not None and not emulated:
        console.print(f"fastest: {report.fastest.artifact} ({report.fastest.runtime}), "
                      f"median {report.fastest.median_ms:.3f} ms")
    for r in report.rows:
        if r.runtime_float_ops:
            console.print(f"[yellow]note:[/] on {r.device}, ONNX Runtime ran "
                          f"{_op_counts(r.runtime_float_ops)} of {r.artifact} in "
                          "float kernels (node units it did not fuse into integer ones)")
    for r in report.rows:
        if r.profile:
            rows = [[op["node"], op["op"], f"{op['ms_per_run']:.4f}", f"{op['share']:.1%}"] for op in r.profile]
            console.print(fitted_table(console, f"{r.artifact}: top {len(r.profile)} operators",
                                       ["node", "op", "ms/run", "share"], rows, names=("op",)))
            if r.layer_ms:
                console.print(f"{r.artifact}: time of {len(r.layer_ms)} layers in --json's layer_ms "
                              f"({r.layer_ms_unattributed or 0:.0%} after the last layer); "
                              "analyze --bench puts it beside each layer's error")
        elif r.profile_note:
            console.print(f"{r.artifact}: {r.profile_note}")


def write_csv(report, path: Path) -> None:
    import csv
    import io

    fields = ["artifact", "format", "precision", "runtime", "device", "threads", "batch", "size", "init_ms",
              "first_ms", "runs", "median_ms", "mean_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "std_ms",
              "per_second", "peak_rss_mb", "macs", "gmacs_per_second", "speedup_vs_float", "agreement"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        writer.writerow(row.to_dict())
    if str(path) == "-":
        click.echo(buffer.getvalue(), nl=False)
    else:
        write_text_atomic(path, buffer.getvalue())


def print_costs(report) -> None:
    blocks = {b["pointwise"]: b for b in separable_blocks(report)}
    what_if = "" if (report.alpha, report.rho) == (1.0, 1.0) else f" (what-if alpha x{report.alpha:g}, rho x{report.rho:.3g})"
    rows = []
    for row in (r for r in report.layers if r.params or r.macs):  # the rest are in the element-ops total
        block = blocks.get(row.name)
        saving = f"{block['ratio']:.3f} = 1/{block['n']} + 1/{block['dk2']}" if block else ""
        params = f"({row.params:,} folded)" if row.kind == "batchnorm" else f"{row.params:,}"
        rows.append([row.name, row.kind, "x".join(map(str, row.kernel)), f"{row.in_channels} -> {row.out_channels}",
                     "x".join(map(str, row.out_size)), params, f"{row.macs:,}", saving])
    console = make_console()
    console.print(fitted_table(console, f"{report.model}: input {'x'.join(map(str, report.input_shape))}{what_if}",
                               ["layer", "type", "kernel", "M -> N", "output", "params", "mult-adds",
                                "vs standard conv"], rows, names=("type",), optional=("kernel", "output", "vs standard conv")))
    console.print(f"total: {report.params:,} params as deployed ({report.params / 1e6:.2f}M), "
                  f"{report.macs:,} mult-adds per image ({report.macs / 1e6:.1f}M)")
    if report.ops:
        console.print(f"plus {report.ops:,} element operations per image ({report.ops / 1e6:.1f}M) in "
                      f"{sum(1 for r in report.layers if r.ops)} activation, add, multiply, scaling and pooling layers")
    if blocks:
        ratio = sum(b["macs"] for b in blocks.values()) / sum(b["standard_macs"] for b in blocks.values())
        console.print(f"{len(blocks)} depthwise-separable blocks cost {ratio:.3f} of standard convolutions "
                      f"({1 / ratio:.1f}x fewer mult-adds)")


def print_sweep(report) -> None:
    """One row per quantized file of each cell, then where the files are."""
    rows = []
    for r in report.rows:
        if r["artifact"] is None:
            rows.append([r["model"], r["setting"], r["device"] or "", r["data"] or "", "-", "-", "-", "-", "-", "-",
                         r["error"]])
            continue
        change, sqnr, latency = r["top1_change"], r["sqnr_db"], r["median_ms"]
        rows.append([r["model"], r["setting"], r["device"], r["data"], r["artifact"], f"{r['agreement']:.1%}",
                     "-" if change is None else f"{change:+.1f}", "inf" if sqnr is None else f"{sqnr:.1f}",
                     f"{r['size_kib']:.0f}", "-" if latency is None else f"{latency:.3f}", r["error"] or ""])
    console = make_console()
    console.print(fitted_table(
        console, f"sweep {report.source}: tasks run {report.tasks_run}, from the cache {report.tasks_cached}, "
                 f"failed {report.tasks_failed}", ["model", "setting", "device", "data", "file", "agreement",
                                                   "top-1 change", "SQNR (dB)", "KiB", "median ms", "note"],
        rows, names=("file",), left=("setting", "device", "data", "note"),
        optional=("note", "KiB", "median ms", "SQNR (dB)", "data")))
    console.print(f"results: {report.output_dir}/results.csv, results.json and sweep.html ({report.seconds:.1f} s)")
