"""Cross-layer equalization (DFQ, Nagel et al. 2019) of the folded model, for per-tensor int8.

After folding, a MobileNet's depthwise channels span ranges that differ by orders of
magnitude; one int8 scale per tensor then rounds the small channels to zero. ReLU is
positively homogeneous, relu(t·x) = t·relu(x) for t > 0, so for a layer A whose output reaches
a layer B only through a ReLU, scaling A's output channel i by t_i and B's input channel i by
1/t_i leaves the model's function unchanged. Choosing t_i = sqrt(r2_i / r1_i) (r1_i: range of
A's channel i, r2_i: range of B's input channel i) gives both layers the same range for that
channel, so per-tensor scales stop starving the small channels. Here t_i >= 1: only small
channels are raised, so no activation loses int8 resolution.

MobileNets use ReLU6, which is homogeneous only below its cap. A channel may be scaled only as
far as its largest pre-activation value on the calibration images stays below the cap (with a
margin); channels that reach the cap keep t_i = 1, so the clipping is exactly the float
model's. Channels that never turn on (ReLU output 0 on every calibration image) are zeroed in
A and in B: they carry nothing, yet their weights would set a per-tensor scale.

Per-channel int8 (the default) does not need this: each channel already has its own scale.
"""

from __future__ import annotations

import time

import numpy as np

from ..model.graph import RELU_PASS_THROUGH, follow, layer_graph, only_consumer, relu_cap
from ..reports import EqualizeReport

SCALED = {"Conv2D", "DepthwiseConv2D"}
CAP_MARGIN = 0.98  # scaled channels stay below 98% of the ReLU cap on the calibration images


def equalize(model, calib: np.ndarray, iterations: int = 4, chunk: int = 16):
    """A copy of ``model`` with every conv -> ReLU -> conv pair equalized, and the report."""
    import keras

    started = time.perf_counter()
    result = keras.Model.from_config(model.get_config())
    result.set_weights(model.get_weights())
    pairs = find_pairs(result)
    peaks = _peaks(result, [a for a, _, _ in pairs], calib, chunk)
    totals = {a: np.ones_like(peaks[a]) for a, _, _ in pairs}
    for _ in range(iterations):
        for a, b, cap in pairs:
            first, second = result.get_layer(a), result.get_layer(b)
            # an unbounded ReLU gets its tensor's own peak as the cap: the int8 range must not grow
            limit = cap if cap is not None else float(np.max(peaks[a], initial=0.0))
            scale = _scales(_out_ranges(first), _in_ranges(second), peaks[a], limit)
            _apply(first, second, scale, peaks[a] <= 0)
            peaks[a] = peaks[a] * scale
            totals[a] = totals[a] * scale
    dead = sum(int(np.sum(peaks[a] <= 0)) for a, _, _ in pairs)
    largest = max((float(np.max(t, initial=1.0)) for t in totals.values()), default=1.0)
    return result, EqualizeReport(pairs=len(pairs), dead_channels=dead, max_scale=largest,
                                  seconds=time.perf_counter() - started)


def find_pairs(model) -> list[tuple[str, str, float | None]]:
    """(A, B, cap) for each Conv2D/DepthwiseConv2D A whose only consumer is a plain ReLU (cap:
    its upper bound, None if unbounded) whose only consumer, past zero padding or dropout, is a
    Conv2D/DepthwiseConv2D B with one input. Depth multipliers other than 1 are left alone."""
    graph = layer_graph(model)
    found = []
    for name, node in graph.items():
        layer = model.get_layer(name) if node["kind"] in SCALED else None
        if layer is None or len(node["consumers"]) != 1 or _multiplied(layer) \
                or layer.get_config().get("activation", "linear") != "linear":
            continue
        relu = node["consumers"][0]
        cap = relu_cap(model.get_layer(relu)) if relu in graph else False
        if cap is False:
            continue
        following = follow(graph, only_consumer(graph, relu), RELU_PASS_THROUGH)
        if following is not None and graph[following]["kind"] in SCALED \
                and len(graph[following]["inputs"]) == 1 and not _multiplied(model.get_layer(following)):
            found.append((name, following, cap))
    return found


def _multiplied(layer) -> bool:
    return type(layer).__name__ == "DepthwiseConv2D" and layer.depth_multiplier != 1


def _peaks(model, names: list[str], calib: np.ndarray, chunk: int) -> dict[str, np.ndarray]:
    """Per output channel, the largest pre-activation value of each layer on ``calib``."""
    import keras

    if not names:
        return {}
    probe = keras.Model(model.inputs[0], [model.get_layer(n).output for n in names])
    peaks = {n: None for n in names}
    for start in range(0, len(calib), chunk):
        outs = probe.predict_on_batch(calib[start:start + chunk])
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for name, out in zip(names, outs):
            top = np.asarray(out).reshape(-1, out.shape[-1]).max(axis=0)
            peaks[name] = top if peaks[name] is None else np.maximum(peaks[name], top)
    return peaks


def _scales(r1: np.ndarray, r2: np.ndarray, peak: np.ndarray, cap: float) -> np.ndarray:
    """t_i = sqrt(r2_i / r1_i), limited so that no channel's peak passes ``cap`` (a bounded
    ReLU's clipping stays exactly the float model's), and never below 1: shrinking a channel
    would cost its activations int8 levels (DFQ's unlimited version measured 4.7 dB worse
    per-tensor SQNR on the reference model)."""
    usable = (r1 > 0) & (r2 > 0) & (peak > 0)
    scale = np.maximum(np.where(usable, np.sqrt(r2 / np.where(usable, r1, 1.0)), 1.0), 1.0)
    free = usable & (peak < cap * CAP_MARGIN)
    limit = np.where(free, cap * CAP_MARGIN / np.where(free, peak, 1.0), 1.0)
    return np.where(free, np.minimum(scale, limit), 1.0)


def _out_ranges(layer) -> np.ndarray:
    kernel = layer.get_weights()[0]
    if type(layer).__name__ == "DepthwiseConv2D":  # (kh, kw, channels, 1)
        return np.abs(kernel).max(axis=(0, 1, 3))
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0)


def _in_ranges(layer) -> np.ndarray:
    return np.abs(layer.get_weights()[0]).max(axis=(0, 1, 3))  # Conv2D and depthwise: axis 2 is the input


def _apply(first, second, scale: np.ndarray, off: np.ndarray) -> None:
    """A's output channel i times scale_i (kernel and bias), B's input channel i divided by it;
    channels that never turn on are zeroed in both."""
    a, b = first.get_weights(), second.get_weights()
    shape = (1, 1, -1, 1) if _depthwise(first) else (-1,)  # where A's output channels are
    a[0] = np.where(off.reshape(shape), 0.0, a[0] * scale.reshape(shape))
    if first.use_bias:
        a[1] = np.where(off, 0.0, a[1] * scale)
    b[0] = np.where(off.reshape(1, 1, -1, 1), 0.0, b[0] / scale.reshape(1, 1, -1, 1))
    first.set_weights([w.astype(np.float32) for w in a])
    second.set_weights([w.astype(np.float32) for w in b])


def _depthwise(layer) -> bool:
    return type(layer).__name__ == "DepthwiseConv2D"
