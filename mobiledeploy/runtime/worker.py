"""The child side of a worker process: load one artifact, then time it or run inputs through it.

``python -m mobiledeploy.runtime.worker SPEC.json`` — started by ``host`` with this machine's
Python (a clean process per artifact for benchmarks) or with the emulated aarch64 Python under
qemu. Inputs and outputs travel as .npy files (plain arrays, never pickled objects); the result
is a JSON file. It imports only numpy and the one runtime it needs, so it also runs where
TensorFlow does not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..errors import MobiledeployError
from .runners import open_artifact
from .timing import measure_here


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
            result = measure_here(spec)
        else:
            result = run_outputs(spec)
        result["cpu"] = cpu_features()
    except MobiledeployError as exc:
        result = {"error": str(exc)}
    Path(spec["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
