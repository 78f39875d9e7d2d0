"""Chains the stages that make a build.

quantize: load -> fold -> calibrate -> refine -> export -> measure -> manifest. The stages that
prepare the model for int8 (equalization, dithered copies, the logit floor, narrowed ranges,
refinement) are optional refinements: one that fails for the model, or for a layer, falls back
to the plain setting and the build goes on, saying which layer, which refinement and why
(``fallbacks`` in the manifest). Only the core fails the command: load, fold, convert and the
int8 checks of the exported files.

``evaluation.builds`` runs a build's artifacts on labelled data (eval / check);
``evaluation.latency``, ``.costs`` and ``.layers`` measure a build (bench, inspect, analyze).
"""

from __future__ import annotations

import functools
import time
from dataclasses import replace
from pathlib import Path

from . import manifest, staging
from .data import calibration, datasets
from .data.input_scaling import SAMPLES, read_scaling
from .errors import FoldingError, MobiledeployError
from .evaluation.costs import model_costs
from .evaluation import sanity
from .export import tflite_metadata
from .manifest import Manifest, ModelSource
from .model.heads import head_for
from .model.loading import load_model
from .option_checks import check_options
from .options import Progress, QuantizeOptions
from .passes import mixed
from .passes.dither import AUTO_MAX_CHANNELS, dither_first_layer
from .passes.equalize import equalize
from .passes.folding import fold_batchnorm, verify_fold
from .passes.logit_floor import floor_logits, floored
from .passes.ranges import mse_ranges
from .quiet import import_tensorflow
from .reports import Artifact, Fallback, QuantizeResult, stage_records
from .rounds import FOLDED_FILE, Rounds, optional
from .stage_clock import StageClock

# the equalized float model: the same function as the folded one, with rescaled channels; the
# int8 files' intermediate tensors mirror it, so analyze compares them with this one
EQUALIZED_FILE = "model_equalized.keras"
# after dither.py: the float model with the first conv's dithered channel copies (more channels,
# same function), the one whose tensors the int8 files' match
DITHERED_FILE = "model_dithered.keras"
# Refinement holds its calibration images and one layer's activations in memory, so it uses at
# most this many; the statistics it needs settle well before that.
REFINE_SAMPLES = 256


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
    import_tensorflow()
    options = options or QuantizeOptions()
    report = StageClock(progress)
    output_dir = Path(output_dir)
    inputs = (Path(model_path), Path(calib), *((Path(options.labels),) if options.labels else ()))
    staging.check_destination(output_dir, options.overwrite, inputs)
    check_options(options)
    options = options.resolved()
    if options.labels is not None:
        options = replace(options, labels=str(options.labels))  # a path as the manifest writes it
    started = time.perf_counter()

    report("load model", 0, 1)
    loaded = load_model(model_path, trust=options.trust_model_code, input_size=options.input_size)
    learned = loaded.learned_ranges  # quantization-aware training's ranges, used instead of calibrated ones
    if learned is not None:
        options = _quantization_aware(options)
    preprocessing = calibration.preprocessing_for(loaded.model, options.preprocess, options.crop_fraction)
    cset = calibration.scan(
        calib, preprocessing, options.num_calib, options.num_holdout, options.seed,
        progress=lambda done, total: report("read calibration images", done, total),
    )
    scaling = _input_scaling(loaded.model, cset, options, report)
    if scaling.chosen != preprocessing.scaling:
        preprocessing = replace(preprocessing, scaling=scaling.chosen)
        cset = replace(cset, preprocessing=preprocessing)

    mixed.check_layers(loaded.model, options.keep_float)  # fail before any work
    labels = _labels(loaded.model, options)
    if options.max_disagreement is not None and not cset.holdout:
        raise MobiledeployError("--max-disagreement is measured on held-out calibration images; set --num-holdout above 0")

    batches = calibration.DecodedBatches(cset, options.batch_size)  # each set decoded once

    @functools.cache
    def samples():  # what equalization and every refinement round read: decoded once
        import numpy as np

        return np.concatenate(list(calibration.first_samples(batches(), REFINE_SAMPLES)))  # bounded memory

    report("fold BatchNorm", 0, 1)
    folded, fold = fold_batchnorm(loaded.model)
    fold = verify_fold(loaded.model, folded, batches(), fold, options.fold_tolerance)
    if not fold.passed:
        raise FoldingError(
            f"folding changed the outputs by {fold.max_abs_diff:.3g} (relative {fold.rel_diff:.3g}, "
            f"tolerance {fold.rel_tolerance:g}); the model's BatchNorm statistics may hold NaN/Inf "
            "or extreme values — check the file"
        )

    head = head_for(folded, options.head)  # how agreement reads the outputs (a single output is a binary decision)
    fallbacks: list[Fallback] = []
    equalized, equalization = optional(fallbacks, "cross-layer equalization", (folded, None),
                                        _equalize, folded, samples, options, report)
    # what the int8 converters start from: the same function as the folded model
    prepared, dither = optional(fallbacks, "dithered copies", (equalized, None),
                                 _dither, equalized, samples, options, report)
    logits: dict = {}  # the softmax's logits, read once: by the floor, and by the ranges when there is no floor
    floor = optional(fallbacks, "logit floor", None, _logit_floor, prepared, samples, options, report, logits)
    ranges = optional(fallbacks, "activation ranges", {}, _tensor_ranges, prepared, floor, samples, options, report,
                      logits)
    if learned is not None:
        ranges = {name: (low, high, low, high) for name, (low, high) in learned.layers.items()}
    which = "holdout" if cset.holdout else "calib"
    with staging.staged_directory(output_dir, options.overwrite, inputs) as work:
        report("save the folded model", 0, 1)
        save_keras(folded, work / FOLDED_FILE)
        if equalization:
            save_keras(equalized, work / EQUALIZED_FILE)
        if dither:
            save_keras(prepared, work / DITHERED_FILE)
        warnings: list[str] = []
        rounds = Rounds(folded, head, prepared, floor, ranges, batches, samples, which, options, report, fallbacks,
                        learned.input if learned is not None else _pixel_range(preprocessing) if options.io == "uint8"
                        else None)
        built = rounds.within_budget(work, warnings)
        artifacts, drift, refinement, settings, keep = (built.artifacts, built.drift, built.refinement, built.settings,
                                                        list(built.keep))
        warnings += sanity.int8_files(drift)
        if options.metadata:
            artifacts = tflite_metadata.embed_in_build(work, artifacts, loaded.model.name, preprocessing, labels)
        mixed_report = mixed.describe(model_costs(folded), keep, options.max_disagreement, drift,
                                      "int16" if options.precision == "mixed" else "float") \
            if keep or options.max_disagreement is not None else None
        artifacts = tuple(manifest.describe(work, a) for a in artifacts)
        fallbacks += [Fallback(layer, "refinement", why) for layer, why in (refinement.fallbacks if refinement else ())]
        fallbacks += [Fallback(**f) for a in artifacts for f in a.details.get("fallbacks", ())]
        fallbacks = list(dict.fromkeys(fallbacks))  # the same fallback in both int8 files: once
        report("write the manifest", 0, 1)
        stages = report.stages()  # every step's seconds; writing the manifest itself takes milliseconds
        manifest.write(work, Manifest(
            created_by="mobiledeploy quantize",
            model=ModelSource(str(model_path), manifest.sha256(Path(model_path)) if Path(model_path).is_file() else None,
                              loaded.source_format, loaded.saved_by, loaded.trusted, loaded.model.name,
                              (None, *loaded.model.inputs[0].shape[1:]), (None, *loaded.model.outputs[0].shape[1:])),
            preprocessing=preprocessing, head=head.kind, files=artifacts, fallbacks=tuple(fallbacks),
            records={
                "input_scaling": scaling.to_dict(),
                "calibration": cset.summary(),
                "settings": {**options.to_dict(), "export": settings.to_dict()},
                "folding": fold.to_dict(),
                "equalization": _reference_entry(work, equalization, EQUALIZED_FILE),
                "dither": _reference_entry(work, dither, DITHERED_FILE),
                "refinement": {k: v for k, v in refinement.to_dict().items() if k != "seconds"} if refinement else None,
                "logit_floor": floor.to_dict() if floor else None,
                "activation_ranges": {name: {"range": [low, high], "calibrated": [cal_low, cal_high]}
                                      for name, (low, high, cal_low, cal_high) in ranges.items()} or None,
                "mixed_precision": mixed_report.to_dict() if mixed_report else None,
                "quantization_aware": learned.to_dict() if learned is not None else None,
                "drift": {"measured_on": which, "rows": [d.to_dict() for d in drift]},
                "versions": manifest.library_versions(),
                manifest.TIMINGS: {"stages": stage_records(stages),
                                   "total_seconds": round(time.perf_counter() - started, 3)},
            }))
    return QuantizeResult(str(output_dir), artifacts, fold, cset, drift, time.perf_counter() - started, refinement,
                          equalization, mixed_report, floor, scaling, head,
                          tuple((name, *r) for name, r in sorted(ranges.items())), dither, tuple(fallbacks),
                          tuple(warnings), stages, learned.to_dict() if learned is not None else None)


def _reference_entry(work: Path, stage_report, file: str) -> dict | None:
    """What a stage that rewrote the float model's channels did, and the float model it wrote,
    which analyze compares the int8 tensors with (checked like the artifacts, but not one: eval
    and bench leave it alone)."""
    if stage_report is None:
        return None
    entry = {k: v for k, v in stage_report.to_dict().items() if k != "seconds"}
    entry["reference"] = manifest.describe(work, Artifact(file, "keras", "float32")).to_dict()
    return entry


def _labels(model, options: QuantizeOptions) -> tuple[str, ...]:
    """The class names the metadata embeds (``--labels``), one per model output, or none."""
    if options.labels is None:
        return ()
    if not options.metadata:
        raise MobiledeployError("--labels names the classes in the TFLite metadata; add --metadata")
    names = tuple(datasets.class_names(options.labels))
    classes = int(model.outputs[0].shape[-1])
    if len(names) != classes:
        raise MobiledeployError(f"--labels {options.labels}: {len(names)} class names, but the model has {classes} "
                                "outputs; expected one name per output, in output order")
    return names


def _quantization_aware(options: QuantizeOptions) -> QuantizeOptions:
    """A quantization-aware trained model's settings: its trained weights as they are (no
    refinement) and its learned ranges (none narrowed or floored, no copies); int8 only, the
    precision it trained for."""
    if options.precision != "int8":
        raise MobiledeployError(f"the model was trained for int8 (quantization-aware); --precision {options.precision} "
                                "would not use what it learned: drop --precision")
    return replace(options, refine="none", dither="off", logit_floor="off", activation_ranges="minmax", equalize="off")


def _pixel_range(preprocessing) -> tuple[float, float]:
    """What the pixel scaling makes of 0 and 255: the input range of a file that takes camera pixels."""
    import numpy as np

    low, high = calibration.scale(np.array([0.0, 255.0], np.float32), preprocessing)
    return float(low), float(high)


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


def _input_scaling(model, cset, options: QuantizeOptions, report: Progress):
    """The pixel scaling the model's first BatchNorm statistics point to (input_scaling.py),
    read on the first calibration samples before any scaling."""
    import numpy as np

    report("check the input scaling", 0, 1)
    unscaled = replace(cset, preprocessing=replace(cset.preprocessing, scaling="raw"))
    pixels = np.concatenate(list(calibration.first_samples(calibration.iter_batches(unscaled, "calib", 16), SAMPLES)))
    return read_scaling(model, pixels, options.preprocess, fallback=cset.preprocessing.scaling)  # auto's old rule


def _equalize(folded, samples, options: QuantizeOptions, report: Progress):
    """Cross-layer equalization for per-tensor weights ('auto'), or as asked."""
    if options.equalize == "off" or (options.equalize == "auto" and options.per_channel):
        return folded, None
    report("cross-layer equalization", 0, 1)
    return equalize(folded, samples())


def _dither(model, samples, options: QuantizeOptions, report: Progress):
    """Dithered copies of the first convolution's linear channels: 'spare' puts them only into
    channels the model cannot use (same layer shapes, same work), 'auto' appends channels to
    thin first layers instead (free on x86-64), 'on' to any; 'off' leaves the model as it is. Not with
    one weight scale per tensor unless 'on': the divided 1x1 weights of a channel's copies then
    round on the whole layer's coarse grid (measured 12.5 vs 12.7 dB on the shared MobileNet's
    --per-tensor TFLite file)."""
    if options.dither == "off" or (options.dither != "on" and not options.per_channel):
        return model, None
    report("dither the first layer", 0, 1)
    return dither_first_layer(model, samples(), AUTO_MAX_CHANNELS if options.dither == "auto" else None,
                              grow=options.dither != "spare")


def _logit_floor(model, samples, options: QuantizeOptions, report: Progress, logits: dict):
    """The floor under the softmax's logits for the int8 files ('auto'), or None; ``logits``
    receives the logits it read (``floor_logits``)."""
    if options.logit_floor == "off":
        return None
    report("floor the softmax's logits", 0, 1)
    return floor_logits(model, samples(), read=logits)


def _tensor_ranges(model, floor, samples, options: QuantizeOptions, report: Progress, logits: dict) -> dict:
    """With --activation-ranges auto or mse, the narrower int8 ranges of the tensors no ReLU bounds
    (the floor's ``logits`` reused when no floor changed them)."""
    if options.activation_ranges == "minmax":
        return {}
    report("choose int8 ranges", 0, 1)
    return mse_ranges(floored(model, floor), samples(), known=None if floor else logits)
