"""What eval, check, inspect, bench and analyze found."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..options import BenchSettings


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
    # {artifact: seconds spent running it}: for a JUnit report's times, kept out of the JSON report
    # so that the same build and data give the same report
    seconds: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # results that mean little (evaluation/sanity.py)

    def row(self, artifact: str) -> dict:
        return next(r for r in self.rows if r["artifact"] == artifact)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("per_sample", "seconds")}


@dataclass(frozen=True)
class RuleResult:
    rule: str
    artifact: str
    passed: bool
    value: float
    threshold: float
    message: str
    against: str | None = None  # the compared file of a vs-compared rule
    # the 95% interval of ``value`` that the evaluation samples allow (max-drop, min-agreement,
    # vs-compared: paired image by image); a threshold inside it is a pass or fail that more
    # samples could turn
    interval: tuple[float, float] | None = None
    # of value, threshold and interval: "points" (percentage points of a share's change), "share"
    # (a fraction of the images, 0 to 1) or "dB"
    unit: str = "points"

    @property
    def within_noise(self) -> bool:
        return self.interval is not None and self.interval[0] <= self.threshold <= self.interval[1]


@dataclass(frozen=True)
class GateResult:
    """What ``check`` decided: the eval report and every rule's result."""

    report: EvalReport
    rules: tuple[RuleResult, ...]

    @property
    def failed(self) -> tuple[RuleResult, ...]:
        return tuple(r for r in self.rules if not r.passed)

    @property
    def passed(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class LayerCost:
    """Parameters and multiply-adds of one layer for one image (the MobileNets paper's counts).

    ``kind`` is conv (standard Dk x Dk), pointwise (1 x 1), depthwise, dense or batchnorm; for the
    layers without a kernel add, multiply, activation, scaling, pooling or data, whose work is
    counted in element operations (``ops``) instead of multiply-adds.
    """

    name: str
    kind: str
    kernel: tuple[int, int]
    in_channels: int  # M
    out_channels: int  # N
    out_size: tuple[int, int]  # Df (output height, width)
    params: int
    macs: int
    bias: bool = False
    ops: int = 0  # element operations per image (layers without a kernel)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CostReport:
    """``mobiledeploy inspect``: per-layer costs, totals, and the what-if multipliers applied."""

    model: str
    input_shape: tuple[int, int, int]
    layers: tuple[LayerCost, ...]
    alpha: float = 1.0  # width multiplier relative to the model as stored
    rho: float = 1.0  # resolution multiplier relative to the model as stored

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def params(self) -> int:
        """Parameters as deployed: BatchNorm folded away (each layer keeps one bias per channel)."""
        return sum(layer.params for layer in self.layers if layer.kind != "batchnorm")

    @property
    def ops(self) -> int:
        """Element operations per image of the layers without a kernel."""
        return sum(layer.ops for layer in self.layers)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "alpha": self.alpha,
            "rho": self.rho,
            "macs": self.macs,
            "elementwise_ops": self.ops,
            "params": self.params,
            "layers": [layer.to_dict() for layer in self.layers],
        }


@dataclass(frozen=True)
class LatencyReport:
    """Timings of one artifact, measured in a process of its own."""

    artifact: str
    format: str
    precision: str
    runtime: str
    device: str
    threads: int | None
    batch: int
    size: int  # bytes on disk
    init_ms: float  # load + prepare the model
    first_ms: float  # first inference (allocations, kernel packing)
    runs: int
    median_ms: float
    mean_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    peak_rss_mb: float  # resident memory the runtime added at its peak
    macs: int | None = None  # per image, from the folded model
    speedup_vs_float: float | None = None  # float median / this median, same format
    # top-1 agreement with float on the build's held-out images (its manifest's drift): the accuracy
    # this latency buys; None for float files and files without a build
    agreement: float | None = None
    profile: tuple[dict, ...] = ()
    profile_note: str = ""
    cpu: str = ""  # as the runtime saw it (on ARM: the HWCAP features that pick kernels)
    runtime_float_ops: dict = field(default_factory=dict)  # int8 ONNX: op -> count the runtime left in float
    # with --profile on a build's ONNX file: Keras layer -> ms per run of the operators it became,
    # and the share of the operators' time no layer took (after the last layer's tensor)
    layer_ms: dict = field(default_factory=dict)
    layer_ms_unattributed: float | None = None
    # on a board over SSH: its cores, frequency governor, hottest thermal zone (°C) and runtime
    # versions, where readable; empty elsewhere
    board: dict = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return 1000.0 * self.batch / self.median_ms if self.median_ms > 0 else float("inf")

    @property
    def gmacs_per_second(self) -> float | None:
        if self.macs is None or self.median_ms <= 0:
            return None
        return self.macs * self.batch / (self.median_ms * 1e6)

    def to_dict(self) -> dict:
        return {**asdict(self), "per_second": self.per_second, "gmacs_per_second": self.gmacs_per_second}


@dataclass(frozen=True)
class BenchReport:
    target: str
    device: str
    inputs: str  # "random (seed N)" or the data folder
    settings: BenchSettings
    rows: tuple[LatencyReport, ...]

    @property
    def fastest(self) -> LatencyReport | None:
        return min(self.rows, key=lambda r: r.median_ms, default=None)

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "device": self.device,
            "inputs": self.inputs,
            "settings": self.settings.to_dict(),
            "rows": [r.to_dict() for r in self.rows],
            "fastest": self.fastest.artifact if self.fastest else None,
        }


@dataclass(frozen=True)
class LayerDrift:
    """``mobiledeploy analyze``: one activation tensor of an int8 artifact against float."""

    layer: str
    depth: int  # position in the float model's layer order
    kind: str
    sqnr_db: float  # accumulated: everything up to and including this layer
    lost_db: float  # SQNR lost at this layer (previous tensor's SQNR minus this one's)
    levels_used: float  # share of the 256 int8 codes the tensor used on the data
    weight_layer: str | None = None  # the convolution / Dense that produced it
    weight_spread: float | None = None  # largest / 10th-percentile per-channel weight range

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AnalyzeReport:
    build_dir: str
    data_source: str
    samples: int
    layers: dict  # artifact -> tuple[LayerDrift, ...] in depth order

    def worst(self, artifact: str, count: int = 10) -> list[LayerDrift]:
        """The layers that lose the most SQNR, worst first."""
        return sorted(self.layers[artifact], key=lambda r: -r.lost_db)[:count]

    def to_dict(self) -> dict:
        return {"build_dir": self.build_dir, "data_source": self.data_source, "samples": self.samples,
                "layers": {name: [r.to_dict() for r in rows] for name, rows in self.layers.items()}}


@dataclass(frozen=True)
class SweepReport:
    """``mobiledeploy sweep``: a row per quantized file of each cell (model x setting x device x
    evaluation set), and how many tasks ran, came from the cache or failed."""

    source: str  # the sweep file
    output_dir: str
    rows: tuple[dict, ...]  # sweeps.cells.COLUMNS; a failed task's row has its error and no artifact
    tasks_run: int
    tasks_cached: int
    tasks_failed: int
    seconds: float
    versions: dict  # library -> version: part of every cell's cache key

    @property
    def failed(self) -> bool:
        return self.tasks_failed > 0

    def to_dict(self) -> dict:
        return asdict(self)
