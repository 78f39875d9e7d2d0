"""``mobiledeploy arm``: set up and inspect ARM emulation (see ``provisioning``)."""

from __future__ import annotations

from pathlib import Path

import click

from ..runtime.arm.provisioning import setup as provision
from ..runtime.arm.provisioning import status as installed
from ..jsonout import dumps
from . import terminal


@click.group()
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
    state = provision(sysroot, lambda step: click.echo(f"- {step}", err=True), force)
    terminal.print_arm_status(state)


@arm.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON on stdout.")
def status(as_json: bool) -> None:
    """Say what is installed for ARM emulation, where, and how much disk it uses."""
    state = installed()
    if as_json:
        click.echo(dumps(state, "arm-status"))
    else:
        terminal.print_arm_status(state)
