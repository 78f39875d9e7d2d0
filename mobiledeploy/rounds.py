"""A build's rounds: refine the prepared model, export the four files and measure the int8 files'
drift (``Rounds.build``); and ``--max-disagreement``'s search over such rounds for the fewest
layers out of int8 (``Rounds.within_budget``).

The search builds full int8 first. Over budget, it analyzes that build once (``mobiledeploy
analyze``: the SQNR each weighted layer's output loses in the int8 files), ranks the layers by it
(``mixed.ranked``) and tries the top ones out of int8: all ``mixed.MAX_FLOAT_LAYERS`` first, so a
budget out of reach costs one more build, then as few as ``mixed.fewest`` finds. Each trial
builds into a folder of its own; the chosen trial's int8 files replace the first round's. The
trials share what does not change between them: the float files, the float model's outputs on
the held-out images and the rounding of the layers before the first one taken out of int8
(refine.py).
"""

from __future__ import annotations

import shutil
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
TRIALS = ".search"  # the search's trial builds, each in a folder named by its count; removed after it


@dataclass(frozen=True)
class Round:
    """One build's files (described, not yet hashed), their drift and how they were made."""

    artifacts: tuple[Artifact, ...]
    drift: tuple[Drift, ...]
    refinement: RefineReport | None
    settings: ExportSettings
    keep: tuple[str, ...]


def optional(fallbacks: list[Fallback], setting: str, plain, stage, *args):
    """``stage(*args)``, or ``plain`` when it fails: an optional refinement never fails a build.
    The failure goes to ``fallbacks`` (the terminal and the manifest show it)."""
    try:
        return stage(*args)
    except Exception as exc:  # noqa: BLE001 - any failure of an optional stage; SIGTERM and Ctrl-C still stop
        fallbacks.append(Fallback("(model)", setting, f"{type(exc).__name__}: {first_line(exc)}; used the plain setting"))
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
    reference: dict = field(default_factory=dict)  # the folded model's outputs on the drift's images, run once

    def within_budget(self, work: Path, warnings: list[str]) -> Round:
        """The first round in ``work``; with ``--max-disagreement`` and a file over it, the round of
        the search's choice, its int8 files moved into ``work``. What the first round's float outputs
        say about the model goes to ``warnings``."""
        options = self.options
        keep = tuple(dict.fromkeys(options.keep_float))
        first = self.build(work, keep, warnings)
        if options.max_disagreement is None or self._met(first):
            return first
        self.report("mixed precision: rank the layers by the SQNR they lose", 0, 1)
        int8_files = {a.file: (work / a.file, a.details.get("tensor_map", {})) for a in first.artifacts if a.quantized}
        per_layer = optional(self.fallbacks, "mixed precision search", {}, analyze.analyze,
                             floored(self.prepared, self.floor), int8_files, self.batches(self.which))
        ranking = mixed.ranked(per_layer, keep)[:mixed.MAX_FLOAT_LAYERS]
        trials: dict[int, Round] = {}
        where = "with 16-bit activations" if options.precision == "mixed" else "in float"

        def met(count: int) -> bool:
            self.report(f"mixed precision: try {count} layer{'s' if count > 1 else ''} {where}", 0, 1)
            directory = work / TRIALS / str(count)
            directory.mkdir(parents=True)
            trials[count] = self.build(directory, keep + tuple(ranking[:count]))
            return self._met(trials[count])

        count = mixed.fewest(len(ranking), met)
        if not trials:
            return first
        chosen = count if count is not None else len(ranking)
        for artifact in trials[chosen].artifacts:
            if artifact.quantized:
                (work / TRIALS / str(chosen) / artifact.file).replace(work / artifact.file)
        shutil.rmtree(work / TRIALS)
        return trials[chosen]

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
        refined, refinement = optional(self.fallbacks, "refinement", (self.prepared, None), self._refine,
                                       frozenset() if wide else frozenset(keep), int8_ranges, wide)
        settings = ExportSettings(precision=options.precision, io=options.io, input_range=self.input_range,
                                  onnx_activations=options.onnx_activations, per_channel=options.per_channel,
                                  float_layers=tuple(sorted(float_layers)), int16_layers=tuple(sorted(wide)),
                                  tensor_ranges=tuple((name, *r) for name, r in sorted(int8_ranges.items())))
        artifacts, drift = self._export_and_measure(directory, floored(refined, self.floor), settings, warnings)
        return Round(artifacts, drift, refinement, settings, keep)

    def _refine(self, keep_float: frozenset[str], ranges: dict[str, tuple[float, float]],
                sixteen_bit: frozenset[str]):
        """The model the exporters see: the prepared model, refined for int8 unless refine='none'."""
        options = self.options
        if options.refine == "none":
            return self.prepared, None
        step = "refine: " + ("adaptive rounding + bias correction" if options.refine == "adaround" else "bias correction")
        return refine.refine_for_int8(
            self.prepared, self.samples(), progress=lambda done, total: self.report(step, done, total),
            adaptive_rounding=options.refine == "adaround", rounding_samples=options.rounding_samples,
            positions_per_weight=options.rounding_positions_per_weight,
            clip_activations=options.activation_ranges == "mse", per_channel=options.per_channel,
            keep_float=keep_float, ranges=ranges, activation_bits=ACTIVATION_BITS[options.precision],
            sixteen_bit=sixteen_bit, rounding_cache=self.rounding_cache,
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
        if not self.reference:
            runners[FOLDED_FILE] = KerasRunner(self.folded)
        outputs = evaluate.collect(runners, self.batches(self.which))
        self.reference.setdefault("outputs", outputs.pop(FOLDED_FILE, None))
        reference = self.reference["outputs"]
        if warnings is not None:
            images = "held-out" if self.which == "holdout" else "calibration"
            warnings += sanity.float_model(reference, self.head, f"{images} images")
        return tuple(artifacts), tuple(evaluate.drift(name, reference, out, self.head) for name, out in outputs.items())


def keras_artifact() -> Artifact:
    return Artifact(FOLDED_FILE, "keras", "float32", details={"runtime": "Keras", "batchnorm_folded": True})
