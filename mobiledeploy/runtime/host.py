"""The host side of a worker process: write its spec, start it (this machine's Python or the
emulated ARM one; ``board`` starts it on a board over SSH), read its JSON result and its output
arrays. ``worker`` is the child side."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from ..errors import MobiledeployError
from .onnx_session import disabled_optimizers


class WorkerDied(MobiledeployError):
    """The worker process ended without a result (killed, crashed, out of memory, its board's
    connection dropped): not the input's fault."""


class Launcher(Protocol):
    """Where a worker runs: ``run`` writes the spec, runs the worker, returns its JSON result."""

    device: str  # "cpu", "arm:<cpu>", "ssh://..."
    kind: str  # "cpu", "emulated" or "board"

    def run(self, spec: dict, workdir: Path, label: str) -> dict:
        """The worker's result for ``spec``; its output files written where the spec names them."""


@dataclass(frozen=True)
class Process:
    """A worker process on this machine: the interpreter command, its environment, the device."""

    command: tuple[str, ...] = (sys.executable,)
    env: dict = field(default_factory=dict)  # empty: this process's environment
    device: str = "cpu"
    kind: str = "cpu"

    def run(self, spec: dict, workdir: Path, label: str) -> dict:
        spec = {**spec, "result": str(workdir / "result.json")}
        spec_file = workdir / "spec.json"
        spec_file.write_text(json.dumps(spec))
        env = self.env or {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run([*self.command, "-m", "mobiledeploy.runtime.worker", str(spec_file)],
                              capture_output=True, text=True, env=env, check=False)
        result_file = Path(spec["result"])
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
        return checked_result(result, done.returncode, done.stderr, self.device, label)


def checked_result(result: dict, returncode: int, stderr: str, device: str, label: str) -> dict:
    """A worker's result: its user error re-raised, a worker that ended without a result as
    ``WorkerDied`` with the last line it printed."""
    if "error" in result:
        raise MobiledeployError(result["error"])
    if returncode != 0 or not result:
        tail = (stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise WorkerDied(f"{label}: the {device} worker process failed (exit {returncode}): {tail}")
    return result


RETRIES = 1  # a shard whose worker died runs again this many times before the command fails


def outputs_of(path: Path, fmt: str, inputs: list[str], workdir: Path, process: Launcher, workers: int = 1,
               on_retry: Callable[[str], None] | None = None) -> np.ndarray:
    """One artifact's outputs for the batches saved as .npy files, computed by worker processes
    (the emulated ARM one, or this machine's Python), flattened to (N, features).

    ``workers`` processes run at once, each on a contiguous share of the batches (a shard); their
    outputs are joined in batch order, so the result is the one a single process gives, whatever
    the number of shards: every batch runs through the same kernels either way. A shard whose
    worker died runs again (``RETRIES`` times), and ``on_retry`` hears of it."""
    from concurrent.futures import ThreadPoolExecutor

    # unique: a file compared with a build's own may share its name (model_int8.tflite)
    device = re.sub(r"[^A-Za-z0-9._-]+", "-", process.device)  # ssh://user@host:22 -> ssh-user-host-22
    work = Path(tempfile.mkdtemp(prefix=f"{path.name}.{device}.", dir=workdir))
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
                process.run(spec, folder, str(path))
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
