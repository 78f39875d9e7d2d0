"""``mobiledeploy sweep``: models x quantize settings x devices x evaluation data, from one TOML
file, each cell cached by the content hash of its inputs."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import MobiledeployError
from ..staging import Terminated
from ..jsonout import dumps
from ..sweeps.plan import read_plan
from ..sweeps.run import run_sweep
from . import terminal
from .console import Progress
from .params import PATH, json_option, trust_option, workers_option


@click.command(epilog="More: docs/commands/sweep.md")
@click.argument("sweep_file", type=PATH, metavar="SWEEP.toml")
@click.option("-o", "--output-dir", default="sweep", show_default=True, type=PATH,
              help="The sweep's folder: its builds, cached results, results.csv, results.json and sweep.html. "
                   "Run again with the same folder to compute only what changed (or resume).")
@workers_option("Run N tasks (builds, evaluations, measurements) at once, each in a fresh local process. A build "
                "already uses every core; more workers pay for emulated devices, which use one core each.",
                "Run the tasks on a Ray cluster instead: auto, host:6379 or ray://host:10001. Every node needs "
                "mobiledeploy and must see the sweep's paths (a shared folder).")
@trust_option
@json_option("the results")
def sweep(sweep_file: Path, output_dir: Path, workers: int, ray: str | None, trust_model_code: bool,
          as_json: bool) -> None:
    """Quantize, evaluate and time every cell of SWEEP.toml.

    A cell is a model x a quantize setting x a device x an evaluation set. Each build,
    evaluation and measurement is cached under the hash of what it depends on (model bytes,
    images, settings, device, library versions): a rerun computes only what changed. --workers
    runs that many tasks at once in local processes; --ray runs them on a Ray cluster whose nodes
    see the same paths. A failed cell is reported in the table, the others still run; the exit
    code is then 1.
    """
    plan = read_plan(sweep_file)
    try:
        with Progress(enabled=not as_json) as progress:
            report = run_sweep(plan, output_dir, workers, ray, trust_model_code, progress.update)
    except (KeyboardInterrupt, Terminated) as stopped:
        stopped.kept = f"the finished tasks are kept in {output_dir}; run the same command again to resume"
        raise
    if as_json:
        click.echo(dumps(report.to_dict(), "sweep"))
    else:
        terminal.print_sweep(report)
    if report.failed:
        raise MobiledeployError(f"{report.tasks_failed} sweep task(s) failed; their rows say why (results in "
                                f"{report.output_dir})")
