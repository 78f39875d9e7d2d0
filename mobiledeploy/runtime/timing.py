"""Latency of one artifact: warm-up, timed runs, statistics — each artifact in its own process.

A runtime's thread pool, allocator and imported libraries stay in the process that loaded
them, so timing several runtimes in one process lets one skew the next. ``measure`` therefore
starts a worker process (``host``) per artifact (on this CPU or under ARM emulation), which runs
``measure_here`` and writes a JSON result.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import MobiledeployError
from ..options import BenchSettings
from ..reports import LatencyReport
from .host import Launcher, Process, artifact_spec
from .onnx_session import float_ops_in, save_optimized_onnx
from .profile_layers import attribute, layer_times
from .runners import open_artifact

OPTIMIZED = "optimized.onnx"  # the graph ONNX Runtime runs, written by the benchmark process

RUNTIMES = {"tflite": "LiteRT (XNNPACK)", "onnx": "ONNX Runtime (CPU EP)", "keras": "Keras (TensorFlow)"}


def statistics(times_ms: Sequence[float]) -> dict:
    """Median, mean, p90, p99, min, max and standard deviation of the timed runs, in ms."""
    if len(times_ms) == 0:
        raise ValueError("no timed runs")
    values = np.asarray(times_ms, np.float64)
    return {
        "runs": int(values.size),
        "median_ms": float(np.median(values)),
        "mean_ms": float(values.mean()),
        "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)),
        "min_ms": float(values.min()),
        "max_ms": float(values.max()),
        "std_ms": float(values.std()),
    }


def timed_runs(call: Callable[[], object], settings: BenchSettings,
               clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Run ``call`` at least ``num_runs`` times and at least ``min_secs``, at most ``max_secs``."""
    for _ in range(settings.warmup_runs):
        call()
    times: list[float] = []
    started = clock()
    while True:
        before = clock()
        call()
        after = clock()
        times.append((after - before) * 1000.0)
        elapsed = after - started
        if elapsed >= settings.max_secs or (len(times) >= settings.num_runs and elapsed >= settings.min_secs):
            return times


def measure(path: Path, fmt: str, precision: str, settings: BenchSettings, inputs: np.ndarray | None = None,
            process: Launcher | None = None, tensor_map: dict[str, str] | None = None) -> LatencyReport:
    """Time one artifact in a process of its own: this machine's Python by default, or the
    emulated ARM interpreter or the board that ``process`` describes. With ``settings.profile`` and the
    build's ``tensor_map`` of an ONNX file, also each layer's share of the operators' time."""
    process = process or Process()
    with tempfile.TemporaryDirectory(prefix="mobiledeploy-bench-") as tmp:
        # an int8 ONNX file: also what the runtime there leaves in float kernels (unfused node units)
        by_layer = bool(settings.profile and fmt == "onnx" and tensor_map)
        spec = {"mode": "bench", **artifact_spec(path, fmt), "settings": settings.to_dict(),
                "inputs": None, "workdir": tmp, "optimized_graph": fmt == "onnx" and (precision != "float32" or by_layer)}
        if inputs is not None:
            np.save(Path(tmp) / "inputs.npy", np.ascontiguousarray(inputs, np.float32), allow_pickle=False)
            spec["inputs"] = str(Path(tmp) / "inputs.npy")
        result = process.run(spec, Path(tmp), str(path))
        unfused, layers, unplaced = {}, {}, None
        if spec["optimized_graph"] and precision != "float32":
            unfused = float_ops_in(Path(tmp) / OPTIMIZED)
        if by_layer and result.get("node_ms"):
            layers, unplaced = layer_times(result["node_ms"], attribute(Path(path), Path(tmp) / OPTIMIZED, tensor_map))
    return LatencyReport(
        artifact=Path(path).name, format=fmt, precision=precision, runtime=RUNTIMES[fmt], device=process.device,
        threads=settings.num_threads, batch=settings.batch_size, size=Path(path).stat().st_size,
        **result["timing"], peak_rss_mb=result["peak_rss_mb"],
        profile=tuple(result.get("profile", ())), profile_note=result.get("profile_note", ""),
        cpu=result.get("cpu", ""), runtime_float_ops=unfused, layer_ms=layers, layer_ms_unattributed=unplaced,
        board=result.get("board", {}) if process.kind == "board" else {},
    )


def random_inputs(shape: Sequence[int], batch: int, seed: int) -> np.ndarray:
    """Seeded uniform inputs in [-1, 1): the range of a MobileNet's preprocessed pixels."""
    if any(d <= 0 for d in shape):
        raise MobiledeployError(f"the model's input shape {tuple(shape)} is not fixed; pass --data images")
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(batch, *shape)).astype(np.float32)


def measure_here(spec: dict) -> dict:
    """The timing itself, run inside the benchmark process: load, bind, time, summarize."""
    settings = BenchSettings(**spec["settings"])
    inputs = np.load(spec["inputs"], allow_pickle=False) if spec["inputs"] else None
    baseline_kb = _peak_rss_kb()
    started = time.perf_counter()
    runner = open_artifact(spec, settings.num_threads, profile_dir=spec["workdir"] if settings.profile else None)
    init_ms = (time.perf_counter() - started) * 1000.0
    if inputs is None:
        inputs = random_inputs(runner.input_shape, settings.batch_size, settings.seed)
    call = runner.bind(inputs)
    started = time.perf_counter()
    call()
    first_ms = (time.perf_counter() - started) * 1000.0
    times = timed_runs(call, settings)
    result = {"timing": {"init_ms": init_ms, "first_ms": first_ms, **statistics(times)},
              "peak_rss_mb": (_peak_rss_kb() - baseline_kb) / 1024.0}
    if settings.profile:
        result.update(_profile(runner, settings.top_ops))
    if spec.get("optimized_graph"):
        save_optimized_onnx(spec["path"], Path(spec["workdir"]) / OPTIMIZED, spec.get("onnx_disabled"))
    return result


def _peak_rss_kb() -> int:
    """This process's resident-memory high-water mark. /proc's VmHWM starts afresh at exec;
    getrusage's ru_maxrss would carry over the (large) parent's peak into the child."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _profile(runner, top: int) -> dict:
    """Per-operator time, from ONNX Runtime's profiler; LiteRT's Python API has none."""
    session = getattr(runner, "session", None)
    if session is None:
        return {"profile_note": "no per-operator profiler in this runtime's Python API "
                                "(for LiteRT use benchmark_model --enable_op_profiling=true)"}
    events = json.loads(Path(session.end_profiling()).read_text())
    return {"profile": summarize_ort_profile(events, top), "node_ms": node_times(events)}


def _kernel_times(events: list[dict]) -> tuple[int, dict[str, dict]]:
    """(the number of runs, node -> its operator and total kernel microseconds) of an ONNX
    Runtime profile (Chrome trace events)."""
    runs = sum(1 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run") or 1
    nodes: dict[str, dict] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        name = event["name"][: -len("_kernel_time")]
        node = nodes.setdefault(name, {"node": name, "op": event.get("args", {}).get("op_name", "?"), "us": 0})
        node["us"] += int(event.get("dur", 0))
    return runs, nodes


def node_times(events: list[dict]) -> dict[str, float]:
    """Every node's mean time per run (ms) from an ONNX Runtime profile."""
    runs, nodes = _kernel_times(events)
    return {name: node["us"] / runs / 1000.0 for name, node in nodes.items()}


def summarize_ort_profile(events: list[dict], top: int) -> list[dict]:
    """Top-N nodes by mean time per run from an ONNX Runtime profile (Chrome trace events)."""
    runs, nodes = _kernel_times(events)
    total = sum(n["us"] for n in nodes.values()) or 1
    ranked = sorted(nodes.values(), key=lambda n: (-n["us"], n["node"]))[:top]
    return [{"node": n["node"], "op": n["op"], "ms_per_run": n["us"] / runs / 1000.0, "share": n["us"] / total}
            for n in ranked]

