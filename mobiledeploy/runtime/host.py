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
from typing import Callable

import numpy as np

from ..errors import MobiledeployError
from .onnx_session import disabled_optimizers


@dataclass(frozen=True)
class Process:
    """How to start the worker: the interpreter command, its environment, the device label."""

    command: tuple[str, ...] = (sys.executable,)
    env: dict = field(default_factory=dict)  # empty: this process's environment
    device: str = "cpu"


class WorkerDied(MobiledeployError):
    """The worker process ended without a result (killed, crashed, out of memory): not the input's fault."""


RETRIES = 1  # a shard whose worker died runs again this many times before the command fails


def run_worker(spec: dict, workdir: Path, process: Process, label: str) -> dict:
    """Write ``spec``, run the worker, return its JSON result; user errors are re-raised, a
    worker that ended without a result raises ``WorkerDied``."""
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
        raise WorkerDied(f"{label}: the {process.device} worker process failed (exit {done.returncode}): {tail}")
    return result


def outputs_of(path: Path, fmt: str, inputs: list[str], workdir: Path, process: Process, workers: int = 1,
               on_retry: Callable[[str], None] | None = None) -> np.ndarray:
    """One artifact's outputs for the batches saved as .npy files, computed by worker processes
    (the emulated ARM one, or this machine's Python), flattened to (N, features).

    ``workers`` processes run at once, each on a contiguous share of the batches (a shard); their
    outputs are joined in batch order, so the result is the one a single process gives, whatever
    the number of shards: every batch runs through the same kernels either way. A shard whose
    worker died runs again (``RETRIES`` times), and ``on_retry`` hears of it."""
    from concurrent.futures import ThreadPoolExecutor

    # unique: a file compared with a build's own may share its name (model_int8.tflite)
    work = Path(tempfile.mkdtemp(prefix=f"{path.name}.{process.device.replace(':', '-')}.", dir=workdir))
    outputs = [str(work / f"out_{i:05d}.npy") for i in range(len(inputs))]
    bounds = np.linspace(0, len(inputs), max(1, min(workers, len(inputs))) + 1).astype(int)
    shards = [(start, end) for start, end in zip(bounds, bounds[1:]) if end > start]  # none for no batches

    artifact = artifact_spec(path, fmt)

    def run_shard(index: int, start: int, end: int) -> None:
        spec = {"mode": "run", **artifact, "inputs": inputs[start:end], "outputs": outputs[start:end]}
        for attempt in range(RETRIES + 1):
            folder = work / f"shard_{index:03d}_{attempt}"
            folder.mkdir()
            try:
                run_worker(spec, folder, process, str(path))
                return
            except WorkerDied as died:
                if attempt == RETRIES:
                    raise
                if on_retry is not None:
                    on_retry(f"{path.name}: the worker running batches {start + 1}-{end} of {len(inputs)} died "
                             f"({died}); that shard ran again")

    # a thread per shard, each waiting on its process
    with ThreadPoolExecutor(max(len(shards), 1), thread_name_prefix="shard") as pool:
        for running in [pool.submit(run_shard, i, start, end) for i, (start, end) in enumerate(shards)]:
            running.result()
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
