"""A build's rounds: refine the prepared model, export the four files and measure the int8 files'
drift (``Rounds.build``); and ``--max-disagreement``'s search over such rounds (``Rounds.within_budget``):
while an int8 file is over budget, build again with the layer whose output loses the most SQNR
out of int8, up to ``mixed.MAX_FLOAT_LAYERS`` layers. The round's refinement measures that loss
on its own simulation of the int8 files; without a refinement, the round's files are analyzed
(``mobiledeploy analyze``). The rounds share what does not change between them: the
float files, the float model's outputs on the held-out images, the decoded images, and the rounding
of the layers before the first one taken out of int8 (refine.py) and the refinement's state at
its input (checkpoints.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import first_line
from .evaluation import layers as analyze
from .evaluation import metrics as evaluate
from .evaluation import sanity
from .export import onnx as onnx_export
from .export import tflite as tflite_export
from .export.onnx_calibration import Calibrations
from .export.onnx_template import Reconverter
from .options import ACTIVATION_BITS, ExportSettings, Progress, QuantizeOptions
from .passes import mixed, refine
from .passes.checkpoints import Checkpoints
from .passes.logit_floor import FlooredCopies, floored
from .reports import Artifact, Drift, Fallback, RefineReport
from .runtime.runners import KerasRunner, open_runner

FOLDED_FILE = "model_folded.keras"


@dataclass(frozen=True)
class Round:
    """One build's files (described, not yet hashed), their drift and how they were made."""

    artifacts: tuple[Artifact, ...]
    drift: tuple[Drift, ...]
    refinement: RefineReport | None
    settings: ExportSettings
    keep: tuple[str, ...]
    lost_db: tuple[tuple[str, float], ...] = ()  # per weighted layer, from the refinement (mixed.lost_db)


def optional(fallbacks: list[Fallback], setting: str, plain, stage, *args):
    """``stage(*args)``, or ``plain`` when it fails: an optional refinement never fails a build.
    The failure goes to ``fallbacks`` (the terminal and the manifest show it)."""
    try:
        return stage(*args)
    except Exception as exc:  # noqa: BLE001 - any failure of an optional stage; SIGTERM and Ctrl-C still stop
        why = f"{type(exc).__name__}: {first_line(exc)}; used the plain setting"
        fallbacks.append(Fallback("(model)", setting, why))
        return plain


@dataclass
class Rounds:
    """What every round of one build reads: the folded model (the float files and the drift's
    reference), the prepared one (what refinement starts from), the logit floor, the narrowed ranges,
    the images (``batches(which)`` decodes a set, ``samples()`` the refinement's, decoded once)."""

    folded: Any
    head: Any
    prepared: Any
    floor: Any
    ranges: dict
    batches: Callable
    samples: Callable
    which: str
    options: QuantizeOptions
    report: Progress
    fallbacks: list[Fallback]
    input_range: tuple[float, float] | None
    rounding_cache: dict = field(default_factory=dict)  # a layer's rounding, fitted once for the settings before it
    checkpoints: Checkpoints = field(default_factory=Checkpoints)  # where the search's next refinement starts
    reconverter: Reconverter = field(default_factory=Reconverter)  # the rounds' int8 graph, tf2onnx'd once
    calibrations: Calibrations = field(default_factory=Calibrations)  # its ranges, calibrated once per tensor
    refined: Any = None  # the last round's refined model, which the next refines again instead of a new copy
    floored: FlooredCopies = field(default_factory=FlooredCopies)  # its copy with the floor, refilled each round
    reference: Any = None  # the folded model's outputs on the drift's images, run once

    def within_budget(self, work: Path, warnings: list[str]) -> Round:
        """The rounds in ``work``, the last one's files kept; one round without --max-disagreement.
        What the first round's float outputs say about the model goes to ``warnings``."""
        options = self.options
        keep = tuple(dict.fromkeys(options.keep_float))
        limit = len(keep) + mixed.MAX_FLOAT_LAYERS
        built = self.build(work, keep, limit, warnings)
        while options.max_disagreement is not None and not self._met(built.drift) and len(keep) < limit:
            where = "with 16-bit activations" if options.precision == "mixed" else "in float"
            self.report(f"mixed precision: find the layer that loses most ({len(keep) + 1} {where})", 0, 1)
            candidate = mixed.most_sensitive(dict(built.lost_db) or self._analyzed(work, built), keep)
            if candidate is None:
                break
            keep += (candidate,)
            built = self.build(work, keep, limit)
        self.checkpoints.clear()  # up to limits.MAX_CHECKPOINT_BYTES of activations
        self.calibrations.clear()  # and up to a quarter of that in ONNX tensors
        return built

    def _analyzed(self, work: Path, built: Round) -> dict[str, float]:
        """What each weighted layer's output loses in the round's int8 files, analyzed."""
        int8_files = {a.file: (work / a.file, a.details.get("tensor_map", {})) for a in built.artifacts if a.quantized}
        per_layer = optional(self.fallbacks, "mixed precision search", {}, analyze.analyze,
                             floored(self.prepared, self.floor), int8_files, self.batches(self.which))
        return mixed.summed_lost_db(per_layer)

    def _met(self, drift: tuple[Drift, ...]) -> bool:
        return mixed.worst_loss(drift) <= self.options.max_disagreement

    def build(self, directory: Path, keep: tuple[str, ...], limit: int, warnings: list[str] | None = None) -> Round:
        """Refine with ``keep`` out of int8 (into float, or with --precision mixed into 16-bit
        activations), export and measure, into ``directory``. The float files only with
        ``warnings`` (the first round), which gets what the float outputs say about the model.
        A round of a search with another round to come (fewer than ``limit`` layers kept, and a
        layer left to take) writes its ONNX files first, and its int8 TFLite file only if the ONNX
        file meets the budget: a round with one file over budget is not the search's last."""
        options = self.options
        left = self._left(keep)
        wide = left["sixteen_bit"]
        int8_ranges = {name: r[:2] for name, r in self.ranges.items() if name not in wide | left["float_tensors"]}
        errors = {} if options.max_disagreement is not None else None  # what the search reads
        refined, refinement = optional(self.fallbacks, "refinement", (self.prepared, None), self._refine,
                                       int8_ranges, left, errors)
        lost = mixed.lost_db(errors, self.prepared) if errors and refinement is not None else {}
        settings = ExportSettings(precision=options.precision, io=options.io, input_range=self.input_range,
                                  onnx_activations=options.onnx_activations, per_channel=options.per_channel,
                                  float_layers=tuple(sorted(left["float_tensors"])), int16_layers=tuple(sorted(wide)),
                                  tensor_ranges=tuple((name, *r) for name, r in sorted(int8_ranges.items())))
        following = mixed.most_sensitive(lost, keep) if len(keep) < limit else None  # the next round's layer
        artifacts, drift = self._export_and_measure(directory, self.floored.of(refined, self.floor), settings, warnings,
                                                    following)
        return Round(artifacts, drift, refinement, settings, keep, tuple(lost.items()))

    def _left(self, keep: tuple[str, ...]) -> dict[str, frozenset[str]]:
        """How ``keep`` leaves int8, as ``refine`` takes it: the kept layers' float weights and the
        tensors that stay float after them, or (--precision mixed) those tensors in 16 bits (the
        kept layers' output, and the weightless layers' after it: ``mixed.float_layers``)."""
        left = mixed.float_layers(self.folded, keep)
        if self.options.precision == "mixed":
            return {"keep_float": frozenset(), "sixteen_bit": left, "float_tensors": frozenset()}
        return {"keep_float": frozenset(keep), "sixteen_bit": frozenset(), "float_tensors": left}

    def _refine(self, ranges: dict[str, tuple[float, float]], left: dict[str, frozenset[str]],
                errors: dict | None):
        """The model the exporters see: the prepared model, refined for int8 unless refine='none'."""
        options = self.options
        if options.refine == "none":
            return self.prepared, None
        method = "adaptive rounding + bias correction" if options.refine == "adaround" else "bias correction"
        step = f"refine: {method}"
        refined, report = refine.refine_for_int8(
            self.prepared, self.samples(), progress=lambda done, total: self.report(step, done, total),
            adaptive_rounding=options.refine == "adaround", rounding_samples=options.rounding_samples,
            positions_per_weight=options.rounding_positions_per_weight,
            clip_activations=options.activation_ranges == "mse", per_channel=options.per_channel,
            ranges=ranges, activation_bits=ACTIVATION_BITS[options.precision], rounding_cache=self.rounding_cache,
            errors=errors, checkpoints=self.checkpoints if options.max_disagreement is not None else None,
            into=self.refined, **left,
        )
        self.refined = refined
        return refined, report

    def _export_and_measure(self, directory: Path, int8_model, settings: ExportSettings, warnings: list[str] | None,
                            following: str | None = None) -> tuple[tuple[Artifact, ...], tuple[Drift, ...]]:
        """Write the TFLite/ONNX files to ``directory`` (the int8 files only, but for the first
        round: later rounds' float files would be the same); the int8 files' drift against the
        folded model, their outputs read as ``head`` says. ``following``: the layer another round
        takes if a file misses the budget; the ONNX files (the faster to write) go first, and the int8
        TFLite file only if the ONNX file meets the budget (the float one is written either way in the
        first round). Either way the files are listed TFLite first."""
        write_float, more = warnings is not None, following is not None
        exporters = {"TFLite": tflite_export, "ONNX": onnx_export}
        written: dict[str, list[Artifact]] = {}
        drift: dict[str, tuple[Drift, ...]] = {}
        for name in ("ONNX", "TFLite") if more else ("TFLite", "ONNX"):
            self.report(f"export {name}", 0, 1)
            search = name == "ONNX" and self.options.max_disagreement is not None
            converted = {"reconverter": self.reconverter, "calibrations": self.calibrations, "following": following} \
                if search else {}  # the rounds' graph with other weights, and the ranges those leave as they were
            written[name] = exporters[name].export(self.folded, self.batches, directory, settings, int8_model,
                                                   write_float, **converted)
            if more:
                drift[name] = self._measure(directory, written[name], None if drift else warnings)
                if not self._met(drift[name]):  # this round is not the last: its other int8 file would change nothing
                    if write_float and name == "ONNX":
                        self.report("export TFLite", 0, 1)
                        tflite_export.export_float(self.folded, directory)
                    break
        artifacts = [keras_artifact(), *written.get("TFLite", ()), *written.get("ONNX", ())]
        if not more:
            return tuple(artifacts), self._measure(directory, artifacts, warnings)
        return tuple(artifacts), (*drift.get("TFLite", ()), *drift.get("ONNX", ()))

    def _measure(self, directory: Path, artifacts: list[Artifact], warnings: list[str] | None) -> tuple[Drift, ...]:
        """The drift of the int8 files among ``artifacts`` (with the float model's outputs, the
        first time, and what they say about the model in ``warnings``)."""
        self.report("measure drift", 0, 1)
        runners = {a.file: open_runner(directory / a.file) for a in artifacts if a.quantized}
        if self.reference is None:
            runners[FOLDED_FILE] = KerasRunner(self.folded)
        outputs = evaluate.collect(runners, self.batches(self.which))
        if self.reference is None:
            self.reference = outputs.pop(FOLDED_FILE)
        if warnings is not None:
            images = "held-out" if self.which == "holdout" else "calibration"
            warnings += sanity.float_model(self.reference, self.head, f"{images} images")
        return tuple(evaluate.drift(name, self.reference, out, self.head) for name, out in outputs.items())


def keras_artifact() -> Artifact:
    return Artifact(FOLDED_FILE, "keras", "float32", details={"runtime": "Keras", "batchnorm_folded": True})
