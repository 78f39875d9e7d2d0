"""The one place that chains stages.

quantize: load -> fold -> calibrate -> refine -> export -> measure -> manifest; eval / check,
bench, inspect and analyze read a build folder (checked against its manifest) and run stages
over it.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Callable

from . import calibration, evaluate, manifest, staging
from .errors import FoldingError, MobiledeployError
from .types import (AnalyzeReport, Artifact, BenchReport, BenchSettings, CostReport, EvalReport, ExportSettings,
                    LatencyReport, Preprocessing, QuantizeOptions, QuantizeResult)

FOLDED_FILE = "model_folded.keras"
# Refinement holds its calibration images and one layer's activations in memory, so it uses at
# most this many; the statistics it needs settle well before that.
REFINE_SAMPLES = 256

# progress(step, done, total): the CLI draws it; the library stays silent without it.
Progress = Callable[[str, int, int], None]


def quantize(
    model_path: str | Path,
    calib: str | Path,
    output_dir: str | Path = "build",
    options: QuantizeOptions | None = None,
    progress: Progress | None = None,
) -> QuantizeResult:
    """Fold BatchNorm, calibrate, and write float + int8 TFLite and ONNX files to ``output_dir``.

    The output folder appears complete or not at all. Raises a ``MobiledeployError`` subclass
    for every problem with the inputs.
    """
    from .quiet import import_tensorflow

    import_tensorflow()
    from .export import onnx as onnx_export
    from .export import tflite as tflite_export
    from .folding import fold_batchnorm, verify_fold
    from .loading import load_model
    from .runners import KerasRunner, open_runner

    options = options or QuantizeOptions()
    report = progress or (lambda step, done, total: None)
    output_dir = Path(output_dir)
    staging.check_destination(output_dir, options.overwrite)
    started = time.perf_counter()

    report("load model", 0, 1)
    loaded = load_model(model_path, trust=options.trust_model_code)
    preprocessing = calibration.preprocessing_for(loaded.model, options.preprocess, options.crop_fraction)
    cset = calibration.scan(
        calib, preprocessing, options.num_calib, options.num_holdout, options.seed,
        progress=lambda done, total: report("read calibration images", done, total),
    )

    def batches(which: str = "calib"):
        return calibration.iter_batches(cset, which, options.batch_size)

    report("fold BatchNorm", 0, 1)
    folded, fold = fold_batchnorm(loaded.model)
    fold = verify_fold(loaded.model, folded, batches(), fold, options.fold_tolerance)
    if not fold.passed:
        raise FoldingError(
            f"folding changed the outputs by {fold.max_abs_diff:.3g} (relative {fold.rel_diff:.3g}, "
            f"tolerance {fold.rel_tolerance:g}); the model's BatchNorm statistics may hold NaN/Inf "
            "or extreme values — check the file"
        )

    refined, refinement = _refine(folded, batches, options, report)
    settings = ExportSettings(io=options.io, per_channel=options.per_channel)
    with staging.staged_directory(output_dir, options.overwrite) as work:
        save_keras(folded, work / FOLDED_FILE)
        report("export TFLite", 0, 1)
        artifacts = [_keras_artifact()]
        int8_model = refined if refinement is not None else None
        artifacts += tflite_export.export(folded, batches, work, settings, int8_model)
        report("export ONNX", 0, 1)
        artifacts += onnx_export.export(folded, batches, work, settings, int8_model)

        report("measure drift", 0, 1)
        which = "holdout" if cset.holdout else "calib"
        runners = {FOLDED_FILE: KerasRunner(folded)}
        runners.update({a.file: open_runner(work / a.file) for a in artifacts if a.precision == "int8"})
        outputs = evaluate.collect(runners, batches(which))
        reference = outputs.pop(FOLDED_FILE)
        drift = tuple(evaluate.drift(name, reference, out) for name, out in outputs.items())
        artifacts = tuple(manifest.describe(work, a) for a in artifacts)
        manifest.write(work, {
            "created_by": "mobiledeploy quantize",
            "model": {
                "source": str(model_path),
                "sha256": manifest.sha256(Path(model_path)) if Path(model_path).is_file() else None,
                "format": loaded.source_format,
                "saved_by_keras": loaded.saved_by,
                "trusted_code": loaded.trusted,
                "name": loaded.model.name,
                "input_shape": [None, *loaded.model.inputs[0].shape[1:]],
                "output_shape": [None, *loaded.model.outputs[0].shape[1:]],
            },
            "preprocessing": preprocessing.to_dict(),
            "calibration": cset.summary(),
            "settings": {**options.to_dict(), "export": settings.to_dict()},
            "folding": fold.to_dict(),
            "refinement": {k: v for k, v in refinement.to_dict().items() if k != "seconds"} if refinement else None,
            "files": [a.to_dict() for a in artifacts],
            "drift": {"measured_on": which, "rows": [d.to_dict() for d in drift]},
            "versions": manifest.library_versions(),
        })
    return QuantizeResult(str(output_dir), artifacts, fold, cset, drift, time.perf_counter() - started, refinement)


def save_keras(model, path: Path) -> None:
    """``model.save``, made reproducible: the same model gives the same bytes. Keras stamps
    metadata.json with the save time and the weights' zip entry with the current date."""
    import json
    import zipfile

    model.save(path)
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    stable = path.with_name(path.name + ".stable")
    with zipfile.ZipFile(stable, "w") as target:
        for info, data in entries:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            target.writestr(fixed, data)
    stable.replace(path)


def _refine(folded, batches, options: QuantizeOptions, report: Progress):
    """The model the exporters see: the folded model, refined for int8 unless refine='none'."""
    if options.refine == "none":
        return folded, None
    import numpy as np

    from . import refine

    if options.refine not in ("bias", "adaround"):
        raise MobiledeployError(f"unknown refine method '{options.refine}'; expected adaround, bias or none")
    calib = np.concatenate(list(_first_samples(batches(), REFINE_SAMPLES)))  # bounded memory
    step = "refine: " + ("adaptive rounding + bias correction" if options.refine == "adaround" else "bias correction")
    return refine.refine_for_int8(
        folded, calib, progress=lambda done, total: report(step, done, total),
        adaptive_rounding=options.refine == "adaround", rounding_samples=options.rounding_samples,
        clip_activations=options.activation_ranges == "mse", per_channel=options.per_channel,
    )


def evaluate_build(
    build_dir: str | Path,
    data: str | Path,
    labels_file: str | Path | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
    device: str = "cpu",
) -> EvalReport:
    """Run every artifact listed in ``build_dir/manifest.json`` on ``data``; compare with float.

    The preprocessing comes from the manifest, and each file's sha256 is checked against it
    first, so a changed or truncated artifact is refused by name. With ``device="arm[:cpu]"``
    the .tflite/.onnx files also run under ARM emulation: their metrics come from the ARM
    outputs, and each row says how many outputs were bit-identical to this CPU's.
    """
    import numpy as np

    from . import datasets
    from .quiet import import_tensorflow
    from .runners import open_runner

    report = progress or (lambda step, done, total: None)
    build_dir = Path(build_dir)
    content = manifest.read(build_dir)
    files = verified_files(build_dir, content)
    preprocessing = Preprocessing.from_dict(content["preprocessing"])
    dataset = datasets.open_data(data, labels_file)
    import_tensorflow()
    labels = np.asarray(dataset.labels) if dataset.labelled else None
    reference_name = next((f["file"] for f in files if f["format"] == "keras"), None)
    if reference_name is None:
        raise MobiledeployError(f"{build_dir}/manifest.json lists no Keras float model to compare with; "
                                "re-run mobiledeploy quantize")
    total = len(dataset.items)
    arm = _arm_target(device, report)
    runners = {entry["file"]: open_runner(build_dir / entry["file"]) for entry in files}
    step = f"evaluate {len(runners)} artifacts"
    with tempfile.TemporaryDirectory(prefix="mobiledeploy-eval-") as tmp:
        saved: list[str] = []
        batches = datasets.iter_batches(dataset, preprocessing, batch_size)
        if arm is not None:  # the emulated runs read the very same preprocessed batches
            batches = _saving(batches, Path(tmp), saved)
        outputs = evaluate.collect(runners, batches, lambda done: report(step, done, total))
        x86 = dict(outputs)
        if arm is not None:
            for done, entry in enumerate(e for e in files if e["format"] != "keras"):
                report(f"run on {arm.device} (emulated)", done, len(files) - 1)
                outputs[entry["file"]] = _emulated_outputs(build_dir / entry["file"], entry["format"], saved,
                                                           Path(tmp), arm)
    if labels is not None and labels.max(initial=0) >= outputs[reference_name].shape[1]:
        raise MobiledeployError(
            f"{data}: class index {int(labels.max())} is beyond the model's "
            f"{outputs[reference_name].shape[1]} outputs; pass --labels with the model's class order"
        )
    reference = outputs[reference_name]
    rows = []
    for e in files:
        row = {"format": e["format"], "precision": e["precision"],
               **evaluate.artifact_metrics(e["file"], reference, outputs[e["file"]], labels)}
        if arm is not None:
            row["device"] = "cpu" if e["format"] == "keras" else arm.device
            if e["format"] != "keras":
                row.update(evaluate.bit_exactness(x86[e["file"]], outputs[e["file"]]))
        rows.append(row)
    return EvalReport(str(build_dir), str(data), dataset.digest, content["model"].get("sha256"),
                      total, dataset.labelled, reference_name, tuple(rows), content["preprocessing"],
                      arm.device if arm is not None else "cpu")


def _arm_target(device: str, report: Progress):
    """The emulated ARM CPU for ``device``, or None for this machine's CPU."""
    from . import emulation

    cpu = emulation.parse_device(device)
    if cpu is None:
        return None
    report("set up ARM emulation", 0, 1)
    return emulation.target(cpu)


def _saving(batches, folder: Path, saved: list[str]):
    """Pass batches through, keeping each as a .npy file for the emulated worker."""
    import numpy as np

    for i, batch in enumerate(batches):
        path = folder / f"batch_{i:05d}.npy"
        np.save(path, batch, allow_pickle=False)
        saved.append(str(path))
        yield batch


def _emulated_outputs(path: Path, fmt: str, inputs: list[str], tmp: Path, arm):
    """One artifact's outputs for the saved batches, computed by the emulated ARM worker."""
    import numpy as np

    from .worker import run_worker

    work = tmp / f"{path.name}.arm"
    work.mkdir()
    outputs = [str(work / f"out_{i:05d}.npy") for i in range(len(inputs))]
    spec = {"mode": "run", "path": str(path.resolve()), "format": fmt, "inputs": inputs, "outputs": outputs}
    run_worker(spec, work, arm.process(), str(path))
    result = np.concatenate([np.load(o, allow_pickle=False) for o in outputs])
    return result.reshape(len(result), -1).astype(np.float32)


def verified_files(build_dir: Path, content: dict) -> list[dict]:
    """The manifest's file entries, after checking each file's size and sha256."""
    entries = content.get("files") or []
    if not entries:
        raise MobiledeployError(f"{build_dir}/manifest.json lists no files; re-run mobiledeploy quantize")
    for entry in entries:
        path = build_dir / entry["file"]
        if not path.is_file():
            raise MobiledeployError(f"{path}: listed in the manifest but missing; re-run mobiledeploy quantize")
        if path.stat().st_size != entry["size"] or manifest.sha256(path) != entry["sha256"]:
            raise MobiledeployError(
                f"{path}: contents differ from the manifest (sha256 mismatch): the file was changed "
                "or truncated after quantize; re-run mobiledeploy quantize"
            )
    return entries


def _keras_artifact() -> Artifact:
    return Artifact(FOLDED_FILE, "keras", "float32", details={"runtime": "Keras", "batchnorm_folded": True})


def inspect_model(target: str | Path, alpha: float = 1.0, rho: float = 1.0,
                  trust_model_code: bool = False) -> CostReport:
    """Per-layer params and multiply-adds of a model file or a build folder's folded model,
    optionally for another width multiplier ``alpha`` and resolution multiplier ``rho``."""
    from . import costs

    model = _keras_model(Path(target), trust_model_code)
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
    from . import bench

    settings = settings or BenchSettings()
    report = progress or (lambda step, done, total: None)
    target = Path(target)
    build_dir, entries = _bench_entries(target)
    arm = _arm_target(device, report)
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
        return target, verified_files(target, manifest.read(target))
    if not target.is_file():
        raise MobiledeployError(f"{target}: no such file or folder; expected a build folder or a .tflite/.onnx file")
    suffix = target.suffix.lower().lstrip(".")
    if suffix not in {"tflite", "onnx"}:
        raise MobiledeployError(f"{target}: cannot benchmark '.{suffix}' files; expected a build folder, "
                                ".tflite or .onnx")
    if (target.parent / manifest.MANIFEST).is_file():
        listed = [e for e in verified_files(target.parent, manifest.read(target.parent)) if e["file"] == target.name]
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
    from .runners import TFLiteRunner

    details = TFLiteRunner(path).interpreter.get_tensor_details()
    return "int8" if any(d["dtype"].__name__ == "int8" for d in details) else "float32"


def _bench_inputs(build_dir: Path | None, data: str | Path, batch: int):
    import numpy as np

    from . import datasets

    if build_dir is None:
        raise MobiledeployError("--data needs a build folder (its manifest says how to preprocess images)")
    preprocessing = Preprocessing.from_dict(manifest.read(build_dir)["preprocessing"])
    dataset = datasets.open_data(data)
    first = next(datasets.iter_batches(dataset, preprocessing, batch))
    return np.resize(first, (batch, *first.shape[1:]))  # repeats images when there are fewer than batch


def _keras_model(target: Path, trust_model_code: bool):
    """The folded model of a build folder (integrity-checked) or a model file, loaded safely."""
    from .quiet import import_tensorflow

    if target.is_dir() and (target / manifest.MANIFEST).is_file():
        entries = verified_files(target, manifest.read(target))
        keras_file = next((e["file"] for e in entries if e["format"] == "keras"), None)
        if keras_file is None:
            raise MobiledeployError(f"{target}/manifest.json lists no Keras model; re-run mobiledeploy quantize")
        import_tensorflow()
        import keras

        return keras.saving.load_model(target / keras_file, compile=False)
    import_tensorflow()
    from .loading import load_model

    return load_model(target, trust=trust_model_code).model


def analyze_build(build_dir: str | Path, data: str | Path, max_images: int = 200, batch_size: int = 32,
                  progress: Progress | None = None) -> AnalyzeReport:
    """Per-layer drift of every int8 artifact in ``build_dir`` against the folded float model."""
    from . import analyze, datasets

    report = progress or (lambda step, done, total: None)
    build_dir = Path(build_dir)
    content = manifest.read(build_dir)
    files = verified_files(build_dir, content)
    preprocessing = Preprocessing.from_dict(content["preprocessing"])
    dataset = datasets.open_data(data)
    model = _keras_model(build_dir, False)
    int8 = {e["file"]: build_dir / e["file"] for e in files if e["precision"] == "int8"}
    total = min(max_images, len(dataset.items))
    batches = datasets.iter_batches(dataset, preprocessing, batch_size)
    limited = _first_samples(batches, total)
    layers = analyze.analyze(model, int8, limited, lambda done: report("per-layer drift", done, total))
    return AnalyzeReport(str(build_dir), str(data), total, layers)


def _first_samples(batches, count: int):
    """The first ``count`` samples of a batch stream."""
    taken = 0
    for batch in batches:
        if taken >= count:
            return
        batch = batch[: count - taken]
        taken += len(batch)
        yield batch
