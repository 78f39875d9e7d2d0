"""Run ONNX files on OpenVINO, the runtime NNCF's files are made for: the worker of
other_quantizers.py.

    <openvino venv>/bin/python benchmarks/helpers/openvino_run.py INPUTS_NPY OUT_DIR OURS_ONNX FILE...

Runs in a virtualenv of its own (other_quantizers.py makes it), so it imports only OpenVINO,
ONNX Runtime and numpy, never mobiledeploy. For each FILE and for OURS_ONNX (mobiledeploy's int8
ONNX file) it writes the outputs for INPUTS_NPY (NHWC float32, preprocessed) to OUT_DIR and
counts the precision OpenVINO's CPU plugin runs each convolution and matrix multiply in. Then it
times one image on one thread, the files alternated in 7 rounds, OURS_ONNX also on ONNX Runtime:
only ratios within one run mean something on a shared machine. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import numpy as np

COMPUTE_LAYERS = {"Convolution", "GroupConvolution", "FullyConnected", "MatMul"}
ROUNDS, RUNS = 7, 40


def runtime_precisions(compiled) -> dict[str, int]:
    """How many convolutions and matrix multiplies the CPU plugin runs in each precision (u8 or
    i8: an integer kernel; f32: float), read off the graph it compiled."""
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in COMPUTE_LAYERS:
            counts[info["runtimePrecision"].astype(str)] += 1
    return dict(counts)


def median_times(calls: dict) -> dict[str, float]:
    """Median seconds of one call each, the calls alternated in ROUNDS rounds."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(ROUNDS):
        for name, call in calls.items():
            for _ in range(5):
                call()
            durations = []
            for _ in range(RUNS):
                started = time.perf_counter()
                call()
                durations.append(time.perf_counter() - started)
            times[name].append(float(np.median(durations)))
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> None:
    import onnxruntime as ort
    import openvino as ov

    inputs, out_dir, ours, *files = sys.argv[1:]
    x = np.load(inputs)
    core = ov.Core()
    result, calls = {}, {}
    for path in [*files, ours]:
        compiled = core.compile_model(core.read_model(path), "CPU",
                                      {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"})
        outputs = np.concatenate([compiled(x[i:i + 1])[0] for i in range(len(x))])
        target = Path(out_dir) / f"{Path(path).stem}.openvino.npy"
        np.save(target, outputs.astype(np.float32), allow_pickle=False)
        result[path] = {"outputs": str(target), "precision": runtime_precisions(compiled)}
        calls[path] = lambda compiled=compiled: compiled(x[:1])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.x64quantprecision", "1")  # as mobiledeploy runs it (runners)
    session = ort.InferenceSession(ours, options, providers=["CPUExecutionProvider"])  # all int8: its optimizers
    feed = {session.get_inputs()[0].name: x[:1]}
    calls["onnxruntime"] = lambda: session.run(None, feed)
    seconds = median_times(calls)
    for path in result:
        result[path]["seconds"] = seconds[path]
    print(json.dumps({"version": f"openvino {version('openvino')}", "files": result,
                      "ours_onnxruntime_seconds": seconds["onnxruntime"]}))


if __name__ == "__main__":
    main()
