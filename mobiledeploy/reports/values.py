"""What a build is made of: how images become inputs, which samples calibrated it, what its outputs
mean and which files it holds. Recorded in the manifest; shared by every stage."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Scaling = Literal["mobilenet", "unit", "raw"]


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
class Artifact:
    """One file written to the output folder, as listed in ``manifest.json``."""

    file: str
    format: Literal["keras", "tflite", "onnx"]
    precision: Literal["float32", "int8", "int16x8", "mixed", "float16", "dynamic"]
    sha256: str = ""
    size: int = 0
    details: dict = field(default_factory=dict)

    @property
    def quantized(self) -> bool:
        """A file made for the device (any precision but the float32 reference's)."""
        return self.precision != "float32"

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
