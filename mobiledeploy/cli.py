"""Thin click layer: parse, call one library function, print, exit code.

Exit codes are a contract for CI: 0 ok, 1 user error, 2 usage error, 3 gate failed.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import click

from . import __version__
from .errors import MobiledeployError
from .staging import Terminated, terminate

EXIT_ERROR = 1


class _Group(click.Group):
    """Turns user errors into one line on stderr and exit 1; ``--debug`` keeps the traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MobiledeployError as exc:
            if ctx.meta.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written", err=True)
            ctx.exit(130)
        except Terminated:
            click.echo("terminated: nothing was written", err=True)
            ctx.exit(143)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mobiledeploy")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for user errors (for bug reports).")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Make a trained Keras MobileNet ready for phones and small ARM boards.

    \b
    mobiledeploy quantize model.h5 --calib calibration_data/ -o build/
    mobiledeploy eval build/ --data eval_images/            # accuracy and drift
    mobiledeploy check build/ --data eval_images/ --baseline baseline.json   # CI gate
    mobiledeploy bench build/ --device cpu                  # latency (or --device arm)
    mobiledeploy analyze build/ --data eval_images/ --html drift.html
    mobiledeploy inspect model.h5 --alpha 0.5               # params and MACs per layer
    """
    ctx.meta["debug"] = debug
    _quiet_libraries()
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib", "calib", required=True, type=click.Path(path_type=Path),
              help="Calibration data: a folder of real images (searched recursively), or a "
                   ".npy/.npz array (N,H,W,C) of 0..255 pixels. Use images like the ones the model "
                   "will see in production; blank or random images give bad int8 ranges.")
@click.option("-o", "--output", default=Path("build"), show_default=True, type=click.Path(path_type=Path),
              help="Output folder. It appears complete or not at all.")
@click.option("--num-calib", default=200, show_default=True, type=click.IntRange(min=1),
              help="Images used for calibration. 100-500 is plenty for MobileNets; more costs time.")
@click.option("--num-holdout", default=100, show_default=True, type=click.IntRange(min=0),
              help="Further images, not used for calibration, on which int8 drift is measured.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the calibration sampling: same seed, same files.")
@click.option("--preprocess", default="auto", show_default=True,
              type=click.Choice(["auto", "mobilenet", "unit", "raw"]),
              help="Pixel scaling. mobilenet: x/127.5-1 (keras.applications MobileNets); unit: x/255; "
                   "raw: unchanged (model has its own Rescaling, or arrays are already scaled). auto: raw "
                   "when the model starts with a Rescaling/Normalization layer, else mobilenet.")
@click.option("--crop-fraction", default=0.875, show_default=True, type=click.FloatRange(0.1, 1.0),
              help="Center-crop fraction: resize the shorter side to size/fraction, then crop. 0.875 is "
                   "the ImageNet evaluation standard (256 -> 224); 1.0 keeps the whole image.")
@click.option("--io", "io", default="int8", show_default=True, type=click.Choice(["int8", "float"]),
              help="Input/output type of the int8 TFLite file. int8 for microcontrollers and NPUs that "
                   "want integer I/O; float to feed float images and let the model quantize them.")
@click.option("--per-tensor", is_flag=True,
              help="Per-tensor weight scales instead of per-channel. Only for accelerators that require "
                   "it: folded MobileNet depthwise weights collapse under one scale per tensor.")
@click.option("--refine", default="adaround", show_default=True, type=click.Choice(["adaround", "bias", "none"]),
              help="Prepare the float model for int8 before the converters see it. adaround: round each weight "
                   "up or down to best match the float layer on calibration images, then absorb the remaining "
                   "mean error into the biases (best int8 accuracy; seconds to a few minutes). bias: bias "
                   "correction only (faster). none: what the plain converters give.")
@click.option("--activation-ranges", default="minmax", show_default=True, type=click.Choice(["minmax", "mse"]),
              help="minmax: each activation's int8 range is its calibration min..max (the converters' own). "
                   "mse: also clip each ReLU6 where that lowers the rounding + clipping error; helps models "
                   "whose activations rarely reach 6.")
@click.option("--rounding-samples", default=64, show_default=True, type=click.IntRange(min=1),
              help="Calibration images whose statistics drive adaptive rounding; more is slower.")
@click.option("--trust-model-code", is_flag=True,
              help="Allow Lambda layers and custom objects, which run code stored in the model file. "
                   "Only for files you wrote or vetted.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (for machines).")
def quantize(model: Path, calib: Path, output: Path, num_calib: int, num_holdout: int, seed: int,
             preprocess: str, crop_fraction: float, io: str, per_tensor: bool, refine: str, activation_ranges: str,
             rounding_samples: int, trust_model_code: bool, overwrite: bool, as_json: bool) -> None:
    """Fold BatchNorm, calibrate int8, and export TFLite and ONNX files.

    Writes model_folded.keras, model_float.tflite, model_int8.tflite, model_float.onnx,
    model_int8.onnx and manifest.json to the output folder, and prints the int8 drift
    against the float model on held-out images.
    """
    from .pipeline import quantize as run
    from .types import QuantizeOptions

    options = QuantizeOptions(
        num_calib=num_calib, num_holdout=num_holdout, seed=seed, preprocess=preprocess,
        crop_fraction=crop_fraction, io=io, per_channel=not per_tensor, refine=refine,
        activation_ranges=activation_ranges, rounding_samples=rounding_samples,
        trust_model_code=trust_model_code, overwrite=overwrite,
    )
    if trust_model_code:
        click.echo("warning: --trust-model-code: code stored in the model file may run", err=True)
    with _Progress(enabled=not as_json) as progress:
        result = run(model, calib, output, options, progress.update)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    _print_quantize(result)


DEVICE_HELP = ("cpu: this machine. arm[:CPU]: the .tflite/.onnx files run under qemu aarch64 emulation "
               "(real ARM kernels of LiteRT and ONNX Runtime; set up on first use, see mobiledeploy arm). "
               "CPU: cortex-a53 (plain NEON: low-end phones, Pi 3), cortex-a72 (Pi 4), cortex-a76 (default; "
               "dot product: modern phones), neoverse-n1.")


def _device(ctx, param, value: str) -> str:
    from .emulation import parse_device

    try:
        parse_device(value)
    except MobiledeployError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


DATA_HELP = ("Labelled data: a folder with one sub-folder per class (mapped to model outputs in "
             "sorted order, or by --labels), or an .npz with x and y. A plain image folder gives "
             "label-free drift only.")
LABELS_HELP = ("Class names, one per line, in model output order. Needed when the folders cover only "
               "some classes or are not named in output order (e.g. ImageNet wnids).")


@main.command(name="eval")
@click.argument("build", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help=DATA_HELP)
@click.option("--labels", "labels", type=click.Path(path_type=Path), help=LABELS_HELP)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Images per runtime call; larger is faster, smaller uses less memory.")
@click.option("--device", default="cpu", show_default=True, callback=_device, help=DEVICE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def eval_command(build: Path, data: Path, labels: Path | None, batch_size: int, device: str, as_json: bool) -> None:
    """Accuracy and drift of every artifact in BUILD against the float model.

    Reads the file list and the preprocessing from BUILD/manifest.json and refuses files whose
    sha256 no longer matches it. With --device arm, accuracy and agreement come from the ARM
    outputs, and each row says how many were bit-identical to this machine's outputs.
    """
    from .pipeline import evaluate_build

    with _Progress(enabled=not as_json) as progress:
        report = evaluate_build(build, data, labels, batch_size, progress.update, device)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_eval(report)


@main.command()
@click.argument("build", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help=DATA_HELP)
@click.option("--labels", "labels", type=click.Path(path_type=Path), help=LABELS_HELP)
@click.option("--max-drop", default=1.0, show_default=True, type=float,
              help="Fail when int8 top-1 is more than this many points below the float model.")
@click.option("--min-agreement", default=0.90, show_default=True, type=click.FloatRange(0, 1),
              help="Fail when the fraction of images where int8 and float agree on top-1 is lower.")
@click.option("--baseline", type=click.Path(path_type=Path),
              help="A baseline JSON from --update-baseline: fail when a metric regresses against it.")
@click.option("--tolerance", default=0.5, show_default=True, type=float,
              help="Points that top-1/top-5/agreement may regress against the baseline.")
@click.option("--sqnr-tolerance", default=1.0, show_default=True, type=float,
              help="dB the output SQNR may regress against the baseline.")
@click.option("--update-baseline", is_flag=True,
              help="Write the current metrics to --baseline (after a deliberate change) instead of comparing.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, allow_dash=True),
              help="Write the rule results as JSON to this file ('-' for stdout).")
@click.option("--junit-xml", type=click.Path(path_type=Path),
              help="Write one JUnit test case per rule per artifact, for CI test reports.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True, callback=_device,
              help=DEVICE_HELP + " The rules then apply to the ARM results.")
def check(build: Path, data: Path, labels: Path | None, max_drop: float, min_agreement: float,
          baseline: Path | None, tolerance: float, sqnr_tolerance: float, update_baseline: bool,
          json_path: Path | None, junit_xml: Path | None, batch_size: int, device: str) -> None:
    """CI gate: exit 3 when quantized accuracy regresses.

    Rules, per int8 artifact: top-1 at most --max-drop points below float; agreement with float
    at least --min-agreement; and, with --baseline, no metric worse than the baseline beyond the
    tolerances. A baseline made on other data is refused.
    """
    from . import gate
    from .pipeline import evaluate_build
    from .staging import write_text_atomic

    if update_baseline and baseline is None:
        raise click.UsageError("--update-baseline needs --baseline FILE")
    rules = gate.GateRules(max_drop, min_agreement, tolerance, sqnr_tolerance)
    json_to_stdout = json_path is not None and str(json_path) == "-"
    with _Progress(enabled=not json_to_stdout) as progress:
        report = evaluate_build(build, data, labels, batch_size, progress.update, device)
    stored = None
    if baseline is not None and not update_baseline:
        stored = gate.read_baseline(baseline, report)
    results = gate.evaluate_rules(report, rules, stored)
    if update_baseline:
        write_text_atomic(baseline, json.dumps(gate.make_baseline(report, rules), indent=2) + "\n")
    if json_path is not None:
        text = json.dumps({**gate.results_json(results), "report": report.to_dict()}, indent=2)
        click.echo(text) if json_to_stdout else write_text_atomic(json_path, text + "\n")
    if junit_xml is not None:
        write_text_atomic(junit_xml, gate.junit_xml(results))
    failed = [r for r in results if not r.passed]
    if not json_to_stdout:
        _print_eval(report)
        for r in results:
            mark = "PASS" if r.passed else "FAIL"
            click.echo(f"{mark}  {r.rule:<20} {r.artifact:<20} {r.message}")
        if update_baseline:
            click.echo(f"baseline written to {baseline}")
    if failed:
        raise gate.GateFailed(
            f"gate failed: {len(failed)} of {len(results)} rules ({', '.join(sorted({r.rule for r in failed}))})"
        )


@main.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--device", default="cpu", show_default=True, callback=_device,
              help=DEVICE_HELP + " Emulated time is 100-500x slower than hardware and does not rank "
                   "float vs int8 as hardware does: it is labelled as such.")
@click.option("--num-threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="Threads per runtime. 1 matches a phone app's usual inference thread and gives the "
                   "steadiest numbers; raise it to see how the model scales over cores.")
@click.option("--warmup-runs", type=click.IntRange(min=0),
              help="Untimed runs first, so caches, thread pools and packed weights are ready. "
                   "[default: 5; 1 under arm]")
@click.option("--num-runs", type=click.IntRange(min=1),
              help="Timed runs: at least this many ... [default: 50; 10 under arm]")
@click.option("--min-secs", type=click.FloatRange(min=0),
              help="... and for at least this long. Raise both on a noisy machine. [default: 1; 0 under arm]")
@click.option("--max-secs", default=150.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Stop timing an artifact after this long, whatever --num-runs says.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1),
              help="Images per inference. 1 is the latency a user feels; larger shows throughput.")
@click.option("--data", type=click.Path(path_type=Path),
              help="Time real images from this folder instead of random inputs (needs a build folder).")
@click.option("--keras", "include_keras", is_flag=True,
              help="Also time the folded Keras model (TensorFlow), as a reference point.")
@click.option("--profile", is_flag=True, help="Per-operator time, top --top-ops (ONNX Runtime's profiler).")
@click.option("--top-ops", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path, allow_dash=True),
              help="Write one CSV row per artifact to this file ('-' for stdout).")
def bench(target: Path, device: str, num_threads: int, warmup_runs: int | None, num_runs: int | None,
          min_secs: float | None, max_secs: float, batch: int, data: Path | None, include_keras: bool,
          profile: bool, top_ops: int, seed: int, as_json: bool, csv_path: Path | None) -> None:
    """Latency, memory and size of every artifact in TARGET (a build folder or one file).

    Each artifact runs in a process of its own, so one runtime's threads and memory do not
    skew the next. Reports init time, first inference, median/mean/p90/p99/min/max/std,
    inferences per second, peak memory added, achieved GMAC/s, and int8 speed-up over the
    float file of the same format. Compare ratios measured in one run: absolute times drift
    on shared machines.
    """
    from .pipeline import bench_build
    from .types import BenchSettings

    emulated = device != "cpu"
    settings = BenchSettings(
        num_threads,
        warmup_runs if warmup_runs is not None else (1 if emulated else 5),
        num_runs if num_runs is not None else (10 if emulated else 50),
        min_secs if min_secs is not None else (0.0 if emulated else 1.0),
        max_secs, batch, profile, top_ops, seed,
    )
    with _Progress(enabled=not as_json) as progress:
        report = bench_build(target, settings, data, include_keras, progress.update, device)
    if csv_path is not None:
        _write_csv(report, csv_path)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    elif not (csv_path is not None and str(csv_path) == "-"):
        _print_bench(report)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--alpha", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="What-if width multiplier, relative to this model: 0.5 halves every layer's channels "
                   "(cost falls about as alpha^2).")
@click.option("--rho", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="What-if resolution multiplier, relative to this model: 128/224 = 0.571 (cost falls as rho^2).")
@click.option("--resolution", type=click.IntRange(min=1),
              help="What-if input size in pixels; sets --rho to RESOLUTION / the model's input height.")
@click.option("--trust-model-code", is_flag=True, help="Allow Lambda layers and custom objects (runs file code).")
@click.option("--json", "as_json", is_flag=True, help="Print the per-layer table as JSON on stdout.")
def inspect(model: Path, alpha: float, rho: float, resolution: int | None, trust_model_code: bool,
            as_json: bool) -> None:
    """Per-layer params and multiply-adds of MODEL (a model file or a build folder).

    Uses the MobileNets paper's counts: a standard conv costs Dk·Dk·M·N·Df·Df, a depthwise
    Dk·Dk·M·Df·Df and a pointwise M·N·Df·Df, so a separable block costs 1/N + 1/Dk² of the
    standard conv it replaces. Params are counted as deployed (BatchNorm folded into biases).
    """
    from .pipeline import inspect_model

    if trust_model_code:
        click.echo("warning: --trust-model-code: code stored in the model file may run", err=True)
    if resolution is not None:
        base = inspect_model(model, trust_model_code=trust_model_code)
        rho = rho * resolution / base.input_shape[0]
    report = inspect_model(model, alpha, rho, trust_model_code)
    if as_json:
        from .costs import separable_blocks

        click.echo(json.dumps({**report.to_dict(), "separable_blocks": separable_blocks(report)}, indent=2))
    else:
        _print_costs(report)


def _print_eval(report) -> None:
    from rich.table import Table

    labelled = report.labelled
    arm = report.device != "cpu"
    where = f"; .tflite/.onnx on {report.device} (emulated)" if arm else ""
    table = Table(title=f"{report.samples} images from {report.data_source} (reference: {report.reference}{where})")
    columns = ["artifact", *(["device", "same as x86", "max |diff| vs x86"] if arm else []),
               *(["top-1", "top-5"] if labelled else []), "agreement", "SQNR (dB)", "mean KL",
               *(["classes changed"] if labelled else [])]
    for column in columns:
        table.add_column(column, justify="left" if column == "artifact" else "right")
    for row in report.rows:
        sqnr = "inf" if math.isinf(row["sqnr_db"]) else f"{row['sqnr_db']:.1f}"
        cells = [row["artifact"]]
        if arm:
            exact = "x86_identical" in row
            cells += [row["device"], f"{row['x86_identical']:.2%}" if exact else "-",
                      f"{row['x86_max_abs_diff']:.2g}" if exact else "-"]
        if labelled:
            cells += [f"{row['top1']:.2%}", f"{row['top5']:.2%}"]
        cells += [f"{row['agreement']:.2%}", sqnr, f"{row['mean_kl']:.4f}"]
        if labelled:
            changes = row["per_class_change"]
            worst = min(changes.items(), key=lambda kv: kv[1], default=None)
            cells.append(f"{len(changes)}" + (f" (worst {worst[0]}: {worst[1]:+.1%})" if worst and worst[1] < 0 else ""))
        table.add_row(*cells)
    _console(170 if arm else 110).print(table)


def _print_quantize(result) -> None:
    from rich.table import Table

    console = _console()
    fold = result.fold
    cal = result.calibration
    console.print(
        f"folded {len(fold.folded)} BatchNorm layers; max |orig - folded| = {fold.max_abs_diff:.2e} "
        f"(relative {fold.rel_diff:.1e} <= {fold.rel_tolerance:g}) on {fold.samples} images"
    )
    if fold.unfolded:
        console.print(f"[yellow]not folded:[/] {', '.join(fold.unfolded)}")
    if result.refinement is not None:
        r = result.refinement
        console.print(f"refined for int8 ({r.method}): {r.layers} layers on {r.samples} images in {r.seconds:.1f} s; "
                      f"largest bias shift {r.max_shift:.3g}")
    console.print(
        f"calibration: {len(cal.calib)} samples from {cal.source} (seed {cal.seed}), "
        f"{len(cal.holdout)} held out, {len(cal.skipped)} unreadable skipped"
    )
    files = Table(title=f"artifacts in {result.output_dir}")
    for column in ("file", "format", "precision", "size (KiB)", "check"):
        files.add_column(column, justify="right" if column.startswith("size") else "left")
    for artifact in result.artifacts:
        check = ""
        if artifact.format == "tflite" and artifact.precision == "int8":
            check = f"full int8, {artifact.details['float_ops']} float ops, io {artifact.details['io']}"
        elif artifact.format == "onnx" and artifact.precision == "int8":
            check = "QDQ S8S8, all Conv/Gemm quantized"
        files.add_row(artifact.file, artifact.format, artifact.precision, f"{artifact.size / 1024:.1f}", check)
    console.print(files)
    held = "held-out" if cal.holdout else "calibration (no images held out)"
    drift = Table(title=f"int8 vs float model on {result.drift[0].samples if result.drift else 0} {held} images")
    for column in ("artifact", "top-1 agreement", "SQNR (dB)", "max |diff|"):
        drift.add_column(column, justify="left" if column == "artifact" else "right")
    for row in result.drift:
        sqnr = "inf" if math.isinf(row.sqnr_db) else f"{row.sqnr_db:.1f}"
        drift.add_row(row.artifact, f"{row.agreement:.1%}", sqnr, f"{row.max_abs_diff:.4f}")
    console.print(drift)
    console.print(f"done in {result.seconds:.1f} s")


@main.command()
@click.argument("build", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Images to measure on (a folder, searched recursively, or an .npz/.npy); labels are not needed.")
@click.option("--max-images", default=200, show_default=True, type=click.IntRange(min=1),
              help="Use at most this many images; per-layer SQNR settles after a few dozen.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1), help="Worst layers to list.")
@click.option("--html", "html_path", type=click.Path(path_type=Path),
              help="Write a self-contained HTML report (plot + every layer) to this file.")
@click.option("--png", "png_path", type=click.Path(path_type=Path),
              help="Write the plot of SQNR by layer depth to this PNG file.")
@click.option("--json", "as_json", is_flag=True, help="Print every layer's numbers as JSON on stdout.")
def analyze(build: Path, data: Path, max_images: int, top: int, html_path: Path | None, png_path: Path | None,
            as_json: bool) -> None:
    """Which layer hurts: per-layer drift of each int8 artifact against the float model.

    For every activation tensor of model_int8.tflite (all tensors preserved) and
    model_int8.onnx (QDQ outputs): the SQNR against the same tensor of the folded float model,
    the SQNR lost at that layer, the share of int8 levels used, and the spread of the producing
    layer's per-channel weight ranges. Lists the layers that lose most first.
    """
    from .analysis_report import html_report, plot_png
    from .pipeline import analyze_build
    from .staging import write_bytes_atomic, write_text_atomic

    with _Progress(enabled=not as_json) as progress:
        report = analyze_build(build, data, max_images, progress=progress.update)
    png = plot_png(report) if (png_path or html_path) else b""
    if png_path:
        write_bytes_atomic(png_path, png)
    if html_path:
        write_text_atomic(html_path, html_report(report, png, top))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
        return
    _print_analyze(report, top)
    for label, path in (("plot", png_path), ("report", html_path)):
        if path:
            click.echo(f"{label} written to {path}")


@main.group()
def arm() -> None:
    """Set up and inspect ARM emulation (qemu aarch64 + an aarch64 Python with the runtimes).

    \b
    mobiledeploy arm setup     # once; also runs automatically on first --device arm
    mobiledeploy arm status
    """


@arm.command()
@click.option("--sysroot", type=click.Path(path_type=Path),
              help="Use this existing aarch64 root filesystem (with Python 3.11) instead of fetching Debian's, "
                   "e.g. a mounted Raspberry Pi OS image.")
@click.option("--force", is_flag=True, help="Provision again even if the cache looks complete.")
def setup(sysroot: Path | None, force: bool) -> None:
    """Fetch qemu-aarch64-static, an aarch64 sysroot and the ARM wheels into the user cache."""
    from . import emulation

    state = emulation.setup(sysroot, lambda step: click.echo(f"- {step}", err=True), force)
    _print_arm_status(state)


@arm.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON on stdout.")
def status(as_json: bool) -> None:
    """Say what is installed for ARM emulation, where, and how much disk it uses."""
    from . import emulation

    state = emulation.status()
    if as_json:
        click.echo(json.dumps(state, indent=2))
    else:
        _print_arm_status(state)


def _print_arm_status(state: dict) -> None:
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


def _print_analyze(report, top: int) -> None:
    from rich.table import Table

    from .analysis_report import _db, _spread

    console = _console()
    for name, rows in report.layers.items():
        final = rows[-1].sqnr_db if rows else float("nan")
        table = Table(title=f"{name}: {top} layers that lose the most SQNR ({report.samples} images; "
                            f"last tensor {_db(final)} dB)")
        for column in ("layer", "type", "SQNR dB", "lost dB", "int8 levels used", "weight layer", "weight spread"):
            table.add_column(column, justify="left" if column in ("layer", "type", "weight layer") else "right")
        for r in report.worst(name, top):
            table.add_row(r.layer, r.kind, _db(r.sqnr_db), f"{r.lost_db:+.1f}", f"{r.levels_used:.0%}",
                          r.weight_layer or "-", _spread(r.weight_spread))
        console.print(table)


def _print_bench(report) -> None:
    from rich.table import Table

    settings = report.settings
    emulated = report.device != "cpu"
    title_device = f"{report.device} EMULATED by qemu (not device latency)" if emulated else report.device
    table = Table(title=f"{title_device}: {settings.num_threads} thread(s), batch {settings.batch}, inputs "
                        f"{report.inputs}; times in ms over >= {settings.num_runs} runs / {settings.min_secs:g} s "
                        "(mean/min/max in --json and --csv)")
    columns = ("artifact", "runtime", "KiB", "init", "first", "median", "p90", "p99", "std", "inf/s", "peak MB",
               "GMAC/s", "vs float")
    for column in columns:
        table.add_column(column, justify="left" if column in ("artifact", "runtime") else "right")
    for r in report.rows:
        gmacs = r.gmacs_per_second
        speed = f"{r.speedup_vs_float:.2f}x" if r.speedup_vs_float is not None else "-"
        table.add_row(r.artifact, r.runtime.split(" (")[0], f"{r.size / 1024:.0f}", f"{r.init_ms:.1f}",
                      f"{r.first_ms:.2f}", f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.p99_ms:.3f}",
                      f"{r.std_ms:.3f}", f"{r.per_second:.0f}", f"{r.peak_rss_mb:.1f}",
                      "-" if gmacs is None else f"{gmacs:.1f}", speed)
    console = _console(150)
    console.print(table)
    if emulated:
        cpu = report.rows[0].cpu if report.rows else ""
        console.print(f"emulated CPU features: {cpu}. Trust from emulation: the kernel family those features "
                      "select, MACs, file sizes and outputs; not the times, which are 100-500x slower than "
                      "hardware and rank float vs int8 differently.")
    for r in report.rows:
        if r.precision == "int8" and r.speedup_vs_float and not emulated:
            word = "faster" if r.speedup_vs_float >= 1 else "slower"
            factor = r.speedup_vs_float if r.speedup_vs_float >= 1 else 1 / r.speedup_vs_float
            console.print(f"{r.artifact} is {factor:.2f}x {word} than the float {r.format} file")
    if report.fastest is not None and not emulated:
        console.print(f"fastest: {report.fastest.artifact} ({report.fastest.runtime}), "
                      f"median {report.fastest.median_ms:.3f} ms")
    for r in report.rows:
        if r.profile:
            ops = Table(title=f"{r.artifact}: top {len(r.profile)} operators")
            for column in ("node", "op", "ms/run", "share"):
                ops.add_column(column, justify="left" if column in ("node", "op") else "right")
            for op in r.profile:
                ops.add_row(op["node"], op["op"], f"{op['ms_per_run']:.4f}", f"{op['share']:.1%}")
            console.print(ops)
        elif r.profile_note:
            console.print(f"{r.artifact}: {r.profile_note}")


def _write_csv(report, path: Path) -> None:
    import csv
    import io

    fields = ["artifact", "format", "precision", "runtime", "device", "threads", "batch", "size", "init_ms",
              "first_ms", "runs", "median_ms", "mean_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "std_ms",
              "per_second", "peak_rss_mb", "macs", "gmacs_per_second", "speedup_vs_float"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        writer.writerow(row.to_dict())
    if str(path) == "-":
        click.echo(buffer.getvalue(), nl=False)
    else:
        from .staging import write_text_atomic

        write_text_atomic(path, buffer.getvalue())


def _print_costs(report) -> None:
    from rich.table import Table

    from .costs import separable_blocks

    blocks = {b["pointwise"]: b for b in separable_blocks(report)}
    what_if = "" if (report.alpha, report.rho) == (1.0, 1.0) else f" (what-if alpha x{report.alpha:g}, rho x{report.rho:.3g})"
    table = Table(title=f"{report.model}: input {'x'.join(map(str, report.input_shape))}{what_if}")
    for column in ("layer", "type", "kernel", "M -> N", "output", "params", "mult-adds", "vs standard conv"):
        table.add_column(column, justify="left" if column in ("layer", "type") else "right")
    for row in report.layers:
        block = blocks.get(row.name)
        saving = f"{block['ratio']:.3f} = 1/{block['n']} + 1/{block['dk2']}" if block else ""
        params = f"({row.params:,} folded)" if row.kind == "batchnorm" else f"{row.params:,}"
        table.add_row(row.name, row.kind, "x".join(map(str, row.kernel)), f"{row.in_channels} -> {row.out_channels}",
                      "x".join(map(str, row.out_size)), params, f"{row.macs:,}", saving)
    console = _console()
    console.print(table)
    console.print(f"total: {report.params:,} params as deployed ({report.params / 1e6:.2f}M), "
                  f"{report.macs:,} mult-adds per image ({report.macs / 1e6:.1f}M)")
    if blocks:
        ratio = sum(b["macs"] for b in blocks.values()) / sum(b["standard_macs"] for b in blocks.values())
        console.print(f"{len(blocks)} depthwise-separable blocks cost {ratio:.3f} of standard convolutions "
                      f"({1 / ratio:.1f}x fewer mult-adds)")


def _console(min_width: int = 110):
    """A console at least ``min_width`` columns wide, so tables stay readable in CI logs and pipes."""
    from rich.console import Console

    console = Console()
    return Console(width=max(console.width, min_width)) if not console.is_terminal else console


class _Progress:
    """A rich progress bar on stderr, one task per pipeline step."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self._bar = None
        self._tasks: dict[str, int] = {}

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self._bar.start()
        return self

    def update(self, step: str, done: int, total: int) -> None:
        if self._bar is None:
            return
        if step not in self._tasks:
            for task in self._tasks.values():  # a new step means the earlier ones are done
                self._bar.update(task, completed=self._bar.tasks[task].total)
            self._tasks[step] = self._bar.add_task(step, total=max(total, 1))
        self._bar.update(self._tasks[step], completed=done, total=max(total, 1))

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()


def _quiet_libraries() -> None:
    """TensorFlow, absl and tf2onnx log at INFO/WARNING by default; keep stderr for real problems."""
    for name in ("tensorflow", "absl", "tf2onnx", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.ERROR)
