"""Parameters and multiply-adds per layer, with the MobileNets paper's formulas.

For one image, with kernel Dk x Dk, M input and N output channels and a Df x Df output:
  standard conv   Dk·Dk·M·N·Df·Df
  depthwise conv  Dk·Dk·M·Df·Df
  pointwise conv  M·N·Df·Df
so a depthwise-separable block costs (1/N + 1/Dk²) of the standard conv it replaces.
Parameters are counted as deployed: BatchNorm folded away, one bias per output channel.

Every other layer the loader accepts gets a row too, with the element operations it does per
image instead of multiply-adds (an Add or a Multiply one per output element and extra input,
an activation or a rescaling one per element, pooling one per element of each window); layers
that only move data (padding, reshapes, dropout) cost nothing. So a model that quantizes always
has a cost report, whatever it is built from.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import MobiledeployError
from ..model.loading import float_model
from ..reports import CostReport, LayerCost

WEIGHTED_KINDS = frozenset({"conv", "pointwise", "depthwise", "dense"})
ELEMENTWISE = {"Add": "add", "Subtract": "add", "Multiply": "multiply", "Maximum": "add", "Minimum": "add",
               "Average": "add"}
SCALING = {"Rescaling", "Normalization"}
POOLING = {"MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D"}
# only move or drop data at inference
DATA_ONLY = {"InputLayer", "ZeroPadding2D", "Dropout", "Reshape", "Flatten", "Identity", "Concatenate"}


def inspect_model(target: str | Path, alpha: float = 1.0, rho: float = 1.0,
                  trust_model_code: bool = False, input_size: tuple[int, int] | None = None) -> CostReport:
    """``mobiledeploy inspect``: per-layer params and multiply-adds of a model file or a build
    folder's folded model, optionally for another width multiplier ``alpha`` and resolution
    multiplier ``rho``. ``input_size`` sizes a model saved without a fixed input, as quantize's does."""
    report = model_costs(float_model(Path(target), trust_model_code, input_size))
    return what_if(report, alpha, rho) if (alpha, rho) != (1.0, 1.0) else report


def model_costs(model) -> CostReport:
    """Per-layer costs of a built Keras model, in graph order."""
    rows: list[LayerCost] = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in {"Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense"}:
            rows.extend(_weighted(layer))
        elif kind == "BatchNormalization":
            rows.append(_batchnorm(layer, rows))
        else:
            rows.append(_elementwise(layer, kind))
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    return CostReport(model.name, shape, tuple(rows))


def _elementwise(layer, kind: str) -> LayerCost:
    """A layer without a kernel: what it does per image, in element operations."""
    out_shape = _one(layer.output).shape[1:]
    inputs = [t for t in _inputs(layer)]
    elements = math.prod(int(d) for d in out_shape)
    m = int(inputs[0].shape[-1]) if inputs else int(out_shape[-1])
    if kind in ELEMENTWISE:
        label, ops = ELEMENTWISE[kind], elements * max(len(inputs) - 1, 1)
    elif kind in SCALING:
        label, ops = "scaling", elements
    elif kind in POOLING:
        window = math.prod(int(d) for d in inputs[0].shape[1:-1]) if kind.startswith("Global") \
            else math.prod(int(d) for d in layer.pool_size)
        label, ops = "pooling", elements * window
    elif kind in DATA_ONLY:
        label, ops = "data", 0
    else:  # ReLU, Activation, Softmax, LeakyReLU and any other layer the loader let through
        label, ops = "activation", elements
    params = int(layer.count_params()) if layer.weights else 0
    return LayerCost(layer.name, label, (1, 1), m, int(out_shape[-1]) if out_shape else 1, _spatial(_one(layer.output).shape),
                     params, 0, ops=ops)


def _inputs(layer) -> list:
    node = layer._inbound_nodes[0] if layer._inbound_nodes else None
    return list(node.input_tensors) if node is not None else []


def _one(tensor):
    return tensor[0] if isinstance(tensor, (list, tuple)) else tensor


def what_if(report: CostReport, alpha: float = 1.0, rho: float = 1.0) -> CostReport:
    """The same network with width multiplier ``alpha`` and resolution multiplier ``rho``.

    Both are relative to the model as stored: alpha 0.5 halves every channel count except
    the image channels and the classifier's outputs; rho 128/224 shrinks every feature map
    (Df -> ceil(ρ·Df), as stride-2 convolutions round). Channels round to the nearest integer,
    as keras.applications MobileNet v1 does; MobileNet v2 rounds to multiples of 8, so its
    what-if is approximate — build the variant for exact counts.
    """
    if not (0 < alpha < math.inf and 0 < rho < math.inf):
        raise MobiledeployError(f"alpha and rho must be positive; got alpha={alpha}, rho={rho}")
    weighted = [i for i, row in enumerate(report.layers) if row.kind in WEIGHTED_KINDS]
    first, last = (weighted[0], weighted[-1]) if weighted else (-1, -1)

    def width(channels: int) -> int:
        return max(1, int(round(channels * alpha)))

    def size(df: int) -> int:
        return df if df == 1 else max(1, math.ceil(df * rho - 1e-9))

    rows = []
    for i, row in enumerate(report.layers):
        if row.kind not in WEIGHTED_KINDS | {"batchnorm"}:  # element operations scale with channels and area
            scaled = _costed_elementwise(row, width(row.in_channels), width(row.out_channels),
                                         tuple(size(d) for d in row.out_size))
            rows.append(scaled)
            continue
        m = row.in_channels if i == first else width(row.in_channels)
        n = row.out_channels if i == last else width(row.out_channels)
        if row.kind in {"depthwise", "batchnorm"}:
            n = width(row.out_channels) if row.kind == "batchnorm" else m * (row.out_channels // row.in_channels)
        rows.append(_costed(row.name, row.kind, row.kernel, m, n, tuple(size(d) for d in row.out_size), row.bias))
    h, w, c = report.input_shape
    shape = (max(1, round(h * rho)), max(1, round(w * rho)), c)
    return CostReport(report.model, shape, tuple(rows), report.alpha * alpha, report.rho * rho)


def separable_blocks(report: CostReport) -> list[dict]:
    """Each depthwise layer followed by a pointwise one: its cost against a standard conv."""
    blocks = []
    layers = [row for row in report.layers if row.kind in WEIGHTED_KINDS]
    for dw, pw in zip(layers, layers[1:]):
        if dw.kind != "depthwise" or pw.kind != "pointwise" or dw.out_size != pw.out_size:
            continue
        kh, kw = dw.kernel
        standard = kh * kw * dw.in_channels * pw.out_channels * dw.out_size[0] * dw.out_size[1]
        blocks.append({
            "depthwise": dw.name,
            "pointwise": pw.name,
            "macs": dw.macs + pw.macs,
            "standard_macs": standard,
            "ratio": (dw.macs + pw.macs) / standard,
            "n": pw.out_channels,
            "dk2": kh * kw,
            "formula": 1 / pw.out_channels + 1 / (kh * kw),
        })
    return blocks


def _weighted(layer) -> list[LayerCost]:
    kind = type(layer).__name__
    out_h, out_w = _spatial(layer.output.shape)
    m = int(layer.input.shape[-1])
    bias = bool(getattr(layer, "use_bias", False))
    if kind == "Dense":  # on (batch, ..., features): one product per position
        positions = math.prod(int(d) for d in layer.input.shape[1:-1])
        row = _costed(layer.name, "dense", (1, 1), m, int(layer.units), (1, 1), bias)
        return [row if positions == 1 else LayerCost(**{**row.to_dict(), "macs": row.macs * positions})]
    kernel = tuple(int(k) for k in layer.kernel_size)
    if kind == "DepthwiseConv2D":
        n = m * int(layer.depth_multiplier)
        return [_costed(layer.name, "depthwise", kernel, m, n, (out_h, out_w), bias)]
    if kind == "SeparableConv2D":
        mid = m * int(layer.depth_multiplier)
        return [_costed(f"{layer.name}/depthwise", "depthwise", kernel, m, mid, (out_h, out_w), False),
                _costed(f"{layer.name}/pointwise", "pointwise", (1, 1), mid, int(layer.filters),
                        (out_h, out_w), bias)]
    groups = int(getattr(layer, "groups", 1))
    kind = "pointwise" if kernel == (1, 1) else "conv"
    row = _costed(layer.name, kind, kernel, m, int(layer.filters), (out_h, out_w), bias)
    if groups == 1:
        return [row]
    # a grouped convolution: each output channel reads M / groups input channels
    weights = kernel[0] * kernel[1] * (m // groups) * int(layer.filters)
    return [LayerCost(**{**row.to_dict(), "params": weights + (int(layer.filters) if bias else 0),
                         "macs": weights * out_h * out_w})]


def _batchnorm(layer, rows: list[LayerCost]) -> LayerCost:
    """A BatchNorm row; the layer it follows gains the bias that folding gives it."""
    channels = int(layer.input.shape[-1])
    source = getattr(getattr(layer.input, "_keras_history", None), "operation", None)
    for i in range(len(rows) - 1, -1, -1):
        if source is not None and rows[i].name.split("/")[0] == source.name and not rows[i].bias:
            r = rows[i]
            rows[i] = _costed(r.name, r.kind, r.kernel, r.in_channels, r.out_channels, r.out_size, True)
            break
    return LayerCost(layer.name, "batchnorm", (1, 1), channels, channels,
                     _spatial(layer.output.shape), int(layer.count_params()), 0)


def _costed(name: str, kind: str, kernel: tuple[int, int], m: int, n: int, out_size: tuple[int, int],
            bias: bool) -> LayerCost:
    kh, kw = kernel
    positions = out_size[0] * out_size[1]
    if kind == "depthwise":
        weights = kh * kw * n  # one Dk x Dk filter per output channel (M x depth multiplier)
    elif kind == "batchnorm":
        return LayerCost(name, kind, kernel, m, n, out_size, 4 * n, 0)
    else:
        weights = kh * kw * m * n
    return LayerCost(name, kind, kernel, m, n, out_size, weights + (n if bias else 0), weights * positions, bias)


def _costed_elementwise(row: LayerCost, m: int, n: int, out_size: tuple[int, int]) -> LayerCost:
    """A row without a kernel at other channel counts and sizes: its operations scale with both."""
    before = max(row.out_channels * row.out_size[0] * row.out_size[1], 1)
    after = n * out_size[0] * out_size[1]
    return LayerCost(row.name, row.kind, row.kernel, m, n, out_size, row.params, 0, ops=row.ops * after // before)


def _spatial(shape) -> tuple[int, int]:
    if len(shape) == 4:
        return int(shape[1]), int(shape[2])
    return 1, 1
