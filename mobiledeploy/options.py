"""Every option object the stages take, in one place: the CLI and the Python API build the same
ones, so defaults live here and nowhere else. Unknown settings are errors (dataclasses)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable, Literal


IoType = Literal["int8", "uint8", "float"]
# what the quantized files hold: int8 weights and activations (the default); int8 weights with 16-bit
# activations; int8 with 16-bit activations where int8 hurts most (a budget decides how many layers);
# float16 weights; int8 weights with float activations (no calibration ranges in the file)
PRECISIONS = ("int8", "int16x8", "mixed", "float16", "dynamic")
# the precisions whose files hold quantized weights alone: no calibration ranges in them
WEIGHT_ONLY = ("float16", "dynamic")
# the activation bits each precision computes with (None: float activations)
ACTIVATION_BITS = {"int8": 8, "int16x8": 16, "mixed": 8, "float16": None, "dynamic": None}
# --precision mixed without --max-disagreement: points of top-1 agreement with float its files may lose
MIXED_BUDGET = 1.0
# progress(step, done, total): the CLI draws it; the library stays silent without it.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class QuantizeOptions:
    """Every setting of ``mobiledeploy quantize``; written, resolved, into the manifest."""

    precision: str = "int8"  # one of PRECISIONS
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
    # percent of held-out images on which an int8 file may disagree with float's class: more layers
    # stay in float until both files are within it (mixed precision); None: no budget
    max_disagreement: float | None = None
    head: str = "auto"  # auto (read off the model's last activation) | a Head kind: how outputs become classes
    metadata: bool = False  # embed TFLite metadata (input normalization, image size, labels) in the .tflite files
    labels: str | None = None  # the class names for the metadata: a labels file, or an eval folder's class folders
    fold_tolerance: float = 1e-4
    batch_size: int = 16
    trust_model_code: bool = False
    overwrite: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved(self) -> QuantizeOptions:
        """The options each stage runs with: the refinements made for int8 activations (dithered
        copies, the logit floor, narrowed ranges) apply to the precisions with int8 activations
        (int8, mixed); int8 I/O to int8 only; float16 weights have no int8 grid to round to, so
        nothing is refined; mixed has a budget (``MIXED_BUDGET`` unless one is given)."""
        if self.precision == "int8":
            return self
        if self.precision == "mixed":  # int8 with some layers' activations in 16 bits: the int8 refinements stay
            return replace(self, io="float", max_disagreement=MIXED_BUDGET if self.max_disagreement is None
                           else self.max_disagreement)
        return replace(self, io="float", dither="off", logit_floor="off", activation_ranges="minmax",
                       refine="none" if self.precision == "float16" else self.refine)


@dataclass(frozen=True)
class ExportSettings:
    """What the exporters are asked to produce. Unknown keys are errors (a dataclass)."""

    precision: str = "int8"  # of the quantized files: one of PRECISIONS
    io: IoType = "int8"  # int8 I/O for the TFLite int8 file (ONNX QDQ keeps float I/O); uint8: camera pixels in
    # the int8 range of the model's input instead of its calibrated one: what the pixel scaling gives
    # 0..255 (io uint8: the input codes are then the pixels), or a quantization-aware model's learned one
    input_range: tuple[float, float] | None = None
    onnx_activations: str = "int8"  # the int8 ONNX file's activation type: int8 | uint8 (weights stay int8)
    per_channel: bool = True  # per-tensor collapses MobileNets; only for accelerators that need it
    opset: int = 17
    float_layers: tuple[str, ...] = ()  # Keras layers whose operators stay float (mixed precision)
    int16_layers: tuple[str, ...] = ()  # Keras layers whose outputs are 16-bit (--precision mixed)
    # (layer, low, high): int8 ranges that replace the calibration min/max of these layers' outputs
    tensor_ranges: tuple[tuple[str, float, float], ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BenchSettings:
    """``mobiledeploy bench``: the conventions of TFLite benchmark_model and OpenVINO benchmark_app."""

    num_threads: int | None = None  # None: the runtime's default (all cores)
    warmup_runs: int = 5
    num_runs: int = 50  # at least this many timed runs ...
    min_secs: float = 1.0  # ... and at least this long,
    max_secs: float = 150.0  # but stop after this long
    batch_size: int = 1  # images per inference
    profile: bool = False
    top_ops: int = 10
    seed: int = 0  # of the random inputs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_device(cls, device: str, warmup_runs: int | None = None, num_runs: int | None = None,
                   min_secs: float | None = None, **given) -> "BenchSettings":
        """The settings for ``device``, with the run counts it needs by default: an emulated ARM CPU
        runs 100-500x slower, so it warms up once and times 10 runs (and no minimum time) where this
        machine (and a real board over SSH) warms up 5 times and times 50 runs for at least a second."""
        emulated = device.startswith("arm")
        return cls(warmup_runs=warmup_runs if warmup_runs is not None else (1 if emulated else 5),
                   num_runs=num_runs if num_runs is not None else (10 if emulated else 50),
                   min_secs=min_secs if min_secs is not None else (0.0 if emulated else 1.0), **given)


@dataclass(frozen=True)
class GateRules:
    max_drop: float = 1.0  # int8 top-1 may be at most this many points below float
    min_agreement: float = 0.90  # fraction of samples where int8 top-1 == float top-1
    tolerance: float = 0.5  # points a baseline accuracy/agreement may regress, or trail a compared file
    sqnr_tolerance: float = 1.0  # dB the baseline SQNR may regress


# Named starting points for quantize (``--preset``); options given beside a preset override it.
PRESETS: dict[str, QuantizeOptions] = {
    # every refinement: the int8 files closest to float (docs/quantization.md)
    "default": QuantizeOptions(),
    # what the converters give alone: no refinement, no logit floor, calibration min/max, no copies
    "plain": QuantizeOptions(refine="none", logit_floor="off", activation_ranges="minmax", dither="off"),
}
