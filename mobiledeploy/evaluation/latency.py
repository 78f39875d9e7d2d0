"""``mobiledeploy bench``: latency of every artifact of a build (or of one file), each timed in a
process of its own (``runtime.timing``), with the speed-up of int8 over the float file of the
same format. Every build folder is checked against its manifest before anything runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .. import manifest
from ..data import datasets
from ..errors import MobiledeployError
from ..model.loading import float_model
from ..options import BenchSettings, Progress
from ..reports import Artifact, BenchReport, LatencyReport
from ..runtime import timing
from ..runtime.runners import QUANTIZED_ONNX_OPS, TFLiteRunner
from ..runtime import devices
from . import costs


def bench_build(
    target: str | Path,
    settings: BenchSettings | None = None,
    data: str | Path | None = None,
    include_keras: bool = False,
    progress: Progress | None = None,
    device: str = "cpu",
    remote_python: str | None = None,
) -> BenchReport:
    """Latency of every artifact in a build folder (or of one .tflite/.onnx file), each timed
    in its own process, with speed-ups of int8 over the float file of the same format.

    ``device="arm[:cpu]"`` times them under qemu: emulated time, which neither predicts device
    latency nor ranks float vs int8 as hardware does; the report says so. ``device="ssh://..."``
    times them on that board (its Python: ``remote_python``, or one set up there): device latency."""
    settings = settings or BenchSettings()
    report = progress or (lambda step, done, total: None)
    target = Path(target)
    build, entries = _bench_entries(target)
    if include_keras and devices.kind(device) != "cpu":
        raise MobiledeployError(f"--keras cannot run on {device} (the worker there has no TensorFlow); drop --keras "
                                "or use --device cpu")
    runs_on = devices.open_target(device, remote_python, report)
    if not include_keras:
        entries = [e for e in entries if e[0].format != "keras"]
    macs = costs.model_costs(float_model(build.directory)).macs if build is not None else None
    inputs, source = None, f"random uniform [-1, 1) (seed {settings.seed})"
    if data is not None:
        if build is None:
            raise MobiledeployError("--data needs a build folder (its manifest says how to preprocess images)")
        inputs, source = _bench_inputs(build, data, settings.batch_size), str(data)
    rows = []
    for done, (entry, path) in enumerate(entries):
        report("benchmark", done, len(entries))
        row = timing.measure(path, entry.format, entry.precision, settings, inputs,
                             runs_on.process() if runs_on is not None else None, entry.details.get("tensor_map"))
        rows.append(dataclasses.replace(row, macs=macs))
    report("benchmark", len(entries), len(entries))
    agreement = _agreements(build)
    rows = [dataclasses.replace(r, agreement=agreement.get(r.artifact)) for r in rows]
    return BenchReport(str(target), runs_on.device if runs_on is not None else "cpu", source, settings,
                       _with_speedups(rows))


def _agreements(build: manifest.Build | None) -> dict[str, float]:
    """File -> its top-1 agreement with float as quantize measured it (the manifest's drift rows)."""
    drift = build.manifest.records.get("drift") if build is not None else None
    rows = drift.get("rows", []) if isinstance(drift, dict) else []
    return {row["artifact"]: float(row["agreement"]) for row in rows
            if isinstance(row, dict) and isinstance(row.get("agreement"), (int, float))}


def _with_speedups(rows: list[LatencyReport]) -> tuple[LatencyReport, ...]:
    floats = {r.format: r for r in rows if r.precision == "float32"}
    return tuple(
        dataclasses.replace(r, speedup_vs_float=floats[r.format].median_ms / r.median_ms)
        if r.format in floats and r.median_ms > 0 else r
        for r in rows
    )


def _bench_entries(target: Path) -> tuple[manifest.Build | None, list[tuple[Artifact, Path]]]:
    """(the build, its (entry, checked path) pairs) for a folder; a lone file is benchmarked as it
    is (as the entry its folder's manifest lists, when there is one)."""
    if target.is_dir():
        build = manifest.open_build(target)
        return build, [(entry, build.path(entry)) for entry in build.verified_files()]
    if not target.is_file():
        raise MobiledeployError(f"{target}: no such file or folder; expected a build folder or a .tflite/.onnx file")
    suffix = target.suffix.lower().lstrip(".")
    if suffix not in {"tflite", "onnx"}:
        raise MobiledeployError(f"{target}: cannot benchmark '.{suffix}' files; expected a build folder, "
                                ".tflite or .onnx")
    if (target.parent / manifest.MANIFEST).is_file():
        build = manifest.open_build(target.parent)
        entry = build.manifest.entry(target.name)
        if entry is not None:
            return None, [(entry, build.path(entry))]
    return None, [(Artifact(target.name, suffix, _precision_of(target)), target)]


def _precision_of(path: Path) -> str:
    """int8 when the file holds quantized operators, else float32 (for files without a manifest)."""
    if path.suffix.lower() == ".onnx":
        import onnx

        try:
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception as exc:  # onnx raises DecodeError and others for bad bytes
            raise MobiledeployError(f"{path}: not a readable ONNX model ({str(exc)[:120]}); re-export it") from None
        return "int8" if any(n.op_type in QUANTIZED_ONNX_OPS for n in graph.node) else "float32"
    details = TFLiteRunner(path).interpreter.get_tensor_details()  # a clear error for a damaged file
    return "int8" if any(d["dtype"].__name__ in ("int8", "uint8") for d in details) else "float32"


def _bench_inputs(build: manifest.Build, data: str | Path, batch: int):
    import numpy as np

    build.check_input(tuple(int(d) for d in float_model(build.directory).inputs[0].shape[1:]))
    dataset = datasets.open_data(data)
    first = next(datasets.iter_batches(dataset, build.manifest.preprocessing, batch))
    return np.resize(first, (batch, *first.shape[1:]))  # repeats images when there are fewer than batch
