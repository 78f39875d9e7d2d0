"""A small worker process that loads one artifact and times it or runs inputs through it.

``python -m mobiledeploy.worker SPEC.json`` — started by this machine's Python (a clean process
per artifact for benchmarks) or by the emulated aarch64 Python under qemu. Inputs and outputs
travel as .npy files (plain arrays, never pickled objects); the result is a JSON file.
It imports only numpy and the one runtime it needs, so it also runs where TensorFlow does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MobiledeployError


@dataclass(frozen=True)
class Process:
    """How to start the worker: the interpreter command, its environment, the device label."""

    command: tuple[str, ...] = (sys.executable,)
    env: dict = field(default_factory=dict)  # empty: this process's environment
    device: str = "cpu"


def run_worker(spec: dict, workdir: Path, process: Process, label: str) -> dict:
    """Write ``spec``, run the worker, return its JSON result; user errors are re-raised."""
    spec = {**spec, "result": str(workdir / "result.json")}
    spec_file = workdir / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = process.env or {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([*process.command, "-m", "mobiledeploy.worker", str(spec_file)],
                          capture_output=True, text=True, env=env, check=False)
    result_file = Path(spec["result"])
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if "error" in result:
        raise MobiledeployError(result["error"])
    if done.returncode != 0 or not result:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise MobiledeployError(f"{label}: the {process.device} worker process failed (exit {done.returncode}): "
                                f"{tail}")
    return result


def outputs_of(path: Path, fmt: str, inputs: list[str], workdir: Path, process: Process) -> np.ndarray:
    """One artifact's outputs for the batches saved as .npy files, computed by a worker
    process (the emulated ARM one in practice), flattened to (N, features)."""
    # unique: a file compared with a build's own may share its name (model_int8.tflite)
    work = Path(tempfile.mkdtemp(prefix=f"{path.name}.{process.device.replace(':', '-')}.", dir=workdir))
    outputs = [str(work / f"out_{i:05d}.npy") for i in range(len(inputs))]
    spec = {"mode": "run", **artifact_spec(path, fmt), "inputs": inputs, "outputs": outputs}
    run_worker(spec, work, process, str(path))
    result = np.concatenate([np.load(o, allow_pickle=False) for o in outputs])
    return result.reshape(len(result), -1).astype(np.float32)


def artifact_spec(path: Path, fmt: str) -> dict:
    """The part of a worker's spec that names the artifact, decided on the host. For an ONNX file
    that includes the ONNX Runtime optimizers to turn off: deciding needs the onnx package to read
    the graph, which the numpy-only worker under ARM emulation does not have."""
    spec = {"path": str(Path(path).resolve()), "format": fmt}
    if fmt == "onnx":
        from .runners import disabled_optimizers

        spec["onnx_disabled"] = disabled_optimizers(path)
    return spec


def open_artifact(spec: dict, threads: int | None = None, profile_dir: str | None = None):
    """The runner for the artifact a spec names (``artifact_spec``); only the runtime it needs is
    imported."""
    from .runners import open_runner

    path, fmt = spec["path"], spec["format"]
    if Path(path).suffix.lower().lstrip(".") != fmt:
        raise MobiledeployError(f"{path}: the file name does not match its format '{fmt}'")
    return open_runner(path, threads, str(Path(profile_dir) / "ort_profile") if profile_dir else None,
                       spec.get("onnx_disabled"))


def run_outputs(spec: dict) -> dict:
    """Mode "run": each input .npy through the artifact, each output to its .npy."""
    runner = open_artifact(spec, spec.get("threads"))
    for source, target in zip(spec["inputs"], spec["outputs"]):
        np.save(target, runner.run(np.load(source, allow_pickle=False)), allow_pickle=False)
    return {"batches": len(spec["inputs"])}


def cpu_features() -> str:
    """The CPU as the runtimes see it: on aarch64 the HWCAP bits that pick kernel families."""
    import platform

    machine = platform.machine()
    if machine != "aarch64":
        return machine
    import ctypes

    hwcap = ctypes.CDLL(None).getauxval(16)  # AT_HWCAP
    names = {1: "asimd (NEON)", 20: "asimddp (sdot dot product)", 9: "asimdhp (fp16)"}
    return "aarch64: " + ", ".join(name for bit, name in names.items() if hwcap & (1 << bit))


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    try:
        if spec["mode"] == "bench":
            from .bench import measure_here

            result = measure_here(spec)
        else:
            result = run_outputs(spec)
        result["cpu"] = cpu_features()
    except MobiledeployError as exc:
        result = {"error": str(exc)}
    Path(spec["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
