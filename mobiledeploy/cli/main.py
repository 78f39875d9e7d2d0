"""Thin click layer: parse, call one library function, print, exit code.

Exit codes are a contract for CI: 0 ok, 1 user error, 2 usage error, 3 gate failed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from .. import __version__
from ..errors import MobiledeployError
from . import terminal
from .params import SEED, Finite
from .quantize import parse_size
from ..staging import Terminated, check_output_file, published, terminate, terminated

EXIT_ERROR = 1


class _Group(click.Group):
    """Turns user errors into one line on stderr and exit 1 (``--debug`` keeps the traceback),
    Ctrl-C into exit 130 and SIGTERM into 143, whatever error it surfaced as."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            click.echo(f"interrupted: {_what_was_written(exc)}", err=True)
            ctx.exit(130)
        except (Terminated, Exception) as exc:
            # a library may catch Terminated and raise its own error: after SIGTERM, that is one too
            if isinstance(exc, Terminated) or terminated():
                click.echo(f"terminated: {_what_was_written(exc)}", err=True)
                ctx.exit(143)
            if not isinstance(exc, MobiledeployError) or ctx.meta.get("debug"):
                raise
            click.echo(printable(f"error: {exc}"), err=True)
            ctx.exit(exc.exit_code)


def printable(text: str) -> str:
    """``text`` as any terminal can print it: file names that are not UTF-8 (which Python holds as
    lone surrogates) shown as escapes instead of failing the print."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _what_was_written(interruption: BaseException) -> str:
    """What an interrupted run leaves: nothing, or (stopped just after publishing) its output."""
    return "the output folder was written before it stopped" if published(interruption) else "nothing was written"


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


DEVICE_HELP = ("cpu: this machine. arm[:CPU]: the .tflite/.onnx files run under qemu aarch64 emulation "
               "(real ARM kernels of LiteRT and ONNX Runtime; set up on first use, see mobiledeploy arm). "
               "CPU: cortex-a53 (plain NEON: low-end phones, Pi 3), cortex-a72 (Pi 4), cortex-a76 (default; "
               "dot product: modern phones), neoverse-n1.")


def _device(ctx, param, value: str) -> str:
    from ..runtime.arm.emulation import parse_device

    try:
        parse_device(value)
    except MobiledeployError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


DATA_HELP = ("Labelled data: a folder with one sub-folder per class (mapped to model outputs in "
             "sorted order, or by --labels), or an .npz with x and y. A plain image folder gives "
             "label-free drift only.")
COMPARE_HELP = ("Also run this .tflite/.onnx file (repeatable), e.g. the int8 file published with the "
                "model or another tool's, on the same images with the build's preprocessing, scored "
                "against the same float model. A TF-slim file's extra 'background' output 0 is dropped.")
LABELS_HELP = ("Class names, one per line, in model output order. Needed when the folders cover only "
               "some classes or are not named in output order (e.g. ImageNet wnids).")


@main.command(name="eval")
@click.argument("build", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help=DATA_HELP)
@click.option("--labels", "labels", type=click.Path(path_type=Path), help=LABELS_HELP)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Images per runtime call; larger is faster, smaller uses less memory.")
@click.option("--device", default="cpu", show_default=True, callback=_device, help=DEVICE_HELP)
@click.option("--compare", "compare", multiple=True, type=click.Path(path_type=Path), metavar="FILE",
              help=COMPARE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def eval_command(build: Path, data: Path, labels: Path | None, batch_size: int, device: str,
                 compare: tuple[Path, ...], as_json: bool) -> None:
    """Accuracy and drift of every artifact in BUILD against the float model.

    Reads the file list and the preprocessing from BUILD/manifest.json and refuses files whose
    sha256 no longer matches it. With --device arm, accuracy and agreement come from the ARM
    outputs, and each row says how many were bit-identical to this machine's outputs. Each top-1
    change comes with the half-width of its 95% interval on these images (paired image by image;
    agreement's interval is in --json): a change inside it is not resolved by the data.
    """
    from ..evaluation.builds import evaluate_build

    with terminal.Progress(enabled=not as_json) as progress:
        report = evaluate_build(build, data, labels, batch_size, progress.update, device, compare)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        terminal.print_eval(report)


@main.command()
@click.argument("build", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help=DATA_HELP)
@click.option("--labels", "labels", type=click.Path(path_type=Path), help=LABELS_HELP)
@click.option("--max-drop", default=1.0, show_default=True, type=Finite(min=0, max=100),
              help="Fail when int8 top-1 is more than this many points below the float model.")
@click.option("--min-agreement", default=0.90, show_default=True, type=Finite(0, 1),
              help="Fail when the fraction of images where int8 and float agree on top-1 is lower.")
@click.option("--baseline", type=click.Path(path_type=Path),
              help="A baseline JSON from --update-baseline: fail when a metric regresses against it.")
@click.option("--tolerance", default=0.5, show_default=True, type=Finite(min=0, max=100),
              help="Points that top-1/top-5/agreement may regress against the baseline, and that "
                   "top-1/agreement may trail a --compare file.")
@click.option("--sqnr-tolerance", default=1.0, show_default=True, type=Finite(min=0),
              help="dB the output SQNR may regress against the baseline.")
@click.option("--compare", "compare", multiple=True, type=click.Path(path_type=Path), metavar="FILE",
              help=COMPARE_HELP + " Fail when an int8 file of the build has lower top-1 or agreement "
                   "than this file (beyond --tolerance): pick it to hold your build to the int8 file "
                   "the model's authors published, or to another tool's.")
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
          baseline: Path | None, tolerance: float, sqnr_tolerance: float, compare: tuple[Path, ...],
          update_baseline: bool, json_path: Path | None, junit_xml: Path | None, batch_size: int,
          device: str) -> None:
    """CI gate: exit 3 when quantized accuracy regresses.

    Rules, per int8 artifact: top-1 at most --max-drop points below float; agreement with float
    at least --min-agreement; with --baseline, no metric worse than the baseline beyond the
    tolerances (a baseline made on other data is refused); with --compare, top-1 and agreement
    no lower than the compared file's beyond --tolerance.

    A few hundred images measure a top-1 change to about a point either way: the --max-drop,
    --min-agreement and --compare rules print their 95% interval and say when the threshold lies
    inside it (a pass or fail that other images could reverse; use more images to settle it).
    """
    from ..evaluation import gate
    from ..options import GateRules
    from ..evaluation.builds import check_build
    from ..staging import write_text_atomic

    if update_baseline and baseline is None:
        raise click.UsageError("--update-baseline needs --baseline FILE")
    rules = GateRules(max_drop, min_agreement, tolerance, sqnr_tolerance)
    for path, option in ((json_path, "--json"), (junit_xml, "--junit-xml"),
                         (baseline if update_baseline else None, "--baseline")):
        check_output_file(path, option)  # before the evaluation, not after it
    json_to_stdout = json_path is not None and str(json_path) == "-"
    with terminal.Progress(enabled=not json_to_stdout) as progress:
        result = check_build(build, data, rules, labels, baseline, update_baseline, batch_size, progress.update,
                             device, compare)
    report, results, failed = result.report, result.rules, result.failed
    if json_path is not None:
        text = json.dumps({**gate.results_json(result), "report": report.to_dict()}, indent=2)
        click.echo(text) if json_to_stdout else write_text_atomic(json_path, text + "\n")
    if junit_xml is not None:
        write_text_atomic(junit_xml, gate.junit_xml(results))
    if not json_to_stdout:
        terminal.print_eval(report)
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
@click.option("--min-secs", type=Finite(min=0, max=3600),
              help="... and for at least this long. Raise both on a noisy machine. [default: 1; 0 under arm]")
@click.option("--max-secs", default=150.0, show_default=True, type=Finite(min=0.001, max=86400),
              help="Stop timing an artifact after this long, whatever --num-runs says.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1),
              help="Images per inference. 1 is the latency a user feels; larger shows throughput.")
@click.option("--data", type=click.Path(path_type=Path),
              help="Time real images from this folder instead of random inputs (needs a build folder).")
@click.option("--keras", "include_keras", is_flag=True,
              help="Also time the folded Keras model (TensorFlow), as a reference point.")
@click.option("--profile", is_flag=True, help="Per-operator time, top --top-ops (ONNX Runtime's profiler).")
@click.option("--top-ops", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the random inputs.")
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
    from ..evaluation.latency import bench_build
    from ..options import BenchSettings

    check_output_file(csv_path, "--csv")
    emulated = device != "cpu"
    settings = BenchSettings(
        num_threads,
        warmup_runs if warmup_runs is not None else (1 if emulated else 5),
        num_runs if num_runs is not None else (10 if emulated else 50),
        min_secs if min_secs is not None else (0.0 if emulated else 1.0),
        max_secs, batch, profile, top_ops, seed,
    )
    with terminal.Progress(enabled=not as_json) as progress:
        report = bench_build(target, settings, data, include_keras, progress.update, device)
    if csv_path is not None:
        terminal.write_csv(report, csv_path)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    elif not (csv_path is not None and str(csv_path) == "-"):
        terminal.print_bench(report)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--alpha", default=1.0, show_default=True, type=Finite(min=0, min_open=True, max=64),
              help="What-if width multiplier, relative to this model: 0.5 halves every layer's channels "
                   "(cost falls about as alpha^2).")
@click.option("--rho", default=1.0, show_default=True, type=Finite(min=0, min_open=True, max=64),
              help="What-if resolution multiplier, relative to this model: 128/224 = 0.571 (cost falls as rho^2).")
@click.option("--resolution", type=click.IntRange(min=1, max=16384),
              help="What-if input size in pixels; sets --rho to RESOLUTION / the model's input height.")
@click.option("--input-size", "input_size", callback=parse_size, metavar="H[xW]",
              help="For a model saved without a fixed input size: the size to count it at (as quantize).")
@click.option("--trust-model-code", is_flag=True, help="Allow Lambda layers and custom objects (runs file code).")
@click.option("--json", "as_json", is_flag=True, help="Print the per-layer table as JSON on stdout.")
def inspect(model: Path, alpha: float, rho: float, resolution: int | None, input_size: tuple[int, int] | None,
            trust_model_code: bool, as_json: bool) -> None:
    """Per-layer params and multiply-adds of MODEL (a model file or a build folder).

    Uses the MobileNets paper's counts: a standard conv costs Dk·Dk·M·N·Df·Df, a depthwise
    Dk·Dk·M·Df·Df and a pointwise M·N·Df·Df, so a separable block costs 1/N + 1/Dk² of the
    standard conv it replaces. Params are counted as deployed (BatchNorm folded into biases).
    """
    from ..evaluation.costs import inspect_model

    if trust_model_code:
        click.echo("warning: --trust-model-code: code stored in the model file may run", err=True)
    if resolution is not None:
        base = inspect_model(model, trust_model_code=trust_model_code, input_size=input_size)
        rho = rho * resolution / base.input_shape[0]
    report = inspect_model(model, alpha, rho, trust_model_code, input_size)
    if as_json:
        from ..evaluation.costs import separable_blocks

        click.echo(json.dumps({**report.to_dict(), "separable_blocks": separable_blocks(report)}, indent=2))
    else:
        terminal.print_costs(report)


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
    model_int8.onnx (QDQ outputs, as ONNX Runtime's fused kernels compute them): the SQNR
    against the same tensor of the folded float model (of the equalized one when quantize
    equalized the channels, as --per-tensor does, or of the dithered one when it copied the
    first layer's channels), the SQNR lost at that layer, the share of int8 levels used, and
    the spread of the producing layer's per-channel weight ranges. Lists the layers that lose most first.
    """
    from .html import html_report, plot_png
    from ..evaluation.layers import analyze_build
    from ..staging import write_bytes_atomic, write_text_atomic

    check_output_file(html_path, "--html")
    check_output_file(png_path, "--png")
    with terminal.Progress(enabled=not as_json) as progress:
        report = analyze_build(build, data, max_images, progress=progress.update)
    png = plot_png(report) if (png_path or html_path) else b""
    if png_path:
        write_bytes_atomic(png_path, png)
    if html_path:
        write_text_atomic(html_path, html_report(report, png, top))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
        return
    terminal.print_analyze(report, top)
    for label, path in (("plot", png_path), ("report", html_path)):
        if path:
            click.echo(f"{label} written to {path}")


def _quiet_libraries() -> None:
    """TensorFlow, absl and tf2onnx log at INFO/WARNING by default; keep stderr for real problems."""
    for name in ("tensorflow", "absl", "tf2onnx", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.ERROR)


# commands with many options live beside this module
from .arm import arm  # noqa: E402
from .quantize import quantize  # noqa: E402

main.add_command(quantize)
main.add_command(arm)
