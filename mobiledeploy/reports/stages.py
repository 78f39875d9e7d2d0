"""What each quantize stage did: folding, the input scaling it read, refinement, equalization, the
first layer's dithered copies, the logit floor, mixed precision, and the drift of the files."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .values import SCALINGS, Artifact, CalibrationSet, Head


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
class Drift:
    """Label-free drift of one artifact's outputs against the float model's outputs."""

    artifact: str
    samples: int
    agreement: float  # fraction of samples whose class (Head.decide) matches the float model's
    sqnr_db: float  # 10 log10(signal power / error power) of the output tensor
    max_abs_diff: float
    agreement_ci95: tuple[float, float] = (float("nan"), float("nan"))  # 95% interval (Wilson score)

    def to_dict(self) -> dict:
        return {**asdict(self), "agreement_ci95": list(self.agreement_ci95)}


@dataclass(frozen=True)
class Fallback:
    """An optional refinement that could not apply to one layer, which got the plain setting
    instead: the build goes on, and the terminal and the manifest say so."""

    layer: str
    setting: str  # what fell back: "activation range", "kept in float", ...
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RefineReport:
    """What refinement of the folded model did before export (recorded in the manifest)."""

    method: str
    layers: int
    samples: int
    max_shift: float  # largest bias change, in output units
    seconds: float
    per_layer: tuple[tuple[str, float], ...] = ()
    clips: tuple[tuple[str, float], ...] = ()  # activation layer -> chosen upper clip
    # too few calibration positions per weight: adaptive rounding checked on held-out folds
    validated: tuple[str, ...] = ()
    rounded_to_nearest: tuple[str, ...] = ()  # of those, where nearest did as well on held-out images
    # (layer, why) where adaptive rounding could not run and the layer was rounded to nearest
    fallbacks: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict:
        return {"method": self.method, "layers": self.layers, "samples": self.samples,
                "max_shift": self.max_shift, "seconds": round(self.seconds, 2),
                "per_layer": dict(self.per_layer), "clips": dict(self.clips),
                "validated": list(self.validated), "rounded_to_nearest": list(self.rounded_to_nearest),
                "fallbacks": dict(self.fallbacks)}


@dataclass(frozen=True)
class EqualizeReport:
    """What cross-layer equalization did (recorded in the manifest)."""

    pairs: int  # conv -> ReLU -> conv pairs equalized
    dead_channels: int  # channels that never turned on in calibration, zeroed
    max_scale: float  # the largest factor any channel was scaled by (up or down)
    seconds: float

    def to_dict(self) -> dict:
        return {"pairs": self.pairs, "dead_channels": self.dead_channels,
                "max_scale": round(self.max_scale, 3), "seconds": round(self.seconds, 2)}


@dataclass(frozen=True)
class DitherReport:
    """The dithered copies of the first convolution's linear channels (dither.py; in the manifest)."""

    layer: str  # the first convolution
    depthwise: str  # the depthwise layer that filters each copy like its channel
    pointwise: str  # the 1x1 conv that reads a channel's k copies with 1/k of the weight each
    channels: tuple[int, ...]  # the channels copied with shifts (linear on the calibration images)
    copies: tuple[int, ...]  # how many copies each of them has in all (k: shifted by j/k of a step)
    duplicates: tuple[int, ...]  # channels copied without a shift, to fill a block of channels
    reused: tuple[int, ...]  # channels the model cannot use (spare) that now hold copies (no added channel)
    of: int  # the first convolution's channels before
    step: float  # the int8 step of its ReLU output
    max_change: float  # largest change of the float model's outputs, relative to max |output|
    added_macs: int  # multiply-adds per image the copies add
    seconds: float

    @property
    def channels_after(self) -> int:
        """The first convolution's channels with the copies."""
        return self.of + sum(self.copies) - len(self.copies) + len(self.duplicates) - len(self.reused)

    @property
    def counts(self) -> str:
        """Each copied channel with its number of copies: "0 x4, 1 x3"."""
        return ", ".join(f"{c} x{k}" for c, k in zip(self.channels, self.copies))

    def to_dict(self) -> dict:
        return {"layer": self.layer, "depthwise": self.depthwise, "pointwise": self.pointwise,
                "channels": list(self.channels), "copies": list(self.copies), "duplicates": list(self.duplicates),
                "reused": list(self.reused), "of": self.of, "step": round(self.step, 6),
                "max_change": float(f"{self.max_change:.3g}"), "added_macs": self.added_macs,
                "seconds": round(self.seconds, 2)}


@dataclass(frozen=True)
class LogitFloorReport:
    """The floor put under the softmax's logits in the int8 files (recorded in the manifest)."""

    layer: str  # the Conv2D/Dense that computes the logits
    split_softmax: bool  # its activation was the softmax, now a layer of its own
    floor: float  # logits below it are raised to it (softmax(max(x, floor)) = softmax(relu(x - floor)))
    calibrated_range: tuple[float, float]  # the logits' range on the calibration images
    step_ratio: float  # how many times finer the int8 step of the logits is
    share_below: float  # share of calibration logits raised to the floor

    def to_dict(self) -> dict:
        return {"layer": self.layer, "split_softmax": self.split_softmax, "floor": round(self.floor, 6),
                "calibrated_range": [round(v, 4) for v in self.calibrated_range],
                "step_ratio": round(self.step_ratio, 3), "share_below": round(self.share_below, 4)}


@dataclass(frozen=True)
class MixedPrecisionReport:
    """Which weighted layers left int8 (to float, or to 16-bit activations with --precision mixed),
    what that costs, and whether the budget was met."""

    max_disagreement: float | None  # the budget: percent of images that may disagree (None: layers named by hand)
    float_layers: tuple[str, ...]  # weighted layers taken out of int8, in the order they were chosen
    float_mac_share: float  # share of the model's multiply-adds those layers do
    agreement_loss: float  # points of top-1 agreement lost by the worst quantized file on held-out images
    met: bool
    kept_in: str = "float"  # what those layers run in: float, or int16 (16-bit activations, --precision mixed)

    def to_dict(self) -> dict:
        return {"max_disagreement": self.max_disagreement, "float_layers": list(self.float_layers),
                "float_mac_share": round(self.float_mac_share, 4), "kept_in": self.kept_in,
                "agreement_loss": round(self.agreement_loss, 2), "met": self.met}


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
    fallbacks: tuple[Fallback, ...] = ()  # optional refinements that fell back, per layer
    warnings: tuple[str, ...] = ()  # results that mean little (evaluation/sanity.py)
    stages: tuple[tuple[str, float], ...] = ()  # (step, seconds) as the progress reported them
    # a quantization-aware trained model: the ranges its training learned (model.qat.LearnedRanges.to_dict())
    quantization_aware: dict | None = None

    @property
    def precision(self) -> str:
        """The quantized files' precision (``--precision``)."""
        return next((a.precision for a in self.artifacts if a.quantized), "float32")

    def to_dict(self) -> dict:
        return {
            "output_dir": self.output_dir,
            "precision": self.precision,
            "warnings": list(self.warnings),
            "fallbacks": [f.to_dict() for f in self.fallbacks],
            "dither": self.dither.to_dict() if self.dither else None,
            "head": self.head.to_dict(),
            "activation_ranges": [list(r) for r in self.activation_ranges],
            "input_scaling": self.input_scaling.to_dict() if self.input_scaling else None,
            "logit_floor": self.logit_floor.to_dict() if self.logit_floor else None,
            "mixed_precision": self.mixed_precision.to_dict() if self.mixed_precision else None,
            "quantization_aware": self.quantization_aware,
            "equalization": self.equalization.to_dict() if self.equalization else None,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "folding": self.fold.to_dict(),
            "refinement": self.refinement.to_dict() if self.refinement else None,
            "calibration": {k: v for k, v in self.calibration.summary().items() if not k.endswith("_items")},
            "drift": [d.to_dict() for d in self.drift],
            "seconds": round(self.seconds, 2),
            "stages": stage_records(self.stages),
        }


def stage_records(stages: tuple[tuple[str, float], ...]) -> list[dict]:
    """Each step's seconds as --json and the manifest's timings give them."""
    return [{"step": step, "seconds": round(seconds, 3)} for step, seconds in stages]
