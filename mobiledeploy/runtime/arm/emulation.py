"""Run artifacts on an emulated aarch64 CPU: qemu-user + an aarch64 CPython sysroot + ARM wheels.

``provisioning`` installs them (``mobiledeploy arm setup``, or automatically on first use)
under the user cache dir, keyed by a recipe version and the wheel versions (the host's, so
ARM and x86 results compare like with like). This module picks the CPU and starts the
emulated interpreter.

qemu serves absolute paths from ``QEMU_LD_PREFIX`` first, so each emulated CPU gets a small
prefix of its own: symlinks to the shared sysroot plus a ``/proc/cpuinfo`` describing that CPU
(``import onnxruntime`` crashes under qemu 7.2 without an ARM cpuinfo).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

from ...errors import MobiledeployError
from ...inputs import parse_json
from ..host import Process

RECIPE = 1
DEFAULT_CPU = "cortex-a76"
# name -> (what it stands for, CPU part number, has the dot-product extension)
CPUS = {
    "cortex-a53": ("plain NEON: low-end phones, Raspberry Pi 3", "0xd03", False),
    "cortex-a72": ("plain NEON: Raspberry Pi 4", "0xd08", False),
    "cortex-a76": ("NEON + dot product (sdot): modern phones", "0xd0b", True),
    "neoverse-n1": ("NEON + dot product (sdot): ARM servers, Graviton 2", "0xd0c", True),
}
WHEELS = ("numpy", "onnxruntime", "ai-edge-litert")
PYTHON = "usr/bin/python3.11"

Progress = Callable[[str], None]


class EmulationError(MobiledeployError):
    """A provisioning step failed; the message names the step and the fix."""


@dataclass(frozen=True)
class ArmTarget:
    """Everything needed to start the emulated interpreter on one CPU model."""

    qemu: Path
    prefix: Path  # QEMU_LD_PREFIX: the sysroot as seen by this CPU (own /proc/cpuinfo)
    site: Path  # aarch64 wheels
    code: Path  # a folder holding only the mobiledeploy package
    cpu: str

    kind = "emulated"

    @property
    def device(self) -> str:
        return f"arm:{self.cpu}"

    @property
    def dot_product(self) -> bool:
        return CPUS[self.cpu][2]

    def process(self) -> Process:
        """How the worker is started on this emulated CPU."""
        return Process(tuple(self.command()), self.env(), self.device, self.kind)

    def command(self) -> list[str]:
        return [str(self.qemu), str(self.prefix / PYTHON)]

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in {"HOME", "LANG", "TMPDIR", "PATH"}}
        return {
            **keep,
            "QEMU_LD_PREFIX": str(self.prefix),
            "QEMU_CPU": self.cpu,
            "PYTHONPATH": f"{self.site}:{self.code}",
            "PYTHONNOUSERSITE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }


def parse_device(device: str) -> str | None:
    """None for the host CPU; the emulated CPU name for 'arm' / 'arm:<cpu>'."""
    if device == "cpu":
        return None
    kind, _, cpu = device.partition(":")
    if kind != "arm":
        raise MobiledeployError(f"unknown device '{device}'; expected cpu, arm, arm:<cpu> or ssh://user@host[:port]")
    cpu = cpu or DEFAULT_CPU
    if cpu == "max":
        raise MobiledeployError(
            "arm:max is refused: qemu's 'max' CPU makes LiteRT pick SME kernels that qemu 7.2 emulates "
            f"wrongly (int8 outputs off by up to 209 LSB); pick one of {', '.join(CPUS)}"
        )
    if cpu not in CPUS:
        raise MobiledeployError(f"unknown ARM CPU '{cpu}'; expected one of {', '.join(CPUS)}")
    return cpu


def cache_root() -> Path:
    """$MOBILEDEPLOY_CACHE, else $XDG_CACHE_HOME/mobiledeploy, else ~/.cache/mobiledeploy."""
    if os.environ.get("MOBILEDEPLOY_CACHE"):
        return Path(os.environ["MOBILEDEPLOY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mobiledeploy"


def wheel_versions() -> dict[str, str]:
    """The host's versions of the runtimes: the emulated side installs the same ones."""
    versions = {}
    for name in WHEELS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise EmulationError(f"{name} is not installed on this machine; install mobiledeploy's "
                                 "dependencies first (pip install -e .)") from None
    return versions


def arm_dir() -> Path:
    key = "-".join(f"{n}{v}" for n, v in wheel_versions().items())
    return cache_root() / "arm" / f"recipe{RECIPE}-{key}"


def target(cpu: str = DEFAULT_CPU) -> ArmTarget:
    """The emulated interpreter for ``cpu``; ``provisioning.target_for`` sets it up on first use."""
    root = arm_dir()
    state = read_state(root)
    if not state.get("complete"):
        raise EmulationError("ARM emulation is not set up; run: mobiledeploy arm setup")
    qemu = Path(str(state.get("qemu")))
    if not qemu.is_file():
        raise EmulationError(f"{qemu}: qemu-aarch64-static is gone; run: mobiledeploy arm setup --force")
    prefix = root / "cpu" / cpu
    if not (prefix / PYTHON).exists():
        raise EmulationError(f"{prefix}: the aarch64 sysroot is incomplete (no {PYTHON}); "
                             "run: mobiledeploy arm setup --force")
    return ArmTarget(qemu, prefix, root / "site", _code_dir(root), cpu)


def _code_dir(root: Path) -> Path:
    """A folder holding only this checkout's mobiledeploy package (a symlink), for the emulated
    PYTHONPATH. One per package location, so checkouts sharing the cache never run each
    other's code, and x86 packages beside an installed mobiledeploy stay invisible."""
    import hashlib

    package = Path(__file__).resolve().parents[2]  # runtime/arm/ -> the mobiledeploy package
    code = root / "code" / hashlib.sha256(str(package).encode()).hexdigest()[:16]
    link = code / "mobiledeploy"
    if not link.is_symlink() or link.resolve() != package:
        code.mkdir(parents=True, exist_ok=True)
        temporary = code / f".link-{os.getpid()}"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(package)
        temporary.replace(link)
    return code


def read_state(root: Path) -> dict:
    """The provisioning state of a cache folder ({} when there is none, or it is unreadable)."""
    path = root / "state.json"
    try:
        state = parse_json(path.read_bytes(), str(path), EmulationError, "run: mobiledeploy arm setup --force")
    except (OSError, EmulationError):
        return {}
    return state if isinstance(state, dict) else {}
