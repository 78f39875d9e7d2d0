"""Where the .tflite/.onnx files run, by the ``--device`` string: this CPU (``cpu``), an emulated
ARM CPU (``arm[:CPU]``, ``arm.provisioning``) or a real board over SSH (``ssh://user@host[:port]``,
``board``). Every target has ``device`` (its label), ``kind`` ("emulated" or "board") and
``process()``, the launcher that runs the worker there."""

from __future__ import annotations

from typing import Callable

from ..errors import MobiledeployError
from . import cluster
from .arm import provisioning
from .arm.emulation import parse_device
from .board import open_board
from .ssh import parse_address

HELP = ("cpu: this machine. arm[:CPU]: the .tflite/.onnx files run under qemu ARM emulation (set up on first "
        "use). ssh://user@host[:port]: they run on a real board over SSH, with your ~/.ssh/config, agent and "
        "known_hosts (its Python and runtimes set up there on first use, or --remote-python).")


def kind(device: str) -> str:
    """"cpu", "emulated" or "board" (the device string is checked by ``check``)."""
    if device == "cpu":
        return "cpu"
    return "board" if device.startswith("ssh://") else "emulated"


def check(device: str) -> None:
    """Refuse a device string that names no device, in one line."""
    if device.startswith("ssh://"):
        parse_address(device)
    else:
        parse_device(device)


def open_target(device: str, remote_python: str | None = None,
                progress: Callable[[str, int, int], None] | None = None, ray: str | None = None):
    """The target for ``device`` (None for this CPU): ARM emulation set up on first use, or a
    board connected to and made ready; with ``ray``, that Ray cluster running ``device`` on its
    nodes. ``remote_python`` is the board's interpreter to use."""
    check(device)
    if remote_python is not None and kind(device) != "board":
        raise MobiledeployError("--remote-python names the Python on a board; use it with --device ssh://...")
    if ray is not None:
        return cluster.connect(ray, device)
    if kind(device) == "board":
        return open_board(device, remote_python, lambda step: progress(step, 0, 1) if progress else None)
    return provisioning.target_for(device, progress)
