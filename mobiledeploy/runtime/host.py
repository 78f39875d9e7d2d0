"""The host side of a worker process: write its spec, start it (this machine's Python or the
emulated ARM one), read its JSON result and its output arrays. ``worker`` is the child side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MobiledeployError
from .onnx_session import disabled_optimizers


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
    done = subprocess.run([*process.command, "-m", "mobiledeploy.runtime.worker", str(spec_file)],
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
        spec["onnx_disabled"] = disabled_optimizers(path)
    return spec
