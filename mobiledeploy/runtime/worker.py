"""The child side of a worker process: load one artifact, then time it or run inputs through it.

``python -m mobiledeploy.runtime.worker SPEC.json`` — started by ``host`` with this machine's
Python (a clean process per artifact for benchmarks) or with the emulated aarch64 Python under
qemu. Inputs and outputs travel as .npy files (plain arrays, never pickled objects); the result
is a JSON file. It imports only numpy and the one runtime it needs, so it also runs where
TensorFlow does not.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from ..errors import MobiledeployError
from ..manifest import sha256
from .runners import open_artifact
from .timing import measure_here


def run_outputs(spec: dict) -> dict:
    """Mode "run": each input .npy through the artifact, each output to its .npy."""
    runner = open_artifact(spec, spec.get("threads"))
    for source, target in zip(spec["inputs"], spec["outputs"]):
        np.save(target, runner.run(np.load(source, allow_pickle=False)), allow_pickle=False)
    return {"batches": len(spec["inputs"])}


# x86-64 flags in /proc/cpuinfo that select the runtimes' int8 kernels (VNNI: one-instruction
# int8 dot products; without it ONNX Runtime's default int8 kernels can saturate)
X86_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
                "amx_int8": "AMX-INT8"}
ARM_FEATURES = {1: "asimd (NEON)", 20: "asimddp (sdot dot product)", 9: "asimdhp (fp16)"}  # AT_HWCAP bits
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse V1", "0xd41": "Cortex-A78",
             "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd49": "Neoverse N2",
             "0xd4f": "Neoverse V2"}  # Arm's part numbers (implementer 0x41), as /proc/cpuinfo gives them


def cpu_features() -> str:
    """The CPU as the runtimes see it: its model and the instruction-set features that pick the
    int8 kernel families (x86-64: AVX2, AVX-512, VNNI; aarch64: NEON, dot product, fp16)."""
    import platform

    machine = platform.machine()
    fields = _cpuinfo()
    if machine == "aarch64":
        import ctypes

        hwcap = ctypes.CDLL(None).getauxval(16)  # AT_HWCAP
        features = [name for bit, name in ARM_FEATURES.items() if hwcap & (1 << bit)]
    else:
        flags = set(fields.get("flags", "").split())
        features = [name for flag, name in X86_FEATURES.items() if flag in flags]
    part = fields.get("CPU part", "")
    model = fields.get("model name") or ARM_PARTS.get(part, f"Arm part {part}" if part else "")
    return f"{model + ', ' if model else ''}{machine}: {', '.join(features) or 'no int8 dot-product features'}"


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip() and fields:
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def board_info() -> dict:
    """What bears on this machine's latency, where readable: cores, the frequency governor, the
    hottest thermal zone (a board that throttles runs slower), and the runtimes' versions."""
    from importlib import metadata

    info: dict = {"cores": os.cpu_count()}
    try:
        info["governor"] = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        pass
    temperatures = []
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*/temp")):
        try:
            temperatures.append(int(zone.read_text().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    if temperatures:
        info["temperature_c"] = max(temperatures)
    for name in ("numpy", "onnxruntime", "ai-edge-litert"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return info


class CopyDamaged(MobiledeployError):
    """The artifact here is not the one the host sent (a board's kept copy changed)."""


def check_sha256(spec: dict) -> None:
    """The artifact is the one the host sent: its sha256 as the spec gives it (copies to a board)."""
    if "sha256" not in spec:
        return
    digest = sha256(spec["path"])
    if digest != spec["sha256"]:
        raise CopyDamaged(f"{Path(spec['path']).name}: the copy here has sha256 {digest[:12]}..., "
                          f"not the host's {spec['sha256'][:12]}...")


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    try:
        check_sha256(spec)
        if spec["mode"] == "bench":
            result = measure_here(spec)
        else:
            result = run_outputs(spec)
        result["cpu"] = cpu_features()
        result["board"] = board_info()
    except MobiledeployError as exc:
        result = {"error": str(exc), **({"damaged": True} if isinstance(exc, CopyDamaged) else {})}
    Path(spec["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
