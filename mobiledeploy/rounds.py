"""A build's rounds: refine the prepared model, export the four files and measure the int8 files'
drift (``Rounds.build``); and ``--max-disagreement``'s search over such rounds (``Rounds.within_budget``):
while an int8 file is over budget, build again with the layer whose output loses the most SQNR
out of int8, up to ``mixed.MAX_FLOAT_LAYERS`` layers. The round's refinement measures that loss
on its own simulation of the int8 files; without a refinement, the round's files are analyzed
(``mobiledeploy analyze``). The rounds share what does not change between them: the
float files, the float model's outputs on the held-out images, the decoded images and the rounding
of the layers before the first one taken out of int8 (refine.py).
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
from .options import ACTIVATION_BITS, ExportSettings, Progress, QuantizeOptions
from .passes import mixed, refine
from .passes.logit_floor import floored
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
    reference: Any = None  # the folded model's outputs on the drift's images, run once

    def within_budget(self, work: Path, warnings: list[str]) -> Round:
        """The rounds in ``work``, the last one's files kept; one round without --max-disagreement.
        What the first round's float outputs say about the model goes to ``warnings``."""
        options = self.options
        keep = tuple(dict.fromkeys(options.keep_float))
        built = self.build(work, keep, warnings)
        while options.max_disagreement is not None and not self._met(built) \
                and len(keep) < len(options.keep_float) + mixed.MAX_FLOAT_LAYERS:
            where = "with 16-bit activations" if options.precision == "mixed" else "in float"
            self.report(f"mixed precision: find the layer that loses most ({len(keep) + 1} {where})", 0, 1)
            candidate = mixed.most_sensitive(dict(built.lost_db) or self._analyzed(work, built), keep)
            if candidate is None:
                break
            keep += (candidate,)
            built = self.build(work, keep)
        return built

    def _analyzed(self, work: Path, built: Round) -> dict[str, float]:
        """What each weighted layer's output loses in the round's int8 files, analyzed."""
        int8_files = {a.file: (work / a.file, a.details.get("tensor_map", {})) for a in built.artifacts if a.quantized}
        per_layer = optional(self.fallbacks, "mixed precision search", {}, analyze.analyze,
                             floored(self.prepared, self.floor), int8_files, self.batches(self.which))
        return mixed.summed_lost_db(per_layer)

    def _met(self, result: Round) -> bool:
        return mixed.worst_loss(result.drift) <= self.options.max_disagreement

    def build(self, directory: Path, keep: tuple[str, ...], warnings: list[str] | None = None) -> Round:
        """Refine with ``keep`` out of int8 (into float, or with --precision mixed into 16-bit
        activations), export and measure, into ``directory``. The float files only with
        ``warnings`` (the first round), which gets what the float outputs say about the model."""
        options = self.options
        # a kept layer's output (and the weightless layers after it) leaves int8: float, or 16 bits
        left = mixed.float_layers(self.folded, keep)
        wide = left if options.precision == "mixed" else frozenset()
        float_layers = frozenset() if wide else left
        int8_ranges = {name: r[:2] for name, r in self.ranges.items() if name not in left}
        errors = {} if options.max_disagreement is not None else None  # what the search reads
        refined, refinement = optional(self.fallbacks, "refinement", (self.prepared, None), self._refine,
                                       frozenset() if wide else frozenset(keep), int8_ranges, wide, errors)
        settings = ExportSettings(precision=options.precision, io=options.io, input_range=self.input_range,
                                  onnx_activations=options.onnx_activations, per_channel=options.per_channel,
                                  float_layers=tuple(sorted(float_layers)), int16_layers=tuple(sorted(wide)),
                                  tensor_ranges=tuple((name, *r) for name, r in sorted(int8_ranges.items())))
        artifacts, drift = self._export_and_measure(directory, floored(refined, self.floor), settings, warnings)
        lost = mixed.lost_db(errors, self.prepared) if errors and refinement is not None else {}
        return Round(artifacts, drift, refinement, settings, keep, tuple(lost.items()))

    def _refine(self, keep_float: frozenset[str], ranges: dict[str, tuple[float, float]],
                sixteen_bit: frozenset[str], errors: dict | None):
        """The model the exporters see: the prepared model, refined for int8 unless refine='none'."""
        options = self.options
        if options.refine == "none":
            return self.prepared, None
        method = "adaptive rounding + bias correction" if options.refine == "adaround" else "bias correction"
        step = f"refine: {method}"
        return refine.refine_for_int8(
            self.prepared, self.samples(), progress=lambda done, total: self.report(step, done, total),
            adaptive_rounding=options.refine == "adaround", rounding_samples=options.rounding_samples,
            positions_per_weight=options.rounding_positions_per_weight,
            clip_activations=options.activation_ranges == "mse", per_channel=options.per_channel,
            keep_float=keep_float, ranges=ranges, activation_bits=ACTIVATION_BITS[options.precision],
            sixteen_bit=sixteen_bit, rounding_cache=self.rounding_cache, errors=errors,
        )

    def _export_and_measure(self, directory: Path, int8_model, settings: ExportSettings,
                            warnings: list[str] | None) -> tuple[tuple[Artifact, ...], tuple[Drift, ...]]:
        """Write the TFLite/ONNX files to ``directory`` (the int8 files only, but for the first
        round: later rounds' float files would be the same); the int8 files' drift against the
        folded model, their outputs read as ``head`` says."""
        write_float = warnings is not None
        self.report("export TFLite", 0, 1)
        artifacts = [keras_artifact()]
        artifacts += tflite_export.export(self.folded, self.batches, directory, settings, int8_model, write_float)
        self.report("export ONNX", 0, 1)
        artifacts += onnx_export.export(self.folded, self.batches, directory, settings, int8_model, write_float)
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
        drift = tuple(evaluate.drift(name, self.reference, out, self.head) for name, out in outputs.items())
        return tuple(artifacts), drift


def keras_artifact() -> Artifact:
    return Artifact(FOLDED_FILE, "keras", "float32", details={"runtime": "Keras", "batchnorm_folded": True})
