"""Provisioning for ARM emulation (``mobiledeploy arm setup`` / ``status``), without root.

1. qemu-aarch64-static: from PATH, else the distribution's qemu-user-static .deb unpacked into
   the cache (only the aarch64 emulator is kept);
2. an aarch64 root filesystem with CPython 3.11: Debian arm64 packages fetched by apt with a
   private state directory and the architecture overridden (the machine's own apt sources,
   never a hard-coded mirror), unpacked with ``dpkg -x``; or ``--sysroot`` for an existing one;
3. aarch64 wheels of numpy, onnxruntime and ai-edge-litert at the host's versions, via
   ``pip install --platform ... --target``;
4. per CPU, a prefix of symlinks into the sysroot plus that CPU's ``/proc/cpuinfo``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from ...errors import MobiledeployError
from ...inputs import read_json_file
from .emulation import (CPUS, DEFAULT_CPU, PYTHON, ArmTarget, EmulationError, Progress, arm_dir, parse_device,
                        read_state, target, wheel_versions)


SYSROOT_PACKAGES = (
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libgcc-s1",
    "libstdc++6", "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5", "libcrypt1",
    "libuuid1", "libsqlite3-0", "libncursesw6", "libtinfo6", "libreadline8", "libtirpc3", "libnsl2",
    "libdb5.3", "media-types",
)


def status() -> dict:
    """What is installed, where, and how big (``mobiledeploy arm status``)."""
    root = arm_dir()
    state = read_state(root)
    sysroot = Path(state.get("sysroot") or root / "sysroot")
    return {
        "cache": str(root),
        "ready": bool(state.get("complete")),
        "qemu": state.get("qemu") or _qemu_on_path(),
        "qemu_version": state.get("qemu_version"),
        "sysroot": str(sysroot),
        "sysroot_python": (sysroot / PYTHON).is_file(),
        "wheels": state.get("wheels", {}),
        "cpus": {name: info[0] for name, info in CPUS.items()},
        "disk_mb": round(_disk_use(root) / 2**20, 1) if root.exists() else 0.0,
        "setup_seconds": state.get("seconds"),
    }


def target_for(device: str, progress: Callable[[str, int, int], None] | None = None) -> ArmTarget | None:
    """The emulated ARM CPU for ``device``, or None for this machine's CPU."""
    cpu = parse_device(device)
    if cpu is None:
        return None
    if progress:
        progress("set up ARM emulation", 0, 1)
    if not read_state(arm_dir()).get("complete"):
        setup()
    return target(cpu)


def setup(sysroot: Path | None = None, progress: Progress | None = None, force: bool = False) -> dict:
    """Provision qemu, the sysroot and the wheels (idempotent). Returns ``status()``."""
    say = progress or (lambda message: None)
    root = arm_dir()
    state = read_state(root)
    if state.get("complete") and not force and (sysroot is None or str(sysroot) == state.get("sysroot")):
        return status()
    if sysroot is not None:  # check the user's input before any download
        _check_sysroot(Path(sysroot), "--sysroot")
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    say("qemu-aarch64-static")
    qemu = _provision_qemu(root)
    version = _qemu_version(qemu)
    if sysroot is not None:
        sysroot_path = Path(sysroot).resolve()
    else:
        say("aarch64 sysroot (Debian arm64 packages)")
        sysroot_path = _provision_sysroot(root)
    say("aarch64 wheels (numpy, onnxruntime, ai-edge-litert)")
    wheels = _provision_wheels(root)
    for cpu in CPUS:
        _make_prefix(root / "cpu" / cpu, sysroot_path, cpu)
    _write_state(root, {"complete": True, "qemu": str(qemu), "qemu_version": version,
                        "sysroot": str(sysroot_path), "wheels": wheels,
                        "seconds": round(time.perf_counter() - started, 1)})
    say("check: import numpy, onnxruntime, ai_edge_litert under emulation")
    _smoke_test(target(DEFAULT_CPU))
    return status()


def _provision_qemu(root: Path) -> Path:
    found = _qemu_on_path()
    if found:
        return Path(found)
    unpacked = root / "qemu"
    binary = unpacked / "usr" / "bin" / "qemu-aarch64-static"
    if binary.is_file():
        return binary
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise EmulationError("qemu-aarch64-static is not on PATH and apt-get/dpkg are not available to fetch it; "
                             "install qemu-user-static or put qemu-aarch64-static on PATH")
    arch = _run(["dpkg", "--print-architecture"], "find the host architecture (dpkg)").strip()
    debs = _apt_download(root / "apt" / arch, arch, ["qemu-user-static"], "download qemu-user-static")
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        _unpack(debs, Path(scratch), "unpack qemu-user-static")
        found = Path(scratch) / "usr" / "bin" / binary.name
        if not found.is_file():
            raise EmulationError(f"qemu-user-static did not contain {binary.name}; install it: apt-get install "
                                 "qemu-user-static")
        binary.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(found, binary)  # only the aarch64 emulator; the package holds ~30 others
    shutil.rmtree(root / "apt" / arch, ignore_errors=True)
    return binary


def _provision_sysroot(root: Path) -> Path:
    sysroot = root / "sysroot"
    if (sysroot / PYTHON).is_file():
        return sysroot
    debs = _apt_download(root / "apt" / "arm64", "arm64", list(SYSROOT_PACKAGES), "download arm64 packages")
    partial = root / "sysroot.partial"
    shutil.rmtree(partial, ignore_errors=True)
    _unpack(debs, partial, "unpack arm64 packages")
    shutil.rmtree(sysroot, ignore_errors=True)
    partial.rename(sysroot)
    shutil.rmtree(root / "apt" / "arm64", ignore_errors=True)  # lists and .debs: unpacked now
    return sysroot


def _recorded(marker: Path):
    """The versions a finished install recorded in ``marker``; None when there is none, or it is
    damaged (not a regular file, or any JSON problem: the install runs again and writes it anew)."""
    try:
        return read_json_file(marker)
    except MobiledeployError:
        return None


def _provision_wheels(root: Path) -> dict[str, str]:
    site = root / "site"
    versions = wheel_versions()
    marker = site / ".mobiledeploy-wheels.json"
    if _recorded(marker) == versions:
        return versions
    partial = root / "site.partial"
    shutil.rmtree(partial, ignore_errors=True)
    # Without the manylinux_2_27 tag pip silently picks the old ai-edge-litert 1.4.
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          "--target", str(partial), "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
          "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_27_aarch64",
          "--platform", "manylinux_2_28_aarch64",
          *(f"{name}=={version}" for name, version in versions.items())],
         "download aarch64 wheels with pip (needs access to the package index)")
    (partial / ".mobiledeploy-wheels.json").write_text(json.dumps(versions))
    shutil.rmtree(site, ignore_errors=True)
    partial.rename(site)
    return versions


def _apt_download(state: Path, arch: str, packages: list[str], step: str) -> list[Path]:
    """Fetch .debs for ``arch`` with apt, reusing this machine's sources but a private state."""
    if shutil.which("apt-get") is None:
        raise EmulationError(f"{step}: apt-get is not available; use --sysroot with an existing aarch64 root "
                             "filesystem (and put qemu-aarch64-static on PATH)")
    for sub in ("lists/partial", "cache/archives/partial", "debs"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    options = ["-q", "-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures={arch}",
               "-o", f"Dir::State::Lists={state / 'lists'}", "-o", f"Dir::Cache={state / 'cache'}",
               "-o", "Dir::State::status=/dev/null", "-o", "Debug::NoLocking=1"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options += ["-o", "APT::Sandbox::User=root"]
    _run(["apt-get", *options, "update"], f"{step}: apt-get update ({arch} package lists)")
    _run(["apt-get", *options, "download", *packages], f"{step}: apt-get download", cwd=state / "debs")
    debs = sorted((state / "debs").glob("*.deb"))
    if not debs:
        raise EmulationError(f"{step}: apt downloaded nothing; check /etc/apt/sources.list(.d)")
    return debs


def _unpack(debs: list[Path], destination: Path, step: str) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        _run(["dpkg", "-x", str(deb), str(destination)], f"{step}: dpkg -x {deb.name}")


def _make_prefix(prefix: Path, sysroot: Path, cpu: str) -> None:
    """Symlinks to the sysroot's top-level folders plus this CPU's /proc/cpuinfo."""
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    for entry in sysroot.iterdir():
        if entry.name != "proc":
            (prefix / entry.name).symlink_to(entry)
    (prefix / "proc").mkdir()
    (prefix / "proc" / "cpuinfo").write_text(cpuinfo(cpu))


def cpuinfo(cpu: str, count: int | None = None) -> str:
    """An ARM /proc/cpuinfo for ``cpu``: the features its emulated HWCAP also reports."""
    _, part, dot = CPUS[cpu]
    features = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
    if dot:
        features += " atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp"
    blocks = []
    for n in range(count or os.cpu_count() or 1):
        blocks.append(f"processor\t: {n}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
                      f"CPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: {part}\nCPU revision\t: 0\n")
    return "\n".join(blocks) + "\n"


def _check_sysroot(sysroot: Path, source: str) -> None:
    if not sysroot.is_dir():
        raise EmulationError(f"{source} {sysroot}: no such folder; expected an aarch64 root filesystem")
    if not (sysroot / PYTHON).exists():
        raise EmulationError(f"{source} {sysroot}: no {PYTHON} in it; expected an aarch64 root filesystem "
                             "with Python 3.11 (e.g. Debian bookworm or Raspberry Pi OS)")


def _smoke_test(arm: ArmTarget) -> None:
    code = "import numpy, onnxruntime, ai_edge_litert.interpreter; print(numpy.__version__)"
    done = subprocess.run([*arm.command(), "-c", code], env=arm.env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:200]
        raise EmulationError(f"the emulated Python cannot import the runtimes ({tail}); "
                             "run: mobiledeploy arm setup --force")


def _qemu_on_path() -> str | None:
    return shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")


def _qemu_version(qemu: Path) -> str:
    text = _run([str(qemu), "--version"], f"run {qemu} --version")
    found = re.search(r"version (\d+\.\d+(?:\.\d+)?)", text)
    return found.group(1) if found else "unknown"


def _run(argv: list[str], step: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, check=False)
    except FileNotFoundError:
        raise EmulationError(f"{step}: {argv[0]} not found") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        raise EmulationError(f"{step} failed: {(lines or ['no output'])[-1][:200]}")
    return done.stdout


def _write_state(root: Path, state: dict) -> None:
    with tempfile.NamedTemporaryFile("w", dir=root, delete=False, suffix=".tmp") as handle:
        json.dump(state, handle, indent=2)
    Path(handle.name).replace(root / "state.json")


def _disk_use(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total
