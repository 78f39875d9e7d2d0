"""The one place that chains stages: load -> fold -> calibrate -> export -> measure -> manifest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from . import calibration, evaluate, manifest, staging
from .errors import FoldingError, MobiledeployError
from .types import Artifact, EvalReport, ExportSettings, Preprocessing, QuantizeOptions, QuantizeResult

FOLDED_FILE = "model_folded.keras"

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

    settings = ExportSettings(io=options.io, per_channel=options.per_channel)
    with staging.staged_directory(output_dir, options.overwrite) as work:
        folded.save(work / FOLDED_FILE)
        report("export TFLite", 0, 1)
        artifacts = [_keras_artifact()]
        artifacts += tflite_export.export(folded, batches, work, settings)
        report("export ONNX", 0, 1)
        artifacts += onnx_export.export(folded, batches, work, settings)

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
            "files": [a.to_dict() for a in artifacts],
            "drift": {"measured_on": which, "rows": [d.to_dict() for d in drift]},
            "versions": manifest.library_versions(),
        })
    return QuantizeResult(str(output_dir), artifacts, fold, cset, drift, time.perf_counter() - started)


def evaluate_build(
    build_dir: str | Path,
    data: str | Path,
    labels_file: str | Path | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> EvalReport:
    """Run every artifact listed in ``build_dir/manifest.json`` on ``data``; compare with float.

    The preprocessing comes from the manifest, and each file's sha256 is checked against it
    first, so a changed or truncated artifact is refused by name.
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
    reference_name = next(f["file"] for f in files if f["format"] == "keras")
    total = len(dataset.items)
    runners = {entry["file"]: open_runner(build_dir / entry["file"]) for entry in files}
    step = f"evaluate {len(runners)} artifacts"
    outputs = evaluate.collect(runners, datasets.iter_batches(dataset, preprocessing, batch_size),
                               lambda done: report(step, done, total))
    if labels is not None and labels.max(initial=0) >= outputs[reference_name].shape[1]:
        raise MobiledeployError(
            f"{data}: class index {int(labels.max())} is beyond the model's "
            f"{outputs[reference_name].shape[1]} outputs; pass --labels with the model's class order"
        )
    reference = outputs[reference_name]
    rows = tuple(
        {"format": e["format"], "precision": e["precision"],
         **evaluate.artifact_metrics(e["file"], reference, outputs[e["file"]], labels)}
        for e in files
    )
    return EvalReport(str(build_dir), str(data), dataset.digest, content["model"].get("sha256"),
                      total, dataset.labelled, reference_name, rows, content["preprocessing"])


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
