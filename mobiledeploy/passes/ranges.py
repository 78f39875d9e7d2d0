"""MSE-optimal int8 ranges for the tensors no ReLU bounds (--activation-ranges auto, the default).

The converters give every int8 activation tensor the min/max it reached on the calibration
images. A ReLU6 output fills [0, 6]; but a tensor no ReLU bounds (a MobileNetV2 bottleneck's
linear projection, the residual Add after it) has long tails: a few calibration values set
a range that the rest use a fraction of, and its 256 levels are spread thin. Here each such
tensor's range is narrowed to the one that minimises its int8 rounding + clipping error on
the calibration images (both ends shrunk by the same factor, zero kept exact); a range that
does not cut that error by ``MIN_GAIN`` keeps the calibration min/max. Refinement and both
exporters then use the chosen ranges (the TFLite file through its calibration statistics,
the ONNX file through ONNX Runtime's tensor overrides).
"""

from __future__ import annotations

import numpy as np

from ..model.graph import layer_graph
from .refine import fake_quantize, rounded_outputs

# rounded at their own output only when no activation follows them (the converters fuse it)
LINEAR_KINDS = {"Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense", "Add"}
SHRINK = np.linspace(0.3, 1.0, 36)  # candidate ranges: the calibrated one times these factors
MIN_GAIN = 0.95  # a narrower range must cut the tensor's int8 error by at least 5%
SAMPLES_PER_IMAGE = 2000  # values drawn per image and tensor (seeded) for the search


def unbounded_tensors(model) -> list[str]:
    """The layers whose output the converters round to int8 with no ReLU to bound it: linear
    convolutions and Dense layers not fused with an activation, and Adds."""
    graph = layer_graph(model)
    rounded = rounded_outputs(graph)
    return [name for name, node in graph.items() if name in rounded and node["kind"] in LINEAR_KINDS
            and (node["kind"] == "Add" or model.get_layer(name).get_config().get("activation", "linear") == "linear")]


def mse_ranges(model, calib: np.ndarray, chunk: int = 25,
               known: dict[str, np.ndarray] | None = None) -> dict[str, tuple[float, float, float, float]]:
    """{layer: (low, high, calibrated low, calibrated high)} for every unbounded tensor whose
    MSE-optimal int8 range on ``calib`` is narrower than its calibration min/max. ``known`` holds
    layer outputs already computed on ``calib`` (the logits ``floor_logits`` read): the model runs
    only for the others, and not at all when it holds every one."""
    import keras

    names = unbounded_tensors(model)
    if not names:
        return {}
    known = {name: values for name, values in (known or {}).items() if name in names and len(values) == len(calib)}
    unknown = [name for name in names if name not in known]
    probe = keras.Model(model.inputs[0], [model.get_layer(n).output for n in unknown]) if unknown else None
    rng = np.random.default_rng(0)
    drawn: dict[str, list[np.ndarray]] = {n: [] for n in names}
    bounds = {n: (np.inf, -np.inf) for n in names}
    for start in range(0, len(calib), chunk):
        outs = probe.predict_on_batch(calib[start:start + chunk]) if probe is not None else []
        computed = dict(zip(unknown, outs if isinstance(outs, (list, tuple)) else [outs]))
        for name in names:  # in the same order whichever are known: the same draws
            out = computed[name] if name in computed else known[name][start:start + chunk]
            values = np.asarray(out).reshape(len(out), -1)
            bounds[name] = (min(bounds[name][0], float(values.min())), max(bounds[name][1], float(values.max())))
            picks = rng.integers(0, values.shape[1], (len(values), min(SAMPLES_PER_IMAGE, values.shape[1])))
            drawn[name].append(np.take_along_axis(values, picks, axis=1).ravel())
    chosen = {}
    for name in names:
        low, high = bounds[name]
        found = narrowest_error(np.concatenate(drawn[name]), low, high)
        if found is not None:
            chosen[name] = (*found, low, high)
    return chosen


def narrowest_error(values: np.ndarray, low: float, high: float) -> tuple[float, float] | None:
    """The (low, high) among the shrunk candidates with the least int8 rounding + clipping error
    of ``values``; None unless it beats [low, high] by ``MIN_GAIN``."""
    low, high = min(low, 0.0), max(high, 0.0)
    errors = [float(np.mean((values - fake_quantize(values, low * f, high * f)) ** 2)) for f in SHRINK]  # it clips
    best = int(np.argmin(errors))
    if errors[best] >= MIN_GAIN * errors[-1]:  # SHRINK[-1] == 1: the calibrated range
        return None
    return float(low * SHRINK[best]), float(high * SHRINK[best])
