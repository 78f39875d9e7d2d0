"""Frozen dataclasses of what each stage that prepares the model for int8 did: refinement,
equalization, the first layer's dithered copies, the logit floor and mixed precision. The
pipeline records each in the manifest and in ``QuantizeResult``."""

from __future__ import annotations

from dataclasses import dataclass


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

    def to_dict(self) -> dict:
        return {"method": self.method, "layers": self.layers, "samples": self.samples,
                "max_shift": self.max_shift, "seconds": round(self.seconds, 2),
                "per_layer": dict(self.per_layer), "clips": dict(self.clips),
                "validated": list(self.validated), "rounded_to_nearest": list(self.rounded_to_nearest)}


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
    """Which weighted layers stayed in float, what that costs, and whether the budget was met."""

    max_drop: float | None  # the budget, points of top-1 agreement with float (None: layers named by hand)
    float_layers: tuple[str, ...]  # weighted layers kept in float, in the order they were chosen
    float_mac_share: float  # share of the model's multiply-adds that run in float
    agreement_loss: float  # points of top-1 agreement lost by the worst int8 file on held-out images
    met: bool

    def to_dict(self) -> dict:
        return {"max_drop": self.max_drop, "float_layers": list(self.float_layers),
                "float_mac_share": round(self.float_mac_share, 4),
                "agreement_loss": round(self.agreement_loss, 2), "met": self.met}
