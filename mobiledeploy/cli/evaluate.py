"""``mobiledeploy eval`` and ``mobiledeploy check``: a build's files run on labelled images, scored
against its float model; check applies the CI gate's rules."""

from __future__ import annotations

from pathlib import Path

import click

from ..evaluation import gate
from ..evaluation.builds import check_build, evaluate_build
from ..jsonout import dumps
from ..options import GateRules
from ..staging import check_output_file, write_text_atomic
from . import terminal
from .console import Progress
from .params import (PATH, Finite, batch_size_option, compare_option, data_options, device_option,
                     json_option, renamed, workers_option)

BATCH_HELP = "Images per runtime call; larger is faster, smaller uses less memory."


@click.command(name="eval", epilog="More: docs/commands/eval.md")
@click.argument("build", type=PATH)
@data_options
@batch_size_option(64, BATCH_HELP)
@device_option(" Accuracy then comes from that device's outputs; each row says how many matched this CPU's bit "
               "for bit.")
@workers_option()
@compare_option()
@json_option("the report")
@click.pass_context
def eval_command(ctx: click.Context, build: Path, data: Path, labels: Path | None, batch_size: int, device: str,
                 remote_python: str | None, workers: int, ray: str | None, compare: tuple[Path, ...],
                 as_json: bool) -> None:
    """Accuracy and drift of every file in BUILD against its float model.

    The file list and the preprocessing come from BUILD/manifest.json; a file whose sha256 no
    longer matches is refused. Each top-1 change comes with the half-width of its 95% interval on
    these images: a change inside it is not resolved by the data.
    """
    with Progress(enabled=not as_json) as progress:
        report = evaluate_build(build, data, labels, renamed(ctx, "batch_size", batch_size), progress.update,
                                device, compare, workers, remote_python, ray)
    if as_json:
        click.echo(dumps(report.to_dict(), "eval"))
    else:
        terminal.print_eval(report)


@click.command(epilog="More: docs/commands/check.md")
@click.argument("build", type=PATH)
@data_options
@click.option("--max-drop", default=GateRules.max_drop, show_default=True, type=Finite(min=0, max=100),
              metavar="POINTS", help="Fail when int8 top-1 is more than this many points below float.")
@click.option("--min-agreement", default=100 * GateRules.min_agreement, show_default=True, type=Finite(0, 100),
              metavar="PERCENT", help="Fail when int8 and float agree on the class of fewer than PERCENT of the images.")
@click.option("--baseline", type=PATH, help="A baseline from --update-baseline: fail when a metric regresses.")
@click.option("--tolerance", default=GateRules.tolerance, show_default=True, type=Finite(min=0, max=100),
              metavar="POINTS", help="Points top-1/top-5/agreement may trail the baseline or a --compare file.")
@click.option("--sqnr-tolerance", default=GateRules.sqnr_tolerance, show_default=True, type=Finite(min=0),
              metavar="DB", help="dB the output SQNR may trail the baseline.")
@compare_option(" Fail when an int8 file of the build scores lower (beyond --tolerance).")
@click.option("--update-baseline", is_flag=True, help="Write the metrics to --baseline instead of comparing.")
@click.option("--report", "report_path", type=PATH, help="Also write the rule results as JSON to this file.")
@click.option("--junit-xml", type=PATH, help="Write a JUnit test case per rule and file, for CI test reports.")
@batch_size_option(64, BATCH_HELP)
@device_option(" The rules then apply to that device's results.")
@workers_option()
@click.option("--json", "as_json", is_flag=False, flag_value="-", default=None, metavar="",
              help="Print the rule results as JSON on stdout (for machines).")
@click.pass_context
def check(ctx: click.Context, build: Path, data: Path, labels: Path | None, max_drop: float, min_agreement: float,
          baseline: Path | None, tolerance: float, sqnr_tolerance: float, compare: tuple[Path, ...],
          update_baseline: bool, report_path: Path | None, junit_xml: Path | None, batch_size: int, device: str,
          remote_python: str | None, workers: int, ray: str | None, as_json: str | None) -> None:
    """CI gate: exit 3 when quantized accuracy regresses.

    Rules, per int8 file: top-1 at most --max-drop points below float; agreement with float at
    least --min-agreement; with --baseline, no metric worse than the baseline beyond the tolerances;
    with --compare, top-1 and agreement no lower than the compared file's. Rules whose threshold
    lies inside the 95% interval of the value say so: more images would settle them.
    """
    if as_json not in (None, "-"):  # the old spelling: --json FILE
        click.echo("warning: check --json FILE is now --report FILE (--json alone prints to stdout); the old "
                   "spelling will be removed in the next release", err=True)
        report_path, as_json = Path(as_json), None
    if update_baseline and baseline is None:
        raise click.UsageError("--update-baseline needs --baseline FILE")
    for path, option in ((report_path, "--report"), (junit_xml, "--junit-xml"),
                         (baseline if update_baseline else None, "--baseline")):
        check_output_file(path, option)  # before the evaluation, not after it
    if 0 < min_agreement <= 1:  # the old unit: a share
        click.echo(f"warning: --min-agreement {min_agreement:g} is read as a share ({min_agreement:.0%}); it takes "
                   f"a percent now (--min-agreement {100 * min_agreement:g}); shares will not be read from the next "
                   "release", err=True)
        min_agreement *= 100
    rules = GateRules(max_drop, min_agreement / 100, tolerance, sqnr_tolerance)
    with Progress(enabled=as_json is None) as progress:
        result = check_build(build, data, rules, labels, baseline, update_baseline, renamed(ctx, "batch_size", batch_size),
                             progress.update, device, compare, workers, remote_python, ray)
    text = dumps({**gate.results_json(result), "report": result.report.to_dict()}, "check")
    if report_path is not None:
        write_text_atomic(report_path, text + "\n")
    if junit_xml is not None:
        write_text_atomic(junit_xml, gate.junit_xml(result.rules, result.report.seconds))
    if as_json is not None:
        click.echo(text)
    else:
        terminal.print_eval(result.report)
        for r in result.rules:
            click.echo(f"{'PASS' if r.passed else 'FAIL'}  {r.rule:<20} {r.artifact:<20} {r.message}")
        if update_baseline:
            click.echo(f"baseline written to {baseline}")
    if result.failed:
        raise gate.GateFailed(f"gate failed: {len(result.failed)} of {len(result.rules)} rules "
                              f"({', '.join(sorted({r.rule for r in result.failed}))})")
