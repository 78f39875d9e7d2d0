"""Frozen dataclasses passed between pipeline stages.

Stages never import each other; they exchange these values, and ``pipeline`` chains them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Literal

from .stage_reports import DitherReport, EqualizeReport, LogitFloorReport, MixedPrecisionReport, RefineReport

Scaling = Literal["mobilenet", "unit", "raw"]
IoType = Literal["int8", "float"]
# progress(step, done, total): the CLI draws it; the library stays silent without it.
Progress = Callable[[str, int, int], None]

SCALINGS: dict[str, str] = {
    "mobilenet": "x / 127.5 - 1 (inputs in [-1, 1]; keras.applications MobileNet v1/v2)",
    "unit": "x / 255 (inputs in [0, 1])",
    "raw": "x unchanged (0..255, or arrays already preprocessed)",
}


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded RGB/greyscale image becomes a model input. Recorded in the manifest."""

    height: int
    width: int
    channels: int
    scaling: Scaling
    crop_fraction: float = 0.875
    scaling_in_model: bool = False  # the model starts with a Rescaling/Normalization layer

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class ScalingReport:
    """Which pixel scaling calibration used, and what the model's first BatchNorm said of it
    (``input_scaling.read_scaling``)."""

    requested: str  # "auto", or the scaling the user named
    chosen: str
    batchnorm: str | None  # the BatchNorm whose statistics were read; None: no BatchNorm after the first conv
    mismatch: tuple[tuple[str, float], ...] = ()  # (scaling, mismatch with the statistics), each candidate
    decisive: bool = False  # one scaling fits the statistics, clearly better than the others

    @property
    def best(self) -> str | None:
        return min(self.mismatch, key=lambda s: s[1])[0] if self.mismatch else None

    @property
    def warning(self) -> str | None:
        """One line for the user when the statistics contradict an explicit --preprocess, or fit
        no scaling at all; else None."""
        scores = dict(self.mismatch)
        if self.decisive and self.requested not in ("auto", self.best):
            return (f"--preprocess {self.requested}, but {self.batchnorm}'s training statistics match "
                    f"{self.best} ({SCALINGS[self.best]}) {scores[self.requested] / max(scores[self.best], 1e-12):.0f}x "
                    f"better; check how the model was trained (--preprocess auto follows the statistics)")
        if self.batchnorm and self.requested == "auto" and not self.decisive:
            return (f"no pixel scaling clearly reproduces {self.batchnorm}'s training statistics (mismatch "
                    + ", ".join(f"{k} {v:.3g}" for k, v in self.mismatch) + f"); used {self.chosen}. If the model "
                    "expects another normalization, scale the images yourself, save them as .npy and pass --preprocess raw")
        return None

    def to_dict(self) -> dict:
        return {"requested": self.requested, "chosen": self.chosen, "batchnorm": self.batchnorm,
                "mismatch": {k: round(v, 4) for k, v in self.mismatch}, "decisive": self.decisive,
                "warning": self.warning}


@dataclass(frozen=True)
class CalibrationSet:
    """A seeded selection of calibration and held-out samples; batches are streamed on demand.

    ``calib`` and ``holdout`` hold file paths (image folders) or row indices (arrays), never
    pixels, so memory does not grow with the size of the source.
    """

    source: str
    kind: Literal["images", "npy", "npz"]
    seed: int
    preprocessing: Preprocessing
    calib: tuple = ()
    holdout: tuple = ()
    candidates: int = 0
    skipped: tuple[tuple[str, str], ...] = ()  # (file, reason)

    def _relative(self, item) -> str:
        prefix = self.source.rstrip("/") + "/"
        return str(item)[len(prefix):] if str(item).startswith(prefix) else str(item)

    def summary(self) -> dict:
        return {
            "source": self.source,
            "kind": self.kind,
            "seed": self.seed,
            "candidates": self.candidates,
            "num_calib": len(self.calib),
            "num_holdout": len(self.holdout),
            "skipped": len(self.skipped),
            "skipped_files": [{"file": f, "reason": r} for f, r in self.skipped[:20]],
            "calib_items": [self._relative(i) for i in self.calib],
            "holdout_items": [self._relative(i) for i in self.holdout],
        }


@dataclass(frozen=True)
class FoldReport:
    """What folding did and the proof that it did not change the model."""

    folded: tuple[tuple[str, str], ...]  # (batchnorm layer, layer it was folded into)
    unfolded: tuple[str, ...]  # BatchNorm layers that could not be folded (reason in name)
    max_abs_diff: float = 0.0
    max_abs_output: float = 0.0
    rel_tolerance: float = 1e-4
    samples: int = 0

    @property
    def rel_diff(self) -> float:
        return self.max_abs_diff / max(self.max_abs_output, 1e-12)

    @property
    def passed(self) -> bool:
        return self.rel_diff <= self.rel_tolerance

    def to_dict(self) -> dict:
        return {
            "folded": [{"batchnorm": b, "into": c} for b, c in self.folded],
            "unfolded": list(self.unfolded),
            "max_abs_diff": self.max_abs_diff,
            "max_abs_output": self.max_abs_output,
            "rel_diff": self.rel_diff,
            "rel_tolerance": self.rel_tolerance,
            "samples": self.samples,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class Artifact:
    """One file written to the output folder, as listed in ``manifest.json``."""

    file: str
    format: Literal["keras", "tflite", "onnx"]
    precision: Literal["float32", "int8"]
    sha256: str = ""
    size: int = 0
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


HEADS: dict[str, str] = {
    "classes": "one output per class; the class is the argmax",
    "sigmoid": "one sigmoid probability; class 1 above 0.5",
    "logit": "one logit; class 1 above 0",
    "labels": "one sigmoid per label (multi-label); a label is on above 0.5; agreement asks every label's "
              "decision to match, top-1 ranks the labels",
    "label-logits": "one logit per label (multi-label); a label is on above 0; agreement asks every label to match",
}


@dataclass(frozen=True)
class Head:
    """What a classifier's output means. Several outputs per image: the argmax is the class. A
    single output (a binary Dense(1) head) scores class 1: argmax over one column would always
    say class 0, so agreement could never fail and a label 1 would be out of range. Several
    sigmoid outputs (multi-label) are one decision per label: two outputs agree only when every
    label's decision does, since the argmax can stay while a second label turns off."""

    kind: Literal["classes", "sigmoid", "logit", "labels", "label-logits"] = "classes"

    @property
    def binary(self) -> bool:
        return self.kind in ("sigmoid", "logit")

    @property
    def multi_label(self) -> bool:
        return self.kind in ("labels", "label-logits")

    @property
    def threshold(self) -> float | None:
        return {"sigmoid": 0.5, "logit": 0.0, "labels": 0.5, "label-logits": 0.0}.get(self.kind)

    def decide(self, outputs):
        """The class each row of ``outputs`` (N, outputs) stands for (multi-label: the top label)."""
        if not self.binary:
            return outputs.argmax(axis=1)
        return (outputs[:, 0] > self.threshold).astype(int)

    def agrees(self, reference, candidate):
        """Per row, whether ``candidate`` makes the same decisions as ``reference``."""
        if self.multi_label:
            return ((reference > self.threshold) == (candidate > self.threshold)).all(axis=1)
        return self.decide(reference) == self.decide(candidate)

    def classes(self, outputs) -> int:
        return 2 if self.binary else outputs.shape[1]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "meaning": HEADS[self.kind]}


@dataclass(frozen=True)
class Drift:
    """Label-free drift of one artifact's outputs against the float model's outputs."""

    artifact: str
    samples: int
    agreement: float  # fraction of samples whose class (Head.decide) matches the float model's
    sqnr_db: float  # 10 log10(signal power / error power) of the output tensor
    max_abs_diff: float

    @property
    def agreement_ci95(self) -> tuple[float, float]:
        """The 95% interval of ``agreement`` on these samples (Wilson score)."""
        from .evaluate import share_interval

        return share_interval(self.agreement, self.samples)

    def to_dict(self) -> dict:
        return {**asdict(self), "agreement_ci95": list(self.agreement_ci95)}


@dataclass(frozen=True)
class ExportSettings:
    """What the exporters are asked to produce. Unknown keys are errors (a dataclass)."""

    io: IoType = "int8"  # int8 I/O for the TFLite int8 file (ONNX QDQ keeps float I/O)
    onnx_activations: str = "int8"  # the int8 ONNX file's activation type: int8 | uint8 (weights stay int8)
    per_channel: bool = True  # per-tensor collapses MobileNets; only for accelerators that need it
    opset: int = 17
    float_layers: tuple[str, ...] = ()  # Keras layers whose operators stay float (mixed precision)
    # (layer, low, high): int8 ranges that replace the calibration min/max of these layers' outputs
    tensor_ranges: tuple[tuple[str, float, float], ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class QuantizeOptions:
    """Every setting of ``mobiledeploy quantize``; written, resolved, into the manifest."""

    num_calib: int = 200
    num_holdout: int = 100
    seed: int = 0
    preprocess: str = "auto"  # auto | mobilenet | unit | raw
    crop_fraction: float = 0.875
    input_size: tuple[int, int] | None = None  # (height, width) for a model saved without a fixed size
    io: IoType = "int8"
    onnx_activations: str = "int8"  # int8 (fuses on ARM) | uint8 (fuses residual Adds on x86-64 too)
    per_channel: bool = True
    refine: str = "adaround"  # adaround (+ bias correction) | bias | none
    equalize: str = "auto"  # auto (with per-tensor weights) | on | off: cross-layer equalization
    activation_ranges: str = "auto"  # auto (narrow the ranges no ReLU bounds where it lowers the error) | minmax | mse
    logit_floor: str = "auto"  # auto (where a softmax follows a linear layer and it lowers the error) | off
    dither: str = "spare"  # spare (copies in unused first-conv channels: no added work) | off | auto (appended: free on x86-64) | on
    rounding_samples: int = 64  # calibration images whose statistics drive adaptive rounding (at least)
    rounding_positions_per_weight: float = 64  # fewer calibration positions per weight: check on held-out images
    keep_float: tuple[str, ...] = ()  # weighted layers to run in float (mixed precision)
    max_drop: float | None = None  # keep more layers in float until the int8 files lose at most this
    head: str = "auto"  # auto (read off the model's last activation) | a Head kind: how outputs become classes
    fold_tolerance: float = 1e-4
    batch_size: int = 16
    trust_model_code: bool = False
    overwrite: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class QuantizeResult:
    """What ``quantize`` produced: the files, the proofs and the drift table."""

    output_dir: str
    artifacts: tuple[Artifact, ...]
    fold: FoldReport
    calibration: CalibrationSet
    drift: tuple[Drift, ...]
    seconds: float
    refinement: RefineReport | None = None
    equalization: EqualizeReport | None = None
    mixed_precision: MixedPrecisionReport | None = None
    logit_floor: LogitFloorReport | None = None
    input_scaling: ScalingReport | None = None
    head: Head = Head()  # how the drift rows' agreement reads the outputs
    # (layer, low, high, calibrated low, calibrated high) for each int8 range narrowed (ranges.py)
    activation_ranges: tuple[tuple[str, float, float, float, float], ...] = ()
    dither: DitherReport | None = None

    def to_dict(self) -> dict:
        return {
            "output_dir": self.output_dir,
            "dither": self.dither.to_dict() if self.dither else None,
            "head": self.head.to_dict(),
            "activation_ranges": [list(r) for r in self.activation_ranges],
            "input_scaling": self.input_scaling.to_dict() if self.input_scaling else None,
            "logit_floor": self.logit_floor.to_dict() if self.logit_floor else None,
            "mixed_precision": self.mixed_precision.to_dict() if self.mixed_precision else None,
            "equalization": self.equalization.to_dict() if self.equalization else None,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "folding": self.fold.to_dict(),
            "refinement": self.refinement.to_dict() if self.refinement else None,
            "calibration": {k: v for k, v in self.calibration.summary().items() if not k.endswith("_items")},
            "drift": [d.to_dict() for d in self.drift],
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class EvalReport:
    """``mobiledeploy eval``: metrics of every artifact against the float model."""

    build_dir: str
    data_source: str
    data_digest: str
    model_sha256: str | None
    samples: int
    labelled: bool
    reference: str  # the artifact every other one is compared with
    rows: tuple[dict, ...]
    preprocessing: dict
    device: str = "cpu"  # where the tflite/onnx artifacts ran; the Keras reference runs on this CPU
    head: str = "classes"  # Head.kind: how outputs became classes for agreement and top-1
    # {artifact: {metric: per-sample hits (bool array)}} of the build's own files: what a baseline
    # stores (packed, evaluate.pack_hits) so that a later check can pair its change sample by sample
    per_sample: dict = field(default_factory=dict)

    def row(self, artifact: str) -> dict:
        return next(r for r in self.rows if r["artifact"] == artifact)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "per_sample"}
