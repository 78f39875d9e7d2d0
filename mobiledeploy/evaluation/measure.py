"""Stages chained over an existing model or build folder: bench, inspect and analyze.

``pipeline`` makes a build (quantize) and evaluates it; this module measures one. Every
build folder is checked against its manifest before anything runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..data import calibration
from .. import manifest
from ..errors import MobiledeployError
from ..options import BenchSettings
from ..reports import AnalyzeReport, BenchReport, CostReport, LatencyReport
from ..options import Progress
from ..reports import Preprocessing


def inspect_model(target: str | Path, alpha: float = 1.0, rho: float = 1.0,
                  trust_model_code: bool = False, input_size: tuple[int, int] | None = None) -> CostReport:
    """Per-layer params and multiply-adds of a model file or a build folder's folded model,
    optionally for another width multiplier ``alpha`` and resolution multiplier ``rho``.
    ``input_size`` sizes a model saved without a fixed input, as quantize's does."""
    from . import costs

    model = _keras_model(Path(target), trust_model_code, input_size)
    report = costs.model_costs(model)
    return costs.what_if(report, alpha, rho) if (alpha, rho) != (1.0, 1.0) else report


def bench_build(
    target: str | Path,
    settings: BenchSettings | None = None,
    data: str | Path | None = None,
    include_keras: bool = False,
    progress: Progress | None = None,
    device: str = "cpu",
) -> BenchReport:
    """Latency of every artifact in a build folder (or of one .tflite/.onnx file), each timed
    in its own process, with speed-ups of int8 over the float file of the same format.

    ``device="arm[:cpu]"`` times them under qemu: emulated time, which neither predicts device
    latency nor ranks float vs int8 as hardware does; the report says so."""
    from ..runtime import timing as bench
    from ..runtime.arm import provisioning

    settings = settings or BenchSettings()
    report = progress or (lambda step, done, total: None)
    target = Path(target)
    build_dir, entries = _bench_entries(target)
    arm = provisioning.target_for(device, report)
    if include_keras and arm is not None:
        raise MobiledeployError("--keras cannot run under ARM emulation (no TensorFlow for the emulated "
                                "Python); drop --keras or use --device cpu")
    if not include_keras:
        entries = [e for e in entries if e["format"] != "keras"]
    macs = None
    if build_dir is not None:
        from . import costs

        macs = costs.model_costs(_keras_model(build_dir, False)).macs
    inputs, source = None, f"random uniform [-1, 1) (seed {settings.seed})"
    if data is not None:
        inputs, source = _bench_inputs(build_dir, data, settings.batch), str(data)
    rows = []
    for done, entry in enumerate(entries):
        report("benchmark", done, len(entries))
        folder = build_dir if build_dir is not None else target.parent
        row = bench.measure(folder / entry["file"], entry["format"], entry["precision"], settings, inputs,
                            arm.process() if arm is not None else None)
        rows.append(dataclasses.replace(row, macs=macs))
    report("benchmark", len(entries), len(entries))
    return BenchReport(str(target), arm.device if arm is not None else "cpu", source, settings,
                       _with_speedups(rows))


def _with_speedups(rows: list[LatencyReport]) -> tuple[LatencyReport, ...]:
    floats = {r.format: r for r in rows if r.precision == "float32"}
    return tuple(
        dataclasses.replace(r, speedup_vs_float=floats[r.format].median_ms / r.median_ms)
        if r.format in floats and r.median_ms > 0 else r
        for r in rows
    )


def _bench_entries(target: Path) -> tuple[Path | None, list[dict]]:
    """(build folder, manifest entries) for a folder; a lone file is benchmarked as it is."""
    if target.is_dir():
        return target, manifest.verified_files(target, manifest.read(target))
    if not target.is_file():
        raise MobiledeployError(f"{target}: no such file or folder; expected a build folder or a .tflite/.onnx file")
    suffix = target.suffix.lower().lstrip(".")
    if suffix not in {"tflite", "onnx"}:
        raise MobiledeployError(f"{target}: cannot benchmark '.{suffix}' files; expected a build folder, "
                                ".tflite or .onnx")
    if (target.parent / manifest.MANIFEST).is_file():
        listed = [e for e in manifest.verified_files(target.parent, manifest.read(target.parent)) if e["file"] == target.name]
        if listed:
            return None, listed
    return None, [{"file": target.name, "format": suffix, "precision": _precision_of(target)}]


def _precision_of(path: Path) -> str:
    """int8 when the file holds quantized operators, else float32 (for files without a manifest)."""
    if path.suffix.lower() == ".onnx":
        import onnx

        try:
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception as exc:  # onnx raises DecodeError and others for bad bytes
            raise MobiledeployError(f"{path}: not a readable ONNX model ({str(exc)[:120]}); re-export it") from None
        quantized = any(n.op_type in {"QuantizeLinear", "QLinearConv", "ConvInteger"} for n in graph.node)
        return "int8" if quantized else "float32"
    from ..runtime.runners import TFLiteRunner

    details = TFLiteRunner(path).interpreter.get_tensor_details()
    return "int8" if any(d["dtype"].__name__ == "int8" for d in details) else "float32"


def _bench_inputs(build_dir: Path | None, data: str | Path, batch: int):
    import numpy as np

    from ..data import datasets

    if build_dir is None:
        raise MobiledeployError("--data needs a build folder (its manifest says how to preprocess images)")
    preprocessing = Preprocessing.from_dict(manifest.read(build_dir)["preprocessing"])
    dataset = datasets.open_data(data)
    first = next(datasets.iter_batches(dataset, preprocessing, batch))
    return np.resize(first, (batch, *first.shape[1:]))  # repeats images when there are fewer than batch


def _keras_model(target: Path, trust_model_code: bool, input_size: tuple[int, int] | None = None):
    """The folded model of a build folder (integrity-checked) or a model file, loaded safely."""
    from ..quiet import import_tensorflow

    if target.is_dir() and (target / manifest.MANIFEST).is_file():
        entries = manifest.verified_files(target, manifest.read(target))
        keras_file = next((e["file"] for e in entries if e["format"] == "keras"), None)
        if keras_file is None:
            raise MobiledeployError(f"{target}/manifest.json lists no Keras model; re-run mobiledeploy quantize")
        return _load_saved(target / keras_file)
    import_tensorflow()
    from ..model.loading import load_model

    return load_model(target, trust=trust_model_code, input_size=input_size).model


def _load_saved(path: Path):
    """A .keras file this tool wrote (sha256-checked by the caller)."""
    from ..quiet import import_tensorflow

    import_tensorflow()
    import keras

    return keras.saving.load_model(path, compile=False)


def analyze_build(build_dir: str | Path, data: str | Path, max_images: int = 200, batch_size: int = 32,
                  progress: Progress | None = None) -> AnalyzeReport:
    """Per-layer drift of every int8 artifact in ``build_dir`` against the float model they were
    made from: the folded model, or, when equalization rescaled its channels or dithering copied
    some (dither.py), the model they wrote (the same function, but only its intermediate tensors
    match the int8 files' channel by channel)."""
    from . import layers as analyze
    from ..data import datasets

    report = progress or (lambda step, done, total: None)
    build_dir = Path(build_dir)
    content = manifest.read(build_dir)
    files = manifest.verified_files(build_dir, content)
    preprocessing = Preprocessing.from_dict(content["preprocessing"])
    dataset = datasets.open_data(data)
    # the last stage that rewrote the float model's channels wrote the model the int8 files mirror
    rewritten = (content.get("dither") or {}).get("reference") or (content.get("equalization") or {}).get("reference")
    model = _load_saved(manifest.verified(build_dir, rewritten)) if rewritten else _keras_model(build_dir, False)
    floor = content.get("logit_floor")
    if floor:  # the int8 files' logits are floored: compare them with the same floored tensor
        from ..passes.logit_floor import apply_floor

        model = apply_floor(model, floor["layer"], floor["split_softmax"], floor["floor"])
    int8 = {e["file"]: (build_dir / e["file"], e.get("details", {}).get("tensor_map", {})) for e in files
            if e["precision"] == "int8"}
    total = min(max_images, len(dataset.items))
    batches = datasets.iter_batches(dataset, preprocessing, batch_size)
    limited = calibration.first_samples(batches, total)
    layers = analyze.analyze(model, int8, limited, lambda done: report("per-layer drift", done, total))
    return AnalyzeReport(str(build_dir), str(data), total, layers)
