"""``mobiledeploy bench``, ``inspect`` and ``analyze``: latency, costs and per-layer drift of a build."""

from __future__ import annotations

from pathlib import Path

import click

from ..evaluation.costs import inspect_model, separable_blocks
from ..evaluation.latency import bench_build
from ..inputs import read_json_file
from ..jsonout import dumps
from ..manifest import open_build
from ..evaluation.layers import analyze_build
from ..options import BenchSettings
from ..staging import check_output_file, write_bytes_atomic, write_text_atomic
from . import terminal
from .console import Progress
from .html import plot_png
from .report_page import build_summary, html_report
from .params import PATH, SEED, Finite, batch_size_option, device_option, input_size_option, json_option, renamed, \
    trust_option


@click.command(epilog="More: docs/commands/bench.md")
@click.argument("target", type=PATH)
@device_option(" Emulated time is 100-500x slower than hardware and is labelled as such; a board's is device "
               "latency.")
@click.option("--num-threads", default=1, show_default=True, type=click.IntRange(min=1, max=256),
              help="Threads per runtime; 1 matches a phone app's inference thread and is the steadiest.")
@click.option("--warmup-runs", type=click.IntRange(min=0, max=10000), help="Untimed runs first [default: 5; 1 on arm].")
@click.option("--num-runs", type=click.IntRange(min=1, max=100000), help="Timed runs, at least [default: 50; 10 on arm].")
@click.option("--min-secs", type=Finite(min=0, max=3600), help="... and for at least this long [default: 1; 0 on arm].")
@click.option("--max-secs", default=BenchSettings.max_secs, show_default=True, type=Finite(min=0.001, max=86400),
              help="Stop timing a file after this long, whatever --num-runs says.")
@batch_size_option(BenchSettings.batch_size, "Images per inference: 1 is the latency a user feels, more shows throughput.")
@click.option("--data", type=PATH, help="Time real images from this folder instead of random inputs (a build only).")
@click.option("--keras", "include_keras", is_flag=True, help="Also time the folded Keras model (TensorFlow).")
@click.option("--profile", is_flag=True, help="Per-operator time, the top --top-ops, and for a build's ONNX "
              "files each layer's time (ONNX Runtime's profiler).")
@click.option("--top-ops", default=BenchSettings.top_ops, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=BenchSettings.seed, show_default=True, type=SEED, help="Seed of the random inputs.")
@json_option("the report")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path, allow_dash=True),
              help="Write one CSV row per file to this file ('-' for stdout).")
@click.pass_context
def bench(ctx: click.Context, target: Path, device: str, remote_python: str | None, num_threads: int,
          warmup_runs: int | None, num_runs: int | None, min_secs: float | None, max_secs: float, batch_size: int,
          data: Path | None, include_keras: bool, profile: bool, top_ops: int, seed: int, as_json: bool,
          csv_path: Path | None) -> None:
    """Latency, memory and size of every file in TARGET (a build folder or one file).

    Each file runs in a process of its own, so one runtime's threads and memory do not skew the
    next. Compare ratios measured in one run: absolute times drift on shared machines.
    """
    check_output_file(csv_path, "--csv")
    settings = BenchSettings.for_device(device, warmup_runs, num_runs, min_secs, num_threads=num_threads,
                                        max_secs=max_secs, batch_size=renamed(ctx, "batch_size", batch_size),
                                        profile=profile, top_ops=top_ops, seed=seed)
    with Progress(enabled=not as_json) as progress:
        report = bench_build(target, settings, data, include_keras, progress.update, device, remote_python)
    if csv_path is not None:
        terminal.write_csv(report, csv_path)
    if as_json:
        click.echo(dumps(report.to_dict(), "bench"))
    elif not (csv_path is not None and str(csv_path) == "-"):
        terminal.print_bench(report)


@click.command(epilog="More: docs/commands/inspect.md")
@click.argument("model", type=PATH)
@click.option("--alpha", default=1.0, show_default=True, type=Finite(min=0, min_open=True, max=64),
              help="What-if width multiplier, relative to this model: 0.5 halves the channels (cost ~ alpha^2).")
@click.option("--rho", default=1.0, show_default=True, type=Finite(min=0, min_open=True, max=64),
              help="What-if resolution multiplier, relative to this model: 128/224 = 0.571 (cost ~ rho^2).")
@click.option("--resolution", type=click.IntRange(min=1, max=16384),
              help="What-if input size in pixels; sets --rho to RESOLUTION / the model's input height.")
@input_size_option("For a model saved without a fixed input size: the size to count it at.")
@trust_option
@json_option("the per-layer table")
def inspect(model: Path, alpha: float, rho: float, resolution: int | None, input_size: tuple[int, int] | None,
            trust_model_code: bool, as_json: bool) -> None:
    """Per-layer params and multiply-adds of MODEL (a model file or a build folder).

    The MobileNets paper's counts: a standard conv costs Dk·Dk·M·N·Df·Df, a depthwise Dk·Dk·M·Df·Df
    and a pointwise M·N·Df·Df, so a separable block costs 1/N + 1/Dk² of the standard conv it
    replaces. Params are counted as deployed (BatchNorm folded into biases).
    """
    if trust_model_code:
        click.echo("warning: --trust-model-code: code stored in the model file may run", err=True)
    if resolution is not None:
        base = inspect_model(model, trust_model_code=trust_model_code, input_size=input_size)
        rho = rho * resolution / base.input_shape[0]
    report = inspect_model(model, alpha, rho, trust_model_code, input_size)
    if as_json:
        click.echo(dumps({**report.to_dict(), "separable_blocks": separable_blocks(report)}, "inspect"))
    else:
        terminal.print_costs(report)


@click.command(epilog="More: docs/commands/analyze.md")
@click.argument("build", type=PATH)
@click.option("--data", required=True, type=PATH,
              help="Images to measure on (a folder, searched recursively, or an .npz); labels are not needed.")
@click.option("--max-images", default=200, show_default=True, type=click.IntRange(min=1),
              help="Use at most this many images; per-layer SQNR settles after a few dozen.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1), help="Worst layers to list.")
@click.option("--html", "html_path", type=PATH, help="Write a self-contained HTML report to this file.")
@click.option("--png", "png_path", type=PATH, help="Write the plot of SQNR by layer to this PNG file.")
@click.option("--bench", "bench_path", type=PATH,
              help="A `bench BUILD --json` report of this build: the HTML summary shows each file's latency.")
@json_option("every layer's numbers")
def analyze(build: Path, data: Path, max_images: int, top: int, html_path: Path | None, png_path: Path | None,
            bench_path: Path | None, as_json: bool) -> None:
    """Which layer hurts: per-layer drift of each int8 file against the float model.

    For every activation tensor of the int8 TFLite and ONNX files: the SQNR against the same tensor
    of the float model they were made from, the SQNR lost at that layer, the share of int8 levels
    used, and the spread of the producing layer's per-channel weight ranges; worst layers first.
    """
    check_output_file(html_path, "--html")
    check_output_file(png_path, "--png")
    bench = read_json_file(bench_path, f"--bench {bench_path}", fix="give the output of `mobiledeploy bench BUILD "
                           "--json`") if bench_path is not None else None
    with Progress(enabled=not as_json) as progress:
        report = analyze_build(build, data, max_images, progress=progress.update)
    if png_path:
        write_bytes_atomic(png_path, plot_png(report))
    if html_path:
        summary = build_summary(open_build(build).manifest, bench if isinstance(bench, dict) else None)
        write_text_atomic(html_path, html_report(report, summary, top))
    if as_json:
        click.echo(dumps(report.to_dict(), "analyze", default=str))
        return
    terminal.print_analyze(report, top)
    for label, path in (("plot", png_path), ("report", html_path)):
        if path:
            click.echo(f"{label} written to {path}")
